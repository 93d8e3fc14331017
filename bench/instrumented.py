"""``python -m bench.instrumented run``: ``keel run`` with two bench-only instruments.

* Event-loop lag (``KEEL_BENCH_LAG_FILE``): a callback asks to run every ``TICK_S``; each time it
  runs later than asked, the delay is a stall of the loop. Every stall of ``RECORD_MS`` or more is
  appended to the file as ``<epoch seconds> <lag ms>``, and a line ``ticks <n>`` is written every
  second, so the bench can tell "no stall" from "not measured".
* A sampling profile of the loop's thread (``KEEL_BENCH_PROFILE``): a thread looks at the main
  thread's stack every ``SAMPLE_S`` and counts each (file, function, line) chain; at exit the
  counts are written as JSON. This is how the issue's profile was taken: a coroutine waiting is
  not on the stack, so the samples show where the loop spends its CPU.
* With ``KEEL_BENCH_PROFILE_WINDOW_S``, either profile covers only the first that many seconds
  of each concurrency burst (from SIGUSR1): intake, without the half minute of paced replies
  after it. A cProfile (``KEEL_BENCH_CPROFILE``) then covers the first burst and is written when
  its window ends.

Neither changes what keel does; the start-up and memory figures use the plain ``bot.cli``.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

TICK_S = 0.005
RECORD_MS = 10.0
SAMPLE_S = 0.005
IDLE = "selectors.py:select:"
"""The innermost frame of a loop waiting for I/O (any line)."""
MAX_BUSY = 400_000
WINDOW_S = float(os.environ.get("KEEL_BENCH_PROFILE_WINDOW_S") or 0)
_burst: list[float] = []
"""When the last burst began (``LagMonitor.start``), for the profiles' window."""


def _in_window() -> bool:
    return not WINDOW_S or bool(_burst) and time.time() - _burst[0] < WINDOW_S


class LagMonitor:
    """Ticks only between SIGUSR1 and SIGUSR2 (``Stage.watch_loop``): a loop woken every 5 ms
    costs the bot ~20 ms of CPU a second, which would be counted as keel's own elsewhere."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path) -> None:
        self.loop = loop
        self.out = path.open("a", buffering=1)
        self.ticks = 0
        self.due = loop.time() + TICK_S
        self.last_report = time.time()
        self.active = False

    def start(self) -> None:
        _burst[:] = [time.time()]
        if not self.active:
            self.active = True
            self.due = self.loop.time() + TICK_S
            self.loop.call_at(self.due, self.tick)

    def stop(self) -> None:
        self.active = False

    def tick(self) -> None:
        if not self.active:
            return
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


class GcTimer:
    """Every garbage collection, as a ``gc <generation> <epoch seconds> <ms> <freed>`` line in the
    lag file: their total is event-loop time spent walking objects, and one of a large heap stops
    the loop like any other work."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        ms = (time.perf_counter() - self.started) * 1000
        # every collection, for the burst's total; those of 10 ms or more are also stalls
        self.out.write(f"gc {info.get('generation')} {time.time() - ms / 1000:.4f} {ms:.2f}"
                       f" {info.get('collected')}\n")


