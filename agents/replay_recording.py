"""A trace read back for replay: its segments, and stand-ins that answer from what was recorded.

A run's trace holds one or more *segments*, each opened by one event and closed by a ``run_end``:

  run_start      the run as first started
  resume         continued with a person's answer to its escalation (``Runtime.resume``)
  budget_raised  continued with more budget after a halt (``Runtime.continue_with_budget``)

A ``run_end`` written outside the executor after a segment's own (an escalation that expired)
is kept as the segment's ``later_ends``; one written by start-up recovery for a run a stopped
process left behind (``interrupted``) closes a segment that never got its own.

The stand-ins — a model, a tool catalog and a daily-ledger gate — answer the executor with the
segment's recorded responses, tool results and holds, in order. Where the recording stops short
(a call in flight when the run was cancelled, timed out or its process stopped; an API error),
the first thing the replay asks beyond it gets the same interruption. Anything else it asks
that the trace does not have is a divergence (``Diverged``).
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from agents.budget import BudgetHalt, LedgerGate, Reservation, fit
from agents.errors import KeelError, ModelCallError
from agents.executor.call import COUNT_MARGIN
from agents.model.types import ModelRequest, ModelResponse, OnText, usage_from_api
from agents.pricing import Price, Usage, cost_of
from agents.run import Run
from agents.tools.contract import EscalationRequest, ToolCall, ToolContext, ToolOutcome
from storage.ledger import Hold

SegmentKind = Literal["start", "resume", "budget"]
Stop = Literal["timeout", "cancelled", "interrupted", "model_error"]
OPENERS: dict[str, SegmentKind] = {"run_start": "start", "resume": "resume",
                                   "budget_raised": "budget"}
_CLIPPED = re.compile(r"\.\.\. \[\d+ more\]$")
_UNUSED_COUNT = 1 << 40
"""A token count the executor will not use (the original count was not below its bound)."""


class ReplayError(KeelError):
    """The trace cannot be replayed at all (not a run's trace, or one that lacks its inputs)."""


class Diverged(BaseException):
    """The replay asked for something the trace does not have; it stops there.

    A BaseException so the executor's own handlers (which turn errors into a ``failed`` run)
    let it through to the replay."""


@dataclass
class Segment:
    kind: SegmentKind
    opener: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    later_ends: list[dict[str, Any]] = field(default_factory=list)

    @property
    def requests(self) -> dict[int, dict[str, Any]]:
        return {int(e["n"]): e for e in self.events if e["type"] == "model_request"}

    @property
    def responses(self) -> dict[int, dict[str, Any]]:
        return {int(e["n"]): e for e in self.events if e["type"] == "model_response"}

    @property
    def tool_results(self) -> dict[str, dict[str, Any]]:
        return {str(e.get("id")): e for e in self.events if e["type"] == "tool_result"}

    @property
    def interrupted(self) -> bool:
        """A process stopped mid-segment: no run_end of its own, or recovery's."""
        return self.end is None or bool(self.end.get("interrupted"))

    @property
    def status(self) -> str:
        if self.end is None:
            return "unfinished"
        return "interrupted" if self.end.get("interrupted") else str(self.end.get("status"))

    @property
    def stop(self) -> Stop | None:
        """How the recording of this segment was cut short, if it was."""
        if any(e["type"] == "limit" and e.get("limit") == "timeout" for e in self.events):
            return "timeout"
        if self.interrupted:
            return "interrupted"
        if self.status == "cancelled":
            return "cancelled"
        if any(e["type"] == "error" and e.get("where") == "model" for e in self.events):
            return "model_error"
        return None

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["type"] == kind), None)

    def label(self) -> str:
        o = self.opener
        if self.kind == "resume":
            by = f" by {o['answered_by']}" if o.get("answered_by") else ""
            what = "approval" if o.get("approval") else "answer"
            return f"resume ({what} {o.get('answer')!r}{by})"
        if self.kind == "budget":
            by = f" by {o['granted_by']}" if o.get("granted_by") else ""
            return f"budget raised (+${float(o.get('extra_usd') or 0):g}{by})"
        return "start"


