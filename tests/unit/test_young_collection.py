"""While many updates are in flight the youngest generation is collected on the clock
(bot/app.py ``_collect_young``), not only when Python's own trigger fires (issue 15).

Python collects generation 0 when allocations minus deallocations pass its threshold, and
deallocations of objects of any age count: in a 1,000-chat burst, chats finishing freed older
objects while the young generation grew to ~80,000 live objects, and the collection that finally
walked them stopped the event loop for 40-60 ms."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

import pytest

from bot.app import YOUNG_COLLECTION_BUSY, YOUNG_COLLECTION_S, _collect_young
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


async def _young_after(in_flight: int) -> int:
    poller, done = _poller()
    for n in range(in_flight):
        poller.submit(SimpleNamespace(update_id=n))  # type: ignore[arg-type]
    collector = asyncio.create_task(_collect_young(poller))
    try:
        live = [[i] for i in range(20_000)]  # what updates in flight keep alive (tracked)
        await asyncio.sleep(YOUNG_COLLECTION_S * 3)
        young = len(gc.get_objects(generation=0))
        assert len(live) == 20_000
        return young
    finally:
        collector.cancel()
        done.set()
        await asyncio.gather(*poller.tasks)


@pytest.mark.usefixtures("no_automatic_collection")
async def test_a_busy_loop_collects_its_young_generation_on_the_clock() -> None:
    assert await _young_after(YOUNG_COLLECTION_BUSY) < 2_000


@pytest.mark.usefixtures("no_automatic_collection")
async def test_a_quiet_loop_leaves_it_to_python() -> None:
    assert await _young_after(YOUNG_COLLECTION_BUSY - 1) >= 20_000


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
        collector = asyncio.create_task(_collect_young(poller))
        await asyncio.sleep(0.01)  # the collector starts waiting
        before = Counting.turns
        await asyncio.sleep(YOUNG_COLLECTION_S * 5)
        idle = Counting.turns - before
        for n in range(YOUNG_COLLECTION_BUSY):  # a burst, then its end
            poller.submit(SimpleNamespace(update_id=n))  # type: ignore[arg-type]
        await asyncio.sleep(YOUNG_COLLECTION_S * 2)
        done.set()
        await asyncio.gather(*poller.tasks)
        await asyncio.sleep(YOUNG_COLLECTION_S * 1.5)  # the collector sees the burst is over
        before = Counting.turns
        await asyncio.sleep(YOUNG_COLLECTION_S * 5)
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
    for n in range(poller.crowd - 1):
        poller.submit(SimpleNamespace(update_id=n))  # type: ignore[arg-type]
    assert not poller.crowded.is_set()
    poller.submit(SimpleNamespace(update_id=poller.crowd))  # type: ignore[arg-type]
    assert poller.crowded.is_set()
    done.set()
    await asyncio.gather(*poller.tasks)
