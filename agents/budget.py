"""The budget meter: reserve a call's worst case before it is made, settle after.

Guarantee: the recorded cost of a run never exceeds its cap, and a day's spend never exceeds any
daily cap that applies to the run (overall, per person, per schedule), however many runs go at
once. Before each call the meter takes an upper bound of the input at the dearest rate the request
can incur, plus ``max_tokens`` of output. If that does not fit what is left of the run's cap,
``max_tokens`` shrinks to fit; then the same worst case is held in the daily ledger against every
daily cap in one transaction (``LedgerGate``), shrinking ``max_tokens`` again to what the days
have left. When even a small useful call does not fit, the run halts before calling. A call cannot
bill more output than its ``max_tokens`` nor more input than the bound, so the settled cost stays
within the hold, and the settled cost replaces the hold.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from agents.errors import KeelError
from agents.pricing import PER_MILLION, Price, Usage, cost_of, dearest_input_rate
from storage.db import Params, WriteConnection
from storage.ledger import DailyCaps, Hold, Ledger, Shortfall, settle_statements
from storage.usage import UsageDelta

WARN_FRACTION = 0.70
MIN_USEFUL_OUTPUT_TOKENS = 256

HaltScope = Literal["run", "daily"]


class BudgetHalt(KeelError):
    """Too little budget is left for a useful call; raised before the call, so nothing was spent
    on it. ``scope`` says whose budget: the run's own cap, or a daily cap (``cap_name``)."""

    def __init__(self, left_usd: float, needed_usd: float, *, max_tokens: int = 0,
                 scope: HaltScope = "run", cap_name: str = "run", cap_usd: float = 0.0) -> None:
        self.left_usd = left_usd
        self.needed_usd = needed_usd
        self.max_tokens = max_tokens
        self.scope: HaltScope = scope
        self.cap_name = cap_name
        self.cap_usd = cap_usd
        super().__init__(f"${left_usd:.4f} left, a useful call needs ${needed_usd:.4f}")

    def explain(self, meter: BudgetMeter, *, calls: int = 0) -> str:
        """One sentence for a person: what was spent, and what one answer would need.

        ``calls``: model calls the run made before the halt (0: it never got to answer)."""
        answer = f"one answer of at most {self.max_tokens} tokens" if self.max_tokens else "one call"
        if self.scope == "daily":
            return (f"the daily budget of {self.cap_name} is used up for today: "
                    f"{usd(self.left_usd)} of {usd(self.cap_usd)} is left, and {answer} could "
                    f"cost up to {usd(self.needed_usd)}")
        cannot = (f"this {usd(meter.cap_usd)} budget cannot cover {answer} "
                  f"(up to {usd(self.needed_usd)})")
        if meter.spent_usd == 0:
            return f"nothing was spent; {cannot}"
        if calls == 0:
            return f"nothing was spent on an answer (choosing the agent cost " \
                   f"{usd(meter.spent_usd)}); {cannot}"
        return (f"spent {usd(meter.spent_usd)} of the {usd(meter.cap_usd)} budget; the next "
                f"call could cost up to {usd(self.needed_usd)}")


def usd(amount: float) -> str:
    """Dollars as a person reads them: cents for large amounts, 4 decimals for small ones."""
    return f"${amount:.2f}" if amount >= 0.10 else f"${amount:.4f}"


@dataclass(frozen=True)
class Reservation:
    max_tokens: int
    worst_case_usd: float
    input_estimate: int
    """The input bound the reservation was priced on (tokens)."""
    input_rate: float = 0.0
    """USD per million input tokens it was priced at."""

    @property
    def input_usd(self) -> float:
        return self.input_estimate * self.input_rate / PER_MILLION


class BudgetMeter:
    def __init__(self, cap_usd: float, *, spent_usd: float = 0.0, warned: bool = False) -> None:
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.warned = warned
        self.gate: LedgerGate | None = None
        """The daily ledger this run's calls are held in (None: the run's cap only)."""

    @property
    def left_usd(self) -> float:
        return max(0.0, self.cap_usd - self.spent_usd)

    @property
    def fraction_used(self) -> float:
        return self.spent_usd / self.cap_usd if self.cap_usd else 1.0

    def reserve(self, price: Price, *, input_tokens: int, max_tokens: int,
                input_rate: float | None = None) -> Reservation:
        """The ``max_tokens`` this call may use within the run's cap, or BudgetHalt.

        ``input_tokens`` must be an upper bound of the call's input; ``input_rate`` (USD per
        million) the dearest rate the request can incur (default: any cache write, 1 hour)."""
        return fit(price, left_usd=self.left_usd, input_tokens=input_tokens,
                   max_tokens=max_tokens, input_rate=input_rate)

    def settle(self, price: Price, usage: Usage) -> float:
        """Record a call's real cost; returns it."""
        cost = cost_of(price, usage)
        self.spent_usd += cost
        return cost

    def should_warn(self) -> bool:
        """True once, the first time spend reaches the warning fraction."""
        if not self.warned and self.fraction_used >= WARN_FRACTION:
            self.warned = True
            return True
        return False

    @property
    def exhausted(self) -> bool:
        return self.spent_usd >= self.cap_usd