def split_segments(events: list[dict[str, Any]]) -> list[Segment]:
    """The trace's segments, in order; events before the first ``run_start`` are ignored."""
    out: list[Segment] = []
    for e in events:
        kind = OPENERS.get(e.get("type", ""))
        if kind is not None:
            out.append(Segment(kind, e))
            continue
        if not out:
            continue
        seg = out[-1]
        if e["type"] != "run_end":
            if seg.end is None:
                seg.events.append(e)
        elif seg.end is None:
            seg.end = e
        else:
            seg.later_ends.append(e)
    if not out or out[0].kind != "start":
        raise ReplayError("the trace has no 'run_start' event; it is not a run's trace")
    return out


class Replayer:
    """What the stand-ins share: the segment being replayed and the run replaying it."""

    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices
        self.segment: Segment | None = None
        self.run: Run | None = None
        self.requests: list[ModelRequest] = []
        self.sent_results: dict[str, Any] = {}
        """tool_use_id → the tool_result content as sent to the model (never clipped)."""

    def enter(self, segment: Segment, run: Run) -> None:
        self.segment, self.run = segment, run

    @property
    def seg(self) -> Segment:
        assert self.segment is not None
        return self.segment

    @property
    def next_call(self) -> int:
        return len(self.requests) + 1

    def cut_short(self, what: str, *, at_recorded_request: bool = False) -> NoReturn:
        """The replay reached the point where the recording stops: interrupt it the same way,
        or, if the recording was not cut short there, it diverged."""
        stop = self.seg.stop
        if stop == "timeout":
            raise TimeoutError
        if stop == "cancelled":
            assert self.run is not None
            self.run.cancel_requested = True
            raise asyncio.CancelledError
        if stop == "interrupted":
            raise asyncio.CancelledError
        if stop == "model_error" and at_recorded_request:
            error = self.seg.first("error") or {}
            raise ModelCallError(str(error.get("message") or "model API error"),
                                 status=error.get("status"))
        raise Diverged(f"the replay {what}, which the trace does not have (the recorded "
                       f"{self.seg.label()} ended {self.seg.status})")


class ReplayModel:
    """Answers with the segment's recorded responses; keeps every request it was sent."""

    def __init__(self, replayer: Replayer) -> None:
        self.r = replayer

    async def create(self, request: ModelRequest, *, on_text: OnText | None = None) -> ModelResponse:
        r = self.r
        n = r.next_call
        r.requests.append(request)
        recorded = r.seg.responses.get(n)
        if recorded is None:
            retried = next((e for e in r.seg.events
                            if e["type"] == "model_retry" and e.get("n") == n), None)
            if retried is not None:  # it broke off mid-stream and was asked again
                raise ModelCallError(str(retried.get("message") or "stream broke off"),
                                     retryable=True, partial=True)
            r.cut_short(f"made model call {n}", at_recorded_request=n in r.seg.requests)
        price = r.prices.get(request.model)
        return ModelResponse(
            id=str(recorded.get("id", "")), model=request.model,
            content=recorded.get("content") or [], stop_reason=recorded.get("stop_reason"),
            usage=recorded_usage(recorded, price), request_id=recorded.get("request_id"))

    async def count_tokens(self, request: ModelRequest) -> int:
        """The count the recorded call was reserved with (``input_counted``), if it was."""
        r = self.r
        n = r.next_call
        recorded = r.seg.requests.get(n)
        if recorded is None:
            if r.seg.stop in ("timeout", "cancelled", "interrupted"):
                r.cut_short(f"counted the input of model call {n}")
            return _UNUSED_COUNT
        if not recorded.get("input_counted"):
            return _UNUSED_COUNT
        return _count_before_margin(int(recorded["input_estimate"]))


class ReplayCatalog:
    """The recorded tool definitions; each call answered with its recorded result."""

    def __init__(self, schemas: list[dict[str, Any]], replayer: Replayer) -> None:
        self._schemas = schemas
        self.r = replayer

    def schemas(self) -> list[dict[str, Any]]:
        return self._schemas

    def names(self) -> list[str]:
        return [s["name"] for s in self._schemas]

    async def invoke(self, call: ToolCall, ctx: ToolContext) -> ToolOutcome:
        seg = self.r.seg
        recorded = seg.tool_results.get(call.id)
        if recorded is None:
            self.r.cut_short(f"ran tool {call.name} ({call.id})")
        content = str(recorded.get("content", ""))
        if _CLIPPED.search(content) and call.id in self.r.sent_results:
            content = str(self.r.sent_results[call.id])  # the trace line keeps only the start
        escalation = None
        if recorded.get("escalation"):
            asked = next((e for e in seg.events if e["type"] == "escalation"
                          and e.get("tool_use_id") == call.id), {})
            escalation = EscalationRequest(reason=str(asked.get("reason", "")), context="",
                                           options=tuple(asked.get("options") or ()))
        return ToolOutcome(content=content, is_error=bool(recorded.get("is_error")),
                           version=str(recorded.get("version") or "1"), escalation=escalation)


