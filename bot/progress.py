"""Progress while a run works: the typing action, in private chats a live draft preview, and in
groups and forum topics (where drafts are not available) one preview message edited as the
answer streams in.

In a group every message and every edit counts against Telegram's 20 a minute for that group,
which the answers need too. So the preview is cosmetic traffic: each send or edit asks the
sender's budget (``ChunkSender.try_cosmetic``), which says yes only while half of the group's
budget stays free for answers, and never waits — under load the edits are shed first, and a
429 on one stops this run's preview at once. The answer itself always comes through the outbox
(complete, chunked, once); the preview is deleted just before it is sent, so the answer takes
its place at the end of the chat or topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Protocol

from telegram import Bot, LinkPreviewOptions
from telegram.constants import ChatAction
from telegram.error import BadRequest, RetryAfter, TelegramError

log = logging.getLogger(__name__)

TYPING_EVERY_S = 4.5  # Telegram shows "typing…" for about 5 seconds
TYPING_AFTER_S = 0.05
"""The typing action goes out this long after the request is taken: by then the model request
has left (~5 ms), so the call no longer competes with it for the event loop (~1 ms of a turn's
latency, issue 15); nobody sees 50 ms, and an answer ready sooner needs no typing at all."""
DRAFT_EVERY_S = 1.5  # stay well inside the 1 message/s per chat flood limit
FIRST_DRAFT_AFTER_S = 0.25
"""A private draft appears only for a run still working this long after its first progress
(text or a tool): an answer whole sooner arrives as the message itself, without a draft
flickering before it and without a Telegram call competing with the reply's path."""
DRAFT_PREVIEW_CHARS = 1000
GROUP_FIRST_PREVIEW_S = 2.0
"""A group preview appears only for an answer still streaming after this long: a quick answer
arrives whole, without a preview flickering before it."""
GROUP_EDIT_EVERY_S = 3.0
"""Least time between two edits of a group preview (20 a minute is one every 3 s)."""
GROUP_MIN_NEW_CHARS = 40
"""A group preview is edited only when at least this much text was added."""
GROUP_PREVIEW_CHARS = 3800
"""The preview shows the answer's beginning up to this; the outbox sends it whole and split."""
TYPING_MARK = " …"


class CosmeticBudget(Protocol):
    def try_cosmetic(self, chat_id: int) -> bool:
        """True (and a slot taken) when a cosmetic message may go to the chat now."""
        ...


