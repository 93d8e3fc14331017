"""Call the model: reserve the worst case, send, settle the real cost, trace both sides."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agents.budget import BudgetHalt, Reservation
from agents.executor.prepare import Prefix, build_request
from agents.model.types import ModelClient, ModelResponse, OnText
from agents.pricing import Usage
from agents.run import Run
from agents.tokens import estimate

OnUsage = Callable[[Run, Usage, float], Awaitable[None]]


class InputAnchor:
    """Exact input size of the last call (from the API's usage) and how many messages it covered.

    The next call's input is that exact figure plus an estimate of only the messages added since,
    so the reservation is tight without a tokenizer.
    """

    def __init__(self) -> None:
        self.tokens: int | None = None
        self.messages: int = 0

    def estimate(self, prefix: Prefix, messages: list[dict[str, Any]]) -> int:
        if self.tokens is None:
            return prefix.tokens + estimate(messages)
        return self.tokens + estimate(messages[self.messages:])

    def update(self, usage: Usage, messages_sent: int) -> None:
        self.tokens = usage.total_input_tokens
        self.messages = messages_sent


async def call_model(
    run: Run,
    client: ModelClient,
    prefix: Prefix,
    messages: list[dict[str, Any]],
    anchor: InputAnchor,
    *,
    sent_before: int,
    on_usage: OnUsage | None = None,
    on_text: OnText | None = None,
    thinking: dict[str, Any] | None = None,
) -> ModelResponse:
    """One model call within the run's budget. Raises BudgetHalt when no useful call fits."""
    input_estimate = anchor.estimate(prefix, messages)
    reservation: Reservation = run.budget.reserve(
        run.price, input_tokens=input_estimate, max_tokens=run.limits.max_tokens
    )
    request = build_request(run, prefix, messages, max_tokens=reservation.max_tokens,
                            thinking=thinking)
    run.model_calls += 1
    n = run.model_calls
    last = len(messages) - 1
    run.trace.emit(
        "model_request",
        n=n,
        model=request.model,
        prefix_sha256=prefix.sha256,
        max_tokens=request.max_tokens,
        max_tokens_requested=run.limits.max_tokens,
        thinking=request.thinking,
        tool_choice=request.tool_choice,
        input_estimate=reservation.input_estimate,
        reserved_usd=round(reservation.worst_case_usd, 8),
        messages_base=sent_before,
        messages=messages[sent_before:],
        cache_breakpoint=[last, _breakpoint_block(request.messages[-1])] if messages else None,
    )
    response = await client.create(request, on_text=on_text)
    cost = run.budget.settle(run.price, response.usage)
    run.usage = run.usage + response.usage
    anchor.update(response.usage, len(messages))
    run.last_call_shrunk = reservation.max_tokens < run.limits.max_tokens
    run.trace.emit(
        "model_response",
        n=n,
        id=response.id,
        request_id=response.request_id,
        stop_reason=response.stop_reason,
        content=response.content,
        usage=response.usage.as_dict(),
        cost_usd=round(cost, 8),
        spent_usd=round(run.budget.spent_usd, 8),
        latency_s=round(response.latency_s, 4),
    )
    if on_usage is not None:
        await on_usage(run, response.usage, cost)
    return response


def _breakpoint_block(message: dict[str, Any]) -> int | None:
    for i, block in enumerate(message.get("content") or []):
        if isinstance(block, dict) and "cache_control" in block:
            return i
    return None


__all__ = ["BudgetHalt", "InputAnchor", "OnUsage", "call_model"]
