"""The escalation state machine over the runtime, free of Telegram: park, resume, expire.

A parked run's question is one stored row (``storage/escalations.py``) that moves
pending → answered → resumed → done, or expired. Whoever answers (a button, a reply, the command
line) only commits the answer; resuming is driven from the row: the process that moves it
answered → resumed is the one that runs the agent on, so a bot and a ``keel escalation answer``
never both resume one run. The bot adds the Telegram parts (question messages, edits, delivery);
the command line uses this module as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from agents.errors import KeelError
from agents.executor.resolve import close_transcript
from agents.run import RunResult
from agents.sessions import Sessions, parked
from agents.tokens import estimate
from agents.tools.approval import APPROVE
from storage.escalations import Escalation, EscalationRepository, Kind
from storage.outbox import OutboxRepository
from storage.runs import RunRecord, RunTotals
from storage.traces import day_of

if TYPE_CHECKING:
    from agents.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(hours=24)
BUDGET = "budget"  # the tool_use_id of a budget escalation: more budget, or stop

OnCommit = Callable[[Any, RunResult], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Expired:
    """One escalation the expiry pass closed: its run has ended (a question or an approval) or
    stays stopped (a budget), and ``items`` are the outbox rows of the notice to deliver."""

    escalation: Escalation
    record: RunRecord | None
    items: list[int] = field(default_factory=list)


class EscalationFlow:
    def __init__(self, runtime: Runtime, *, ttl: timedelta = DEFAULT_TTL) -> None:
        self.runtime = runtime
        self.repo = EscalationRepository(runtime.db)
        self.outbox = OutboxRepository(runtime.db)
        self.ttl = ttl

    # ------------------------------------------------------------------ park

    async def park_in(self, conn: Any, result: RunResult, *, chat_id: int | None,
                      thread_id: int | None, approvers: list[int] | None = None) -> Escalation:
        """Store the question of a run that parks, inside the transaction that records it
        (``waiting_human`` with a question or an approval; ``budget_exceeded`` with state)."""
        if result.status == "budget_exceeded":
            extra = result.budget_usd
            return await self.repo.create(
                run_id=result.run_id, tool_use_id=BUDGET, chat_id=chat_id, thread_id=thread_id,
                reason=f"The run spent ${result.cost_usd:.4f} of its ${result.budget_usd:.2f} "
                "budget before it could finish.",
                context=f"Continuing allows up to ${extra:.2f} more; stopping keeps what was spent.",
                options=[f"Continue (+${extra:.2f})", "Stop here"], ttl=self.ttl, conn=conn,
                kind="budget")
        assert result.escalation is not None, "only a parked run has a question"
        request = result.escalation.request
        kind: Kind = "approval" if request.kind == "approval" else "question"
        return await self.repo.create(
            run_id=result.run_id, tool_use_id=result.escalation.tool_use_id, chat_id=chat_id,
            thread_id=thread_id, reason=request.reason, context=request.context,
            options=list(request.options), ttl=self.ttl, conn=conn, kind=kind,
            approvers=approvers if kind == "approval" else None)

    # ------------------------------------------------------------------ resume

    async def resume(self, e: Escalation, *, on_commit: OnCommit | None = None) -> RunResult | None:
        """Drive the run of an answered escalation on, if this process wins the claim.

        None when there is nothing to run (another process claimed it, or the answer was "Stop
        here"). Raises KeelError when the runtime refuses (the claim is given back, so a later
        start-up may try again). ``on_commit`` runs in the transaction of the run's outcome, which
        also moves the escalation to done and records a finished run's history."""
        answer = e.answer or ""
        if e.kind == "budget" and answer != e.options[0]:
            if await self.repo.close(e.id):
                await self._record_stopped(e.run_id, "run stopped: its budget was spent")
            return None
        if not await self.repo.claim(e.id):
            return None
        record = await self.runtime.runs.get(e.run_id)
        session_id = record.session_id if record else None
        who = e.answered_by_name or (str(e.answered_by) if e.answered_by is not None else None)

        async def commit(conn: Any, result: RunResult) -> None:
            await self.repo.finish_in(conn, e.id)
            if not parked(result) and session_id:
                await Sessions(self.runtime).record_in(conn, session_id, result)
            if on_commit is not None:
                await on_commit(conn, result)

        try:
            if e.kind == "budget":
                extra = record.budget_usd if record else 0.0
                return await self.runtime.continue_with_budget(e.run_id, extra, granted_by=who,
                                                               on_commit=commit)
            if e.kind == "approval":
                return await self.runtime.settle_approval(
                    e.run_id, approved=answer == APPROVE, answered_by=who, on_commit=commit)
            return await self.runtime.resume(e.run_id, answer, answered_by=who, on_commit=commit)
        except KeelError:
            await self.repo.unclaim(e.id)
            raise

    async def recoverable(self) -> list[Escalation]:
        """At start-up: answered escalations whose run did not go on, made claimable again (the
        process died between the answer and the resume, or while the run went on)."""
        out = []
        for e in await self.repo.to_resume():
            if e.kind == "budget" and e.answer != e.options[0]:
                await self.repo.close(e.id)
                continue
            await self.runtime.runs.reparked(
                e.run_id, "budget_exceeded" if e.kind == "budget" else "waiting_human")
            if e.stage == "resumed":
                await self.repo.unclaim(e.id)
            current = await self.repo.get(e.id)
            if current is not None and current.stage == "answered":
                out.append(current)
        return out

    async def _record_stopped(self, run_id: str, note: str) -> None:
        """A parked run that will not go on: its closed transcript joins the session history."""
        record = await self.runtime.runs.get(run_id)
        if record is None or record.state is None or not record.session_id:
            return
        state = record.state
        transcript = close_transcript(state["messages"][int(state.get("new_from", 0)):], note)
        await self.runtime.conversations.append(
            record.session_id, [(m["role"], m["content"], estimate(m)) for m in transcript],
            run_id=run_id)

    # ------------------------------------------------------------------ expiry

    async def expire_due(self) -> list[Expired]:
        """End the runs whose question went unanswered past its expiry. Each escalation is
        expired in its own transaction with its run's end and its notice, so one failure cannot
        leave the others waiting."""
        out = []
        for e in await self.repo.due():
            try:
                expired = await self.expire_one(e)
            except Exception:
                log.exception("could not expire escalation %s", e.id)
                continue
            if expired is not None:
                out.append(expired)
        return out

    async def expire_one(self, e: Escalation) -> Expired | None:
        runtime = self.runtime
        record = await runtime.runs.get(e.run_id)
        items: list[int] = []
        budget = e.kind == "budget"
        detail = expiry_detail(e)
        note = "run stopped: its budget was spent" if budget else f"run cancelled: {detail}"
        ends = not budget and record is not None and record.status == "waiting_human"
        async with runtime.db.write() as conn:
            if not await self.repo.expire_in(conn, e.id):
                return None  # answered meanwhile
            if record is not None and record.state is not None and record.session_id:
                state = record.state
                transcript = close_transcript(
                    state["messages"][int(state.get("new_from", 0)):], note)
                await runtime.conversations.append_in(
                    conn, record.session_id,
                    [(m["role"], m["content"], estimate(m)) for m in transcript], run_id=e.run_id)
            if ends and record is not None:
                await runtime.runs.finish(e.run_id, status="cancelled", detail=detail,
                                          output=None, totals=totals_of(record), conn=conn)
            chat_id, thread_id = reply_target(e, record)
            if chat_id is not None and not budget:
                trace = record.trace_id[:8] if record else e.run_id[:8]
                what = (f"Nobody approved `{e.reason}` in time"
                        if e.kind == "approval" else "Nobody answered in time")
                items.append(await self.outbox.put(
                    conn, chat_id=chat_id, thread_id=thread_id, reply_to=None, run_id=e.run_id,
                    markdown=f"⌛ {what}, so the run was cancelled (`/trace {trace}`). "
                    "Ask again whenever you are ready."))
        if ends and record is not None:
            close_trace(runtime, record, "cancelled", detail)
        return Expired(escalation=e, record=record, items=items)


