"""The last days in numbers — spend per agent per day, runs by status, cache hit ratio — for
`/stats` (as a PNG chart, ``bot.chart``) and `keel stats` (a table or JSON). Both read the same
``Stats``, so the chart and the command line always agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from storage.db import Database
from storage.run_stats import daily_runs

DEFAULT_DAYS = 14


@dataclass
class DayStats:
    day: str
    """YYYY-MM-DD (UTC), the day the runs started."""
    spend_by_agent: dict[str, float] = field(default_factory=dict)
    runs_by_status: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def spend_usd(self) -> float:
        return sum(self.spend_by_agent.values())

    @property
    def runs(self) -> int:
        return sum(self.runs_by_status.values())

    @property
    def cache_hit_ratio(self) -> float | None:
        """cache_read / (input + cache_read + cache_write); None on a day without tokens."""
        total = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return self.cache_read_tokens / total if total else None


@dataclass
class Stats:
    days: list[DayStats]
    """Oldest first, one per day, days without runs included."""

    @property
    def agents(self) -> list[str]:
        return sorted({a for d in self.days for a in d.spend_by_agent})

    @property
    def statuses(self) -> list[str]:
        return sorted({s for d in self.days for s in d.runs_by_status})

    def as_json(self) -> dict[str, Any]:
        return {
            "days": [{"day": d.day,
                      "spend_usd": round(d.spend_usd, 6),
                      "spend_by_agent": {a: round(v, 6) for a, v in sorted(d.spend_by_agent.items())},
                      "runs": d.runs,
                      "runs_by_status": dict(sorted(d.runs_by_status.items())),
                      "cache_hit_ratio": None if d.cache_hit_ratio is None
                      else round(d.cache_hit_ratio, 4)} for d in self.days],
            "total_spend_usd": round(sum(d.spend_usd for d in self.days), 6),
            "total_runs": sum(d.runs for d in self.days),
        }

    def render(self) -> str:
        agents = self.agents
        header = ["DAY (UTC)", "RUNS", "SPEND", *agents, "CACHE HIT", "STATUSES"]
        table = [header]
        for d in self.days:
            hit = "-" if d.cache_hit_ratio is None else f"{d.cache_hit_ratio:.0%}"
            statuses = ", ".join(f"{s} {n}" for s, n in sorted(d.runs_by_status.items())) or "-"
            table.append([d.day, str(d.runs), f"${d.spend_usd:.4f}",
                          *(f"${d.spend_by_agent.get(a, 0.0):.4f}" for a in agents), hit,
                          statuses])
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in table]
        total = self.as_json()
        lines.append(f"\n{len(self.days)} days: {total['total_runs']} run(s), "
                     f"${total['total_spend_usd']:.4f} spent")
        return "\n".join(lines)


async def collect(db: Database, *, days: int = DEFAULT_DAYS, today: date | None = None) -> Stats:
    """The last ``days`` UTC days up to ``today``, from the runs table."""
    today = today or datetime.now(UTC).date()
    first = today - timedelta(days=days - 1)
    by_day = {(first + timedelta(days=i)).isoformat(): DayStats((first + timedelta(days=i))
                                                                 .isoformat())
              for i in range(days)}
    for row in await daily_runs(db, since_day=first.isoformat()):
        d = by_day.get(row.day)
        if d is None:  # a clock ahead of ours: not one of the days shown
            continue
        d.spend_by_agent[row.agent] = d.spend_by_agent.get(row.agent, 0.0) + row.cost_usd
        d.runs_by_status[row.status] = d.runs_by_status.get(row.status, 0) + row.runs
        d.input_tokens += row.input_tokens
        d.cache_read_tokens += row.cache_read_tokens
        d.cache_write_tokens += row.cache_write_tokens
    return Stats(days=list(by_day.values()))
