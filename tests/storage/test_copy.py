"""`keel db copy` underneath (storage/copy.py): a SQLite database moved into PostgreSQL with its ids,
its references and its sequences right; a target holding keel rows is refused unless forced; a copy
that fails part-way leaves the target as it was."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from storage.conversations import ConversationRepository
from storage.copy import CopyRefused, copy_sqlite_to_postgres, verify
from storage.db import Database
from storage.migrations import MIGRATIONS
from storage.pg import PostgresDatabase


def schema_url(postgres_url: str, schema: str) -> str:
    return f"{postgres_url}?options=-csearch_path%3D{schema}"


async def _filled_sqlite(path: Path) -> Database:
    """Three conversations with a session each and a few messages; the first conversation's rows
    deleted again, so ids have a gap (PostgreSQL must continue after the maximum, not the count)."""
    db = await Database.open(path)
    repo = ConversationRepository(db)
    for chat in (11, 12, 13):
        conversation = await repo.get_or_create(chat, None)
        session = await repo.live_session(conversation.id, "assistant")
        await repo.append(session, [("user", [{"type": "text", "text": f"hi from {chat}"}], 3),
                                    ("assistant", [{"type": "text", "text": "50% 'quoted'"}], 4)])
    first = await db.fetchval("SELECT id FROM conversations WHERE chat_id = 11")
    async with db.write() as conn:
        await conn.execute("DELETE FROM messages WHERE session_id IN"
                           " (SELECT id FROM sessions WHERE conversation_id = ?)", (first,))
        await conn.execute("DELETE FROM sessions WHERE conversation_id = ?", (first,))
        await conn.execute("DELETE FROM conversations WHERE id = ?", (first,))
    return db


async def test_every_row_is_copied_with_its_id_and_new_rows_continue_after_them(
        tmp_path: Path, postgres_url: str, pg_schema: str) -> None:
    source = tmp_path / "keel.sqlite3"
    sqlite = await _filled_sqlite(source)
    before = {table: await sqlite.fetchall(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608
              for table in ("conversations", "sessions", "messages")}
    await sqlite.close()
    url = schema_url(postgres_url, pg_schema)
    seen: list[str] = []

    report = await copy_sqlite_to_postgres(source, url, batch=2,
                                           progress=lambda t: seen.append(t.name))

    assert {t.name: t.rows for t in report.tables}["messages"] == 4
    assert seen.index("conversations") < seen.index("sessions") < seen.index("messages")
    assert report.identities["conversations.id"] == 3 and report.identities["messages.id"] == 6
    pg = PostgresDatabase(url)
    await pg.connect()
    try:
        for table, rows in before.items():
            copied = await pg.fetchall(f"SELECT * FROM {table} ORDER BY id")  # noqa: S608
            assert [tuple(r) for r in copied] == [tuple(r) for r in rows], table
        names = {r["name"] for r in await pg.fetchall("SELECT name FROM schema_migrations")}
        assert names == {m.name for m in MIGRATIONS}
        # new rows get the next ids: without the sequences set they would collide with id 2, 3
        repo = ConversationRepository(pg)
        fresh = await repo.get_or_create(99, None)
        assert fresh.id == 4
        session = await repo.live_session(fresh.id, "assistant")
        assert session == 4
        await repo.append(session, [("user", [{"type": "text", "text": "new"}], 1)])
        assert await pg.fetchval("SELECT MAX(id) FROM messages") == 7
    finally:
        await pg.close()


async def test_a_target_holding_keel_rows_is_refused_unless_forced(
        tmp_path: Path, postgres_url: str, pg_schema: str) -> None:
    source = tmp_path / "keel.sqlite3"
    await (await _filled_sqlite(source)).close()
    url = schema_url(postgres_url, pg_schema)
    await copy_sqlite_to_postgres(source, url)
    pg = PostgresDatabase(url)
    await pg.connect()
    try:
        await ConversationRepository(pg).get_or_create(555, None)  # the target lives on
        with pytest.raises(CopyRefused, match="already holds keel data.*--force"):
            await copy_sqlite_to_postgres(source, url)
        assert await pg.fetchval("SELECT COUNT(*) FROM conversations") == 3  # untouched

        report = await copy_sqlite_to_postgres(source, url, force=True)
        assert "conversations" in report.emptied
        chats = [r[0] for r in await pg.fetchall("SELECT chat_id FROM conversations ORDER BY id")]
        assert chats == [12, 13]
    finally:
        await pg.close()


async def test_a_copy_that_fails_part_way_leaves_the_target_empty(
        tmp_path: Path, postgres_url: str, pg_schema: str) -> None:
    source = tmp_path / "keel.sqlite3"
    sqlite = await _filled_sqlite(source)
    # SQLite keeps a text that is no number in an INTEGER column; PostgreSQL's BIGINT refuses it
    await sqlite.execute_write("UPDATE messages SET tokens = 'many' WHERE id = 6")
    await sqlite.close()
    url = schema_url(postgres_url, pg_schema)

    with pytest.raises(CopyRefused, match="undone.*bigint"):
        await copy_sqlite_to_postgres(source, url)

    async with await psycopg.AsyncConnection.connect(url) as conn:
        for table in ("conversations", "sessions", "messages"):
            cursor = await conn.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608
            assert await cursor.fetchone() == (0,), table


async def test_verify_names_a_short_table_and_a_sequence_behind_its_ids(
        tmp_path: Path, postgres_url: str, pg_schema: str) -> None:
    source = tmp_path / "keel.sqlite3"
    await (await _filled_sqlite(source)).close()
    url = schema_url(postgres_url, pg_schema)
    await copy_sqlite_to_postgres(source, url)
    assert await verify(url, {"conversations": 2, "messages": 4}) == []

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("DELETE FROM messages WHERE id = 6")
        await conn.execute("SELECT setval(pg_get_serial_sequence('conversations', 'id'), 1)")
    problems = await verify(url, {"conversations": 2, "messages": 4})
    assert problems == ["messages: 3 rows, 4 in the source",
                        "conversations.id: the next id would be 2, but 3 is taken"]


async def test_a_missing_source_is_one_clear_refusal(tmp_path: Path) -> None:
    with pytest.raises(CopyRefused, match="no SQLite database at"):
        await copy_sqlite_to_postgres(tmp_path / "nowhere.sqlite3", "postgresql://127.0.0.1/x")
