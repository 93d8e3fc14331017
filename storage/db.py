"""One SQLite database in WAL mode, with one door for every write.

Two connections: the writer, used only inside ``Database.write()`` under a lock with an explicit
``BEGIN IMMEDIATE``; and the reader, in autocommit mode, which sees only committed data (WAL lets it
read while a write is open). A write that raises — cancellation included — is rolled back, so a
cancelled task never leaves half a change behind.

``storage.pg.PostgresDatabase`` is the same interface on PostgreSQL; repositories see only what the
protocols below describe (rows by name and by position, a cursor's ``rowcount``), and write SQL
both understand (``storage/dialect.py``). New rows' ids come from ``RETURNING``, not ``lastrowid``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

import aiosqlite

from storage.dialect import Dialect

Params = Sequence[Any] | dict[str, Any]


class Row(Protocol):
    """A result row, by column name or by position (``sqlite3.Row`` and ``storage.pg.PgRow``)."""

    def keys(self) -> list[str]: ...
    def __getitem__(self, key: int | str, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    async def fetchone(self) -> Row | None: ...
    async def fetchall(self) -> Iterable[Row]: ...


class CursorResult(Protocol):
    """What ``execute`` returns: awaited, or used as ``async with`` (which closes the cursor)."""

    def __await__(self) -> Generator[Any, None, Cursor]: ...
    async def __aenter__(self) -> Cursor: ...
    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any, /) -> Any: ...


class WriteConnection(Protocol):
    """The connection ``Database.write()`` yields, inside its one transaction."""

    def execute(self, sql: str, params: Params = ..., /) -> CursorResult: ...
    def executemany(self, sql: str, params: Iterable[Params], /) -> CursorResult: ...


def now_iso() -> str:
    """UTC now as ISO-8601 with microseconds; stored times compare correctly as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Database:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        # SQLite keeps a read snapshot while any statement on the connection is active. Reads
        # from concurrent tasks interleaving on one connection would keep one snapshot open
        # forever and miss later commits; one read at a time means each starts fresh.
        self._read_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str, *, migrate: bool = True) -> Self:
        db = cls(path)
        await db.connect()
        if migrate:
            from storage.migrations import migrate as run_migrations

            await run_migrations(db)
        return db

    async def connect(self) -> None:
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await _pragma(self._writer, "journal_mode=WAL")
        self._reader = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        conn.row_factory = sqlite3.Row
        for pragma in ("foreign_keys=ON", "busy_timeout=5000", "synchronous=NORMAL"):
            await _pragma(conn, pragma)
        return conn

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ the one door for writes

    @asynccontextmanager
    async def write(self) -> AsyncIterator[WriteConnection]:
        """Hold the write lock inside one transaction; commit on success, roll back on anything."""
        conn = self._require(self._writer)
        async with self._lock:
            try:
                # BEGIN is inside the try: a task cancelled while BEGIN is on its way to the
                # connection's thread still runs it there, and must roll it back, or every later
                # write fails with "cannot start a transaction within a transaction".
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
            except BaseException:
                # aiosqlite runs requests in order on one thread, so this rollback comes after a
                # BEGIN still in flight; with no transaction open it is a no-op. Shielded so a
                # second cancellation cannot interrupt the rollback itself.
                await asyncio.shield(conn.rollback())
                raise
            else:
                await asyncio.shield(conn.commit())

    async def execute_write(self, sql: str, params: Params = ()) -> int:
        """One statement in its own transaction; returns the number of rows it changed."""
        async with self.write() as conn:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

    # ------------------------------------------------------------ reads

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._read_lock:
            async with self._require(self._reader).execute(sql, params) as cursor:
                return list(await cursor.fetchall())

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def table_names(self) -> list[str]:
        rows = await self.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
        return [r["name"] for r in rows]

    async def columns(self, table: str) -> list[str]:
        if not table.isidentifier():
            raise ValueError(f"not a table name: {table!r}")
        rows = await self.fetchall(f"PRAGMA table_info({table})")
        return [r["name"] for r in rows]

    @staticmethod
    def _require(conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise RuntimeError("Database is not connected; call `await db.connect()` first")
        return conn


async def _pragma(conn: aiosqlite.Connection, pragma: str) -> None:
    # A statement left un-stepped keeps its lock: always drain and close the cursor.
    async with conn.execute(f"PRAGMA {pragma}") as cursor:
        await cursor.fetchall()


def placeholders(values: Iterable[Any]) -> str:
    return ", ".join("?" for _ in values)
