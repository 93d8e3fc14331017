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


async def _young_after(in_flight: int) -> int:
    poller = SimpleNamespace(tasks={object() for _ in range(in_flight)})
    collector = asyncio.create_task(_collect_young(poller))  # type: ignore[arg-type]
    try:
        live = [[i] for i in range(20_000)]  # what updates in flight keep alive (tracked)
        await asyncio.sleep(YOUNG_COLLECTION_S * 3)
        young = len(gc.get_objects(generation=0))
        assert len(live) == 20_000
        return young
    finally:
        collector.cancel()


@pytest.mark.usefixtures("no_automatic_collection")
async def test_a_busy_loop_collects_its_young_generation_on_the_clock() -> None:
    assert await _young_after(YOUNG_COLLECTION_BUSY) < 2_000


@pytest.mark.usefixtures("no_automatic_collection")
async def test_a_quiet_loop_leaves_it_to_python() -> None:
    assert await _young_after(YOUNG_COLLECTION_BUSY - 1) >= 20_000
