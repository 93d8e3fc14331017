"""/memory: a person's remembered facts, each with a button that deletes it.

The list is private to its person: /memory shows only the asker's own facts (in a group, only
those limited to that group are listed by name, and a note points to the private chat for the
rest). A delete button's callback data is ``m:<key>``; the key's row names the fact, its person,
the chat and the message the button went out on, so a press counts only from that person, on
that message — a key copied elsewhere deletes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from telegram import Update
from telegram.ext import ContextTypes

from agents.notify import Button
from bot.service import KeelBot
from storage.memory import Fact, MemoryRepository

log = logging.getLogger(__name__)

CALLBACK_PREFIX = "m"
SHOWN_CHARS = 200
MAX_LISTED = 30


def callback_data(key: str) -> str:
    return f"{CALLBACK_PREFIX}:{key}"


def parse_callback(data: str) -> str | None:
    prefix, sep, key = data.partition(":")
    return key if prefix == CALLBACK_PREFIX and sep and key and ":" not in key else None


def _repo(keel: KeelBot) -> MemoryRepository:
    return keel.runtime.patterns.memory


def render(facts: list[Fact], *, hidden: int = 0) -> str:
    if not facts:
        return ("I remember nothing about you yet." if not hidden else
                f"Nothing limited to this chat. {hidden} fact(s) about you are listed in our "
                "private chat.")
    lines = ["**What I remember about you**"]
    for i, fact in enumerate(facts[:MAX_LISTED], start=1):
        text = fact.fact if len(fact.fact) <= SHOWN_CHARS else fact.fact[:SHOWN_CHARS] + "…"
        where = " _(this chat only)_" if fact.chat_id is not None else ""
        lines.append(f"{i}. {text}{where}")
    if len(facts) > MAX_LISTED:
        lines.append(f"…and {len(facts) - MAX_LISTED} more (delete some to see them).")
    if hidden:
        lines.append(f"\n{hidden} more are listed only in our private chat.")
    lines.append("\nPress a button to delete that fact.")
    return "\n".join(lines)


async def memory(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Your remembered facts, with buttons to delete them."""
    keel: KeelBot = context.bot_data["keel"]
    user, message = update.effective_user, update.effective_message
    assert user is not None and message is not None
    thread = message.message_thread_id if message.is_topic_message else None
    repo = _repo(keel)
    facts = await repo.of_person(user.id)
    hidden = 0
    if message.chat.type != "private":  # nothing private is posted into a group
        shown = [f for f in facts if f.chat_id == message.chat_id]
        hidden = len(facts) - len(shown)
        facts = shown
    facts = facts[:MAX_LISTED]
    keys = await repo.add_buttons(facts, user_id=user.id, chat_id=message.chat_id)
    buttons = [[Button(label=f"🗑 {i}", key=callback_data(k))
                for i, k in enumerate(keys[row:row + 5], start=row + 1)]
               for row in range(0, len(keys), 5)]
    delivered = await keel.notifier.send(message.chat_id, render(facts, hidden=hidden),
                                         thread_id=thread, buttons=buttons or None)
    if delivered.message_ids:  # the buttons ride on the last chunk
        await repo.bind_buttons(keys, delivered.message_ids[-1])


async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """A /memory delete button; False when the data is not one (the caller answers it)."""
    query = update.callback_query
    assert query is not None
    key = parse_callback(query.data or "")
    if key is None:
        return False
    keel: KeelBot = context.bot_data["keel"]
    repo = _repo(keel)
    button = await repo.button(key)
    pressed_on = query.message
    if button is None or pressed_on is None or pressed_on.chat.id != button.chat_id or (
            button.message_id is not None and pressed_on.message_id != button.message_id):
        await query.answer("This button is no longer active.")
        return True
    if query.from_user.id != button.user_id:
        log.info("user %s pressed a /memory button of user %s; ignored", query.from_user.id,
                 button.user_id)
        await query.answer("Only the person these facts are about can delete them.")
        return True
    fact = await repo.get(button.fact_id)
    if fact is None or not await repo.forget(button.fact_id, user_id=button.user_id):
        await query.answer("Already deleted.")
        return True
    await query.answer("Deleted.")
    log.info("user %s deleted remembered fact %s", button.user_id, button.fact_id)
    remaining = [f for f in await repo.of_person(button.user_id)
                 if pressed_on.chat.type == "private" or f.chat_id == button.chat_id]
    try:
        await keel.notifier.edit(button.chat_id, pressed_on.message_id,
                                 f"Deleted: {fact.fact[:SHOWN_CHARS]}\n\n"
                                 f"{len(remaining)} fact(s) left; /memory lists them.")
    except Exception as exc:  # cosmetic: the fact is gone either way
        log.warning("could not edit the /memory message: %s", exc)
    return True


ButtonHandler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[bool]]


def chain(*handlers: ButtonHandler) -> ButtonHandler:
    """One button handler from several: the first that recognises the data answers it."""

    async def handler(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
        for each in handlers:
            if await each(update, context):
                return True
        return False

    return handler
