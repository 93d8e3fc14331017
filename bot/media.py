"""Files in a person's message: what keel reads, what it refuses, and how it gets the bytes.

Everything that can be decided from the update alone is decided before anything is downloaded:
the kind (stickers, videos, ... get one line), and the size Telegram states (a file over the limit
gets one line and is never fetched). What is read: a photo (its largest size under the limit), an
image or PDF document (an image/document block, stored by reference: ``agents/attachments.py``),
a text file (its text, under ``KEEL_MAX_TEXT_FILE_BYTES``), a voice note or audio file when a
transcriber is configured (its transcript). An album — several messages Telegram sends with one
``media_group_id`` — is answered as one message: its first part gathers the others from the inbox
and closes them with its own reply.

Bytes come through the Bot API's ``getFile`` and its file URL, once per Telegram file: a file whose
``file_unique_id`` is already copied locally is read from the copy (a message re-answered after a
crash downloads nothing again).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from telegram import Bot, Update
from telegram.error import TelegramError

from agents.attachments import (
    IMAGE_MEDIA_TYPES,
    PDF_MEDIA_TYPE,
    AttachmentError,
    image_block,
    inspect_pdf,
    pdf_block,
    sniff_image,
)
from agents.config import Settings
from agents.errors import KeelError
from agents.transcribe import NOT_CONFIGURED, Transcriber, TranscriptionError, transcriber_from
from bot.events import PHOTO_MAX_BYTES, IncomingFile, IncomingMessage, from_update
from storage.db import Database
from storage.files import Blobs, FileRepository, StoredFile
from storage.inbox import Inbox

log = logging.getLogger(__name__)

ALBUM_WAIT_S = 0.5
"""How long the first part of an album waits for parts still on their way before it answers.
Telegram sends an album's parts together, so they almost always arrive in one batch."""
TELEGRAM_DOWNLOAD_MAX_BYTES = 20 * 1024 * 1024
"""The Bot API's getFile refuses larger files ("file is too big")."""
TEXT_EXTENSIONS = frozenset({
    "txt", "md", "markdown", "csv", "tsv", "json", "jsonl", "yaml", "yml", "toml", "ini", "xml",
    "html", "htm", "log", "py", "js", "ts", "tsx", "jsx", "java", "kt", "c", "h", "cpp", "hpp",
    "cs", "go", "rs", "rb", "php", "swift", "sh", "bash", "sql", "r", "lua", "pl", "scala", "css",
    "scss", "tex", "rst", "org", "env", "cfg", "conf", "dockerfile", "makefile",
})
TEXT_MIME_TYPES = frozenset({"application/json", "application/xml", "application/x-yaml",
                             "application/toml", "application/sql", "application/javascript",
                             "application/x-sh"})
IMAGE_EXTENSIONS = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png",
                    "gif": "image/gif", "webp": "image/webp"}
UNSUPPORTED = {
    "sticker": "stickers", "video": "videos", "video_note": "video messages",
    "animation": "GIFs", "location": "locations", "contact": "contacts", "poll": "polls",
    "other": "this kind of message",
}
WHAT_I_READ = "photos, images, PDFs and text files (txt, md, csv, json, code)"


class MediaRefused(KeelError):
    """A message keel answers with one line instead of a run (what it sent cannot be read)."""

    def __init__(self, line: str, parts: tuple[int, ...] = ()) -> None:
        super().__init__(line)
        self.parts = parts
        """The album's other messages, answered by the same line."""


@dataclass(frozen=True, kw_only=True)
class Intake:
    """A message (or an album) ready for a run."""

    content: list[dict[str, Any]]
    """The person's message as blocks: attachments first, then the text."""
    text: str
    """What the router reads (the caption, or what was sent)."""
    parts: tuple[int, ...] = ()
    """Update ids of the album's other messages: closed with this message's reply."""


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def _extension(name: str | None) -> str:
    if not name:
        return ""
    base = os.path.basename(name).lower()
    if base in ("dockerfile", "makefile"):
        return base
    return base.rpartition(".")[2] if "." in base else ""


