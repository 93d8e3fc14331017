"""Sending to Telegram: nothing lost, nothing twice, one chat's flood wait stalls no other chat.

Every message goes through the outbox (``storage/outbox.py``): it is committed first, then sent
chunk by chunk, each accepted chunk recorded. There is one retry layer, here, and its policy is
decided by what the error proves about the request:

- **certainly not received** — the connection was never made (connect error, connect or pool
  timeout), the request was not fully written, or Telegram answered with a 429 (flood control:
  wait ``retry_after`` in this chat only) or a 5xx answer: retried, boundedly, with backoff;
- **refused** — a 400/403 answer: a formatting rejection is resent once as plain text, anything
  else fails the item (the person cannot be reached; retrying would not change that);
- **ambiguous** — the request was sent but no answer came (read timeout, connection dropped after
  sending), or the bot died with the chunk in flight: Telegram may have shown it. It is **not
  resent**; it is recorded as unconfirmed (message id 0) and delivery goes on with the next chunk.
  Duplicate replies are the failure people hate most in chat bots, and a duplicate cannot be taken
  back, while the rare missing chunk is visible in the outbox and the log. To keep this case
  rare, sends get a long read timeout: an answer that is merely late is still an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    MessageEntity,
    ReplyParameters,
)
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

from agents.notify import Button, Delivered, DeliveryError
from bot.render import Chunk, render
from bot.telegram_http import RequestNotSent
from storage.db import Database
from storage.files import Blobs
from storage.inbox import Inbox
from storage.outbox import OutboxButton, OutboxItem, OutboxRepository

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
"""Sends of one chunk that certainly did not reach Telegram, before the item waits for the sweep."""
BACKOFF_BASE_S = 0.5
MAX_RETRY_AFTER_S = 120.0
MAX_FLOOD_WAITS = 8
SEND_READ_TIMEOUT_S = 30.0
"""Telegram answers in milliseconds; a slower answer is still an answer, not a reason to resend."""
GLOBAL_RATE = 30.0
"""Messages per second across all chats (Telegram's overall limit for a bot)."""
GROUP_RATE = (20, 60.0)
"""Messages per window in one group (Telegram: 20 a minute)."""

# Errors raised before a request was fully written: Telegram cannot have processed it. httpx's
# (start-up calls, and every call until aiohttp is imported) and bot/telegram_http.py's marker.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError,
             httpx.WriteTimeout, httpx.UnsupportedProtocol, httpx.LocalProtocolError,
             RequestNotSent)


class NotSent(DeliveryError):
    """Telegram certainly did not receive the chunk, and retrying now did not help."""


class Refused(DeliveryError):
    """Telegram answered that it will not deliver this (chat not found, bot blocked, ...)."""


class Unconfirmed(DeliveryError):
    """The chunk was sent and no answer came back: it may or may not have arrived."""


def _entities(chunk: Chunk) -> list[MessageEntity]:
    return [MessageEntity.de_json(e.to_api(), None) for e in chunk.entities]


def _markup(buttons: list[list[OutboxButton]] | list[list[Button]] | None) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(b.label, callback_data=b.key) for b in row] for row in buttons]
    )


def _retry_after_seconds(exc: RetryAfter) -> float:
    value = exc._retry_after if hasattr(exc, "_retry_after") else exc.retry_after
    return float(value.total_seconds() if hasattr(value, "total_seconds") else value)


def never_reached_telegram(exc: BaseException) -> bool:
    """True when the error proves the request was not received: no connection, a partial
    write, or an HTTP answer (a 5xx is Telegram saying it did not do it)."""
    cause = exc.__cause__
    if isinstance(cause, _NOT_SENT):
        return True
    if isinstance(exc, TimedOut):
        return False  # read timeout: sent, no answer
    return cause is None  # NetworkError built from an HTTP error answer, e.g. 502 Bad Gateway


