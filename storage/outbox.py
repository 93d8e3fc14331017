"""The outbox: every message keel sends, stored before it is sent, with how far it got.

A row is committed in the same transaction as what caused it (a run's outcome, a notice, a
question), so a crash can lose neither. Delivery records each chunk Telegram accepted, and marks the
chunk it is about to hand over (``inflight_chunk``) first: a chunk found in flight after a crash or a
timeout may have arrived, and is never resent blindly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.db import Database, WriteConnection, iso, now_iso
from storage.owner import is_alive, this_process

LEASE_S = 300.0
"""How long a process may deliver a row before another may take it over: longer than the worst
wait inside one attempt (a 120 s flood wait), renewed before each attempt."""


@dataclass(frozen=True, kw_only=True)
class OutboxButton:
    label: str
    key: str


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    id: int
    chat_id: int
    thread_id: int | None
    reply_to: int | None
    markdown: str
    buttons: list[list[OutboxButton]] | None
    message_ids: list[int]
    """Telegram message ids of the chunks accepted so far (an unconfirmed chunk counts as 0)."""
    inflight_chunk: int | None
    status: str
    inbox_update_id: int | None
    run_id: str | None
    escalation_id: str | None
    kind: str = "text"
    """'text': ``markdown`` sent in chunks; 'document': ``file`` sent as one document, with
    ``markdown`` as its caption (one chunk, under the same in-flight rules)."""
    file: dict[str, Any] | None = None
    """For a document: ``{"sha256", "filename", "media_type", "size"}`` of a stored blob."""
    leased_by: str | None = None
    leased_until: str | None = None

    def leased_to_this_process(self) -> bool:
        """This process holds the row's delivery lease, with time left on it."""
        return self.leased_by == this_process() and \
            (self.leased_until or "") > iso(datetime.now(UTC))

    @property
    def sent_chunks(self) -> int:
        return len(self.message_ids)


class OutboxRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, conn: WriteConnection, *, chat_id: int, thread_id: int | None,
                  reply_to: int | None, markdown: str, inbox_update_id: int | None = None,
                  run_id: str | None = None, buttons: list[list[OutboxButton]] | None = None,
                  escalation_id: str | None = None, file: dict[str, Any] | None = None,
                  last: bool = False, leased: bool = False) -> int:
        """Insert inside the caller's write transaction; returns the row id. With ``file`` the
        row is a document (kind 'document') and ``markdown`` its caption. ``last``: the
        transaction's last statement (``WriteConnection.last``: it commits in the same hop).
        ``leased``: the caller delivers it as soon as it commits, so the row is born with this
        process's delivery lease (``lease`` takes a read and a write)."""
        payload: dict[str, Any] = {"markdown": markdown, "buttons": [
            [{"label": b.label, "key": b.key} for b in row] for row in buttons or []]}
        if file is not None:
            payload["file"] = file
        sql = ("INSERT INTO outbox (chat_id, thread_id, reply_to_message_id, kind, payload,"
               " inbox_update_id, run_id, escalation_id, telegram_message_ids, created_at,"
               " leased_by, leased_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '[]', ?, ?, ?)"
               " RETURNING id")
        params = (chat_id, thread_id, reply_to, "document" if file is not None else "text",
                  json.dumps(payload, ensure_ascii=False), inbox_update_id, run_id,
                  escalation_id, now_iso(), this_process() if leased else None,
                  _lease_until() if leased else None)
        if last:
            row = await (await conn.last(sql, params)).fetchone()
        else:
            async with conn.execute(sql, params) as cursor:
                row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def get(self, item_id: int) -> OutboxItem | None:
        row = await self.db.fetchone("SELECT * FROM outbox WHERE id = ?", (item_id,),
                                     quick=True)
        return _item(row) if row else None

    async def pending(self, *, chat_id: int | None = None) -> list[OutboxItem]:
        """Rows still to deliver, oldest first (of one chat when ``chat_id`` is given)."""
        if chat_id is not None:
            rows = await self.db.fetchall(
                "SELECT * FROM outbox WHERE status = 'pending' AND chat_id = ? ORDER BY id",
                (chat_id,))
        else:
            rows = await self.db.fetchall(
                "SELECT * FROM outbox WHERE status = 'pending' ORDER BY id")
        return [_item(r) for r in rows]

    async def resend(self, conn: WriteConnection, item_id: int, new_id: int) -> bool:
        """Mark ``item_id`` as sent again as row ``new_id``, once: False if it already was."""
        cursor = await conn.execute(
            "UPDATE outbox SET resent_as = ? WHERE id = ? AND resent_as IS NULL",
            (new_id, item_id))
        return cursor.rowcount == 1

    async def notices_for(self, key: str) -> list[OutboxItem]:
        """Rows carrying a button with data ``key`` (a rare look-up: on a press)."""
        rows = await self.db.fetchall("SELECT * FROM outbox WHERE payload LIKE ? ORDER BY id",
                                      (f'%"key": "{key}"%',))
        return [_item(r) for r in rows]

    async def lease(self, item_id: int, *, seconds: float = LEASE_S) -> bool:
        """Take (or renew) the right to deliver a pending row, for ``seconds``. False when another
        live process holds it: with several processes, one row is delivered by one at a time.
        A lease of a process that is gone (on this host) or past its time is taken over."""
        now = datetime.now(UTC)
        row = await self.db.fetchone(
            "SELECT leased_by, leased_until FROM outbox WHERE id = ? AND status = 'pending'",
            (item_id,))
        if row is None:
            return False
        holder = row["leased_by"] or ""
        if holder and holder != this_process() and (row["leased_until"] or "") > iso(now) \
                and is_alive(holder):
            return False
        # guarded: of two processes taking a free (or dead process's) lease, one wins
        return await self.db.execute_write(
            "UPDATE outbox SET leased_by = ?, leased_until = ? WHERE id = ? AND status = 'pending'"
            " AND COALESCE(leased_by, '') = ?",
            (this_process(), iso(now + timedelta(seconds=seconds)), item_id, holder)) == 1

    async def release(self, item_id: int) -> None:
        await self.db.execute_write(
            "UPDATE outbox SET leased_by = NULL, leased_until = NULL WHERE id = ? AND leased_by = ?",
            (item_id, this_process()))

    async def handing_over(self, item_id: int, chunk: int) -> None:
        """Chunk ``chunk`` is about to be sent: committed before the request leaves (the lease is
        renewed with it)."""
        await self.db.execute_write(
            "UPDATE outbox SET inflight_chunk = ?, attempts = attempts + 1, leased_until = ?"
            " WHERE id = ?", (chunk, _lease_until(), item_id))

    async def accepted(self, item_id: int, message_ids: list[int], *,
                       finished: bool = False) -> None:
        """Telegram accepted the chunk in flight; ``message_ids`` are all accepted so far. With
        ``finished`` (it was the last chunk) the row is ``sent`` in the same write."""
        if finished:
            await self.db.execute_write(
                "UPDATE outbox SET telegram_message_ids = ?, status = 'sent', sent_at = ?,"
                " inflight_chunk = NULL, leased_by = NULL, leased_until = NULL WHERE id = ?",
                (json.dumps(message_ids), now_iso(), item_id))
            return
        await self.db.execute_write(
            "UPDATE outbox SET telegram_message_ids = ?, inflight_chunk = NULL WHERE id = ?",
            (json.dumps(message_ids), item_id))

    async def unconfirmed(self, item_id: int, message_ids: list[int], error: str) -> None:
        """The chunk in flight may or may not have arrived; it counts as handed over (id 0)."""
        await self.db.execute_write(
            "UPDATE outbox SET telegram_message_ids = ?, inflight_chunk = NULL,"
            " unconfirmed_chunks = unconfirmed_chunks + 1, last_error = ? WHERE id = ?",
            (json.dumps(message_ids), error, item_id))

    async def not_handed_over(self, item_id: int) -> None:
        """The chunk in flight certainly did not reach Telegram (refused, or never connected)."""
        await self.db.execute_write("UPDATE outbox SET inflight_chunk = NULL WHERE id = ?",
                                    (item_id,))

    async def sent(self, item_id: int) -> None:
        await self.db.execute_write(
            "UPDATE outbox SET status = 'sent', sent_at = ?, inflight_chunk = NULL,"
            " leased_by = NULL, leased_until = NULL WHERE id = ?",
            (now_iso(), item_id))

    async def failed(self, item_id: int, error: str) -> None:
        await self.db.execute_write(
            "UPDATE outbox SET status = 'failed', last_error = ?, inflight_chunk = NULL,"
            " leased_by = NULL, leased_until = NULL WHERE id = ?", (error, item_id))


def _lease_until(seconds: float = LEASE_S) -> str:
    """When a lease taken (or renewed) now ends."""
    return iso(datetime.now(UTC) + timedelta(seconds=seconds))


def _item(row: Any) -> OutboxItem:
    payload = json.loads(row["payload"])
    buttons = [[OutboxButton(label=b["label"], key=b["key"]) for b in r]
               for r in payload.get("buttons") or []]
    return OutboxItem(
        id=row["id"], chat_id=row["chat_id"], thread_id=row["thread_id"],
        reply_to=row["reply_to_message_id"], markdown=payload["markdown"], buttons=buttons or None,
        message_ids=list(json.loads(row["telegram_message_ids"] or "[]")),
        inflight_chunk=row["inflight_chunk"], status=row["status"],
        inbox_update_id=row["inbox_update_id"], run_id=row["run_id"],
        escalation_id=row["escalation_id"], kind=row["kind"], file=payload.get("file"),
        leased_by=row["leased_by"], leased_until=row["leased_until"],
    )
