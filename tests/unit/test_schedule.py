"""Schedules: exactly one run per scheduled local time (DST days included), catch-up within the
grace time, worst-case spend, and scheduled runs whose outcome is delivered or loudly not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from agents.config import ScheduleConfig
from agents.errors import ConfigError, ModelCallError
from agents.notify import Button, Delivered, DeliveryError, NotifierMailbox
from agents.run import RunResult
from agents.runtime import Runtime
from agents.schedule import ScheduledJob, Scheduler, jobs_from_config, worst_case_daily_usd
from agents.scheduled import ScheduledOutcome, ScheduledRunner
from agents.spec import AgentSpec, Limits
from storage.db import Database
from storage.migrations import migrate
from tests.conftest import OpenDb
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call

MADRID = ZoneInfo("Europe/Madrid")
SPRING, AUTUMN = date(2026, 3, 29), date(2026, 10, 25)  # Europe/Madrid DST days


def job(cron: str = "30 2 * * *", *, name: str = "nightly", tz: str = "Europe/Madrid",
        budget: float = 0.5, grace: int = 3600, agent: str = "assistant",
        **extra: Any) -> ScheduledJob:
    return ScheduledJob(name=name, agent=agent, cron=cron, task="Brief me.", timezone=tz,
                        budget_usd=budget, misfire_grace_s=grace, **{"chat_id": -100123, **extra})


def local(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=MADRID)


def whole_day(j: ScheduledJob, day: date) -> list[datetime]:
    return j.fire_times(local(day), local(day + timedelta(days=1)))


@dataclass
class Fires:
    """A fire handler that records what it was asked to run."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)
    fired: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, j: ScheduledJob, scheduled: datetime, run_id: str, *,
                       key: str | None = None) -> None:
        self.calls.append((j.name, j.local_key(scheduled), run_id))
        self.fired.set()

    @property
    def keys(self) -> list[str]:
        return [key for _, key, _ in self.calls]


@pytest_asyncio.fixture
async def db(open_db: OpenDb) -> Database:
    """A migrated database, on SQLite and on PostgreSQL (one run each)."""
    return await open_db()


async def fire_through(scheduler: Scheduler, name: str, times: list[datetime],
                       late: timedelta = timedelta(0)) -> None:
    """Fire as APScheduler would at each time (optionally a little late), one after another."""
    for t in times:
        await scheduler.fire(name, now=t.astimezone(UTC) + late)


# ------------------------------------------------------------------ DST


async def test_a_0230_job_runs_once_on_the_autumn_dst_day(db: Database) -> None:
    nightly = job("30 2 * * *")
    times = whole_day(nightly, AUTUMN)
    # APScheduler yields 02:30 twice: once in summer time, once in winter time, an hour apart
    assert [t.astimezone(UTC).isoformat() for t in times] == [
        "2026-10-25T00:30:00+00:00", "2026-10-25T01:30:00+00:00"]
    fires = Fires()
    scheduler = Scheduler(db, [nightly], fires)
    await fire_through(scheduler, "nightly", times, late=timedelta(seconds=3))
    assert fires.keys == ["2026-10-25T02:30"]
    assert [key for key, _ in await scheduler.fired("nightly")] == ["2026-10-25T02:30"]
    assert nightly.runs_on(AUTUMN) == 1


async def test_the_spring_dst_day_runs_the_missing_0230_once_at_0330(db: Database) -> None:
    nightly = job("30 2 * * *")
    times = whole_day(nightly, SPRING)
    # 02:30 does not exist on 2026-03-29 (02:00 → 03:00). APScheduler's choice: it still fires
    # once, labelled 02:30+01:00, which is the instant 01:30 UTC = 03:30 CEST.
    assert len(times) == 1
    assert times[0].astimezone(UTC) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    fires = Fires()
    scheduler = Scheduler(db, [nightly], fires)
    await fire_through(scheduler, "nightly", times)
    assert fires.keys == ["2026-03-29T03:30"]  # keyed by the local time it really ran at
    assert nightly.runs_on(SPRING) == 1


