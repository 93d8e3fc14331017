"""Exact input sizes kept per session across turns, and when a session last had a turn.

After each turn the session keeps the exact input size the API reported for the turn's last
model call (``anchor_tokens``), how many history messages that call covered (``anchor_messages``)
and a digest of the prefix and those messages (``anchor_digest``). The next turn's first call is
then bounded by that exact figure plus an upper bound of only what was added since — valid only
while the digest matches, so a compaction, an edited prompt or a different tool set falls back to
the local bound on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage.db import Database


@dataclass(frozen=True, kw_only=True)
class SessionAnchor:
    """The exact input size of a session's last call, and what it covered."""

    tokens: int
    messages: int
    digest: str


class SessionCounts:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def live_session(self, conversation_id: int, agent: str) -> int | None:
        """The live session of (conversation, agent), or None (nothing is created)."""
        value = await self.db.fetchval(
            "SELECT id FROM sessions WHERE conversation_id = ? AND agent = ? AND archived_at IS NULL",
            (conversation_id, agent), quick=True)
        return int(value) if value is not None else None

    async def anchor(self, session_id: int) -> SessionAnchor | None:
        row = await self.db.fetchone(
            "SELECT anchor_tokens, anchor_messages, anchor_digest FROM sessions WHERE id = ?",
            (session_id,), quick=True)
        if row is None or row["anchor_tokens"] is None or row["anchor_digest"] is None:
            return None
        return SessionAnchor(tokens=int(row["anchor_tokens"]),
                             messages=int(row["anchor_messages"] or 0),
                             digest=str(row["anchor_digest"]))

    @staticmethod
    async def save_anchor_in(conn: Any, session_id: int, anchor: SessionAnchor | None) -> None:
        """Keep (or, with None, forget) a session's anchor inside the caller's transaction."""
        await conn.later(
            "UPDATE sessions SET anchor_tokens = ?, anchor_messages = ?, anchor_digest = ?"
            " WHERE id = ?",
            (anchor.tokens if anchor else None, anchor.messages if anchor else None,
             anchor.digest if anchor else None, session_id))

    async def last_turn_age_s(self, session_id: int, *, now: datetime | None = None) -> float | None:
        """Seconds since the session's last stored message (None: it has none)."""
        value = await self.db.fetchval(
            "SELECT MAX(created_at) FROM messages WHERE session_id = ? AND archived_at IS NULL",
            (session_id,), quick=True)
        if value is None:
            return None
        last = datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return ((now or datetime.now(UTC)) - last).total_seconds()
