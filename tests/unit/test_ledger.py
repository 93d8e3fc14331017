"""The daily ledger: holds against every cap in one transaction, settled, released, reported."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio

from agents.runtime import Runtime
from storage.ledger import DailyCaps, Hold, Ledger, Shortfall
from storage.usage import UsageDelta
from tests.conftest import OpenDb
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call
from tests.unit.conftest import task

CAPS = DailyCaps(total_usd=0.05, per_user_usd=0.03, per_schedule_usd=0.02)


@pytest_asyncio.fixture
async def ledger(open_db: OpenDb) -> Ledger:
    """A ledger on SQLite and on PostgreSQL (one run each)."""
    return Ledger(await open_db())


async def hold(ledger: Ledger, want: float, *, user: int | None = 1, schedule: str | None = None,
               run: str = "r1", floor: float = 0.001) -> Hold | Shortfall:
    return await ledger.hold(run_id=run, agent="a", user_id=user, schedule=schedule, caps=CAPS,
                             want_usd=want, min_usd=floor)


async def cancel_while_it_commits(db: Any, write: Awaitable[Any]) -> None:
    """Start ``write`` while the SQLite writer thread is busy, cancel its caller once the group
    commit sent its batch to that thread, then let the thread go: the caller sees the cancel,
    and the batch commits all the same."""
    blocker = threading.Event()
    assert db._write_thread is not None
    db._write_thread.submit(blocker.wait)  # the writer is busy: the batch waits behind it
    task = asyncio.ensure_future(write)
    for _ in range(500):
        await asyncio.sleep(0.01)
        if db._queued == [] and db._flusher is not None and not db._flusher.done():
            break
    else:
        raise AssertionError("the write never left for the writer")
    task.cancel()
    blocker.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)


async def test_a_hold_gets_what_the_tightest_cap_has_left(ledger: Ledger) -> None:
    first = await hold(ledger, 0.025)
    assert isinstance(first, Hold) and first.amount_usd == 0.025
    second = await hold(ledger, 0.025)  # user 1 has 0.03 - 0.025 left
    assert isinstance(second, Hold) and second.amount_usd == pytest.approx(0.005)
    refused = await hold(ledger, 0.025)
    assert refused == Shortfall(scope="user 1", cap_usd=0.03, left_usd=pytest.approx(0.0))
    other = await hold(ledger, 0.025, user=2)  # overall: 0.05 - 0.03 held
    assert isinstance(other, Hold) and other.amount_usd == pytest.approx(0.02)
    assert await ledger.held() == pytest.approx(0.05)


async def test_a_schedule_is_held_against_its_own_cap(ledger: Ledger) -> None:
    got = await hold(ledger, 0.03, user=None, schedule="digest")
    assert isinstance(got, Hold) and got.amount_usd == pytest.approx(0.02)
    assert isinstance(await hold(ledger, 0.01, user=None, schedule="digest"), Shortfall)
    other = await hold(ledger, 0.01, user=None, schedule="watch")
    assert isinstance(other, Hold) and other.amount_usd == 0.01


async def test_settling_replaces_the_hold_with_the_real_cost(ledger: Ledger) -> None:
    got = await hold(ledger, 0.02, schedule="digest")
    assert isinstance(got, Hold)
    await ledger.settle(got, UsageDelta(cost_usd=0.004, input_tokens=10, output_tokens=5))
    report = await ledger.report(CAPS)
    assert await ledger.held() == 0
    line = report.users[1]
    assert (line.spent_usd, line.reserved_usd, line.left_usd) == (
        pytest.approx(0.004), 0, pytest.approx(0.026))
    assert report.overall.spent_usd == pytest.approx(0.004)
    assert report.schedules["digest"].spent_usd == pytest.approx(0.004)


async def test_many_holds_at_once_never_pass_the_cap(ledger: Ledger) -> None:
    results = await asyncio.gather(*(hold(ledger, 0.01, user=u, floor=0.01, run=f"r{u}")
                                     for u in range(50)))
    granted = [r for r in results if isinstance(r, Hold)]
    assert len(granted) == 5 and sum(h.amount_usd for h in granted) == pytest.approx(0.05)


async def test_a_crashed_runs_holds_are_charged_at_start_up(ledger: Ledger) -> None:
    got = await hold(ledger, 0.01, run="crashed")
    assert isinstance(got, Hold)
    assert await ledger.release_stale() == pytest.approx(0.01)
    assert await ledger.held() == 0
    # the call in flight may have been billed: the day counts it
    assert (await ledger.report(CAPS)).overall.spent_usd == pytest.approx(0.01)


async def test_releasing_a_run_frees_its_holds_only(ledger: Ledger) -> None:
    await hold(ledger, 0.01, run="a")
    await hold(ledger, 0.01, run="b", user=2)
    assert await ledger.release_run("a") == pytest.approx(0.01)
    assert await ledger.held() == pytest.approx(0.01)
    assert (await ledger.report(CAPS)).overall.spent_usd == 0


async def test_a_forfeited_hold_is_spent_and_a_released_one_is_not(ledger: Ledger) -> None:
    a = await hold(ledger, 0.01)
    b = await hold(ledger, 0.01, user=2)
    assert isinstance(a, Hold) and isinstance(b, Hold)
    await ledger.forfeit(a)
    await ledger.release(b)
    report = await ledger.report(CAPS)
    assert report.overall.spent_usd == pytest.approx(0.01) and report.overall.reserved_usd == 0


async def test_the_days_total_is_the_sum_of_its_rows_and_caps_the_day(ledger: Ledger) -> None:
    """The overall cap reads one row a day (``day_spend``), kept by the statements that write
    spend: settled, forfeited, charged at recovery and recorded directly, it equals the day's
    usage rows, and the overall cap holds against it."""
    from storage.usage import UsageLedger

    db = ledger.db
    caps = DailyCaps(total_usd=0.05)
    a = await ledger.hold(run_id="a", agent="a", user_id=1, schedule=None, caps=caps,
                          want_usd=0.01, min_usd=0.001)
    b = await ledger.hold(run_id="b", agent="b", user_id=2, schedule="digest", caps=caps,
                          want_usd=0.01, min_usd=0.001)
    assert isinstance(a, Hold) and isinstance(b, Hold)
    await ledger.settle(a, UsageDelta(cost_usd=0.004))
    await ledger.forfeit(b)
    await ledger.hold(run_id="c", agent="a", user_id=3, schedule=None, caps=caps,
                      want_usd=0.005, min_usd=0.001)
    await ledger.release_stale()  # charged: 0.005
    await UsageLedger(db).add(user_id=4, agent="a", delta=UsageDelta(cost_usd=0.02))
    rows = await db.fetchval("SELECT SUM(cost_usd) FROM usage_ledger")
    total = await db.fetchval("SELECT cost_usd FROM day_spend")
    assert float(total) == pytest.approx(float(rows)) == pytest.approx(0.039)
    assert await UsageLedger(db).spent() == pytest.approx(0.039)
    got = await ledger.hold(run_id="d", agent="a", user_id=5, schedule=None, caps=caps,
                            want_usd=0.05, min_usd=0.001)
    assert isinstance(got, Hold) and got.amount_usd == pytest.approx(0.011)


# ------------------------------------------------------------------ through the runtime


async def test_a_runs_calls_are_recorded_once_and_leave_no_hold(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("get_current_time", {"timezone": "UTC"}), reply("Noon."))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(replace(task("time?"), user_id=5))
    assert result.status == "completed"
    report = await runtime.cost_report()
    assert report.users[5].spent_usd == pytest.approx(result.cost_usd)
    assert report.users[5].left_usd == pytest.approx(5.0 - result.cost_usd)  # default per-user cap
    assert report.overall.reserved_usd == 0


async def test_a_runs_last_call_settles_with_its_outcome_and_a_tool_call_before_its_tool(
        make_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call after which a tool runs settles at once (its hold does not stand while the tool
    works); the call that ends the run settles in the run's outcome transaction, one write
    transaction less a turn (issue 15). Either way the day's spend is the run's cost."""
    settled: list[float] = []
    settle = Ledger.settle

    async def counted(self: Ledger, hold: Any, delta: Any) -> None:
        settled.append(delta.cost_usd)
        await settle(self, hold, delta)

    monkeypatch.setattr(Ledger, "settle", counted)
    model = ScriptedModel(tool_call("get_current_time", {"timezone": "UTC"}), reply("Noon."))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(replace(task("time?"), user_id=5))
    assert result.status == "completed" and result.model_calls == 2
    assert len(settled) == 1 and 0 < settled[0] < result.cost_usd  # the tool call's, alone
    assert await runtime.ledger.held() == 0
    assert await runtime.usage.spent(user_id=5) == pytest.approx(result.cost_usd)


