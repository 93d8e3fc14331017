"""keel's storage on PostgreSQL: ``storage.db.Database``'s interface over a psycopg 3 pool.

Reads take any pooled connection (autocommit: each query sees what is committed). Writes keep
SQLite's one guarantee the repositories rely on — one write transaction at a time, so a check and
the write it guards (the ledger's daily caps) cannot interleave with another's — across every
process sharing the database: each write transaction starts by taking one transaction-level
advisory lock, ``pg_advisory_xact_lock(KEEL_LOCK_CLASS, <schema>)``, held until it commits or rolls
back. Isolation stays READ COMMITTED, so each statement after the lock sees every write committed
before it. (Why not SERIALIZABLE and a retry: ``write()`` yields to the caller's code, which cannot
be re-run behind its back; docs/decisions/0001-postgresql-and-procrastinate.md has the figures.)

Inside one process writers queue on an ``asyncio.Lock`` first, so waiting writers do not each hold
a pooled connection. A write that raises — cancellation included — is rolled back; the commit and
the rollback themselves run to the end even if the task is cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql
from psycopg.pq import TransactionStatus
from psycopg.rows import RowMaker
from psycopg_pool import AsyncConnectionPool

from storage.db import (
    Database,
    DatabaseUnavailable,
    FetchedCursor,
    Params,
    Row,
    WriteConnection,
)
from storage.db import (
    is_postgres_url as is_postgres_url,  # (defined there: SQLite needs no psycopg)
)
from storage.dialect import Dialect, pyformat

log = logging.getLogger(__name__)

KEEL_LOCK_CLASS = 0x6B65656C
"""First key of keel's advisory write lock ("keel" in ASCII); the second is the schema's CRC."""
CONNECT_TIMEOUT_S = 10
DEFAULT_POOL_MAX = 10

T = TypeVar("T")


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PgRow:
    """A row by column name (first of equal names, as ``sqlite3.Row``) or by position."""

    __slots__ = ("_names", "_values")

    def __init__(self, values: Sequence[Any], names: dict[str, int]) -> None:
        self._values = values
        self._names = names

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key: int | str, /) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key.lower()]]
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PgRow) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self._values))

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._names, self._values, strict=False))!r})"


def _rows(cursor: psycopg.AsyncCursor[Any]) -> RowMaker[PgRow]:
    names: dict[str, int] = {}
    for i, column in enumerate(cursor.description or ()):
        names.setdefault(column.name.lower(), i)

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(values, names)

    return make


def _params(params: Params) -> Sequence[Any]:
    if isinstance(params, dict):
        raise TypeError("keel's SQL uses ? placeholders with a sequence of parameters")
    return params


class PgCursor:
    def __init__(self, cursor: psycopg.AsyncCursor[PgRow]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    async def fetchone(self) -> Row | None:
        if self._cursor.description is None:  # no result set: as sqlite3, nothing to fetch
            return None
        return await self._cursor.fetchone()

    async def fetchall(self) -> list[Row]:
        if self._cursor.description is None:
            return []
        return list(await self._cursor.fetchall())

    async def close(self) -> None:
        await self._cursor.close()


class PgResult:
    """``await conn.execute(...)`` or ``async with conn.execute(...) as cursor``."""

    def __init__(self, pending: Coroutine[Any, Any, PgCursor]) -> None:
        self._pending = pending
        self._cursor: PgCursor | None = None

    def __await__(self) -> Generator[Any, None, PgCursor]:
        return self._pending.__await__()

    async def __aenter__(self) -> PgCursor:
        self._cursor = await self._pending
        return self._cursor

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any, /) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class PgWriteConnection:
    """The connection inside ``PostgresDatabase.write()``; SQL as the repositories write it."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = (), /) -> PgResult:
        return PgResult(self._execute(sql, params))

    def executemany(self, sql: str, params: Iterable[Params], /) -> PgResult:
        return PgResult(self._executemany(sql, params))

    async def later(self, sql: str, params: Params = (), /) -> None:
        cursor = await self._execute(sql, params)
        await cursor.close()

    async def last(self, sql: str, params: Params = (), /) -> FetchedCursor:
        """Runs at once (the transaction commits when ``write()`` ends); its rows are read here,
        so they are there after the transaction."""
        cursor = await self._execute(sql, params)
        try:
            return FetchedCursor(list(await cursor.fetchall()), cursor.rowcount)
        finally:
            await cursor.close()

    async def _execute(self, sql: str, params: Params) -> PgCursor:
        cursor = self._conn.cursor(row_factory=_rows)
        await cursor.execute(pyformat(sql), _params(params))
        return PgCursor(cursor)

    async def _executemany(self, sql: str, params: Iterable[Params]) -> PgCursor:
        cursor = self._conn.cursor(row_factory=_rows)
        await cursor.executemany(pyformat(sql), [_params(p) for p in params])
        return PgCursor(cursor)


