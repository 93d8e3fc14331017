"""Schedules: cron jobs in a time zone, fired by APScheduler in the bot's event loop, each run
exactly once per scheduled local time.

APScheduler (3.x) owns the timing: ``coalesce``, one instance per job, a misfire grace time. keel
owns "exactly once": before a run starts, the pair (job, local scheduled time as a naive
``YYYY-MM-DDTHH:MM``) is claimed with an ``INSERT … ON CONFLICT DO NOTHING`` into
``schedule_fires``. A second claim of the same pair does nothing, which covers

- the autumn DST day, when a 02:30 job in Europe/Madrid comes round twice (02:30 CEST, then
  02:30 CET): one local time, one run;
- a double fire, and a restart that would fire the same time again;
- the catch-up on start: the most recent scheduled time within the misfire grace that was never
  claimed (the bot was down) runs once; older ones are skipped.

On the spring DST day a time that does not exist (02:30 in Madrid on 2026-03-29) is APScheduler's
call: it fires once, at 03:30 CEST (01:30 UTC), and keel's key is that instant's local time,
``2026-03-29T03:30``. An hourly job simply has no 02:00 run that day (23 runs), and on the
autumn day runs once per local hour (24 runs, not 25).

APScheduler does not tell the job function which scheduled time it is running for, so the job
works it out: the latest trigger time at or before now, within the grace time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from agents.config import ScheduleConfig
from agents.errors import ConfigError
from agents.ids import new_id
from agents.spec import AgentSpec
from storage.db import Database, iso

log = logging.getLogger(__name__)

LOCAL_KEY_FORMAT = "%Y-%m-%dT%H:%M"
_MAX_SCAN = 20_000  # fire times looked at in one search; a minutely job over ~2 weeks of grace
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ITEM = re.compile(r"^(\*|\d+)(?:-(\d+))?(?:/(\d+))?$")

Clock = Callable[[], datetime]
FireHandler = Callable[..., Awaitable[object]]
"""Called as ``on_fire(job, scheduled, run_id, key=local_key)``: the job, its scheduled time (aware),
the run id to use, and the claim's key (its request: ``fire:<job>:<key>``)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------ cron


