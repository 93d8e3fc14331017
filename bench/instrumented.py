"""``python -m bench.instrumented run``: ``keel run`` with two bench-only instruments.

* Event-loop lag (``KEEL_BENCH_LAG_FILE``): a callback asks to run every ``TICK_S``; each time it
  runs later than asked, the delay is a stall of the loop. Every stall of ``RECORD_MS`` or more is
  appended to the file as ``<epoch seconds> <lag ms>``, and a line ``ticks <n>`` is written every
  second, so the bench can tell "no stall" from "not measured".
* A sampling profile of the loop's thread (``KEEL_BENCH_PROFILE``): a thread looks at the main
  thread's stack every ``SAMPLE_S`` and counts each (file, function, line) chain; at exit the
  counts are written as JSON. This is how the issue's profile was taken: a coroutine waiting is
  not on the stack, so the samples show where the loop spends its CPU.

Neither changes what keel does; the start-up and memory figures use the plain ``bot.cli``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

TICK_S = 0.005
RECORD_MS = 10.0
SAMPLE_S = 0.005


class LagMonitor:
    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path) -> None:
        self.loop = loop
        self.out = path.open("a", buffering=1)
        self.ticks = 0
        self.due = loop.time() + TICK_S
        self.last_report = time.time()

    def tick(self) -> None:
        now = self.loop.time()
        lag_ms = (now - self.due) * 1000
        self.ticks += 1
        if lag_ms >= RECORD_MS:
            self.out.write(f"{time.time() - lag_ms / 1000:.4f} {lag_ms:.1f}\n")
        if time.time() - self.last_report >= 1.0:
            self.last_report = time.time()
            self.out.write(f"ticks {self.ticks}\n")
        self.due = now + TICK_S
        self.loop.call_at(self.due, self.tick)


class Sampler(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.path = path
        self.target = threading.main_thread().ident
        self.stacks: Counter[str] = Counter()
        self.samples = 0

    def run(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            frame = sys._current_frames().get(self.target or 0)
            if frame is None:
                continue
            self.samples += 1
            self.stacks[_stack(frame)] += 1

    def dump(self) -> None:
        data: dict[str, Any] = {"samples": self.samples,
                                "stacks": dict(self.stacks.most_common(4000))}
        self.path.write_text(json.dumps(data))


def _stack(frame: FrameType | None) -> str:
    parts = []
    while frame is not None:
        code = frame.f_code
        parts.append(f"{code.co_filename}:{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return ";".join(reversed(parts))


class _Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        lag_file = os.environ.get("KEEL_BENCH_LAG_FILE")
        if lag_file:
            monitor = LagMonitor(loop, Path(lag_file))
            loop.call_soon(monitor.tick)
        return loop


def main() -> int:
    asyncio.set_event_loop_policy(_Policy())
    profile = os.environ.get("KEEL_BENCH_PROFILE")
    if profile:
        sampler = Sampler(Path(profile))
        sampler.start()
        atexit.register(sampler.dump)
    from bot.cli import main as keel_main

    return keel_main(sys.argv[1:])


def read_lag(path: Path, start: float, end: float) -> dict[str, Any]:
    """Stalls recorded between ``start`` and ``end`` (epoch seconds): the longest, how many went
    over 50 ms, and whether the monitor was ticking at all."""
    stalls: list[float] = []
    ticking = False
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"measured": False}
    for line in lines:
        first, _, second = line.partition(" ")
        if first == "ticks":
            ticking = True
            continue
        try:
            at, lag = float(first), float(second)
        except ValueError:
            continue
        if start <= at <= end:
            stalls.append(lag)
    return {"measured": ticking, "max_ms": round(max(stalls), 1) if stalls else 0.0,
            "over_50ms": sum(1 for s in stalls if s > 50),
            "over_10ms": len(stalls), "total_stalled_s": round(sum(stalls) / 1000, 3)}


if __name__ == "__main__":
    sys.exit(main())
