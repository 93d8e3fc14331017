"""What the runtime needs from a chat front end, declared here and implemented by ``bot/``.

Scheduled runs and escalations post through a Notifier; the runtime never imports Telegram.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from storage.db import Database
from storage.files import Blobs
from storage.outbox import OutboxButton, OutboxRepository


@dataclass(frozen=True, kw_only=True)
class Button:
    label: str
    key: str  # short opaque key; the front end maps it back to a stored row


@dataclass(frozen=True, kw_only=True)
class Delivered:
    message_ids: tuple[int, ...]


class DeliveryError(Exception):
    """The front end could not deliver after its bounded retries."""


class Notifier(Protocol):
    async def send(
        self,
        chat_id: int,
        markdown: str,
        *,
        thread_id: int | None = None,
        buttons: list[list[Button]] | None = None,
        reply_to: int | None = None,
    ) -> Delivered:
        """Deliver; returns only once the platform accepted every part, else DeliveryError."""
        ...

    async def edit(self, chat_id: int, message_id: int, markdown: str) -> None: ...

    async def create_topic(self, chat_id: int, name: str) -> int:
        """Create a forum topic; returns its thread id."""
        ...

    async def send_document(
        self, chat_id: int, filename: str, data: bytes, *, thread_id: int | None = None,
        caption: str | None = None,
    ) -> Delivered: ...


class Mailbox(Protocol):
    """The outbox as the runtime sees it: a message is put inside the transaction that causes it,
    then delivered. ``bot.delivery.Outbox`` is the real one (chunk by chunk, nothing resent
    blindly); ``NotifierMailbox`` stores the same rows and delivers through a plain Notifier."""

    async def put(self, conn: Any, *, chat_id: int, thread_id: int | None, reply_to: int | None,
                  markdown: str, run_id: str | None = None,
                  buttons: list[list[Button]] | None = None,
                  file: dict[str, Any] | None = None) -> int:
        """``file``: a document ``send_file`` stored (``markdown`` is its caption)."""
        ...

    async def deliver(self, item_id: int) -> Delivered | None:
        """Deliver once; DeliveryError when it could not be (the row is then failed)."""
        ...


class NotifierMailbox:
    """Outbox rows delivered whole through a Notifier (for front ends without chunk tracking)."""

    def __init__(self, db: Database, notifier: Notifier, blobs: Blobs | None = None) -> None:
        self.repo = OutboxRepository(db)
        self.notifier = notifier
        self.blobs = blobs

    async def put(self, conn: Any, *, chat_id: int, thread_id: int | None, reply_to: int | None,
                  markdown: str, run_id: str | None = None,
                  buttons: list[list[Button]] | None = None,
                  file: dict[str, Any] | None = None) -> int:
        return await self.repo.put(
            conn, chat_id=chat_id, thread_id=thread_id, reply_to=reply_to, markdown=markdown,
            run_id=run_id, file=file, buttons=[[OutboxButton(label=b.label, key=b.key)
                                                for b in row] for row in buttons] if buttons else None)

    async def deliver(self, item_id: int) -> Delivered | None:
        item = await self.repo.get(item_id)
        if item is None or item.status != "pending":
            return None
        buttons = [[Button(label=b.label, key=b.key) for b in row] for row in item.buttons] \
            if item.buttons else None
        try:
            if item.kind == "document":
                delivered = await self._document(item)
            else:
                delivered = await self.notifier.send(item.chat_id, item.markdown,
                                                     thread_id=item.thread_id, buttons=buttons,
                                                     reply_to=item.reply_to)
        except DeliveryError as exc:
            await self.repo.failed(item_id, str(exc))
            raise
        await self.repo.accepted(item_id, list(delivered.message_ids))
        await self.repo.sent(item_id)
        return delivered

    async def _document(self, item: Any) -> Delivered:
        file = item.file or {}
        data = self.blobs.read(str(file.get("sha256"))) if self.blobs is not None else None
        if data is None:
            raise DeliveryError(f"the file {file.get('filename')!r} is no longer stored")
        return await self.notifier.send_document(
            item.chat_id, str(file.get("filename") or "file"), data, thread_id=item.thread_id,
            caption=item.markdown or None)
