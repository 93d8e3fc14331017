"""Call the model: reserve the worst case, send, settle the real cost, trace both sides.

The worst case is an upper bound of the input (``agents.tokens.bound``: UTF-8 bytes, which no
tokenizer can beat) tightened by exact counts from the API — the previous call's usage for the
prefix it covered (``InputAnchor``) and, when the bound alone would refuse or shrink a call, the
count endpoint — priced at the dearest rate the request can incur (``request_cache_ttl``), plus
``max_tokens`` of output. It is held against the run's cap and, when the run has a ledger gate,
against every daily cap, before the request is sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from agents.budget import BudgetHalt, Reservation
from agents.caching import one_hour_bound
from agents.errors import ModelCallError
from agents.executor.prepare import Prefix, build_request
from agents.model.types import ModelClient, ModelRequest, ModelResponse, OnText, watched
from agents.pricing import Usage, input_rate_bound, request_cache_ttl
from agents.run import Run
from agents.tokens import MessagesDigest, bound
from storage.ledger import Hold
from storage.session_counts import SessionAnchor

OnUsage = Callable[[Run, Usage, float], Awaitable[None]]

COUNT_MARGIN = 1.02
"""Headroom on the count endpoint's answer, which Anthropic documents as an estimate."""
MIN_THINKING_BUDGET = 1024


@runtime_checkable
class TokenCounter(Protocol):
    """A model client that can also count a request's input tokens exactly (free of charge)."""

    async def count_tokens(self, request: ModelRequest) -> int: ...


class InputAnchor:
    """Exact input size of the last call (from the API's usage) and how many messages it covered.

    The next call's input is that exact figure plus an upper bound of only the messages added
    since, so the reservation is tight without a tokenizer.
    """

    def __init__(self) -> None:
        self.tokens: int | None = None
        self.messages: int = 0
        self._digest: MessagesDigest | None = None
        """The run's messages hashed so far (``seeded`` then ``kept``: each message once)."""

    def _digest_of(self, prefix: Prefix, messages: list[dict[str, Any]], count: int) -> str:
        if self._digest is None or self._digest.prefix != prefix.sha256:
            self._digest = MessagesDigest(prefix.sha256)
        return self._digest.of(messages, count)

    def bound(self, prefix: Prefix, messages: list[dict[str, Any]]) -> int:
        """Input tokens of the next call that the API will not exceed."""
        if self.tokens is None or self.messages > len(messages):
            return prefix.bound + bound(messages)
        return self.tokens + bound(messages[self.messages:])

    estimate = bound  # the planner previews its reservation with the same figure

    def update(self, usage: Usage, messages_sent: int) -> None:
        self.tokens = usage.total_input_tokens
        self.messages = messages_sent

    @classmethod
    def seeded(cls, kept: SessionAnchor | None, prefix: Prefix,
               messages: list[dict[str, Any]]) -> InputAnchor:
        """An anchor that starts from the exact count a session kept from its last turn, when
        that count still describes the head of ``messages`` under ``prefix`` (same digest)."""
        anchor = cls()
        if kept is not None and kept.messages <= len(messages) and kept.digest == \
                anchor._digest_of(prefix, messages, kept.messages):
            anchor.tokens, anchor.messages = kept.tokens, kept.messages
        return anchor

    def kept(self, prefix: Prefix, messages: list[dict[str, Any]]) -> SessionAnchor | None:
        """What a session keeps for its next turn: the last exact count and what it covered."""
        if self.tokens is None or self.messages > len(messages):
            return None
        return SessionAnchor(tokens=self.tokens, messages=self.messages,
                             digest=self._digest_of(prefix, messages, self.messages))


STREAM_RETRIES = 1
"""A streamed answer that broke off mid-way (``ModelCallError.partial``: an overloaded error
event, a dropped connection) is asked once more. The SDK retries what failed before an answer
began; nothing retried what failed after. The broken call counts as spent at its worst case."""
STREAM_RETRY_DELAY_S = 1.0


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
    """One model call within the run's budget and the day's caps. Raises BudgetHalt (before
    anything is sent) when no useful call fits.

    ``on_usage`` records the spend of a call no ledger hold covered (a held call's spend is
    recorded by the hold's settlement, in the same transaction)."""
    retries = 0
    while True:
        shown = 0  # characters of this attempt's answer already streamed to the progress

        async def counted(piece: str) -> None:
            nonlocal shown
            shown += len(piece)
            assert on_text is not None
            await on_text(piece)

        if on_text is not None:
            counted.watched = getattr(on_text, "watched", None) or (  # type: ignore[attr-defined]
                lambda: True)
        try:
            return await _call_once(run, client, prefix, messages, anchor,
                                    sent_before=sent_before, on_usage=on_usage,
                                    on_text=counted if on_text is not None else None,
                                    thinking=thinking)
        except ModelCallError as exc:
            if not exc.partial or retries >= STREAM_RETRIES \
                    or run.model_calls >= run.limits.model_call_cap:
                raise
            retries += 1
            run.trace.emit("model_retry", n=run.model_calls, message=str(exc),
                           delay_s=STREAM_RETRY_DELAY_S, spent_usd=round(run.budget.spent_usd, 8))
            retract = getattr(on_text, "retract", None)
            if shown and retract is not None:
                await retract(shown)
            await asyncio.sleep(STREAM_RETRY_DELAY_S)