class Progress:
    """``async with Progress(bot, chat, thread, private=...) as p: ... await p("tool", name)``."""

    def __init__(self, bot: Bot, chat_id: int, thread_id: int | None, *, private: bool,
                 draft_id: int, quiet: bool = False,
                 budget: CosmeticBudget | None = None) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.private = private
        self.draft_id = draft_id or 1
        self._typing: asyncio.Task[None] | None = None
        self._text = ""
        self._status = ""
        self._last_draft = 0.0
        self._first_progress: float | None = None
        self._wake_up: asyncio.TimerHandle | None = None
        """Shows the first draft when it falls due with no new piece of text to do it."""
        self._drafts_ok = private and not quiet
        self._quiet = quiet
        self._budget = budget
        # a group preview: only with a budget to ask, so it never competes with answers blindly
        self._preview_ok = not private and not quiet and budget is not None
        self.preview_id: int | None = None
        self._shown = ""
        self._last_edit = 0.0
        self._started = time.monotonic()
        self._editing = asyncio.Lock()
        self._showing: asyncio.Task[None] | None = None
        """The draft or preview on its way to Telegram. The answer's stream is read on
        meanwhile: awaited in line, each one held the stream for a round trip to Telegram."""

    async def __aenter__(self) -> Progress:
        if not self._quiet:
            self._typing = asyncio.create_task(self._keep_typing())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._wake_up is not None:
            self._wake_up.cancel()
        self._drafts_ok = False
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing
        self._preview_ok = False
        await self.shown()  # a draft or preview still on its way lands before the answer
        await self._remove_preview()

    async def shown(self) -> None:
        """Wait until the draft or preview on its way (if any) has been sent or refused."""
        if self._showing is not None:
            try:
                await self._showing
            except Exception:  # cosmetic: never the run's failure
                log.exception("progress update failed in chat %s", self.chat_id)
            self._showing = None

    def streams_text(self) -> bool:
        """Whether streamed answer text is shown now (a private chat's draft, a group's
        preview); when not, the run asks the model without streaming (agents.model.watched)."""
        return self._drafts_ok or self._preview_ok

    async def __call__(self, kind: str, value: str) -> None:
        if kind == "tool":
            self._status = f"🔧 {value}…"
        elif kind == "text":
            self._text += value
        elif kind == "retract":  # an answer that broke off mid-stream is asked again
            self._text = self._text[:max(0, len(self._text) - int(value))]
        self._show_due()

    def _show_due(self) -> None:
        if self._showing is not None and not self._showing.done():
            return  # one at a time: the next piece of text tries again
        draft, shown = self._draft_due(), self._preview_due()
        if draft is not None or shown is not None:
            self._showing = asyncio.create_task(self._show(draft, shown))

    def _woken(self) -> None:
        self._wake_up = None
        self._show_due()

    async def _show(self, draft: str | None, shown: str | None) -> None:
        if draft is not None:
            await self._send_draft(draft)
        if shown is not None:
            await self._send_preview(shown)

    async def _keep_typing(self) -> None:
        await asyncio.sleep(TYPING_AFTER_S)
        while True:
            try:
                await self.bot.send_chat_action(self.chat_id, ChatAction.TYPING,
                                                message_thread_id=self.thread_id)
            except TelegramError as exc:
                log.debug("typing action failed: %s", exc)
            await asyncio.sleep(TYPING_EVERY_S)

    def _draft_due(self) -> str | None:
        """The draft to send now, if one is due."""
        if not self._drafts_ok:
            return None
        now = time.monotonic()
        if self._first_progress is None:
            self._first_progress = now
        first_due = self._first_progress + FIRST_DRAFT_AFTER_S
        if now < first_due:
            if self._wake_up is None:
                self._wake_up = asyncio.get_running_loop().call_later(first_due - now,
                                                                      self._woken)
            return None
        if now - self._last_draft < DRAFT_EVERY_S:
            return None
        self._last_draft = now
        preview = self._text[-DRAFT_PREVIEW_CHARS:] if self._text else self._status
        return preview or None

    async def _send_draft(self, preview: str) -> None:
        try:
            await self.bot.send_message_draft(self.chat_id, self.draft_id, preview,
                                              message_thread_id=self.thread_id)
        except TelegramError as exc:
            log.debug("drafts unavailable in chat %s: %s", self.chat_id, exc)
            self._drafts_ok = False  # one failure: stop trying in this run

    # ------------------------------------------------------------------ groups and topics

    def _preview_due(self) -> str | None:
        """The group preview's text when it is to be sent or edited now: enough new text came,
        enough time passed, and the budget allows; otherwise None (the next piece of text tries
        again)."""
        if not self._preview_ok or self._editing.locked():
            return None
        text = self._text.strip()
        if len(text) < GROUP_MIN_NEW_CHARS or len(self._shown) >= GROUP_PREVIEW_CHARS:
            return None
        if len(text) - len(self._shown) < GROUP_MIN_NEW_CHARS:
            return None
        now = time.monotonic()
        if now - self._last_edit < GROUP_EDIT_EVERY_S or (
                self.preview_id is None and now - self._started < GROUP_FIRST_PREVIEW_S):
            return None
        assert self._budget is not None
        if not self._budget.try_cosmetic(self.chat_id):
            return None  # shed: the answers need the group's budget more
        return text[:GROUP_PREVIEW_CHARS]

    async def _send_preview(self, shown: str) -> None:
        async with self._editing:
            self._last_edit = time.monotonic()
            try:
                if self.preview_id is None:
                    message = await self.bot.send_message(
                        self.chat_id, shown + TYPING_MARK, message_thread_id=self.thread_id,
                        link_preview_options=LinkPreviewOptions(is_disabled=True))
                    self.preview_id = message.message_id
                else:
                    await self.bot.edit_message_text(
                        shown + TYPING_MARK, chat_id=self.chat_id, message_id=self.preview_id,
                        link_preview_options=LinkPreviewOptions(is_disabled=True))
                self._shown = shown
            except RetryAfter as exc:
                log.info("group %s is at its rate limit: no more preview edits in this run "
                         "(%s)", self.chat_id, exc)
                self._preview_ok = False
            except BadRequest as exc:
                if "not modified" not in str(exc).lower():
                    log.debug("preview edit refused in chat %s: %s", self.chat_id, exc)
                    self._preview_ok = False
            except TelegramError as exc:
                log.debug("preview failed in chat %s: %s", self.chat_id, exc)
                self._preview_ok = False

    async def _remove_preview(self) -> None:
        """The answer replaces the preview: delete it before the outbox sends the answer."""
        if self.preview_id is None:
            return
        async with self._editing:
            preview, self.preview_id = self.preview_id, None
            try:
                await self.bot.delete_message(self.chat_id, preview)
            except TelegramError as exc:
                log.debug("could not delete the preview in chat %s: %s", self.chat_id, exc)
