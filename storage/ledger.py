"""The daily ledger: every model call's worst case is held before the call, settled after.

A day's caps hold however many runs go at once because the check and the hold are one statement
in a write transaction (``Database.write_many``: one writer, ``BEGIN IMMEDIATE``; on PostgreSQL the
advisory write lock): what is spent (settled, in ``usage_ledger`` and ``schedule_spend``) plus what
is held (``budget_holds``) never passes a cap.
Settling deletes the hold and records the real cost in one transaction too, so no moment exists
in which a call's money is counted neither as held nor as spent.

A hold belongs to a run. A run that crashes leaves its holds behind; at start-up
``release_stale()`` clears them (charging them as spent by default: a call in flight at the crash
may have been billed up to its worst case, and the owner's bound must stay a bound).

Days are UTC, as in ``storage.usage``. A hold counts on the day it was taken and so does its
settled cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from storage.db import Database, Params, WriteConnection, now_iso
from storage.usage import SYSTEM_USER, UsageDelta, today, usage_statements

MONEY_EPSILON = 1e-12
"""Float noise tolerated when comparing sums of USD amounts with a cap."""


@dataclass(frozen=True, kw_only=True)
class DailyCaps:
    """The daily caps a run's calls count against (None: no such cap)."""

    total_usd: float | None = None
    """Everything keel spends in a UTC day (``KEEL_DAILY_BUDGET_USD``)."""
    per_user_usd: float | None = None
    """What one person's runs spend in a day (``KEEL_DAILY_BUDGET_USD_PER_USER``); applies to runs
    with a user only."""
    per_schedule_usd: float | None = None
    """What one schedule's runs spend in a day (``KEEL_DAILY_BUDGET_USD_PER_SCHEDULE``, or the
    schedule's own ``daily_budget_usd``); applies to scheduled runs only."""


@dataclass(frozen=True, kw_only=True)
class Hold:
    """Money set aside for one model call that has not been settled yet."""

    id: int
    run_id: str
    day: str
    user_id: int
    schedule: str
    agent: str
    amount_usd: float


@dataclass(frozen=True, kw_only=True)
class Shortfall:
    """Why a hold was refused: the tightest cap and what it had left."""

    scope: str
    """Whose cap: ``"everyone"``, ``"user 42"``, ``"schedule 'digest'"``."""
    cap_usd: float
    left_usd: float


@dataclass(frozen=True, kw_only=True)
class SpendLine:
    """Spend of one scope on one day."""

    spent_usd: float
    reserved_usd: float
    cap_usd: float | None

    @property
    def left_usd(self) -> float | None:
        if self.cap_usd is None:
            return None
        return max(0.0, self.cap_usd - self.spent_usd - self.reserved_usd)


@dataclass(frozen=True, kw_only=True)
class CostReport:
    """What ``/cost`` and ``keel cost`` show: today's spend, holds and what is left."""

    day: str
    overall: SpendLine
    users: dict[int, SpendLine]
    """Per person (``SYSTEM_USER`` 0: scheduled and command-line runs, which have no person)."""
    schedules: dict[str, SpendLine]


_HOLDS_OF_RUN = ("SELECT id, day, user_id, schedule, agent, amount_usd FROM budget_holds"
                 " WHERE run_id = ?")
