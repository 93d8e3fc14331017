"""Runs per day for `/stats` and `keel stats`: spend, counts by status and cache tokens, grouped
by UTC day, agent and status (portable SQL: SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import Database


@dataclass(frozen=True, kw_only=True)
class DailyRunRow:
    """One (day, agent, status) group of runs that started that UTC day."""

    day: str
    """YYYY-MM-DD (UTC)."""
    agent: str
    status: str
    runs: int
    cost_usd: float
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


async def daily_runs(db: Database, *, since_day: str) -> list[DailyRunRow]:
    """Every run that started on ``since_day`` (YYYY-MM-DD, UTC) or later, grouped."""
    rows = await db.fetchall(
        "SELECT substr(started_at, 1, 10) AS day, agent, status, COUNT(*) AS runs,"
        " COALESCE(SUM(cost_usd), 0) AS cost_usd,"
        " COALESCE(SUM(input_tokens), 0) AS input_tokens,"
        " COALESCE(SUM(cache_read_tokens), 0) AS cache_read_tokens,"
        " COALESCE(SUM(cache_write_tokens), 0) AS cache_write_tokens"
        " FROM runs WHERE started_at >= ?"
        " GROUP BY substr(started_at, 1, 10), agent, status ORDER BY 1, 2, 3",
        (since_day,))
    return [DailyRunRow(day=str(r["day"]), agent=str(r["agent"]), status=str(r["status"]),
                        runs=int(r["runs"]), cost_usd=float(r["cost_usd"]),
                        input_tokens=int(r["input_tokens"]),
                        cache_read_tokens=int(r["cache_read_tokens"]),
                        cache_write_tokens=int(r["cache_write_tokens"])) for r in rows]
