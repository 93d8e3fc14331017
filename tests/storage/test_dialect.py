"""SQL written once runs on both databases: what the PostgreSQL translation must get right."""

from __future__ import annotations

import pytest

from storage.db import Database
from storage.dialect import pyformat


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT 1 WHERE ? IS NULL OR x = ?", "SELECT 1 WHERE CAST(%s AS TEXT) IS NULL OR x = %s"),
    ("WHERE ?  is not null", "WHERE CAST(%s AS TEXT)  is not null"),
    ("WHERE x = '? IS NULL' AND y = ?", "WHERE x = '? IS NULL' AND y = %s"),
])
def test_a_parameter_only_tested_for_null_gets_a_type(sql: str, expected: str) -> None:
    assert pyformat(sql) == expected


@pytest.mark.parametrize("value", [None, 5, "text"])
async def test_null_tests_on_parameters_run_on_both_databases(db: Database, value: object) -> None:
    # PostgreSQL refuses `$1 IS NULL` with a NULL it cannot type; SQLite takes anything.
    got = await db.fetchval("SELECT CASE WHEN ? IS NULL THEN 'null' ELSE 'set' END", (value,))
    assert got == ("null" if value is None else "set")


async def test_percent_signs_and_question_marks_in_literals_are_data(db: Database) -> None:
    await db.execute_write(
        "INSERT INTO people (user_id, role, source, created_at, updated_at)"
        " VALUES (?, 'user', 'telegram', '100%?', ?)", (7, "50% off?"))
    row = await db.fetchone(
        "SELECT created_at, updated_at FROM people WHERE created_at LIKE '100%' AND user_id = ?",
        (7,))
    assert row is not None and tuple(row) == ("100%?", "50% off?")
