"""Escalations: questions a run asked a human, kept as one row that moves through its stages.

    pending ──answer──▶ answered ──claim──▶ resumed ──finish──▶ done
       │                    └────────── close (nothing to resume) ──▶ done
       └──expire──▶ expired

Every transition is one guarded ``UPDATE … WHERE stage = ?``: it changes the row only from the
stage it leaves, and says whether it did. So the first answer wins, an answer after expiry (or an
expiry after an answer) changes nothing, and of all processes that could resume a run — the bot's
button handler, its start-up recovery, ``keel escalation answer`` — exactly one claims it.
The legacy ``status`` column (pending / answered / expired) is kept in step for older readers.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from storage.db import Database, iso, now_iso

EscalationStatus = Literal["pending", "answered", "expired", "cancelled"]
Stage = Literal["pending", "answered", "resumed", "done", "expired"]
Kind = Literal["question", "budget", "approval"]

OPEN_STAGES: tuple[Stage, ...] = ("pending", "answered", "resumed")


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
    stage: Stage = "pending"
    kind: Kind = "question"
    approvers: list[int] | None = None
    """Who may answer an approval; None: the owner and admins."""
    answered_at: str | None = None

    @property
    def due(self) -> bool:
        """Pending past its expiry (expired for every purpose, even before the pass runs)."""
        return self.stage == "pending" and self.expires_at <= now_iso()


def new_key() -> str:
    """Short, unguessable, and small enough for callback_data (64 bytes) with room to spare.
    Never starting with "-": the command line takes it as an argument (`keel escalation answer
    ID CHOICE`), and one id in 64 was read as an option there."""
    while True:
        key = secrets.token_urlsafe(9)  # 12 characters
        if not key.startswith("-"):
            return key


class EscalationRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, *, run_id: str, tool_use_id: str, chat_id: int | None,
                     thread_id: int | None, reason: str, context: str, options: list[str],
                     ttl: timedelta, conn: Any = None, kind: Kind = "question",
                     approvers: list[int] | None = None) -> Escalation:
        """Store a pending question (inside ``conn``'s transaction when given: a run's outcome,
        its question and the question's outbox row commit together)."""
        key = new_key()
        now = datetime.now(UTC)
        sql = ("INSERT INTO escalations (id, run_id, tool_use_id, chat_id, thread_id, reason,"
               " context, options, created_at, expires_at, stage, kind, approvers)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)")
        params = (key, run_id, tool_use_id, chat_id, thread_id, reason, context,
                  json.dumps(options), iso(now), iso(now + ttl), kind,
                  json.dumps(approvers) if approvers is not None else None)
        if conn is not None:
            await conn.execute(sql, params)
        else:
            await self.db.execute_write(sql, params)
        return Escalation(id=key, run_id=run_id, tool_use_id=tool_use_id, chat_id=chat_id,
                          thread_id=thread_id, message_id=None, reason=reason, context=context,
                          options=list(options), status="pending", answer=None, answered_by=None,
                          answered_by_name=None, created_at=iso(now), expires_at=iso(now + ttl),
                          kind=kind, approvers=approvers)

    async def set_message(self, key: str, message_id: int) -> None:
        await self.db.execute_write("UPDATE escalations SET message_id = ? WHERE id = ?",
                                    (message_id, key))

    async def get(self, key: str) -> Escalation | None:
        row = await self.db.fetchone("SELECT * FROM escalations WHERE id = ?", (key,))
        return _escalation(row) if row else None

    async def find(self, prefix: str, *, limit: int = 2) -> list[Escalation]:
        """Escalations whose id starts with ``prefix`` (compared as text, never as a pattern)."""
        rows = await self.db.fetchall(
            "SELECT * FROM escalations WHERE substr(id, 1, ?) = ? ORDER BY created_at LIMIT ?",
            (len(prefix), prefix, limit))
        return [_escalation(r) for r in rows]

    async def by_message(self, chat_id: int, message_id: int) -> Escalation | None:
        row = await self.db.fetchone(
            "SELECT * FROM escalations WHERE chat_id = ? AND message_id = ?", (chat_id, message_id))
        return _escalation(row) if row else None

    async def latest_of_run(self, run_id: str) -> Escalation | None:
        row = await self.db.fetchone(
            "SELECT * FROM escalations WHERE run_id = ? ORDER BY created_at DESC LIMIT 1",
            (run_id,))
        return _escalation(row) if row else None

    # ------------------------------------------------------------------ transitions

    async def answer(self, key: str, *, answer: str, user_id: int, user_name: str) -> bool:
        """pending → answered, while not past its expiry. True for the one answer that won."""
        now = now_iso()
        changed = await self.db.execute_write(
            "UPDATE escalations SET stage = 'answered', status = 'answered', answer = ?,"
            " answered_by = ?, answered_by_name = ?, answered_at = ?"
            " WHERE id = ? AND stage = 'pending' AND expires_at > ?",
            (answer, user_id, user_name, now, key, now),
        )
        return changed == 1

    async def claim(self, key: str) -> bool:
        """answered → resumed: True for the one process that resumes the run."""
        return await self.db.execute_write(
            "UPDATE escalations SET stage = 'resumed', resumed_at = ?"
            " WHERE id = ? AND stage = 'answered'", (now_iso(), key)) == 1

    async def unclaim(self, key: str) -> bool:
        """resumed → answered: the resume was refused before the run went on (or the process
        that claimed it died), so it may be claimed again."""
        return await self.db.execute_write(
            "UPDATE escalations SET stage = 'answered', resumed_at = NULL"
            " WHERE id = ? AND stage = 'resumed'", (key,)) == 1

    @staticmethod
    async def finish_in(conn: Any, key: str) -> bool:
        """resumed → done inside the transaction that records the resumed run's outcome."""
        cursor = await conn.execute(
            "UPDATE escalations SET stage = 'done', done_at = ? WHERE id = ? AND stage = 'resumed'",
            (now_iso(), key))
        return bool(cursor.rowcount == 1)

    async def close(self, key: str) -> bool:
        """answered → done for an answer that resumes nothing ("Stop here")."""
        return await self.db.execute_write(
            "UPDATE escalations SET stage = 'done', done_at = ? WHERE id = ? AND stage = 'answered'",
            (now_iso(), key)) == 1

    @staticmethod
    async def expire_in(conn: Any, key: str) -> bool:
        """pending → expired inside the caller's transaction; False if no longer pending."""
        cursor = await conn.execute(
            "UPDATE escalations SET stage = 'expired', status = 'expired', done_at = ?"
            " WHERE id = ? AND stage = 'pending'", (now_iso(), key))
        return bool(cursor.rowcount == 1)

    # ------------------------------------------------------------------ queries

    async def due(self) -> list[Escalation]:
        """Pending escalations past their expiry (each is expired by ``expire_in``)."""
        rows = await self.db.fetchall(
            "SELECT * FROM escalations WHERE stage = 'pending' AND expires_at <= ?"
            " ORDER BY expires_at", (now_iso(),))
        return [_escalation(r) for r in rows]

    async def to_resume(self) -> list[Escalation]:
        """At start-up: answered escalations nobody resumed, and resumed ones whose run a dead
        process left (interrupted, or parked again because the resume never began). Only the
        latest escalation of each run counts."""
        rows = await self.db.fetchall(
            "SELECT e.* FROM escalations e JOIN runs r ON r.id = e.run_id"
            " WHERE e.stage IN ('answered', 'resumed') AND r.state IS NOT NULL"
            " AND e.created_at = (SELECT MAX(x.created_at) FROM escalations x"
            "                     WHERE x.run_id = e.run_id)"
            " AND (r.status IN ('waiting_human', 'budget_exceeded')"
            "      OR (r.status = 'failed' AND r.status_detail LIKE 'interrupted%'))"
            " ORDER BY e.answered_at")
        return [_escalation(r) for r in rows]

    async def pending(self) -> list[Escalation]:
        rows = await self.db.fetchall(
            "SELECT * FROM escalations WHERE stage = 'pending' ORDER BY created_at")
        return [_escalation(r) for r in rows]

    async def pending_questions(self, chat_id: int, thread_id: int | None) -> list[Escalation]:
        """The questions waiting for an answer in one chat (or topic), oldest first: read on
        every private message, so by the chat's index, not every pending escalation's row."""
        rows = await self.db.fetchall(
            "SELECT * FROM escalations WHERE chat_id = ? AND stage = 'pending'"
            " AND kind = 'question' AND COALESCE(thread_id, 0) = ? ORDER BY created_at",
            (chat_id, thread_id or 0), quick=True)
        return [_escalation(r) for r in rows]


def _escalation(row: Any) -> Escalation:
    data = dict(row)
    data["options"] = json.loads(data["options"] or "[]")
    approvers = data.get("approvers")
    data["approvers"] = [int(a) for a in json.loads(approvers)] if approvers else None
    data.pop("resumed_at", None)
    data.pop("done_at", None)
    known = Escalation.__dataclass_fields__
    return Escalation(**{k: v for k, v in data.items() if k in known})
