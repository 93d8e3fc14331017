"""The bounded loop with the scripted model: every limit ends the run with its own status."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest
from pydantic import BaseModel

from agents.budget import WARN_FRACTION
from agents.errors import KeelError, ModelCallError
from agents.runtime import Runtime
from agents.spec import Limits
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call
from tests.unit.conftest import task


def _events(runtime: Runtime, trace_id: str) -> list[dict[str, Any]]:
    return runtime.traces.read(trace_id)


async def test_a_final_answer_completes_and_is_traced(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("get_current_time", {"timezone": "UTC"}), reply("It is noon."))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(task("what time is it?"))
    model.assert_all_used()
    assert (result.status, result.output, result.steps, result.model_calls) == (
        "completed", "It is noon.", 1, 2)
    types = [e["type"] for e in _events(runtime, result.trace_id)]
    assert types[0] == "run_start" and types[-1] == "run_end"
    assert {"prefix", "model_request", "model_response", "tool_call", "tool_result"} <= set(types)
    record = await runtime.runs.get(result.run_id)
    assert record is not None and record.status == "completed"
    assert record.cost_usd == pytest.approx(result.cost_usd)
    # the tool result went back to the model, and the scratchpad never reaches the output
    second = model.requests[1].messages[-1]["content"][0]
    assert second["type"] == "tool_result" and "UTC" in second["content"]


async def test_a_model_that_never_stops_calling_tools_ends_in_step_limit(make_runtime: Any) -> None:
    model = ScriptedModel(*[tool_call("get_current_time", {"timezone": "UTC"}) for _ in range(4)])
    runtime: Runtime = await make_runtime(model, KEEL_MAX_STEPS="3")
    result = await runtime.run(task("loop forever"))
    assert result.status == "step_limit" and result.exit_code == 4
    assert result.steps == 3 and "more than 3 tool calls" in (result.detail or "")
    model.assert_all_used()
    limit = [e for e in _events(runtime, result.trace_id) if e["type"] == "limit"]
    assert limit and limit[0]["limit"] == "steps"
    # the history left behind is valid: every tool_use answered, ending with the assistant
    assert result.messages[-1]["role"] == "assistant"
    assert result.messages[-2]["content"][0]["type"] == "tool_result"


async def test_a_run_past_its_deadline_ends_in_timeout(make_runtime: Any) -> None:
    model = ScriptedModel(reply("too late"), latency_s=5)
    runtime: Runtime = await make_runtime(model, KEEL_RUN_TIMEOUT_S="0.2")
    result = await runtime.run(task("slow"))
    assert result.status == "timeout" and result.exit_code == 5
    assert result.duration_s < 2
    assert "deadline" in (result.detail or "")


async def test_a_run_that_would_spend_past_its_cap_halts_with_cost_under_it(make_runtime: Any) -> None:
    # each call would bill 2500 output tokens of Sonnet ($0.0375); the cap is $0.10
    steps = [tool_call("get_current_time", {"timezone": "UTC"}, output_tokens=2500) for _ in range(5)]
    model = ScriptedModel(*steps)
    runtime: Runtime = await make_runtime(model, KEEL_RUN_BUDGET_USD="0.10")
    model.steps = model.steps[:3]
    result = await runtime.run(task("expensive"))
    assert result.status == "budget_exceeded" and result.exit_code == 3
    assert result.cost_usd <= 0.10
    record = await runtime.runs.get(result.run_id)
    assert record is not None and record.cost_usd <= 0.10
    events = _events(runtime, result.trace_id)
    assert any(e["type"] == "budget_halt" for e in events)
    warn = [e for e in events if e["type"] == "budget_warn"]
    assert len(warn) == 1 and warn[0]["fraction"] >= WARN_FRACTION
    # the model was told how much is left in the request after the warning
    told = [r for r in model.requests if "Budget note" in json.dumps(r.messages[-1])]
    assert told
    # the third call's max_tokens shrank so even its worst case fit under the cap
    assert model.requests[0].max_tokens == 4096 and model.requests[2].max_tokens < 2500
    model.assert_all_used()


async def test_spend_is_written_to_the_ledger_per_call(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("get_current_time", {"timezone": "UTC"}), reply("done"))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(task("x"))
    assert await runtime.usage.spent() == pytest.approx(result.cost_usd)


async def test_model_api_failure_ends_failed_with_the_reason(make_runtime: Any) -> None:
    model = ScriptedModel(ModelCallError("model API answered 529: Overloaded", status=529))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(task("x"))
    assert result.status == "failed" and "529" in (result.detail or "")


async def test_refusal_and_empty_answers_fail_clearly(make_runtime: Any) -> None:
    model = ScriptedModel(reply("", stop_reason="refusal"), reply(""))
    runtime: Runtime = await make_runtime(model)
    first = await runtime.run(task("x"))
    second = await runtime.run(task("y"))
    assert (first.status, second.status) == ("failed", "failed")
    assert "declined" in (first.detail or "") and "empty" in (second.detail or "")


async def test_a_declared_output_type_is_validated_and_repaired_once(make_runtime: Any) -> None:
    class Forecast(BaseModel):
        city: str
        celsius: float

    model = ScriptedModel(reply("It is warm"), reply('```json\n{"city": "Madrid", "celsius": 21}\n```'))
    runtime: Runtime = await make_runtime(model)
    runtime.agents["assistant"] = replace(runtime.agents["assistant"], output_type=Forecast)
    result = await runtime.run(task("forecast"))
    assert result.status == "completed"
    assert result.output_data == Forecast(city="Madrid", celsius=21)
    assert "not JSON" in json.dumps(model.requests[1].messages[-1])


async def test_cancel_ends_the_run_as_cancelled(make_runtime: Any) -> None:
    model = ScriptedModel(reply("never"), latency_s=10)
    runtime: Runtime = await make_runtime(model)
    job = asyncio.create_task(runtime.run(task("x")))
    await model.called.wait()
    assert runtime.cancel(runtime.active_runs()[0].id)
    result = await job
    assert result.status == "cancelled" and result.exit_code == 7


async def test_the_exact_request_is_reconstructable_from_the_trace(make_runtime: Any) -> None:
    from agents.trace_view import reconstruct_requests

    model = ScriptedModel(tool_call("get_current_time", {"timezone": "UTC"}),
                          tool_call("get_current_time", {"timezone": "Europe/Madrid"}),
                          reply("done"))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(task("times"))
    bodies = reconstruct_requests(_events(runtime, result.trace_id))
    assert bodies == [r.to_api() for r in model.requests]


async def test_unknown_model_price_refuses_to_start(make_runtime: Any) -> None:
    from agents.errors import UnknownModelPriceError

    runtime: Runtime = await make_runtime(ScriptedModel())
    runtime.agents["assistant"] = replace(runtime.agents["assistant"], model="claude-mystery-9")
    with pytest.raises(UnknownModelPriceError):
        await runtime.run(task("x"))


async def test_daily_cap_is_checked_before_a_run_starts(make_runtime: Any) -> None:
    from agents.errors import DailyCapExceeded
    from storage.usage import UsageDelta

    runtime: Runtime = await make_runtime(ScriptedModel(), KEEL_DAILY_BUDGET_USD_PER_USER="1")
    await runtime.usage.add(user_id=7, agent="assistant", delta=UsageDelta(cost_usd=1.0))
    with pytest.raises(DailyCapExceeded):
        await runtime.run(replace(task("x"), user_id=7))


def test_limits_override_keeps_the_rest() -> None:
    limits = Limits().overridden(max_steps=3)
    assert limits.max_steps == 3 and limits.budget_usd == Limits().budget_usd


async def test_a_budget_halted_run_continues_with_more_budget(make_runtime: Any) -> None:
    steps = [tool_call("get_current_time", {"timezone": "UTC"}, output_tokens=2500) for _ in range(2)]
    model = ScriptedModel(*steps)
    runtime: Runtime = await make_runtime(model, KEEL_RUN_BUDGET_USD="0.08")
    halted = await runtime.run(task("expensive"))
    assert halted.status == "budget_exceeded" and halted.state is not None
    model.then(reply("Finished with the extra budget."))
    result = await runtime.continue_with_budget(halted.run_id, 0.08, granted_by="Alice")
    assert result.status == "completed" and result.output == "Finished with the extra budget."
    assert result.run_id == halted.run_id and result.cost_usd <= 0.16
    assert result.steps == 2  # the halted run's tool calls still count
    events = _events(runtime, result.trace_id)
    assert [e["type"] for e in events].count("run_end") == 2
    assert any(e["type"] == "budget_raised" and e["granted_by"] == "Alice" for e in events)
    with pytest.raises(KeelError):  # continued once; a second grant has nothing to continue
        await runtime.continue_with_budget(halted.run_id, 0.08)
    model.assert_all_used()


async def test_a_hanging_tool_becomes_an_error_result_and_the_run_goes_on(make_runtime: Any) -> None:
    from agents.tools import ToolArgs, tool

    class Nothing(ToolArgs):
        pass

    @tool(description="Waits forever (a stuck upstream).", timeout_s=0.05, args_model=Nothing)
    async def stuck(args: Nothing) -> str:
        await asyncio.Event().wait()
        return "never"

    model = ScriptedModel(tool_call("stuck", {}), reply("The service is not answering."))
    runtime: Runtime = await make_runtime(model)
    runtime.registry.register(stuck)
    runtime.agents["assistant"] = replace(runtime.agents["assistant"],
                                          tools=("get_current_time", "stuck"))
    result = await runtime.run(task("call the stuck service"))
    assert result.status == "completed" and result.output == "The service is not answering."
    tool_result = model.requests[1].messages[-1]["content"][0]
    assert tool_result["is_error"] is True
    assert json.loads(tool_result["content"])["error"] == "timeout"


async def test_a_model_request_and_a_tool_call_are_in_the_trace_file_before_they_happen(
        make_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trace lines are written by a thread, not by ``emit``; a model request and a tool call
    wait until their event is in the file, so a process killed once the request left (or the
    tool's side effect began) still has it. The writer thread is stopped here: only that wait
    can write the events."""
    import agents.tools.registry as registry
    import storage.traces as traces

    monkeypatch.setattr(traces._SINK, "schedule", lambda writer: None)
    seen: list[list[str]] = []

    def in_the_file() -> list[str]:
        [path] = runtime.traces.root.rglob("*.jsonl")
        return [json.loads(line)["type"] for line in path.read_text().splitlines()]

    class Checking(ScriptedModel):
        async def create(self, request: Any, **kwargs: Any) -> Any:
            seen.append(in_the_file())
            return await super().create(request, **kwargs)

    run_tool = registry.execute

    async def checking_tool(*args: Any, **kwargs: Any) -> Any:
        seen.append(in_the_file())
        return await run_tool(*args, **kwargs)

    monkeypatch.setattr(registry, "execute", checking_tool)
    model = Checking(tool_call("get_current_time", {"timezone": "UTC"}), reply("It is noon."))
    runtime: Runtime = await make_runtime(model)
    result = await runtime.run(task("what time is it?"))
    assert result.status == "completed"
    first_call, tool, second_call = seen
    assert first_call[-1] == "model_request"
    assert tool[-1] == "tool_call"
    assert second_call[-1] == "model_request" and second_call.count("model_request") == 2
