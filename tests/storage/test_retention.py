"""Retention deletes old finished rows in small batches, between other writes, and never a row that
something live still needs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from storage.db import Database, iso
from storage.retention import housekeep, prune
from storage.traces import TraceStore

NOW = datetime.now(UTC)
OLD, RECENT = iso(NOW - timedelta(days=40)), iso(NOW - timedelta(days=1))


async def _run(db: Database, run_id: str, status: str, at: str) -> None:
    ended = None if status in ("running", "waiting_human") else at
    await db.execute_write(
        "INSERT INTO runs (id, trace_id, agent, kind, status, budget_usd, started_at, ended_at)"
        " VALUES (?, ?, 'assistant', 'chat', ?, 1.0, ?, ?)",
        (run_id, f"trace-{run_id}", status, at, ended))


async def _escalation(db: Database, key: str, run_id: str, status: str, at: str) -> None:
    answered = at if status == "answered" else None
    await db.execute_write(
        "INSERT INTO escalations (id, run_id, tool_use_id, reason, status, answered_at,"
        " created_at, expires_at) VALUES (?, ?, 'tu', 'why', ?, ?, ?, ?)",
        (key, run_id, status, answered, at, at))


async def _inbox(db: Database, update_id: int, status: str, at: str, run_id: str | None) -> None:
    done = at if status in ("done", "ignored", "failed") else None
    await db.execute_write(
        "INSERT INTO inbox (update_id, chat_id, payload, status, run_id, received_at, done_at)"
        " VALUES (?, 1, '{}', ?, ?, ?, ?)", (update_id, status, run_id, at, done))


async def _outbox(db: Database, label: str, status: str, at: str, run_id: str | None) -> None:
    sent = at if status == "sent" else None
    await db.execute_write(
        "INSERT INTO outbox (chat_id, payload, status, run_id, created_at, sent_at)"
        " VALUES (1, ?, ?, ?, ?, ?)", (label, status, run_id, at, sent))


async def _key(db: Database, label: str, run_id: str, at: str) -> None:
    await db.execute_write(
        "INSERT INTO idempotency_keys (run_id, tool, args_hash, result, created_at)"
        " VALUES (?, 'send', ?, 'ok', ?)", (run_id, label, at))


async def _fire(db: Database, label: str, run_id: str, at: str) -> None:
    await db.execute_write(
        "INSERT INTO schedule_fires (job, local_time, run_id, fired_at) VALUES (?, 't', ?, ?)",
        (label, run_id, at))


async def _session(db: Database, chat_id: int, archived_at: str | None) -> int:
    async with db.write() as conn:
        async with conn.execute(
            "INSERT INTO conversations (chat_id, created_at, updated_at) VALUES (?, ?, ?)"
            " RETURNING id", (chat_id, OLD, OLD)) as cur:
            conversation = await cur.fetchone()
        assert conversation is not None
        async with conn.execute(
            "INSERT INTO sessions (conversation_id, agent, created_at, archived_at)"
            " VALUES (?, 'assistant', ?, ?) RETURNING id",
            (conversation[0], OLD, archived_at)) as cur:
            session = await cur.fetchone()
        assert session is not None
        return int(session[0])


async def _message(db: Database, session_id: int, seq: int, label: str,
                   archived_at: str | None) -> None:
    await db.execute_write(
        "INSERT INTO messages (session_id, seq, role, content, archived_at, created_at)"
        " VALUES (?, ?, 'user', ?, ?, ?)", (session_id, seq, label, archived_at, OLD))


async def _column(db: Database, sql: str) -> set[str]:
    return {r[0] for r in await db.fetchall(sql)}


async def test_old_finished_rows_go_and_rows_anything_live_needs_stay(db: Database) -> None:
    for run_id, status, at in [
        ("done", "completed", OLD), ("failed", "failed", OLD), ("recent", "completed", RECENT),
        ("waiting", "waiting_human", OLD), ("running", "running", OLD),
        ("budget-asked", "budget_exceeded", OLD), ("budget-lapsed", "budget_exceeded", OLD),
        ("answered-not-resumed", "waiting_human", OLD), ("halted-again", "budget_exceeded", OLD),
    ]:
        await _run(db, run_id, status, at)
    for key, run_id, status in [
        ("e-done", "done", "answered"), ("e-waiting", "waiting", "pending"),
        ("e-budget-asked", "budget-asked", "pending"), ("e-budget-lapsed", "budget-lapsed", "expired"),
        ("e-answered", "answered-not-resumed", "answered"),
        ("e-cancelled", "failed", "cancelled"), ("e-old-answer", "halted-again", "answered"),
    ]:
        await _escalation(db, key, run_id, status, OLD)

    await _inbox(db, 1, "done", OLD, "done")
    await _inbox(db, 2, "ignored", OLD, None)
    await _inbox(db, 3, "failed", OLD, "failed")
    await _inbox(db, 4, "received", OLD, None)
    await _inbox(db, 5, "processing", OLD, "running")
    await _inbox(db, 6, "done", OLD, "waiting")
    await _inbox(db, 7, "done", RECENT, "recent")

    await _outbox(db, "sent-old", "sent", OLD, "done")
    await _outbox(db, "failed-old", "failed", OLD, None)
    await _outbox(db, "pending-old", "pending", OLD, None)
    await _outbox(db, "sent-for-waiting", "sent", OLD, "waiting")
    await _outbox(db, "sent-recent", "sent", RECENT, "recent")

    await _key(db, "k-done", "done", OLD)
    await _key(db, "k-orphan", "gone-long-ago", OLD)
    await _key(db, "k-waiting", "waiting", OLD)
    await _key(db, "k-running", "running", OLD)
    await _key(db, "k-budget-asked", "budget-asked", OLD)
    await _key(db, "k-recent", "recent", RECENT)

    await _fire(db, "f-done", "done", OLD)
    await _fire(db, "f-running", "running", OLD)
    await _fire(db, "f-recent", "recent", RECENT)

    live = await _session(db, 1, None)
    await _message(db, live, 1, "live-old-turn", None)
    await _message(db, live, -10, "compacted-old", OLD)
    await _message(db, live, -11, "compacted-recent", RECENT)
    archived = await _session(db, 2, OLD)
    await _message(db, archived, 1, "archived-session-turn", None)
    newly_archived = await _session(db, 3, RECENT)
    await _message(db, newly_archived, 1, "recently-archived-session-turn", None)

    report = await prune(db, days=30, pause_s=0)

    assert await _column(db, "SELECT id FROM runs") == {
        "recent", "waiting", "running", "budget-asked", "answered-not-resumed", "halted-again"}
    assert await _column(db, "SELECT id FROM escalations") == {
        "e-waiting", "e-budget-asked", "e-answered", "e-old-answer"}
    assert await _column(db, "SELECT update_id FROM inbox") == {4, 5, 6, 7}
    assert await _column(db, "SELECT payload FROM outbox") == {
        "pending-old", "sent-for-waiting", "sent-recent"}
    assert await _column(db, "SELECT args_hash FROM idempotency_keys") == {
        "k-waiting", "k-running", "k-budget-asked", "k-recent"}
    assert await _column(db, "SELECT job FROM schedule_fires") == {"f-running", "f-recent"}
    assert await _column(db, "SELECT content FROM messages") == {
        "live-old-turn", "compacted-recent", "recently-archived-session-turn"}
    assert report.deleted == {"inbox": 3, "outbox": 2, "messages": 2, "idempotency_keys": 2,
                              "schedule_fires": 1, "escalations": 3, "runs": 3,
                              "memory_buttons": 0, "rating_offers": 0}
    # a second pass finds nothing more
    assert (await prune(db, days=30, pause_s=0)).total == 0


async def test_old_button_keys_go_and_ratings_stay(db: Database) -> None:
    for key, at in (("old", OLD), ("new", RECENT)):
        await db.execute_write(
            "INSERT INTO memory_buttons (key, fact_id, user_id, chat_id, created_at)"
            " VALUES (?, 1, 1, 1, ?)", (f"m-{key}", at))
        await db.execute_write(
            "INSERT INTO rating_offers (key, run_id, trace_id, agent, chat_id, outbox_id,"
            " created_at) VALUES (?, ?, 't', 'a', 1, 1, ?)", (f"r-{key}", f"run-{key}", at))
        await db.execute_write(
            "INSERT INTO ratings (run_id, trace_id, agent, user_id, rating, rated_at)"
            " VALUES (?, 't', 'a', 1, 'up', ?)", (f"run-{key}", at))
    report = await prune(db, days=30, pause_s=0)
    assert (report.deleted["memory_buttons"], report.deleted["rating_offers"]) == (1, 1)
    assert [r["key"] for r in await db.fetchall("SELECT key FROM memory_buttons")] == ["m-new"]
    assert [r["key"] for r in await db.fetchall("SELECT key FROM rating_offers")] == ["r-new"]
    assert await db.fetchval("SELECT count(*) FROM ratings") == 2


async def test_batches_interleave_with_other_writes(db: Database) -> None:
    async with db.write() as conn:
        await conn.executemany(
            "INSERT INTO inbox (update_id, payload, status, received_at, done_at)"
            " VALUES (?, '{}', 'done', ?, ?)", [(i, OLD, OLD) for i in range(1, 2001)])
    writes = 0
    seen_at_batch: list[int] = []
    stop = asyncio.Event()

    async def other_writer() -> None:
        nonlocal writes
        update_id = 10_000
        while not stop.is_set():
            update_id += 1
            await db.execute_write(
                "INSERT INTO inbox (update_id, payload, status, received_at) VALUES (?, '{}',"
                " 'received', ?)", (update_id, iso(datetime.now(UTC))))
            writes += 1

    async def on_batch(table: str, deleted: int) -> None:
        seen_at_batch.append(writes)

    writer = asyncio.create_task(other_writer())
    try:
        report = await prune(db, days=30, pause_s=0, on_batch=on_batch)
    finally:
        stop.set()
        await writer
    assert report.deleted["inbox"] == 2000 and report.batches == 4
    # the other writer committed between every two batches: the lock was not held across them
    assert all(b > a for a, b in zip(seen_at_batch, seen_at_batch[1:], strict=False)), seen_at_batch
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE status = 'done'") == 0
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE status = 'received'") == writes


async def test_a_row_that_changes_between_read_and_delete_is_kept(db: Database) -> None:
    await _run(db, "r", "completed", OLD)
    await _key(db, "k", "r", OLD)

    # The run is continued after retention read its keys and before it deletes them.
    real_fetchall = db.fetchall

    async def fetch_then_reopen(sql: str, params: object = ()) -> list:  # type: ignore[type-arg]
        rows = await real_fetchall(sql, params)  # type: ignore[arg-type]
        if "FROM idempotency_keys" in sql and rows:
            await db.execute_write("UPDATE runs SET status = 'running' WHERE id = 'r'")
        return rows

    db.fetchall = fetch_then_reopen  # type: ignore[method-assign]
    report = await prune(db, days=30, pause_s=0)
    db.fetchall = real_fetchall  # type: ignore[method-assign]
    assert report.deleted["idempotency_keys"] == 0
    assert await _column(db, "SELECT args_hash FROM idempotency_keys") == {"k"}


async def test_a_pass_stops_at_its_time_limit_and_the_next_carries_on(db: Database) -> None:
    async with db.write() as conn:
        await conn.executemany(
            "INSERT INTO inbox (update_id, payload, status, received_at, done_at)"
            " VALUES (?, '{}', 'done', ?, ?)", [(i, OLD, OLD) for i in range(1, 1001)])
    first = await prune(db, days=30, pause_s=0, max_seconds=0)
    assert not first.finished and first.total == 0
    second = await prune(db, days=30, pause_s=0)
    assert second.finished and second.deleted["inbox"] == 1000


async def test_housekeep_prunes_rows_and_traces_together(db: Database, tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "traces")
    for trace_id, day in (("old", NOW.date() - timedelta(days=40)),
                          ("yesterday", NOW.date() - timedelta(days=1)), ("today", NOW.date())):
        w = store.writer(trace_id=trace_id, run_id="r", day=day)
        w.emit("run_start")
        w.close()
    await _inbox(db, 1, "done", OLD, None)
    await _inbox(db, 2, "done", RECENT, None)
    report = await housekeep(db, store, days=30, trace_days=30)
    assert (report.rows.deleted["inbox"], report.traces_gzipped, report.traces_deleted) == (1, 1, 1)
    assert await _column(db, "SELECT update_id FROM inbox") == {2}
    assert store.find("old") is None
    assert store.find("yesterday").path.name.endswith(".gz")  # type: ignore[union-attr]


ROOT = Path(__file__).resolve().parents[2]


async def _keel(data_dir: Path, *args: str) -> tuple[int, str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "KEEL_DATA_DIR": str(data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, cwd=str(data_dir.parent), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_db_stats_shows_what_db_prune_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out, err = await _keel(data, "db", "stats")
    assert code == 1 and "no database" in err and "Traceback" not in err

    db = await Database.open(data / "keel.sqlite3")
    try:
        async with db.write() as conn:
            await conn.executemany(
                "INSERT INTO inbox (update_id, payload, status, received_at, done_at)"
                " VALUES (?, ?, 'done', ?, ?)", [(i, "x" * 200, OLD, OLD) for i in range(1, 1201)])
        await _inbox(db, 5000, "received", OLD, None)
    finally:
        await db.close()
    store = TraceStore(data / "traces")
    for trace_id, day in (("old", NOW.date() - timedelta(days=40)), ("now", NOW.date())):
        w = store.writer(trace_id=trace_id, run_id="r", day=day)
        w.emit("run_start")
        w.close()

    code, out, err = await _keel(data, "db", "stats", "--json")
    assert code == 0, err
    before = json.loads(out)
    assert before["rows"]["inbox"] == 1201 and before["rows"]["runs"] == 0
    assert (before["trace_files"], before["trace_days"]) == (2, 2)
    assert before["database_bytes"] > 1200 * 200 and before["trace_bytes"] > 0

    code, out, err = await _keel(data, "db", "prune")
    assert code == 0, err
    assert "inbox 1200" in out and "1 deleted" in out

    code, out, err = await _keel(data, "db", "stats", "--json")
    after = json.loads(out)
    assert after["rows"]["inbox"] == 1 and (after["trace_files"], after["trace_days"]) == (1, 1)
    code, out, _ = await _keel(data, "db", "stats")
    assert code == 0 and "inbox" in out and "WAL" in out and "1 file(s) in 1 day(s)" in out