class PostgresDatabase(Database):
    """keel's database on PostgreSQL (``KEEL_DATABASE_URL=postgresql://…``).

    ``schema``: the schema keel's tables live in (default: the server's search path, usually
    ``public``); tests give each test its own."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, schema: str | None = None, pool_min: int = 1,
                 pool_max: int = DEFAULT_POOL_MAX) -> None:
        super().__init__(":memory:")  # the SQLite side stays unused
        self.url = url
        self.schema = schema
        self._pool_min, self._pool_max = pool_min, pool_max
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._lock_key = 0

    def __str__(self) -> str:
        return redact(self.url) + (f" (schema {self.schema})" if self.schema else "")

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                                  "application_name": "keel"}
        if self.schema is not None:
            if not self.schema.isidentifier():
                raise ValueError(f"not a schema name: {self.schema!r}")
            kwargs["options"] = f"-c search_path={self.schema}"
        return kwargs

    async def connect(self) -> None:
        kwargs = self._connect_kwargs()
        try:  # one direct connection first: its error says why, a pool's only that it timed out
            probe = await psycopg.AsyncConnection.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {redact(self.url)}: {reason}"
                " (check KEEL_DATABASE_URL and that the server is running)") from None
        async with probe:
            cursor = await probe.execute("SELECT current_schema()")
            row = await cursor.fetchone()
        schema = str(row[0]) if row and row[0] else ""
        if not schema:
            raise DatabaseUnavailable(
                f"PostgreSQL at {redact(self.url)} has no schema on its search path to create"
                " keel's tables in (create it, or set search_path)")
        # One lock per schema: two keel deployments in one database do not wait on each other.
        self._lock_key = zlib.crc32(schema.encode()) - 2**31
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self.url, min_size=self._pool_min, max_size=self._pool_max, kwargs=kwargs,
            open=False, name="keel", timeout=CONNECT_TIMEOUT_S * 3)
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _require_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise RuntimeError("Database is not connected; call `await db.connect()` first")
        return self._pool

    # ------------------------------------------------------------ the one door for writes

    @asynccontextmanager
    async def write(self) -> AsyncIterator[WriteConnection]:
        """One transaction holding keel's write lock; commit on success, roll back on anything."""
        pool = self._require_pool()
        async with self._lock, pool.connection() as conn:
            try:
                async with conn.pipeline():  # one round trip for both
                    await conn.execute("BEGIN")
                    await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                       (KEEL_LOCK_CLASS, self._lock_key))
                yield PgWriteConnection(conn)
            except BaseException:
                await _to_the_end(_rollback(conn))
                raise
            else:
                await _to_the_end(conn.execute("COMMIT"))

    # ------------------------------------------------------------ reads

    async def fetchall(self, sql: str, params: Params = (), *, quick: bool = False) -> list[Row]:
        async with self._require_pool().connection() as conn:
            cursor = conn.cursor(row_factory=_rows)
            await cursor.execute(pyformat(sql), _params(params))
            return list(await cursor.fetchall()) if cursor.description is not None else []

    async def table_names(self) -> list[str]:
        rows = await self.fetchall(
            "SELECT table_name AS name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            " ORDER BY table_name")
        return [r["name"] for r in rows]

    async def columns(self, table: str) -> list[str]:
        if not table.isidentifier():
            raise ValueError(f"not a table name: {table!r}")
        rows = await self.fetchall(
            "SELECT column_name AS name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,))
        return [r["name"] for r in rows]

    async def size_bytes(self) -> int:
        """What keel's tables (with their indexes and TOAST) take on disk."""
        value = await self.fetchval(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'")
        return int(value or 0)


async def _rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            await conn.execute("ROLLBACK")
    except psycopg.Error:
        # The connection is in no known state: closed, the pool throws it away.
        log.warning("rollback failed; closing the connection", exc_info=True)
        await conn.close()


async def _to_the_end(step: Awaitable[T]) -> T:
    """Await ``step`` to its end even if this task is cancelled meanwhile (then re-raise the
    cancellation): a commit or rollback cut off half-way leaves the connection in no known state."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() and task.cancelled():
                raise
            cancelled = True
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result


async def create_schema(url: str, schema: str) -> None:
    """Create ``schema`` if missing (tests, and ``keel db`` on a fresh database)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
            pgsql.Identifier(schema)))


async def drop_schema(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            pgsql.Identifier(schema)))
