"""The inbox: every Telegram update, committed (deduplicated by update_id) before Telegram is told it
arrived, so a crash between receiving and answering is recovered on restart.

An update is ``received`` when stored, ``processing`` once a run took it, and ``done`` (or
``ignored``/``failed``) in the same transaction as its reply's outbox row."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from storage.db import Database, WriteConnection, now_iso

STORE_ROWS = 1000
"""Updates stored by one statement (6 parameters each: far below SQLite's and PostgreSQL's
limits); Telegram sends at most 100 at a time."""
InboxStatus = Literal["received", "processing", "done", "ignored", "failed"]


@dataclass(frozen=True, kw_only=True)
class InboxItem:
    update_id: int
    chat_id: int | None
    thread_id: int | None
    user_id: int | None
    payload: dict[str, Any]
    status: InboxStatus


class Inbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def receive(self, *, update_id: int, chat_id: int | None, thread_id: int | None,
                      user_id: int | None, payload: dict[str, Any]) -> bool:
        """Store an update; False if it was already stored (a redelivery)."""
        inserted = await self.db.execute_write(
            "INSERT INTO inbox (update_id, chat_id, thread_id, user_id, payload,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (update_id, chat_id, thread_id, user_id, json.dumps(payload, ensure_ascii=False),
             now_iso()),
        )
        return inserted == 1

    async def store(self, updates: list[InboxItem]) -> set[int]:
        """Commit a batch of updates in one transaction (each ``STORE_ROWS`` in one of their
        own); returns the ids new to the inbox (a redelivery of an update already stored is not
        new)."""
        if not updates:
            return set()
        now = now_iso()
        fresh: set[int] = set()
        # one statement (a getUpdates batch is at most 100), in the group commit on SQLite: a
        # statement per update held the write lock across a loop iteration each, and the next
        # getUpdates waited for all of them (issue 15)
        for start in range(0, len(updates), STORE_ROWS):
            chunk = updates[start:start + STORE_ROWS]
            params: list[object] = []
            for u in chunk:
                params += [u.update_id, u.chat_id, u.thread_id, u.user_id,
                           json.dumps(u.payload, ensure_ascii=False), now]
            rows = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in chunk)
            sql = ("INSERT INTO inbox (update_id, chat_id, thread_id, user_id, payload,"  # noqa: S608
                   f" received_at) VALUES {rows} ON CONFLICT DO NOTHING RETURNING update_id")
            cursor = await self.db.write_many([(sql, params)])
            fresh.update(int(row[0]) for row in await cursor.fetchall())
        return fresh

    async def take(self, update_id: int) -> bool:
        """Whether the update is still to be answered: False when it is finished (or unknown).
        A read: the row becomes ``processing`` with its run's first write (``taken_in``)."""
        return await self.status(update_id) in ("received", "processing")

    @staticmethod
    async def taken_in(conn: WriteConnection, update_id: int) -> None:
        """received → processing, inside the caller's transaction (a run's first write)."""
        await conn.later("UPDATE inbox SET status = 'processing' WHERE update_id = ?"
                         " AND status = 'received'", (update_id,))

    async def settle(self, update_id: int) -> None:
        """An update no run took (a command, a button, a message not for keel) is done."""
        if await self.status(update_id) != "received":
            return  # a run took it (it never goes back to received): no write transaction
        await self.db.execute_write(
            "UPDATE inbox SET status = 'done', done_at = ? WHERE update_id = ?"
            " AND status = 'received'", (now_iso(), update_id))

    @staticmethod
    async def close(conn: WriteConnection, update_id: int, status: InboxStatus, *,
                    run_id: str | None = None) -> None:
        """Finish an update inside the caller's transaction (with its reply)."""
        await conn.later(
            "UPDATE inbox SET status = ?, run_id = COALESCE(?, run_id), done_at = ?"
            " WHERE update_id = ?", (status, run_id, now_iso(), update_id))

    async def status(self, update_id: int) -> InboxStatus | None:
        value = await self.db.fetchval("SELECT status FROM inbox WHERE update_id = ?",
                                       (update_id,), quick=True)
        return value  # type: ignore[no-any-return,unused-ignore]

    async def mark(self, update_id: int, status: InboxStatus, *, run_id: str | None = None) -> None:
        done = now_iso() if status in ("done", "ignored", "failed") else None
        await self.db.execute_write(
            "UPDATE inbox SET status = ?, run_id = COALESCE(?, run_id), done_at = ? WHERE update_id = ?",
            (status, run_id, done, update_id),
        )

    async def get(self, update_id: int) -> InboxItem | None:
        row = await self.db.fetchone("SELECT * FROM inbox WHERE update_id = ?", (update_id,))
        return None if row is None else _item(row)

    async def unfinished_before(self, moment: str) -> list[InboxItem]:
        """Updates not yet answered that arrived before ``moment`` (ISO, as now_iso())."""
        rows = await self.db.fetchall(
            "SELECT * FROM inbox WHERE status IN ('received', 'processing') AND received_at < ?"
            " ORDER BY update_id", (moment,))
        return [_item(r) for r in rows]

    async def unfinished(self) -> list[InboxItem]:
        rows = await self.db.fetchall(
            "SELECT * FROM inbox WHERE status IN ('received', 'processing') ORDER BY update_id"
        )
        return [InboxItem(update_id=r["update_id"], chat_id=r["chat_id"], thread_id=r["thread_id"],
                          user_id=r["user_id"], payload=json.loads(r["payload"]),
                          status=r["status"]) for r in rows]


def _item(row: Any) -> InboxItem:
    return InboxItem(update_id=row["update_id"], chat_id=row["chat_id"],
                     thread_id=row["thread_id"], user_id=row["user_id"],
                     payload=json.loads(row["payload"]), status=row["status"])
