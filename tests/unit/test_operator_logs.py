"""Logs a person can follow (issue 20): warnings only for things to act on, every schedule in the
start-up line, and the SDK's retry chatter kept out of CLI output."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from agents.logs import configure_logging
from agents.schedule import ScheduledJob, Scheduler
from storage.db import Database


def job(name: str, cron: str) -> ScheduledJob:
    return ScheduledJob(name=name, agent="assistant", cron=cron, task="t", timezone="UTC",
                        chat_id=5, budget_usd=0.1, misfire_grace_s=60)


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "keel.sqlite3")
    yield database
    await database.close()


async def test_a_start_with_nothing_missed_warns_nothing_and_lists_every_schedule(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    fired: list[str] = []

    async def on_fire(j: ScheduledJob, scheduled: datetime, run_id: str, **_: object) -> None:
        fired.append(j.name)

    # 10:30: the daily 08:00 run is long past its 60 s grace, the minutely one is due
    now = datetime(2026, 5, 4, 10, 30, 30, tzinfo=UTC)
    jobs = [job("every-minute", "* * * * *"), job("quarterly", "*/15 * * * *"),
            job("daily", "0 8 * * *")]
    scheduler = Scheduler(db, jobs, on_fire, now=lambda: now)
    caplog.set_level(logging.DEBUG, logger="agents.schedule")
    await scheduler.start(catch_up=False)
    try:
        await scheduler.catch_up(now=now)
    finally:
        await scheduler.shutdown()
    assert fired == ["every-minute", "quarterly"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    started = [r.getMessage() for r in caplog.records if "scheduler started" in r.getMessage()]
    assert len(started) == 1
    for name, at in (("every-minute", "10:31"), ("quarterly", "10:45"), ("daily", "08:00")):
        assert f"{name} next at" in started[0] and at in started[0], started[0]
    # a fire from the clock with nothing within the grace is still worth a warning
    caplog.clear()
    assert await scheduler.fire("daily", now=now) is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_sdk_retry_lines_stay_out_of_the_console_unless_debugging(
        capsys: pytest.CaptureFixture[str]) -> None:
    sdk = logging.getLogger("anthropic._base_client")
    try:
        configure_logging("INFO", [])
        sdk.info("Retrying request to %s in %f seconds", "/v1/messages", 0.42)
        sdk.info("some other SDK line")
        err = capsys.readouterr().err
        assert "Retrying request" not in err and "some other SDK line" in err
        configure_logging("DEBUG", [])
        sdk.info("Retrying request to %s in %f seconds", "/v1/messages", 0.42)
        assert "DEBUG   anthropic._base_client: Retrying request" in capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