async def _call_once(
    run: Run,
    client: ModelClient,
    prefix: Prefix,
    messages: list[dict[str, Any]],
    anchor: InputAnchor,
    *,
    sent_before: int,
    on_usage: OnUsage | None,
    on_text: OnText | None,
    thinking: dict[str, Any] | None,
) -> ModelResponse:
    wanted = run.limits.max_tokens
    draft = build_request(run, prefix, messages, max_tokens=wanted, thinking=thinking)
    body = draft.to_api()
    ttl, hour = request_cache_ttl(body), one_hour_bound(body)
    input_bound = anchor.bound(prefix, messages)
    rate = input_rate_bound(run.price, ttl, input_tokens=input_bound, one_hour_tokens=hour)
    counted = False
    try:
        reservation = run.budget.reserve(run.price, input_tokens=input_bound, max_tokens=wanted,
                                         input_rate=rate)
    except BudgetHalt:
        reservation = None
    if (reservation is None or reservation.max_tokens < wanted) and isinstance(client,
                                                                               TokenCounter):
        exact = await _count(client, draft)
        if exact is not None and exact < input_bound:
            input_bound, counted = exact, True
            rate = input_rate_bound(run.price, ttl, input_tokens=input_bound, one_hour_tokens=hour)
            reservation = None
    if reservation is None:
        reservation = run.budget.reserve(run.price, input_tokens=input_bound, max_tokens=wanted,
                                         input_rate=rate)
    hold: Hold | None = None
    gate = run.budget.gate
    if gate is not None:
        reservation, hold = await gate.hold(run.price, reservation)
    request = dataclasses.replace(draft, max_tokens=reservation.max_tokens,
                                  thinking=_fit_thinking(draft.thinking, reservation.max_tokens))
    run.model_calls += 1
    n = run.model_calls
    last = len(messages) - 1
    run.trace.emit(
        "model_request",
        n=n,
        model=request.model,
        prefix_sha256=prefix.sha256,
        max_tokens=request.max_tokens,
        max_tokens_requested=wanted,
        thinking=request.thinking,
        tool_choice=request.tool_choice,
        input_estimate=reservation.input_estimate,
        input_counted=counted,
        reserved_usd=round(reservation.worst_case_usd, 8),
        held_usd=round(hold.amount_usd, 8) if hold else None,
        messages_base=sent_before,
        messages=messages[sent_before:],
        cache_breakpoint=[last, _breakpoint_block(request.messages[-1])] if messages else None,
        # every marker in the messages (a stable head's too) with its TTL: the trace holds the
        # request exactly as it was sent
        cache_breakpoints=_breakpoints(request.messages),
    )
    await run.trace.adrain()  # a request that reached the API is in the trace, even if killed
    try:
        # streamed only where someone watches the text arrive; a plain call elsewhere
        response = await client.create(request, on_text=on_text if watched(on_text) else None)
    except ModelCallError as exc:
        if hold is not None and gate is not None:
            # An HTTP error answer is not billed; a lost connection may have been.
            await asyncio.shield(gate.release(hold) if exc.status else gate.forfeit(hold))
        if exc.partial:  # it may be billed up to its worst case: the run's meter counts that
            run.budget.spent_usd += hold.amount_usd if hold is not None \
                else reservation.worst_case_usd
        raise
    except BaseException:
        if hold is not None and gate is not None:
            await asyncio.shield(gate.forfeit(hold))
        raise
    cost = run.budget.settle(run.price, response.usage)
    run.usage = run.usage + response.usage
    anchor.update(response.usage, len(messages))
    run.last_call_shrunk = reservation.max_tokens < wanted
    if hold is not None and gate is not None:
        # a call after which no tool runs settles with the run's next write (its outcome)
        await asyncio.shield(gate.settle(hold, response.usage, cost,
                                         last=response.stop_reason != "tool_use"))
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
    if on_usage is not None and hold is None:
        await on_usage(run, response.usage, cost)
    return response


async def _count(client: TokenCounter, request: ModelRequest) -> int | None:
    """The API's count of ``request``'s input with headroom; None when it cannot be had."""
    try:
        return math.ceil(await client.count_tokens(request) * COUNT_MARGIN)
    except ModelCallError:
        return None


def _fit_thinking(thinking: dict[str, Any] | None, max_tokens: int) -> dict[str, Any] | None:
    """A thinking budget must stay below max_tokens; when the budget shrank max_tokens under
    the API's floor for it, the call goes without thinking rather than with a refused request."""
    if not thinking or thinking.get("type") != "enabled":
        return thinking
    budget = int(thinking.get("budget_tokens", 0))
    if budget < max_tokens:
        return thinking
    if max_tokens - 1 < MIN_THINKING_BUDGET:
        return None
    return {**thinking, "budget_tokens": max_tokens - 1}


def _breakpoints(messages: list[dict[str, Any]]) -> list[list[Any]]:
    return [[i, j, block["cache_control"]] for i, message in enumerate(messages)
            for j, block in enumerate(message.get("content") or [])
            if isinstance(block, dict) and "cache_control" in block]


def _breakpoint_block(message: dict[str, Any]) -> int | None:
    for i, block in enumerate(message.get("content") or []):
        if isinstance(block, dict) and "cache_control" in block:
            return i
    return None


__all__ = ["BudgetHalt", "InputAnchor", "OnUsage", "Reservation", "TokenCounter", "call_model"]
