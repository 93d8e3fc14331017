"""What the runtime needs from a chat front end, declared here and implemented by ``bot/``.

Scheduled runs and escalations post through a Notifier; the runtime never imports Telegram.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
