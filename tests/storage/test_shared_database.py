"""Several processes on one database: writes still take turns, so a daily cap holds across them.

Two Database objects on one store stand for two keel processes (each has its own connections and
its own in-process lock; on PostgreSQL only the advisory write lock stands between them)."""

from __future__ import annotations

import asyncio

import pytest

from storage.ledger import DailyCaps, Hold, Ledger
from tests.conftest import OpenDb

CAP = DailyCaps(total_usd=0.25)


async def test_two_processes_holding_at_once_never_pass_the_daily_cap(open_db: OpenDb) -> None:
    first, second = Ledger(await open_db()), Ledger(await open_db(migrated=False))

    async def hold(ledger: Ledger, n: int) -> Hold | object:
        return await ledger.hold(run_id=f"r{n}", agent="a", user_id=n, schedule=None, caps=CAP,
                                 want_usd=0.01, min_usd=0.01)

    results = await asyncio.gather(*(hold(first if n % 2 else second, n) for n in range(60)))
    granted = [r for r in results if isinstance(r, Hold)]
    assert len(granted) == 25
    assert await first.held() == pytest.approx(0.25)
    assert {h.id for h in granted} == {int(r["id"]) for r in await first.db.fetchall(
        "SELECT id FROM budget_holds")}


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_write_in_one_process_waits_for_the_others_to_commit(open_db: OpenDb) -> None:
    one, two = await open_db(), await open_db(migrated=False)
    inside, release = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def long_write() -> None:
        async with one.write() as conn:
            await conn.execute("INSERT INTO people (user_id, role, source, created_at, updated_at)"
                               " VALUES (1, 'user', 'telegram', 'x', 'x')")
            inside.set()
            await release.wait()
            order.append("first committed")

    async def second_write() -> None:
        await inside.wait()
        async with two.write() as conn:
            order.append("second began")
            count = await (await conn.execute("SELECT count(*) FROM people")).fetchone()
            assert count is not None and count[0] == 1  # it sees the first write, committed

    task = asyncio.create_task(long_write())
    waiter = asyncio.create_task(second_write())
    await inside.wait()
    # Until the second writer queues on keel's write lock (another session's lock state has no
    # event to wait on: it is polled).
    while not await one.fetchval(  # noqa: ASYNC110
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
        await asyncio.sleep(0.005)
    assert order == []
    release.set()
    await asyncio.gather(task, waiter)
    assert order == ["first committed", "second began"]
