"""SQLite reads do not queue behind each other, and each sees what was committed when it began."""

import asyncio
import sqlite3
import threading
from pathlib import Path

from storage.db import Database

GATE = threading.Event()


class GatedDatabase(Database):
    """Reader connections know ``gate()``, a function that blocks its reader thread until the
    test opens the gate: a read held inside SQLite, as a slow query would be."""

    def _connect(self, writer: bool = False) -> sqlite3.Connection:
        conn = super()._connect(writer)
        conn.create_function("gate", 0, lambda: 1 if GATE.wait(30) else 0)
        return conn


async def test_a_read_is_answered_while_another_read_is_still_running(tmp_path: Path) -> None:
    GATE.clear()
    db = await GatedDatabase.open(tmp_path / "keel.sqlite3")
    try:
        slow = asyncio.create_task(db.fetchval("SELECT gate()"))
        await asyncio.sleep(0)  # the slow read is on its way to a reader thread
        # With one reader behind one lock, this read would wait for the gate.
        assert await asyncio.wait_for(db.fetchval("SELECT 41 + 1"), 20) == 42
        assert not slow.done()
        GATE.set()
        assert await slow == 1
    finally:
        GATE.set()
        await db.close()


async def test_every_read_sees_the_latest_commit_across_reader_threads(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "keel.sqlite3")
    try:
        for n in range(1, 8):
            await db.execute_write(
                "INSERT INTO conversations (chat_id, thread_id, created_at, updated_at)"
                " VALUES (?, 0, 'x', 'x')", (n,))
            counts = await asyncio.gather(*(db.fetchval("SELECT COUNT(*) FROM conversations")
                                            for _ in range(6)))
            assert counts == [n] * 6
    finally:
        await db.close()


async def test_a_statement_and_the_transaction_it_opens_roll_back_together(
        tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "keel.sqlite3")
    try:
        try:
            async with db.write() as conn:
                cursor = await conn.execute(
                    "INSERT INTO conversations (chat_id, thread_id, created_at, updated_at)"
                    " VALUES (1, 0, 'x', 'x') RETURNING id")
                assert (await cursor.fetchone()) is not None
                raise RuntimeError("changed my mind")
        except RuntimeError:
            pass
        assert await db.fetchval("SELECT COUNT(*) FROM conversations") == 0
        async with db.write():
            pass  # a transaction without statements opens and commits nothing
        assert await db.execute_write("UPDATE conversations SET current_agent = 'x'") == 0
    finally:
        await db.close()


INSERT = ("INSERT INTO conversations (chat_id, thread_id, created_at, updated_at)"
          " VALUES (?, 0, 'x', 'x')")


async def test_single_statements_waiting_together_commit_together_and_fail_alone(
        tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "keel.sqlite3")
    try:
        await db.execute_write(INSERT, (1,))
        # chat 1 exists already: that insert breaks UNIQUE (chat_id, thread_id); the rest stand
        results = await asyncio.gather(*(db.execute_write(INSERT, (chat,))
                                         for chat in (2, 3, 1, 4)), return_exceptions=True)
        assert results[:2] == [1, 1] and results[3] == 1
        assert isinstance(results[2], sqlite3.IntegrityError)
        rows = await db.fetchall("SELECT chat_id FROM conversations ORDER BY chat_id")
        assert [r["chat_id"] for r in rows] == [1, 2, 3, 4]
    finally:
        await db.close()


async def test_a_statement_whose_caller_gave_up_before_it_left_is_not_run(
        tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "keel.sqlite3")
    try:
        async with db.write() as conn:  # the door is busy: the statements below queue
            await conn.execute(INSERT, (1,))
            kept = asyncio.create_task(db.execute_write(INSERT, (2,)))
            dropped = asyncio.create_task(db.execute_write(INSERT, (3,)))
            await asyncio.sleep(0)
            dropped.cancel()
        assert await kept == 1
        rows = await db.fetchall("SELECT chat_id FROM conversations ORDER BY chat_id")
        assert [r["chat_id"] for r in rows] == [1, 2]
    finally:
        await db.close()
