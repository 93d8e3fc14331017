"""`keel cost` (and the text of `/cost`): today's spend, what running calls hold, and what is
left, overall, per person and per schedule — from the daily ledger (storage/ledger.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from agents.budget import usd
from agents.config import Settings
from storage.ledger import CostReport, DailyCaps, Ledger, SpendLine
from storage.usage import SYSTEM_USER


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cost", help="today's spend, reservations and what is left, per person and overall",
        description="Today's (UTC) spend from the daily ledger: spent (settled calls), reserved "
        "(worst cases held by calls in flight) and left under each daily cap "
        "(KEEL_DAILY_BUDGET_USD, KEEL_DAILY_BUDGET_USD_PER_USER, "
        "KEEL_DAILY_BUDGET_USD_PER_SCHEDULE), overall, per person and per schedule. Safe while "
        "the bot runs.")
    p.add_argument("--user", type=int, default=None, help="only this person's line")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_cost)


def caps_of(settings: Settings) -> DailyCaps:
    return DailyCaps(total_usd=settings.daily_budget_usd_total,
                     per_user_usd=settings.daily_budget_usd_per_user,
                     per_schedule_usd=settings.daily_budget_usd_per_schedule)


def _cmd_cost(args: argparse.Namespace, settings: Settings) -> int:
    from storage.connect import open_database

    async def go() -> CostReport:
        db = await open_database(settings)
        try:
            return await Ledger(db).report(caps_of(settings))
        finally:
            await db.close()

    report = asyncio.run(go())
    if args.json:
        print(json.dumps(report_json(report, user=args.user), indent=2))
    else:
        print("\n".join(render(report, viewer=args.user, everyone=args.user is None,
                               per_user_cap=settings.daily_budget_usd_per_user)))
    return 0


def line_text(line: SpendLine) -> str:
    text = f"{usd(line.spent_usd)} spent, {usd(line.reserved_usd)} reserved"
    if line.cap_usd is not None and line.left_usd is not None:
        text += f", {usd(line.left_usd)} left of {usd(line.cap_usd)}"
    return text


def render(report: CostReport, *, viewer: int | None, everyone: bool,
           per_user_cap: float | None) -> list[str]:
    """Lines for a person: ``viewer``'s own line; with ``everyone`` also each person's, each
    schedule's and the overall line (the owner and admins; the command line)."""
    lines = [f"Today ({report.day}, UTC)"]
    if viewer is not None:
        own = report.users.get(viewer) or SpendLine(spent_usd=0.0, reserved_usd=0.0,
                                                    cap_usd=per_user_cap)
        lines.append(f"You: {line_text(own)}")
    if not everyone:
        return lines
    lines.append(f"Everyone: {line_text(report.overall)}")
    for uid, line in report.users.items():
        if uid == viewer:
            continue
        who = "schedules and command line" if uid == SYSTEM_USER else f"person {uid}"
        lines.append(f"• {who}: {line_text(line)}")
    for name, line in report.schedules.items():
        lines.append(f"• schedule {name}: {line_text(line)}")
    return lines


def report_json(report: CostReport, *, user: int | None = None) -> dict[str, Any]:
    def one(line: SpendLine) -> dict[str, Any]:
        return {"spent_usd": round(line.spent_usd, 6), "reserved_usd": round(line.reserved_usd, 6),
                "cap_usd": line.cap_usd,
                "left_usd": None if line.left_usd is None else round(line.left_usd, 6)}

    users = {str(uid): one(line) for uid, line in report.users.items()
             if user is None or uid == user}
    out: dict[str, Any] = {"day": report.day, "users": users}
    if user is None:
        out["overall"] = one(report.overall)
        out["schedules"] = {name: one(line) for name, line in report.schedules.items()}
    return out