class ReplayGate(LedgerGate):
    """The daily ledger as it answered: a call it shrank is shrunk alike, a halt recorded for a
    daily cap happens again, and nothing is written anywhere."""

    def __init__(self, replayer: Replayer) -> None:  # no ledger: nothing to hold money in
        self.r = replayer

    async def hold(self, price: Price, reservation: Reservation) -> tuple[Reservation, Hold]:
        r = self.r
        n = r.next_call
        recorded = r.seg.requests.get(n)
        if recorded is None:
            halt = next((e for e in r.seg.events if e["type"] == "budget_halt"
                         and e.get("scope") == "daily"), None)
            if halt is not None:
                raise BudgetHalt(0.0, float(halt.get("needed_usd") or 0.0), scope="daily",
                                 cap_name=str(halt.get("cap") or "daily"))
            if r.seg.stop in ("timeout", "cancelled", "interrupted"):
                r.cut_short(f"held model call {n} in the daily ledger")
            return reservation, _hold(reservation.worst_case_usd)
        held = recorded.get("held_usd")
        if held is not None and float(held) + 1e-9 < reservation.worst_case_usd:
            fitted = fit(price, left_usd=float(held), input_tokens=reservation.input_estimate,
                         max_tokens=reservation.max_tokens, input_rate=reservation.input_rate)
            return fitted, _hold(float(held))
        return reservation, _hold(reservation.worst_case_usd)

    async def settle(self, hold: Hold, usage: Usage, cost: float, *, last: bool = False) -> None:
        return None

    def owed(self) -> None:
        return None

    async def release(self, hold: Hold) -> None:
        return None

    async def forfeit(self, hold: Hold) -> None:
        return None


def _hold(amount: float) -> Hold:
    return Hold(id=0, run_id="replay", day="", user_id=0, schedule="", agent="",
                amount_usd=amount)


class MemoryIdempotency:
    """Nothing is remembered: every recorded result is answered as recorded."""

    async def get(self, run_id: str, tool: str, args: Any) -> str | None:
        return None

    async def put(self, run_id: str, tool: str, args: Any, result: str) -> None:
        return None


def recorded_usage(response: dict[str, Any], price: Price | None) -> Usage:
    """The usage of a recorded response, cache writes split by TTL as they were billed.

    The trace keeps cache writes as one number; the split (5 minutes or 1 hour) is what makes
    the recorded ``cost_usd``, so it is solved back from it: the replayed run then spends
    exactly what the recorded one did, and reserves alike after it."""
    u = response.get("usage") or {}
    writes = int(u.get("cache_write_tokens", 0))
    usage = usage_from_api({"input_tokens": u.get("input_tokens", 0),
                            "output_tokens": u.get("output_tokens", 0),
                            "cache_read_input_tokens": u.get("cache_read_tokens", 0),
                            "cache_creation_input_tokens": writes})
    cost = response.get("cost_usd")
    if price is None or cost is None or not writes or price.cache_write_1h == price.cache_write_5m:
        return usage
    if abs(cost_of(price, usage) - float(cost)) <= 1e-8:
        return usage
    base = cost_of(price, Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                                cache_read_tokens=usage.cache_read_tokens))
    solved = ((float(cost) - base) * 1_000_000 - writes * price.cache_write_5m) / (
        price.cache_write_1h - price.cache_write_5m)
    hour = max(0, min(writes, round(solved)))
    return Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                 cache_read_tokens=usage.cache_read_tokens,
                 cache_write_5m_tokens=writes - hour, cache_write_1h_tokens=hour)


def _count_before_margin(estimate: int) -> int:
    """The API count that the executor turned into ``estimate`` (its headroom undone)."""
    guess = math.floor(estimate / COUNT_MARGIN)
    for count in range(max(0, guess - 2), guess + 3):
        if math.ceil(count * COUNT_MARGIN) == estimate:
            return count
    return guess
