"""`keel doctor` checks the database keel would open (issue 16): it can be reached, its schema is
this keel's (migrations pending, or made by a newer keel), and on PostgreSQL procrastinate's tables
are there, with the queue and the workers' heartbeats. A database that cannot be reached or read
is one finding, never a traceback, and never shows the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.config import load_settings
from bot import cli
from bot.doctor import Finding, check_database
from storage.db import Database
from storage.migrations import MIGRATIONS, migrate
from storage.pg import PostgresDatabase


def _levels(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.level, f.what) for f in findings]


def _one(findings: list[Finding], words: str) -> Finding:
    [found] = [f for f in findings if words in f.what]
    return found


async def test_sqlite_from_no_database_to_an_up_to_date_one(tmp_path: Path) -> None:
    settings = load_settings()
    [finding] = await check_database(settings)
    assert finding.level == "ok" and "no database yet" in finding.what
    assert not settings.db_path.exists()  # the doctor looks; it creates nothing

    db = await Database.open(settings.db_path)
    await db.close()
    findings = await check_database(settings)
    assert [f.level for f in findings] == ["ok", "ok"]
    assert _one(findings, "schema up to date").what.endswith(f"the last {MIGRATIONS[-1].name})")


async def test_a_pending_migration_is_named_and_one_from_a_newer_keel_is_an_error(
        tmp_path: Path) -> None:
    settings = load_settings()
    db = await Database.open(settings.db_path)
    last = MIGRATIONS[-1].name
    await db.execute_write("DELETE FROM schema_migrations WHERE name = ?", (last,))
    pending = _one(await check_database(settings), "migration(s) pending")
    assert pending.level == "warn" and pending.what == f"1 schema migration(s) pending: {last}"
    assert "keel db migrate" in pending.detail

    for name in (last, "9999_from_the_future"):
        await db.execute_write("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                               (name, "2030-01-01"))
    await db.close()
    newer = _one(await check_database(settings), "newer keel")
    assert newer.level == "error" and "9999_from_the_future" in newer.what


async def test_a_file_that_is_no_database_is_one_error(tmp_path: Path) -> None:
    settings = load_settings()
    settings.data_dir.mkdir(parents=True)
    settings.db_path.write_bytes(b"these are not the pages of a SQLite database" * 100)
    [finding] = await check_database(settings)
    assert finding.level == "error" and "cannot read the database" in finding.what


async def test_postgresql_schema_then_procrastinate_then_the_queue(
        postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.workers import QUEUE, ensure_job_schema, job_app

    url = f"{postgres_url}?options=-csearch_path%3D{pg_schema}"
    monkeypatch.setenv("KEEL_DATABASE_URL", url)
    settings = load_settings()
    findings = await check_database(settings)
    assert findings[0] == Finding("ok", f"database: PostgreSQL at {url}")
    assert _one(findings, "migration(s) pending").what.startswith(f"{len(MIGRATIONS)} schema migration(s)")

    db = PostgresDatabase(url)
    await db.connect()
    await migrate(db)
    await db.close()
    findings = await check_database(settings)
    assert _one(findings, "schema up to date").level == "ok"
    missing = _one(findings, "procrastinate's tables are missing")
    assert missing.level == "warn" and "keel db migrate" in missing.detail

    await ensure_job_schema(url)
    assert _levels(await check_database(settings))[-1] == (
        "ok", "jobs: 0 waiting, 0 running, 0 failed; workers alive: 0")

    jobs = job_app(url)
    async with jobs.open_async():
        await jobs.configure_task("keel.handle_update", queue=QUEUE).defer_async(update_id=1)
    stuck = (await check_database(settings))[-1]
    assert stuck.level == "warn"
    assert stuck.what == ("jobs: 1 waiting, 0 running, 0 failed; workers alive: 0"
                          " — nobody is taking the waiting jobs")


def test_keel_doctor_says_in_one_finding_that_postgresql_cannot_be_reached(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    monkeypatch.setenv("KEEL_DATABASE_URL", "postgresql://keel:hunter2secret@127.0.0.1:9/keel")
    code = cli.main(["doctor"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 1 and "Traceback" not in text and "hunter2secret" not in text
    assert "FAIL  cannot connect to the database" in text
    assert "cannot connect to PostgreSQL at postgresql://keel:***@127.0.0.1:9/keel" in text


def test_keel_db_migrate_prepares_postgresql_for_workers_and_doctor_agrees(
        postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    url = f"{postgres_url}?options=-csearch_path%3D{pg_schema}"
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    monkeypatch.setenv("KEEL_DATABASE_URL", url)
    assert cli.main(["db", "migrate"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("applied: 0001_initial") and "job tables (procrastinate): created" in first
    findings = asyncio.run(check_database(load_settings()))
    assert [f.level for f in findings] == ["ok", "ok", "ok"], findings

    assert cli.main(["db", "migrate"]) == 0  # once more: nothing to do
    again = capsys.readouterr().out
    assert again.startswith("database is up to date\njob tables (procrastinate): present\n")
