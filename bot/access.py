"""Who keel serves and what each person may do: roles, the one gate, and what each role sees.

Roles rank owner > admin > user. The owner is ``KEEL_OWNER_ID`` (default: the first allowed id);
admins and users live in the ``people`` table, seeded once from ``KEEL_ALLOWED_USER_IDS`` and
changed from Telegram (/allow, /deny, /promote, /demote) without a restart. Messages, commands and
button presses all pass the same gate; each command declares the least role that may use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from telegram import Update
from telegram.ext import ContextTypes

from agents.config import Settings
from agents.errors import KeelError
from storage.db import Database
from storage.people import PeopleRepository, Person
from storage.usage import today

if TYPE_CHECKING:
    from bot.service import KeelBot

log = logging.getLogger(__name__)

Role = Literal["owner", "admin", "user"]
RANK: dict[Role, int] = {"user": 1, "admin": 2, "owner": 3}

Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


class AccessRefused(KeelError):
    """A change of roles that the asker may not make; the message says why."""


def at_least(role: Role | None, need: Role) -> bool:
    return role is not None and RANK[role] >= RANK[need]


def sees_everyone(role: Role | None) -> bool:
    """The owner and admins see every person's runs, traces and spend."""
    return at_least(role, "admin")


def who_may(need: Role) -> str:
    return {"owner": "the owner", "admin": "the owner or an admin", "user": "allowed people"}[need]


@dataclass(frozen=True)
class Command:
    """A slash command and the least role that may use it."""

    name: str
    description: str
    handler: Handler
    role: Role


@dataclass(frozen=True)
class Scope:
    """The runs one asker may see in one chat: ``None`` means no restriction on that field.

    A user sees their own runs; the owner and admins everyone's. In a group only that group's
    runs, so nothing from a private chat or another group is ever posted there."""

    user_id: int | None
    chat_id: int | None


def scope_for(role: Role | None, *, user_id: int, chat_id: int, private: bool) -> Scope:
    return Scope(user_id=None if sees_everyone(role) else user_id,
                 chat_id=None if private else chat_id)


class Access:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.people = PeopleRepository(db)
        self.owner_id = settings.owner_id
        self._initial = settings.allowed_user_ids
        self._seeded = False
        self._seed_lock = asyncio.Lock()
        self._told: dict[int, str] = {}  # stranger → day told; spares a write per repeat

    async def _seed(self) -> None:
        if self._seeded:
            return
        async with self._seed_lock:
            if not self._seeded:
                added = await self.people.seed(self._initial - {self.owner_id})
                if added:
                    log.info("added %d person(s) from KEEL_ALLOWED_USER_IDS", added)
                self._seeded = True

    async def role(self, user_id: int) -> Role | None:
        """The person's role, or None for a stranger (and for anyone removed with /deny)."""
        if self.owner_id is not None and user_id == self.owner_id:
            return "owner"
        await self._seed()
        person = await self.people.get(user_id)
        if person is None or person.role == "removed":
            return None
        return person.role

    async def may(self, user_id: int, need: Role = "user") -> bool:
        return at_least(await self.role(user_id), need)

    async def everyone(self) -> list[Person]:
        await self._seed()
        return await self.people.all()

    async def first_reply_today(self, user_id: int) -> bool:
        """True the first time a stranger writes on a UTC day; every later time False."""
        day = today()
        if self._told.get(user_id) == day:
            return False
        first = await self.people.claim_stranger_reply(user_id, day)
        self._told[user_id] = day
        return first

    # ------------------------------------------------------------------ changes from Telegram

    async def allow(self, actor: int, target: int) -> str:
        await self._require(actor, "admin")
        current = await self.role(target)
        if current is not None:
            return f"`{target}` is already allowed ({current})."
        await self.people.set_role(target, "user", by=actor)
        log.info("user %s allowed %s", actor, target)
        return f"Allowed `{target}`: they can talk to me now."

    async def deny(self, actor: int, target: int) -> str:
        actor_role = await self._require(actor, "admin")
        current = await self.role(target)
        if current == "owner":
            raise AccessRefused("The owner cannot be removed.")
        if current == "admin" and actor_role != "owner":
            raise AccessRefused("Only the owner can remove an admin.")
        await self.people.set_role(target, "removed", by=actor)
        log.info("user %s removed %s", actor, target)
        return f"Removed `{target}`: I no longer answer them."

    async def promote(self, actor: int, target: int) -> str:
        await self._require(actor, "owner")
        if await self.role(target) == "owner":
            return "That is the owner."
        await self.people.set_role(target, "admin", by=actor)
        log.info("user %s made %s an admin", actor, target)
        return f"`{target}` is an admin now: they see everyone's runs and can add people."

    async def demote(self, actor: int, target: int) -> str:
        await self._require(actor, "owner")
        if await self.role(target) != "admin":
            raise AccessRefused(f"`{target}` is not an admin.")
        await self.people.set_role(target, "user", by=actor)
        log.info("user %s made %s a user", actor, target)
        return f"`{target}` is a user again."

    async def _require(self, actor: int, need: Role) -> Role:
        role = await self.role(actor)
        if role is None or not at_least(role, need):
            raise AccessRefused(f"Only {who_may(need)} can do that.")
        return role


def gated(command: Command) -> Handler:
    """The command behind the gate: strangers are treated as for any message, people below the
    command's role get one line, everyone else the command."""

    async def handler(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        keel: KeelBot | None = context.bot_data.get("keel")
        message, user = update.effective_message, update.effective_user
        if keel is None or message is None or user is None:
            return
        thread = message.message_thread_id if message.is_topic_message else None
        role = await keel.access.role(user.id)
        if role is None:
            await keel.tell_unknown_user(message.chat_id, user.id, thread,
                                         private=message.chat.type == "private")
            return
        if not at_least(role, command.role):
            await keel.notifier.send(message.chat_id, f"Only {who_may(command.role)} can use "
                                     f"/{command.name}.", thread_id=thread)
            return
        await command.handler(update, context)

    handler.__doc__ = command.handler.__doc__
    return handler


def startup_hint(settings: Settings) -> str | None:
    """What to do when keel would serve nobody but its owner (or nobody at all)."""
    if settings.owner_id is None:
        return ("keel answers nobody: no owner is set. Message the bot once to learn your "
                "Telegram user id, set KEEL_OWNER_ID to it and restart; then add people from "
                "Telegram with /allow ID.")
    if not settings.allowed_user_ids:
        return (f"keel serves only its owner ({settings.owner_id}) and people added from "
                "Telegram: the owner adds someone with /allow ID (or lists ids in "
                "KEEL_ALLOWED_USER_IDS).")
    return None


def parse_user_id(args: list[str] | None) -> int | None:
    """The one Telegram user id in a command's arguments, or None."""
    if not args or len(args) != 1 or not args[0].strip().isdigit():
        return None
    return int(args[0].strip())
