"""The reads a message makes on its way to its model call cost the same with ten stored runs or
a hundred thousand: each is a lookup by an index, never a walk of a table that only grows."""

import sqlite3
from pathlib import Path

from agents.sessions import GAPS_KEPT, SEED_STARTS_SQL
from storage.db import Database


def _steps(path: Path, sql: str, params: tuple[object, ...]) -> int:
    """SQLite's virtual-machine instructions for one read: a count, not a time, so the test
    says the same on a fast machine and a slow one."""
    conn = sqlite3.connect(path)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        conn.set_progress_handler(count, 1)
        conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    return steps


async def _runs(db: Database, count: int, start: int) -> None:
    async with db.write() as conn:
        for i in range(start, start + count):
            await conn.later(
                "INSERT INTO runs (id, trace_id, agent, kind, status, started_at, session_id,"
                " budget_usd) VALUES (?, ?, 'assistant', 'chat', 'completed', ?, 1, 1.0)",
                (f"r{i}", f"t{i}", f"2026-11-{1 + i % 28:02d}T00:00:{i % 60:02d}+00:00"))


async def test_a_sessions_turn_starts_are_read_by_index_whatever_the_runs_table_holds(
        tmp_path: Path) -> None:
    """Measured first: a session with no runs among 100,000 others took 178 ms a read (the read
    walked every run in start order looking for its own), on every first turn of a session in a
    process: a new session's, and every session's after a restart."""
    path = tmp_path / "keel.sqlite3"
    db = await Database.open(path)
    try:
        await db.execute_write("INSERT INTO conversations (chat_id, thread_id, created_at,"
                               " updated_at) VALUES (1, 0, 'x', 'x')")
        for agent in ("assistant", "researcher"):
            await db.execute_write("INSERT INTO sessions (conversation_id, agent, created_at)"
                                   " VALUES (1, ?, 'x')", (agent,))
        await _runs(db, 500, 0)
        small = _steps(path, SEED_STARTS_SQL, (2, GAPS_KEPT))
        busy_small = _steps(path, SEED_STARTS_SQL, (1, GAPS_KEPT))
        await _runs(db, 4500, 500)
        large = _steps(path, SEED_STARTS_SQL, (2, GAPS_KEPT))
        busy_large = _steps(path, SEED_STARTS_SQL, (1, GAPS_KEPT))
    finally:
        await db.close()
    # ten times the runs, the same work: for a session with none of them, and for the session
    # that has them all (its last few are read, not the rest)
    assert large <= small + 50, (small, large)
    assert busy_large <= busy_small + 50, (busy_small, busy_large)
