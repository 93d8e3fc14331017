"""A ``quick`` read (a lookup by an index on a message's path) is answered on the event loop's own
connection, without a hop to a reader thread; when SQLite cannot start it at once, it goes to a
reader thread instead of stopping the loop."""

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage.db import Database


async def _hops(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements that went to a reader thread from now on."""
    hops: list[str] = []
    real = db._read

    def counted(sql: str, params: Any) -> Any:
        hops.append(sql)
        return real(sql, params)

    monkeypatch.setattr(db, "_read", counted)
    return hops


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """SQLite (quick reads are SQLite's), with a table ``t``; opened before ``monkeypatch``, so
    closed after what a test patched is undone."""
    db = await Database.open(tmp_path / "keel.sqlite3")
    await db.execute_write("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    yield db
    await db.close()


async def test_a_quick_read_needs_no_thread_and_sees_the_last_commit(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops = await _hops(db, monkeypatch)
    for n in range(20):  # each read sees the write committed just before it
        await db.execute_write("INSERT INTO t (id, v) VALUES (?, ?)", (n, f"v{n}"))
        assert await db.fetchval("SELECT v FROM t WHERE id = ?", (n,), quick=True) == f"v{n}"
    rows = await db.fetchall("SELECT id FROM t ORDER BY id", quick=True)
    assert [r["id"] for r in rows] == list(range(20))
    assert hops == []
    await db.fetchval("SELECT COUNT(*) FROM t")  # not quick: a reader thread, as before
    assert hops == ["SELECT COUNT(*) FROM t"]
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await db.fetchval("SELECT v FROM missing", quick=True)  # an error is not "busy"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await db.fetchall("DELETE FROM t", quick=True)  # the loop's connection only reads
    assert await db.fetchval("SELECT COUNT(*) FROM t", quick=True) == 20
    db.inline = lambda: False  # a burst in flight: quick reads go to a reader thread
    assert await db.fetchval("SELECT v FROM t WHERE id = ?", (3,), quick=True) == "v3"
    assert hops[1:] == ["SELECT v FROM t WHERE id = ?"]


async def test_a_quick_read_sqlite_cannot_start_goes_to_a_reader_thread(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await db.execute_write("INSERT INTO t (id, v) VALUES (1, 'one')")
    assert db._here is not None
    # the loop's connection never waits for a lock: SQLite answers "busy" at once instead
    assert db._here.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    # a real "database is locked" from SQLite: the loop's connection pointed at a file
    # another connection holds exclusively (a WAL reader meets this in a WAL recovery)
    locked = tmp_path / "locked.sqlite3"
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    holder.execute("BEGIN EXCLUSIVE")
    here = sqlite3.connect(locked, isolation_level=None)
    here.execute("PRAGMA busy_timeout=0")
    monkeypatch.setattr(db, "_here", here)
    hops = await _hops(db, monkeypatch)
    started = time.monotonic()
    assert await db.fetchval("SELECT v FROM t WHERE id = ?", (1,), quick=True) == "one"
    assert hops == ["SELECT v FROM t WHERE id = ?"]  # answered by a reader thread
    assert time.monotonic() - started < 1.0  # and not after a wait on the loop
    holder.execute("ROLLBACK")
    holder.close()
    here.close()