@pytest.mark.parametrize(("day", "yielded", "runs"), [(SPRING, 23, 23), (AUTUMN, 25, 24),
                                                      (date(2026, 6, 1), 24, 24)])
async def test_an_hourly_job_runs_once_per_local_hour_across_dst(
        db: Database, day: date, yielded: int, runs: int) -> None:
    hourly = job("0 * * * *", name="hourly")
    times = whole_day(hourly, day)
    assert len(times) == yielded
    fires = Fires()
    scheduler = Scheduler(db, [hourly], fires)
    await fire_through(scheduler, "hourly", times, late=timedelta(seconds=1))
    assert len(fires.keys) == len(set(fires.keys)) == runs == hourly.runs_on(day)
    assert all(key.startswith(day.isoformat()) for key in fires.keys)
    hours = [int(key[11:13]) for key in fires.keys]
    assert hours == sorted(hours)
    assert (2 in hours) == (day != SPRING)  # spring has no 02:00; autumn has it once


@pytest.mark.parametrize("day", [SPRING, AUTUMN])
async def test_two_processes_firing_together_run_each_local_time_once_across_dst(
        new_db: Callable[[], Database], day: date) -> None:
    # Issue 16: two workers (two Database objects on one SQLite file or one PostgreSQL schema,
    # two Schedulers) fire the same jobs at the same instants through both DST days: each
    # (schedule, local time) runs once in all.
    nightly, hourly = job("30 2 * * *"), job("0 * * * *", name="hourly")
    stores = [new_db(), new_db()]
    for store in stores:
        await store.connect()
    try:
        await migrate(stores[0])
        fires = [Fires(), Fires()]
        schedulers = [Scheduler(store, [nightly, hourly], f)
                      for store, f in zip(stores, fires, strict=True)]
        for name, spec in (("nightly", nightly), ("hourly", hourly)):
            for t in whole_day(spec, day):
                await asyncio.gather(*(s.fire(name, now=t.astimezone(UTC) + timedelta(seconds=2))
                                       for s in schedulers))
        keys = fires[0].keys + fires[1].keys
        assert len(keys) == len(set(keys)) == nightly.runs_on(day) + hourly.runs_on(day)
    finally:
        for store in stores:
            await store.close()


async def test_a_double_fire_runs_once(db: Database) -> None:
    morning = job("0 8 * * *", name="morning")
    fires = Fires()
    scheduler = Scheduler(db, [morning], fires)
    at = local(date(2026, 5, 4), 8).astimezone(UTC)
    first = await scheduler.fire("morning", now=at)
    second = await scheduler.fire("morning", now=at + timedelta(seconds=1))
    assert first is not None and second is None
    assert fires.keys == ["2026-05-04T08:00"] and fires.calls[0][2] == first.run_id
    assert await scheduler.fired("morning") == [("2026-05-04T08:00", first.run_id)]


async def test_a_late_fire_runs_the_time_it_was_for(db: Database) -> None:
    fires = Fires()
    scheduler = Scheduler(db, [job("*/15 * * * *", name="quarter")], fires)
    await scheduler.fire("quarter", now=local(date(2026, 5, 4), 9, 44).astimezone(UTC))
    assert fires.keys == ["2026-05-04T09:30"]


# ------------------------------------------------------------------ missed runs


async def test_a_missed_run_within_grace_fires_once_on_start(db: Database) -> None:
    morning = job("0 8 * * *", name="morning", grace=3600)
    fires = Fires()
    scheduler = Scheduler(db, [morning], fires)
    back_up = local(date(2026, 5, 4), 8, 20).astimezone(UTC)
    claims = await scheduler.catch_up(now=back_up)
    assert [c.local_time for c in claims] == ["2026-05-04T08:00"]
    assert await scheduler.catch_up(now=back_up + timedelta(minutes=5)) == []  # another restart
    await scheduler.fire("morning", now=back_up)  # or APScheduler's own late fire
    assert fires.keys == ["2026-05-04T08:00"]


