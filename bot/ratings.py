"""👍 / 👎 under an agent's answer: a production sample for golden tasks (issue 17).

Off by default; ``ratings = true`` in keel.toml (globally, or under ``[agents.<name>]``, which
wins) or ``KEEL_RATINGS=true`` turns it on. A completed run's answer then carries two buttons on
its last chunk. Their callback data is ``r:<u|d>:<key>``; the key's row (storage/ratings.py) was
committed with the answer and names the run, its trace, the chat and the outbox row the buttons
went out on, so a press counts only in that chat, on that row's last message — a key copied
elsewhere rates nothing. Only the person who asked, the owner and admins may rate. A press
stores the rating (a second press changes it), says thanks and takes the buttons away.
`keel eval --from-ratings` turns rated runs into golden-task candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from agents.notify import Button
from agents.run import RunResult
from storage.db import WriteConnection
from storage.ratings import Rating, RatingRepository, new_key

if TYPE_CHECKING:
    from bot.service import KeelBot

log = logging.getLogger(__name__)

CALLBACK_PREFIX = "r"
_CODES: dict[str, Rating] = {"u": "up", "d": "down"}
LABELS: dict[Rating, str] = {"up": "👍", "down": "👎"}


def callback_data(rating: Rating, key: str) -> str:
    return f"{CALLBACK_PREFIX}:{rating[0]}:{key}"


def parse_callback(data: str) -> tuple[Rating, str] | None:
    parts = data.split(":")
    if len(parts) != 3 or parts[0] != CALLBACK_PREFIX or parts[1] not in _CODES or not parts[2]:
        return None
    return _CODES[parts[1]], parts[2]


def enabled(runtime: Any, agent: str) -> bool:
    """The agent's ``ratings``, else keel.toml's, else KEEL_RATINGS (off)."""
    keel_file = runtime.keel_file
    own = keel_file.agents.get(agent)
    if own is not None and own.ratings is not None:
        return bool(own.ratings)
    if keel_file.ratings is not None:
        return bool(keel_file.ratings)
    return bool(runtime.settings.ratings)


@dataclass(frozen=True)
class Offer:
    """Rating buttons for one answer, to be stored with the outbox row that carries them."""

    result: RunResult
    user_id: int | None
    key: str

    @property
    def buttons(self) -> list[list[Button]]:
        return [[Button(label=LABELS[r], key=callback_data(r, self.key)) for r in LABELS]]

    async def store(self, conn: WriteConnection, *, outbox_id: int, chat_id: int) -> None:
        """In the transaction that commits the answer's outbox row ``outbox_id``."""
        await RatingRepository.offer(conn, key=self.key, run_id=self.result.run_id,
                                     trace_id=self.result.trace_id, agent=self.result.agent,
                                     chat_id=chat_id, outbox_id=outbox_id, user_id=self.user_id)


def offer(runtime: Any, result: RunResult, asker: tuple[int, str] | None) -> Offer | None:
    """Rating buttons for a run's final answer, when ratings are on for its agent; a run that
    did not complete with an answer is not offered."""
    if result.status != "completed" or not result.output or not enabled(runtime, result.agent):
        return None
    return Offer(result, asker[0] if asker else None, new_key())


async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """A 👍 / 👎 press; False when the data is not a rating's (the caller answers it)."""
    query = update.callback_query
    assert query is not None
    parsed = parse_callback(query.data or "")
    if parsed is None:
        return False
    rating, key = parsed
    keel: KeelBot = context.bot_data["keel"]
    repo = RatingRepository(keel.runtime.db)
    found = await repo.get_offer(key)
    pressed_on = query.message
    item = await keel.outbox.repo.get(found.outbox_id) if found is not None else None
    if found is None or item is None or pressed_on is None or \
            pressed_on.chat.id != found.chat_id or item.chat_id != found.chat_id:
        await query.answer("This button is no longer active.")
        return True
    if not item.message_ids or item.message_ids[-1] != pressed_on.message_id:
        # the answer's last message carries the buttons; until its id is stored, wait
        await query.answer("This button is no longer active." if item.status != "pending"
                           else "One moment, then press again.")
        return True
    user = query.from_user.id
    if user != found.user_id and not await keel.allowed(user, "admin"):
        log.info("user %s pressed the rating of run %s asked by %s; ignored", user,
                 found.run_id, found.user_id)
        await query.answer("Only the person who asked can rate this answer.")
        return True
    again = await repo.rate(found, user_id=user, rating=rating)
    log.info("run %s (agent %s) rated %s by user %s%s", found.run_id, found.agent, rating, user,
             " (changed)" if again else "")
    await query.answer(f"Thanks! Rated {LABELS[rating]}.")
    try:
        await query.edit_message_reply_markup(reply_markup=None)
    except TelegramError as exc:  # cosmetic: the rating is stored either way
        log.warning("could not take the rating buttons off message %s: %s",
                    pressed_on.message_id, exc)
    return True
