"""Open keel's database where the settings say: PostgreSQL when ``KEEL_DATABASE_URL`` is a
``postgresql://`` URL, otherwise SQLite under ``KEEL_DATA_DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from storage.db import Database, is_postgres_url


class DatabaseSettings(Protocol):
    @property
    def database_target(self) -> str | Path:
        """A postgresql:// URL, or the SQLite file's path."""
        ...


def database_for(settings: DatabaseSettings) -> Database:
    """The database the settings name, not yet connected."""
    return database_at(settings.database_target)


def database_at(target: str | Path) -> Database:
    """A PostgreSQL URL or a SQLite file, not yet connected."""
    if is_postgres_url(target):
        from storage.pg import PostgresDatabase  # psycopg is loaded only for PostgreSQL

        return PostgresDatabase(str(target))
    if isinstance(target, str) and "://" in target:
        raise ValueError(f"not a database keel can use: {target.split('://', 1)[0]!r}"
                         " (KEEL_DATABASE_URL takes postgresql://…; unset, keel uses SQLite)")
    return Database(target)


async def open_database(settings: DatabaseSettings, *, migrate: bool = True) -> Database:
    """Connect to the settings' database and, unless ``migrate=False``, bring its schema up to
    date."""
    db = database_for(settings)
    await db.connect()
    if migrate:
        from storage.migrations import migrate as run_migrations

        try:
            await run_migrations(db)
        except BaseException:
            await db.close()
            raise
    return db
