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
                     ttl: timedelta) -> Escalation:
        key = new_key()
        now = datetime.now(UTC)
        await self.db.execute_write(
            "INSERT INTO escalations (id, run_id, tool_use_id, chat_id, thread_id, reason, context,"
            " options, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, run_id, tool_use_id, chat_id, thread_id, reason, context, json.dumps(options),
             iso(now), iso(now + ttl)),
        )
        found = await self.get(key)
        assert found is not None
        return found

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
