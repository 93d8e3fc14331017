"""One call, start to finish: arguments checked, failures as data, retries and time bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import Field, field_validator

from agents.tools import (
    Catalog,
    RetryPolicy,
    Tool,
    ToolArgs,
    ToolCall,
    ToolContext,
    ToolError,
    ToolRegistry,
    tool,
)
from agents.tools.invoke import MAX_CONTENT_CHARS
from tests.tools.conftest import MakeCtx, Trace

FAST = RetryPolicy(base_delay_s=0.001, max_delay_s=0.002)


def catalog(*tools: Tool) -> Catalog:
    return ToolRegistry(tools).catalog([t.name for t in tools])


def call(name: str, **args: Any) -> ToolCall:
    return ToolCall(id="toolu_1", name=name, input=args)


def error_of(content: str) -> dict[str, Any]:
    body = json.loads(content)
    assert isinstance(body, dict)
    return body


class LookupArgs(ToolArgs):
    city: str = Field(min_length=1, description="City name.")
    days: int = Field(1, ge=1, le=7)


@tool(description="Look a city up. Returns its name in capitals.")
async def lookup(args: LookupArgs) -> str:
    if args.city == "Atlantis":
        raise ToolError("not_found", "no city called 'Atlantis'", "Check the spelling.")
    return args.city.upper()


async def test_a_good_call_returns_the_tools_answer(ctx: ToolContext, trace: Trace) -> None:
    outcome = await catalog(lookup).invoke(call("lookup", city="Lisbon"), ctx)
    assert (outcome.content, outcome.is_error, outcome.version, outcome.attempts) == (
        "LISBON", False, "1", 1)
    [started] = trace.of("tool_call")
    assert started == {"type": "tool_call", "id": "toolu_1", "name": "lookup", "version": 1,
                       "input": {"city": "Lisbon"}}
    [result] = trace.of("tool_result")
    assert result["version"] == 1 and result["is_error"] is False and result["attempts"] == 1
    assert result["content"] == "LISBON" and result["replayed"] is False


async def test_a_missing_field_comes_back_as_an_error_naming_it(ctx: ToolContext) -> None:
    outcome = await catalog(lookup).invoke(call("lookup", days=3), ctx)
    assert outcome.is_error
    body = error_of(outcome.content)
    assert body["error"] == "invalid_arguments"
    assert "'city' is required" in body["message"]
    assert "city (string, required)" in body["suggestion"]


async def test_a_wrong_value_names_the_field_and_what_was_expected(ctx: ToolContext) -> None:
    outcome = await catalog(lookup).invoke(call("lookup", city="Oslo", days=30, color="red"), ctx)
    message = error_of(outcome.content)["message"]
    assert "'days': Input should be less than or equal to 7 (got 30)" in message
    assert "'color' is not a parameter of lookup" in message


async def test_a_tool_error_reaches_the_model_as_data(ctx: ToolContext) -> None:
    outcome = await catalog(lookup).invoke(call("lookup", city="Atlantis"), ctx)
    assert outcome.is_error
    assert outcome.to_block("toolu_1")["is_error"] is True
    assert error_of(outcome.content) == {"error": "not_found",
                                         "message": "no city called 'Atlantis'",
                                         "suggestion": "Check the spelling."}


async def test_a_bug_becomes_internal_error_and_the_traceback_goes_to_the_trace(
    ctx: ToolContext, trace: Trace
) -> None:
    @tool(description="Broken. Returns nothing.")
    async def broken(args: ToolArgs) -> str:
        raise KeyError("/srv/secret/path")

    outcome = await catalog(broken).invoke(call("broken"), ctx)
    body = error_of(outcome.content)
    assert body["error"] == "internal_error" and "KeyError" in body["message"]
    assert "/srv/secret" not in outcome.content and "Traceback" not in outcome.content
    [error] = trace.of("error")
    assert error["where"] == "tool" and error["tool"] == "broken"
    assert "Traceback" in error["traceback"] and "/srv/secret/path" in error["traceback"]
    assert trace.of("tool_result")[0]["error"] == "internal_error"


class Flaky:
    """Fails with a retryable error until its ``succeed_on``-th attempt."""

    def __init__(self, succeed_on: int) -> None:
        self.calls = 0
        self.succeed_on = succeed_on

    def tool(self, **options: Any) -> Tool:
        async def flaky(args: ToolArgs) -> str:
            self.calls += 1
            if self.calls < self.succeed_on:
                raise ToolError("upstream_error", "upstream hiccup", "Try later.", retryable=True)
            return f"ok on try {self.calls}"

        return Tool(fn=flaky, name="flaky", description="Flaky.", args_model=ToolArgs,
                    retry=FAST, **options)


async def test_a_flaky_tool_succeeds_on_its_third_try(ctx: ToolContext, trace: Trace) -> None:
    flaky = Flaky(succeed_on=3)
    outcome = await catalog(flaky.tool()).invoke(call("flaky"), ctx)
    assert (outcome.content, outcome.is_error, outcome.attempts) == ("ok on try 3", False, 3)
    assert flaky.calls == 3
    assert [e["attempt"] for e in trace.of("tool_retry")] == [1, 2]
    assert trace.of("tool_result")[0]["attempts"] == 3


async def test_a_failing_tool_gives_up_after_three_attempts(ctx: ToolContext) -> None:
    flaky = Flaky(succeed_on=99)
    outcome = await catalog(flaky.tool()).invoke(call("flaky"), ctx)
    assert flaky.calls == 3 and outcome.attempts == 3 and outcome.is_error
    body = error_of(outcome.content)
    assert body["error"] == "upstream_error"
    assert body["message"] == "upstream hiccup (gave up after 3 attempts)"


async def test_a_non_retryable_error_is_not_retried(ctx: ToolContext) -> None:
    calls = 0

    @tool(description="Refuses. Returns nothing.", retry=FAST)
    async def refuses(args: ToolArgs) -> str:
        nonlocal calls
        calls += 1
        raise ToolError("forbidden", "no")

    outcome = await catalog(refuses).invoke(call("refuses"), ctx)
    assert calls == 1 and outcome.attempts == 1 and outcome.is_error


async def test_backoff_that_would_outlive_the_timeout_gives_up_early(make_ctx: MakeCtx) -> None:
    flaky = Flaky(succeed_on=99)
    slow_backoff = flaky.tool().replace(retry=RetryPolicy(base_delay_s=10, max_delay_s=10))
    outcome = await catalog(slow_backoff).invoke(call("flaky"), make_ctx(default_timeout_s=1.0))
    assert flaky.calls == 1 and error_of(outcome.content)["error"] == "upstream_error"


async def test_a_tool_timeout_becomes_an_error_result(make_ctx: MakeCtx) -> None:
    @tool(description="Hangs. Returns nothing.", timeout_s=0.05)
    async def hangs(args: ToolArgs) -> str:
        await asyncio.Event().wait()
        return "never"

    outcome = await catalog(hangs).invoke(call("hangs"), make_ctx(default_timeout_s=30))
    assert outcome.is_error
    body = error_of(outcome.content)
    assert body["error"] == "timeout"
    assert "0.05 s" in body["message"]


async def test_the_runs_tool_timeout_applies_when_the_tool_declares_none(
    make_ctx: MakeCtx,
) -> None:
    @tool(description="Hangs. Returns nothing.")
    async def hangs(args: ToolArgs) -> str:
        await asyncio.Event().wait()
        return "never"

    outcome = await catalog(hangs).invoke(call("hangs"), make_ctx(default_timeout_s=0.05))
    assert error_of(outcome.content)["error"] == "timeout"


async def test_a_slow_attempt_is_cut_and_retried_when_the_tool_asks(ctx: ToolContext) -> None:
    attempts = 0

    @tool(description="Slow once. Returns 'fast'.",
          retry=RetryPolicy(base_delay_s=0.001, attempt_timeout_s=0.05))
    async def slow_once(args: ToolArgs) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.Event().wait()
        return "fast"

    outcome = await catalog(slow_once).invoke(call("slow_once"), ctx)
    assert (outcome.content, outcome.attempts) == ("fast", 2)


async def test_cancellation_propagates(ctx: ToolContext, trace: Trace) -> None:
    started = asyncio.Event()

    @tool(description="Waits. Returns nothing.")
    async def waits(args: ToolArgs) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    task = asyncio.create_task(catalog(waits).invoke(call("waits"), ctx))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert trace.of("tool_result") == []


async def test_results_of_every_shape_become_text(ctx: ToolContext) -> None:
    @tool(description="Shapes. Returns what it is asked for.")
    async def shapes(args: LookupArgs) -> Any:
        return {"Lisbon": {"a": 1}, "Oslo": LookupArgs(city="x"), "Rome": None,
                "Big": "y" * (MAX_CONTENT_CHARS + 10)}[args.city]

    cat = catalog(shapes)
    assert (await cat.invoke(call("shapes", city="Lisbon"), ctx)).content == '{"a": 1}'
    assert (await cat.invoke(call("shapes", city="Oslo"), ctx)).content == '{"city":"x","days":1}'
    assert (await cat.invoke(call("shapes", city="Rome"), ctx)).content == "done"
    big = (await cat.invoke(call("shapes", city="Big"), ctx)).content
    assert big.endswith(f"showing the first {MAX_CONTENT_CHARS}]")


async def test_async_emit_is_awaited(make_ctx: MakeCtx) -> None:
    seen: list[str] = []

    async def emit(type_: str, **payload: Any) -> None:
        seen.append(type_)

    await catalog(lookup).invoke(call("lookup", city="Rome"), make_ctx(emit=emit))
    assert seen == ["tool_call", "tool_result"]


class Picky(ToolArgs):
    value: str

    @field_validator("value")
    @classmethod
    def _explode(cls, value: str) -> str:
        raise RuntimeError("validator bug")


async def test_a_bug_in_an_arguments_validator_is_an_internal_error(ctx: ToolContext) -> None:
    @tool(description="Picky. Returns nothing.")
    async def picky(args: Picky) -> str:
        return "never"

    outcome = await catalog(picky).invoke(call("picky", value="x"), ctx)
    assert error_of(outcome.content)["error"] == "internal_error"
