"""/model: which model answers in this chat, and (owner and admins) choosing another.

The choice is stored per conversation (a chat, or a forum topic in it) and applies to the chat
runs there only (``Runtime._model_for``); the price table decides what may be chosen, so a model
without a price is refused, whether typed or sent as forged button data. Buttons carry the
model's name (``mdl:NAME``, under Telegram's 64 bytes) and act only for the owner and admins,
in the chat they were pressed in.
"""

from __future__ import annotations

from telegram import Update
from telegram.ext import ContextTypes

from agents.notify import Button
from bot.access import at_least
from bot.service import KeelBot
from storage.conversation_model import ConversationModels

CALLBACK_PREFIX = "mdl"
DEFAULT_KEY = f"{CALLBACK_PREFIX}:-"
MODEL_BUTTONS = f"^{CALLBACK_PREFIX}:"
"""The callback data pattern of /model's buttons (bot/app.py routes them here)."""
MAX_CALLBACK_BYTES = 64


def _keel(context: ContextTypes.DEFAULT_TYPE) -> KeelBot:
    keel: KeelBot = context.bot_data["keel"]
    return keel


def _where(update: Update) -> tuple[int, int | None]:
    message = update.effective_message
    assert message is not None
    return message.chat_id, message.message_thread_id if message.is_topic_message else None


async def _agent_model(keel: KeelBot, chat_id: int, thread_id: int | None) -> tuple[str, str]:
    """The agent that answers here now and its own model."""
    conversation = await keel.runtime.conversations.get_or_create(chat_id, thread_id)
    name = conversation.pinned_agent or conversation.current_agent or keel.runtime.default_agent
    spec = keel.runtime.agents.get(name) or keel.runtime.agents[keel.runtime.default_agent]
    return spec.name, spec.model or keel.settings.executor_model


def _buttons(models: list[str], chosen: str | None) -> list[list[Button]]:
    rows = [[Button(label=("✓ " if m == chosen else "") + m, key=f"{CALLBACK_PREFIX}:{m}")]
            for m in models if len(f"{CALLBACK_PREFIX}:{m}".encode()) <= MAX_CALLBACK_BYTES]
    rows.append([Button(label=("✓ " if chosen is None else "") + "the agent's own",
                        key=DEFAULT_KEY)])
    return rows


async def model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show this chat's model; the owner and admins choose another (buttons, or /model NAME)."""
    keel = _keel(context)
    user = update.effective_user
    assert user is not None
    chat_id, thread_id = _where(update)
    models = ConversationModels(keel.runtime.db)
    chosen = await models.get(chat_id, thread_id)
    agent, own = await _agent_model(keel, chat_id, thread_id)
    may_choose = at_least(await keel.access.role(user.id), "admin")
    if context.args:
        if not may_choose:
            await _say(keel, chat_id, thread_id, "Only the owner or an admin can choose the "
                       "model for this chat.")
            return
        await _say(keel, chat_id, thread_id, await choose(keel, chat_id, thread_id,
                                                          context.args[0].strip()))
        return
    now = f"`{chosen}` (chosen for this chat)" if chosen else f"`{own}` (`{agent}`'s own)"
    text = f"**Model here:** {now}."
    if not may_choose:
        await _say(keel, chat_id, thread_id, text + "\nThe owner or an admin can choose another.")
        return
    priced = keel.runtime.prices.models
    await keel.notifier.send(chat_id, text + "\nPick one for this chat only (each has a price, "
                             "so every run stays bounded):", thread_id=thread_id,
                             buttons=_buttons(priced, chosen))


async def choose(keel: KeelBot, chat_id: int, thread_id: int | None, name: str) -> str:
    """Store ``name`` for the conversation ("-" or "default": the agent's own); what to say."""
    models = ConversationModels(keel.runtime.db)
    if name in ("-", "default"):
        await models.set(chat_id, thread_id, None)
        return "This chat uses each agent's own model again."
    if keel.runtime.prices.get(name) is None:
        return (f"`{name}` has no price, so keel cannot bound what a run with it spends; not "
                f"changed. Priced models: {', '.join(f'`{m}`' for m in keel.runtime.prices.models)}"
                ". (Add a price under [prices] in keel.toml to allow another.)")
    await models.set(chat_id, thread_id, name)
    return f"This chat now uses `{name}` (here only; `/model default` goes back)."


async def on_model_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A press on /model's buttons: only the owner and admins change anything."""
    query = update.callback_query
    assert query is not None
    keel: KeelBot | None = context.bot_data.get("keel")
    message = query.message
    if keel is None or message is None:
        await query.answer("This button is no longer active.")
        return
    if not at_least(await keel.access.role(query.from_user.id), "admin"):
        await query.answer("Only the owner or an admin can choose the model.")
        return
    name = (query.data or "").removeprefix(f"{CALLBACK_PREFIX}:")
    thread_id = getattr(message, "message_thread_id", None) \
        if getattr(message, "is_topic_message", False) else None
    said = await choose(keel, message.chat.id, thread_id, name)
    await query.answer(said.split(";")[0].replace("`", "")[:190])
    await keel.notifier.edit(message.chat.id, message.message_id, said)


async def _say(keel: KeelBot, chat_id: int, thread_id: int | None, text: str) -> None:
    await keel.notifier.send(chat_id, text, thread_id=thread_id)
