"""While many updates are in flight Python's cyclic collector is paused (bot/app.py
``_pause_collector``), and one young collection frees the cycles made meanwhile when the burst
ends (issue 15).

In a burst each update keeps its objects alive for seconds: young collections every 0.1 s walked
each of them once, 540 ms of the event loop's time in a 1,000-chat burst, and freed nothing;
left to Python's own trigger (allocations minus deallocations of objects of any age), the young
generation grew to ~80,000 live objects and its collection stopped the loop for 40-60 ms."""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import SimpleNamespace
from typing import Any

import pytest

from bot import app
from bot.app import CROWD_CHECK_S, _pause_collector
from bot.poller import Poller


@pytest.fixture
def no_automatic_collection() -> Any:
    """Python's own trigger never fires (as when deallocations of old objects hold its count
    down); collections in this test are keel's."""
    before = gc.get_threshold()
    gc.set_threshold(10**9)
    gc.collect()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _poller() -> tuple[Poller, asyncio.Event]:
    """A real poller whose updates are handled until ``done`` is set."""
    done = asyncio.Event()

    async def dispatch(update: Any) -> None:
        await done.wait()

    async def store(items: Any) -> set[int]:
        return set()

    return Poller(None, store=store, dispatch=dispatch,  # type: ignore[arg-type]
                  order_key=lambda update: None, allowed_updates=[]), done


def _crowd(poller: Poller, n: int | None = None) -> None:
    for i in range(poller.crowd if n is None else n):
        poller.submit(SimpleNamespace(update_id=i))  # type: ignore[arg-type]


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.usefixtures("no_automatic_collection")
async def test_a_burst_pauses_the_collector_and_its_end_frees_the_cycles_it_made() -> None:
    poller, done = _poller()
    collector = asyncio.create_task(_pause_collector(poller))
    try:
        _crowd(poller)
        await asyncio.sleep(CROWD_CHECK_S / 2)
        assert not gc.isenabled()
        cycle = _Cycle()
        made = weakref.ref(cycle)
        del cycle
        live = [[i] for i in range(20_000)]  # what updates in flight keep alive (tracked)
        await asyncio.sleep(CROWD_CHECK_S * 3)
        assert len(gc.get_objects(generation=0)) >= 20_000  # never walked during the burst
        assert made() is not None
        done.set()
        await asyncio.gather(*poller.tasks)
        await asyncio.sleep(CROWD_CHECK_S * 1.5)  # the collector sees the burst is over
        assert gc.isenabled()
        assert made() is None  # freed without waiting for Python's own trigger
        assert len(gc.get_objects(generation=0)) < 2_000
        assert len(live) == 20_000
    finally:
        collector.cancel()
        done.set()
        await asyncio.gather(*poller.tasks, collector, return_exceptions=True)
        gc.enable()


@pytest.mark.usefixtures("no_automatic_collection")
async def test_a_quiet_loop_leaves_the_collector_on() -> None:
    poller, done = _poller()
    collector = asyncio.create_task(_pause_collector(poller))
    try:
        _crowd(poller, poller.crowd - 1)
        await asyncio.sleep(CROWD_CHECK_S * 2)
        assert gc.isenabled()
    finally:
        collector.cancel()
        done.set()
        await asyncio.gather(*poller.tasks, collector, return_exceptions=True)


@pytest.mark.usefixtures("no_automatic_collection")
async def test_a_long_burst_still_collects_at_the_pause_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "COLLECTOR_PAUSE_MAX_S", CROWD_CHECK_S * 3)
    poller, done = _poller()
    collector = asyncio.create_task(_pause_collector(poller))
    try:
        _crowd(poller)
        await asyncio.sleep(CROWD_CHECK_S / 2)
        cycle = _Cycle()
        made = weakref.ref(cycle)
        del cycle
        await asyncio.sleep(CROWD_CHECK_S * 5)
        assert poller.crowded.is_set() and not gc.isenabled()  # the burst goes on
        assert made() is None
    finally:
        collector.cancel()
        done.set()
        await asyncio.gather(*poller.tasks, collector, return_exceptions=True)
        gc.enable()


@pytest.mark.usefixtures("no_automatic_collection")
async def test_a_collector_turned_off_elsewhere_stays_off_and_a_cancel_turns_ours_back_on(
        ) -> None:
    poller, done = _poller()
    gc.disable()
    try:
        collector = asyncio.create_task(_pause_collector(poller))
        _crowd(poller)
        await asyncio.sleep(CROWD_CHECK_S / 2)
        done.set()
        await asyncio.gather(*poller.tasks)
        await asyncio.sleep(CROWD_CHECK_S * 1.5)
        assert not gc.isenabled()
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    finally:
        gc.enable()

    poller, done = _poller()
    collector = asyncio.create_task(_pause_collector(poller))
    _crowd(poller)
    await asyncio.sleep(CROWD_CHECK_S / 2)
    assert not gc.isenabled()
    collector.cancel()  # the bot stops in the middle of a burst
    await asyncio.gather(collector, return_exceptions=True)
    assert gc.isenabled()
    done.set()
    await asyncio.gather(*poller.tasks)


def test_an_idle_bot_is_not_woken_by_the_collector() -> None:
    """It woke the event loop ten times a second to find nothing in flight (~1 ms of CPU a
    second in an idle bot); now it sleeps until a burst, and again after one."""

    class Counting(asyncio.SelectorEventLoop):
        turns = 0

        def _run_once(self) -> None:
            Counting.turns += 1
            super()._run_once()  # type: ignore[misc]

    async def wakeups_while_idle() -> tuple[int, int]:
        poller, done = _poller()
        collector = asyncio.create_task(_pause_collector(poller))
        await asyncio.sleep(0.01)  # the collector starts waiting
        before = Counting.turns
        await asyncio.sleep(CROWD_CHECK_S * 5)
        idle = Counting.turns - before
        _crowd(poller)  # a burst, then its end
        await asyncio.sleep(CROWD_CHECK_S * 2)
        done.set()
        await asyncio.gather(*poller.tasks)
        await asyncio.sleep(CROWD_CHECK_S * 1.5)  # the collector sees the burst is over
        before = Counting.turns
        await asyncio.sleep(CROWD_CHECK_S * 5)
        after_burst = Counting.turns - before
        collector.cancel()
        return idle, after_burst

    loop = Counting()
    try:
        idle, after_burst = loop.run_until_complete(wakeups_while_idle())
    finally:
        loop.close()
    # one or two turns: this test's own timer firing
    assert idle <= 2 and after_burst <= 2, (idle, after_burst)


async def test_the_poller_is_crowded_from_crowd_updates_in_flight() -> None:
    poller, done = _poller()
    _crowd(poller, poller.crowd - 1)
    assert not poller.crowded.is_set()
    poller.submit(SimpleNamespace(update_id=poller.crowd))  # type: ignore[arg-type]
    assert poller.crowded.is_set()
    done.set()
    await asyncio.gather(*poller.tasks)
