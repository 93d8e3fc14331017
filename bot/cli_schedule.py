"""`keel schedule list`: the schedules in keel.toml, when they run next, and what a day of them
may cost at worst. Reads the configuration only; it starts nothing and calls nothing."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from agents.config import Settings, load_keel_file
from agents.schedule import ScheduledJob, jobs_from_config, utc_now

EXAMPLE = """\
[[schedules]]
name = "morning"                # unique; runs are deduplicated by (name, local time)
agent = "briefing"
cron = "0 8 * * 1-5"            # minute hour day month weekday (0 and 7 are Sunday)
timezone = "Europe/Madrid"      # default: KEEL_TIMEZONE
chat_id = -1001234567890
create_topic = true             # or thread_id = 42
budget_usd = 0.30               # default: the agent's run budget
task = "Brief me on today's weather in Madrid and the top three headlines."
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schedule = sub.add_parser(
        "schedule", help="scheduled runs: when they run and what they may spend",
        description="Scheduled runs are declared in keel.toml under [[schedules]] and run by "
        "`keel run` (the bot) in its own process.",
    ).add_subparsers(dest="schedule_command", metavar="SUBCOMMAND", required=True)
    p = schedule.add_parser(
        "list", help="each schedule, its next run and its worst-case daily spend",
        description="List the schedules of keel.toml (KEEL_CONFIG): agent, cron expression, time "
        "zone, the next run in that zone, where it posts, runs per day (the most on any day it "
        "runs), the budget of each run and the worst case per day (runs per day x budget), then "
        "the worst case for a whole day of schedules beside the daily cap "
        "(KEEL_DAILY_BUDGET_USD). Reads the configuration only.",
        epilog="Example entry for keel.toml:\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=_schedule_list)


def _schedule_list(args: argparse.Namespace, settings: Settings, *,
                   now: datetime | None = None) -> int:
    jobs = load_jobs(settings)
    moment = now or utc_now()
    rows = [_row(job, moment, settings.daily_budget_usd_per_schedule) for job in jobs]
    total = sum(r["worst_case_daily_usd"] for r in rows)
    cap = settings.daily_budget_usd_total
    if args.json:
        print(json.dumps({"schedules": rows, "worst_case_daily_usd": round(total, 6),
                          "daily_budget_usd": cap}, indent=2))
        return 0
    if not jobs:
        print("No schedules. Add one to keel.toml (point KEEL_CONFIG at it), for example:\n")
        print(EXAMPLE)
        return 0
    header = ("NAME", "AGENT", "CRON", "TIME ZONE", "NEXT RUN (LOCAL)", "POSTS TO", "RUNS/DAY",
              "BUDGET", "WORST/DAY", "GUARD")
    table = [header] + [(r["name"], r["agent"], r["cron"], r["timezone"], r["next_run"] or "never",
                         r["posts_to"], str(r["runs_per_day"]), f"${r['budget_usd']:.2f}",
                         f"${r['worst_case_daily_usd']:.2f}", r["guard"] or "-") for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
              .rstrip())
    print()
    print(f"Worst case for a whole day of schedules: ${total:.2f} (every run spends its whole "
          f"budget); the daily cap for all runs is ${cap:.2f} (KEEL_DAILY_BUDGET_USD).")
    if total > cap:
        print("The worst case is above the cap: once the cap is spent, later runs that day are "
              "refused and each posts that it did not start.")
    return 0


def load_jobs(settings: Settings) -> list[ScheduledJob]:
    """The schedules of keel.toml, checked against the agents it and keel define."""
    from agents.runtime import build_agents
    from agents.tools import builtin_registry, load_tool_modules

    keel_file = load_keel_file(settings.config_path)
    registry = builtin_registry()
    if keel_file.tool_modules:
        load_tool_modules(registry, keel_file.tool_modules)
    agents = build_agents(settings, keel_file, registry)
    return jobs_from_config(keel_file.schedules, default_timezone=settings.timezone,
                            agents=agents)


def _row(job: ScheduledJob, now: datetime, per_schedule_cap: float | None = None
         ) -> dict[str, Any]:
    upcoming = job.next_fire(now)
    where = (f"chat {job.chat_id}" + (f" thread {job.thread_id}" if job.thread_id is not None
                                      else " (own topic)" if job.create_topic else ""))
    return {
        "name": job.name, "agent": job.agent, "cron": job.cron, "timezone": job.timezone,
        "next_run": upcoming.astimezone(job.tz).strftime("%Y-%m-%d %H:%M %Z") if upcoming
        else None,
        "posts_to": where, "runs_per_day": job.runs_per_day,
        "budget_usd": job.budget_usd,
        # runs per day x budget, or the schedule's daily cap when lower (the ledger holds it)
        "worst_case_daily_usd": round(min(job.worst_case_daily_usd, per_schedule_cap)
                                      if per_schedule_cap and not job.daily_budget_usd
                                      else job.worst_case_daily_usd, 6),
        "guard": job.guard,
    }
