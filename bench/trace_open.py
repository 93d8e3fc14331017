"""Trace open: the cost of opening a run's trace with few and with many traces stored.

In process, on a temporary directory: N stored traces spread over 30 day folders, then new traces
opened with ``TraceStore.writer`` (what every run does) and existing ones reopened with their day
(what a continued run does). For comparison, a full ``list()`` of the store: what opening a trace
cost before it stopped walking the directory. Opening should cost the same at every N.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.stats import ratio, summary
from storage.traces import TraceStore

DAYS = 30


def _populate(root: Path, count: int) -> list[tuple[str, Any]]:
    today = datetime.now(UTC).date()
    stored = []
    for i in range(count):
        day = today - timedelta(days=i % DAYS)
        folder = root / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        trace_id = str(uuid.uuid4())
        (folder / f"{trace_id}.jsonl").write_text(
            f'{{"seq": 1, "type": "run_start", "trace_id": "{trace_id}"}}\n')
        stored.append((trace_id, day))
    return stored


def _time_ms(call: Any) -> float:
    started = time.perf_counter()
    writer = call()
    elapsed = (time.perf_counter() - started) * 1000
    writer.close()
    return elapsed


def _measure_one(count: int, opens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="keel-bench-traces-") as tmp:
        root = Path(tmp)
        stored = _populate(root, count)
        store = TraceStore(root)  # a fresh process: nothing remembered
        started = time.perf_counter()
        listed = len(store.list())
        list_ms = (time.perf_counter() - started) * 1000
        for _ in range(20):  # warm-up: imports, the day folder, the allocator
            _time_ms(lambda: store.writer(trace_id=str(uuid.uuid4()), run_id="r"))
        new = [_time_ms(lambda: store.writer(trace_id=str(uuid.uuid4()), run_id="r"))
               for _ in range(opens)]
        step = max(1, len(stored) // opens)
        reopened = [_time_ms(lambda t=t, d=d: TraceStore(root).writer(trace_id=t, run_id="r", day=d))
                    for t, d in stored[::step][:opens]]
    return {"stored": count, "open_new_ms": summary(new), "reopen_ms": summary(reopened),
            "full_listing_ms": round(list_ms, 2), "listed": listed}


async def measure(sizes: list[int], opens: int) -> dict[str, Any]:
    out = {str(n): _measure_one(n, opens) for n in sizes}
    small, large = out[str(min(sizes))], out[str(max(sizes))]
    return {"sizes": out, "opens_per_size": opens,
            "open_new_p50_ratio_large_over_small": ratio(large["open_new_ms"]["p50"],
                                                         small["open_new_ms"]["p50"]),
            "reopen_p50_ratio_large_over_small": ratio(large["reopen_ms"]["p50"],
                                                       small["reopen_ms"]["p50"])}