_HOLDS_BEFORE = ("SELECT id, run_id, day, user_id, schedule, agent, amount_usd FROM budget_holds"
                 " WHERE created_at < ?")


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ holds

    async def hold(
        self,
        *,
        run_id: str,
        agent: str,
        user_id: int | None,
        schedule: str | None,
        caps: DailyCaps,
        want_usd: float,
        min_usd: float,
        day: str | None = None,
        first: Callable[[WriteConnection], Awaitable[None]] | None = None,
    ) -> Hold | Shortfall:
        """Hold as much of ``want_usd`` as every applicable cap has left, at least ``min_usd``.

        Returns the hold (its ``amount_usd`` may be less than wanted) or, when even ``min_usd``
        does not fit, the tightest cap as a Shortfall and nothing is held. ``first`` writes in
        the same transaction, before the hold, and commits either way (a run's own row: one
        write transaction before its first model call instead of two)."""
        day = day or today()
        uid = user_id or SYSTEM_USER
        sched = schedule or ""
        statements: list[tuple[str, Params]] = []
        if first is not None:
            collected = _Collected()
            await first(collected)  # type: ignore[arg-type]
            statements += collected.statements
        scopes = _scopes(caps, user_id, schedule)
        capped = _caps_of(caps, scopes, uid, sched)
        statements.append(_hold_sql(capped, day=day, user_id=uid, schedule=sched, run_id=run_id,
                                    agent=agent, want_usd=want_usd, min_usd=min_usd))
        # check and hold in one statement, in the group commit: the caps are read by the writer
        # itself, after every write committed before it, so no two holds can both take the
        # last of a cap
        cursor = await self.db.write_many(statements)
        row = await cursor.fetchone()
        if row is not None:
            return Hold(id=int(row[0]), run_id=run_id, day=day, user_id=uid, schedule=sched,
                        agent=agent, amount_usd=float(row[1]))
        # refused: which cap, and what it has left (read now, for the message only)
        used = await _used(self.db, day, scopes, uid, sched)
        lefts = [(cap - used[scope], name, cap) for scope, name, cap in capped]
        left, scope, cap = min(lefts)
        return Shortfall(scope=scope, cap_usd=cap, left_usd=max(0.0, left))

    async def settle(self, hold: Hold, delta: UsageDelta) -> None:
        """Record the call's real cost and drop its hold, in one transaction (in the group
        commit: nothing is read back)."""
        await self.db.write_many(settle_statements(hold, delta))

    async def release(self, hold: Hold) -> None:
        """Drop a hold whose call cost nothing (the API answered with an error)."""
        await self.db.execute_write("DELETE FROM budget_holds WHERE id = ?", (hold.id,))

    async def forfeit(self, hold: Hold) -> None:
        """Charge a hold as spent: its call may have been billed, and by how much is unknown."""
        async with self.db.write() as conn:
            cursor = await conn.execute("DELETE FROM budget_holds WHERE id = ?", (hold.id,))
            if cursor.rowcount:
                await _spend(conn, hold.day, hold.user_id, hold.agent, hold.schedule,
                             UsageDelta(cost_usd=hold.amount_usd))

    async def release_run(self, run_id: str, *, charge: bool = False) -> float:
        """Drop every hold of ``run_id`` (charged as spent when ``charge``); returns the USD.
        A read first: a run with none left takes no turn of the write lock."""
        if await self.db.fetchval("SELECT 1 FROM budget_holds WHERE run_id = ? LIMIT 1",
                                  (run_id,)) is None:
            return 0.0
        return await self._clear(_HOLDS_OF_RUN, (run_id,), charge=charge)

    async def release_stale(self, *, before: str | None = None, charge: bool = True,
                            keep_runs: list[str] | None = None) -> float:
        """Clear the holds left by runs that crashed: every hold taken before ``before`` (an ISO
        time as ``now_iso()`` writes it; default now — right at start-up, when no call of this
        process is in flight), except those of ``keep_runs`` (runs still working in another live
        process). Charged as spent by default (see the module docstring)."""
        return await self._clear(_HOLDS_BEFORE, (before or now_iso(),), charge=charge,
                                 keep_runs=set(keep_runs or ()))

    async def _clear(self, select: str, params: tuple[object, ...], *, charge: bool,
                     keep_runs: set[str] | None = None) -> float:
        async with self.db.write() as conn:
            async with conn.execute(select, params) as cursor:
                rows = list(await cursor.fetchall())
            total = 0.0
            for row in rows:
                if keep_runs and row["run_id"] in keep_runs:
                    continue
                await conn.execute("DELETE FROM budget_holds WHERE id = ?", (row["id"],))
                total += float(row["amount_usd"])
                if charge:
                    await _spend(conn, row["day"], row["user_id"], row["agent"], row["schedule"],
                                 UsageDelta(cost_usd=float(row["amount_usd"]), model_calls=0))
        return total

    # ------------------------------------------------------------------ reading

    async def report(self, caps: DailyCaps, *, day: str | None = None) -> CostReport:
        """Spent, reserved and left today, overall, per person and per schedule."""
        day = day or today()
        spent_users = {r["user_id"]: float(r["s"]) for r in await self.db.fetchall(
            "SELECT user_id, SUM(cost_usd) AS s FROM usage_ledger WHERE day = ? GROUP BY user_id",
            (day,))}
        held_users = {r["user_id"]: float(r["s"]) for r in await self.db.fetchall(
            "SELECT user_id, SUM(amount_usd) AS s FROM budget_holds WHERE day = ?"
            " GROUP BY user_id", (day,))}
        spent_sched = {r["schedule"]: float(r["s"]) for r in await self.db.fetchall(
            "SELECT schedule, SUM(cost_usd) AS s FROM schedule_spend WHERE day = ?"
            " GROUP BY schedule", (day,))}
        held_sched = {r["schedule"]: float(r["s"]) for r in await self.db.fetchall(
            "SELECT schedule, SUM(amount_usd) AS s FROM budget_holds WHERE day = ?"
            " AND schedule != '' GROUP BY schedule", (day,))}
        users = {
            uid: SpendLine(spent_usd=spent_users.get(uid, 0.0), reserved_usd=held_users.get(uid, 0.0),
                           cap_usd=caps.per_user_usd if uid != SYSTEM_USER else None)
            for uid in sorted(set(spent_users) | set(held_users))
        }
        schedules = {
            name: SpendLine(spent_usd=spent_sched.get(name, 0.0),
                            reserved_usd=held_sched.get(name, 0.0), cap_usd=caps.per_schedule_usd)
            for name in sorted(set(spent_sched) | set(held_sched))
        }
        overall = SpendLine(spent_usd=sum(spent_users.values()),
                            reserved_usd=sum(held_users.values()), cap_usd=caps.total_usd)
        return CostReport(day=day, overall=overall, users=users, schedules=schedules)

    async def used(self, caps: DailyCaps, *, user_id: int | None, schedule: str | None,
                   day: str | None = None) -> dict[Scope, float]:
        """Spent plus held today in each scope that has a cap (``"all"``, the user's, the
        schedule's), in one read: the fast refusal before a run starts."""
        return await _used(self.db, day or today(), _scopes(caps, user_id, schedule),
                           user_id or SYSTEM_USER, schedule or "")

    async def held(self, *, run_id: str | None = None) -> float:
        """USD held now (by ``run_id``, or by everyone)."""
        if run_id is None:
            value = await self.db.fetchval("SELECT COALESCE(SUM(amount_usd), 0) FROM budget_holds")
        else:
            value = await self.db.fetchval(
                "SELECT COALESCE(SUM(amount_usd), 0) FROM budget_holds WHERE run_id = ?", (run_id,))
        return float(value or 0.0)


