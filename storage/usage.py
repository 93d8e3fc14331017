"""The usage ledger: what was spent per UTC day, user and agent, for daily caps and /cost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from storage.db import Database, WriteConnection

SYSTEM_USER = 0  # scheduled and command-line runs


def today() -> str:
    """The UTC day, ``YYYY-MM-DD``."""
    return datetime.now(UTC).date().isoformat()


@dataclass(frozen=True, kw_only=True)
class UsageDelta:
    cost_usd: float
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    model_calls: int = 1


class UsageLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, *, user_id: int | None, agent: str, delta: UsageDelta, day: str | None = None) -> None:
        async with self.db.write() as conn:
            await record_usage(conn, day=day or today(), user_id=user_id or SYSTEM_USER,
                               agent=agent, delta=delta)

    async def spent(self, *, user_id: int | None = None, day: str | None = None) -> float:
        """USD spent on ``day`` (default today) by ``user_id``, or by everyone when None."""
        if user_id is None:
            value = await self.db.fetchval(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM day_spend WHERE day = ?", (day or today(),)
            )
        else:
            value = await self.db.fetchval(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_ledger WHERE day = ? AND user_id = ?",
                (day or today(), user_id),
            )
        return float(value or 0.0)


async def record_usage(conn: WriteConnection, *, day: str, user_id: int, agent: str,
                       delta: UsageDelta) -> None:
    """Add ``delta`` to the day's row of (user, agent), inside the caller's write transaction
    (with its next statement or its commit: nothing is read back)."""
    for sql, params in usage_statements(day=day, user_id=user_id, agent=agent, delta=delta):
        await conn.later(sql, params)


DAY_SPEND_SQL = (
    "INSERT INTO day_spend (day, cost_usd) VALUES (?, ?)"
    " ON CONFLICT (day) DO UPDATE SET cost_usd = day_spend.cost_usd + excluded.cost_usd")


def usage_statements(*, day: str, user_id: int, agent: str, delta: UsageDelta
                     ) -> list[tuple[str, tuple[object, ...]]]:
    """The statements that add ``delta`` to the day's row of (user, agent) and to the day's
    total (``day_spend``): every write of spend goes through here, so the total stays the sum
    of the rows."""
    return [_usage_row(day=day, user_id=user_id, agent=agent, delta=delta),
            (DAY_SPEND_SQL, (day, delta.cost_usd))]


def _usage_row(*, day: str, user_id: int, agent: str, delta: UsageDelta
               ) -> tuple[str, tuple[object, ...]]:
    """The statement that adds ``delta`` to the day's row of (user, agent)."""
    return (
        "INSERT INTO usage_ledger (day, user_id, agent, cost_usd, input_tokens, output_tokens,"
        " cache_read_tokens, cache_write_tokens, model_calls) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (day, user_id, agent) DO UPDATE SET"
        " cost_usd = usage_ledger.cost_usd + excluded.cost_usd,"
        " input_tokens = usage_ledger.input_tokens + excluded.input_tokens,"
        " output_tokens = usage_ledger.output_tokens + excluded.output_tokens,"
        " cache_read_tokens = usage_ledger.cache_read_tokens + excluded.cache_read_tokens,"
        " cache_write_tokens = usage_ledger.cache_write_tokens + excluded.cache_write_tokens,"
        " model_calls = usage_ledger.model_calls + excluded.model_calls",
        (day, user_id, agent, delta.cost_usd, delta.input_tokens, delta.output_tokens,
         delta.cache_read_tokens, delta.cache_write_tokens, delta.model_calls),
    )