class _Bucket:
    """A token bucket: ``rate`` sends per ``per`` seconds, bursts up to ``rate``."""

    def __init__(self, rate: float, per: float) -> None:
        self.capacity = rate
        self.fill = rate / per
        self.tokens = rate
        self.at = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.fill)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.fill)

    def try_take(self, *, keep: float) -> bool:
        """Take a token now only if more than ``keep`` stay afterwards; never waits."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.fill)
        self.at = now
        if self.tokens - 1 < keep:
            return False
        self.tokens -= 1
        return True


class ChunkSender:
    """One chunk to Telegram under the policy above: a message id, or a typed DeliveryError."""

    def __init__(self, bot: Bot, *, backoff_base_s: float = BACKOFF_BASE_S,
                 global_rate: float = GLOBAL_RATE,
                 shared: Callable[[str, float, float], Any] | None = None) -> None:
        """``shared(name, rate, per)``: buckets every process of a deployment takes from
        (storage/rate.py, on PostgreSQL); without it this process paces itself alone."""
        self.bot = bot
        self.backoff_base_s = backoff_base_s
        self._global = _Bucket(global_rate, 1.0)
        self._groups: dict[int, _Bucket] = {}
        self._shared = shared
        self._shared_buckets: dict[str, Any] = {}

    async def _pace(self, chat_id: int) -> None:
        if self._shared is not None:
            if chat_id < 0:
                await self._shared_bucket(f"group:{chat_id}", *GROUP_RATE).take()
            await self._shared_bucket("global", self._global.capacity, 1.0).take()
            return
        if chat_id < 0:  # groups and supergroups have negative ids
            bucket = self._groups.get(chat_id)
            if bucket is None:
                bucket = self._groups[chat_id] = _Bucket(*GROUP_RATE)
            await bucket.take()
        await self._global.take()

    def _shared_bucket(self, name: str, rate: float, per: float) -> Any:
        bucket = self._shared_buckets.get(name)
        if bucket is None:
            assert self._shared is not None
            bucket = self._shared_buckets[name] = self._shared(name, rate, per)
        return bucket

    def try_cosmetic(self, chat_id: int) -> bool:
        """May a cosmetic message (a streamed preview or its edit) go to ``chat_id`` now? It
        takes a slot of the same budgets answers use, only while half of them stay free, and
        never waits: under load previews are shed first and answers keep the rate."""
        if chat_id < 0:
            bucket = self._groups.get(chat_id)
            if bucket is None:
                bucket = self._groups[chat_id] = _Bucket(*GROUP_RATE)
            if not bucket.try_take(keep=GROUP_RATE[0] / 2):
                return False
        return self._global.try_take(keep=self._global.capacity / 2)

    async def send(self, chat_id: int, chunk: Chunk, *, thread_id: int | None,
                   reply_to: int | None, markup: InlineKeyboardMarkup | None,
                   handing_over: Callable[[], Awaitable[None]] | None = None,
                   not_handed_over: Callable[[], Awaitable[None]] | None = None,
                   document: tuple[str, bytes] | None = None) -> int:
        """Send one chunk. ``handing_over`` is awaited right before each attempt leaves (after
        pacing); ``not_handed_over`` as soon as an attempt is known not to have been shown (an
        answer refusing it, or no connection made), before any wait. So a chunk is marked in
        flight only while a request may really be on its way — not while keel waits out a
        backoff or a flood, where a crash would wrongly leave it "possibly delivered".
        With ``document`` (file name, bytes) the chunk is that document's caption."""
        async def released() -> None:
            if not_handed_over is not None:
                await not_handed_over()

        plain = False
        failures = flood_waits = 0
        while True:
            await self._pace(chat_id)
            if handing_over is not None:
                await handing_over()
            try:
                if document is not None:
                    message = await self.bot.send_document(
                        chat_id, document=document[1], filename=document[0],
                        caption=(chunk.plain if plain else chunk.text) or None,
                        caption_entities=None if plain else (_entities(chunk) or None),
                        message_thread_id=thread_id,
                        reply_parameters=ReplyParameters(reply_to, allow_sending_without_reply=True)
                        if reply_to else None,
                        read_timeout=SEND_READ_TIMEOUT_S, write_timeout=SEND_READ_TIMEOUT_S)
                    return message.message_id
                message = await self.bot.send_message(
                    chat_id, chunk.plain if plain else chunk.text,
                    entities=None if plain else (_entities(chunk) or None),
                    message_thread_id=thread_id,
                    reply_parameters=ReplyParameters(reply_to, allow_sending_without_reply=True)
                    if reply_to else None,
                    reply_markup=markup,
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                    read_timeout=SEND_READ_TIMEOUT_S,
                )
                return message.message_id
            except RetryAfter as exc:
                await released()
                flood_waits += 1
                if flood_waits > MAX_FLOOD_WAITS:
                    raise NotSent(f"flood control in chat {chat_id} did not lift") from exc
                wait = min(_retry_after_seconds(exc), MAX_RETRY_AFTER_S)
                log.warning("flood control in chat %s: waiting %.1f s (other chats go on)",
                            chat_id, wait)
                await asyncio.sleep(wait)
            except BadRequest as exc:
                await released()
                text = str(exc).lower()
                if not plain and ("entit" in text or "parse" in text):
                    log.warning("Telegram rejected formatting (%s); resending as plain text", exc)
                    plain = True
                    continue
                raise Refused(f"Telegram refused the message: {exc}") from exc
            except Forbidden as exc:
                await released()
                raise Refused(f"the bot cannot write to chat {chat_id}: {exc}") from exc
            except (TimedOut, NetworkError) as exc:
                if not never_reached_telegram(exc):
                    raise Unconfirmed(f"sent, but Telegram did not answer: {exc}") from exc
                await released()
                failures += 1
                if failures >= MAX_ATTEMPTS:
                    raise NotSent(f"Telegram unreachable after {failures} attempts: {exc}") from exc
                await asyncio.sleep(self.backoff_base_s * 2 ** (failures - 1)
                                    * (1 + random.random()))