Scope = Literal["all", "user", "schedule"]

# Spent + held on a day within a scope, as one scalar subquery each. Constant SQL per scope,
# parameters only; the scopes asked together are read in one statement (one round trip).
_USED_SQL: dict[Scope, str] = {
    "all": "(SELECT COALESCE(SUM(cost_usd), 0) FROM day_spend WHERE day = ?)"
           " + (SELECT COALESCE(SUM(amount_usd), 0) FROM budget_holds WHERE day = ?)",
    "user": "(SELECT COALESCE(SUM(cost_usd), 0) FROM usage_ledger WHERE day = ? AND user_id = ?)"
            " + (SELECT COALESCE(SUM(amount_usd), 0) FROM budget_holds"
            " WHERE day = ? AND user_id = ?)",
    "schedule": "(SELECT COALESCE(SUM(cost_usd), 0) FROM schedule_spend"
                " WHERE day = ? AND schedule = ?)"
                " + (SELECT COALESCE(SUM(amount_usd), 0) FROM budget_holds"
                " WHERE day = ? AND schedule = ?)",
}


def _scopes(caps: DailyCaps, user_id: int | None, schedule: str | None) -> list[Scope]:
    """The scopes whose caps apply to a run of ``user_id`` / ``schedule``."""
    scopes: list[Scope] = []
    if caps.total_usd is not None:
        scopes.append("all")
    if caps.per_user_usd is not None and user_id is not None:
        scopes.append("user")
    if caps.per_schedule_usd is not None and schedule:
        scopes.append("schedule")
    return scopes


async def _used(db: Database, day: str, scopes: list[Scope], user_id: int,
                schedule: str) -> dict[Scope, float]:
    """Spent plus held on ``day`` in each of ``scopes``, in one read."""
    if not scopes:
        return {}
    sql = "SELECT " + ", ".join(_USED_SQL[scope] for scope in scopes)
    params: list[object] = []
    for scope in scopes:
        params += _used_params(scope, day, user_id, schedule)
    row = await db.fetchone(sql, params, quick=True)
    return {scope: float(row[i] if row else 0.0) for i, scope in enumerate(scopes)}


