"""Free idle schedules (issue 13): a guard that finds nothing new ends the fire ``skipped`` before
any model call — $0, no run, no message unless the schedule asks for one."""

from __future__ import annotations

import sys
import types
from datetime import timedelta
from typing import Any

import pytest

from tests.fakes.scripted_model import ScriptedModel, reply
from tests.unit.test_schedule import AT_EIGHT, runner_for, scheduled

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def guard_module() -> Any:
    """A guard module on the path: ``quiet`` never has news; ``page`` fingerprints a page."""
    module = types.ModuleType("keel_test_guards")
    state = {"page": "v1"}

    def quiet(ctx: Any) -> bool:
        CALLS.append(ctx.schedule)
        return False

    async def page(ctx: Any) -> str:
        return state["page"]

    def broken(ctx: Any) -> bool:
        raise OSError("the page is unreachable")

    module.quiet, module.page, module.broken = quiet, page, broken  # type: ignore[attr-defined]
    module.state = state  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    CALLS.clear()
    yield module
    del sys.modules[module.__name__]


async def test_a_guard_with_nothing_new_makes_no_model_request_over_100_fires(
    make_runtime: Any,
) -> None:
    model = ScriptedModel()  # any model call fails the test
    runtime, notifier, runner, _ = await runner_for(make_runtime, model)
    job = scheduled(guard="keel_test_guards:quiet")
    outcomes = [await runner(job, AT_EIGHT + timedelta(minutes=i), f"r-{i}") for i in range(100)]
    assert {o.status for o in outcomes} == {"skipped"}
    assert model.requests == [] and notifier.sent == [] and len(CALLS) == 100
    assert await runtime.usage.spent() == 0
    assert await runtime.db.fetchval("SELECT COUNT(*) FROM runs") == 0


async def test_a_fingerprint_guard_runs_only_when_the_fingerprint_changes(
    make_runtime: Any, guard_module: Any,
) -> None:
    model = ScriptedModel(reply("first briefing"), reply("the page changed"))
    _, notifier, runner, _ = await runner_for(make_runtime, model)
    job = scheduled(guard="keel_test_guards:page")
    statuses = []
    for i, version in enumerate(["v1", "v1", "v1", "v2", "v2"]):
        guard_module.state["page"] = version
        statuses.append((await runner(job, AT_EIGHT + timedelta(minutes=i), f"r-{i}")).status)
    assert statuses == ["completed", "skipped", "skipped", "completed", "skipped"]
    assert [m["text"] for m in notifier.sent] == ["first briefing", "the page changed"]
    model.assert_all_used()


async def test_a_skip_can_say_so_and_a_broken_guard_lets_the_run_go(make_runtime: Any) -> None:
    model = ScriptedModel(reply("briefing despite the guard"))
    _, notifier, runner, _ = await runner_for(make_runtime, model)
    said = await runner(scheduled(guard="keel_test_guards:quiet", guard_message="Nothing new."),
                        AT_EIGHT, "r-1")
    assert said.status == "skipped" and said.delivered
    broken = await runner(scheduled(guard="keel_test_guards:broken"), AT_EIGHT, "r-2")
    assert broken.status == "completed"
    assert [m["text"] for m in notifier.sent] == ["Nothing new.", "briefing despite the guard"]


def test_schedule_list_shows_the_guard_and_the_worst_day_under_the_schedule_cap() -> None:
    from bot.cli_schedule import _row

    job = scheduled(guard="keel_test_guards:quiet")  # one run a day at $0.30
    row = _row(job, AT_EIGHT, per_schedule_cap=0.1)
    assert row["guard"] == "keel_test_guards:quiet" and row["worst_case_daily_usd"] == 0.1
    assert _row(job, AT_EIGHT)["worst_case_daily_usd"] == 0.3
