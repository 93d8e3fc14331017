"""Move an existing SQLite install to PostgreSQL (``keel db copy``).

Both databases are first brought to this keel's schema (``migrate()`` on each: the same
migrations, so the same tables and columns). Then, in one PostgreSQL transaction:

- keel's write lock is taken (storage/pg.py), so a keel process started meanwhile waits;
- the target must hold no keel rows — unless ``force``, which empties keel's tables first
  (procrastinate's, if any, are left alone);
- every table is copied from one read snapshot of the SQLite file, parents before children
  (foreign keys), ``batch`` rows at a time through ``COPY … FROM STDIN``: ids are copied as they
  are, so every reference between rows stays right;
- every identity column's sequence is set to the copied maximum, so the next row PostgreSQL numbers
  continues after it instead of colliding with a copied id.

A failure anywhere rolls the whole copy back: the target is left as it was. After the commit,
``verify()`` counts every table on both sides and checks each sequence again, on fresh reads.

Why not through ``Database.write()``: that door runs one statement at a time; ``COPY`` moves rows
tens of times faster and is PostgreSQL's own bulk path. The copy still takes the door's lock.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
from psycopg import sql as pgsql

from storage.db import Database
from storage.migrations import MIGRATIONS, migrate
from storage.pg import KEEL_LOCK_CLASS, PostgresDatabase, redact

DEFAULT_BATCH = 1000
"""Rows read from SQLite and written to PostgreSQL at a time."""
_BOOKKEEPING = "schema_migrations"  # each side's own record of its migrations; not copied


class CopyRefused(Exception):
    """The copy cannot start (or was undone); the message says why and what to do."""


@dataclass(frozen=True)
class TableCopied:
    name: str
    rows: int


@dataclass
class CopyReport:
    source: str
    target: str
    migrated_source: list[str] = field(default_factory=list)
    """Migrations applied to the SQLite file before copying (what `keel run` would apply)."""
    tables: list[TableCopied] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    """Tables of the target that held rows and were emptied first (``force``)."""
    identities: dict[str, int] = field(default_factory=dict)
    """``table.column`` → the last id copied; PostgreSQL numbers new rows after it."""

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


Progress = Callable[[TableCopied], None]


async def copy_sqlite_to_postgres(source: Path, target_url: str, *, force: bool = False,
                                  batch: int = DEFAULT_BATCH,
                                  progress: Progress | None = None) -> CopyReport:
    """Copy keel's SQLite database at ``source`` into the PostgreSQL database at ``target_url``
    (its current schema), then verify it. Raises ``CopyRefused`` with the reason."""
    if batch < 1:
        raise CopyRefused("the batch size must be at least 1")
    source = await asyncio.to_thread(source.resolve)
    if not await asyncio.to_thread(source.is_file):
        raise CopyRefused(f"no SQLite database at {source}")
    report = CopyReport(source=str(source), target=redact(target_url))
    report.migrated_source = await _migrate_source(source)
    target = PostgresDatabase(target_url, pool_max=2)
    await target.connect()  # DatabaseUnavailable says why, password left out
    try:
        await migrate(target)
    finally:
        await target.close()
    async with _snapshot(source) as snapshot:
        tables = await _tables_in_order(snapshot)
        async with await psycopg.AsyncConnection.connect(target_url) as conn:
            try:
                await _copy_all(snapshot, conn, tables, report, force=force, batch=batch,
                                progress=progress)
            except psycopg.Error as exc:
                await conn.rollback()
                raise CopyRefused(f"the copy failed and was undone (the target is as it was): "
                                  f"{_first_line(exc)}") from None
            await conn.commit()
        expected = {name: await _count_sqlite(snapshot, name) for name in tables}
    problems = await verify(target_url, expected)
    if problems:
        raise CopyRefused("the copy was committed but does not match the source: "
                          + "; ".join(problems))
    return report


async def _migrate_source(source: Path) -> list[str]:
    db = Database(source)
    await db.connect()
    try:
        applied = {r["name"] for r in await db.fetchall(
            "SELECT name FROM schema_migrations")} if "schema_migrations" in (
            await db.table_names()) else set()
        unknown = sorted(applied - {m.name for m in MIGRATIONS})
        if unknown:
            raise CopyRefused(f"{source} was migrated by a newer keel ({', '.join(unknown)}); "
                              "copy it with that version")
        return await migrate(db)
    finally:
        await db.close()


@asynccontextmanager
async def _snapshot(source: Path) -> AsyncIterator[aiosqlite.Connection]:
    """A read-only connection inside one read transaction: every table as of one moment, even if
    something still writes to the file."""
    conn = await aiosqlite.connect(f"{source.as_uri()}?mode=ro", uri=True,
                                   isolation_level=None)
    try:
        await conn.execute("BEGIN")
        yield conn
    finally:
        try:
            await conn.execute("ROLLBACK")
        finally:
            await conn.close()


async def _tables_in_order(conn: aiosqlite.Connection) -> list[str]:
    """keel's tables, each after the tables its foreign keys point to."""
    async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                            " AND name NOT LIKE 'sqlite_%' ORDER BY name") as cursor:
        names = [str(r[0]) for r in await cursor.fetchall() if r[0] != _BOOKKEEPING]
    graph: dict[str, set[str]] = {}
    for name in names:
        _identifier(name)
        async with conn.execute(f"PRAGMA foreign_key_list({name})") as cursor:
            graph[name] = {str(r[2]) for r in await cursor.fetchall() if r[2] != name}
    try:
        return [n for n in TopologicalSorter(graph).static_order() if n in graph]
    except CycleError as exc:  # no keel migration makes one; say so rather than guess an order
        raise CopyRefused(f"tables refer to each other in a cycle: {exc.args[1]}") from None


