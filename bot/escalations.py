"""Escalations in Telegram: the question with buttons in the run's thread; the first answer from
an allowed approver (a button or a reply) is recorded once and resumes the run; unanswered ones
expire and end the run as ``cancelled`` with a note in the thread."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from telegram import Update
from telegram.ext import ContextTypes

from agents.errors import KeelError
from agents.executor.resolve import close_transcript
from agents.notify import Button
from agents.run import RunResult
from agents.sessions import parked
from agents.tokens import estimate
from agents.trace_view import summarise
from storage.escalations import Escalation, EscalationRepository
from storage.runs import RunTotals
from storage.traces import day_of

if TYPE_CHECKING:
    from bot.service import KeelBot

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(hours=24)
CALLBACK_PREFIX = "e"
BUDGET = "budget"  # the tool_use_id of a budget escalation: more budget, or stop


def callback_data(key: str, index: int) -> str:
    return f"{CALLBACK_PREFIX}:{key}:{index}"


def parse_callback(data: str) -> tuple[str, int] | None:
    parts = data.split(":")
    if len(parts) != 3 or parts[0] != CALLBACK_PREFIX or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


class Escalations:
    def __init__(self, keel: KeelBot, *, ttl: timedelta = DEFAULT_TTL) -> None:
        self.keel = keel
        self.repo = EscalationRepository(keel.runtime.db)
        self.ttl = ttl

    async def ask_in(self, conn: Any, result: RunResult, *, chat_id: int,
                     thread_id: int | None) -> int:
        """Store the escalation of a parked run and its question's outbox row inside ``conn``'s
        transaction (the one that records the run as waiting_human). Returns the outbox id."""
        assert result.escalation is not None
        request = result.escalation.request
        escalation = await self.repo.create(
            run_id=result.run_id, tool_use_id=result.escalation.tool_use_id, chat_id=chat_id,
            thread_id=thread_id, reason=request.reason, context=request.context,
            options=list(request.options), ttl=self.ttl, conn=conn)
        buttons = [[Button(label=o, key=callback_data(escalation.id, i))]
                   for i, o in enumerate(request.options)]
        return await self.keel.outbox.put(
            conn, chat_id=chat_id, thread_id=thread_id, reply_to=None, run_id=result.run_id,
            markdown=self._question(escalation, result), buttons=buttons or None,
            escalation_id=escalation.id)

    def _question(self, e: Escalation, result: RunResult) -> str:
        summary = summarise(self.keel.runtime.traces.read(result.trace_id))
        tools = ", ".join(t.name for t in summary.tools) or "none"
        lines = [f"❓ **Decision needed** — `{result.agent}` is waiting for you", "",
                 f"**Why:** {e.reason}"]
        if e.context:
            lines += ["", f"**Context:** {e.context}"]
        lines += ["", "Tap an option, or reply to this message with your own answer."
                  if e.options else "Reply to this message with your answer.",
                  f"_Expires in {_duration(self.ttl)}. Run so far: ${summary.cost_usd:.4f}, "
                  f"{summary.steps} tool call(s) ({tools}); trace `{result.trace_id[:8]}`._"]
        return "\n".join(lines)

    async def ask_budget_in(self, conn: Any, result: RunResult, *, chat_id: int,
                            thread_id: int | None) -> int:
        """A run halted by its budget: ask whether to continue with as much again, or stop.
        Inside the transaction that records the halt; returns the outbox id."""
        extra = result.budget_usd
        options = [f"Continue (+${extra:.2f})", "Stop here"]
        escalation = await self.repo.create(
            run_id=result.run_id, tool_use_id=BUDGET, chat_id=chat_id, thread_id=thread_id,
            reason=f"The run spent ${result.cost_usd:.4f} of its ${result.budget_usd:.2f} budget "
            "before it could finish.",
            context=f"Continuing allows up to ${extra:.2f} more; stopping keeps what was spent.",
            options=options, ttl=self.ttl, conn=conn)
        buttons = [[Button(label=o, key=callback_data(escalation.id, i))]
                   for i, o in enumerate(options)]
        text = (f"💸 **Budget spent** — `{result.agent}` stopped at ${result.cost_usd:.4f} of "
                f"${result.budget_usd:.2f}.\n\nContinue with up to ${extra:.2f} more, or stop "
                f"here? _Trace `{result.trace_id[:8]}`._")
        return await self.keel.outbox.put(conn, chat_id=chat_id, thread_id=thread_id,
                                          reply_to=None, run_id=result.run_id, markdown=text,
                                          buttons=buttons, escalation_id=escalation.id)

    async def ask(self, result: RunResult, *, chat_id: int, thread_id: int | None) -> None:
        """Post the question of a run already recorded as parked (scheduled runs)."""
        async with self.keel.runtime.db.write() as conn:
            item = await self.ask_in(conn, result, chat_id=chat_id, thread_id=thread_id)
        await self.keel.outbox.deliver(item)

    async def ask_budget(self, result: RunResult, *, chat_id: int, thread_id: int | None) -> None:
        async with self.keel.runtime.db.write() as conn:
            item = await self.ask_budget_in(conn, result, chat_id=chat_id, thread_id=thread_id)
        await self.keel.outbox.deliver(item)

    # ------------------------------------------------------------------ answers

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
        """A button press; False when the data is not an escalation's (the caller answers it)."""
        query = update.callback_query
        assert query is not None
        parsed = parse_callback(query.data or "")
        if parsed is None:
            return False
        key, index = parsed
        escalation = await self.repo.get(key)
        if escalation is None or index >= len(escalation.options):
            await query.answer("This question is no longer active.")
            return True
        user = query.from_user
        pressed_on = query.message
        # Callback data is whatever the client sends, so a key copied into another chat or
        # message must not answer the question: only a press on the question's own message does.
        if pressed_on is None or pressed_on.chat.id != escalation.chat_id or (
                escalation.message_id is not None
                and pressed_on.message_id != escalation.message_id):
            log.info("button for escalation %s pressed outside its message (chat %s); ignored",
                     key, pressed_on.chat.id if pressed_on else None)
            await query.answer("This question is no longer active.")
            return True
        if not await self.keel.allowed(user.id):
            await query.answer("You are not allowed to answer this.")
            return True
        if escalation.message_id is None:
            # pressed before the question's id was stored: the press itself says which message
            escalation = replace(escalation, message_id=pressed_on.message_id)
        await self._answer(escalation, escalation.options[index], user.id,
                           user.full_name or str(user.id), respond=query.answer)
        return True

    async def on_reply(self, chat_id: int, reply_to: int, text: str, user_id: int,
                       user_name: str) -> bool:
        """A reply to a question message answers it in free text; False if it is no question."""
        escalation = await self.repo.by_message(chat_id, reply_to)
        if escalation is None:
            return False

        async def respond(message: str) -> None:
            await self.keel.notifier.send(chat_id, message, thread_id=escalation.thread_id)

        await self._answer(escalation, text, user_id, user_name, respond=respond)
        return True

    async def _answer(self, e: Escalation, answer: str, user_id: int, user_name: str,
                      *, respond: Callable[[str], Awaitable[Any]]) -> None:
        if e.status != "pending" or not await self.repo.answer(
                e.id, answer=answer, user_id=user_id, user_name=user_name):
            current = await self.repo.get(e.id)
            who = current.answered_by_name if current else None
            said = (f"Already answered by {who}: {current.answer}" if current and
                    current.status == "answered" else "This question is no longer open.")
            await _best_effort(respond(said), "tell that the question is closed")
            return
        # The answer is committed: from here the resume is driven by the stored row. Telling the
        # person and editing the question are cosmetic and may fail ("query is too old");
        # neither may keep the run waiting.
        from bot.service import spawn

        spawn(self._resume(e, answer, user_name), f"resume run {e.run_id}")
        await _best_effort(respond("Got it — resuming."), "acknowledge the answer")
        if e.chat_id is not None and e.message_id is not None:
            await self._edit(e, f"✅ **Decision:** {answer}\n_by {user_name}_ — the run goes on."
                             f"\n\n**Why it asked:** {e.reason}")

    async def _resume(self, e: Escalation, answer: str, answered_by: str) -> None:
        keel = self.keel
        key = (e.chat_id or 0, e.thread_id or 0)
        if e.tool_use_id == BUDGET and answer != e.options[0]:
            # "Stop here": the run stays budget_exceeded
            await self._record_stopped(e.run_id, "run stopped: its budget was spent")
            return
        async with keel.locks.hold(key):
            record = await keel.runtime.runs.get(e.run_id)
            items: list[int] = []
            commit = self._commit(record.session_id if record else None, e.chat_id, e.thread_id,
                                  items)
            try:
                # registered for /cancel like any run in this conversation
                keel.active[key] = e.run_id
                if e.tool_use_id == BUDGET:
                    extra = record.budget_usd if record else 0.0
                    await keel.runtime.continue_with_budget(e.run_id, extra, granted_by=answered_by,
                                                            on_commit=commit)
                else:
                    await keel.runtime.resume(e.run_id, answer, answered_by=answered_by,
                                              on_commit=commit)
            except KeelError as exc:
                log.warning("cannot resume run %s: %s", e.run_id, exc)
                if e.chat_id is not None:
                    await _best_effort(keel.notifier.send(
                        e.chat_id, f"⚠️ The run `{e.run_id[:8]}` could not go on: {exc}",
                        thread_id=e.thread_id), "tell that a resume was refused")
                return
            finally:
                keel.active.pop(key, None)
            for item in items:
                await _best_effort(keel.outbox.deliver(item), f"deliver outbox item {item}")

    def _commit(self, session_id: int | None, chat_id: int | None, thread_id: int | None,
                items: list[int]) -> Any:
        """What a resumed run commits with its outcome: its history when it ends for good, and
        its answer (or its next question) in the outbox."""
        keel = self.keel
        answer_commit = keel.outcome_commit(chat_id=chat_id, thread_id=thread_id, reply_to=None,
                                            update_id=None, items=items) \
            if chat_id is not None else None

        async def commit(conn: Any, result: RunResult) -> None:
            if not parked(result) and session_id:
                await keel.sessions.record_in(conn, session_id, result)
            if answer_commit is not None:
                await answer_commit(conn, result)

        return commit

    async def recover(self) -> int:
        """At start-up: answered questions whose run did not go on (the process died between the
        answer and the resume, or during the resume) are resumed now. Returns how many."""
        count = 0
        for e in await self.repo.answered_unresumed():
            from bot.service import spawn

            budget = e.tool_use_id == BUDGET
            if budget and e.answer != e.options[0]:
                continue  # "Stop here" needs no resume
            # interrupted while it went on: back to parked, so the resume claims it once
            await self.keel.runtime.runs.reparked(
                e.run_id, "budget_exceeded" if budget else "waiting_human")

            spawn(self._resume(e, e.answer or "", e.answered_by_name or "someone"),
                  f"resume run {e.run_id} after restart")
            count += 1
        return count

    async def _record_stopped(self, run_id: str, note: str) -> None:
        """A parked run that will not go on: its closed transcript joins the session history."""
        record = await self.keel.runtime.runs.get(run_id)
        if record is None or record.state is None or not record.session_id:
            return
        state = record.state
        transcript = close_transcript(state["messages"][int(state.get("new_from", 0)):],
                                      note)
        await self.keel.sessions.record_messages(record.session_id, transcript, run_id=run_id)

    # ------------------------------------------------------------------ expiry

    async def expire(self) -> int:
        """End runs whose question went unanswered past its expiry; returns how many. Each
        escalation is expired in its own transaction with its run's end and its notice, so one
        failed send cannot leave the others waiting."""
        count = 0
        for e in await self.repo.due():
            try:
                if await self._expire_one(e):
                    count += 1
            except Exception:
                log.exception("could not expire escalation %s", e.id)
        return count

    async def _expire_one(self, e: Escalation) -> bool:
        keel = self.keel
        record = await keel.runtime.runs.get(e.run_id)
        items: list[int] = []
        budget = e.tool_use_id == BUDGET
        note = ("run stopped: its budget was spent" if budget
                else "run cancelled: the question to a human expired")
        async with keel.runtime.db.write() as conn:
            if not await self.repo.expire_in(conn, e.id):
                return False  # answered meanwhile
            if record is not None and record.state is not None and record.session_id:
                state = record.state
                transcript = close_transcript(
                    state["messages"][int(state.get("new_from", 0)):], note)
                await keel.sessions.repo.append_in(
                    conn, record.session_id,
                    [(m["role"], m["content"], estimate(m)) for m in transcript],
                    run_id=e.run_id)
            if not budget and record is not None and record.status == "waiting_human":
                await keel.runtime.runs.finish(
                    e.run_id, status="cancelled", detail="the question to a human expired "
                    "unanswered", output=None, totals=_totals(record), conn=conn)
            if e.chat_id is not None and not budget:
                items.append(await keel.outbox.put(
                    conn, chat_id=e.chat_id, thread_id=e.thread_id, reply_to=None,
                    run_id=e.run_id, markdown=f"⌛ Nobody answered in time, so the run was "
                    f"cancelled (trace `{record.trace_id[:8] if record else e.run_id[:8]}`). "
                    "Ask again whenever you are ready."))
        if not budget and record is not None and record.status == "waiting_human":
            _close_trace(keel, record, "cancelled", "the question to a human expired unanswered")
        if e.chat_id is not None and e.message_id is not None:
            await self._edit(e, "⌛ **Expired unanswered** — the run stays stopped." if budget
                             else f"⌛ **Expired unanswered.**\n\n**Why it asked:** {e.reason}")
        for item in items:
            await _best_effort(keel.outbox.deliver(item), f"deliver expiry notice {item}")
        return True

    async def _edit(self, e: Escalation, markdown: str) -> None:
        assert e.chat_id is not None and e.message_id is not None
        try:
            await self.keel.notifier.edit(e.chat_id, e.message_id, markdown)
        except Exception as exc:  # the decision is recorded; a failed edit is cosmetic
            log.warning("could not edit escalation message: %s", exc)


async def _best_effort(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.warning("could not %s: %s", what, exc)


def _duration(ttl: timedelta) -> str:
    seconds = ttl.total_seconds()
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{round(seconds / 60):d} min"
    return f"{round(seconds):d} s"


def _totals(record: Any) -> RunTotals:
    return RunTotals(cost_usd=record.cost_usd, steps=record.steps, model_calls=record.model_calls,
                     input_tokens=record.input_tokens, output_tokens=record.output_tokens,
                     cache_read_tokens=record.cache_read_tokens,
                     cache_write_tokens=record.cache_write_tokens)


def _close_trace(keel: KeelBot, record: Any, status: str, detail: str) -> None:
    """A run ended outside the executor (expiry) still gets its run_end."""
    try:
        # Its day, or a trace begun on an earlier day would get a second file today.
        trace = keel.runtime.traces.writer(trace_id=record.trace_id, run_id=record.id,
                                           day=day_of(record.started_at))
        trace.emit("run_end", agent=record.agent, status=status, detail=detail,
                   cost_usd=record.cost_usd, steps=record.steps, model_calls=record.model_calls)
        trace.close()
    except OSError as exc:
        log.warning("could not close the trace of run %s: %s", record.id, exc)
