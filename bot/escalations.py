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
from agents.trace_view import summarise
from storage.escalations import Escalation, EscalationRepository
from storage.runs import RunTotals

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

    async def ask(self, result: RunResult, *, chat_id: int, thread_id: int | None) -> Escalation:
        """Store the escalation of a parked run and post the question into its thread."""
        assert result.escalation is not None
        request = result.escalation.request
        escalation = await self.repo.create(
            run_id=result.run_id, tool_use_id=result.escalation.tool_use_id, chat_id=chat_id,
            thread_id=thread_id, reason=request.reason, context=request.context,
            options=list(request.options), ttl=self.ttl)
        buttons = [[Button(label=o, key=callback_data(escalation.id, i))]
                   for i, o in enumerate(request.options)]
        item = await self.keel.outbox.enqueue(
            chat_id=chat_id, thread_id=thread_id, reply_to=None, run_id=result.run_id,
            markdown=self._question(escalation, result), buttons=buttons or None)
        delivered = await self.keel.outbox.deliver(item)
        if delivered and delivered.message_ids:
            await self.repo.set_message(escalation.id, delivered.message_ids[-1])
        return escalation

    def _question(self, e: Escalation, result: RunResult) -> str:
        summary = summarise(self.keel.runtime.traces.read(result.trace_id))
        tools = ", ".join(t.name for t in summary.tools) or "none"
        hours = self.ttl.total_seconds() / 3600
        lines = [f"❓ **Decision needed** — `{result.agent}` is waiting for you", "",
                 f"**Why:** {e.reason}"]
        if e.context:
            lines += ["", f"**Context:** {e.context}"]
        lines += ["", "Tap an option, or reply to this message with your own answer."
                  if e.options else "Reply to this message with your answer.",
                  f"_Expires in {hours:g} h. Run so far: ${summary.cost_usd:.4f}, "
                  f"{summary.steps} tool call(s) ({tools}); trace `{result.trace_id[:8]}`._"]
        return "\n".join(lines)

    async def ask_budget(self, result: RunResult, *, chat_id: int, thread_id: int | None) -> Escalation:
        """A run halted by its budget: ask whether to continue with as much again, or stop."""
        extra = result.budget_usd
        options = [f"Continue (+${extra:.2f})", "Stop here"]
        escalation = await self.repo.create(
            run_id=result.run_id, tool_use_id=BUDGET, chat_id=chat_id, thread_id=thread_id,
            reason=f"The run spent ${result.cost_usd:.4f} of its ${result.budget_usd:.2f} budget "
            "before it could finish.",
            context=f"Continuing allows up to ${extra:.2f} more; stopping keeps what was spent.",
            options=options, ttl=self.ttl)
        buttons = [[Button(label=o, key=callback_data(escalation.id, i))]
                   for i, o in enumerate(options)]
        text = (f"💸 **Budget spent** — `{result.agent}` stopped at ${result.cost_usd:.4f} of "
                f"${result.budget_usd:.2f}.\n\nContinue with up to ${extra:.2f} more, or stop "
                f"here? _Trace `{result.trace_id[:8]}`._")
        item = await self.keel.outbox.enqueue(chat_id=chat_id, thread_id=thread_id, reply_to=None,
                                              run_id=result.run_id, markdown=text, buttons=buttons)
        delivered = await self.keel.outbox.deliver(item)
        if delivered and delivered.message_ids:
            await self.repo.set_message(escalation.id, delivered.message_ids[-1])
        return escalation

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
        if escalation.message_id is None and query.message is not None:
            # pressed before the question's id was stored: the press itself says which message
            escalation = replace(escalation, message_id=query.message.message_id)
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
            await respond(said)
            return
        await respond("Got it — resuming.")
        if e.chat_id is not None and e.message_id is not None:
            await self._edit(e, f"✅ **Decision:** {answer}\n_by {user_name}_ — the run goes on."
                             f"\n\n**Why it asked:** {e.reason}")
        from bot.service import spawn

        spawn(self._resume(e, answer, user_name), f"resume run {e.run_id}")

    async def _resume(self, e: Escalation, answer: str, answered_by: str) -> None:
        keel = self.keel
        key = (e.chat_id or 0, e.thread_id or 0)
        if e.tool_use_id == BUDGET and answer != e.options[0]:
            # "Stop here": the run stays budget_exceeded
            await self._record_stopped(e.run_id, "run stopped: its budget was spent")
            return
        async with keel.locks.hold(key):
            try:
                if e.tool_use_id == BUDGET:
                    record = await keel.runtime.runs.get(e.run_id)
                    extra = record.budget_usd if record else 0.0
                    result = await keel.runtime.continue_with_budget(
                        e.run_id, extra, granted_by=answered_by)
                else:
                    result = await keel.runtime.resume(e.run_id, answer, answered_by=answered_by)
            except KeelError as exc:
                log.warning("cannot resume run %s: %s", e.run_id, exc)
                return
            await self.finish(result, chat_id=e.chat_id, thread_id=e.thread_id)

    async def _record_stopped(self, run_id: str, note: str) -> None:
        """A parked run that will not go on: its closed transcript joins the session history."""
        record = await self.keel.runtime.runs.get(run_id)
        if record is None or record.state is None or not record.session_id:
            return
        state = record.state
        transcript = close_transcript(state["messages"][int(state.get("new_from", 0)):],
                                      note)
        await self.keel.sessions.record_messages(record.session_id, transcript, run_id=run_id)

    async def finish(self, result: RunResult, *, chat_id: int | None, thread_id: int | None) -> None:
        """After a run or a resumed run: record history, ask again, or post the answer."""
        from bot.service import answer_text

        record = await self.keel.runtime.runs.get(result.run_id)
        if not parked(result) and record is not None and record.session_id:
            await self.keel.sessions.record(record.session_id, result)
        if chat_id is None:
            return
        if result.status == "waiting_human":
            await self.ask(result, chat_id=chat_id, thread_id=thread_id)
            return
        item = await self.keel.outbox.enqueue(chat_id=chat_id, thread_id=thread_id, reply_to=None,
                                              markdown=answer_text(result), run_id=result.run_id)
        await self.keel.outbox.deliver(item)
        if result.status == "budget_exceeded" and result.state is not None:
            await self.ask_budget(result, chat_id=chat_id, thread_id=thread_id)

    # ------------------------------------------------------------------ expiry

    async def expire(self) -> int:
        """End runs whose question went unanswered past its expiry; returns how many."""
        count = 0
        for e in await self.repo.expire_due():
            if e.tool_use_id == BUDGET:  # the run already ended budget_exceeded; just say so
                await self._record_stopped(e.run_id, "run stopped: its budget was spent")
                if e.chat_id is not None and e.message_id is not None:
                    await self._edit(e, "⌛ **Expired unanswered** — the run stays stopped.")
                count += 1
                continue
            record = await self.keel.runtime.runs.get(e.run_id)
            await self._record_stopped(e.run_id, "run cancelled: the question to a human expired")
            if record is not None and record.status == "waiting_human":
                await self.keel.runtime.runs.finish(
                    e.run_id, status="cancelled", detail="the question to a human expired "
                    "unanswered", output=None, totals=RunTotals(
                        cost_usd=record.cost_usd, steps=record.steps,
                        model_calls=record.model_calls, input_tokens=record.input_tokens,
                        output_tokens=record.output_tokens,
                        cache_read_tokens=record.cache_read_tokens,
                        cache_write_tokens=record.cache_write_tokens))
            if e.chat_id is not None:
                if e.message_id is not None:
                    await self._edit(e, f"⌛ **Expired unanswered.**\n\n**Why it asked:** {e.reason}")
                await self.keel.notifier.send(
                    e.chat_id, f"⌛ Nobody answered in time, so the run was cancelled "
                    f"(`{e.run_id[:8]}`). Ask again whenever you are ready.",
                    thread_id=e.thread_id)
            count += 1
        return count

    async def _edit(self, e: Escalation, markdown: str) -> None:
        assert e.chat_id is not None and e.message_id is not None
        try:
            await self.keel.notifier.edit(e.chat_id, e.message_id, markdown)
        except Exception as exc:  # the decision is recorded; a failed edit is cosmetic
            log.warning("could not edit escalation message: %s", exc)
