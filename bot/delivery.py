"""Sending to Telegram so that nothing is lost: rendered chunks, plain-text fallback, bounded
retries that honour ``retry_after``, and an outbox that remembers how far a reply got."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

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
from storage.db import Database, now_iso

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF_BASE_S = 0.5
MAX_RETRY_AFTER_S = 120.0


def _entities(chunk: Chunk) -> list[MessageEntity]:
    return [MessageEntity.de_json(e.to_api(), None) for e in chunk.entities]


def _markup(buttons: list[list[Button]] | None) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(b.label, callback_data=b.key) for b in row] for row in buttons]
    )


class TelegramNotifier:
    """The Notifier the runtime declares, over python-telegram-bot."""

    def __init__(self, bot: Bot, *, backoff_base_s: float = BACKOFF_BASE_S) -> None:
        self.bot = bot
        self.backoff_base_s = backoff_base_s

    async def send(
        self,
        chat_id: int,
        markdown: str,
        *,
        thread_id: int | None = None,
        buttons: list[list[Button]] | None = None,
        reply_to: int | None = None,
        skip_chunks: int = 0,
        on_chunk: Any = None,
    ) -> Delivered:
        chunks = render(markdown) or [Chunk(text="(empty answer)")]
        ids: list[int] = []
        for index, chunk in enumerate(chunks):
            if index < skip_chunks:
                continue
            last = index == len(chunks) - 1
            message_id = await self._send_chunk(
                chat_id, chunk, thread_id=thread_id,
                reply_to=reply_to if index == 0 else None,
                markup=_markup(buttons) if last else None,
            )
            ids.append(message_id)
            if on_chunk is not None:
                await on_chunk(index, message_id)
        return Delivered(message_ids=tuple(ids))

    async def _send_chunk(
        self, chat_id: int, chunk: Chunk, *, thread_id: int | None, reply_to: int | None,
        markup: InlineKeyboardMarkup | None,
    ) -> int:
        plain = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                message = await self.bot.send_message(
                    chat_id, chunk.text if not plain else chunk.plain,
                    entities=None if plain else (_entities(chunk) or None),
                    message_thread_id=thread_id,
                    reply_parameters=ReplyParameters(reply_to, allow_sending_without_reply=True)
                    if reply_to else None,
                    reply_markup=markup,
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                )
                return message.message_id
            except RetryAfter as exc:
                wait = _retry_after_seconds(exc)
                log.warning("flood control in chat %s: waiting %.1f s", chat_id, wait)
                await asyncio.sleep(min(wait, MAX_RETRY_AFTER_S))
            except BadRequest as exc:
                text = str(exc).lower()
                if not plain and ("entit" in text or "parse" in text):
                    log.warning("Telegram rejected formatting (%s); resending as plain text", exc)
                    plain = True
                    continue
                raise DeliveryError(f"Telegram refused the message: {exc}") from exc
            except Forbidden as exc:
                raise DeliveryError(f"the bot cannot write to chat {chat_id}: {exc}") from exc
            except (TimedOut, NetworkError) as exc:
                if attempt == MAX_ATTEMPTS:
                    raise DeliveryError(f"Telegram unreachable after {attempt} attempts: {exc}") from exc
                await asyncio.sleep(self.backoff_base_s * 2 ** (attempt - 1) * (1 + random.random()))
        raise DeliveryError(f"gave up after {MAX_ATTEMPTS} attempts")

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


def _retry_after_seconds(exc: RetryAfter) -> float:
    value = exc._retry_after if hasattr(exc, "_retry_after") else exc.retry_after
    return float(value.total_seconds() if hasattr(value, "total_seconds") else value)


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    id: int
    chat_id: int
    thread_id: int | None
    reply_to: int | None
    markdown: str
    buttons: list[list[Button]] | None
    sent_chunks: int
    inbox_update_id: int | None
    run_id: str | None


class Outbox:
    """Replies are stored before they are sent and marked sent when Telegram accepted them all;
    after a crash, what is pending is sent once, from the first chunk not yet accepted."""

    def __init__(self, db: Database, notifier: TelegramNotifier) -> None:
        self.db = db
        self.notifier = notifier

    async def put(self, conn: Any, *, chat_id: int, thread_id: int | None, reply_to: int | None,
                  markdown: str, inbox_update_id: int | None = None, run_id: str | None = None,
                  buttons: list[list[Button]] | None = None) -> int:
        """Insert inside the caller's write transaction (so an answer and its inbox row change
        together)."""
        payload = {"markdown": markdown, "buttons": [[{"label": b.label, "key": b.key}
                                                      for b in row] for row in buttons or []]}
        cursor = await conn.execute(
            "INSERT INTO outbox (chat_id, thread_id, reply_to_message_id, payload, inbox_update_id,"
            " run_id, telegram_message_ids, created_at) VALUES (?, ?, ?, ?, ?, ?, '[]', ?)",
            (chat_id, thread_id, reply_to, json.dumps(payload, ensure_ascii=False),
             inbox_update_id, run_id, now_iso()),
        )
        return int(cursor.lastrowid or 0)

    async def enqueue(self, **kwargs: Any) -> int:
        async with self.db.write() as conn:
            return await self.put(conn, **kwargs)

    async def pending(self) -> list[OutboxItem]:
        rows = await self.db.fetchall("SELECT * FROM outbox WHERE status = 'pending' ORDER BY id")
        return [_item(r) for r in rows]

    async def get(self, item_id: int) -> OutboxItem | None:
        row = await self.db.fetchone("SELECT * FROM outbox WHERE id = ?", (item_id,))
        return _item(row) if row else None

    async def deliver(self, item_id: int) -> Delivered | None:
        item = await self.get(item_id)
        if item is None:
            log.error("outbox item %s vanished before delivery", item_id)
            return None
        ids = list(json.loads((await self.db.fetchval(
            "SELECT telegram_message_ids FROM outbox WHERE id = ?", (item_id,))) or "[]"))

        async def on_chunk(index: int, message_id: int) -> None:
            ids.append(message_id)
            await self.db.execute_write(
                "UPDATE outbox SET telegram_message_ids = ?, attempts = attempts + 1 WHERE id = ?",
                (json.dumps(ids), item_id),
            )

        try:
            delivered = await self.notifier.send(
                item.chat_id, item.markdown, thread_id=item.thread_id, buttons=item.buttons,
                reply_to=item.reply_to, skip_chunks=item.sent_chunks, on_chunk=on_chunk,
            )
        except DeliveryError as exc:
            await self.db.execute_write(
                "UPDATE outbox SET status = 'failed', last_error = ? WHERE id = ?",
                (str(exc), item_id),
            )
            raise
        await self.db.execute_write(
            "UPDATE outbox SET status = 'sent', sent_at = ? WHERE id = ?", (now_iso(), item_id)
        )
        return Delivered(message_ids=tuple(ids)) if ids else delivered


def _item(row: Any) -> OutboxItem:
    payload = json.loads(row["payload"])
    buttons = [[Button(label=b["label"], key=b["key"]) for b in r] for r in payload.get("buttons") or []]
    return OutboxItem(
        id=row["id"], chat_id=row["chat_id"], thread_id=row["thread_id"],
        reply_to=row["reply_to_message_id"], markdown=payload["markdown"], buttons=buttons or None,
        sent_chunks=len(json.loads(row["telegram_message_ids"] or "[]")),
        inbox_update_id=row["inbox_update_id"], run_id=row["run_id"],
    )
