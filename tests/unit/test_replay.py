"""Replay re-runs a traced run offline and finds the same requests (or says where they differ)."""

from __future__ import annotations

from typing import Any

from agents.replay import replay
from agents.runtime import Runtime
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call
from tests.unit.conftest import task


async def test_a_run_replays_to_identical_requests(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("get_current_time", {"timezone": "UTC"}),
                          tool_call("get_current_time", {"timezone": "Asia/Tokyo"}),
                          reply("Noon in London, nine in Tokyo."))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(task("times?"))
    report = await replay(runtime.traces.read(result.trace_id), prices=runtime.prices)
    assert report.identical, report.first_difference
    assert (report.recorded_requests, report.replayed_requests) == (3, 3)
    assert report.replayed_status == report.recorded_status == "completed"
    assert report.replayed_output == "Noon in London, nine in Tokyo."


async def test_a_changed_recording_is_reported_where_it_differs(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("get_current_time", {"timezone": "UTC"}), reply("done"))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(task("time?"))
    events = runtime.traces.read(result.trace_id)
    for e in events:  # pretend the tool had answered something else back then
        if e["type"] == "model_request" and e["n"] == 2:
            e["messages"][-1]["content"][0]["content"] = "something else"
    report = await replay(events, prices=runtime.prices)
    assert not report.identical
    assert report.first_difference is not None and report.first_difference.startswith("request 2")
