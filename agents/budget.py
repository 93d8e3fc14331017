"""The budget meter: reserve a call's worst case before it is made, settle after.

Guarantee: the recorded cost of a run never exceeds its cap. Before each call the meter takes the
input estimate at the dearest input rate plus ``max_tokens`` of output; if that does not fit what is
left, ``max_tokens`` shrinks to fit, and when even a small useful call does not fit, the run halts
before calling. A call cannot bill more output than its ``max_tokens``, so the settled cost stays
within the reservation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.pricing import PER_MILLION, Price, Usage, cost_of

WARN_FRACTION = 0.70
MIN_USEFUL_OUTPUT_TOKENS = 256
INPUT_SAFETY = 1.10  # headroom on the input estimate


class BudgetHalt(Exception):
    """Too little budget is left for a useful call."""

    def __init__(self, left_usd: float, needed_usd: float) -> None:
        self.left_usd = left_usd
        self.needed_usd = needed_usd
        super().__init__(f"${left_usd:.4f} left, a useful call needs ${needed_usd:.4f}")


@dataclass(frozen=True)
class Reservation:
    max_tokens: int
    worst_case_usd: float
    input_estimate: int


class BudgetMeter:
    def __init__(self, cap_usd: float, *, spent_usd: float = 0.0, warned: bool = False) -> None:
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.warned = warned

    @property
    def left_usd(self) -> float:
        return max(0.0, self.cap_usd - self.spent_usd)

    @property
    def fraction_used(self) -> float:
        return self.spent_usd / self.cap_usd if self.cap_usd else 1.0

    def reserve(self, price: Price, *, input_tokens: int, max_tokens: int) -> Reservation:
        """The ``max_tokens`` this call may use within the budget, or BudgetHalt."""
        input_tokens = math.ceil(input_tokens * INPUT_SAFETY)
        dearest_input = max(price.input, price.cache_write_5m, price.cache_write_1h)
        input_cost = input_tokens * dearest_input / PER_MILLION
        per_output = price.output / PER_MILLION
        left = self.left_usd
        affordable = math.floor((left - input_cost) / per_output) if per_output else max_tokens
        allowed = min(max_tokens, affordable)
        floor = min(MIN_USEFUL_OUTPUT_TOKENS, max_tokens)
        if allowed < floor:
            raise BudgetHalt(left, input_cost + floor * per_output)
        return Reservation(allowed, input_cost + allowed * per_output, input_tokens)

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
