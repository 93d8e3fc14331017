"""A reply that may have been lost in a crash: the person is told, and gets it again on request.

keel never resends a chunk that was on its way to Telegram when the process died: it may have
arrived, and an answer shown twice cannot be taken back (README, "Delivery guarantees"). Almost
always it did arrive; in the rare case it did not, a silent gap would be a lost answer. So after
delivering what is left of such a reply, keel posts one notice in that chat with a "Send it again"
button (bot/delivery.py). The person decides: a press sends the whole reply again, once.

The button's data names the reply's outbox row and the notice's own row; a press counts only on
the notice's message in that chat, from someone keel serves.
"""

from __future__ import annotations

import logging
import re

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.delivery import DeliveryError
from bot.service import KeelBot

log = logging.getLogger(__name__)

NOTICE = ("⚠️ I was restarted while sending you my last message, so I cannot tell whether it "
          "reached you in full. If part of it is missing, tap below and I will send it again.")
PREFIX = "rs:"
_DATA = re.compile(r"rs:(\d{1,18})")


def button_key(item_id: int) -> str:
    return f"{PREFIX}{item_id}"


async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """A "Send it again" press; False when the data is not one (the caller answers it)."""
    query = update.callback_query
    assert query is not None
    match = _DATA.fullmatch(query.data or "")
    if match is None:
        return False
    keel: KeelBot = context.bot_data["keel"]
    item = await keel.outbox.repo.get(int(match.group(1)))
    pressed_on = query.message
    notice = await _notice_of(keel, int(match.group(1)), pressed_on.message_id
                              if pressed_on is not None else None)
    if item is None or pressed_on is None or notice is None \
            or pressed_on.chat.id != item.chat_id:
        await query.answer("This button is no longer active.")
        return True
    if not await keel.allowed(query.from_user.id, "user"):
        await query.answer()
        return True
    try:
        async with keel.runtime.db.write() as conn:
            again = await keel.outbox.put(conn, chat_id=item.chat_id, thread_id=item.thread_id,
                                          reply_to=item.reply_to, markdown=item.markdown)
            if not await keel.outbox.repo.resend(conn, item.id, again):
                raise _AlreadySent  # undoes the row just added
    except _AlreadySent:
        await query.answer("Already sent again.")
        return True
    try:
        await keel.outbox.deliver(again)
    except DeliveryError as exc:
        log.warning("resending outbox %s failed: %s", item.id, exc)
    await query.answer("Sent again.")
    try:
        await query.edit_message_reply_markup(reply_markup=None)
    except TelegramError as exc:
        log.info("could not remove the resend button: %s", exc)
    return True


class _AlreadySent(Exception):
    pass


async def _notice_of(keel: KeelBot, item_id: int, message_id: int | None) -> int | None:
    """The notice row whose delivered message is ``message_id`` and carries this item's button."""
    if message_id is None:
        return None
    for row in await keel.outbox.repo.notices_for(button_key(item_id)):
        if row.message_ids and row.message_ids[-1] == message_id:
            return row.id
    return None
