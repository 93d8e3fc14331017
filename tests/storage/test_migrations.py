from pathlib import Path

from storage.db import Database
from storage.migrations import MIGRATIONS, migrate

EXPECTED_TABLES = {
    "agent_topics", "conversations", "escalations", "idempotency_keys", "inbox", "messages",
    "outbox", "runs", "schedule_fires", "schema_migrations", "sessions", "usage_ledger",
    "budget_holds", "schedule_spend",
    "people", "stranger_replies",
}


async def test_migrating_an_empty_database_creates_the_schema(tmp_path: Path) -> None:
    db = Database(tmp_path / "empty.sqlite3")
    await db.connect()
    try:
        applied = await migrate(db)
        assert applied == [m.name for m in MIGRATIONS]
        assert set(await db.table_names()) == EXPECTED_TABLES
        assert await db.fetchval("PRAGMA journal_mode") == "wal"
        assert {"id", "trace_id", "agent", "status", "cost_usd", "input_tokens", "output_tokens",
                "cache_read_tokens", "cache_write_tokens", "started_at", "ended_at"} <= set(
            await db.columns("runs"))
        assert {"update_id", "payload", "status"} <= set(await db.columns("inbox"))
        assert {"run_id", "tool", "args_hash", "result"} <= set(await db.columns("idempotency_keys"))
    finally:
        await db.close()


async def test_a_second_migrate_is_a_no_op(db: Database) -> None:
    before = await db.fetchall("SELECT name, applied_at FROM schema_migrations ORDER BY name")
    assert await migrate(db) == []
    after = await db.fetchall("SELECT name, applied_at FROM schema_migrations ORDER BY name")
    assert [tuple(r) for r in before] == [tuple(r) for r in after]


def test_migration_names_are_numbered_in_order_and_unique() -> None:
    names = [m.name for m in MIGRATIONS]
    assert len(set(names)) == len(names)
    numbers = [int(n.split("_", 1)[0]) for n in names]
    assert numbers == list(range(1, len(names) + 1))
