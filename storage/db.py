"""One SQLite database in WAL mode, with one door for every write.

Each database operation is one call into a thread that owns its SQLite connection, so a statement
costs one hop off the event loop and back (the statement, its rows and its cursor's close travel
together; the hop is a ``storage.lane.Lane``: one asyncio future, results handed back in
batches). Writes go to one writer thread, only inside ``Database.write()``, under a lock, in a
transaction that ``BEGIN IMMEDIATE`` opens together with its first statement. Reads go to a small
pool of reader threads, each with its own connection in autocommit mode: every read sees what was
committed when it began (WAL lets readers run beside the writer and beside each other), and no
read waits for another. A write that raises — cancellation included — is rolled back, so a
cancelled task never leaves half a change behind.

A read marked ``quick`` (a lookup of a few rows by an index, on a message's path) runs on the
event loop's own read-only connection instead: ~5 µs, where a hop to a reader thread and back
costs ~110 µs of CPU and as long again in wall time (issue 15). It never waits there: that
connection's busy timeout is zero, so a read SQLite cannot start at once (a WAL recovery, a
checkpoint resetting the log) goes to a reader thread, which waits as usual.

``storage.pg.PostgresDatabase`` is the same interface on PostgreSQL; repositories see only what the
protocols below describe (rows by name and by position, a cursor's ``rowcount``), and write SQL
both understand (``storage/dialect.py``). New rows' ids come from ``RETURNING``, not ``lastrowid``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from storage.dialect import Dialect
from storage.lane import Lane

Params = Sequence[Any] | dict[str, Any]
T = TypeVar("T")


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
    async def later(self, sql: str, params: Params = ..., /) -> None:
        """A statement whose result nobody reads, in this transaction: on SQLite it travels to
        the writer with the transaction's next statement (or its commit), in the same hop, so
        the write lock is not held across an extra hop; an error raises there and rolls back.
        On PostgreSQL it runs at once."""
    async def last(self, sql: str, params: Params = ..., /) -> Cursor:
        """The transaction's last statement, whose rows are read after it: on SQLite it runs
        with the commit (and any ``later`` statements before it) in one hop, so the write lock
        is not held across another hop for the commit; nothing may follow it in the
        transaction. On PostgreSQL it runs at once and the transaction commits as usual."""


class DatabaseUnavailable(ConnectionError):
    """PostgreSQL could not be reached (or refused keel) when the database was opened."""


def is_postgres_url(target: object) -> bool:
    """``KEEL_DATABASE_URL`` names PostgreSQL (checked here, so SQLite never imports psycopg)."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def now_iso() -> str:
    """UTC now as ISO-8601 with microseconds (``2026-12-01T06:25:38.147880Z``); stored times
    compare correctly as text."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    # isoformat of a UTC time always ends "+00:00"; a third quicker than strftime
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


READERS = 3
"""Reader threads (each with its own connection): reads in parallel, up to this many at once."""
WAKE_AT_ONCE = 4
"""Callers of one group commit resumed per event-loop iteration."""
PRAGMAS = ("foreign_keys=ON", "busy_timeout=5000", "synchronous=NORMAL")


class FetchedCursor:
    """A finished statement: its rows (already fetched, in the thread that ran it) and rowcount."""

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Row]:
        return list(self._rows)


class _Pending:
    """What ``execute`` returns: await it, or use it as ``async with`` (nothing left to close)."""

    def __init__(self, future: asyncio.Future[FetchedCursor]) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, FetchedCursor]:
        return self._future.__await__()

    async def __aenter__(self) -> FetchedCursor:
        return await self._future

    async def __aexit__(self, *exc: object) -> None:
        return None


def _run(conn: sqlite3.Connection, sql: str, params: Params, *, begin: bool = False,
         many: bool = False) -> FetchedCursor:
    """One statement to completion, in the thread that owns ``conn``."""
    if begin and not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    cursor = conn.executemany(sql, params) if many else conn.execute(sql, params)
    try:
        rows = cursor.fetchall()
        return FetchedCursor(rows, cursor.rowcount)
    finally:
        cursor.close()


def _run_batch(conn: sqlite3.Connection, writes: list[Sequence[tuple[str, Params]]]
               ) -> list[FetchedCursor | Exception]:
    """The writes of several callers (each a few statements) in one transaction, each in its
    own savepoint: for each, its last statement's cursor, or the error that undid it alone."""
    results: list[FetchedCursor | Exception] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statements in writes:
            conn.execute("SAVEPOINT one")
            try:
                cursor = FetchedCursor([], 0)
                for sql, params in statements:
                    cursor = _run(conn, sql, params)
                results.append(cursor)
            except Exception as exc:
                conn.execute("ROLLBACK TO one")
                results.append(exc)
            conn.execute("RELEASE one")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return results


