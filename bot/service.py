"""The conversation flow of one message, from a stored update to a delivered answer.

inbox (committed by the poller before Telegram is told) → per-conversation lock → router (unless
pinned, inside the run's deadline) → session turn (a bounded run) → the run's outcome, its history,
its reply and the finished inbox row in ONE transaction → delivery → compaction. After a crash,
``recover()`` answers what was received but not answered, and sends what was answered but not
sent — each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from typing import Any

from telegram import Bot

from agents.errors import DailyCapExceeded, KeelError
from agents.ids import new_id
from agents.notify import DeliveryError
from agents.router import RouteDecision
from agents.run import RunResult, describe
from agents.runtime import OnCommit, Runtime
from agents.sessions import Sessions
from agents.tools.send_file import files_sent
from bot import ratings
from bot.access import Access, Role
from bot.delivery import ChunkSender, Outbox, OutboxNotifier
from bot.events import IncomingMessage
from bot.media import Media, MediaRefused
from bot.progress import Progress
from storage.files import Blobs
from storage.inbox import Inbox
from storage.outbox import OutboxItem

log = logging.getLogger(__name__)

CANCELLED_BEFORE_START = "Cancelled before the agent started; nothing more will happen."

PROGRESS_MAX_ACTIVE_RUNS = 10
"""Above this many runs at once, no typing actions or drafts: replies keep the rate limit."""

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


INTAKE_AT_ONCE = 24
"""Messages between being taken and their first model call (the router's, or the run's) at once.
Under a burst every message needs a few milliseconds of the event loop before its model call;
with all of them interleaved, every one waited for nearly all the others (the first replies of a
1,000-chat burst left after ~10 s, when the last model call had started). Taken in turn, the first
model calls start, and their replies leave, while later messages are still being read. With 64 at
once, the loop still had so many of them ready at a time that it ran late by over 50 ms 14 and 120
times in two 1,000-chat bursts; with 16, once and twice, and the replies drained as fast. Once a
message's hops to the database got lighter (``storage/lane.py``), 24 started every model call of
a 1,000-chat burst sooner than 16 in four pairs out of four (2.97 s against 3.14 s on average),
with the longest stall 19-27 ms against 17-18 ms; 32 went a little further (2.88 s, two runs) with
stalls of 28-30 ms, closer to the 50 ms that issue 15 allows. A message with files gives its slot
back while they download (see ``_answer``)."""


class IntakeGate:
    """At most ``limit`` messages at once on their way to a first model call, in arrival order."""

    def __init__(self, limit: int = INTAKE_AT_ONCE) -> None:
        self._slots = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Callable[[], None]]:
        """A slot, held until the returned callable is called (the model call starts) or the
        block ends, whichever comes first."""
        await self._slots.acquire()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._slots.release()

        try:
            yield release
        finally:
            release()


class KeelBot:
    def __init__(self, runtime: Runtime, bot: Bot) -> None:
        self.runtime = runtime
        self.bot = bot
        self.settings = runtime.settings
        self.sessions = Sessions(runtime)
        self.outbox = Outbox(runtime.db, ChunkSender(bot, shared=_shared_buckets(runtime.db)),
                             after_delivery=self._after_delivery,
                             files=Blobs(self.settings.files_dir))
        self.media = Media(bot, runtime.db, self.settings)
        self.notifier = OutboxNotifier(bot, self.outbox)
        self.inbox = Inbox(runtime.db)
        self.locks = ConversationLocks()
        self.intake = IntakeGate()
        self.active: dict[tuple[int, int], str] = {}  # conversation → running run id
        self.routing: dict[tuple[int, int], asyncio.Task[Any]] = {}  # conversation → router call
        from bot.escalations import Escalations

        self.escalations = Escalations(self, ttl=timedelta(seconds=self.settings.escalation_ttl_s))

    # ------------------------------------------------------------------ gates

    @functools.cached_property
    def access(self) -> Access:
        return Access(self.runtime.db, self.settings)

    async def allowed(self, user_id: int, need: Role = "user") -> bool:
        """The one gate: messages, commands and button presses all ask it."""
        return await self.access.may(user_id, need)

    async def tell_unknown_user(self, chat_id: int, user_id: int, thread_id: int | None, *,
                                private: bool) -> None:
        """A stranger costs nothing: no model call, no stored history, and at most one reply a
        day, in a private chat only (in a group keel stays silent). The reply names no setting."""
        if not private:
            log.debug("ignoring user %s in group %s: not allowed", user_id, chat_id)
            return
        if not await self.access.first_reply_today(user_id):
            log.debug("not allowed user %s was already told today", user_id)
            return
        await self.notifier.send(
            chat_id,
            f"Sorry, this bot is private: it only answers people its owner has let in.\n\n"
            f"Your Telegram user id is `{user_id}`. If you know the owner, send them this id and "
            f"ask them to add you.",
            thread_id=thread_id,
        )

    def addressed(self, message: IncomingMessage) -> bool:
        """Private chats always; groups when the bot is mentioned or replied to."""
        return message.is_private or message.mentions_bot or message.replies_to_bot

    # ------------------------------------------------------------------ one message

    async def handle(self, message: IncomingMessage) -> None:
        """A message update the poller already committed to the inbox."""
        if message.edited:
            await self.say(message, "I answer new messages only; edits are not re-read. Send the "
                           "corrected text as a new message if you want a new answer.")
            return
        if message.media is not None:
            # kind and size are decided from the update: a refused file is never downloaded
            refusal = None if message.media_group_id else self.media.refusal(message)
            if refusal is not None:
                await self.say(message, refusal)
                return
            await self.process(message)  # a file is a request, never a reply to a question
            return
        if not message.text:
            return
        if message.reply_to_message_id is not None and message.replies_to_bot and \
                await self.escalations.on_reply(message.chat_id, message.reply_to_message_id,
                                                message.text, message.user_id, message.user_name):
            return
        if message.reply_to_message_id is None and await self.escalations.ask_if_answer(message):
            return  # a question is pending here: the person says whether this answers it
        await self.process(message)

    async def say(self, message: IncomingMessage, markdown: str, *,
                  run_id: str | None = None) -> None:
        """Answer a stored message without a run: the reply and the finished inbox row commit
        together, then the reply is delivered."""
        async with self.runtime.db.write() as conn:
            item = await self.outbox.put(
                conn, chat_id=message.chat_id, thread_id=message.thread_id,
                reply_to=None if message.is_private else message.message_id, markdown=markdown,
                inbox_update_id=message.update_id, run_id=run_id, leased=True)
            await Inbox.close(conn, message.update_id, "done", run_id=run_id)
        await self._deliver([item], message.chat_id)

    async def process(self, message: IncomingMessage, *, taken: bool = False) -> None:
        """Answer a message with a run. ``taken``: the caller already owns the inbox row (a
        message first held back to ask whether it answered a pending question)."""
        if not taken and not await self.inbox.take(message.update_id):
            log.info("update %s is already answered; not answering twice", message.update_id)
            return
        key = message.conversation
        async with self.locks.hold(key), self.intake.slot() as started_calling:
            run_id = None
            try:
                run_id = await self._answer(message, started_calling)
            finally:
                self.active.pop(key, None)
                if run_id is not None:
                    self.runtime.forget_cancel(run_id)

    async def _answer(self, message: IncomingMessage,
                      started_calling: Callable[[], None] = lambda: None) -> str | None:
        """Route and run one message; returns the run id it used (None before one was made).
        ``started_calling``: gives the intake slot back; called when the first model call is about
        to start, or before the message's files download."""
        # The run's deadline starts now, when the request is taken, and covers routing.
        started = time.monotonic()
        if message.files or message.media_group_id:
            # A download (or an album's wait for its other parts) can take seconds: the intake
            # slot orders the event loop's work between messages and must not hold other
            # chats back meanwhile.
            started_calling()
        try:
            intake = await self.media.intake(message)  # files downloaded (once) and read
        except MediaRefused as exc:
            await self.say(message, str(exc))
            await self.media.close_parts(exc.parts)
            return None
        text = intake.text
        # two reads at once: each is a hop to a reader thread under a burst, waited for while
        # the message holds its intake slot (issue 15)
        conversation, refused = await asyncio.gather(
            self.runtime.conversations.get_or_create(message.chat_id, message.thread_id),
            self._caps_refusal(message.user_id))
        if refused is not None:
            await self.say(message, f"⚠️ {refused}")
            return None
        route = None
        run_id = new_id()
        self.active[message.conversation] = run_id
        items: list[int] = []
        try:
            # Typing and drafts share Telegram's rate limit with answers: under load, answers
            # go first and the cosmetic traffic is shed. Typing starts before routing, so the
            # person sees keel at work from the first moment.
            quiet = len(self.active) > PROGRESS_MAX_ACTIVE_RUNS
            async with Progress(self.bot, message.chat_id, message.thread_id,
                                private=message.is_private, draft_id=message.message_id,
                                quiet=quiet, budget=self.outbox.sender) as progress:
                if conversation.pinned_agent and conversation.pinned_agent in self.runtime.agents:
                    agent = conversation.pinned_agent
                else:
                    route = await self._route(message, text, conversation.current_agent,
                                              conversation.id, started, run_id,
                                              started_calling)
                    if route is None:
                        await self.say(message, CANCELLED_BEFORE_START, run_id=run_id)
                        return run_id
                    agent = route.agent
                    if agent != conversation.current_agent:  # a write only when it changed
                        await self.runtime.conversations.set_current_agent(conversation.id,
                                                                           agent)
                turn = await self.sessions.turn(
                    chat_id=message.chat_id, thread_id=message.thread_id, agent=agent,
                    content=intake.content, user_id=message.user_id,
                    on_progress=progress, run_id=run_id, route=route,
                    request_key=f"tg:{message.update_id}", started=started,
                    conversation=conversation, daily_caps_checked=route is None,
                    on_start=functools.partial(_run_started, update_id=message.update_id,
                                               then=started_calling),
                    on_commit=self.outcome_commit(
                        chat_id=message.chat_id, thread_id=message.thread_id,
                        reply_to=None if message.is_private else message.message_id,
                        update_id=message.update_id, items=items,
                        asker=(message.user_id, message.user_name), parts=intake.parts),
                )
        except KeelError as exc:
            await self.say(message, f"⚠️ {exc}", run_id=run_id)
            return run_id
        await self._deliver(items, message.chat_id)
        # Compaction is its own step after the reply is committed and sent: a crash before it
        # loses nothing and repeats nothing (the next turn compacts instead).
        await self.sessions.maybe_compact(turn.session_id, user_id=message.user_id,
                                          history_tokens=turn.history_tokens,
                                          outgrown=turn.outgrown)
        return run_id

    async def _caps_refusal(self, user_id: int | None) -> DailyCapExceeded | None:
        """Why a daily cap refuses this person a run now, or None."""
        try:
            await self.runtime.check_daily_caps(user_id)
        except DailyCapExceeded as exc:
            return exc
        return None

    async def _route(self, message: IncomingMessage, text: str, current: str | None,
                     conversation_id: int, started: float, run_id: str,
                     on_call: Callable[[], None] | None = None) -> RouteDecision | None:
        """The router's choice, in a task of its own so /cancel can stop it; None if it was
        cancelled on request."""
        task = asyncio.ensure_future(self.runtime.route(
            text, current=current, deadline=started + self.settings.run_timeout_s,
            run_id=run_id, user_id=message.user_id, conversation_id=conversation_id,
            on_call=on_call))
        self.routing[message.conversation] = task
        try:
            return await task
        except asyncio.CancelledError:
            current_task = asyncio.current_task()
            if current_task is not None and current_task.cancelling():
                raise  # shutdown, not /cancel
            log.info("run %s cancelled on request while routing", run_id)
            return None
        finally:
            self.routing.pop(message.conversation, None)

    def outcome_commit(self, *, chat_id: int, thread_id: int | None, reply_to: int | None,
                       update_id: int | None, items: list[int],
                       asker: tuple[int, str] | None = None,
                       parts: tuple[int, ...] = ()) -> OnCommit:
        """What a finished run commits with its outcome, in the same transaction: its reply (or
        its question) after the files it sent, and the inbox row of the message it answered (and
        of the album's other ``parts``). Outbox ids go to ``items``."""

        async def commit(conn: Any, result: RunResult) -> None:
            if result.status == "waiting_human":
                items.append(await self.escalations.ask_in(conn, result, chat_id=chat_id,
                                                           thread_id=thread_id, extra=items,
                                                           asker=asker))
                await close_inbox(conn, result)
                return
            for file in files_sent(result.messages):  # send_file: delivered once, first
                items.append(await self.outbox.put(
                    conn, chat_id=chat_id, thread_id=thread_id, reply_to=None,
                    markdown=file.get("caption") or "", run_id=result.run_id, file=file))
            rating = ratings.offer(self.runtime, result, asker)  # 👍/👎 when turned on
            budget = result.status == "budget_exceeded" and result.state is not None
            await close_inbox(conn, result)
            # usually the reply is the transaction's last statement: it commits in the same
            # hop, so a finished run holds the write lock for one hop, not two (issue 15)
            items.append(await self.outbox.put(
                conn, chat_id=chat_id, thread_id=thread_id, reply_to=reply_to,
                markdown=answer_text(result), inbox_update_id=update_id,
                run_id=result.run_id, buttons=rating.buttons if rating else None,
                last=rating is None and not budget, leased=True))
            if rating is not None:
                await rating.store(conn, outbox_id=items[-1], chat_id=chat_id)
            if budget:
                items.append(await self.escalations.ask_budget_in(
                    conn, result, chat_id=chat_id, thread_id=thread_id))

        async def close_inbox(conn: Any, result: RunResult) -> None:
            if update_id is not None:
                await Inbox.close(conn, update_id, "done", run_id=result.run_id)
            for part in parts:
                await Inbox.close(conn, part, "done", run_id=result.run_id)

        return commit

    async def _deliver(self, items: list[int], chat_id: int) -> None:
        """Deliver a message's replies (every one in its chat)."""
        for item in items:
            try:
                await self.outbox.deliver(item, chat_id=chat_id)
            except DeliveryError as exc:
                log.error("outbox item %s not delivered: %s", item, exc)

    async def _after_delivery(self, item: OutboxItem, message_ids: list[int]) -> None:
        sent = [m for m in message_ids if m]
        if item.escalation_id is not None and sent:
            await self.escalations.repo.set_message(item.escalation_id, sent[-1])

    # ------------------------------------------------------------------ recovery

    async def recover(self) -> tuple[int, int]:
        """Close what the last process left: interrupted runs get their run_end, pending replies
        are sent (a chunk in flight is not resent), stored updates not yet answered are answered.
        Returns (replies sent, messages re-answered)."""
        charged = await self.runtime.release_stale_holds()
        if charged:
            log.warning("budget holds of interrupted runs charged as spent: $%.4f", charged)
        interrupted = await self.runtime.close_interrupted()
        if interrupted:
            log.warning("%d run(s) were interrupted by the last stop; their requests are retried",
                        interrupted)
        sent = await self.outbox.sweep()
        answered = 0
        for entry in await self.inbox.unfinished():
            update = _update_from_payload(entry.payload, self)
            if update is None:
                await self.inbox.mark(entry.update_id, "ignored")
                continue
            if self.dispatch is not None:
                self.dispatch(update)
            answered += 1
        await self.escalations.recover()
        return sent, answered

    dispatch: Callable[[Any], Any] | None = None
    """Set by the app: hands an update to the handlers (the same path as a fresh one)."""

    def cancel(self, key: tuple[int, int]) -> bool:
        """Stop the run of this conversation at whatever stage it is: routing (the router call
        is cancelled), starting (the run ends cancelled as soon as it begins) or running."""
        run_id = self.active.get(key)
        if not run_id:
            return False
        routing = self.routing.get(key)
        if routing is not None and not routing.done():
            routing.cancel()
            return True
        return self.runtime.cancel(run_id, before_start=True)


_background: set[asyncio.Task[None]] = set()


def _shared_buckets(db: Any) -> Any:
    """On PostgreSQL, Telegram's limits are shared by every process of the deployment."""
    if getattr(db, "dialect", "sqlite") != "postgresql":
        return None
    from storage.rate import SharedBucket

    return lambda name, rate, per: SharedBucket(db, name, rate, per)


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
    if result.status == "cancelled":
        lines.append("⚠️ Cancelled, as you asked." if result.detail in (None, "cancelled on request")
                     else f"⚠️ The run was cancelled: {result.detail}.")
    else:
        lines.append(f"⚠️ The run {describe(result.status)}"
                     + (f": {result.detail}." if result.detail else "."))
    lines.append(f"Trace: `{result.trace_id}` (`/trace {result.trace_id[:8]}`)")
    return "\n".join(lines)


def _update_from_payload(payload: dict[str, object], keel: KeelBot) -> Any:
    from telegram import Update

    return Update.de_json(payload, keel.bot)


async def _run_started(conn: Any, *, update_id: int, then: Callable[[], None]) -> None:
    """A run's first write (with its first budget hold, right before its model call): the
    message becomes ``processing``, and its intake slot is free."""
    await Inbox.taken_in(conn, update_id)
    then()