async def test_a_daily_cap_halts_before_the_call_and_offers_no_continuation(
    make_runtime: Any,
) -> None:
    runtime: Runtime = await make_runtime(ScriptedModel(), KEEL_DAILY_BUDGET_USD="0.01")
    result = await runtime.run(replace(task("hello"), user_id=5))
    assert result.status == "budget_exceeded" and result.model_calls == 0
    assert "daily budget of everyone is used up" in (result.detail or "")
    assert result.state is None


async def test_a_continued_run_is_held_against_the_daily_cap_too(make_runtime: Any) -> None:
    runtime: Runtime = await make_runtime(ScriptedModel(reply("never sent")),
                                          KEEL_RUN_BUDGET_USD="0.001", KEEL_DAILY_BUDGET_USD="0.02")
    halted = await runtime.run(replace(task("hello"), user_id=5))
    assert halted.status == "budget_exceeded" and halted.state is not None
    assert halted.detail is not None and halted.detail.startswith("nothing was spent")
    # a person grants plenty more; the day's $0.02 still cannot cover the call's worst case
    result = await runtime.continue_with_budget(halted.run_id, 1.0)
    assert result.status == "budget_exceeded" and result.model_calls == 0
    assert "daily budget of everyone" in (result.detail or "")


@pytest.mark.parametrize("backend", ["sqlite"])  # holds the SQLite writer thread
async def test_a_run_cancelled_while_its_first_hold_commits_still_records_its_outcome(
        ledger: Ledger) -> None:
    from storage.runs import RunRepository, RunTotals

    db = ledger.db
    runs = RunRepository(db)
    async def first(conn: Any) -> None:  # the run's own row goes with its first hold
        await runs.start(run_id="r1", trace_id="t1", agent="a", kind="chat", budget_usd=0.1,
                         conn=conn)

    await cancel_while_it_commits(db, ledger.hold(run_id="r1", agent="a", user_id=1,
                                                  schedule=None, caps=CAPS, want_usd=0.01,
                                                  min_usd=0.001, first=first))
    # the hold and the run's row were committed, but the run cannot know: it writes its row
    # again with its outcome, and that must not undo the outcome
    async with db.write() as conn:
        await first(conn)
        await runs.finish("r1", status="cancelled", detail="cancelled", output=None,
                          totals=RunTotals(cost_usd=0, steps=0, model_calls=0, input_tokens=0,
                                           output_tokens=0, cache_read_tokens=0,
                                           cache_write_tokens=0), conn=conn)
    record = await runs.get("t1")
    assert record is not None and record.status == "cancelled"
    assert await db.fetchval("SELECT COUNT(*) FROM runs") == 1
    assert await ledger.held() == pytest.approx(0.01)  # nothing settles it: the run ends it
    assert await ledger.release_run("r1", charge=True) == pytest.approx(0.01)
    assert await ledger.held() == 0


