"""Escalations: questions a run asked a human, answered once (first answer wins), or expired."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from storage.db import Database, iso, now_iso

EscalationStatus = Literal["pending", "answered", "expired", "cancelled"]


@dataclass(frozen=True, kw_only=True)
class Escalation:
    id: str
    run_id: str
    tool_use_id: str
    chat_id: int | None
    thread_id: int | None
    message_id: int | None
    reason: str
    context: str
    options: list[str]
    status: EscalationStatus
    answer: str | None
    answered_by: int | None
    answered_by_name: str | None
    created_at: str
    expires_at: str


def new_key() -> str:
    """Short, unguessable, and small enough for callback_data (64 bytes) with room to spare."""
    return secrets.token_urlsafe(9)  # 12 characters


class EscalationRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, *, run_id: str, tool_use_id: str, chat_id: int | None,
                     thread_id: int | None, reason: str, context: str, options: list[str],
                     ttl: timedelta, conn: Any = None) -> Escalation:
        """Store a pending question (inside ``conn``'s transaction when given: a run's outcome,
        its question and the question's outbox row commit together)."""
        key = new_key()
        now = datetime.now(UTC)
        sql = ("INSERT INTO escalations (id, run_id, tool_use_id, chat_id, thread_id, reason,"
               " context, options, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        params = (key, run_id, tool_use_id, chat_id, thread_id, reason, context,
                  json.dumps(options), iso(now), iso(now + ttl))
        if conn is not None:
            await conn.execute(sql, params)
        else:
            await self.db.execute_write(sql, params)
        return Escalation(id=key, run_id=run_id, tool_use_id=tool_use_id, chat_id=chat_id,
                          thread_id=thread_id, message_id=None, reason=reason, context=context,
                          options=list(options), status="pending", answer=None, answered_by=None,
                          answered_by_name=None, created_at=iso(now), expires_at=iso(now + ttl))

    async def set_message(self, key: str, message_id: int) -> None:
        await self.db.execute_write("UPDATE escalations SET message_id = ? WHERE id = ?",
                                    (message_id, key))

    async def get(self, key: str) -> Escalation | None:
        row = await self.db.fetchone("SELECT * FROM escalations WHERE id = ?", (key,))
        return _escalation(row) if row else None

    async def by_message(self, chat_id: int, message_id: int) -> Escalation | None:
        row = await self.db.fetchone(
            "SELECT * FROM escalations WHERE chat_id = ? AND message_id = ?", (chat_id, message_id))
        return _escalation(row) if row else None

    async def answer(self, key: str, *, answer: str, user_id: int, user_name: str) -> bool:
        """Record the answer if the escalation is still pending. True for the one that won."""
        changed = await self.db.execute_write(
            "UPDATE escalations SET status = 'answered', answer = ?, answered_by = ?,"
            " answered_by_name = ?, answered_at = ? WHERE id = ? AND status = 'pending'"
            " AND expires_at > ?",
            (answer, user_id, user_name, now_iso(), key, now_iso()),
        )
        return changed == 1

    async def due(self) -> list[Escalation]:
        """Pending escalations past their expiry (each is expired by ``expire_in``)."""
        rows = await self.db.fetchall(
            "SELECT * FROM escalations WHERE status = 'pending' AND expires_at <= ?"
            " ORDER BY expires_at", (now_iso(),))
        return [_escalation(r) for r in rows]

    @staticmethod
    async def expire_in(conn: Any, key: str) -> bool:
        """pending → expired inside the caller's transaction; False if no longer pending."""
        cursor = await conn.execute(
            "UPDATE escalations SET status = 'expired' WHERE id = ? AND status = 'pending'",
            (key,))
        return bool(cursor.rowcount == 1)

    async def answered_unresumed(self) -> list[Escalation]:
        """The latest question of each run that was answered while its run did not go on: the
        run is still parked, or it was interrupted while it went on (it kept its state)."""
        rows = await self.db.fetchall(
            "SELECT e.* FROM escalations e JOIN runs r ON r.id = e.run_id"
            " WHERE e.status = 'answered' AND r.state IS NOT NULL"
            " AND e.created_at = (SELECT MAX(x.created_at) FROM escalations x"
            "                     WHERE x.run_id = e.run_id)"
            " AND (r.status IN ('waiting_human', 'budget_exceeded')"
            "      OR (r.status = 'failed' AND r.status_detail LIKE 'interrupted%'))"
            " ORDER BY e.answered_at")
        return [_escalation(r) for r in rows]

    async def expire_due(self) -> list[Escalation]:
        """Mark pending escalations past their expiry as expired; returns them."""
        now = now_iso()
        rows = await self.db.fetchall(
            "SELECT * FROM escalations WHERE status = 'pending' AND expires_at <= ?", (now,))
        expired = []
        for row in rows:
            changed = await self.db.execute_write(
                "UPDATE escalations SET status = 'expired' WHERE id = ? AND status = 'pending'",
                (row["id"],))
            if changed:
                expired.append(_escalation(row))
        return expired

    async def pending(self) -> list[Escalation]:
        rows = await self.db.fetchall(
            "SELECT * FROM escalations WHERE status = 'pending' ORDER BY created_at")
        return [_escalation(r) for r in rows]


def _escalation(row: Any) -> Escalation:
    data = dict(row)
    data["options"] = json.loads(data["options"] or "[]")
    data.pop("answered_at", None)
    return Escalation(**data)