async def _copy_all(snapshot: aiosqlite.Connection, conn: psycopg.AsyncConnection[Any],
                    tables: list[str], report: CopyReport, *, force: bool, batch: int,
                    progress: Progress | None) -> None:
    schema = await _scalar(conn, "SELECT current_schema()")
    # keel's own write lock (storage/pg.py: the schema's CRC): keel processes wait for the copy
    await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                       (KEEL_LOCK_CLASS, zlib.crc32(str(schema).encode()) - 2**31))
    target_columns = await _pg_columns(conn)
    for name in tables:
        if name not in target_columns:
            raise CopyRefused(f"table {name!r} is in the SQLite database but not in the target")
    holding = [name for name in tables
               if await _scalar(conn, pgsql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
                   pgsql.Identifier(name)))]
    if holding and not force:
        raise CopyRefused(f"the target already holds keel data ({', '.join(holding)}); copy into "
                          "an empty database, or pass --force to replace what it holds")
    if holding:  # all of keel's tables at once: PostgreSQL refuses to empty a referenced one alone
        await conn.execute(pgsql.SQL("TRUNCATE {}").format(
            pgsql.SQL(", ").join(pgsql.Identifier(n) for n in tables)))
        report.emptied = holding
    for name in tables:
        columns = await _sqlite_columns(snapshot, name)
        if set(columns) != set(target_columns[name]):
            raise CopyRefused(f"table {name!r} has columns {sorted(columns)} in SQLite but "
                              f"{sorted(target_columns[name])} in the target")
        copied = TableCopied(name, await _copy_table(snapshot, conn, name, columns, batch))
        report.tables.append(copied)
        if progress is not None:
            progress(copied)
    report.identities = await _continue_identities(conn, tables)


