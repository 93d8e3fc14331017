"""A fake Telegram Bot API server on 127.0.0.1, faithful to what the real one answers.

The real python-telegram-bot client (or a bot running as a subprocess) talks HTTP to it exactly as
it would talk to Telegram's own Bot API server; tests play the users through the Python API:

    fake = FakeTelegram()
    await fake.start()                       # ApplicationBuilder().base_url(fake.base_url)
    alice = fake.user("Alice")
    chat = fake.private_chat(alice)
    fake.inject_text(chat, "/start")
    reply = await fake.next_bot_message(chat.id)

Answers follow the official Bot API server (tdlib/telegram-bot-api) and TDLib: shapes, HTTP
statuses, error descriptions, limits, long polling, entity parsing (see ``telegram_parse``).
``tests/fakes/README.md`` documents the API and what is simplified.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.fakes import telegram_parse as tp

JSON = dict[str, Any]

# Telegram's wording, from the official Bot API server and TDLib.
CHAT_NOT_FOUND = "Bad Request: chat not found"
THREAD_NOT_FOUND = "Bad Request: message thread not found"
TEXT_EMPTY = "Bad Request: message text is empty"
TOO_LONG = "Bad Request: message is too long"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"
CONFLICT_POLL = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is "
    "running"
)
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
WEBHOOK_URL = re.compile(r"(https://|http://127\.0\.0\.1[:/])")
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_RETRY_S = (0.1, 2.0)  # the fake's pause after a failed delivery, first and longest

CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete "
    "the webhook first"
)
MAX_TEXT = 4096  # Unicode code points after entity parsing (TDLib utf8_length)
MAX_CAPTION = 1024
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # getFile: "file is too big" above it
MAX_CALLBACK_DATA = 64  # bytes
# What getUpdates gives without allowed_updates: all but chat_member and message reactions.
DEFAULT_UPDATES = frozenset(
    """message edited_message channel_post edited_channel_post business_connection
    business_message edited_business_message deleted_business_messages inline_query
    chosen_inline_result callback_query shipping_query pre_checkout_query purchased_paid_media
    poll poll_answer my_chat_member chat_join_request chat_boost removed_chat_boost""".split()
)
CHAT_ACTIONS = frozenset(
    """typing upload_photo record_video upload_video record_voice upload_voice upload_document
    choose_sticker find_location record_video_note upload_video_note cancel record_audio
    upload_audio pick_up_location""".split()
)
BUTTON_ACTIONS = tuple(
    """url callback_data web_app login_url switch_inline_query switch_inline_query_current_chat
    switch_inline_query_chosen_chat copy_text callback_game pay""".split()
)
# Methods flood control counts (lower-case, as Telegram matches method names).
FLOOD_METHODS = frozenset(
    """sendmessage senddocument sendphoto editmessagetext editmessagereplymarkup copymessage
    forwardmessage""".split()
)


@dataclass
class _Upload:
    file_name: str | None
    content_type: str | None
    data: bytes


Files = dict[str, _Upload]


class ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


def _lower_first(message: str) -> str:
    """The Bot API server lower-cases the first letter of TDLib's messages (not of CODES)."""
    if len(message) >= 2 and (message[1] == "_" or message[1].isupper()):
        return message
    return message[:1].lower() + message[1:]


# --- the simulated world -----------------------------------------------------------------------


@dataclass(eq=False)
class User:
    id: int
    first_name: str
    username: str | None = None
    last_name: str | None = None
    language_code: str | None = "en"
    is_bot: bool = False

    def to_dict(self) -> JSON:
        out: JSON = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.last_name:
            out["last_name"] = self.last_name
        if self.username:
            out["username"] = self.username
        if self.language_code and not self.is_bot:
            out["language_code"] = self.language_code
        return out


@dataclass(eq=False)
class Topic:
    chat_id: int
    message_thread_id: int
    name: str
    icon_color: int
    created_message: JSON

    def to_dict(self) -> JSON:
        return {
            "message_thread_id": self.message_thread_id,
            "name": self.name,
            "icon_color": self.icon_color,
        }


@dataclass(eq=False)
class Chat:
    id: int
    type: str  # private | group | supergroup
    title: str | None = None
    username: str | None = None
    user: User | None = None  # the other side of a private chat
    is_forum: bool = False
    bot_is_admin: bool = False
    blocked: bool = False  # the user blocked the bot (private chats)
    topics: dict[int, Topic] = field(default_factory=dict)
    messages: dict[int, JSON] = field(default_factory=dict)  # every live message, by id
    next_message_id: int = 1

    def to_dict(self) -> JSON:
        if self.type == "private":
            assert self.user is not None
            out: JSON = {"id": self.id, "first_name": self.user.first_name}
            if self.user.last_name:
                out["last_name"] = self.user.last_name
            if self.user.username:
                out["username"] = self.user.username
            out["type"] = "private"
            return out
        out = {"id": self.id, "title": self.title}
        if self.username:
            out["username"] = self.username
        if self.is_forum:
            out["is_forum"] = True
        out["type"] = self.type
        return out

    def new_message_id(self) -> int:
        message_id = self.next_message_id
        self.next_message_id += 1
        return message_id


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    file_name: str | None = None
    mime_type: str | None = None


FaultKind = Literal["error", "late", "hang"]


@dataclass
class RequestRecord:
    """One HTTP call to the fake: what came in and what went out."""

    method: str  # as the client spelled it
    params: JSON  # values decoded from JSON where they are JSON (reply_markup, entities, ...)
    files: dict[str, tuple[str | None, bytes]]
    status: int  # 0 while held, or when no answer reached the client
    response: JSON | None  # None when the connection was dropped
    time: float
    fault: FaultKind | None = None  # the injected fault this call met, if any
    processed: bool = False  # it reached the method itself (not dropped or held back before)
    client_gone: bool = False  # the client hung up before the fake answered

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Fault:
    method: str  # lower-case method name, or "*" for any
    status: int
    description: str
    parameters: JSON | None
    drop_connection: bool
    after_processing: bool
    times: int
    kind: FaultKind = "error"
    delay_s: float | None = None  # late: answer held this long; hang: None = until released


@dataclass
class _Hold:
    """A request held before processing (``hang_next``) until released, timed out or stopped."""

    record: RequestRecord
    released: asyncio.Event = field(default_factory=asyncio.Event)


class ManualClock:
    """An injectable clock for flood control: ``clock.advance(1.5)`` instead of sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FloodLimits:
    """Sending limits as (messages, window in seconds); Telegram's documented defaults."""

    private: tuple[int, float] = (1, 1.0)  # per private chat
    group: tuple[int, float] = (20, 60.0)  # per group or supergroup
    overall: tuple[int, float] = (30, 1.0)  # across all chats
    methods: frozenset[str] = FLOOD_METHODS