def fit(price: Price, *, left_usd: float, input_tokens: int, max_tokens: int,
        input_rate: float | None = None, scope: HaltScope = "run", cap_name: str = "run",
        cap_usd: float = 0.0) -> Reservation:
    """The largest call (``max_tokens`` ≤ the one asked) whose worst case fits ``left_usd``."""
    rate = dearest_input_rate(price) if input_rate is None else input_rate
    input_cost = input_tokens * rate / PER_MILLION
    per_output = price.output / PER_MILLION
    affordable = math.floor((left_usd - input_cost) / per_output) if per_output else max_tokens
    allowed = min(max_tokens, affordable)
    floor = min(MIN_USEFUL_OUTPUT_TOKENS, max_tokens)
    if allowed < floor:
        raise BudgetHalt(left_usd, input_cost + floor * per_output, max_tokens=floor,
                         scope=scope, cap_name=cap_name, cap_usd=cap_usd)
    return Reservation(allowed, input_cost + allowed * per_output, input_tokens, rate)


class LedgerGate:
    """One run's door to the daily ledger: hold a call's worst case, then settle or release it."""

    def __init__(self, ledger: Ledger, caps: DailyCaps, *, run_id: str, agent: str,
                 user_id: int | None, schedule: str | None = None) -> None:
        self.ledger = ledger
        self.caps = caps
        self.run_id = run_id
        self.agent = agent
        self.user_id = user_id
        self.schedule = schedule
        self.unwritten: Callable[[WriteConnection], Awaitable[None]] | None = None
        """A write still owed before this run's first hold (its ``runs`` row: ``Runtime.run``);
        it commits with that hold, or with the run's outcome if it never calls the model."""
        self.defer_last_settle = False
        """A run's gate (``Runtime.attach_ledger``): the settlement of a call that ends the
        run's model work is written with the run's next write, its outcome (or the next
        hold, when a retry or a grader calls again) instead of in a transaction of its own."""
        self._settled: list[tuple[str, Params]] = []
        """Statements of a settled call not written yet (``defer_last_settle``)."""

    async def hold(self, price: Price, reservation: Reservation) -> tuple[Reservation, Hold]:
        """Hold ``reservation`` (shrunk to what every daily cap has left), or BudgetHalt."""
        per_output = price.output / PER_MILLION
        floor = min(MIN_USEFUL_OUTPUT_TOKENS, reservation.max_tokens)
        owed = self.owed()
        # A settlement is handed over before the write: never written twice. If the hold's
        # transaction fails (or its caller is cancelled before it is known), it may be lost;
        # that call's hold then stays and is charged as spent at the run's end or at start-up:
        # never under the real cost, never counted twice. The run's row is written again with
        # the outcome in that case (``runs.start`` is idempotent).
        self._settled = []
        got = await self.ledger.hold(
            run_id=self.run_id, agent=self.agent, user_id=self.user_id, schedule=self.schedule,
            caps=self.caps, want_usd=reservation.worst_case_usd,
            min_usd=reservation.input_usd + floor * per_output, first=owed)
        self.unwritten = None  # committed with the hold (or with the shortfall's transaction)
        if isinstance(got, Shortfall):
            raise BudgetHalt(got.left_usd, reservation.input_usd + floor * per_output,
                             max_tokens=floor, scope="daily", cap_name=got.scope,
                             cap_usd=got.cap_usd)
        if got.amount_usd >= reservation.worst_case_usd:
            return reservation, got
        fitted = fit(price, left_usd=got.amount_usd, input_tokens=reservation.input_estimate,
                     max_tokens=reservation.max_tokens, input_rate=reservation.input_rate)
        return fitted, got

    async def settle(self, hold: Hold, usage: Usage, cost: float, *, last: bool = False) -> None:
        """The call's real cost replaces its hold (one transaction). ``last``: the call ended
        the run's model work (no tool to run); with ``defer_last_settle`` it is written with the
        run's next write, a few milliseconds later, instead of in a transaction of its own."""
        delta = UsageDelta(
            cost_usd=cost, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens)
        if last and self.defer_last_settle:
            self._settled += settle_statements(hold, delta)
            return
        await self.ledger.settle(hold, delta)

    def owed(self) -> Callable[[WriteConnection], Awaitable[None]] | None:
        """What the run still owes the database (its ``runs`` row, a settled call), as the
        first writes of its next transaction; None when nothing is owed."""
        start, settled = self.unwritten, list(self._settled)
        if start is None and not settled:
            return None

        async def write(conn: WriteConnection) -> None:
            if start is not None:
                await start(conn)
            for sql, params in settled:
                await conn.later(sql, params)

        return write

    def written(self) -> None:
        """What ``owed`` returned was handed to a transaction."""
        self.unwritten, self._settled = None, []

    async def release(self, hold: Hold) -> None:
        """The call was answered with an error: nothing was billed."""
        await self.ledger.release(hold)

    async def forfeit(self, hold: Hold) -> None:
        """The call's outcome is unknown (cancelled, timed out, connection lost after sending):
        it may have been billed up to its worst case, so the hold is charged as spend."""
        await self.ledger.forfeit(hold)


__all__ = ["BudgetHalt", "BudgetMeter", "DailyCaps", "LedgerGate", "Reservation", "fit"]