async def _copy_table(snapshot: aiosqlite.Connection, conn: psycopg.AsyncConnection[Any],
                      name: str, columns: Sequence[str], batch: int) -> int:
    select = "SELECT {} FROM {}".format(  # noqa: S608 -- names checked by _identifier
        ", ".join(f'"{c}"' for c in columns), f'"{name}"')
    statement = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
        pgsql.Identifier(name), pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns))
    rows = 0
    async with conn.cursor() as cursor, cursor.copy(statement) as copy:
        async with snapshot.execute(select) as source:
            while chunk := list(await source.fetchmany(batch)):
                for row in chunk:
                    await copy.write_row(tuple(row))
                rows += len(chunk)
    return rows


async def _continue_identities(conn: psycopg.AsyncConnection[Any],
                               tables: list[str]) -> dict[str, int]:
    """Set the copied tables' identity sequences past the copied ids; ``table.column`` → max id
    (other tables in the schema, procrastinate's, are not keel's to touch)."""
    out: dict[str, int] = {}
    cursor = await conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
        " ORDER BY table_name, column_name")
    for table, column in await cursor.fetchall():
        if table not in tables or not str(column).isidentifier():
            continue
        top = await _scalar(conn, pgsql.SQL("SELECT MAX({}) FROM {}").format(
            pgsql.Identifier(column), pgsql.Identifier(table)))
        # setval(…, max, true): the next id is max + 1; an empty table starts at 1 again
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE(%s, 1), %s)",
            (_quoted(table), column, top, top is not None))
        if top is not None:
            out[f"{table}.{column}"] = int(top)
    return out


async def verify(target_url: str, expected: dict[str, int]) -> list[str]:
    """Problems found on fresh reads of the target: a table whose row count is not ``expected``,
    an identity sequence that would hand out an id already taken. Empty: all is well."""
    problems: list[str] = []
    async with await psycopg.AsyncConnection.connect(target_url, autocommit=True) as conn:
        for name, count in expected.items():
            found = await _scalar(conn, pgsql.SQL("SELECT COUNT(*) FROM {}").format(
                pgsql.Identifier(name)))
            if found != count:
                problems.append(f"{name}: {found} rows, {count} in the source")
        cursor = await conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND is_identity = 'YES'")
        for table, column in await cursor.fetchall():
            if table not in expected:
                continue
            top = await _scalar(conn, pgsql.SQL("SELECT MAX({}) FROM {}").format(
                pgsql.Identifier(column), pgsql.Identifier(table)))
            last = await _scalar(conn, "SELECT pg_sequence_last_value("
                                 "pg_get_serial_sequence(%s, %s)::regclass)",
                                 (_quoted(table), column))
            if top is not None and (last is None or last < top):
                problems.append(f"{table}.{column}: the next id would be {(last or 0) + 1}, "
                                f"but {top} is taken")
    return problems


async def _pg_columns(conn: psycopg.AsyncConnection[Any]) -> dict[str, list[str]]:
    cursor = await conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position")
    out: dict[str, list[str]] = {}
    for table, column in await cursor.fetchall():
        out.setdefault(str(table), []).append(str(column))
    return out


async def _sqlite_columns(conn: aiosqlite.Connection, table: str) -> list[str]:
    async with conn.execute(f"PRAGMA table_info({_identifier(table)})") as cursor:
        return [_identifier(str(r[1])) for r in await cursor.fetchall()]


async def _count_sqlite(conn: aiosqlite.Connection, table: str) -> int:
    sql = f'SELECT COUNT(*) FROM "{_identifier(table)}"'  # noqa: S608 -- a checked catalog name
    async with conn.execute(sql) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _scalar(conn: psycopg.AsyncConnection[Any], query: str | pgsql.Composed,
                  params: Sequence[Any] = ()) -> Any:
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return None if row is None else row[0]


def _identifier(name: str) -> str:
    """A table or column name from SQLite's catalog, safe to put between double quotes."""
    if not name.isidentifier():
        raise CopyRefused(f"not a name keel gives a table or column: {name!r}")
    return name


def _quoted(name: str) -> str:
    """A table name as ``pg_get_serial_sequence`` reads it (it parses its argument as SQL)."""
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