async def test_a_run_that_ends_abnormally_leaves_no_hold_behind(make_runtime: Any) -> None:
    runtime: Runtime = await make_runtime(ScriptedModel())  # its call fails: nothing scripted
    # a hold taken under the run's id that never reached the run (its taking was cancelled)
    orphan = await runtime.ledger.hold(run_id="r-orphan", agent="assistant", user_id=5,
                                       schedule=None, caps=DailyCaps(), want_usd=0.01,
                                       min_usd=0.001)
    assert isinstance(orphan, Hold)
    result = await runtime.run(replace(task("hello"), user_id=5), run_id="r-orphan")
    assert result.status == "failed", result.detail
    report = await runtime.cost_report()
    assert report.overall.reserved_usd == 0  # the orphan is charged, as a crash's would be
    assert report.users[5].spent_usd >= 0.01 + result.cost_usd


@pytest.mark.parametrize("backend", ["sqlite"])  # holds the SQLite writer thread
async def test_a_settlement_carried_by_a_cancelled_hold_is_never_counted_twice(
        ledger: Ledger) -> None:
    """A run's last call settles with the run's next write (issue 15). When that write is a
    hold whose caller is cancelled while it commits, the run cannot know whether the settlement
    went in: it must not write it again with its outcome (spend counted twice). The day's spend
    is the settled cost once, and the cancelled hold is charged when the run ends."""
    from agents.budget import LedgerGate, Reservation
    from agents.pricing import Price, Usage

    db = ledger.db
    price = Price(input=1.0, output=5.0, cache_write_5m=1.25, cache_write_1h=2.0, cache_read=0.1)
    gate = LedgerGate(ledger, CAPS, run_id="r1", agent="a", user_id=1)
    gate.defer_last_settle = True
    want = Reservation(max_tokens=1000, worst_case_usd=0.006, input_estimate=1000, input_rate=1.0)
    _, first = await gate.hold(price, want)
    await gate.settle(first, Usage(input_tokens=1000, output_tokens=200), 0.002, last=True)
    assert await ledger.held() == pytest.approx(0.006)  # owed, not written yet

    # a retry's call: its hold carries the settlement
    await cancel_while_it_commits(db, gate.hold(price, want))
    owed = gate.owed()  # what the outcome transaction would write (Runtime._finish)
    if owed is not None:
        async with db.write() as conn:
            await owed(conn)
    spent = await db.fetchval("SELECT COALESCE(SUM(cost_usd), 0) FROM usage_ledger")
    assert float(spent) == pytest.approx(0.002)  # once, by the cancelled hold's transaction
    assert await ledger.release_run("r1", charge=True) == pytest.approx(0.006)
    assert await db.fetchval("SELECT SUM(cost_usd) FROM usage_ledger") == pytest.approx(0.008)
