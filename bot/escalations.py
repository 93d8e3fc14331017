"""Escalations in Telegram: the question with buttons in the run's thread; the first answer from
an allowed approver (a button or a reply) is recorded once and resumes the run; unanswered ones
expire and end the run as ``cancelled`` with a note in the thread."""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from telegram import Update
from telegram.ext import ContextTypes

from agents import approvals
from agents.errors import KeelError
from agents.escalation_flow import DEFAULT_TTL, EscalationFlow, in_words, reply_target
from agents.notify import Button
from agents.run import RunResult
from agents.trace_view import summarise
from storage.escalations import Escalation

if TYPE_CHECKING:
    from bot.events import IncomingMessage
    from bot.service import KeelBot

log = logging.getLogger(__name__)

CALLBACK_PREFIX = "e"
HELD_PREFIX = "m"  # "is this message the answer to the pending question?" yes / no
HELD_MAX = 200  # messages held for that choice, per process (the oldest are forgotten)


def callback_data(key: str, index: int) -> str:
    return f"{CALLBACK_PREFIX}:{key}:{index}"


def parse_callback(data: str) -> tuple[str, int] | None:
    parts = data.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    if parts[0] == HELD_PREFIX:
        return HELD_PREFIX, int(parts[2])
    if parts[0] != CALLBACK_PREFIX:
        return None
    return parts[1], int(parts[2])