def expiry_detail(e: Escalation) -> str:
    if e.kind == "approval":
        return "the approval it asked for expired unanswered"
    return "the question to a human expired unanswered"


def reply_target(e: Escalation, record: RunRecord | None) -> tuple[int | None, int | None]:
    """Where a run's answer and notices go: its own chat. An approval may have been asked in an
    approver's chat; a question is asked where the run speaks (a scheduled run's thread)."""
    if e.kind == "approval" and record is not None and record.chat_id is not None:
        return record.chat_id, record.thread_id
    return e.chat_id, e.thread_id


def totals_of(record: RunRecord) -> RunTotals:
    return RunTotals(cost_usd=record.cost_usd, steps=record.steps, model_calls=record.model_calls,
                     input_tokens=record.input_tokens, output_tokens=record.output_tokens,
                     cache_read_tokens=record.cache_read_tokens,
                     cache_write_tokens=record.cache_write_tokens)


def close_trace(runtime: Runtime, record: RunRecord, status: str, detail: str) -> None:
    """A run ended outside the executor (expiry) still gets its run_end, so its trace, ``keel
    trace show`` and ``/trace`` say how it ended."""
    try:
        # Its day, or a trace begun on an earlier day would get a second file today.
        trace = runtime.traces.writer(trace_id=record.trace_id, run_id=record.id,
                                      day=day_of(record.started_at))
        trace.emit("run_end", agent=record.agent, status=status, detail=detail,
                   cost_usd=record.cost_usd, steps=record.steps, model_calls=record.model_calls)
        trace.close()
    except OSError as exc:
        log.warning("could not close the trace of run %s: %s", record.id, exc)


def in_words(seconds: float) -> str:
    """A duration for a person: "in 45 s", "in 5 min", "in 2 h", "in 1 h 30 min", "in 3 days"."""
    s = max(0, round(seconds))
    if s < 60:
        return f"in {s} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"in {minutes} min"
    if s < 48 * 3600:
        hours, rest = divmod(minutes, 60)
        return f"in {hours} h" + (f" {rest} min" if rest and hours < 10 else "")
    return f"in {round(s / 86400)} days"


def ago_in_words(seconds: float) -> str:
    return in_words(seconds).removeprefix("in ") + " ago"
