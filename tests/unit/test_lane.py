"""storage.lane.Lane: the database's hop to its threads (issue 15). It must keep what the
executor gave (results, exceptions, order, cancelled calls never run, a shutdown that finishes
what is queued) while waking the loop once for results that finish together."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storage.db import Database
from storage.lane import Lane


async def test_results_exceptions_and_order() -> None:
    lane = Lane(1, "test-lane")
    seen: list[int] = []

    def step(n: int) -> int:
        seen.append(n)
        return n * n

    def fail() -> None:
        raise KeyError("nope")

    futures = [lane.submit(step, n) for n in range(50)]
    failing = lane.submit(fail)
    assert await asyncio.gather(*futures) == [n * n for n in range(50)]
    with pytest.raises(KeyError, match="nope"):
        await failing
    assert seen == list(range(50))
    assert threading.current_thread().name not in {t.name for t in lane._threads}
    await asyncio.to_thread(lane.shutdown)


async def test_a_call_cancelled_before_it_started_never_runs() -> None:
    lane = Lane(1, "test-lane")
    gate = threading.Event()
    ran: list[str] = []
    blocker = lane.submit(gate.wait)
    victim = lane.submit(ran.append, "victim")
    after = lane.submit(ran.append, "after")
    victim.cancel()
    gate.set()
    await blocker
    await after
    assert ran == ["after"]
    await asyncio.to_thread(lane.shutdown)


async def test_results_that_finish_together_wake_the_loop_once() -> None:
    lane = Lane(1, "test-lane")
    loop = asyncio.get_running_loop()
    wakes = 0
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal wakes
        wakes += 1
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        futures = [lane.submit(int, n) for n in range(200)]
        time.sleep(0.3)  # noqa: ASYNC251 (on purpose: the loop is busy while every call finishes)
        assert await asyncio.gather(*futures) == list(range(200))
    finally:
        del loop.call_soon_threadsafe
    assert wakes == 1  # an executor's hop woke the loop once per result: 200
    await asyncio.to_thread(lane.shutdown)


async def test_shutdown_runs_what_is_queued_then_refuses() -> None:
    lane = Lane(2, "test-lane")
    done: list[int] = []
    futures = [lane.submit(lambda n=n: (time.sleep(0.001), done.append(n))) for n in range(20)]
    await asyncio.to_thread(lane.shutdown)
    assert sorted(done) == list(range(20))
    await asyncio.gather(*futures)
    assert not any(t.is_alive() for t in lane._threads)
    with pytest.raises(RuntimeError, match="shut down"):
        lane.submit(int, 1)


async def test_the_database_hops_without_an_executor(tmp_path: Path, monkeypatch: Any) -> None:
    submitted = 0
    original = concurrent.futures.ThreadPoolExecutor.submit

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal submitted
        submitted += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", counting)
    db = Database(tmp_path / "lane.db")
    await db.connect()
    try:
        await db.execute_write("CREATE TABLE t (n INTEGER)")
        await asyncio.gather(*[db.execute_write("INSERT INTO t VALUES (?)", (n,))
                               for n in range(30)])
        async with db.write() as conn:
            await conn.execute("INSERT INTO t VALUES (?)", (100,))
            await conn.last("INSERT INTO t VALUES (?)", (101,))
        rows = await asyncio.gather(*[db.fetchval("SELECT count(*) FROM t") for _ in range(10)])
        assert rows == [32] * 10
        assert submitted == 0  # (closing waits for the threads in the default executor)
    finally:
        await db.close()


def test_each_loop_gets_its_own_results_back() -> None:
    """The trace lanes are shared by every loop in the process (a test's, a worker's)."""
    lane = Lane(2, "test-lane")
    gate = threading.Barrier(2)

    async def use(tag: str) -> list[str]:
        first = lane.submit(gate.wait)  # both loops have a call in the lane at once
        rest = [lane.submit(str.upper, f"{tag}{n}") for n in range(50)]
        await first
        return await asyncio.gather(*rest)

    results: dict[str, list[str]] = {}

    def run(tag: str) -> None:
        results[tag] = asyncio.run(use(tag))

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {tag: [f"{tag.upper()}{n}" for n in range(50)] for tag in ("a", "b")}
    lane.shutdown()