def _run_queued(conn: sqlite3.Connection, earlier: Sequence[tuple[str, Params]]) -> None:
    """``later`` statements, in order (the first opens the transaction)."""
    for queued, queued_params in earlier:
        _run(conn, queued, queued_params, begin=True)


def _run_after(conn: sqlite3.Connection, earlier: Sequence[tuple[str, Params]], sql: str,
               params: Params, *, many: bool = False) -> FetchedCursor:
    """``later`` statements, then this one, in one hop."""
    _run_queued(conn, earlier)
    return _run(conn, sql, params, begin=True, many=many)


def _run_last(conn: sqlite3.Connection, earlier: Sequence[tuple[str, Params]], sql: str,
              params: Params) -> FetchedCursor:
    """``later`` statements, this one, and the commit, in one hop; rolled back if one fails."""
    try:
        cursor = _run_after(conn, earlier, sql, params)
        conn.commit()
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return cursor


def _finish(conn: sqlite3.Connection, commit: bool,
            earlier: Sequence[tuple[str, Params]] = ()) -> None:
    """Commit (after any ``later`` statements) or roll back. A commit that fails is rolled back
    in the same call: the write lock may already serve the next transaction, whose statements
    queue behind this one on the writer thread, so nothing may be left open for them."""
    try:
        if commit:
            _run_queued(conn, earlier)
        if conn.in_transaction:
            if commit:
                conn.commit()
            else:
                conn.rollback()
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


