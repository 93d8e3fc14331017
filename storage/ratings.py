"""Ratings of answers: a person's 👍 / 👎 under an agent's final answer (bot/ratings.py), kept
per run so rated runs can become golden-task candidates (`keel eval --from-ratings`).

``rating_offers`` holds the key of each answer's rating buttons with what it is bound to: the
run and its trace, the chat, the outbox row the buttons went out on (whose last Telegram message
carries them) and the person who asked. ``ratings`` holds one row per rated run; a later press
replaces the rating of that run, it never adds a row.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from storage.db import Database, WriteConnection, now_iso

Rating = Literal["up", "down"]
RATINGS: tuple[Rating, ...] = ("up", "down")


@dataclass(frozen=True, kw_only=True)
class RatingOffer:
    key: str
    run_id: str
    trace_id: str
    agent: str
    chat_id: int
    outbox_id: int
    user_id: int | None
    """The person who asked (None: unknown, then only the owner and admins may rate)."""


@dataclass(frozen=True, kw_only=True)
class RatedRun:
    run_id: str
    trace_id: str
    agent: str
    user_id: int
    rating: Rating
    note: str | None
    rated_at: str


def new_key() -> str:
    """An unguessable key for callback data (12 characters; Telegram allows 64 bytes)."""
    return secrets.token_urlsafe(9)


class RatingRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    async def offer(conn: WriteConnection, *, key: str, run_id: str, trace_id: str, agent: str,
                    chat_id: int, outbox_id: int, user_id: int | None) -> None:
        """Record an answer's rating buttons inside the transaction that commits the answer.
        Without ``user_id`` the run's own person is taken, if the run row names one."""
        await conn.execute(
            "INSERT INTO rating_offers (key, run_id, trace_id, agent, chat_id, outbox_id,"
            " user_id, created_at) VALUES (?, ?, ?, ?, ?, ?,"
            " COALESCE(?, (SELECT r.user_id FROM runs r WHERE r.id = ?)), ?)",
            (key, run_id, trace_id, agent, chat_id, outbox_id, user_id, run_id, now_iso()))

    async def get_offer(self, key: str) -> RatingOffer | None:
        row = await self.db.fetchone(
            "SELECT key, run_id, trace_id, agent, chat_id, outbox_id, user_id"
            " FROM rating_offers WHERE key = ?", (key,))
        if row is None:
            return None
        return RatingOffer(key=str(row["key"]), run_id=str(row["run_id"]),
                           trace_id=str(row["trace_id"]), agent=str(row["agent"]),
                           chat_id=int(row["chat_id"]), outbox_id=int(row["outbox_id"]),
                           user_id=None if row["user_id"] is None else int(row["user_id"]))

    async def rate(self, offer: RatingOffer, *, user_id: int, rating: Rating) -> bool:
        """Store ``rating`` of the offer's run by ``user_id``; a run rated before keeps its one
        row and takes the new rating (its note stays). True when the run was rated before."""
        if rating not in RATINGS:
            raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
        async with self.db.write() as conn:
            async with conn.execute("SELECT 1 FROM ratings WHERE run_id = ?",
                                    (offer.run_id,)) as cursor:
                before = await cursor.fetchone() is not None
            await conn.execute(
                "INSERT INTO ratings (run_id, trace_id, agent, user_id, rating, rated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
                " user_id = excluded.user_id, rating = excluded.rating,"
                " rated_at = excluded.rated_at",
                (offer.run_id, offer.trace_id, offer.agent, user_id, rating, now_iso()))
        return before

    async def set_note(self, run_id: str, note: str | None) -> bool:
        """A person's words on a rated run (shown in its golden-task candidate)."""
        return await self.db.execute_write("UPDATE ratings SET note = ? WHERE run_id = ?",
                                           (note, run_id)) == 1

    async def get(self, run_id: str) -> RatedRun | None:
        row = await self.db.fetchone(f"{_SELECT} WHERE run_id = ?", (run_id,))
        return _rated(row) if row is not None else None

    async def rated(self, *, rating: Rating | None = None, since: str | None = None,
                    agent: str | None = None) -> list[RatedRun]:
        """Rated runs, oldest rating first: of one rating (None: both), rated at or after
        ``since`` (an ISO date or time, UTC), of one agent."""
        where: list[str] = ["1 = 1"]
        params: list[str] = []
        if rating is not None:
            where.append("rating = ?")
            params.append(rating)
        if since is not None:
            where.append("rated_at >= ?")
            params.append(since)
        if agent is not None:
            where.append("agent = ?")
            params.append(agent)
        rows = await self.db.fetchall(
            f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY rated_at, run_id",
            tuple(params))
        return [_rated(r) for r in rows]


_SELECT = "SELECT run_id, trace_id, agent, user_id, rating, note, rated_at FROM ratings"


def _rated(row: Any) -> RatedRun:
    rating = str(row["rating"])
    assert rating in RATINGS, rating
    return RatedRun(run_id=str(row["run_id"]), trace_id=str(row["trace_id"]),
                    agent=str(row["agent"]), user_id=int(row["user_id"]),
                    rating="up" if rating == "up" else "down",
                    note=row["note"], rated_at=str(row["rated_at"]))