class Sampler(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.path = path
        self.target = threading.main_thread().ident
        self.stacks: Counter[str] = Counter()
        self.samples = 0
        self.db: DbCounters | None = None
        self.busy: list[tuple[float, str]] = []

    def run(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            frame = sys._current_frames().get(self.target or 0)
            if frame is None or not _in_window():
                continue
            self.samples += 1
            stack = _stack(frame)
            self.stacks[stack] += 1
            if IDLE not in stack.rsplit(";", 1)[-1] and len(self.busy) < MAX_BUSY:
                self.busy.append((time.time(), stack))

    def dump(self) -> None:
        data: dict[str, Any] = {"samples": self.samples,
                                "stacks": dict(self.stacks.most_common(4000))}
        if self.db is not None:
            data["db"] = self.db.as_dict()
        lag_file = os.environ.get("KEEL_BENCH_LAG_FILE")
        if lag_file:  # where the loop was during its stalls of 50 ms or more
            windows = []
            for line in Path(lag_file).read_text().splitlines():
                first, _, second = line.partition(" ")
                try:
                    at, lag = float(first), float(second)
                except ValueError:
                    continue
                if lag >= 50:
                    windows.append((at, at + lag / 1000))
            during: Counter[str] = Counter()
            for at, stack in self.busy:
                if any(a <= at <= b for a, b in windows):
                    during[stack] += 1
            data["stalls"] = len(windows)
            data["stall_stacks"] = dict(during.most_common(500))
        self.path.write_text(json.dumps(data))


def _stack(frame: FrameType | None) -> str:
    parts = []
    while frame is not None:
        code = frame.f_code
        parts.append(f"{code.co_filename}:{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return ";".join(reversed(parts))


class DbCounters:
    """Per caller (the first frame outside storage/db.py and contextlib): write transactions, the
    time they waited for the write lock and held it, and reads. Installed with the profile (and
    kept to its window, if it has one)."""

    def __init__(self) -> None:
        self.writes: dict[str, list[float]] = {}
        self.reads: Counter[str] = Counter()

    def install(self) -> None:
        from storage import db

        counters = self
        original_fetchall = db.Database.fetchall

        class TimedLock(asyncio.Lock):
            async def acquire(self) -> bool:
                caller = _caller()
                asked = time.monotonic()
                got = await super().acquire()
                self._entry = (caller, asked, time.monotonic())
                return got

            def release(self) -> None:
                caller, asked, got = self._entry
                if not _in_window():
                    super().release()
                    return
                line = counters.writes.setdefault(caller, [0, 0.0, 0.0])
                line[0] += 1
                line[1] += got - asked
                line[2] += time.monotonic() - got
                super().release()

        original_init = db.Database.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            self._lock = TimedLock()

        async def fetchall(self: Any, sql: str, params: Any = (), **kwargs: Any) -> Any:
            if _in_window():
                counters.reads[_caller()] += 1
            return await original_fetchall(self, sql, params, **kwargs)

        db.Database.__init__ = init  # type: ignore[method-assign]
        db.Database.fetchall = fetchall  # type: ignore[method-assign]

    def as_dict(self) -> dict[str, Any]:
        return {"writes": {k: [v[0], round(v[1], 3), round(v[2], 3)]
                           for k, v in sorted(self.writes.items(), key=lambda kv: -kv[1][0])},
                "reads": dict(self.reads.most_common())}


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.endswith(("storage/db.py",
                                                                    "contextlib.py", "locks.py",
                                                                    "bench/instrumented.py"))):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "?"
    name = frame.f_code.co_filename.rsplit("/", 2)
    return f"{'/'.join(name[-2:])}:{frame.f_code.co_name}"


class _Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        lag_file = os.environ.get("KEEL_BENCH_LAG_FILE")
        if lag_file:
            monitor = LagMonitor(loop, Path(lag_file))
            cprofile = os.environ.get("KEEL_BENCH_CPROFILE")
            if cprofile and WINDOW_S:
                loop.add_signal_handler(signal.SIGUSR1, _profiled_burst(loop, monitor,
                                                                        Path(cprofile)))
            else:
                loop.add_signal_handler(signal.SIGUSR1, monitor.start)
            loop.add_signal_handler(signal.SIGUSR2, monitor.stop)
            gc.callbacks.append(GcTimer(monitor.out))
        return loop


def _profiled_burst(loop: asyncio.AbstractEventLoop, monitor: LagMonitor,
                    path: Path) -> Callable[[], None]:
    """SIGUSR1's handler with a windowed cProfile: the first burst's first ``WINDOW_S``
    seconds, every call of the loop's thread counted, written to ``path`` when they end."""
    import cProfile

    profiler = cProfile.Profile()
    done = False

    def stop() -> None:
        profiler.disable()
        profiler.dump_stats(str(path))

    def start() -> None:
        nonlocal done
        monitor.start()
        if not done:
            done = True
            profiler.enable()
            loop.call_later(WINDOW_S, stop)

    return start


class GarbageCensus:
    """What the cyclic garbage collector frees (KEEL_BENCH_GARBAGE=path): the type names of the
    objects it found unreachable, written at exit. Objects in reference cycles live until a
    collection frees them, and freeing tens of thousands at once stalls the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.types: Counter[str] = Counter()
        self.collections = 0
        gc.set_debug(gc.DEBUG_SAVEALL)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or not gc.garbage:
            return
        self.collections += 1
        big = len(gc.garbage) >= 1000
        for obj in gc.garbage:
            kind = type(obj)
            name = getattr(obj, "__qualname__", "") if kind.__name__ in ("function", "code") \
                else ""
            self.types[f"{kind.__module__}.{kind.__qualname__}{' ' + name if name else ''}"] += 1
        gc.garbage.clear()
        if big:  # a stop that runs out of time kills the process before atexit
            self.dump()

    def dump(self) -> None:
        self.path.write_text(json.dumps({"collections": self.collections,
                                         "types": dict(self.types.most_common(80))}, indent=0))


def main() -> int:
    asyncio.set_event_loop_policy(_Policy())
    garbage = os.environ.get("KEEL_BENCH_GARBAGE")
    if garbage:
        census = GarbageCensus(Path(garbage))
        gc.callbacks.append(census)
        atexit.register(census.dump)
    profile = os.environ.get("KEEL_BENCH_PROFILE")
    if profile:
        sampler = Sampler(Path(profile))
        sampler.db = DbCounters()
        sampler.db.install()
        sampler.start()
        atexit.register(sampler.dump)
    from bot.cli import main as keel_main

    cprofile = os.environ.get("KEEL_BENCH_CPROFILE")
    if cprofile and not WINDOW_S:  # every call counted (slower, but CPU is attributed exactly, GIL or not)
        import cProfile

        profiler = cProfile.Profile()
        atexit.register(lambda: profiler.dump_stats(cprofile))
        return int(profiler.runcall(keel_main, sys.argv[1:]) or 0)
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
    gcs: list[float] = []
    collections, gc_total = 0, 0.0
    generations: dict[str, int] = {}
    longest: list[tuple[float, str, str]] = []
    for line in lines:
        first, _, second = line.partition(" ")
        if first == "ticks":
            ticking = True
            continue
        if first == "gc":
            generation, at_text, ms_text, *collected = second.split()
            if start <= float(at_text) <= end:
                collections += 1
                gc_total += float(ms_text)
                if float(ms_text) < RECORD_MS:
                    continue
                gcs.append(float(ms_text))
                longest.append((float(ms_text), generation, "".join(collected[:1]) or "?"))
                generations[generation] = generations.get(generation, 0) + 1
            continue
        try:
            at, lag = float(first), float(second)
        except ValueError:
            continue
        if start <= at <= end:
            stalls.append(lag)
    return {"measured": ticking, "max_ms": round(max(stalls), 1) if stalls else 0.0,
            "over_50ms": sum(1 for s in stalls if s > 50),
            "over_10ms": len(stalls), "total_stalled_s": round(sum(stalls) / 1000, 3),
            "gc_collections": collections, "gc_total_ms": round(gc_total, 1),
            "gc_over_10ms": len(gcs), "gc_max_ms": round(max(gcs), 1) if gcs else 0.0,
            "gc_over_10ms_by_generation": dict(sorted(generations.items())),
            "gc_longest_ms_generation_collected": sorted(longest, reverse=True)[:5]}


if __name__ == "__main__":
    sys.exit(main())
