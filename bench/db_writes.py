"""``python -m bench.db_writes [--pg URL] [--n N]``: write transactions per second, SQLite beside
PostgreSQL, for docs/decisions/0001-postgresql-and-procrastinate.md.

Three shapes, each run in 1 and in 2 OS processes writing to one store at once:
- ``insert``: one small row per transaction (an inbox update), ``Database.execute_write``;
- ``hold``: a ledger hold and its settlement (two transactions; the hold reads the day's spend
  and holds inside its transaction): what every model call costs in writes;
- on PostgreSQL also ``insert`` without keel's advisory write lock, to price the lock itself.

Each PostgreSQL run uses a schema of its own, dropped afterwards. Runs are interleaved; figures are
medians with the range.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from storage.db import Database, WriteConnection
from storage.ledger import DailyCaps, Hold, Ledger
from storage.migrations import migrate
from storage.pg import PgWriteConnection, PostgresDatabase, create_schema, drop_schema
from storage.usage import UsageDelta

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
CAPS = DailyCaps(total_usd=1e9, per_user_usd=1e9)


class UnlockedPostgres(PostgresDatabase):
    """PostgreSQL writes without the advisory lock: what the lock costs, never for keel."""

    @asynccontextmanager
    async def write(self) -> AsyncIterator[WriteConnection]:
        async with self._lock, self._require_pool().connection() as conn, conn.transaction():
            yield PgWriteConnection(conn)


def _make(kind: str, target: str) -> Database:
    if kind == "sqlite":
        return Database(target)
    schema, url = target.split("|", 1)
    cls = UnlockedPostgres if kind == "pg-unlocked" else PostgresDatabase
    return cls(url, schema=schema)


async def _work(kind: str, target: str, shape: str, n: int, worker: int) -> None:
    db = _make(kind, target)
    await db.connect()
    try:
        if shape == "insert":
            for i in range(n):
                await db.execute_write(
                    "INSERT INTO inbox (update_id, payload, received_at) VALUES (?, '{}', 'x')",
                    (worker * 10_000_000 + i,))
        else:
            ledger = Ledger(db)
            for i in range(n):
                got = await ledger.hold(run_id=f"w{worker}-{i}", agent="a", user_id=worker + 1,
                                        schedule=None, caps=CAPS, want_usd=0.01, min_usd=0.0)
                assert isinstance(got, Hold)
                await ledger.settle(got, UsageDelta(cost_usd=0.001))
    finally:
        await db.close()


def _process(kind: str, target: str, shape: str, n: int, worker: int, start: Any) -> None:
    start.wait()
    asyncio.run(_work(kind, target, shape, n, worker))


async def _prepare(kind: str, pg_url: str, folder: Path) -> tuple[str, Callable[[], Any]]:
    if kind == "sqlite":
        path = folder / f"{uuid.uuid4().hex}.sqlite3"
        db = await Database.open(path)
        await db.close()
        return str(path), lambda: None
    schema = f"keel_bench_{uuid.uuid4().hex[:12]}"
    await create_schema(pg_url, schema)
    db = PostgresDatabase(pg_url, schema=schema)
    await db.connect()
    await migrate(db)
    await db.close()
    return f"{schema}|{pg_url}", lambda: asyncio.run(drop_schema(pg_url, schema))


def _measure(kind: str, shape: str, processes: int, n: int, pg_url: str) -> float:
    """Write transactions per second (a hold and its settlement count as two)."""
    with tempfile.TemporaryDirectory() as folder:
        target, cleanup = asyncio.run(_prepare(kind, pg_url, Path(folder)))
        try:
            ctx = multiprocessing.get_context("spawn")
            start = ctx.Event()
            procs = [ctx.Process(target=_process, args=(kind, target, shape, n, w, start))
                     for w in range(processes)]
            for p in procs:
                p.start()
            time.sleep(1.0)  # let every process import and connect before the clock starts
            began = time.perf_counter()
            start.set()
            for p in procs:
                p.join()
            elapsed = time.perf_counter() - began
            if any(p.exitcode for p in procs):
                raise RuntimeError(f"{kind} {shape}: a writer process failed")
        finally:
            cleanup()
    per_call = 2 if shape == "hold" else 1
    return processes * n * per_call / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.db_writes")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL URL (default: %(default)s)")
    parser.add_argument("--n", type=int, default=1000, help="transactions per process")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [("sqlite", "insert"), ("postgresql", "insert"), ("pg-unlocked", "insert"),
            ("sqlite", "hold"), ("postgresql", "hold")]
    runs: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so a busy moment of the machine hits them all
        for kind, shape in rows:
            for processes in (1, 2):
                runs.setdefault((kind, shape, processes), []).append(
                    _measure(kind, shape, processes, args.n, args.pg))
    print(f"{'database':<12} {'shape':<7} {'1 process':>12} {'2 processes':>12}"
          f"  (write tx/s, median of {args.repeats}; min-max)")
    for kind, shape in rows:
        cells = []
        for processes in (1, 2):
            got = runs[(kind, shape, processes)]
            cells.append(f"{statistics.median(got):>7,.0f} ({min(got):,.0f}-{max(got):,.0f})")
        print(f"{kind:<12} {shape:<7} {cells[0]:>22} {cells[1]:>22}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
