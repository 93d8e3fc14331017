"""What a worker starting beside others may release (issue 16).

One process at start clears every budget hold: nothing of its own can be in flight. A worker
starting beside others must not: their runs hold money right now, and charging those holds as
spent (then settling the runs' real cost too) counted their spend twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from storage.db import iso
from tests.fakes.scripted_model import ScriptedModel


async def _hold(runtime: Any, run_id: str, age: timedelta, amount: float) -> None:
    await runtime.db.execute_write(
        "INSERT INTO budget_holds (run_id, day, user_id, schedule, agent, amount_usd, created_at)"
        " VALUES (?, ?, 0, '', 'assistant', ?, ?)",
        (run_id, datetime.now(UTC).strftime("%Y-%m-%d"), amount, iso(datetime.now(UTC) - age)))


async def test_a_starting_worker_leaves_fresh_holds_and_charges_only_old_ones(
        make_runtime: Any) -> None:
    runtime = await make_runtime(ScriptedModel([]))
    await _hold(runtime, "another-workers-run", timedelta(seconds=2), 0.25)
    await _hold(runtime, "long-dead-run", timedelta(hours=3), 0.10)
    charged = await runtime.release_stale_holds(older_than_s=2 * 600 + 60)
    assert round(charged, 4) == 0.10
    left = await runtime.db.fetchall("SELECT run_id FROM budget_holds")
    assert [r["run_id"] for r in left] == ["another-workers-run"]


async def test_one_process_at_start_still_clears_every_hold(make_runtime: Any) -> None:
    runtime = await make_runtime(ScriptedModel([]))
    await _hold(runtime, "crashed-run", timedelta(seconds=2), 0.25)
    assert round(await runtime.release_stale_holds(), 4) == 0.25
    assert await runtime.db.fetchval("SELECT COUNT(*) FROM budget_holds") == 0
