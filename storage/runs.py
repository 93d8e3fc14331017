"""Runs: one row per run, from start to its one final status."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.db import Database, WriteConnection, now_iso
from storage.owner import is_alive, this_process


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    id: str
    trace_id: str
    agent: str
    kind: str
    status: str
    status_detail: str | None
    output: str | None
    user_id: int | None
    chat_id: int | None
    thread_id: int | None
    session_id: int | None
    budget_usd: float
    cost_usd: float
    steps: int
    model_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    state: dict[str, Any] | None
    started_at: str
    ended_at: str | None
    request_key: str | None = None
    owner: str | None = None
    cancel_requested: str | None = None
    """The process working on it while ``running`` (storage/owner.py)."""


@dataclass(frozen=True, kw_only=True)
class RunTotals:
    cost_usd: float
    steps: int
    model_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


class RunRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(
        self,
        *,
        run_id: str,
        trace_id: str,
        agent: str,
        kind: str,
        budget_usd: float,
        user_id: int | None = None,
        chat_id: int | None = None,
        thread_id: int | None = None,
        session_id: int | None = None,
        request_key: str | None = None,
        conn: WriteConnection | None = None,
        started_at: str | None = None,
    ) -> None:
        """The run's row, ``running`` in this process (inside ``conn``'s transaction when
        given); ``started_at`` when it started before the row is written (default: now).
        Written once: a second write of the same run is nothing (a run cancelled while its
        first hold was committing cannot know whether the row went in with it, and writes it
        again with its outcome)."""
        sql = ("INSERT INTO runs (id, trace_id, agent, kind, user_id, chat_id, thread_id,"
               " session_id, status, budget_usd, started_at, request_key, owner)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)"
               " ON CONFLICT (id) DO NOTHING")
        params = (run_id, trace_id, agent, kind, user_id, chat_id, thread_id, session_id,
                  budget_usd, started_at or now_iso(), request_key, this_process())
        if conn is None:
            await self.db.execute_write(sql, params)
        else:  # with the transaction's next statement: no hop of its own
            await conn.later(sql, params)

    async def finish(
        self,
        run_id: str,
        *,
        status: str,
        detail: str | None,
        output: str | None,
        totals: RunTotals,
        state: dict[str, Any] | None = None,
        conn: WriteConnection | None = None,
    ) -> None:
        """Record the run's one final status (inside ``conn``'s transaction when given)."""
        if conn is None:
            async with self.db.write() as own:
                await self.finish(run_id, status=status, detail=detail, output=output,
                                  totals=totals, state=state, conn=own)
            return
        ended = None if status == "waiting_human" else now_iso()
        await conn.later(
            "UPDATE runs SET status = ?, status_detail = ?, output = ?, cost_usd = ?, steps = ?,"
            " model_calls = ?, input_tokens = ?, output_tokens = ?, cache_read_tokens = ?,"
            " cache_write_tokens = ?, state = ?, ended_at = ? WHERE id = ?",
            (status, detail, output, totals.cost_usd, totals.steps, totals.model_calls,
             totals.input_tokens, totals.output_tokens, totals.cache_read_tokens,
             totals.cache_write_tokens, json.dumps(state) if state is not None else None, ended,
             run_id),
        )

    async def set_status(self, run_id: str, status: str, detail: str | None = None) -> None:
        await self.db.execute_write(
            "UPDATE runs SET status = ?, status_detail = COALESCE(?, status_detail) WHERE id = ?",
            (status, detail, run_id),
        )

    async def claim_waiting(self, run_id: str, status: str = "waiting_human") -> bool:
        """``status`` → running, once: two answers racing resume the run only once."""
        return await self.db.execute_write(
            "UPDATE runs SET status = 'running', ended_at = NULL, owner = ?"
            " WHERE id = ? AND status = ?"
            " AND state IS NOT NULL",
            (this_process(), run_id, status),
        ) == 1

    async def reparked(self, run_id: str, status: str) -> None:
        """A parked run interrupted while it went on is parked again (its state is whole), so an
        answered question can resume it after a restart."""
        await self.db.execute_write(
            "UPDATE runs SET status = ?, ended_at = NULL WHERE id = ? AND state IS NOT NULL"
            " AND status = 'failed' AND status_detail LIKE 'interrupted%'", (status, run_id))

    async def running(self) -> list[RunRecord]:
        """Runs marked running: at start-up, those a dead process left behind."""
        return await self.with_status("running")

    async def request_cancel(self, chat_id: int, thread_id: int | None) -> int:
        """Ask whichever process runs this conversation's run to cancel it; returns how many
        running runs were asked."""
        return await self.db.execute_write(
            "UPDATE runs SET cancel_requested = ? WHERE chat_id = ? AND COALESCE(thread_id, 0) = ?"
            " AND status = 'running' AND cancel_requested IS NULL",
            (now_iso(), chat_id, thread_id or 0))

    async def cancel_requests(self) -> list[str]:
        """Runs of this process another process was asked to cancel."""
        rows = await self.db.fetchall(
            "SELECT id FROM runs WHERE status = 'running' AND cancel_requested IS NOT NULL"
            " AND owner = ?", (this_process(),))
        return [str(r["id"]) for r in rows]

    async def running_for(self, request_key: str) -> list[RunRecord]:
        """Runs of one request marked running (indexed: one lookup per job, not every run)."""
        rows = await self.db.fetchall(
            "SELECT * FROM runs WHERE request_key = ? AND status = 'running'", (request_key,))
        return [_record(r) for r in rows]

    async def abandoned(self) -> list[RunRecord]:
        """Runs marked running whose process is gone (at start-up: what a crash left)."""
        return [r for r in await self.running() if not is_alive(r.owner)]

    async def fail_interrupted(self, detail: str, run_ids: list[str]) -> int:
        """Close runs a dead process left 'running'; returns how many were closed."""
        closed = 0
        for run_id in run_ids:
            closed += await self.db.execute_write(
                "UPDATE runs SET status = 'failed', status_detail = ?, ended_at = ?"
                " WHERE id = ? AND status = 'running'", (detail, now_iso(), run_id))
        return closed

    async def get(self, run_id: str) -> RunRecord | None:
        row = await self.db.fetchone("SELECT * FROM runs WHERE id = ? OR trace_id = ?", (run_id, run_id))
        return None if row is None else _record(row)

    async def recent(self, *, limit: int = 10, user_id: int | None = None) -> list[RunRecord]:
        if user_id is None:
            rows = await self.db.fetchall(
                "SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (limit,)
            )
        else:
            rows = await self.db.fetchall(
                "SELECT * FROM runs WHERE user_id = ? ORDER BY started_at DESC LIMIT ?",
                (user_id, limit),
            )
        return [_record(r) for r in rows]

    async def with_status(self, status: str) -> list[RunRecord]:
        rows = await self.db.fetchall(
            "SELECT * FROM runs WHERE status = ? ORDER BY started_at", (status,)
        )
        return [_record(r) for r in rows]

    async def visible(self, *, user_id: int | None, chat_id: int | None, prefix: str = "",
                      limit: int = 10) -> list[RunRecord]:
        """The newest runs of one person and/or one chat (None: any), whose run or trace id
        starts with ``prefix``; the prefix is compared as text, never as a pattern."""
        rows = await self.db.fetchall(
            "SELECT * FROM runs WHERE (CAST(? AS BIGINT) IS NULL OR user_id = ?)"
            " AND (CAST(? AS BIGINT) IS NULL OR chat_id = ?)"
            " AND (substr(trace_id, 1, ?) = ? OR substr(id, 1, ?) = ?)"
            " ORDER BY started_at DESC LIMIT ?",
            (user_id, user_id, chat_id, chat_id, len(prefix), prefix, len(prefix), prefix, limit),
        )
        return [_record(r) for r in rows]


def _record(row: Any) -> RunRecord:
    data = dict(row)
    data["state"] = json.loads(data["state"]) if data["state"] else None
    return RunRecord(**data)
