"""Retention: rows that only grow with traffic are deleted once older than the window, in batches.

Each table has one ``Rule``: which rows are finished and no longer needed (SQL over the row as
``t``), and when they stopped being needed. Rows are found on the read connection, 500 at a time
in rowid order, and deleted by rowid in a short write transaction that checks the rule again, so
the one SQLite writer is held for one small indexed delete at a time and every other write gets in
between batches. A pass stops at the first batch whose rows were all created inside the window
(rowids grow with time), so it costs the old rows, not the whole table.

Never deleted, whatever their age: anything a live run needs — a run ``running`` or
``waiting_human``, or one with an escalation still open (pending; or answered/resumed while its
run has not finished) — and its inbox rows, replies, idempotency keys and schedule fires; inbox
rows not yet done, replies not yet sent, live sessions' messages. Idempotency keys are kept as
long as any run of their request could still be retried (the job starts after recovery).

To cover a new table, add a ``Rule``; columns added by later migrations are picked up by
``rules()`` from the schema it finds.

On PostgreSQL rows have no rowid: batches walk the physical row address (``ctid``) instead. New
rows may land in space freed by old ones, so there a pass reads the whole table (still 500 rows a
read, one small delete at a time) rather than stopping at the first young batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from storage.db import Database, iso, placeholders
from storage.dialect import Dialect
from storage.traces import TraceStore

log = logging.getLogger(__name__)

BATCH_ROWS = 500
"""Rows looked at per read and deleted at most per write transaction."""
DEFAULT_PAUSE_S = 0.05
"""Pause between two delete transactions of a pass, so a large backlog trickles out."""
_BEFORE_ANY_ROW: dict[Dialect, int | str] = {"sqlite": -(2**63), "postgresql": "(0,0)"}
_ROW_ADDRESS: dict[Dialect, str] = {"sqlite": "rowid", "postgresql": "ctid"}
_GREATEST: dict[Dialect, str] = {"sqlite": "MAX", "postgresql": "GREATEST"}

_OPEN_RUN = ("running", "waiting_human")
_FINAL_ESCALATION = ("expired", "cancelled", "done")


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # fixed literals above, never input


def _run_is_live(run: str) -> str:
    """SQL: the run row ``run`` may still continue (it, or an escalation of it, is open)."""
    return (
        f"({run}.status IN ({_sql_list(_OPEN_RUN)}) OR EXISTS (SELECT 1 FROM escalations le"  # noqa: S608
        f" WHERE le.run_id = {run}.id AND (le.status = 'pending' OR"
        f" (le.status NOT IN ({_sql_list(_FINAL_ESCALATION)})"
        f" AND {run}.status = 'budget_exceeded'))))"
    )


def _no_live_run(run_ref: str, *, request_key: bool) -> str:
    """SQL: no live run has id ``run_ref`` (or, once runs carry it, request key ``run_ref``)."""
    match = f"lr.id = {run_ref}" + (f" OR lr.request_key = {run_ref}" if request_key else "")
    return f"NOT EXISTS (SELECT 1 FROM runs lr WHERE ({match}) AND {_run_is_live('lr')})"  # noqa: S608


@dataclass(frozen=True, kw_only=True)
class Rule:
    table: str
    born: str
    """SQL: when the row was written; rowid order follows it (the pass stops on young rows)."""
    done: str
    """SQL: since when the row has not been needed (NULL: still needed)."""
    deletable: str
    """SQL over ``t``: the row is finished and nothing live refers to it."""


def rules(columns: dict[str, set[str]], dialect: Dialect = "sqlite") -> list[Rule]:
    """The rules for the tables present, in delete order (escalations before their runs)."""
    has_request_key = "request_key" in columns.get("runs", set())

    def no_live(ref: str) -> str:
        return _no_live_run(ref, request_key=has_request_key)

    out = [
        Rule(table="inbox", born="t.received_at", done="COALESCE(t.done_at, t.received_at)",
             deletable=f"t.status IN ('done', 'ignored', 'failed') AND {no_live('t.run_id')}"),
        Rule(table="outbox", born="t.created_at", done="COALESCE(t.sent_at, t.created_at)",
             deletable=f"t.status IN ('sent', 'failed') AND {no_live('t.run_id')}"  # noqa: S608
             + (" AND NOT EXISTS (SELECT 1 FROM escalations oe WHERE oe.id = t.escalation_id"
                " AND oe.status = 'pending')" if "escalation_id" in columns["outbox"] else "")),
        # Compacted-away turns, and every turn of a session that /new archived.
        Rule(table="messages", born="t.created_at",
             done="COALESCE(t.archived_at, (SELECT s.archived_at FROM sessions s"
                  " WHERE s.id = t.session_id))",
             deletable="TRUE"),
        Rule(table="idempotency_keys", born="t.created_at", done="t.created_at",
             deletable=no_live("t.run_id")),
        Rule(table="schedule_fires", born="t.fired_at", done="t.fired_at",
             deletable=no_live("t.run_id")
             + (" AND t.status IN ('done', 'failed', 'skipped')"
                if "status" in columns["schedule_fires"] else "")),
        Rule(table="escalations", born="t.created_at",
             done=f"{_GREATEST[dialect]}(t.created_at, t.expires_at,"
                  " COALESCE(t.answered_at, ''))",
             deletable=f"t.status <> 'pending' AND NOT EXISTS (SELECT 1 FROM runs er"  # noqa: S608
                       f" WHERE er.id = t.run_id AND er.status IN"
                       f" ({_sql_list((*_OPEN_RUN, 'budget_exceeded'))})"
                       f" AND t.status NOT IN ({_sql_list(_FINAL_ESCALATION)}))"),
        # Button keys: /memory's delete buttons and an answer's 👍/👎. The ratings themselves
        # stay (they are the owner's samples for `keel eval --from-ratings`).
        Rule(table="memory_buttons", born="t.created_at", done="t.created_at", deletable="TRUE"),
        Rule(table="rating_offers", born="t.created_at", done="t.created_at", deletable="TRUE"),
        Rule(table="runs", born="t.started_at", done="COALESCE(t.ended_at, t.started_at)",
             deletable=f"NOT {_run_is_live('t')}"  # noqa: S608
                       " AND NOT EXISTS (SELECT 1 FROM escalations re WHERE re.run_id = t.id)"),
    ]
    return [r for r in out if r.table in columns]


@dataclass
class RetentionReport:
    cutoff: str
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    finished: bool = True
    """False when the pass stopped at its time limit; the next pass carries on."""

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


OnBatch = Callable[[str, int], Awaitable[None]]


async def prune(
    db: Database,
    *,
    days: int,
    now: datetime | None = None,
    batch_rows: int = BATCH_ROWS,
    pause_s: float = DEFAULT_PAUSE_S,
    max_seconds: float | None = None,
    on_batch: OnBatch | None = None,
) -> RetentionReport:
    """Delete what every rule allows and is older than ``days``; one pass over every table."""
    if days < 1:
        raise ValueError("retention must keep at least one day")
    cutoff = iso((now or datetime.now(UTC)) - timedelta(days=days))
    loop = asyncio.get_running_loop()
    stop_at = None if max_seconds is None else loop.time() + max_seconds
    report = RetentionReport(cutoff=cutoff)
    tables = set(await db.table_names())
    columns = {t: set(await db.columns(t)) for t in tables}
    rowid = _ROW_ADDRESS[db.dialect]
    for rule in rules(columns, db.dialect):
        report.deleted[rule.table] = 0
        last = _BEFORE_ANY_ROW[db.dialect]
        while True:
            if stop_at is not None and loop.time() >= stop_at:
                report.finished = False
                return report
            rows = await db.fetchall(
                f"SELECT t.{rowid} AS rid, {rule.born} AS born, {rule.done} AS done,"  # noqa: S608
                f" ({rule.deletable}) AS ok FROM {rule.table} t WHERE t.{rowid} > ?"
                f" ORDER BY t.{rowid} LIMIT ?", (last, batch_rows))
            if not rows:
                break
            last = rows[-1]["rid"]
            doomed = [r["rid"] for r in rows
                      if r["ok"] and r["done"] is not None and r["done"] < cutoff]
            if doomed:
                async with db.write() as conn:
                    # Checked again inside the transaction: a row may have changed since the read.
                    cursor = await conn.execute(
                        f"DELETE FROM {rule.table} AS t WHERE t.{rowid} IN"  # noqa: S608
                        f" ({placeholders(doomed)}) AND {rule.done} < ? AND ({rule.deletable})",
                        (*doomed, cutoff))
                    count = max(cursor.rowcount, 0)
                report.deleted[rule.table] += count
                report.batches += 1
                if on_batch is not None:
                    await on_batch(rule.table, count)
                await asyncio.sleep(pause_s)  # other writers take the lock between batches
            if db.dialect == "sqlite" and all(r["born"] is not None and r["born"] >= cutoff
                                              for r in rows):
                break  # everything after is younger still (rowids grow with time)
    return report


@dataclass(frozen=True)
class HousekeepingReport:
    rows: RetentionReport
    traces_gzipped: int
    traces_deleted: int


async def housekeep(db: Database, traces: TraceStore, *, days: int, trace_days: int,
                    max_seconds: float | None = None,
                    trace_min_idle_s: float = 0.0) -> HousekeepingReport:
    """One retention pass over the database and the trace files (these in a thread); logged.

    Meant to run periodically after start-up recovery, never on the path of a message."""
    zipped, deleted = await traces.ahousekeep(retention_days=trace_days,
                                              min_idle_s=trace_min_idle_s)
    rows = await prune(db, days=days, max_seconds=max_seconds)
    if zipped or deleted or rows.total:
        log.info("retention: %d row(s) deleted (%s)%s; traces: %d gzipped, %d deleted",
                 rows.total, ", ".join(f"{t} {n}" for t, n in rows.deleted.items() if n) or "-",
                 "" if rows.finished else ", more next time", zipped, deleted)
    return HousekeepingReport(rows=rows, traces_gzipped=zipped, traces_deleted=deleted)