def _used_params(scope: Scope, day: str, user_id: int, schedule: str) -> list[object]:
    """The parameters of ``_USED_SQL[scope]``."""
    key: tuple[object, ...] = {"all": (), "user": (user_id,), "schedule": (schedule,)}[scope]
    return [day, *key, day, *key]


class _Collected:
    """Stands in for a write connection to collect ``later`` statements (a run's own row,
    written with its first hold)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Params]] = []

    async def later(self, sql: str, params: Params = (), /) -> None:
        self.statements.append((sql, params))

    def execute(self, sql: str, params: Params = (), /) -> Any:
        raise TypeError("a hold's first writes can only be later() statements")


def _caps_of(caps: DailyCaps, scopes: list[Scope], user_id: int, schedule: str
             ) -> list[tuple[Scope, str, float]]:
    """(scope, whose cap it is, the cap) for each of ``scopes``."""
    out: list[tuple[Scope, str, float]] = []
    for scope in scopes:
        if scope == "all" and caps.total_usd is not None:
            out.append((scope, "everyone", caps.total_usd))
        elif scope == "user" and caps.per_user_usd is not None:
            out.append((scope, f"user {user_id}", caps.per_user_usd))
        elif scope == "schedule" and caps.per_schedule_usd is not None:
            out.append((scope, f"schedule {schedule!r}", caps.per_schedule_usd))
    return out


def _hold_sql(caps: list[tuple[Scope, str, float]], *, day: str, user_id: int, schedule: str,
              run_id: str, agent: str, want_usd: float, min_usd: float) -> tuple[str, Params]:
    """One statement that holds as much of ``want_usd`` as the tightest of ``caps`` has left
    (its spent plus held, summed by the statement itself), and nothing when that is below
    ``min_usd``; it returns the hold's id and amount, or no row. No caps: ``want_usd``."""
    insert = ("INSERT INTO budget_holds (run_id, day, user_id, schedule, agent, amount_usd,"
              " created_at)")
    if not caps:
        return (insert + " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id, amount_usd",  # noqa: S608
                (run_id, day, user_id, schedule, agent, want_usd, now_iso()))
    lefts: list[str] = []
    params: list[object] = []
    for scope, _, cap in caps:
        lefts.append(f"SELECT ? - ({_USED_SQL[scope]}) AS left_usd")
        params += [cap, *_used_params(scope, day, user_id, schedule)]
    # (built from the constants above only; every value is a parameter)
    sql = ("WITH lefts AS (" + " UNION ALL ".join(lefts) + "),"  # noqa: S608
           " tight AS (SELECT MIN(left_usd) AS left_usd FROM lefts) "
           + insert + " SELECT ?, ?, ?, ?, ?,"
           " CASE WHEN left_usd < ? THEN left_usd ELSE ? END, ?"
           " FROM tight WHERE left_usd + ? >= ? RETURNING id, amount_usd")
    params += [run_id, day, user_id, schedule, agent, want_usd, want_usd, now_iso(),
               MONEY_EPSILON, min_usd]
    return sql, params


_SCHEDULE_SPEND_SQL = (
    "INSERT INTO schedule_spend (day, schedule, cost_usd, model_calls) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (day, schedule) DO UPDATE SET"
    " cost_usd = schedule_spend.cost_usd + excluded.cost_usd,"
    " model_calls = schedule_spend.model_calls + excluded.model_calls")


def settle_statements(hold: Hold, delta: UsageDelta) -> list[tuple[str, Params]]:
    """What settling ``hold`` at ``delta`` writes: the hold dropped, the real cost spent. Not
    idempotent: written once (``Ledger.settle``, or by a run with its next write)."""
    return [("DELETE FROM budget_holds WHERE id = ?", (hold.id,)),
            *_spend_statements(hold.day, hold.user_id, hold.agent, hold.schedule, delta)]


def _spend_statements(day: str, user_id: int, agent: str, schedule: str,
                      delta: UsageDelta) -> list[tuple[str, Params]]:
    """What a settled cost writes: the day's usage of (user, agent), and of its schedule."""
    out: list[tuple[str, Params]] = list(
        usage_statements(day=day, user_id=user_id, agent=agent, delta=delta))
    if schedule:
        out.append((_SCHEDULE_SPEND_SQL, (day, schedule, delta.cost_usd, delta.model_calls)))
    return out


async def _spend(conn: WriteConnection, day: str, user_id: int, agent: str, schedule: str,
                 delta: UsageDelta) -> None:
    for sql, params in _spend_statements(day, user_id, agent, schedule, delta):
        await conn.later(sql, params)