AfterDelivery = Callable[[OutboxItem, list[int]], Awaitable[None]]


class Outbox:
    """Delivers outbox rows: one at a time per chat (in order), many chats at once."""

    def __init__(self, db: Database, sender: ChunkSender, *,
                 after_delivery: AfterDelivery | None = None, files: Blobs | None = None) -> None:
        self.db = db
        self.files = files  # where a document row's bytes are (storage/files.py)
        self.repo = OutboxRepository(db)
        self.sender = sender
        self.after_delivery = after_delivery
        self._chats: dict[int, tuple[asyncio.Lock, int]] = {}
        self._maybe_lost: set[int] = set()
        """Rows found with a chunk in flight at start: their chat is told after delivery."""

    @contextlib.asynccontextmanager
    async def _chat(self, chat_id: int) -> AsyncIterator[None]:
        lock, users = self._chats.get(chat_id, (asyncio.Lock(), 0))
        self._chats[chat_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._chats[chat_id]
            if users <= 1:
                del self._chats[chat_id]
            else:
                self._chats[chat_id] = (lock, users - 1)

    async def put(self, conn: Any, *, chat_id: int, thread_id: int | None, reply_to: int | None,
                  markdown: str, inbox_update_id: int | None = None, run_id: str | None = None,
                  buttons: list[list[Button]] | None = None,
                  escalation_id: str | None = None, file: dict[str, Any] | None = None,
                  last: bool = False, leased: bool = False) -> int:
        """Insert inside the caller's write transaction (``file``: a document, see OutboxItem;
        ``last`` and ``leased``: see ``storage.outbox.OutboxRepository.put``)."""
        return await self.repo.put(
            conn, chat_id=chat_id, thread_id=thread_id, reply_to=reply_to, markdown=markdown,
            inbox_update_id=inbox_update_id, run_id=run_id, escalation_id=escalation_id, file=file,
            last=last, leased=leased,
            buttons=[[OutboxButton(label=b.label, key=b.key) for b in row]
                     for row in buttons] if buttons else None)

    async def enqueue(self, **kwargs: Any) -> int:
        async with self.db.write() as conn:
            return await self.put(conn, **kwargs)

    async def pending(self) -> list[OutboxItem]:
        return await self.repo.pending()

    async def deliver(self, item_id: int, *, chat_id: int | None = None) -> Delivered | None:
        """Send what is left of the item. Returns the message ids (0 for an unconfirmed chunk),
        None if the item is gone or already finished; raises DeliveryError when it could not be
        sent (the item is then ``failed``, or still ``pending`` for the sweep when Telegram was
        unreachable). ``chat_id``: the item's chat, when the caller knows it (its row is then
        read once, in the chat's turn; an item of another chat, an escalation asked in the
        approver's chat, is then delivered in its own chat's turn)."""
        if chat_id is None:
            item = await self.repo.get(item_id)
            if item is None:
                log.error("outbox item %s vanished before delivery", item_id)
                return None
            chat_id = item.chat_id
        async with self._chat(chat_id):
            item = await self.repo.get(item_id)  # another delivery may have finished it
            if item is None or item.status != "pending":
                return None
            if item.chat_id == chat_id:
                # a row this process committed to deliver at once was born with its lease
                if not item.leased_to_this_process() and not await self.repo.lease(item_id):
                    # another process is delivering it
                    log.info("outbox %s is being delivered by another process", item_id)
                    return None
                try:
                    delivered = await self._deliver(item)
                except BaseException:
                    await asyncio.shield(self.repo.release(item_id))
                    raise  # (a delivered row's lease was cleared with its status, in one write)
        if item.chat_id != chat_id:
            return await self.deliver(item_id)
        if item_id in self._maybe_lost:  # after the chat's lock: the notice is a row of its own
            self._maybe_lost.discard(item_id)
            await self._tell_maybe_lost(item)
        return delivered

    async def _tell_maybe_lost(self, item: OutboxItem) -> None:
        """A reply whose chunk was in flight when the process died may not have arrived, and
        keel will not resend it unasked (it would show twice if it did arrive). The person is
        told, with a button that sends it again (bot/resend.py). The notice answers the same
        message the reply answered, so the person can tell which reply it is about."""
        from bot.resend import NOTICE, button_key

        try:
            answered = item.reply_to or await self._message_answered(item)
            async with self.db.write() as conn:
                notice = await self.repo.put(
                    conn, chat_id=item.chat_id, thread_id=item.thread_id, reply_to=answered,
                    markdown=NOTICE,
                    buttons=[[OutboxButton(label="Send it again", key=button_key(item.id))]])
            await self.deliver(notice)
        except DeliveryError as exc:
            log.warning("could not tell chat %s that a reply may be missing: %s",
                        item.chat_id, exc)

    async def _message_answered(self, item: OutboxItem) -> int | None:
        """The person's message a reply answers (private replies do not quote it), from its
        stored update; None for a reply to no message or once retention emptied the row."""
        stored = await Inbox(self.db).get(item.inbox_update_id) \
            if item.inbox_update_id is not None else None
        message = (stored.payload.get("message") or {}) if stored is not None else {}
        answered = message.get("message_id")
        return answered if isinstance(answered, int) else None

    async def _deliver(self, item: OutboxItem) -> Delivered:
        ids = list(item.message_ids)
        if item.inflight_chunk is not None and item.inflight_chunk == len(ids):
            # handed over when the process died: it may have arrived, so it is not resent
            ids.append(0)
            await self.repo.unconfirmed(item.id, ids, "in flight when the bot stopped")
            if item.kind == "text" and not item.buttons and item.escalation_id is None:
                self._maybe_lost.add(item.id)
            log.warning("outbox %s: chunk %d was in flight when the bot stopped; not resending it",
                        item.id, len(ids) - 1)
        chunks = render(item.markdown) or [Chunk(text="(empty answer)")]
        document = None
        if item.kind == "document":
            document = await self._document(item)
            chunks = (render(item.markdown) or [Chunk(text="")])[:1]  # the caption
        finished = False
        for index in range(len(ids), len(chunks)):
            last = index == len(chunks) - 1
            try:
                message_id = await self.sender.send(
                    item.chat_id, chunks[index], thread_id=item.thread_id,
                    reply_to=item.reply_to if index == 0 else None,
                    markup=_markup(item.buttons) if last else None,
                    handing_over=functools.partial(self.repo.handing_over, item.id, index),
                    not_handed_over=functools.partial(self.repo.not_handed_over, item.id),
                    document=document)
            except Unconfirmed as exc:
                ids.append(0)
                await self.repo.unconfirmed(item.id, ids, str(exc))
                log.warning("outbox %s: chunk %d unconfirmed (%s); not resending it", item.id,
                            index, exc)
                continue
            except NotSent:
                raise
            except Refused as exc:
                await self.repo.failed(item.id, str(exc))
                raise
            except BaseException:
                # cancelled or a bug mid-send: the chunk stays marked in flight, and recovery
                # treats it as possibly delivered
                raise
            ids.append(message_id)
            await self.repo.accepted(item.id, ids, finished=last)
            finished = last
        if not finished:  # the last chunk was unconfirmed (or there was nothing left to send)
            await self.repo.sent(item.id)
        if self.after_delivery is not None:
            try:
                await self.after_delivery(item, ids)
            except Exception:
                log.exception("after delivery of outbox item %s", item.id)
        return Delivered(message_ids=tuple(ids))

    async def _document(self, item: OutboxItem) -> tuple[str, bytes]:
        """A document row's file name and bytes; a copy that is gone fails the row."""
        file = item.file or {}
        data = None
        if self.files is not None and file.get("sha256"):
            data = await asyncio.to_thread(self.files.read, str(file["sha256"]))
        if data is None:
            error = f"the file {file.get('filename')!r} is no longer stored"
            await self.repo.failed(item.id, error)
            raise Refused(error)
        return str(file.get("filename") or "file"), data

    async def sweep(self) -> int:
        """Deliver every pending item (start-up recovery, and periodically for items Telegram was
        unreachable for). Returns how many were finished."""
        done = 0
        for item in await self.repo.pending():
            try:
                if await self.deliver(item.id) is not None:
                    done += 1
            except DeliveryError as exc:
                log.warning("outbox %s still not delivered: %s", item.id, exc)
        return done


class OutboxNotifier:
    """The Notifier the runtime declares: every send is an outbox row, committed, then delivered."""

    def __init__(self, bot: Bot, outbox: Outbox) -> None:
        self.bot = bot
        self.outbox = outbox

    async def send(self, chat_id: int, markdown: str, *, thread_id: int | None = None,
                   buttons: list[list[Button]] | None = None,
                   reply_to: int | None = None) -> Delivered:
        item = await self.outbox.enqueue(chat_id=chat_id, thread_id=thread_id, reply_to=reply_to,
                                         markdown=markdown, buttons=buttons)
        delivered = await self.outbox.deliver(item)
        return delivered or Delivered(message_ids=())

    async def edit(self, chat_id: int, message_id: int, markdown: str) -> None:
        chunk = (render(markdown) or [Chunk(text="…")])[0]
        try:
            await self.bot.edit_message_text(chunk.text, chat_id=chat_id, message_id=message_id,
                                             entities=_entities(chunk) or None, reply_markup=None)
        except BadRequest as exc:
            if "not modified" in str(exc).lower():
                return
            await self.bot.edit_message_text(chunk.plain, chat_id=chat_id, message_id=message_id,
                                             reply_markup=None)

    async def create_topic(self, chat_id: int, name: str) -> int:
        topic = await self.bot.create_forum_topic(chat_id, name[:128])
        return topic.message_thread_id

    async def send_document(
        self, chat_id: int, filename: str, data: bytes, *, thread_id: int | None = None,
        caption: str | None = None,
    ) -> Delivered:
        message = await self.bot.send_document(chat_id, document=data, filename=filename,
                                               caption=caption, message_thread_id=thread_id)
        return Delivered(message_ids=(message.message_id,))
