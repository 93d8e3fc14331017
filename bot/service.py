"""The conversation flow of one message, from allowlist to delivered answer.

allowlist → inbox (dedupe by update_id) → per-conversation lock → router (unless pinned) →
session turn (a bounded run) → outbox (in the same transaction that closes the inbox row) →
delivery. After a crash, ``recover()`` answers what was received but not answered, and sends what
was answered but not sent — each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from datetime import timedelta
from typing import Any

from telegram import Bot

from agents.errors import DailyCapExceeded, KeelError
from agents.run import RunResult, describe, new_id
from agents.runtime import Runtime
from agents.sessions import Sessions
from bot.delivery import Outbox, TelegramNotifier
from bot.events import IncomingMessage
from bot.progress import Progress
from storage.db import now_iso
from storage.inbox import Inbox

log = logging.getLogger(__name__)

PROGRESS_MAX_ACTIVE_RUNS = 10
"""Above this many runs at once, no typing actions or drafts: replies keep the rate limit."""

UNSUPPORTED_MEDIA = {
    "photo": "photos", "voice": "voice notes", "audio": "audio files", "video": "videos",
    "video_note": "video notes", "sticker": "stickers", "document": "files",
    "animation": "GIFs", "location": "locations", "contact": "contacts", "poll": "polls",
    "other": "this kind of message",
}


class ConversationLocks:
    """One run at a time per conversation (chat + topic); many conversations in parallel.

    A lock lives while someone holds or waits for it, so idle conversations cost no memory and a
    waiter never ends up with a lock that a newcomer no longer sees."""

    def __init__(self) -> None:
        self._locks: dict[tuple[int, int], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[int, int]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class KeelBot:
    def __init__(self, runtime: Runtime, bot: Bot) -> None:
        self.runtime = runtime
        self.bot = bot
        self.settings = runtime.settings
        self.sessions = Sessions(runtime)
        self.notifier = TelegramNotifier(bot)
        self.outbox = Outbox(runtime.db, self.notifier)
        self.inbox = Inbox(runtime.db)
        self.locks = ConversationLocks()
        self.active: dict[tuple[int, int], str] = {}  # conversation → running run id
        from bot.escalations import Escalations

        self.escalations = Escalations(self, ttl=timedelta(seconds=self.settings.escalation_ttl_s))

    # ------------------------------------------------------------------ gates

    def allowed(self, user_id: int) -> bool:
        return user_id in self.settings.allowed_user_ids

    async def tell_unknown_user(self, chat_id: int, user_id: int, thread_id: int | None) -> None:
        """An unknown user costs nothing: one short reply, no model call, no stored history."""
        await self.notifier.send(
            chat_id,
            f"Sorry, this bot only answers people on its allowlist.\n\nYour Telegram user id is "
            f"`{user_id}`. To get access, send it to the bot's owner and ask them to add it to "
            f"`KEEL_ALLOWED_USER_IDS`.",
            thread_id=thread_id,
        )

    def addressed(self, message: IncomingMessage) -> bool:
        """Private chats always; groups when the bot is mentioned or replied to."""
        return message.is_private or message.mentions_bot or message.replies_to_bot

    # ------------------------------------------------------------------ one message

    async def handle(self, message: IncomingMessage, payload: dict[str, object]) -> None:
        if message.edited:
            await self.notifier.send(
                message.chat_id, "I answer new messages only; edits are not re-read. Send the "
                "corrected text as a new message if you want a new answer.",
                thread_id=message.thread_id, reply_to=message.message_id)
            return
        if message.media is not None and not message.text:
            what = UNSUPPORTED_MEDIA.get(message.media, "this kind of message")
            await self.notifier.send(
                message.chat_id, f"I can't read {what} yet — please send your request as text.",
                thread_id=message.thread_id, reply_to=message.message_id)
            return
        if not message.text:
            return
        if message.reply_to_message_id is not None and message.replies_to_bot and \
                await self.escalations.on_reply(message.chat_id, message.reply_to_message_id,
                                                message.text, message.user_id, message.user_name):
            return
        fresh = await self.inbox.receive(
            update_id=message.update_id, chat_id=message.chat_id, thread_id=message.thread_id,
            user_id=message.user_id, payload=payload,
        )
        if not fresh:
            log.info("update %s already received; not answering twice", message.update_id)
            return
        await self.process(message)

    async def process(self, message: IncomingMessage) -> None:
        key = message.conversation
        async with self.locks.hold(key):
            try:
                await self._answer(message)
            finally:
                self.active.pop(key, None)

    async def _answer(self, message: IncomingMessage) -> None:
        await self.inbox.mark(message.update_id, "processing")
        text = message.text
        if message.media is not None:
            text += f"\n\n[The person also attached {UNSUPPORTED_MEDIA.get(message.media)}, which " \
                    "you cannot see.]"
        conversation = await self.runtime.conversations.get_or_create(message.chat_id,
                                                                      message.thread_id)
        try:
            await self.runtime.check_daily_caps(message.user_id)
        except DailyCapExceeded as exc:
            await self._reply(message, f"⚠️ {exc}", run_id=None)
            return
        route = None
        if conversation.pinned_agent and conversation.pinned_agent in self.runtime.agents:
            agent = conversation.pinned_agent
        else:
            route = await self.runtime.route(text, current=conversation.current_agent)
            agent = route.agent
            await self.runtime.conversations.set_current_agent(conversation.id, agent)
        run_id = new_id()
        self.active[message.conversation] = run_id
        try:
            # Typing and drafts share Telegram's rate limit with answers: under load, answers
            # go first and the cosmetic traffic is shed.
            quiet = len(self.active) > PROGRESS_MAX_ACTIVE_RUNS
            async with Progress(self.bot, message.chat_id, message.thread_id,
                                private=message.is_private, draft_id=message.message_id,
                                quiet=quiet) as progress:
                turn = await self.sessions.turn(
                    chat_id=message.chat_id, thread_id=message.thread_id, agent=agent,
                    content=[{"type": "text", "text": text}], user_id=message.user_id,
                    on_progress=progress, run_id=run_id, route=route,
                )
        except KeelError as exc:
            await self._reply(message, f"⚠️ {exc}", run_id=run_id)
            return
        if turn.result.status == "waiting_human":
            await self.inbox.mark(message.update_id, "done", run_id=run_id)
            await self.escalations.ask(turn.result, chat_id=message.chat_id,
                                       thread_id=message.thread_id)
            return
        await self._reply(message, answer_text(turn.result), run_id=turn.result.run_id)
        if turn.result.status == "budget_exceeded" and turn.result.state is not None:
            await self.escalations.ask_budget(turn.result, chat_id=message.chat_id,
                                              thread_id=message.thread_id)

    async def _reply(self, message: IncomingMessage, markdown: str, *, run_id: str | None) -> None:
        async with self.runtime.db.write() as conn:
            item = await self.outbox.put(
                conn, chat_id=message.chat_id, thread_id=message.thread_id,
                reply_to=None if message.is_private else message.message_id,
                markdown=markdown, inbox_update_id=message.update_id, run_id=run_id)
            await conn.execute(
                "UPDATE inbox SET status = 'done', run_id = ?, done_at = ? WHERE update_id = ?",
                (run_id, now_iso(), message.update_id))
        await self.outbox.deliver(item)

    # ------------------------------------------------------------------ recovery

    async def recover(self) -> tuple[int, int]:
        """Send pending replies, then answer received-but-unanswered updates. Returns counts."""
        interrupted = await self.runtime.runs.fail_interrupted("interrupted: the bot stopped "
                                                               "while this run was working")
        if interrupted:
            log.warning("%d run(s) were interrupted by the last stop", interrupted)
        sent = 0
        for item in await self.outbox.pending():
            try:
                await self.outbox.deliver(item.id)
                sent += 1
            except Exception as exc:
                log.error("could not deliver pending reply %s: %s", item.id, exc)
        answered = 0
        for entry in await self.inbox.unfinished():
            message = _message_from_payload(entry.payload, self)
            if message is None:
                await self.inbox.mark(entry.update_id, "ignored")
                continue
            spawn(self.process(message), f"recover update {entry.update_id}")
            answered += 1
        return sent, answered

    def cancel(self, key: tuple[int, int]) -> bool:
        run_id = self.active.get(key)
        return bool(run_id) and self.runtime.cancel(run_id)  # type: ignore[arg-type]


_background: set[asyncio.Task[None]] = set()


def spawn(coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
    """Run ``coro`` in the background, keep a reference, and log (never lose) its failure."""
    task = asyncio.create_task(coro, name=what)
    _background.add(task)

    def done(t: asyncio.Task[None]) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("background task %r failed", what, exc_info=t.exception())

    task.add_done_callback(done)
    return task


def answer_text(result: RunResult) -> str:
    """What the person sees: the answer, or what stopped the run and where to look."""
    if result.status == "completed" and result.output:
        return result.output
    if result.status == "waiting_human":
        return result.output or "⏸ I need a decision before I can go on (see the question above)."
    lines = []
    if result.output:
        lines.append(result.output)
        lines.append("")
    lines.append(f"⚠️ The run {describe(result.status)}" + (f": {result.detail}." if result.detail else "."))
    lines.append(f"Trace: `{result.trace_id}` (`/trace {result.trace_id[:8]}`)")
    return "\n".join(lines)


def _message_from_payload(payload: dict[str, object], keel: KeelBot) -> IncomingMessage | None:
    from telegram import Update

    from bot.events import from_update

    update = Update.de_json(payload, keel.bot)
    if update is None:
        return None
    return from_update(update, bot_id=keel.bot.id, bot_username=keel.bot.username)