async def test_a_missed_run_outside_grace_does_not_fire(db: Database) -> None:
    fires = Fires()
    scheduler = Scheduler(db, [job("0 8 * * *", name="morning", grace=3600)], fires)
    assert await scheduler.catch_up(now=local(date(2026, 5, 4), 9, 30).astimezone(UTC)) == []
    assert fires.calls == []


async def test_a_run_that_already_happened_is_not_caught_up(db: Database) -> None:
    fires = Fires()
    scheduler = Scheduler(db, [job("0 8 * * *", name="morning")], fires)
    await scheduler.fire("morning", now=local(date(2026, 5, 4), 8).astimezone(UTC))
    restarted = Scheduler(db, [job("0 8 * * *", name="morning")], fires)
    assert await restarted.catch_up(now=local(date(2026, 5, 4), 8, 10).astimezone(UTC)) == []
    assert len(fires.calls) == 1


async def test_the_scheduler_runs_in_the_loop_with_coalesce_one_instance_and_grace(
        db: Database) -> None:
    fires = Fires()
    at_eight = local(date(2026, 5, 4), 8, 0)
    scheduler = Scheduler(db, [job("0 8 * * *", name="morning", grace=600)], fires,
                          now=lambda: at_eight.astimezone(UTC) + timedelta(minutes=3))
    await scheduler.start(catch_up=False)
    try:
        assert scheduler.aps is not None
        [aps_job] = scheduler.aps.get_jobs()
        assert (aps_job.id, aps_job.coalesce, aps_job.max_instances,
                aps_job.misfire_grace_time) == ("morning", True, 1, 600)
        assert str(aps_job.trigger.timezone) == "Europe/Madrid"
        # let APScheduler itself run the job now: the job finds the 08:00 it is for
        aps_job.modify(next_run_time=datetime.now(UTC))
        scheduler.aps.wakeup()
        await asyncio.wait_for(fires.fired.wait(), timeout=5)
        assert fires.keys == ["2026-05-04T08:00"]
    finally:
        await scheduler.shutdown()


async def test_start_catches_up_in_the_background(db: Database) -> None:
    fires = Fires()
    scheduler = Scheduler(db, [job("0 8 * * *", name="morning")], fires,
                          now=lambda: local(date(2026, 5, 4), 8, 30).astimezone(UTC))
    await scheduler.start()
    try:
        await asyncio.wait_for(fires.fired.wait(), timeout=5)
        assert fires.keys == ["2026-05-04T08:00"]
    finally:
        await scheduler.shutdown()


# ------------------------------------------------------------------ listing and spend


def test_weekday_numbers_follow_crontab_not_apscheduler() -> None:
    sunday = datetime(2026, 3, 1, 12, tzinfo=UTC)
    weekdays = job("0 9 * * 1-5", tz="UTC")
    assert [t.strftime("%a %d") for t in weekdays.fire_times(sunday, sunday + timedelta(days=7))
            ] == ["Mon 02", "Tue 03", "Wed 04", "Thu 05", "Fri 06"]
    assert job("0 9 * * 0", tz="UTC").next_fire(sunday).strftime("%a") == "Sun"  # type: ignore[union-attr]
    assert job("0 9 * * 7", tz="UTC").next_fire(sunday).strftime("%a") == "Sun"  # type: ignore[union-attr]


@pytest.mark.parametrize(("cron", "per_day"), [
    ("0 8 * * *", 1), ("30 2 * * *", 1), ("*/15 9-17 * * 1-5", 36), ("0,30 * * * *", 48),
    ("0 * * * *", 24), ("0 9 1 * *", 1),
])
def test_runs_per_day_is_the_most_on_any_day_it_runs(cron: str, per_day: int) -> None:
    assert job(cron).runs_per_day == per_day


def test_worst_case_spend_is_runs_per_day_times_the_run_budget() -> None:
    jobs = [job("0 8 * * *", name="a", budget=0.5), job("*/15 9-17 * * 1-5", name="b", budget=0.2)]
    assert [j.worst_case_daily_usd for j in jobs] == [pytest.approx(0.5), pytest.approx(7.2)]
    assert worst_case_daily_usd(jobs) == pytest.approx(7.7)
    scheduler = Scheduler(None, jobs, Fires())  # type: ignore[arg-type]
    assert scheduler.runs_per_day() == {"a": 1, "b": 36}
    assert scheduler.worst_case_daily_usd() == pytest.approx(7.7)