class Escalations:
    def __init__(self, keel: KeelBot, *, ttl: timedelta = DEFAULT_TTL) -> None:
        self.keel = keel
        self.flow = EscalationFlow(keel.runtime, ttl=ttl)
        self.repo = self.flow.repo
        self.ttl = ttl
        # token → (message, escalation id): plain messages held while the person says whether
        # they answer the question pending in their chat. In memory: after a restart the
        # buttons say so and the person sends the message again.
        self._held: OrderedDict[str, tuple[IncomingMessage, str]] = OrderedDict()

    async def ask_in(self, conn: Any, result: RunResult, *, chat_id: int,
                     thread_id: int | None, extra: list[int] | None = None,
                     asker: tuple[int, str] | None = None) -> int:
        """Store the escalation of a parked run and its question's outbox row inside ``conn``'s
        transaction (the one that records the run as waiting_human). Returns the outbox id.

        An approval goes where an approver can press it: the run's chat, unless that is the
        private chat of someone who may not approve — then the owner's (or the first named
        approver's) private chat, and a notice in the run's chat (its outbox id to ``extra``)."""
        approvers: list[int] | None = None
        ask_chat, ask_thread = chat_id, thread_id
        request = result.escalation.request if result.escalation else None
        if request is not None and request.kind == "approval":
            record = await self.keel.runtime.runs.get(result.run_id)
            approvers = approvals.approvers_for(self.keel.runtime.keel_file, result.agent,
                                                record.request_key if record else None)
            user = record.user_id if record else None
            if user is not None and user == chat_id and not await self.may_approve(
                    approvers, user):
                elsewhere = self.keel.access.owner_id if approvers is None else (
                    approvers[0] if approvers else self.keel.access.owner_id)
                if elsewhere is not None:
                    ask_chat, ask_thread = elsewhere, None
                    notice = await self.keel.outbox.put(
                        conn, chat_id=chat_id, thread_id=thread_id, reply_to=None,
                        run_id=result.run_id, markdown=f"⏸ `{request.reason}` needs an "
                        "approver's yes before it runs; I have asked. The run goes on when they "
                        "answer.")
                    if extra is not None:
                        extra.append(notice)
        escalation = await self.flow.park_in(conn, result, chat_id=ask_chat, thread_id=ask_thread,
                                             approvers=approvers)
        buttons = [[Button(label=o, key=callback_data(escalation.id, i))]
                   for i, o in enumerate(escalation.options)]
        text = (self._approval(escalation, result) if escalation.kind == "approval"
                else self._question(escalation, result,
                                    asker=asker if ask_chat < 0 else None))  # groups: who asked
        return await self.keel.outbox.put(
            conn, chat_id=ask_chat, thread_id=ask_thread, reply_to=None, run_id=result.run_id,
            markdown=text, buttons=buttons or None, escalation_id=escalation.id)

    async def may_approve(self, approvers: list[int] | None, user_id: int) -> bool:
        """The owner always; else the approvers named in keel.toml, or by default the admins."""
        if self.keel.access.owner_id is not None and user_id == self.keel.access.owner_id:
            return True
        if approvers is not None:
            return user_id in approvers and await self.keel.allowed(user_id)
        return await self.keel.allowed(user_id, "admin")

    def _approval(self, e: Escalation, result: RunResult) -> str:
        """The exact call, arguments in a code block nothing in them can close (shown as text:
        render.py turns Markdown into entities, so markup in the arguments is never parsed)."""
        return "\n".join([
            f"🔐 **Approval needed** — `{result.agent}` wants to run `{e.reason}` with:", "",
            approvals.code_block(e.context), "",
            "It runs only if you approve; if you deny it, the agent is told so.",
            f"_Expires {in_words(self.ttl.total_seconds())}; trace `{result.trace_id[:8]}`._"])

    def _question(self, e: Escalation, result: RunResult, *,
                  asker: tuple[int, str] | None = None) -> str:
        summary = summarise(self.keel.runtime.traces.read(result.trace_id))
        tools = ", ".join(t.name for t in summary.tools) or "none"
        lines = [f"❓ **Decision needed** — `{result.agent}` is waiting for you", "",
                 f"**Why:** {e.reason}"]
        if asker is not None:
            name = asker[1].replace("[", "(").replace("]", ")") or str(asker[0])
            lines.insert(1, f"Asked by [{name}](tg://user?id={asker[0]})")
        if e.context:
            lines += ["", f"**Context:** {e.context}"]
        lines += ["", "Tap an option, or reply to this message with your own answer."
                  if e.options else "Reply to this message with your answer.",
                  f"_Expires {in_words(self.ttl.total_seconds())}. Run so far: ${summary.cost_usd:.4f}, "
                  f"{summary.steps} tool call(s) ({tools}); trace `{result.trace_id[:8]}`._"]
        return "\n".join(lines)

    async def ask_budget_in(self, conn: Any, result: RunResult, *, chat_id: int,
                            thread_id: int | None) -> int:
        """A run halted by its budget: ask whether to continue with as much again, or stop.
        Inside the transaction that records the halt; returns the outbox id."""
        extra = result.budget_usd
        escalation = await self.flow.park_in(conn, result, chat_id=chat_id, thread_id=thread_id)
        buttons = [[Button(label=o, key=callback_data(escalation.id, i))]
                   for i, o in enumerate(escalation.options)]
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
        if parsed[0] == HELD_PREFIX:
            await self._on_held(update)
            return True
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
        if escalation.kind == "approval" and not await self.may_approve(escalation.approvers,
                                                                          user.id):
            log.info("user %s may not approve escalation %s; press ignored", user.id, key)
            await query.answer("Only an approver can answer this; nothing was changed.")
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

        if escalation.kind != "question":  # approvals and budgets take their buttons only
            await _best_effort(respond("Please answer with the buttons on the question."),
                               "ask for a button")
            return True
        await self._answer(escalation, text, user_id, user_name, respond=respond)
        return True

    async def _answer(self, e: Escalation, answer: str, user_id: int, user_name: str,
                      *, respond: Callable[[str], Awaitable[Any]]) -> None:
        if e.stage != "pending" or not await self.repo.answer(
                e.id, answer=answer, user_id=user_id, user_name=user_name):
            current = await self.repo.get(e.id)
            await _best_effort(respond(closed_text(current)), "tell that the question is closed")
            return
        # The answer is committed: from here the resume is driven by the stored row. Telling the
        # person and editing the question are cosmetic and may fail ("query is too old");
        # neither may keep the run waiting.
        from bot.service import spawn

        answered = await self.repo.get(e.id)
        spawn(self._resume(answered or e), f"resume run {e.run_id}")
        await _best_effort(respond("Got it — resuming."), "acknowledge the answer")
        if e.chat_id is not None and e.message_id is not None:
            await self._edit(e, f"✅ **Decision:** {answer}\n_by {user_name}_ — the run goes on."
                             f"\n\n**Why it asked:** {e.reason}")

    async def _resume(self, e: Escalation) -> None:
        """Resume the run of an answered escalation, if this process wins the claim."""
        keel = self.keel
        record = await keel.runtime.runs.get(e.run_id)
        chat_id, thread_id = reply_target(e, record)
        key = (chat_id or 0, thread_id or 0)
        async with keel.locks.hold(key):
            items: list[int] = []
            commit = keel.outcome_commit(chat_id=chat_id, thread_id=thread_id, reply_to=None,
                                         update_id=None, items=items) \
                if chat_id is not None else None
            try:
                # registered for /cancel like any run in this conversation
                keel.active[key] = e.run_id
                await self.flow.resume(e, on_commit=commit)
            except KeelError as exc:
                log.warning("cannot resume run %s: %s", e.run_id, exc)
                if chat_id is not None:
                    await _best_effort(keel.notifier.send(
                        chat_id, f"⚠️ The run `{e.run_id[:8]}` could not go on: {exc}",
                        thread_id=thread_id), "tell that a resume was refused")
                return
            finally:
                keel.active.pop(key, None)
            for item in items:
                await _best_effort(keel.outbox.deliver(item), f"deliver outbox item {item}")

    async def recover(self) -> int:
        """At start-up: answered questions whose run did not go on (the process died between the
        answer and the resume, or during the resume) are resumed now. Returns how many."""
        from bot.service import spawn

        count = 0
        for e in await self.flow.recoverable():
            spawn(self._resume(e), f"resume run {e.run_id} after restart")
            count += 1
        return count

    # ------------------------------------------------------------------ a message while asked

    async def ask_if_answer(self, message: IncomingMessage) -> bool:
        """In a private chat with a question pending, a plain message (not a reply) may be its
        answer or a new request: ask with two buttons instead of guessing. False (nothing held)
        when no question is pending there."""
        if not message.is_private:
            return False
        waiting = await self.repo.pending_questions(message.chat_id, message.thread_id)
        if not waiting:
            return False
        question = waiting[-1]
        token = secrets.token_urlsafe(9)
        self._held[token] = (message, question.id)
        while len(self._held) > HELD_MAX:
            self._held.popitem(last=False)
        await self.keel.notifier.send(
            message.chat_id,
            f"❓ A question is waiting for your answer:\n\n**{question.reason}**\n\n"
            "Is your message the answer to it?",
            thread_id=message.thread_id,
            buttons=[[Button(label="Yes, that is my answer", key=f"{HELD_PREFIX}:{token}:1")],
                     [Button(label="No, it is a new request", key=f"{HELD_PREFIX}:{token}:0")]])
        return True

    async def _on_held(self, update: Update) -> None:
        """The person's choice for a held message: answer the question with it, or run it."""
        query = update.callback_query
        assert query is not None
        token, _, choice = (query.data or "").partition(":")[2].partition(":")
        held = self._held.get(token)
        if held is None:
            await query.answer("This choice is no longer active; please send your message "
                               "again.")
            return
        message, escalation_id = held
        if query.from_user.id != message.user_id or query.message is None or \
                query.message.chat.id != message.chat_id:
            await query.answer("This choice is not yours; nothing was changed.")
            return
        del self._held[token]
        await _best_effort(self.keel.notifier.edit(
            message.chat_id, query.message.message_id,
            "Taken as the answer to the question." if choice == "1"
            else "Taken as a new request; the question stays open."), "close the choice")
        if choice != "1":
            await query.answer("Starting a new request.")
            from bot.service import spawn

            spawn(self.keel.process(message, taken=True), f"held message {message.update_id}")
            return
        escalation = await self.repo.get(escalation_id)
        if escalation is None:
            await query.answer(closed_text(None))
            return
        await self._answer(escalation, message.text, message.user_id, message.user_name,
                           respond=query.answer)

    # ------------------------------------------------------------------ expiry

    async def expire(self) -> int:
        """End runs whose question went unanswered past its expiry; returns how many. Each
        escalation is expired in its own transaction with its run's end and its notice, so one
        failed send cannot leave the others waiting."""
        expired = await self.flow.expire_due()
        for one in expired:
            e = one.escalation
            if e.chat_id is not None and e.message_id is not None:
                await self._edit(e, "⌛ **Expired unanswered** — the run stays stopped."
                                 if e.kind == "budget"
                                 else f"⌛ **Expired unanswered.**\n\n**Why it asked:** {e.reason}")
            for item in one.items:
                await _best_effort(self.keel.outbox.deliver(item), f"deliver expiry notice {item}")
        return len(expired)

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


def closed_text(current: Escalation | None) -> str:
    """What a late answer is told: who answered first, or that the question is closed."""
    if current is not None and current.stage in ("answered", "resumed", "done") and \
            current.answer is not None:
        return f"Already answered by {current.answered_by_name}: {current.answer}"
    if current is not None and current.stage == "expired":
        return "This question expired; nothing was changed."
    return "This question is no longer open."