def document_kind(file: IncomingFile) -> str | None:
    """'pdf', 'image' or 'text' for a document keel reads; None for one it does not."""
    mime = (file.mime_type or "").lower()
    ext = _extension(file.name)
    if mime == PDF_MEDIA_TYPE or ext == "pdf":
        return "pdf"
    if mime in IMAGE_MEDIA_TYPES or ext in IMAGE_EXTENSIONS:
        return "image"
    if mime.startswith("text/") or mime in TEXT_MIME_TYPES or ext in TEXT_EXTENSIONS:
        return "text"
    return None


class Media:
    def __init__(self, bot: Bot, db: Database, settings: Settings,
                 transcriber: Transcriber | None = None) -> None:
        self.bot = bot
        self.settings = settings
        self.blobs = Blobs(settings.files_dir)
        self.files = FileRepository(db)
        self.inbox = Inbox(db)
        self.transcriber = transcriber if transcriber is not None else transcriber_from(
            settings.transcriber, settings.transcriber_command)

    @property
    def max_bytes(self) -> int:
        return min(self.settings.max_file_bytes, TELEGRAM_DOWNLOAD_MAX_BYTES)

    @property
    def photo_limit(self) -> int:
        """The largest photo size picked (``bot.events.files_of``)."""
        return min(self.max_bytes, PHOTO_MAX_BYTES)

    # ------------------------------------------------------------------ decided from the update

    def refusal(self, message: IncomingMessage) -> str | None:
        """The one line for a message keel will not read, decided without downloading; None
        when it can be read (or carries no file)."""
        if message.media in UNSUPPORTED:
            return (f"I can't read {UNSUPPORTED[message.media]} — I read {WHAT_I_READ}. "
                    "Please send your request as text or one of those.")
        for file in message.files:
            line = self._file_refusal(file)
            if line is not None:
                return line
        return None

    def _file_refusal(self, file: IncomingFile) -> str | None:
        if file.kind in ("voice", "audio") and self.transcriber is None:
            return NOT_CONFIGURED
        what = f"The file “{file.name}”" if file.name else {
            "photo": "This photo", "voice": "This voice note", "audio": "This audio file",
        }.get(file.kind, "This file")
        limit = self.max_bytes
        if file.kind == "document":
            kind = document_kind(file)
            if kind is None:
                return f"I can't read {what[0].lower()}{what[1:]} — I read {WHAT_I_READ}."
            if kind == "text":
                limit = self.settings.max_text_file_bytes
        if file.too_big or (file.size is not None and file.size > limit):
            size = f" ({_mb(file.size)})" if file.size else ""
            return (f"{what}{size} is too large for me: I read files up to {_mb(limit)}. "
                    "Please send a smaller one.")
        return None

    # ------------------------------------------------------------------ the bytes

    async def intake(self, message: IncomingMessage) -> Intake:
        """The message as a run's content; raises MediaRefused with the line to answer."""
        messages = [message]
        if message.media_group_id:
            messages = await self._album(message)
        parts = tuple(p.update_id for p in messages if p is not message)
        try:
            return await self._intake(message, messages, parts)
        except MediaRefused as exc:
            raise MediaRefused(str(exc), parts) from None

    async def close_parts(self, parts: tuple[int, ...]) -> None:
        """An album refused as a whole: its other messages are answered too."""
        for part in parts:
            await self.inbox.mark(part, "done")

    async def _intake(self, message: IncomingMessage, messages: list[IncomingMessage],
                      parts: tuple[int, ...]) -> Intake:
        blocks: list[dict[str, Any]] = []
        captions: list[str] = []
        for part in messages:
            line = self.refusal(part)
            if line is not None:
                raise MediaRefused(line)
            for file in part.files:
                blocks.extend(await self._blocks(file))
            if part.text:
                captions.append(part.text)
        text = "\n\n".join(captions)
        if blocks and not text:
            what = {"photo": "a photo", "document": "a file", "voice": "a voice note",
                    "audio": "an audio file"}
            kinds = sorted({what.get(f.kind, "a file") for p in messages for f in p.files})
            routing = f"[The person sent {' and '.join(kinds)} without a caption.]"
        else:
            routing = text
        content = [*blocks, {"type": "text", "text": text or routing}]
        return Intake(content=content, text=routing, parts=parts)

    async def _album(self, first: IncomingMessage) -> list[IncomingMessage]:
        """The album's parts stored so far (its first part waits briefly for stragglers)."""
        await asyncio.sleep(ALBUM_WAIT_S)
        parts: dict[int, IncomingMessage] = {first.update_id: first}
        for entry in await self.inbox.unfinished():
            if entry.chat_id != first.chat_id or entry.update_id in parts:
                continue
            raw = entry.payload.get("message")
            if not isinstance(raw, dict) or raw.get("media_group_id") != first.media_group_id:
                continue
            update = Update.de_json(entry.payload, self.bot)
            other = from_update(update, bot_id=self.bot.id, bot_username=self.bot.username,
                                max_photo_bytes=self.photo_limit) if update is not None else None
            if other is not None:
                parts[other.update_id] = other
        return [parts[k] for k in sorted(parts)]

    async def _blocks(self, file: IncomingFile) -> list[dict[str, Any]]:
        stored = await self._fetch(file)
        data = await asyncio.to_thread(self.blobs.read, stored.sha256)
        if data is None:
            raise MediaRefused("I lost the copy of that file; please send it again.")
        try:
            return await self._read(file, stored, data)
        except AttachmentError as exc:
            raise MediaRefused(f"I can't read {file.name or 'that file'}: {exc}.") from None

    async def _read(self, file: IncomingFile, stored: StoredFile,
                    data: bytes) -> list[dict[str, Any]]:
        if file.kind in ("voice", "audio"):
            assert self.transcriber is not None
            try:
                said = await self.transcriber.transcribe(
                    data, media_type=file.mime_type or "audio/ogg")
            except TranscriptionError as exc:
                raise MediaRefused(f"I couldn't transcribe that voice note: {exc}.") from None
            return [{"type": "text", "text": f"[Voice note, transcribed]\n{said}"}]
        kind = "image" if file.kind == "photo" else document_kind(file)
        if kind == "pdf":
            facts = await asyncio.to_thread(inspect_pdf, data)
            return [pdf_block(stored.sha256, size=len(data), facts=facts, title=file.name)]
        if kind == "image":
            sniffed = sniff_image(data)
            if sniffed is None:
                raise AttachmentError("it is not a JPEG, PNG, GIF or WebP image")
            media_type, width, height = sniffed
            block = image_block(stored.sha256, media_type=media_type, size=len(data),
                                width=width or file.width, height=height or file.height)
            if file.name:
                return [{"type": "text", "text": f"[Image file: {file.name}]"}, block]
            return [block]
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise AttachmentError("it is not UTF-8 text") from None
        name = (file.name or "file.txt").replace('"', "'")
        return [{"type": "text", "text": f'<file name="{name}">\n{text}\n</file>'}]

    async def _fetch(self, file: IncomingFile) -> StoredFile:
        """The local copy of a Telegram file: found, or downloaded once and recorded."""
        known = await self.files.by_telegram(file.unique_id)
        if known is not None and await asyncio.to_thread(self.blobs.has, known.sha256):
            return known
        try:
            remote = await self.bot.get_file(file.file_id)
            if remote.file_size is not None and remote.file_size > self.max_bytes:
                raise MediaRefused(f"That file ({_mb(remote.file_size)}) is too large for me: "
                                   f"I read files up to {_mb(self.max_bytes)}.")
            data = bytes(await remote.download_as_bytearray())
        except TelegramError as exc:
            log.warning("could not download file %s: %s", file.unique_id, exc)
            raise MediaRefused(f"I couldn't download that file from Telegram ({exc}); please "
                               "send it again.") from None
        if len(data) > self.max_bytes:
            raise MediaRefused(f"That file ({_mb(len(data))}) is too large for me: I read files "
                               f"up to {_mb(self.max_bytes)}.")
        sha256 = await asyncio.to_thread(self.blobs.put, data)
        stored = StoredFile(sha256=sha256, size=len(data), media_type=file.mime_type or
                            "application/octet-stream", name=file.name, origin="telegram",
                            telegram_file_id=file.file_id, telegram_unique_id=file.unique_id)
        await self.files.record(stored)
        return stored
