"""keel's own event types, converted from Telegram updates at the edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from telegram import Message, Update

ChatType = Literal["private", "group", "supergroup", "channel"]
MediaKind = Literal["photo", "voice", "audio", "video", "video_note", "sticker", "document",
                    "animation", "location", "contact", "poll", "other"]


@dataclass(frozen=True, kw_only=True)
class IncomingFile:
    """A file attached to a message, as the update describes it (nothing downloaded yet)."""

    kind: MediaKind
    file_id: str
    unique_id: str
    size: int | None  # bytes, when Telegram says (it decides whether to download at all)
    name: str | None = None
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None
    too_big: bool = False
    """A photo none of whose sizes fit the limit: ``size`` is its smallest."""


@dataclass(frozen=True, kw_only=True)
class IncomingMessage:
    update_id: int
    chat_id: int
    chat_type: str
    thread_id: int | None  # forum topic, or None
    message_id: int
    user_id: int
    user_name: str
    text: str  # text or caption ("" when there is none)
    media: MediaKind | None
    mentions_bot: bool
    replies_to_bot: bool
    reply_to_message_id: int | None
    edited: bool
    files: tuple[IncomingFile, ...] = ()
    media_group_id: str | None = None
    """Set on each message of an album (several photos or files sent together)."""

    @property
    def is_private(self) -> bool:
        return self.chat_type == "private"

    @property
    def conversation(self) -> tuple[int, int]:
        return (self.chat_id, self.thread_id or 0)


@dataclass(frozen=True, kw_only=True)
class ButtonPress:
    update_id: int
    query_id: str
    chat_id: int | None
    thread_id: int | None
    message_id: int | None
    user_id: int
    user_name: str
    data: str


_MEDIA_ATTRS: tuple[MediaKind, ...] = ("photo", "voice", "audio", "video", "video_note",
                                       "sticker", "document", "animation", "location", "contact",
                                       "poll")


def media_kind(message: Message) -> MediaKind | None:
    for kind in _MEDIA_ATTRS:
        if getattr(message, kind, None):
            return kind
    if message.text is None and message.caption is None:
        return "other"
    return None


PHOTO_MAX_BYTES = 3_750_000
"""The largest photo size picked: the Messages API takes images up to 5 MB as base64."""


def from_update(update: Update, *, bot_id: int, bot_username: str | None,
                max_photo_bytes: int = PHOTO_MAX_BYTES) -> IncomingMessage | None:
    message = update.message or update.edited_message
    if message is None or message.from_user is None:
        return None
    text = message.text or message.caption or ""
    mentions = False
    if bot_username:
        handle = f"@{bot_username}".lower()
        found = [*message.parse_entities(["mention"]).values(),
                 *message.parse_caption_entities(["mention"]).values()]
        mentions = any(value.lower() == handle for value in found)
        if mentions:
            text = _strip_mention(text, handle)
    reply = message.reply_to_message
    # In a forum, every message "replies" to the topic's creation message; that is not a reply.
    is_topic_root = bool(reply and reply.forum_topic_created)
    replies_to_bot = bool(reply and not is_topic_root and reply.from_user
                          and reply.from_user.id == bot_id)
    user = message.from_user
    return IncomingMessage(
        update_id=update.update_id,
        chat_id=message.chat_id,
        chat_type=message.chat.type,
        thread_id=message.message_thread_id if message.is_topic_message else None,
        message_id=message.message_id,
        user_id=user.id,
        user_name=user.full_name or user.username or str(user.id),
        text=text.strip(),
        media=media_kind(message),
        mentions_bot=mentions,
        replies_to_bot=replies_to_bot,
        reply_to_message_id=reply.message_id if reply and not is_topic_root else None,
        edited=update.edited_message is not None,
        files=files_of(message, max_photo_bytes=max_photo_bytes),
        media_group_id=message.media_group_id,
    )


def files_of(message: Message, *, max_photo_bytes: int) -> tuple[IncomingFile, ...]:
    """The downloadable files of a message: a photo (its largest size within
    ``max_photo_bytes``), a document, a voice note or an audio file."""
    if message.photo:
        sizes = sorted(message.photo, key=lambda p: p.width * p.height)
        fitting = [p for p in sizes if p.file_size is None or p.file_size <= max_photo_bytes]
        best = fitting[-1] if fitting else sizes[0]
        return (IncomingFile(kind="photo", file_id=best.file_id, unique_id=best.file_unique_id,
                             size=best.file_size, mime_type="image/jpeg", width=best.width,
                             height=best.height, too_big=not fitting),)
    for kind in ("document", "voice", "audio"):
        item = getattr(message, kind, None)
        if item is not None:
            return (IncomingFile(kind=kind, file_id=item.file_id, unique_id=item.file_unique_id,
                                 size=item.file_size, name=getattr(item, "file_name", None),
                                 mime_type=getattr(item, "mime_type", None)),)
    return ()


def _strip_mention(text: str, handle: str) -> str:
    lowered = text.lower()
    at = lowered.find(handle)
    if at < 0:
        return text
    return (text[:at] + text[at + len(handle):]).strip()


def press_from_update(update: Update) -> ButtonPress | None:
    query = update.callback_query
    if query is None:
        return None
    message = query.message
    chat_id = message.chat.id if message is not None else None
    thread_id = None
    message_id = None
    if isinstance(message, Message):
        message_id = message.message_id
        thread_id = message.message_thread_id if message.is_topic_message else None
    return ButtonPress(
        update_id=update.update_id, query_id=query.id, chat_id=chat_id, thread_id=thread_id,
        message_id=message_id, user_id=query.from_user.id,
        user_name=query.from_user.full_name or str(query.from_user.id), data=query.data or "",
    )
