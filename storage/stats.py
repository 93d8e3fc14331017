"""What keel stores and how big it is: rows per table, the database (SQLite: the file and its WAL;
PostgreSQL: keel's tables with their indexes), the traces."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from storage.db import Database
from storage.pg import PostgresDatabase


@dataclass(frozen=True, kw_only=True)
class StorageStats:
    database: str
    rows: dict[str, int]
    database_bytes: int
    wal_bytes: int
    traces_dir: str
    trace_days: int
    trace_files: int
    trace_bytes: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        width = max((len(t) for t in self.rows), default=5)
        size = (f"  tables and indexes {_size(self.database_bytes)}" if "://" in self.database
                else f"  file {_size(self.database_bytes)}, WAL {_size(self.wal_bytes)}")
        lines = [f"database: {self.database}", size]
        lines += [f"  {table:<{width}}  {count:>10,}" for table, count in self.rows.items()]
        lines += [f"traces: {self.traces_dir}",
                  f"  {self.trace_files:,} file(s) in {self.trace_days} day(s), "
                  f"{_size(self.trace_bytes)}"]
        return "\n".join(lines)


async def storage_stats(db: Database, db_path: Path, traces_dir: Path) -> StorageStats:
    """``db_path``: the SQLite file (unused on PostgreSQL, where the URL, password left out,
    names the database)."""
    rows: dict[str, int] = {}
    for table in await db.table_names():
        if table.isidentifier():  # names come from the catalog; never quoted input
            rows[table] = int(await db.fetchval(f"SELECT count(*) FROM {table}") or 0)  # noqa: S608
    days, files, size = _walk(traces_dir)
    if isinstance(db, PostgresDatabase):
        where, db_bytes, wal_bytes = str(db), await db.size_bytes(), 0
    else:
        where, db_bytes = str(db_path), _file_size(db_path)
        wal_bytes = _file_size(Path(f"{db_path}-wal"))
    return StorageStats(database=where, rows=rows, database_bytes=db_bytes, wal_bytes=wal_bytes,
                        traces_dir=str(traces_dir), trace_days=days, trace_files=files,
                        trace_bytes=size)


def _walk(root: Path) -> tuple[int, int, int]:
    days = files = size = 0
    if not root.is_dir():
        return 0, 0, 0
    for folder in os.scandir(root):
        if not folder.is_dir():
            continue
        days += 1
        for entry in os.scandir(folder.path):
            if entry.is_file():
                files += 1
                size += entry.stat().st_size
    return days, files, size


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
