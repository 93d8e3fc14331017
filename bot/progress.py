"""Progress while a run works: the typing action, and in private chats a live draft preview."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType

from telegram import Bot
from telegram.constants import ChatAction
from telegram.error import TelegramError

log = logging.getLogger(__name__)

TYPING_EVERY_S = 4.5  # Telegram shows "typing…" for about 5 seconds
DRAFT_EVERY_S = 1.5  # stay well inside the 1 message/s per chat flood limit
DRAFT_PREVIEW_CHARS = 1000


class Progress:
    """``async with Progress(bot, chat, thread, private=...) as p: ... await p("tool", name)``."""

    def __init__(self, bot: Bot, chat_id: int, thread_id: int | None, *, private: bool,
                 draft_id: int, quiet: bool = False) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.private = private
        self.draft_id = draft_id or 1
        self._typing: asyncio.Task[None] | None = None
        self._text = ""
        self._status = ""
        self._last_draft = 0.0
        self._drafts_ok = private and not quiet
        self._quiet = quiet

    async def __aenter__(self) -> Progress:
        if not self._quiet:
            self._typing = asyncio.create_task(self._keep_typing())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing

    async def __call__(self, kind: str, value: str) -> None:
        if kind == "tool":
            self._status = f"🔧 {value}…"
        elif kind == "text":
            self._text += value
        await self._draft()

    async def _keep_typing(self) -> None:
        while True:
            try:
                await self.bot.send_chat_action(self.chat_id, ChatAction.TYPING,
                                                message_thread_id=self.thread_id)
            except TelegramError as exc:
                log.debug("typing action failed: %s", exc)
            await asyncio.sleep(TYPING_EVERY_S)

    async def _draft(self) -> None:
        if not self._drafts_ok:
            return
        now = time.monotonic()
        if now - self._last_draft < DRAFT_EVERY_S:
            return
        self._last_draft = now
        preview = self._text[-DRAFT_PREVIEW_CHARS:] if self._text else self._status
        if not preview:
            return
        try:
            await self.bot.send_message_draft(self.chat_id, self.draft_id, preview,
                                              message_thread_id=self.thread_id)
        except TelegramError as exc:
            log.debug("drafts unavailable in chat %s: %s", self.chat_id, exc)
            self._drafts_ok = False  # one failure: stop trying in this run