def test_next_runs_lists_the_soonest_across_jobs_without_dst_repeats() -> None:
    jobs = [job("30 2 * * *", name="nightly"), job("0 3 * * *", name="three")]
    scheduler = Scheduler(None, jobs, Fires())  # type: ignore[arg-type]
    upcoming = scheduler.next_runs(4, now=local(AUTUMN, 0, 0))
    assert [(n, t.astimezone(MADRID).strftime("%d %H:%M")) for n, t in upcoming] == [
        ("nightly", "25 02:30"), ("three", "25 03:00"), ("nightly", "26 02:30"),
        ("three", "26 03:00")]


def test_schedules_from_config_take_defaults_and_name_their_mistakes() -> None:
    agents = {"briefing": AgentSpec(name="briefing", description="", system="s",
                                    limits=Limits(budget_usd=0.25))}

    def config(**values: Any) -> ScheduleConfig:
        base = {"name": "morning", "agent": "briefing", "cron": "0 8 * * *", "task": "t",
                "chat_id": -1}
        return ScheduleConfig(**{**base, **values})

    [morning] = jobs_from_config([config()], default_timezone="Europe/Madrid", agents=agents)
    assert (morning.timezone, morning.budget_usd, morning.misfire_grace_s) == (
        "Europe/Madrid", 0.25, 3600)
    [capped] = jobs_from_config([config(budget_usd=0.1, timezone="UTC")],
                                default_timezone="Europe/Madrid", agents=agents)
    assert (capped.timezone, capped.budget_usd) == ("UTC", 0.1)
    mistakes = [
        ([config(cron="0 8 * *")], "'morning': '0 8 * *' is not a valid cron"),
        ([config(cron="0 25 * * *")], "is not a valid cron"),
        ([config(agent="nobody")], "unknown agent 'nobody'"),
        ([config(timezone="Mars/Olympus")], "'Mars/Olympus' is not an IANA time zone"),
        ([config(), config()], "two schedules are named 'morning'"),
    ]
    for schedules, message in mistakes:
        with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
            jobs_from_config(schedules, default_timezone="UTC", agents=agents)


# ------------------------------------------------------------------ the CLI

KEEL_TOML = """
[agents.digest]
description = "A digest"
system = "You write digests."
limits = { budget_usd = 0.2 }

[[schedules]]
name = "morning"
agent = "briefing"
cron = "0 8 * * 1-5"
timezone = "Europe/Madrid"
chat_id = -1001
create_topic = true
task = "Brief me."

[[schedules]]
name = "quarterly"
agent = "digest"
cron = "*/15 9-17 * * *"
chat_id = -1001
thread_id = 7
budget_usd = 0.05
task = "Digest."
"""


def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, toml: str = KEEL_TOML) -> Callable[..., int]:
    """``bot.cli.main`` with `keel schedule` registered beside the runtime commands."""
    import bot.cli
    from bot import cli_schedule

    registered = bot.cli._register_runtime_commands

    def register(sub: Any) -> None:
        registered(sub)
        if "schedule" not in sub.choices:
            cli_schedule.register(sub)

    monkeypatch.setattr(bot.cli, "_register_runtime_commands", register)
    monkeypatch.setattr(bot.cli, "configure_logging", lambda *a: None)  # keep pytest's handlers
    (tmp_path / "keel.toml").write_text(toml, "utf-8")
    monkeypatch.setenv("KEEL_CONFIG", str(tmp_path / "keel.toml"))
    monkeypatch.setenv("KEEL_TIMEZONE", "UTC")
    return bot.cli.main