def crontab_trigger(expr: str, tz: ZoneInfo) -> CronTrigger:
    """A CronTrigger for a standard five-field crontab line.

    Weekday numbers follow crontab (0 and 7 are Sunday). APScheduler 3.x counts 0 as Monday, so
    ``CronTrigger.from_crontab("0 9 * * 1-5")`` would run Tuesday to Saturday; numbers are turned
    into names first."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    fields[4] = _weekday_names(fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=tz)


def _weekday_names(spec: str) -> str:
    out: list[str] = []
    for item in spec.lower().split(","):
        match = _DOW_ITEM.match(item)
        if match is None:  # names ("mon-fri"), or something APScheduler will judge
            out.append(item)
            continue
        start, end, step = match.groups()
        if start == "*" and end is None and step is None:
            out.append("*")
            continue
        if start == "*":
            first, last = 0, 6
        else:
            first = int(start)
            last = int(end) if end is not None else (7 if step is not None else first)
        if not (0 <= first <= 7 and 0 <= last <= 7) or first > last:
            raise ValueError(f"weekday {item!r} is out of range (0-7, 0 and 7 are Sunday)")
        days = range(first, last + 1, int(step or 1))
        out.extend(dict.fromkeys(_WEEKDAYS[d % 7] for d in days))
    return ",".join(dict.fromkeys(out))


# ------------------------------------------------------------------ a job


@dataclass(frozen=True, kw_only=True)
class ScheduledJob:
    """A schedule from keel.toml, resolved: its zone, its trigger, its run budget."""

    name: str
    agent: str
    cron: str
    task: str
    timezone: str
    chat_id: int
    thread_id: int | None = None
    create_topic: bool = False
    budget_usd: float
    """The cap of each run: the schedule's ``budget_usd``, else the agent's."""
    misfire_grace_s: int = 3600
    daily_budget_usd: float | None = None
    """The schedule's own daily cap, when keel.toml sets one."""
    guard: str | None = None
    """``module:function`` run before any model call; "nothing new" skips the fire at $0."""
    guard_message: str | None = None
    trigger: CronTrigger = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            trigger = crontab_trigger(self.cron, self.tz)
        except ValueError as exc:
            raise ConfigError(f"schedule {self.name!r}: {self.cron!r} is not a valid cron "
                              f"expression (minute hour day month weekday): {exc}") from None
        object.__setattr__(self, "trigger", trigger)

    @classmethod
    def from_config(cls, config: ScheduleConfig, *, default_timezone: str,
                    agent: AgentSpec) -> ScheduledJob:
        name = config.timezone or default_timezone
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"schedule {config.name!r}: {name!r} is not an IANA time zone "
                              "name (e.g. 'Europe/Madrid', 'UTC')") from None
        return cls(name=config.name, agent=config.agent, cron=config.cron, task=config.task,
                   timezone=name, chat_id=config.chat_id, thread_id=config.thread_id,
                   create_topic=config.create_topic,
                   budget_usd=config.budget_usd or agent.limits.budget_usd,
                   misfire_grace_s=config.misfire_grace_s,
                   daily_budget_usd=config.daily_budget_usd, guard=config.guard,
                   guard_message=config.guard_message)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.misfire_grace_s)

    def local_key(self, moment: datetime) -> str:
        """The dedupe key: the local wall time of the instant, to the minute."""
        return moment.astimezone(UTC).astimezone(self.tz).strftime(LOCAL_KEY_FORMAT)

    def fire_times(self, start: datetime, end: datetime) -> list[datetime]:
        """Every time the trigger yields from ``start`` (inclusive) to ``end`` (exclusive).
        Compared in UTC: two wall times in one zone compare by wall clock, ignoring DST."""
        out: list[datetime] = []
        end_utc = end.astimezone(UTC)
        moment = self.trigger.get_next_fire_time(None, start)
        while moment is not None and moment.astimezone(UTC) < end_utc and len(out) < _MAX_SCAN:
            out.append(moment)
            moment = self.trigger.get_next_fire_time(moment, moment)
        return out

    def latest_fire(self, now: datetime) -> datetime | None:
        """The scheduled time a fire at ``now`` is for: the latest at or before now, within the
        misfire grace; None when there is none."""
        # Look back in widening windows, so a frequent job with a long grace stays cheap.
        window = min(self.grace, timedelta(hours=1))
        while True:
            due = self.fire_times(now - window, now + timedelta(microseconds=1))
            if due:
                return due[-1]
            if window >= self.grace:
                return None
            window = min(window * 8, self.grace)

    def next_fire(self, now: datetime) -> datetime | None:
        return self.trigger.get_next_fire_time(None, now)

    def runs_on(self, day: date) -> int:
        """Runs on a local calendar day: distinct local scheduled times (DST repeats run once)."""
        start = datetime.combine(day, time(), self.tz)
        end = datetime.combine(day + timedelta(days=1), time(), self.tz)
        return len({self.local_key(t) for t in self.fire_times(start, end)})

    @property
    def runs_per_day(self) -> int:
        """The most runs on any day the job runs: its minutes × its hours. No DST day has more
        (a repeated local time runs once); the spring day may have fewer."""
        minute, hour = self.cron.split()[:2]
        times = CronTrigger(minute=minute, hour=hour, timezone=UTC)
        day = datetime(2026, 1, 1, tzinfo=UTC)
        count, moment = 0, times.get_next_fire_time(None, day)
        while moment is not None and moment < day + timedelta(days=1):
            count += 1
            moment = times.get_next_fire_time(moment, moment)
        return count

    @property
    def worst_case_daily_usd(self) -> float:
        """The most this job can spend in a day: runs per day × the run's budget, or its own
        daily cap when that is lower (the ledger holds every call against it)."""
        worst = self.runs_per_day * self.budget_usd
        return min(worst, self.daily_budget_usd) if self.daily_budget_usd else worst


def jobs_from_config(schedules: Sequence[ScheduleConfig], *, default_timezone: str,
                     agents: Mapping[str, AgentSpec]) -> list[ScheduledJob]:
    """keel.toml's ``[[schedules]]`` as jobs; a wrong entry is a ConfigError naming it."""
    jobs: list[ScheduledJob] = []
    seen: set[str] = set()
    for config in schedules:
        if config.name in seen:
            raise ConfigError(f"two schedules are named {config.name!r}; names must be unique")
        seen.add(config.name)
        spec = agents.get(config.agent)
        if spec is None:
            raise ConfigError(f"schedule {config.name!r} names unknown agent {config.agent!r}; "
                              f"known agents: {', '.join(sorted(agents))}")
        jobs.append(ScheduledJob.from_config(config, default_timezone=default_timezone,
                                             agent=spec))
    return jobs


