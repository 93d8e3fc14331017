"""`keel db copy`: move an existing SQLite install to PostgreSQL (storage/copy.py does the work)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agents.config import Settings
from storage.db import is_postgres_url

if TYPE_CHECKING:
    from storage.copy import TableCopied

# storage.copy (and psycopg with it) is imported by the command only: every other keel command,
# `keel run` on SQLite above all, starts without it.
BATCH_HELP_DEFAULT = 1000
"""storage.copy.DEFAULT_BATCH, for the help text (tests/unit checks they agree)."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(db: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = db.add_parser(
        "copy", help="copy the SQLite database into PostgreSQL (moving to scale-out)",
        description="Copy keel's SQLite database (KEEL_DATA_DIR/keel.sqlite3, or --from) into "
        "PostgreSQL: every table, with its ids, in one transaction; new rows continue after the "
        "copied ids; row counts verified at the end. Both databases are migrated first. Stop keel "
        "before copying: what it writes afterwards is not copied. The target must hold no keel "
        "data unless --force.",
        epilog="The target defaults to KEEL_DATABASE_URL, which keeps the password out of the "
        "shell's history; `--to` takes a postgresql:// URL.")
    p.add_argument("--to", metavar="URL", help="postgresql://… (default: KEEL_DATABASE_URL)")
    p.add_argument("--from", dest="source", metavar="PATH", type=Path,
                   help="the SQLite file (default: KEEL_DATA_DIR/keel.sqlite3)")
    p.add_argument("--force", action="store_true",
                   help="empty keel's tables in the target first (their rows are lost)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help=f"rows read and written at a time (default {BATCH_HELP_DEFAULT})")
    p.set_defaults(handler=cmd_db_copy)


def cmd_db_copy(args: argparse.Namespace, settings: Settings) -> int:
    from storage.copy import DEFAULT_BATCH, CopyRefused, copy_sqlite_to_postgres
    from storage.pg import redact

    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH
    target = args.to or (settings.database_url.get_secret_value() if settings.database_url
                         else "")
    if not target:
        print("keel: keel db copy needs a PostgreSQL database to copy into: set "
              "KEEL_DATABASE_URL=postgresql://… or pass --to postgresql://…", file=sys.stderr)
        return EXIT_USAGE
    if not is_postgres_url(target):
        print(f"keel: --to must be a postgresql:// URL, got {target.split('://', 1)[0]!r}",
              file=sys.stderr)
        return EXIT_USAGE
    if args.batch_size < 1:
        print("keel: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    source: Path = args.source or settings.db_path
    print(f"from: {source.resolve()}", flush=True)
    print(f"to:   {redact(target)}", flush=True)

    def copied(table: TableCopied) -> None:
        print(f"  {table.name:<24} {table.rows:>10,} rows", flush=True)

    try:
        report = asyncio.run(copy_sqlite_to_postgres(
            source, target, force=args.force, batch=args.batch_size, progress=copied))
    except CopyRefused as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if report.migrated_source:
        print(f"migrated the SQLite database first: {', '.join(report.migrated_source)}")
    if report.emptied:
        print(f"emptied first (--force): {', '.join(report.emptied)}")
    print(f"copied {report.rows:,} rows in {len(report.tables)} tables; row counts match; "
          "new rows are numbered after the copied ids")
    if settings.database_url is None or settings.database_url.get_secret_value() != target:
        print("next: set KEEL_DATABASE_URL to that database and start keel (docs/deploy.md)")
    return EXIT_OK