def test_keel_schedule_list_shows_each_job_and_the_days_worst_case(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = cli(monkeypatch, tmp_path)
    assert main(["schedule", "list"]) == 0
    out = capsys.readouterr().out
    morning = next(line for line in out.splitlines() if line.startswith("morning"))
    assert "briefing" in morning and "0 8 * * 1-5" in morning and "Europe/Madrid" in morning
    assert "(own topic)" in morning and "$0.50" in morning  # the briefing agent's run budget
    quarterly = next(line for line in out.splitlines() if line.startswith("quarterly"))
    assert " 36 " in quarterly and "$1.80" in quarterly and "UTC" in quarterly
    assert "Worst case for a whole day of schedules: $2.30" in out
    assert "$20.00 (KEEL_DAILY_BUDGET_USD)" in out

    assert main(["schedule", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["worst_case_daily_usd"] == pytest.approx(2.3)
    assert [r["runs_per_day"] for r in data["schedules"]] == [1, 36]


def test_keel_schedule_list_prints_the_next_run_in_local_time(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from agents.config import load_settings
    from bot.cli_schedule import _schedule_list

    cli(monkeypatch, tmp_path)
    friday_night = datetime(2026, 10, 23, 22, tzinfo=UTC)
    _schedule_list(argparse.Namespace(json=True), load_settings(), now=friday_night)
    rows = json.loads(capsys.readouterr().out)["schedules"]
    assert [r["next_run"] for r in rows] == ["2026-10-26 08:00 CET", "2026-10-24 09:00 UTC"]


def test_keel_schedule_list_help_and_mistakes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = cli(monkeypatch, tmp_path, KEEL_TOML.replace('agent = "digest"', 'agent = "nobody"'))
    with pytest.raises(SystemExit):
        main(["schedule", "list", "--help"])
    helped = capsys.readouterr().out
    assert "worst case" in helped and "[[schedules]]" in helped and "KEEL_DAILY_BUDGET_USD" in helped
    assert main(["schedule", "list"]) == 2
    assert "unknown agent 'nobody'" in capsys.readouterr().err


# ------------------------------------------------------------------ scheduled runs


class RecordingNotifier:
    """The Notifier protocol, recording what is sent. ``failures`` makes the next N sends to a
    chat raise DeliveryError, as the Telegram notifier does once its own retries are spent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.topics: list[tuple[int, str]] = []
        self.failures: dict[int, int] = {}
        self.attempts: list[int] = []
        self._ids = iter(range(1000, 10_000))

    async def send(self, chat_id: int, markdown: str, *, thread_id: int | None = None,
                   buttons: list[list[Button]] | None = None,
                   reply_to: int | None = None) -> Delivered:
        self.attempts.append(chat_id)
        if self.failures.get(chat_id, 0):
            self.failures[chat_id] -= 1
            raise DeliveryError(f"Telegram unreachable after 5 attempts (chat {chat_id})")
        self.sent.append({"chat_id": chat_id, "text": markdown, "thread_id": thread_id})
        return Delivered(message_ids=(next(self._ids),))

    async def edit(self, chat_id: int, message_id: int, markdown: str) -> None:
        return None

    async def create_topic(self, chat_id: int, name: str) -> int:
        self.topics.append((chat_id, name))
        return 500 + len(self.topics)

    async def send_document(self, chat_id: int, filename: str, data: bytes, *,
                            thread_id: int | None = None, caption: str | None = None) -> Delivered:
        return Delivered(message_ids=(next(self._ids),))


CHAT, OWNER = -1001, 7
AT_EIGHT = local(date(2026, 5, 4), 8)


def scheduled(**extra: Any) -> ScheduledJob:
    return job("0 8 * * *", name="morning", budget=0.3, **{"chat_id": CHAT, "thread_id": 42,
                                                             **extra})


async def runner_for(make_runtime: Any, model: ScriptedModel, **env: str
                     ) -> tuple[Runtime, RecordingNotifier, ScheduledRunner, list[float]]:
    runtime: Runtime = await make_runtime(model, KEEL_ALLOWED_USER_IDS=f"{OWNER},99", **env)
    notifier = RecordingNotifier()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return runtime, notifier, ScheduledRunner(runtime, notifier, sleep=sleep), waits


async def fire(runner: ScheduledRunner, j: ScheduledJob, run_id: str = "r-1") -> ScheduledOutcome:
    return await runner(j, AT_EIGHT, run_id)


async def test_a_scheduled_run_posts_its_briefing_into_the_thread(make_runtime: Any) -> None:
    model = ScriptedModel(reply("**Monday briefing**\n- sunny"))
    runtime, notifier, runner, _ = await runner_for(make_runtime, model)
    outcome = await fire(runner, scheduled())
    assert (outcome.status, outcome.delivered, outcome.thread_id) == ("completed", True, 42)
    assert notifier.sent == [{"chat_id": CHAT, "text": "**Monday briefing**\n- sunny",
                              "thread_id": 42}]
    assert outcome.message_ids == (1000,)
    task = model.requests[0].messages[0]["content"][0]["text"]
    assert task.startswith("[Scheduled run 'morning' for 2026-05-04 08:00 (Europe/Madrid)]")
    record = await runtime.runs.get("r-1")
    assert record is not None
    assert (record.kind, record.status, record.budget_usd, record.chat_id, record.thread_id) == (
        "scheduled", "completed", 0.3, CHAT, 42)
    delivery = [e for e in runtime.traces.read(record.trace_id) if e["type"] == "delivery"]
    assert [(d["status"], d["message_ids"], d["attempts"]) for d in delivery] == [
        ("delivered", [1000], 1)]


async def test_a_delivery_that_fails_fails_the_run_and_alerts_the_owner(
        make_runtime: Any) -> None:
    model = ScriptedModel(reply("**Monday briefing**"))
    runtime, notifier, runner, waits = await runner_for(make_runtime, model)
    notifier.failures[CHAT] = 99
    outcome = await fire(runner, scheduled())
    assert (outcome.status, outcome.delivered, outcome.message_ids) == ("failed", False, ())
    # one retry layer: the sender's own (a DeliveryError means its retries are spent); the
    # runner does not stack another on top, it alerts the owner
    assert notifier.attempts == [CHAT, OWNER]
    assert waits == []
    record = await runtime.runs.get("r-1")
    assert record is not None and record.status == "failed"
    assert (record.status_detail or "").startswith("delivery failed: Telegram unreachable")
    [alert] = notifier.sent
    assert alert["chat_id"] == OWNER and alert["thread_id"] is None
    assert "could not be delivered" in alert["text"] and record.trace_id in alert["text"]
    assert all("Monday briefing" not in s["text"] for s in notifier.sent)
    delivery = [e for e in runtime.traces.read(record.trace_id) if e["type"] == "delivery"]
    assert [d["status"] for d in delivery] == ["failed"]
    # the briefing's outbox row is failed, not left for a sweep to send after the alert
    assert await runtime.db.fetchval(
        "SELECT status FROM outbox WHERE chat_id = ? ORDER BY id LIMIT 1", (CHAT,)) == "failed"


async def test_the_briefing_commits_with_the_outcome_and_finishes_the_fire(
        make_runtime: Any) -> None:
    runtime, notifier, runner, _ = await runner_for(make_runtime, ScriptedModel(reply("hi")))
    scheduler = Scheduler(runtime.db, [scheduled()], runner)
    claim = await scheduler.fire("morning", now=AT_EIGHT.astimezone(UTC))
    assert claim is not None
    row = await runtime.db.fetchone("SELECT status FROM schedule_fires WHERE job = 'morning'")
    assert row is not None and row["status"] == "done"
    [item] = await runtime.db.fetchall("SELECT status, run_id FROM outbox")
    assert (item["status"], item["run_id"]) == ("sent", claim.run_id)


async def test_a_run_that_fails_posts_what_went_wrong_and_its_trace(make_runtime: Any) -> None:
    model = ScriptedModel(ModelCallError("model API answered 529: Overloaded", status=529))
    runtime, notifier, runner, _ = await runner_for(make_runtime, model)
    outcome = await fire(runner, scheduled())
    assert (outcome.status, outcome.delivered) == ("failed", True)
    [post] = notifier.sent
    assert post["thread_id"] == 42
    assert "`morning` (assistant) failed: the model API failed" in post["text"]
    assert outcome.trace_id is not None and f"Trace: `{outcome.trace_id}`" in post["text"]


async def test_the_agents_topic_is_created_once_and_reused(make_runtime: Any) -> None:
    model = ScriptedModel(reply("first"), reply("second"))
    runtime, notifier, runner, _ = await runner_for(make_runtime, model)
    topical = scheduled(thread_id=None, create_topic=True)
    first = await fire(runner, topical, "r-1")
    second = await fire(runner, topical, "r-2")
    assert notifier.topics == [(CHAT, "assistant")]
    assert first.thread_id == second.thread_id == 501
    assert [s["thread_id"] for s in notifier.sent] == [501, 501]
    assert await runtime.db.fetchval(
        "SELECT thread_id FROM agent_topics WHERE agent = 'assistant' AND chat_id = ?",
        (CHAT,)) == 501
    record = await runtime.runs.get("r-2")
    assert record is not None and record.thread_id == 501


async def test_a_run_that_asks_a_human_goes_to_the_escalation_flow(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("escalate_to_human", {"reason": "Which city?",
                                                          "context": "weather"}))
    runtime, notifier, _, _ = await runner_for(make_runtime, model)
    asked: list[tuple[RunResult, int, int | None]] = []
    mailbox = NotifierMailbox(runtime.db, notifier)

    async def on_escalation(conn: Any, result: RunResult, chat_id: int,
                            thread_id: int | None) -> int:
        asked.append((result, chat_id, thread_id))
        return await mailbox.put(conn, chat_id=chat_id, thread_id=thread_id, reply_to=None,
                                 markdown=f"question: {result.detail}")

    runner = ScheduledRunner(runtime, notifier, on_escalation=on_escalation)
    outcome = await fire(runner, scheduled())
    assert outcome.status == "waiting_human"
    [(result, chat_id, thread_id)] = asked
    assert (result.status, chat_id, thread_id) == ("waiting_human", CHAT, 42)
    assert result.escalation is not None and result.escalation.request.reason == "Which city?"
    assert [s["text"] for s in notifier.sent] == ["question: asked a human: Which city?"]


async def test_a_run_refused_by_the_daily_cap_says_it_did_not_start(make_runtime: Any) -> None:
    from storage.usage import UsageDelta

    runtime, notifier, runner, _ = await runner_for(make_runtime, ScriptedModel(),
                                                    KEEL_DAILY_BUDGET_USD="1")
    await runtime.usage.add(user_id=None, agent="assistant", delta=UsageDelta(cost_usd=1.0))
    outcome = await fire(runner, scheduled())
    assert (outcome.status, outcome.delivered) == ("not_started", True)
    [post] = notifier.sent
    assert "`morning` (assistant) did not start: The daily budget" in post["text"]
    assert await runtime.runs.get("r-1") is None


async def test_a_fired_schedule_runs_and_delivers_once(make_runtime: Any) -> None:
    runtime, notifier, runner, _ = await runner_for(make_runtime, ScriptedModel(reply("hi")))
    scheduler = Scheduler(runtime.db, [scheduled()], runner)
    at = AT_EIGHT.astimezone(UTC)
    claim = await scheduler.fire("morning", now=at)
    assert await scheduler.fire("morning", now=at) is None
    assert claim is not None and len(notifier.sent) == 1
    record = await runtime.runs.get(claim.run_id)
    assert record is not None and record.status == "completed"


async def test_the_briefing_agent_plans_then_posts(make_runtime: Any) -> None:
    plan = tool_call("submit_plan", {"goal": "a briefing", "steps": [
        {"instruction": "Write the briefing.", "produces": "the briefing"}]})
    model = ScriptedModel(plan, reply("**Briefing**"))
    runtime, notifier, runner, _ = await runner_for(make_runtime, model)
    outcome = await fire(runner, scheduled(agent="briefing"))
    assert (outcome.status, notifier.sent[0]["text"]) == ("completed", "**Briefing**")
    assert model.requests[0].tools[0]["name"] == "submit_plan"
