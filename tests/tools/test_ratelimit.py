"""A declared rate limit waits or answers "retry in Ns" as data; the model never sees a 429."""

from __future__ import annotations

import json
import time

from agents.tools import RateLimit, Tool, ToolArgs, ToolCall, ToolContext, ToolRegistry
from agents.tools.policy import RateLimiter
from tests.tools.conftest import MakeCtx


def limited(mode: str, per_s: float) -> tuple[Tool, list[float]]:
    calls: list[float] = []

    async def ping(args: ToolArgs) -> str:
        calls.append(time.monotonic())
        return "pong"

    tool = Tool(fn=ping, name="ping", description="Ping. Returns pong.", args_model=ToolArgs,
                rate_limit=RateLimit(calls=1, per_s=per_s, mode=mode))  # type: ignore[arg-type]
    return tool, calls


def ping(call_id: str) -> ToolCall:
    return ToolCall(id=call_id, name="ping", input={})


async def test_reject_mode_answers_when_to_retry(ctx: ToolContext) -> None:
    tool, calls = limited("reject", per_s=30)
    catalog = ToolRegistry([tool]).catalog(["ping"])
    assert (await catalog.invoke(ping("a"), ctx)).content == "pong"
    refused = await catalog.invoke(ping("b"), ctx)
    body = json.loads(refused.content)
    assert refused.is_error and body["error"] == "rate_limited"
    assert body["message"] == "rate limited, retry in 30s"
    assert len(calls) == 1


async def test_wait_mode_waits_for_a_free_slot(ctx: ToolContext) -> None:
    tool, calls = limited("wait", per_s=0.05)
    catalog = ToolRegistry([tool]).catalog(["ping"])
    first = await catalog.invoke(ping("a"), ctx)
    second = await catalog.invoke(ping("b"), ctx)
    assert first.content == second.content == "pong"
    assert calls[1] - calls[0] >= 0.04


async def test_wait_mode_answers_as_data_when_the_wait_would_outlive_the_call(
    make_ctx: MakeCtx,
) -> None:
    tool, calls = limited("wait", per_s=60)
    catalog = ToolRegistry([tool]).catalog(["ping"])
    ctx = make_ctx(default_timeout_s=1.0)
    await catalog.invoke(ping("a"), ctx)
    refused = await catalog.invoke(ping("b"), ctx)
    assert json.loads(refused.content)["error"] == "rate_limited" and len(calls) == 1


def test_the_window_slides() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimit(calls=2, per_s=10), clock=lambda: now[0])
    assert limiter.try_acquire() == 0 and limiter.try_acquire() == 0
    assert limiter.try_acquire() == 10
    now[0] = 9.5
    assert limiter.try_acquire() == 0.5
    now[0] = 10.0
    assert limiter.try_acquire() == 0