def worst_case_daily_usd(jobs: Sequence[ScheduledJob]) -> float:
    """A whole day of schedules at their worst: every run spends its whole budget."""
    return sum(job.worst_case_daily_usd for job in jobs)


# ------------------------------------------------------------------ the scheduler


@dataclass(frozen=True, kw_only=True)
class Fire:
    """A claimed scheduled time: this run id runs it, and nothing else will."""

    job: str
    local_time: str
    scheduled: datetime
    run_id: str


class Scheduler:
    """Owns the APScheduler instance and the exactly-once claim of each scheduled time."""

    def __init__(self, db: Database, jobs: Sequence[ScheduledJob], on_fire: FireHandler, *,
                 now: Clock = utc_now) -> None:
        self.db = db
        self.jobs = {job.name: job for job in jobs}
        self.on_fire = on_fire
        self.now = now
        self.aps: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, *, catch_up: bool = True) -> None:
        """Start in the running loop; then, in the background, run once what was missed."""
        aps = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
        for job in self.jobs.values():
            self._add(aps, job)
        aps.start()
        self.aps = aps
        for claim in await self.unfinished():
            # claimed by a process that died before the run's outcome was committed: run it
            # again under the same request (its side effects are idempotent per fire)
            log.warning("schedule %s for %s was interrupted; running it again", claim.job,
                        claim.local_time)
            self._spawn(self._run_claim(claim), f"keel-schedule-recover-{claim.job}")
        if catch_up:
            task = asyncio.create_task(self.catch_up(), name="keel-schedule-catch-up")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("scheduler started: %d job(s)%s", len(self.jobs), "".join(
            f"; {name} next at {t:%Y-%m-%d %H:%M %Z}" if t else f"; {name} never again"
            for name, t in self.next_run_of_each()))

    def _add(self, aps: AsyncIOScheduler, job: ScheduledJob) -> None:
        aps.add_job(self._on_time, trigger=job.trigger, args=(job.name,), id=job.name,
                    name=f"{job.name} ({job.agent})", coalesce=True, max_instances=1,
                    misfire_grace_time=job.misfire_grace_s, replace_existing=True)

    def replace_jobs(self, jobs: Sequence[ScheduledJob]) -> tuple[list[str], list[str]]:
        """Swap in the schedules of a reloaded keel.toml, without awaiting (so nothing fires
        between the old and the new set): a removed schedule stops firing, a changed one fires
        on its new trigger, runs already claimed go on. Returns (added, removed) names."""
        new = {job.name: job for job in jobs}
        added = sorted(new.keys() - self.jobs.keys())
        removed = sorted(self.jobs.keys() - new.keys())
        if self.aps is not None:
            for name in removed:
                if self.aps.get_job(name) is not None:
                    self.aps.remove_job(name)
            for job in new.values():
                self._add(self.aps, job)
        self.jobs = new
        return added, removed

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def unfinished(self) -> list[Fire]:
        """Claims of known jobs whose run never committed an outcome."""
        rows = await self.db.fetchall(
            "SELECT job, local_time, run_id, scheduled_at FROM schedule_fires"
            " WHERE status = 'claimed' ORDER BY fired_at")
        out = []
        for r in rows:
            if r["job"] not in self.jobs or r["scheduled_at"] is None:
                continue
            scheduled = datetime.fromisoformat(r["scheduled_at"].replace("Z", "+00:00"))
            out.append(Fire(job=r["job"], local_time=r["local_time"], scheduled=scheduled,
                            run_id=new_id()))
        return out

    async def _run_claim(self, claim: Fire) -> None:
        await self.db.execute_write(
            "UPDATE schedule_fires SET run_id = ? WHERE job = ? AND local_time = ?",
            (claim.run_id, claim.job, claim.local_time))
        try:
            await self.on_fire(self.jobs[claim.job], claim.scheduled, claim.run_id,
                               key=claim.local_time)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled run %s for %s failed outside the run", claim.job,
                          claim.local_time)

    async def shutdown(self) -> None:
        """Stop firing; runs in flight are cancelled (the next start marks them interrupted)."""
        if self.aps is not None and self.aps.running:
            self.aps.shutdown(wait=False)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_time(self, name: str) -> None:
        await self.fire(name)

    async def fire(self, name: str, *, now: datetime | None = None,
                   catching_up: bool = False) -> Fire | None:
        """Run job ``name`` for its latest scheduled time, unless that time was already claimed.
        Returns the claim (after the run), or None when there was nothing to run (also for a
        schedule removed from keel.toml since this fire was queued)."""
        job = self.jobs.get(name)
        if job is None:
            log.info("schedule %s is no longer configured; not running it", name)
            return None
        claim = await self.claim(job, now or self.now(), catching_up=catching_up)
        if claim is None:
            return None
        try:
            await self.on_fire(job, claim.scheduled, claim.run_id, key=claim.local_time)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled run %s for %s failed outside the run", name, claim.local_time)
        return claim

    async def claim_now(self, name: str, request: str, *,
                        now: datetime | None = None) -> Fire | None:
        """Claim a run of job ``name`` outside its schedule (``/run``), as a stored request keyed
        by what asked for it (``request``, e.g. ``tg:<update_id>``): asked twice (a redelivered
        update), it runs once; interrupted, the next start runs it again like any claim. None
        when that request already claimed its run."""
        job = self.jobs[name]
        moment = now or self.now()
        key, run_id = f"now:{request}", new_id()
        inserted = await self.db.execute_write(
            "INSERT INTO schedule_fires (job, local_time, run_id, fired_at, status, scheduled_at)"
            " VALUES (?, ?, ?, ?, 'claimed', ?) ON CONFLICT DO NOTHING",
            (job.name, key, run_id, iso(moment), iso(moment)))
        if not inserted:
            return None
        return Fire(job=job.name, local_time=key, scheduled=moment, run_id=run_id)

    async def run_claim(self, claim: Fire) -> None:
        """Run a claim made by ``claim_now`` (the caller decides where: usually a task)."""
        await self._run_claim(claim)

    async def claim(self, job: ScheduledJob, now: datetime, *,
                    catching_up: bool = False) -> Fire | None:
        scheduled = job.latest_fire(now)
        if scheduled is None:
            # at start-up, nothing missed within the grace is the normal case, not a warning
            log.log(logging.DEBUG if catching_up else logging.WARNING,
                    "schedule %s fired at %s with no scheduled time within its %d s grace",
                    job.name, now.isoformat(), job.misfire_grace_s)
            return None
        key, run_id = job.local_key(scheduled), new_id()
        inserted = await self.db.execute_write(
            "INSERT INTO schedule_fires (job, local_time, run_id, fired_at, status,"
            " scheduled_at) VALUES (?, ?, ?, ?, 'claimed', ?) ON CONFLICT DO NOTHING",
            (job.name, key, run_id, iso(now), iso(scheduled)))
        if not inserted:
            log.info("schedule %s: %s already ran; not running it again", job.name, key)
            return None
        return Fire(job=job.name, local_time=key, scheduled=scheduled, run_id=run_id)

    async def catch_up(self, *, now: datetime | None = None) -> list[Fire]:
        """For each job, the most recent scheduled time within its grace that never ran, once."""
        moment = now or self.now()
        claims = await asyncio.gather(*(self.fire(name, now=moment, catching_up=True)
                                        for name in self.jobs))
        return [c for c in claims if c is not None]

    async def fired(self, name: str) -> list[tuple[str, str | None]]:
        """(local time, run id) of every claimed time of a job, oldest first."""
        rows = await self.db.fetchall(
            "SELECT local_time, run_id FROM schedule_fires WHERE job = ? ORDER BY local_time",
            (name,))
        return [(r["local_time"], r["run_id"]) for r in rows]

    def next_run_of_each(self, *, now: datetime | None = None) -> list[tuple[str, datetime | None]]:
        """Every job with its next run (local time), in the order they were declared."""
        moment = now or self.now()
        return [(job.name, job.next_fire(moment)) for job in self.jobs.values()]

    def next_runs(self, n: int, *, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """The next ``n`` runs over all jobs, soonest first: (job name, local time)."""
        moment = now or self.now()
        out: list[tuple[str, datetime]] = []
        for job in self.jobs.values():
            t, keys = job.next_fire(moment), set[str]()
            while t is not None and len(keys) < n:
                if job.local_key(t) not in keys:  # a DST repeat is not another run
                    keys.add(job.local_key(t))
                    out.append((job.name, t))
                t = job.trigger.get_next_fire_time(t, t)
        out.sort(key=lambda item: item[1].astimezone(UTC))
        return out[:n]

    def runs_per_day(self) -> dict[str, int]:
        return {name: job.runs_per_day for name, job in self.jobs.items()}

    def worst_case_daily_usd(self) -> float:
        return worst_case_daily_usd(list(self.jobs.values()))