class _WriteConnection:
    """The writer's connection inside one transaction: every statement is one hop to its thread;
    the first also opens the transaction (``BEGIN IMMEDIATE``) in the same hop."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.queued: list[tuple[str, Params]] = []
        self.ended = False
        """``last`` ran: the transaction is over (committed, or rolled back where it failed)."""
        self.released = False
        """The write lock was let go (``release``)."""

    def release(self) -> None:
        """Let the write lock go, once: after the transaction's final hop was handed to the
        writer thread. The thread runs its work in order, so the next transaction's statements
        run after that hop whatever the event loop does meanwhile: the lock is not held while
        the loop gets round to resuming this caller (under a burst, ~10 ms a transaction)."""
        if not self.released:
            self.released = True
            self._db._lock.release()

    def _take_queued(self) -> list[tuple[str, Params]]:
        if self.ended:
            raise RuntimeError("a statement after last(): the transaction is over")
        queued, self.queued = self.queued, []
        return queued

    def execute(self, sql: str, params: Params = (), /) -> _Pending:
        return _Pending(self._db._on_writer(_run_after, self._take_queued(), sql, params))

    def executemany(self, sql: str, params: Iterable[Params], /) -> _Pending:
        return _Pending(self._db._on_writer(_run_after, self._take_queued(), sql, list(params),
                                            many=True))

    async def later(self, sql: str, params: Params = (), /) -> None:
        if self.ended:
            raise RuntimeError("a statement after last(): the transaction is over")
        self.queued.append((sql, params))

    async def last(self, sql: str, params: Params = (), /) -> FetchedCursor:
        queued = self._take_queued()
        self.ended = True
        job = self._db._on_writer(_run_last, queued, sql, params)
        self.release()  # it commits, or rolls back, on its own
        # shielded like the commit it carries: a cancellation does not stop it half-way
        return await asyncio.shield(job)


async def _wake(batch: list[tuple[Any, asyncio.Future[FetchedCursor]]],
                results: list[FetchedCursor | Exception]) -> None:
    """Give a group commit's callers their results, ``WAKE_AT_ONCE`` per loop iteration: a batch
    of hundreds woken into one iteration would stall everything else on the loop."""
    for n, ((_, future), result) in enumerate(zip(batch, results, strict=True), 1):
        if not future.done():
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if n % WAKE_AT_ONCE == 0 and n < len(batch):
            await asyncio.sleep(0)


class Database:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path | str, *, readers: int = READERS) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self._readers = readers
        self._writer: sqlite3.Connection | None = None
        self._write_thread: Lane | None = None
        self._read_threads: Lane | None = None
        self._read_conns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._lock = asyncio.Lock()
        self._queued: list[tuple[Sequence[tuple[str, Params]],
                                 asyncio.Future[FetchedCursor]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._waking: set[asyncio.Task[None]] = set()
        self._here: sqlite3.Connection | None = None
        """The event loop's own read-only connection, for ``quick`` reads (None: every read goes
        to a reader thread)."""
        self._here_thread = 0
        self.inline: Callable[[], bool] = lambda: True
        """Whether ``quick`` reads run on the loop now. ``keel run`` says no while a burst is in
        flight: a read on the loop gives the GIL away inside SQLite and waits to get it back
        behind the other threads (70-200 µs a read at 1,000 chats, ~5 µs idle), and a task's
        step that makes several of them stopped the loop: 38 stalls over 50 ms in two 1,000-chat
        bursts, against 6 with every read in a thread (issue 15)."""

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
        self._write_thread = Lane(1, "keel-db-write")
        self._writer = await self._write_thread.submit(self._connect, True)
        self._read_threads = Lane(self._readers, "keel-db-read")
        if isinstance(self.path, Path):  # ":memory:" is a database of its own per connection
            here = self._connect()
            here.execute("PRAGMA busy_timeout=0").fetchall()  # never wait on the event loop
            here.execute("PRAGMA query_only=ON").fetchall()
            self._here, self._here_thread = here, threading.get_ident()

    def _connect(self, writer: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        for pragma in (("journal_mode=WAL",) if writer else ()) + PRAGMAS:
            conn.execute(f"PRAGMA {pragma}").fetchall()
        return conn

    async def close(self) -> None:
        for pool in (self._read_threads, self._write_thread):
            if pool is not None:
                await asyncio.to_thread(pool.shutdown)
        self._read_threads = self._write_thread = None
        here = [self._here] if self._here is not None else []
        for conn in [*self._read_conns, *([self._writer] if self._writer else []), *here]:
            conn.close()
        self._read_conns = []
        self._writer = self._here = None

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ the one door for writes

    @asynccontextmanager
    async def write(self) -> AsyncIterator[WriteConnection]:
        """Hold the write lock inside one transaction; commit on success, roll back on anything."""
        self._require(self._writer)
        await self._lock.acquire()
        conn = _WriteConnection(self)
        try:
            try:
                yield conn
            except BaseException:
                if not conn.released:
                    # The writer thread runs requests in order, so this comes after any
                    # statement still on its way there (a cancelled task's statement still
                    # runs, or never starts); with no transaction open it does nothing.
                    # Shielded so a second cancellation cannot interrupt the rollback itself.
                    # (After ``last`` the transaction ended on its own: nothing to undo.)
                    await asyncio.shield(self._on_writer(_finish, False))
                raise
            if conn.ended:  # committed with its last statement
                return
            # statements queued by ``later`` and never followed by another go with the commit;
            # if one fails, the transaction is rolled back (in the same hop) and the error raised
            commit = self._on_writer(_finish, True, conn._take_queued())
            conn.release()
            await asyncio.shield(commit)
        finally:
            conn.release()

    def _on_writer(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        conn = self._require(self._writer)
        assert self._write_thread is not None
        return self._write_thread.submit(fn, conn, *args, **kwargs)

    async def execute_write(self, sql: str, params: Params = ()) -> int:
        """One statement, committed before this returns; returns the number of rows it changed.

        On SQLite, single statements that are waiting together are committed together (group
        commit): one turn of the write lock and one hop to the writer thread for all of them,
        each statement in its own savepoint, so one that fails is undone alone and raises to
        its caller only. A statement whose caller was cancelled before its batch left is not
        run."""
        return (await self.write_many([(sql, params)])).rowcount

    async def write_many(self, statements: Sequence[tuple[str, Params]]) -> Cursor:
        """A short transaction that reads nothing back before its last statement: its statements
        in order, committed before this returns; returns the last one's cursor (its rows, its
        rowcount). On SQLite it joins the group commit of ``execute_write``: callers waiting
        together share one turn of the write lock and one hop to the writer, each write in a
        savepoint of its own (one that fails is undone alone and raises to its caller only).
        That turn of the lock is what a write costs when the event loop is busy: a ``write()``
        holds the lock across a loop iteration for every hop, a group commit once for all."""
        if not statements:
            raise ValueError("write_many needs at least one statement")
        if self.dialect != "sqlite":
            async with self.write() as conn:
                for sql, params in statements[:-1]:
                    await conn.later(sql, params)
                return await conn.last(*statements[-1])
        self._require(self._writer)
        done: asyncio.Future[FetchedCursor] = asyncio.get_running_loop().create_future()
        self._queued.append((list(statements), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="keel-db-group-commit")
        return await done

    async def _flush(self) -> None:
        """Commit the statements queued so far in one transaction, then let the lock go (a
        ``write()`` waiting for it is not starved); statements queued meanwhile get another
        turn."""
        while self._queued:
            async with self._lock:
                batch = [item for item in self._queued if not item[1].cancelled()]
                self._queued = []
                if not batch:
                    continue
                # handed to the writer thread under the lock, awaited after it: the batch is
                # one hop that commits or rolls back on its own (see ``release``)
                job = self._on_writer(_run_batch, [statements for statements, _ in batch])
            try:
                results = await asyncio.shield(job)
            except BaseException as exc:  # the commit itself failed: nothing was written
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception)
                                             else RuntimeError("write interrupted"))
                if not isinstance(exc, Exception):
                    raise
                continue
            # the next batch goes to the writer now; its callers are woken meanwhile by a
            # task of their own (waking them here, a few an iteration, held every later write
            # back for as many loop iterations as this batch had callers: ~3 s between a run's
            # start and its model call in a second 1,000-chat burst, issue 15)
            waking = asyncio.create_task(_wake(batch, results), name="keel-db-wake")
            self._waking.add(waking)
            waking.add_done_callback(self._waking.discard)

    # ------------------------------------------------------------ reads

    async def fetchone(self, sql: str, params: Params = (), *, quick: bool = False) -> Row | None:
        rows = await self.fetchall(sql, params, quick=quick)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Params = (), *, quick: bool = False) -> list[Row]:
        """The statement's rows. ``quick``: a lookup of a few rows by an index, read on the
        event loop's own connection when SQLite can start it at once (see the module's text);
        anything longer belongs in a reader thread, where it does not stop the loop."""
        if self._read_threads is None:
            raise RuntimeError("Database is not connected; call `await db.connect()` first")
        if quick and self._here is not None and threading.get_ident() == self._here_thread \
                and self.inline():
            try:
                return _run(self._here, sql, params)._rows
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
        cursor = await self._read_threads.submit(self._read, sql, params)
        return cursor._rows

    def _read(self, sql: str, params: Params) -> FetchedCursor:
        """In a reader thread, on that thread's own connection (opened on its first read)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            self._read_conns.append(conn)
        return _run(conn, sql, params)

    async def fetchval(self, sql: str, params: Params = (), *, quick: bool = False) -> Any:
        row = await self.fetchone(sql, params, quick=quick)
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
    def _require(conn: sqlite3.Connection | None) -> sqlite3.Connection:
        if conn is None:
            raise RuntimeError("Database is not connected; call `await db.connect()` first")
        return conn


def placeholders(values: Iterable[Any]) -> str:
    return ", ".join("?" for _ in values)
