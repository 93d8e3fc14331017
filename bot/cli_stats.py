"""`keel stats`: the numbers of `/stats` (spend per agent per day, runs by status, cache hit
ratio over the last days) as a table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from agents.config import Settings
from bot.stats import DEFAULT_DAYS, Stats, collect


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stats", help="the last days: spend per agent, runs by status, cache hit ratio",
        description="Per UTC day over the last days (default 14): runs, spend in total and per "
        "agent, runs by status and the cache hit ratio (cache reads / all input tokens) — the "
        "numbers /stats charts. Safe while the bot runs.")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, metavar="N",
                   help=f"how many days up to today (default {DEFAULT_DAYS})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_stats)


def _cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.days <= 366:
        print("keel: --days must be between 1 and 366", file=sys.stderr)
        return 2
    stats = asyncio.run(_collect(settings, args.days))
    print(json.dumps(stats.as_json(), indent=2) if args.json else stats.render())
    return 0


async def _collect(settings: Settings, days: int) -> Stats:
    from storage.connect import open_database

    db = await open_database(settings)
    try:
        return await collect(db, days=days)
    finally:
        await db.close()