class _FloodControl:
    def __init__(self, limits: FloodLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.sent: dict[object, deque[float]] = {}

    def _retry_after(self, key: object, limit: tuple[int, float], now: float) -> int | None:
        count, window = limit
        stamps = self.sent.setdefault(key, deque())
        while stamps and stamps[0] <= now - window:
            stamps.popleft()
        if len(stamps) < count:
            return None
        return max(1, math.ceil(stamps[0] + window - now))

    def admit(self, chat: Chat) -> None:
        now = self.clock()
        per_chat = self.limits.private if chat.type == "private" else self.limits.group
        waits = [
            self._retry_after(("chat", chat.id), per_chat, now),
            self._retry_after("overall", self.limits.overall, now),
        ]
        worst = max((w for w in waits if w is not None), default=None)
        if worst is not None:
            raise ApiError(429, f"Too Many Requests: retry after {worst}", {"retry_after": worst})
        self.sent[("chat", chat.id)].append(now)
        self.sent["overall"].append(now)


# --- the server --------------------------------------------------------------------------------


class FakeTelegram:
    """Fake Bot API server plus a simulator of users, chats and forum topics."""

    def __init__(
        self,
        token: str = "123456789:AAFakeTokenForTestsOnly_keel0000000",
        *,
        bot_username: str = "keel_test_bot",
        bot_first_name: str = "Keel",
        privacy_mode: bool = True,
    ) -> None:
        if not re.fullmatch(r"\d+:[A-Za-z0-9_-]+", token):
            raise ValueError("a Telegram token looks like '<bot id>:<secret>'")
        self.token = token
        self.bot = User(int(token.split(":")[0]), bot_first_name, bot_username, is_bot=True)
        self.privacy_mode = privacy_mode  # Telegram's default for a new bot
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._closing = False

        self.users: dict[int, User] = {}
        self.chats: dict[int, Chat] = {}
        self.files: dict[str, StoredFile] = {}
        self._user_ids = itertools.count(1_000_000_001)
        self._group_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._query_ids = itertools.count(4_000_000_000_000_001)

        # updates
        self._next_update_id = 100_000_001
        self._queue: list[JSON] = []  # waiting to be confirmed by getUpdates' offset
        self.undelivered: list[JSON] = []  # updates Telegram would not give this bot
        self.allowed_updates: set[str] = set(DEFAULT_UPDATES)
        self.webhook_url = ""
        self.webhook_secret = ""
        self.webhook_max_connections = 40
        self.webhook_last_error: tuple[int, str] | None = None
        self.webhook_log: list[tuple[int, int]] = []  # (update_id, HTTP status; 0: no answer)
        self._webhook_task: asyncio.Task[None] | None = None
        self._poll_generation = 0

        # what the bot did
        self.requests: list[RequestRecord] = []
        self._bot_messages: list[JSON] = []  # every message the bot sent, live dicts, in order
        self.deleted: list[JSON] = []  # messages the bot deleted, as they were
        self._deleted_ids: set[tuple[int, int]] = set()
        self.crashes: list[str] = []  # bugs in the fake itself; the fixture fails the test
        self.draft_log: list[JSON] = []
        self._current_draft: dict[tuple[int, int], JSON] = {}
        self.chat_action_log: list[JSON] = []
        self.callback_answers: list[JSON] = []
        self._callback_queries: dict[str, JSON] = {}
        self.my_commands: dict[tuple[str, str], list[JSON]] = {}
        self.document_log: list[JSON] = []
        self.downloads: list[str] = []  # file_path of every file download served

        # failure injection
        self._faults: list[Fault] = []
        self._flood: _FloodControl | None = None
        self._holds: list[_Hold] = []
        self._stopped = asyncio.Event()  # wakes held requests and late answers at stop()
        # Called with each record just before its answer is written (after any late delay):
        # a test can act at the exact moment a client receives, e.g., a batch of updates.
        self.on_answer: Callable[[RequestRecord], None] | None = None
        # Called with (update_id, HTTP status; 0: no answer) after each webhook delivery attempt.
        self.on_push: Callable[[int, int], None] | None = None

        # waiting
        self._waiters: list[asyncio.Future[None]] = []
        self._cursors: dict[tuple[int, int | None], int] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/file/bot{token}/{path:.*}", self._serve_file)
        app.router.add_route("*", "/bot{token}/{method}", self._serve_api)
        app.router.add_route("*", "/bot{token}", self._not_found)
        app.router.add_route("*", "/bot{token}/", self._not_found)
        # handler_cancellation: a client that hangs up ends its request here too, so a held
        # request whose client gave up is never processed afterwards (see hang_next).
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing = True
        self._stopped.set()  # held requests end unprocessed, late answers stop waiting
        self._changed()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """What ``ApplicationBuilder().base_url()`` takes: PTB appends ``{token}/{method}``."""
        assert self.port is not None, "call await fake.start() first"
        return f"http://{self.host}:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        assert self.port is not None, "call await fake.start() first"
        return f"http://{self.host}:{self.port}/file/bot"

    # -- users and chats ------------------------------------------------------------------------

    def user(
        self,
        first_name: str = "Alice",
        *,
        username: str | None = None,
        last_name: str | None = None,
        id: int | None = None,
        language_code: str | None = "en",
    ) -> User:
        user = User(id or next(self._user_ids), first_name, username, last_name, language_code)
        self.users[user.id] = user
        return user

    def private_chat(self, user: User) -> Chat:
        """The user's private chat with the bot (the user has pressed Start)."""
        chat = self.chats.get(user.id)
        if chat is None:
            self.users.setdefault(user.id, user)
            chat = self.chats[user.id] = Chat(user.id, "private", user=user)
        return chat

    def group(self, title: str = "Group", *, bot_is_admin: bool = False) -> Chat:
        chat_id = -(4_000_000_000 + next(self._group_ids))
        chat = self.chats[chat_id] = Chat(chat_id, "group", title, bot_is_admin=bot_is_admin)
        return chat

    def supergroup(
        self,
        title: str = "Supergroup",
        *,
        username: str | None = None,
        forum: bool = False,
        bot_is_admin: bool = False,
    ) -> Chat:
        chat_id = -(1_002_000_000_000 + next(self._group_ids))
        chat = Chat(
            chat_id, "supergroup", title, username, is_forum=forum, bot_is_admin=bot_is_admin
        )
        # message 1 is the service message that created the group (and thread 1 is General)
        chat.next_message_id = 2
        self.chats[chat_id] = chat
        return chat

    def forum(self, title: str = "Forum", *, bot_is_admin: bool = True) -> Chat:
        """A supergroup with topics; the bot is an admin (it needs can_manage_topics)."""
        return self.supergroup(title, forum=True, bot_is_admin=bot_is_admin)

    def create_topic(
        self, forum: Chat, name: str, *, by: User | None = None, icon_color: int = 7322096
    ) -> Topic:
        """A topic created by a user (``by``) or, with ``by=None``, silently by an admin."""
        if not forum.is_forum:
            raise ValueError(f"chat {forum.id} is not a forum")
        creator = by or self.user("Admin")
        message_id = forum.new_message_id()
        message: JSON = {
            "message_id": message_id,
            "from": creator.to_dict(),
            "chat": forum.to_dict(),
            "date": int(time.time()),
            "message_thread_id": message_id,
            "forum_topic_created": {"name": name, "icon_color": icon_color},
            "is_topic_message": True,
        }
        forum.messages[message_id] = message
        topic = forum.topics[message_id] = Topic(forum.id, message_id, name, icon_color, message)
        if by is not None:  # service messages reach the bot even in privacy mode
            self._emit("message", message, chat=forum, service=True)
        return topic

    def block_bot(self, user: User) -> None:
        """The user blocks the bot: sends to them fail with 403."""
        self.private_chat(user).blocked = True

    # -- injecting what users do ----------------------------------------------------------------

    def inject_text(
        self,
        chat: Chat,
        text: str,
        *,
        user: User | None = None,
        thread: Topic | int | None = None,
        reply_to: JSON | int | None = None,
        mention_bot: bool = False,
        entities: list[JSON] | None = None,
    ) -> JSON:
        """A user's text message; returns the update (delivered or not, see ``delivered``).

        ``mention_bot`` prefixes ``@botname `` (a ``mention`` entity, as clients send it);
        bot commands, mentions, URLs... get their entities as Telegram detects them."""
        if mention_bot:
            text = f"@{self.bot.username} {text}"
        given = tp.entities_from_json(entities) if entities is not None else []
        plain, parsed = tp.fix_formatted_text(text, given, allow_empty=False)
        content: JSON = {"text": plain}
        if parsed:
            content["entities"] = [e.to_dict() for e in parsed]
        message = self._user_message(chat, user, thread, reply_to, content)
        return self._emit("message", message, chat=chat)

    def inject_reply(
        self, to_message: JSON, text: str, *, user: User | None = None, **kwargs: Any
    ) -> JSON:
        """A user replies to a message (usually one the bot sent)."""
        chat = self._chat_of(to_message)
        return self.inject_text(chat, text, user=user, reply_to=to_message, **kwargs)

    def inject_edit(self, message: JSON, new_text: str) -> JSON:
        """The user edits their earlier text message: an ``edited_message`` update."""
        chat = self._chat_of(message)
        live = chat.messages[message["message_id"]]
        plain, parsed = tp.fix_formatted_text(new_text, [], allow_empty=False)
        live["text"] = plain
        live.pop("entities", None)
        if parsed:
            live["entities"] = [e.to_dict() for e in parsed]
        live["edit_date"] = int(time.time())
        return self._emit("edited_message", live, chat=chat)

    def inject_photo(
        self,
        chat: Chat,
        *,
        user: User | None = None,
        caption: str | None = None,
        data: bytes = b"\xff\xd8\xff fake jpeg",
        thread: Topic | int | None = None,
        reply_to: JSON | int | None = None,
        media_group_id: str | None = None,
    ) -> JSON:
        sizes = []
        for width in (90, 320, 1280):  # Telegram sends several sizes, the largest last
            stored = self._store_file(data, "photos", "photo.jpg", "image/jpeg")
            sizes.append(
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "file_size": len(data),
                    "width": width,
                    "height": width * 3 // 4,
                }
            )
        content: JSON = {"photo": sizes, **self._caption(caption)}
        if media_group_id:
            content["media_group_id"] = media_group_id
        return self._emit(
            "message", self._user_message(chat, user, thread, reply_to, content), chat=chat
        )

    def inject_voice(
        self,
        chat: Chat,
        *,
        user: User | None = None,
        duration: int = 3,
        data: bytes = b"OggS fake voice",
        thread: Topic | int | None = None,
        reply_to: JSON | int | None = None,
    ) -> JSON:
        stored = self._store_file(data, "voice", "voice.oga", "audio/ogg")
        content = {
            "voice": {
                "duration": duration,
                "mime_type": "audio/ogg",
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": len(data),
            }
        }
        return self._emit(
            "message", self._user_message(chat, user, thread, reply_to, content), chat=chat
        )

    def inject_sticker(
        self,
        chat: Chat,
        *,
        user: User | None = None,
        emoji: str = "👍",
        thread: Topic | int | None = None,
        reply_to: JSON | int | None = None,
    ) -> JSON:
        stored = self._store_file(b"RIFF fake webp", "stickers", "sticker.webp", "image/webp")
        content = {
            "sticker": {
                "width": 512,
                "height": 512,
                "emoji": emoji,
                "set_name": "FakePack",
                "is_animated": False,
                "is_video": False,
                "type": "regular",
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": len(stored.data),
            }
        }
        return self._emit(
            "message", self._user_message(chat, user, thread, reply_to, content), chat=chat
        )

    def inject_document(
        self,
        chat: Chat,
        filename: str,
        data: bytes,
        *,
        user: User | None = None,
        mime_type: str = "application/octet-stream",
        caption: str | None = None,
        thread: Topic | int | None = None,
        reply_to: JSON | int | None = None,
        media_group_id: str | None = None,
    ) -> JSON:
        stored = self._store_file(data, "documents", filename, mime_type)
        content = {"document": self._document_dict(stored), **self._caption(caption)}
        if media_group_id:
            content["media_group_id"] = media_group_id
        return self._emit(
            "message", self._user_message(chat, user, thread, reply_to, content), chat=chat
        )

    def press_button(
        self,
        message: JSON,
        *,
        text: str | None = None,
        data: str | None = None,
        user: User | None = None,
    ) -> JSON:
        """A user presses an inline button of a bot message, chosen by its text or data.

        Returns the ``callback_query`` update; its ``callback_query.id`` must be answered."""
        chat = self._chat_of(message)
        live = chat.messages.get(message["message_id"])
        if live is None:
            raise AssertionError(f"message {message['message_id']} in chat {chat.id} is gone")
        buttons = [
            b for row in live.get("reply_markup", {}).get("inline_keyboard", []) for b in row
        ]
        chosen = [
            b
            for b in buttons
            if (text is None or b.get("text") == text)
            and (data is None or b.get("callback_data") == data)
        ]
        if not chosen or "callback_data" not in chosen[0]:
            raise AssertionError(
                f"no callback button text={text!r} data={data!r} on message "
                f"{live['message_id']} in chat {chat.id}; buttons: {buttons}"
            )
        presser = user or chat.user
        if presser is None:
            raise ValueError("say which user presses the button in a group")
        query_id = str(next(self._query_ids))
        instance = hashlib.sha1(f"{chat.id}".encode()).hexdigest()[:16]
        query = {
            "id": query_id,
            "from": presser.to_dict(),
            "message": copy.deepcopy(live),
            "chat_instance": str(int(instance, 16)),
            "data": chosen[0]["callback_data"],
        }
        self._callback_queries[query_id] = {"query": query, "answered": False}
        return self._emit("callback_query", query, chat=chat)

    def expire_callback_queries(self) -> None:
        """Every query not answered yet becomes too old to answer (as after a bot restart)."""
        for pending in self._callback_queries.values():
            pending["answered"] = True

    def delivered(self, update: JSON) -> bool:
        """Whether Telegram would give this update to the bot (privacy mode, allowed_updates)."""
        return all(u is not update for u in self.undelivered)

    # -- reading what the bot did ---------------------------------------------------------------

    def sent(self, chat_id: int | None = None, thread_id: int | None = None) -> list[JSON]:
        """Messages the bot sent and has not deleted, as they are now (edits applied), in order.

        ``thread_id=None`` means any thread; ``thread_id=0`` means outside topics."""
        return [
            copy.deepcopy(m)
            for m in self._bot_messages
            if self._matches(m, chat_id, thread_id)
            and (m["chat"]["id"], m["message_id"]) not in self._deleted_ids
        ]

    def drafts(self, chat_id: int | None = None) -> list[JSON]:
        """Every sendMessageDraft call that succeeded, in order."""
        return [dict(d) for d in self.draft_log if chat_id is None or d["chat_id"] == chat_id]

    def current_draft(self, chat_id: int, thread_id: int = 0) -> JSON | None:
        """The draft the user sees now (a message from the bot to the chat removes it)."""
        return self._current_draft.get((chat_id, thread_id))

    def chat_actions(self, chat_id: int | None = None) -> list[JSON]:
        return [dict(a) for a in self.chat_action_log if chat_id is None or a["chat_id"] == chat_id]

    def answered(self, query_id: str) -> JSON | None:
        """The bot's answerCallbackQuery for this query, if it answered."""
        return next((a for a in self.callback_answers if a["callback_query_id"] == query_id), None)

    def commands(self, scope: JSON | None = None, language_code: str = "") -> list[JSON]:
        """The command list setMyCommands stored for the scope (default scope by default)."""
        return copy.deepcopy(self.my_commands.get((_scope_key(scope), language_code), []))

    def documents(self, chat_id: int | None = None) -> list[JSON]:
        """Files the bot sent: ``{"message", "filename", "data", "mime_type"}``."""
        return [d for d in self.document_log if chat_id is None or d["chat_id"] == chat_id]

    def calls(self, method: str) -> list[RequestRecord]:
        """Logged requests of one method (any spelling)."""
        return [r for r in self.requests if r.method.lower() == method.lower()]

    def file_bytes(self, file_id: str) -> bytes:
        return self.files[file_id].data

    # -- waiting --------------------------------------------------------------------------------

    async def next_bot_message(
        self,
        chat_id: int,
        thread_id: int | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline is this helper's point
    ) -> JSON:
        """The next message the bot sends to the chat (and thread) that this method has not
        returned yet; raises AssertionError naming the chat when none comes in time."""
        key = (chat_id, thread_id)

        def find() -> JSON | None:
            for index in range(self._cursors.get(key, 0), len(self._bot_messages)):
                message = self._bot_messages[index]
                if self._matches(message, chat_id, thread_id):
                    self._cursors[key] = index + 1
                    return message
            return None

        try:
            found = await self.wait_for(find, timeout)
        except TimeoutError:
            where = f"chat {chat_id}" + (f" thread {thread_id}" if thread_id else "")
            failures = [
                f"{r.method} -> {r.status} {r.response}" for r in self.requests[-8:] if not r.ok
            ]
            raise AssertionError(
                f"the bot sent no new message to {where} within {timeout}s; it has sent there: "
                f"{[m.get('text', '<media>') for m in self.sent(chat_id, thread_id)]}; "
                f"recent failed calls: {failures}"
            ) from None
        return copy.deepcopy(found)

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline is this helper's point
    ) -> Any:
        """Re-checks ``predicate()`` whenever the fake's state changes; returns its first truthy
        value or raises TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s")
            await self._wait_change(remaining)

    # -- failure injection ----------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        *,
        status: int = 500,
        description: str | None = None,
        retry_after: int | None = None,
        drop_connection: bool = False,
        after_processing: bool = False,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` ("*" = any) fail.

        ``status=429`` answers "Too Many Requests: retry after N" with parameters.retry_after;
        ``drop_connection`` closes the socket without an answer. ``after_processing`` does the
        work first (the message is sent) and fails only the answer, like a lost response."""
        parameters = None
        if status == 429:
            retry_after = retry_after or 1
            description = description or f"Too Many Requests: retry after {retry_after}"
            parameters = {"retry_after": retry_after}
        default = {
            500: "Internal Server Error",
            502: "Bad Gateway",
            403: "Forbidden: bot was blocked by the user",
        }
        if description is None:
            if status not in default and not drop_connection:
                raise ValueError(f"give the description Telegram would send with {status}")
            description = default.get(status, "")
        self._faults.append(
            Fault(
                method.lower(),
                status,
                description,
                parameters,
                drop_connection,
                after_processing,
                times,
            )
        )

    def slow_next(self, method: str, delay_s: float, *, times: int = 1) -> None:
        """A late answer: the next ``times`` calls of ``method`` ("*" = any) are processed at once
        (the message exists, the offset moved) and answered ``delay_s`` seconds later. A client
        whose read timeout is shorter gives up, yet the work stays done, as with Telegram."""
        if delay_s <= 0:
            raise ValueError("delay_s must be positive")
        self._faults.append(
            Fault(method.lower(), 200, "", None, False, True, times, kind="late", delay_s=delay_s)
        )

    def hang_next(self, method: str, *, seconds: float | None = None, times: int = 1) -> None:
        """A hang before processing: the next ``times`` calls of ``method`` ("*" = any) are held
        untouched until ``release_hung()``, for ``seconds`` (None: until released or the fake
        stops). Then a call whose client is still waiting is processed and answered normally;
        one whose client gave up is never processed, as a request lost on the way would not be."""
        if seconds is not None and seconds <= 0:
            raise ValueError("seconds must be positive (or None: until released)")
        self._faults.append(
            Fault(method.lower(), 0, "", None, False, False, times, kind="hang", delay_s=seconds)
        )

    @property
    def hung(self) -> list[RequestRecord]:
        """Requests held by ``hang_next`` right now, oldest first."""
        return [hold.record for hold in self._holds]

    def release_hung(self) -> int:
        """Let every held request go on (see ``hang_next``); returns how many were held."""
        holds, self._holds = self._holds, []
        for hold in holds:
            hold.released.set()
        return len(holds)

    def clear_faults(self) -> None:
        """Forget injected faults not yet used (held requests stay held: release_hung())."""
        self._faults.clear()

    def enable_flood_control(
        self,
        *,
        private: tuple[int, float] = (1, 1.0),
        group: tuple[int, float] = (20, 60.0),
        overall: tuple[int, float] = (30, 1.0),
        clock: Callable[[], float] | None = None,
        methods: Iterable[str] = FLOOD_METHODS,
    ) -> None:
        """Answer 429 like Telegram when a chat or the bot sends too fast. Limits are
        (messages, window seconds); pass a ``ManualClock`` to move time without sleeping."""
        limits = FloodLimits(private, group, overall, frozenset(m.lower() for m in methods))
        self._flood = _FloodControl(limits, clock or time.monotonic)

    def disable_flood_control(self) -> None:
        self._flood = None

    # -- internals: world -----------------------------------------------------------------------

    def _changed(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _wait_change(self, seconds: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, seconds)
        except TimeoutError:
            pass

    @staticmethod
    def _matches(message: JSON, chat_id: int | None, thread_id: int | None) -> bool:
        if chat_id is not None and message["chat"]["id"] != chat_id:
            return False
        return thread_id is None or message.get("message_thread_id", 0) == thread_id

    def _chat_of(self, message: JSON) -> Chat:
        return self.chats[message["chat"]["id"]]

    def _caption(self, caption: str | None) -> JSON:
        if not caption:
            return {}
        plain, parsed = tp.fix_formatted_text(caption, [], allow_empty=True)
        out: JSON = {"caption": plain}
        if parsed:
            out["caption_entities"] = [e.to_dict() for e in parsed]
        return out

    def _store_file(
        self, data: bytes, folder: str, name: str | None, mime: str | None
    ) -> StoredFile:
        number = next(self._file_ids)
        digest = hashlib.sha1(data).hexdigest()
        file_id = f"BQACAgIAAxkBAAI{number:06d}{digest[:20]}"
        extension = (name or "file").rsplit(".", 1)[-1] if name and "." in name else "bin"
        stored = StoredFile(
            file_id,
            f"AgAD{number:04d}{digest[:8]}",
            data,
            f"{folder}/file_{number}.{extension}",
            name,
            mime,
        )
        self.files[file_id] = stored
        return stored

    @staticmethod
    def _document_dict(stored: StoredFile) -> JSON:
        out: JSON = {}
        if stored.file_name:
            out["file_name"] = stored.file_name
        if stored.mime_type:
            out["mime_type"] = stored.mime_type
        out.update(
            file_id=stored.file_id, file_unique_id=stored.file_unique_id, file_size=len(stored.data)
        )
        return out

    def _thread_of(self, chat: Chat, thread: Topic | int | None) -> int:
        thread_id = thread.message_thread_id if isinstance(thread, Topic) else (thread or 0)
        if thread_id and thread_id not in chat.topics:
            raise ValueError(f"chat {chat.id} has no topic {thread_id}")
        return thread_id

    def _place(self, chat: Chat, message: JSON, thread_id: int, reply: JSON | None) -> None:
        """Thread and reply fields, as Telegram sets them for a message in a forum topic."""
        if thread_id:
            message["message_thread_id"] = thread_id
        if reply is not None:
            message["reply_to_message"] = _without_reply(reply)
        elif thread_id:  # a topic message replies to the topic's creation message
            message["reply_to_message"] = _without_reply(chat.topics[thread_id].created_message)
        if thread_id:
            message["is_topic_message"] = True

    def _user_message(
        self,
        chat: Chat,
        user: User | None,
        thread: Topic | int | None,
        reply_to: JSON | int | None,
        content: JSON,
    ) -> JSON:
        sender = user or chat.user
        if sender is None:
            raise ValueError(f"say which user writes in {chat.type} {chat.id}")
        self.users.setdefault(sender.id, sender)
        reply = None
        if reply_to is not None:
            reply_id = reply_to if isinstance(reply_to, int) else reply_to["message_id"]
            reply = chat.messages[reply_id]
        thread_id = self._thread_of(chat, thread)
        if reply is not None and not thread_id:
            thread_id = reply.get("message_thread_id", 0) if chat.is_forum else 0
        message: JSON = {
            "message_id": chat.new_message_id(),
            "from": sender.to_dict(),
            "chat": chat.to_dict(),
            "date": int(time.time()),
        }
        self._place(chat, message, thread_id, reply)
        message.update(content)
        chat.messages[message["message_id"]] = message
        return message

    def _emit(
        self, kind: str, payload: JSON, *, chat: Chat | None = None, service: bool = False
    ) -> JSON:
        update = {"update_id": self._next_update_id, kind: copy.deepcopy(payload)}
        self._next_update_id += 1
        if kind in self.allowed_updates and self._bot_sees(kind, payload, chat, service):
            self._queue.append(update)
        else:
            self.undelivered.append(update)
        self._changed()
        return update

    def _bot_sees(self, kind: str, payload: JSON, chat: Chat | None, service: bool) -> bool:
        """Privacy mode: in groups the bot gets commands, mentions of it, replies to its
        messages and service messages, unless it is an admin or privacy mode is off."""
        if chat is None or chat.type == "private" or kind not in ("message", "edited_message"):
            return True
        if service or not self.privacy_mode or chat.bot_is_admin:
            return True
        replied = payload.get("reply_to_message") or {}
        if replied.get("from", {}).get("id") == self.bot.id and not replied.get(
            "forum_topic_created"
        ):
            return True
        text = payload.get("text") or payload.get("caption") or ""
        for entity in payload.get("entities") or payload.get("caption_entities") or []:
            piece = tp.utf16_slice(text, entity["offset"], entity["length"])
            if (
                entity["type"] == "mention"
                and piece[1:].lower() == (self.bot.username or "").lower()
            ):
                return True
            if entity["type"] == "bot_command":
                target = piece.partition("@")[2]
                if not target or target.lower() == (self.bot.username or "").lower():
                    return True
        return False

    # -- internals: HTTP ------------------------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        path = request.match_info["path"]
        self.downloads.append(path)
        self._changed()
        stored = next((f for f in self.files.values() if f.file_path == path), None)
        if stored is None:
            return web.json_response(
                {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
            )
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _serve_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        record = RequestRecord(method, {}, {}, 0, None, time.time())
        self.requests.append(record)
        try:
            return await self._handle_api(request, method, record)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client hangs up (handler_cancellation): a
            # held request is then never processed, a late answer has nobody to reach.
            record.client_gone = not self._closing
            record.status, record.response = 0, None
            self._changed()
            raise

    async def _handle_api(
        self, request: web.Request, method: str, record: RequestRecord
    ) -> web.StreamResponse:
        fault: Fault | None = None
        try:
            if request.match_info["token"] != self.token:
                # a well-formed but wrong token is 401; a malformed one 404, as Telegram does
                if re.fullmatch(r"\d+:[A-Za-z0-9_-]{1,}", request.match_info["token"]):
                    raise ApiError(401, "Unauthorized")
                raise ApiError(404, "Not Found")
            handler = getattr(self, f"_api_{method.lower()}", None)
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            params, files = await _read_params(request)
            record.params = _decoded(params)
            record.files = {k: (v.file_name, v.data) for k, v in files.items()}
            fault = self._take_fault(method.lower())
            if fault is not None:
                record.fault = fault.kind
            if fault is not None and fault.kind == "hang":
                if not await self._hold(request, record, fault.delay_s):
                    return self._abort(request, record)
            elif fault is not None and not fault.after_processing:
                return self._fail(request, record, fault)
            record.processed = True
            result = await handler(params, files)
            if fault is not None and fault.kind == "error":
                return self._fail(request, record, fault)
            body: JSON = {"ok": True, "result": result}
            if isinstance(result, tuple):  # (result, description) like "Webhook was set"
                body = {"ok": True, "result": result[0], "description": result[1]}
            record.status, record.response = 200, body
        except ApiError as exc:
            record.status, record.response = exc.status, exc.body()
        except Exception as exc:  # a bug in the fake: answer like Telegram's 500, fail the test
            self.crashes.append(f"{method}: {exc!r}")
            record.status = 500
            record.response = ApiError(500, f"Internal Server Error: fake crashed: {exc!r}").body()
        if fault is not None and fault.kind == "late" and fault.delay_s is not None:
            self._changed()  # the work is visible while the answer is still on its way
            await self._sleep_unless_stopped(fault.delay_s)
            if self._closing or _gone(request):
                return self._abort(request, record)
        return self._answer(record, web.json_response(record.response, status=record.status))

    def _answer(self, record: RequestRecord, response: web.StreamResponse) -> web.StreamResponse:
        if self.on_answer is not None:
            self.on_answer(record)
        self._changed()
        return response

    async def _hold(self, request: web.Request, record: RequestRecord, seconds: float | None) -> bool:
        """Hold a request unprocessed; True when it should now be processed."""
        hold = _Hold(record)
        self._holds.append(hold)
        self._changed()
        waits = [asyncio.ensure_future(hold.released.wait()),
                 asyncio.ensure_future(self._stopped.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            if hold in self._holds:
                self._holds.remove(hold)
        return not self._closing and not _gone(request)

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    def _abort(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        """No answer reaches the client (it hung up, or the fake is stopping)."""
        record.client_gone = _gone(request)
        record.status = 0
        record.response = None
        if request.transport is not None:
            request.transport.abort()
        self._changed()
        return web.Response(status=500)  # never reaches the client

    def _take_fault(self, method: str) -> Fault | None:
        for fault in self._faults:
            if fault.method in (method, "*"):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fail(
        self, request: web.Request, record: RequestRecord, fault: Fault
    ) -> web.StreamResponse:
        self._changed()
        if fault.drop_connection:
            record.status = 0
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        record.status = fault.status
        record.response = ApiError(fault.status, fault.description, fault.parameters).body()
        return self._answer(record, web.json_response(record.response, status=fault.status))

    # -- internals: parameters ------------------------------------------------------------------

    def _chat(self, params: dict[str, str], *, for_sending: bool = True) -> Chat:
        raw = params.get("chat_id", "").strip()
        if not raw:
            raise bad_request("chat_id is empty")
        chat: Chat | None = None
        if raw.startswith("@"):
            chat = next(
                (
                    c
                    for c in self.chats.values()
                    if c.username and c.username.lower() == raw[1:].lower() and c.type != "private"
                ),
                None,
            )
        elif re.fullmatch(r"-?\d+", raw):
            chat = self.chats.get(int(raw))
            if chat is None and int(raw) in self.users:
                raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
        if chat is None:
            raise ApiError(400, CHAT_NOT_FOUND)
        if for_sending and chat.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _thread(self, chat: Chat, params: dict[str, str]) -> int:
        thread_id = _int(params, "message_thread_id")
        if thread_id and thread_id not in chat.topics:
            raise ApiError(400, THREAD_NOT_FOUND)
        return thread_id

    def _formatted(
        self, params: dict[str, str], text_key: str, entities_key: str, *, allow_empty: bool
    ) -> tuple[str, list[tp.Entity]]:
        entities = None
        if params.get(entities_key):
            try:
                entities = json.loads(params[entities_key])
            except ValueError:
                raise bad_request("can't parse entities JSON object") from None
        try:
            text, parsed = tp.parse_text(
                params.get(text_key, ""),
                params.get("parse_mode"),
                entities,
                allow_empty=allow_empty,
            )
        except tp.FormatError as exc:
            raise bad_request(_lower_first(exc.message)) from None
        for entity in parsed:
            if entity.type == "text_mention" and entity.user is not None:
                # the Bot API prints a user it does not know with an empty first name
                known = self.users.get(entity.user["id"])
                entity.user = (
                    known.to_dict()
                    if known
                    else {"id": entity.user["id"], "is_bot": False, "first_name": ""}
                )
        return text, parsed

    def _markup(self, params: dict[str, str]) -> JSON | None:
        raw = params.get("reply_markup")
        if not raw:
            return None
        try:
            markup = json.loads(raw)
        except ValueError:
            raise bad_request("can't parse reply keyboard markup JSON object") from None
        if not isinstance(markup, dict):
            raise bad_request("can't parse reply keyboard markup JSON object")
        if "inline_keyboard" not in markup:
            return None  # reply keyboards are accepted but are not part of the Message
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise bad_request(
                'Field "inline_keyboard" of the InlineKeyboardMarkup should be an Array of Arrays'
            )
        for button in (b for row in rows for b in row):
            if not isinstance(button, dict):
                raise bad_request(
                    "can't parse inline keyboard button: InlineKeyboardButton must be an Object"
                )
            if not isinstance(button.get("text"), str):
                raise bad_request(
                    'can\'t parse inline keyboard button: Field "text" must be of type String'
                )
            if not any(key in button for key in BUTTON_ACTIONS):
                raise bad_request(
                    "can't parse inline keyboard button: Text buttons are "
                    "unallowed in the inline keyboard"
                )
        return {"inline_keyboard": rows}

    @staticmethod
    def _check_button_data(markup: JSON | None) -> None:
        """Telegram's servers (not the Bot API front) refuse callback_data over 64 bytes."""
        for row in (markup or {}).get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and (
                    not isinstance(data, str) or not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA
                ):
                    raise bad_request("BUTTON_DATA_INVALID")

    def _reply_target(self, chat: Chat, params: dict[str, str]) -> JSON | None:
        reply_id, allow_without = (
            _int(params, "reply_to_message_id"),
            _bool(params, "allow_sending_without_reply"),
        )
        if params.get("reply_parameters"):
            try:
                reply_parameters = json.loads(params["reply_parameters"])
                reply_id = int(reply_parameters["message_id"])
            except (ValueError, KeyError, TypeError):
                raise bad_request("can't parse reply parameters JSON object") from None
            allow_without = bool(reply_parameters.get("allow_sending_without_reply"))
            other = reply_parameters.get("chat_id")
            if other is not None and str(other) != str(chat.id):
                reply_id = -1  # replies across chats are not simulated: "not found"
        if not reply_id:
            return None
        target = chat.messages.get(reply_id)
        if target is None and not allow_without:
            raise bad_request("message to be replied not found")
        return target

    def _admit(self, method: str, chat: Chat) -> None:
        if self._flood is not None and method in self._flood.limits.methods:
            self._flood.admit(chat)

    def _bot_message(self, chat: Chat, params: dict[str, str], content: JSON) -> JSON:
        thread_id = self._thread(chat, params)
        reply = self._reply_target(chat, params)
        if reply is not None and not thread_id and chat.is_forum:
            thread_id = reply.get("message_thread_id", 0)
        message: JSON = {
            "message_id": chat.new_message_id(),
            "from": self.bot.to_dict(),
            "chat": chat.to_dict(),
            "date": int(time.time()),
        }
        self._place(chat, message, thread_id, reply)
        message.update(content)
        chat.messages[message["message_id"]] = message
        self._bot_messages.append(message)
        self._current_draft.pop((chat.id, thread_id), None)
        return message

    def _editable(self, params: dict[str, str]) -> tuple[Chat, JSON]:
        if params.get("inline_message_id"):
            raise bad_request("MESSAGE_ID_INVALID")  # inline messages are not simulated
        chat = self._chat(params, for_sending=False)
        message_id = _int(params, "message_id")
        if not message_id:
            raise bad_request("message identifier is not specified")
        message = chat.messages.get(message_id)
        if message is None:
            raise bad_request("message to edit not found")
        if message["from"]["id"] != self.bot.id:
            raise bad_request("message can't be edited")
        return chat, message

    # -- Bot API methods ------------------------------------------------------------------------

    async def _api_getme(self, params: dict[str, str], files: Files) -> JSON:
        return {
            **self.bot.to_dict(),
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
            "has_topics_enabled": False,
            "allows_users_to_create_topics": False,
            "can_manage_bots": False,
            "supports_guest_queries": False,
        }

    async def _api_setwebhook(self, params: dict[str, str], files: Files) -> tuple[bool, str]:
        url = params.get("url", "")
        secret = params.get("secret_token", "")
        if secret and not SECRET_TOKEN.fullmatch(secret):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if url and not WEBHOOK_URL.match(url):
            # Telegram wants https on 443, 80, 88 or 8443; the fake also takes http on 127.0.0.1
            # (tests have no certificate)
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for "
                                "webhook")
        max_connections = _int(params, "max_connections", 40)
        if not 1 <= max_connections <= 100:
            raise ApiError(400, "Bad Request: bad webhook: max_connections must be between 1 "
                                "and 100")
        if params.get("allowed_updates"):
            try:
                wanted = json.loads(params["allowed_updates"])
            except ValueError:
                wanted = None
            if isinstance(wanted, list):
                self.allowed_updates = {str(w) for w in wanted} or set(DEFAULT_UPDATES)
        self.webhook_url, self.webhook_secret = url, secret
        self.webhook_max_connections = max_connections
        if _bool(params, "drop_pending_updates"):
            self._queue.clear()
        self._poll_generation += 1  # a long poll in progress ends with 409
        self._changed()
        if url and (self._webhook_task is None or self._webhook_task.done()):
            self._webhook_task = asyncio.create_task(self._push_updates())
        return True, "Webhook was set" if self.webhook_url else "Webhook was deleted"

    async def _api_deletewebhook(self, params: dict[str, str], files: Files) -> tuple[bool, str]:
        had = bool(self.webhook_url)
        self.webhook_url = ""
        self._changed()  # the pushing task sees it and ends
        if _bool(params, "drop_pending_updates"):
            self._queue.clear()
        return True, "Webhook was deleted" if had else "Webhook is already deleted"

    async def _api_getwebhookinfo(self, params: dict[str, str], files: Files) -> JSON:
        info: JSON = {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._queue),
        }
        if self.webhook_url:
            info["max_connections"] = self.webhook_max_connections
            info["allowed_updates"] = sorted(self.allowed_updates)
        if self.webhook_last_error is not None:
            info["last_error_date"], info["last_error_message"] = self.webhook_last_error
        return info

    async def _push_updates(self) -> None:
        """Telegram's side of a webhook: POST the oldest pending update to the URL (with the
        secret in ``X-Telegram-Bot-Api-Secret-Token``) until it answers 2xx, then the next; a
        failed delivery is retried with a growing pause and shown in getWebhookInfo. One update
        at a time — Telegram may also use several connections, but never promises to."""
        import aiohttp

        pause = WEBHOOK_RETRY_S[0]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)) \
                as http:
            while not self._closing and self.webhook_url:
                if not self._queue:
                    await self._wait_change(1.0)
                    continue
                update, url = self._queue[0], self.webhook_url
                headers = {"X-Telegram-Bot-Api-Secret-Token": self.webhook_secret} \
                    if self.webhook_secret else {}
                if not url.startswith(("http://127.0.0.1", "https://127.0.0.1")):
                    # the fake never leaves the machine: any other host is unreachable from here
                    status, reason = 0, "Connection failed: the fake reaches 127.0.0.1 only"
                else:
                    try:
                        async with http.post(url, json=update, headers=headers) as response:
                            status, reason = response.status, response.reason or ""
                            await response.read()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        status, reason = 0, f"Connection failed: {type(exc).__name__}"
                self.webhook_log.append((update["update_id"], status))
                if self.on_push is not None:
                    self.on_push(update["update_id"], status)
                if 200 <= status < 300:
                    if self._queue and self._queue[0] is update:
                        self._queue.pop(0)
                    pause = WEBHOOK_RETRY_S[0]
                    self._changed()
                    continue
                self.webhook_last_error = (int(time.time()), (
                    f"Wrong response from the webhook: {status} {reason}" if status else reason))
                self._changed()
                await self._wait_change(pause)  # a setWebhook or a new update does not skip it
                pause = min(pause * 2, WEBHOOK_RETRY_S[1])

    async def _api_getupdates(self, params: dict[str, str], files: Files) -> list[JSON]:
        if self.webhook_url:
            raise ApiError(409, CONFLICT_WEBHOOK)
        offset = _int(params, "offset")
        limit = min(max(_int(params, "limit", 100), 1), 100)
        timeout = min(max(_int(params, "timeout", 0), 0), 50)
        if params.get("allowed_updates"):
            try:
                wanted = json.loads(params["allowed_updates"])
            except ValueError:
                wanted = None  # Telegram ignores a malformed value
            if isinstance(wanted, list):
                self.allowed_updates = {str(w) for w in wanted} or set(DEFAULT_UPDATES)
        if offset < 0:
            del self._queue[: max(0, len(self._queue) + offset)]
        elif offset:
            self._queue = [u for u in self._queue if u["update_id"] >= offset]
        self._poll_generation += 1
        generation = self._poll_generation
        self._changed()  # ends an earlier long poll with 409
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if generation != self._poll_generation:
                raise ApiError(409, CONFLICT_POLL)
            if self._queue or self._closing or loop.time() >= deadline:
                ready = [u for u in self._queue if u["update_id"] >= offset]
                return copy.deepcopy(ready[:limit])
            await self._wait_change(deadline - loop.time())

    async def _api_sendmessage(self, params: dict[str, str], files: Files) -> JSON:
        # the order of checks is the Bot API server's: its own parsing, the chat, TDLib, servers
        if not params.get("text"):
            raise ApiError(400, TEXT_EMPTY)
        text, entities = self._formatted(params, "text", "entities", allow_empty=False)
        markup = self._markup(params)
        chat = self._chat(params)
        self._thread(chat, params)
        self._reply_target(chat, params)
        if len(text) > MAX_TEXT:
            raise ApiError(400, TOO_LONG)
        self._check_button_data(markup)
        self._admit("sendmessage", chat)
        content: JSON = {"text": text}
        if entities:
            content["entities"] = [e.to_dict() for e in entities]
        preview = _json_param(params, "link_preview_options")
        if isinstance(preview, dict) and preview:
            content["link_preview_options"] = preview
        if markup:
            content["reply_markup"] = markup
        return copy.deepcopy(self._bot_message(chat, params, content))

    async def _api_editmessagetext(self, params: dict[str, str], files: Files) -> JSON:
        if not params.get("text"):
            raise ApiError(400, TEXT_EMPTY)
        text, entities = self._formatted(params, "text", "entities", allow_empty=False)
        markup = self._markup(params)
        chat, message = self._editable(params)
        if "text" not in message:
            raise bad_request("there is no text in the message to edit")
        if len(text) > MAX_TEXT:
            raise ApiError(400, TOO_LONG)
        self._check_button_data(markup)
        new_entities = [e.to_dict() for e in entities]
        if (text, new_entities, markup) == (
            message["text"],
            message.get("entities", []),
            message.get("reply_markup"),
        ):
            raise ApiError(400, NOT_MODIFIED)
        self._admit("editmessagetext", chat)
        message["text"] = text
        message.pop("entities", None)
        if new_entities:
            message["entities"] = new_entities
        message.pop("reply_markup", None)  # an edit without reply_markup removes the keyboard
        if markup:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    async def _api_editmessagereplymarkup(self, params: dict[str, str], files: Files) -> JSON:
        markup = self._markup(params)
        chat, message = self._editable(params)
        self._check_button_data(markup)
        if markup == message.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        self._admit("editmessagereplymarkup", chat)
        message.pop("reply_markup", None)
        if markup:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    async def _api_deletemessage(self, params: dict[str, str], files: Files) -> bool:
        chat = self._chat(params, for_sending=False)
        message_id = _int(params, "message_id")
        message = chat.messages.get(message_id)
        if message is None:
            raise bad_request("message to delete not found")
        ours = message["from"]["id"] == self.bot.id
        if not ours and chat.type != "private" and not chat.bot_is_admin:
            raise bad_request("message can't be deleted")
        del chat.messages[message_id]
        self._deleted_ids.add((chat.id, message_id))
        self.deleted.append(copy.deepcopy(message))
        return True

    async def _api_sendchataction(self, params: dict[str, str], files: Files) -> bool:
        chat = self._chat(params)
        action = params.get("action", "").lower()
        if action not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        thread_id = self._thread(chat, params)
        self.chat_action_log.append(
            {
                "chat_id": chat.id,
                "action": action,
                "message_thread_id": thread_id,
                "time": time.time(),
            }
        )
        return True

    async def _api_sendmessagedraft(self, params: dict[str, str], files: Files) -> bool:
        chat = self._chat(params)
        draft_id = _int(params, "draft_id")
        text, entities = "", list[tp.Entity]()
        if params.get("text"):
            text, entities = self._formatted(params, "text", "entities", allow_empty=False)
            if len(text) > MAX_TEXT:
                raise bad_request("text is too long")
        if chat.type != "private":
            raise bad_request("TEXTDRAFT_PEER_INVALID")
        if draft_id == 0:
            raise bad_request("draft_id must be non-zero")
        thread_id = self._thread(chat, params)
        draft = {
            "chat_id": chat.id,
            "draft_id": draft_id,
            "message_thread_id": thread_id,
            "text": text,
            "entities": [e.to_dict() for e in entities],
            "time": time.time(),
        }
        self.draft_log.append(draft)
        self._current_draft[(chat.id, thread_id)] = draft
        return True

    async def _api_answercallbackquery(self, params: dict[str, str], files: Files) -> bool:
        query_id = params.get("callback_query_id", "")
        pending = self._callback_queries.get(query_id)
        if pending is None or pending["answered"]:
            raise ApiError(400, QUERY_INVALID)
        if len(params.get("text", "")) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        pending["answered"] = True
        self.callback_answers.append(
            {
                "callback_query_id": query_id,
                "text": params.get("text"),
                "show_alert": _bool(params, "show_alert"),
                "url": params.get("url"),
                "cache_time": _int(params, "cache_time"),
            }
        )
        return True

    async def _api_setmycommands(self, params: dict[str, str], files: Files) -> bool:
        commands = _json_param(params, "commands") or []
        if not isinstance(commands, list):
            raise bad_request("can't parse commands JSON object")
        if len(commands) > 100:
            raise bad_request("BOT_COMMANDS_TOO_MUCH")
        stored = []
        for item in commands:
            if not isinstance(item, dict) or not isinstance(item.get("command"), str):
                raise bad_request('can\'t parse BotCommand: Field "command" must be of type String')
            command = item["command"].strip()
            description = str(item.get("description", "")).strip()
            if not command:
                raise bad_request("command must be non-empty")
            if len(command) > 32:
                raise bad_request("command length must not exceed 32")
            if not description:
                raise bad_request("command description must be non-empty")
            if len(description) > 256:
                raise bad_request("command description length must not exceed 256")
            if not re.fullmatch(r"[a-z0-9_]+", command):
                raise bad_request("BOT_COMMAND_INVALID")
            stored.append({"command": command, "description": description})
        key = (_scope_key(_json_param(params, "scope")), params.get("language_code", ""))
        self.my_commands[key] = stored
        return True

    async def _api_getmycommands(self, params: dict[str, str], files: Files) -> list[JSON]:
        key = (_scope_key(_json_param(params, "scope")), params.get("language_code", ""))
        return copy.deepcopy(self.my_commands.get(key, []))

    async def _api_deletemycommands(self, params: dict[str, str], files: Files) -> bool:
        key = (_scope_key(_json_param(params, "scope")), params.get("language_code", ""))
        self.my_commands.pop(key, None)
        return True

    async def _api_senddocument(self, params: dict[str, str], files: Files) -> JSON:
        chat = self._chat(params)
        upload = files.get("document")
        if upload is None and params.get("document", "").startswith("attach://"):
            upload = files.get(params["document"][len("attach://") :])
        if upload is not None:
            if not upload.data:
                raise bad_request("file must be non-empty")
            stored = self._store_file(
                upload.data, "documents", upload.file_name, upload.content_type
            )
        elif params.get("document"):
            known = self.files.get(params["document"])
            if known is None:
                raise bad_request("wrong file identifier/HTTP URL specified")
            stored = known
        else:
            raise bad_request("there is no document in the request")
        caption, entities = self._formatted(params, "caption", "caption_entities", allow_empty=True)
        if len(caption) > MAX_CAPTION:
            raise bad_request("message caption is too long")
        markup = self._markup(params)
        self._thread(chat, params)
        self._reply_target(chat, params)
        self._check_button_data(markup)
        self._admit("senddocument", chat)
        content: JSON = {"document": self._document_dict(stored)}
        if caption:
            content["caption"] = caption
        if entities:
            content["caption_entities"] = [e.to_dict() for e in entities]
        if markup:
            content["reply_markup"] = markup
        message = self._bot_message(chat, params, content)
        self.document_log.append(
            {
                "chat_id": chat.id,
                "message": message,
                "filename": stored.file_name,
                "data": stored.data,
                "mime_type": stored.mime_type,
            }
        )
        return copy.deepcopy(message)

    async def _api_createforumtopic(self, params: dict[str, str], files: Files) -> JSON:
        chat = self._chat(params)
        name = params.get("name", "").strip()
        if not chat.is_forum:
            raise bad_request("the chat is not a forum")
        if not name:
            raise bad_request("topic name must be non-empty")
        if len(name) > 128:
            raise bad_request("TOPIC_TITLE_INVALID")
        if not chat.bot_is_admin:
            raise bad_request("not enough rights to create a topic")
        color = _int(params, "icon_color", 7322096)
        message_id = chat.new_message_id()
        created: JSON = {"name": name, "icon_color": color}
        if params.get("icon_custom_emoji_id"):
            created["icon_custom_emoji_id"] = params["icon_custom_emoji_id"]
        message: JSON = {
            "message_id": message_id,
            "from": self.bot.to_dict(),
            "chat": chat.to_dict(),
            "date": int(time.time()),
            "message_thread_id": message_id,
            "forum_topic_created": created,
            "is_topic_message": True,
        }
        chat.messages[message_id] = message
        topic = chat.topics[message_id] = Topic(chat.id, message_id, name, color, message)
        result = topic.to_dict()
        if "icon_custom_emoji_id" in created:
            result["icon_custom_emoji_id"] = created["icon_custom_emoji_id"]
        return result

    async def _api_getfile(self, params: dict[str, str], files: Files) -> JSON:
        stored = self.files.get(params.get("file_id", ""))
        if stored is None:
            raise bad_request("invalid file_id")
        if len(stored.data) > MAX_DOWNLOAD_BYTES:
            raise bad_request("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }


# --- request decoding --------------------------------------------------------------------------


def _gone(request: web.Request) -> bool:
    """Whether the client closed the connection (gave up waiting)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _read_params(request: web.Request) -> tuple[dict[str, str], dict[str, _Upload]]:
    """Query string and body merged into strings, as the Bot API server sees every value."""
    params: dict[str, str] = dict(request.query)
    files: dict[str, _Upload] = {}
    content_type = request.content_type
    if request.method == "GET" or not request.can_read_body:
        return params, files
    if content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("can't parse JSON encoded request") from None
        if not isinstance(body, dict):
            raise bad_request("can't parse JSON encoded request")
        for key, value in body.items():
            if value is None:
                continue
            params[key] = value if isinstance(value, str) else json.dumps(value)
    elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                files[key] = _Upload(value.filename, value.content_type, value.file.read())
            else:
                params[key] = str(value)
    return params, files


def _int(params: dict[str, str], name: str, default: int = 0) -> int:
    match = re.match(r"\s*([+-]?\d+)", params.get(name, ""))
    return int(match.group(1)) if match else default


def _bool(params: dict[str, str], name: str) -> bool:
    return params.get(name, "").lower() in ("true", "1")


def _json_param(params: dict[str, str], name: str) -> Any:
    raw = params.get(name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request(f"can't parse {name} JSON object") from None


_JSON_FIELDS = {
    "reply_markup",
    "entities",
    "caption_entities",
    "reply_parameters",
    "link_preview_options",
    "allowed_updates",
    "commands",
    "scope",
}


def _decoded(params: dict[str, str]) -> JSON:
    out: JSON = {}
    for key, value in params.items():
        if key in _JSON_FIELDS:
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out


def _scope_key(scope: Any) -> str:
    if not scope or scope == {"type": "default"}:
        return "default"
    return json.dumps(scope, sort_keys=True)


def _without_reply(message: JSON) -> JSON:
    """A replied-to message as Telegram nests it: one level, no reply of its own."""
    nested = copy.deepcopy(message)
    nested.pop("reply_to_message", None)
    return nested
