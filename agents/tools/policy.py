"""What a tool declares about how it may be called: retries and rate limits.

Both are data on the tool (``@tool(retry=..., rate_limit=...)``); the catalog applies them.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

MAX_ATTEMPTS = 3
"""No tool call is attempted more than this many times; then the model gets the error and decides."""

DEFAULT_BASE_DELAY_S = 0.5
DEFAULT_MAX_DELAY_S = 4.0


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How a retryable failure (``ToolError(retryable=True)``) is retried inside one call."""

    max_attempts: int = MAX_ATTEMPTS
    """Attempts in total, first one included (1 disables retrying; at most ``MAX_ATTEMPTS``)."""

    base_delay_s: float = DEFAULT_BASE_DELAY_S
    """Delay before the second attempt; it doubles for each attempt after that."""

    max_delay_s: float = DEFAULT_MAX_DELAY_S
    """No single backoff is longer than this."""

    attempt_timeout_s: float | None = None
    """When set, an attempt that runs longer is cut and counts as a retryable failure. The call's
    own timeout still bounds all attempts together."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be between 1 and {MAX_ATTEMPTS}, "
                             f"not {self.max_attempts!r}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("retry delays cannot be negative")
        if self.attempt_timeout_s is not None and self.attempt_timeout_s <= 0:
            raise ValueError("attempt_timeout_s must be positive")

    def delay_s(self, failed_attempt: int, *, rng: Callable[[], float] = random.random) -> float:
        """Backoff after attempt ``failed_attempt`` (1-based): exponential, capped, with jitter
        in [50%, 100%] so that calls failing together do not retry together."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (failed_attempt - 1))
        return ceiling * (0.5 + rng() / 2)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """At most ``calls`` calls in any ``per_s`` seconds, for the whole process.

    ``mode="wait"`` holds the call until a slot frees (within the call's timeout);
    ``mode="reject"`` answers at once with a ``rate_limited`` error saying when to retry.
    """

    calls: int
    per_s: float
    mode: Literal["wait", "reject"] = "wait"

    def __post_init__(self) -> None:
        if self.calls < 1 or self.per_s <= 0:
            raise ValueError(f"a rate limit needs calls >= 1 and per_s > 0, got {self!r}")


class RateLimiter:
    """A sliding-window log: the times of the last ``calls`` calls."""

    def __init__(self, limit: RateLimit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._stamps: deque[float] = deque()

    def try_acquire(self) -> float:
        """Take a slot and return 0, or return the seconds until one frees (taking nothing)."""
        now = self._clock()
        while self._stamps and self._stamps[0] <= now - self.limit.per_s:
            self._stamps.popleft()
        if len(self._stamps) < self.limit.calls:
            self._stamps.append(now)
            return 0.0
        return max(self._stamps[0] + self.limit.per_s - now, 0.001)
