"""Plan-then-execute with the scripted model: one plan event, steps in order, re-plans from the
failed step (bounded), thinking in the form each model accepts, and the run's limits unchanged."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from agents.executor import Hooks
from agents.executor.plan import MAX_REPLANS, execute_plan, resume_plan
from agents.ids import new_id
from agents.model.types import ModelRequest, ModelResponse
from agents.planner import SUBMIT_PLAN, thinking_config, thinking_era
from agents.pricing import cost_of
from agents.run import Run, RunResult
from agents.runtime import Runtime, answer_escalation
from agents.spec import Limits
from agents.trace_view import reconstruct_requests
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call

TASK = "Morning briefing: the time in Madrid, then one line on the weather."
SIGNATURE = "c2lnbmF0dXJlLW9mLXRoZS10aGlua2luZw=="


def plan(*steps: tuple[str, str], goal: str = "a short morning briefing",
         thinking: str | None = "Two steps will do.", **input_extra: Any) -> ModelResponse:
    """The planner's turn: a thinking block (with its signature), then ``submit_plan``."""
    call = tool_call(SUBMIT_PLAN, {"goal": goal, "steps": [
        {"instruction": i, "produces": p} for i, p in steps], **input_extra}, output_tokens=80)
    if thinking is None:
        return call
    block = {"type": "thinking", "thinking": thinking, "signature": SIGNATURE}
    return replace(call, content=[block, *call.content])


async def run_plan(runtime: Runtime, text: str = TASK, *, agent: str = "assistant",
                   limits: Limits | None = None) -> RunResult:
    """What ``Runtime.run`` does for an agent whose pattern is plan_execute."""
    spec = replace(runtime.agent(agent), pattern="plan_execute")
    model_name = spec.model or runtime.settings.executor_model
    trace_id, run_id = new_id(), new_id()
    limits = limits or spec.limits
    run = Run(agent=spec, model=model_name, price=runtime.prices.require(model_name),
              limits=limits, trace=runtime.traces.writer(trace_id=trace_id, run_id=run_id),
              kind="scheduled", id=run_id, trace_id=trace_id)
    await runtime.runs.start(run_id=run.id, trace_id=trace_id, agent=spec.name, kind="scheduled",
                             budget_usd=limits.budget_usd)
    planner = runtime.settings.planner_model
    result = await execute_plan(
        run, model=runtime.model, catalog=runtime.registry.catalog(list(spec.tools)),
        tool_ctx=runtime._tool_context(run), new_from=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
        hooks=Hooks(on_usage=runtime._record_usage),
        planner_model=planner, planner_price=runtime.prices.require(planner),
    )
    await runtime._finish(run, result)
    return result


def events(runtime: Runtime, result: RunResult, kind: str | None = None) -> list[dict[str, Any]]:
    found = runtime.traces.read(result.trace_id)
    return [e for e in found if kind is None or e["type"] == kind]


def text_of(request: ModelRequest) -> str:
    return json.dumps(request.messages, ensure_ascii=False)


def is_step(request: ModelRequest, step: int) -> bool:
    return f"Now do step {step} only" in text_of(request)


async def test_the_plan_is_one_trace_event_and_the_steps_run_in_order(make_runtime: Any) -> None:
    model = ScriptedModel(
        plan(("Get the current time in Europe/Madrid.", "the local time"),
             ("Write the briefing.", "the briefing in Markdown")),
        tool_call("get_current_time", {"timezone": "Europe/Madrid"}),
        reply("It is 08:00 in Madrid."),
        reply("**Briefing** — it is 08:00; mild and sunny."),
    )
    runtime: Runtime = await make_runtime(model, KEEL_PLANNER_MODEL="claude-opus-4-6")
    result = await run_plan(runtime)
    model.assert_all_used()
    assert (result.status, result.output) == ("completed",
                                               "**Briefing** — it is 08:00; mild and sunny.")
    assert (result.steps, result.model_calls) == (1, 4)

    [plan_event] = events(runtime, result, "plan")
    assert plan_event["planner_model"] == "claude-opus-4-6"
    assert plan_event["plan"] == {"goal": "a short morning briefing", "steps": [
        {"id": 1, "instruction": "Get the current time in Europe/Madrid.",
         "produces": "the local time"},
        {"id": 2, "instruction": "Write the briefing.", "produces": "the briefing in Markdown"},
    ]}
    assert [e["step"] for e in events(runtime, result, "step_start")] == [1, 2]
    assert [e["status"] for e in events(runtime, result, "step_end")] == ["completed"] * 2

    planner, *executor = model.requests
    # the planner: reasoning model, thinking on, the plan through an optional tool
    assert planner.model == "claude-opus-4-6" and planner.tool_choice is None
    assert planner.thinking == {"type": "enabled", "budget_tokens": 2048}
    assert [t["name"] for t in planner.tools] == [SUBMIT_PLAN]
    assert TASK in text_of(planner) and "get_current_time" in planner.system[0]["text"]
    # the executor: its own model and tools; step 2 sees the plan and step 1's result
    assert {r.model for r in executor} == {runtime.settings.executor_model}
    assert all(r.thinking is None for r in executor)
    assert is_step(executor[0], 1) and is_step(executor[2], 2)
    assert "It is 08:00 in Madrid." in text_of(executor[2])
    assert "last step" in text_of(executor[2]) and "last step" not in text_of(executor[0])

    # one budget: the planner billed at its price, the executor at its own
    sonnet, opus = (runtime.prices.require(m) for m in ("claude-sonnet-4-6", "claude-opus-4-6"))
    usage = [s.usage for s in model.steps if isinstance(s, ModelResponse)]
    responses = events(runtime, result, "model_response")
    assert responses[0]["cost_usd"] == pytest.approx(cost_of(opus, usage[0]))
    expected = cost_of(opus, usage[0]) + sum(cost_of(sonnet, u) for u in usage[1:])
    assert result.cost_usd == pytest.approx(expected)
    assert await runtime.usage.spent() == pytest.approx(expected)

    # replayable: every request, planner included, is rebuilt exactly from the trace
    assert reconstruct_requests(events(runtime, result)) == [r.to_api() for r in model.requests]
    # the session keeps the task and the answer, not the scratchpad
    assert [m["role"] for m in result.messages] == ["user", "assistant"]


async def test_a_failed_step_is_replanned_from_that_step(make_runtime: Any) -> None:
    model = ScriptedModel(
        plan(("Read the weather page.", "today's forecast"),
             ("Read the traffic page.", "the traffic summary"),
             ("Write the briefing.", "the briefing")),
        reply("Sunny, 21 °C."),
        reply("STEP_FAILED: the traffic page is down"),
        plan(("Skip traffic; write the briefing from the forecast and say traffic is missing.",
              "the briefing"), goal="a briefing without traffic"),
        reply("Sunny, 21 °C. (Traffic unavailable.)"),
    )
    runtime: Runtime = await make_runtime(model)
    result = await run_plan(runtime)
    model.assert_all_used()
    assert (result.status, result.output) == ("completed", "Sunny, 21 °C. (Traffic unavailable.)")

    replanner = model.requests[3]
    assert [t["name"] for t in replanner.tools] == [SUBMIT_PLAN]
    seen = text_of(replanner)
    assert "1. [done] Read the weather page." in seen and "Sunny, 21 °C." in seen
    assert "2. [failed]" in seen and "the traffic page is down" in seen
    assert "3. [not started]" in seen and "Re-plan from step 2" in seen
    # step 1 ran once; the re-planned step 2 is the new one
    assert sum(is_step(r, 1) for r in model.requests) == 1
    assert "Skip traffic" in text_of(model.requests[4]) and is_step(model.requests[4], 2)

    [replan] = events(runtime, result, "replan")
    assert (replan["from_step"], replan["replans"]) == (2, 1)
    assert "traffic page is down" in replan["reason"]
    assert [s["id"] for s in replan["plan"]["steps"]] == [1, 2]
    assert replan["plan"]["steps"][0]["instruction"] == "Read the weather page."
    assert [e["step"] for e in events(runtime, result, "step_start")] == [1, 2, 2]
    assert len(events(runtime, result, "plan")) == 1


async def test_a_step_whose_loop_fails_is_replanned_too(make_runtime: Any) -> None:
    model = ScriptedModel(
        plan(("Do the thing.", "the result")),
        reply("", stop_reason="refusal"),
        plan(("Do the thing another way.", "the result")),
        reply("done another way"),
    )
    runtime: Runtime = await make_runtime(model)
    result = await run_plan(runtime)
    model.assert_all_used()
    assert (result.status, result.output) == ("completed", "done another way")
    assert "declined" in events(runtime, result, "replan")[0]["reason"]


async def test_replans_are_bounded(make_runtime: Any) -> None:
    failing = [reply("STEP_FAILED: no access")]
    model = ScriptedModel(plan(("Try.", "x")), *failing,
                          *[s for _ in range(MAX_REPLANS) for s in (plan(("Try again.", "x")),
                                                                      *failing)])
    runtime: Runtime = await make_runtime(model)
    result = await run_plan(runtime)
    model.assert_all_used()
    assert result.status == "failed" and result.exit_code == 1
    assert result.detail == (f"step 1 failed after {MAX_REPLANS} re-plan(s): the executor said "
                             "it cannot do this step: no access")
    assert len(events(runtime, result, "replan")) == MAX_REPLANS
    record = await runtime.runs.get(result.run_id)
    assert record is not None and record.status == "failed"
    assert result.messages[-1]["role"] == "assistant"  # a closed transcript


@pytest.mark.parametrize(("model", "max_tokens", "expected"), [
    ("claude-sonnet-4-5", 4096, {"type": "enabled", "budget_tokens": 2048}),
    ("claude-sonnet-4-6", 4096, {"type": "enabled", "budget_tokens": 2048}),
    ("claude-haiku-4-5-20251001", 4096, {"type": "enabled", "budget_tokens": 2048}),
    ("claude-opus-4-6", 2000, {"type": "enabled", "budget_tokens": 1999}),
    ("claude-opus-4-5", 1024, None),  # no room for the API's 1024-token minimum below max_tokens
    ("claude-opus-4-7", 4096, {"type": "adaptive"}),
    ("claude-opus-4-7", 1024, {"type": "adaptive"}),
    ("claude-opus-5", 4096, {"type": "adaptive"}),
    ("claude-3-7-sonnet-20250219", 4096, {"type": "enabled", "budget_tokens": 2048}),
    ("claude-3-5-haiku-20241022", 4096, None),
    ("my-local-model", 4096, None),
])
def test_thinking_config_takes_the_form_each_model_accepts(
        model: str, max_tokens: int, expected: dict[str, Any] | None) -> None:
    assert thinking_config(model, 2048, max_tokens=max_tokens) == expected


def test_thinking_eras() -> None:
    assert [thinking_era(m) for m in ("claude-sonnet-4-6", "claude-opus-4-7",
                                      "claude-opus-4-7-20260416")] == [
        "enabled", "adaptive", "adaptive"]


async def test_an_adaptive_planner_gets_adaptive_thinking(make_runtime: Any) -> None:
    model = ScriptedModel(plan(("Answer.", "the answer")), reply("42"))
    runtime: Runtime = await make_runtime(model, KEEL_PLANNER_MODEL="claude-opus-4-7")
    result = await run_plan(runtime)
    assert result.status == "completed"
    assert model.requests[0].thinking == {"type": "adaptive"}
    assert model.requests[0].model == "claude-opus-4-7"


async def test_a_planner_that_never_submits_a_valid_plan_fails_clearly(make_runtime: Any) -> None:
    talk = reply("I would fetch the weather and then write it up.")
    talk = replace(talk, content=[{"type": "thinking", "thinking": "hmm", "signature": SIGNATURE},
                                  *talk.content])
    model = ScriptedModel(talk, plan(goal="x", thinking=None))  # then an empty list of steps
    runtime: Runtime = await make_runtime(model)
    result = await run_plan(runtime)
    model.assert_all_used()
    assert result.status == "failed"
    assert result.detail is not None
    assert result.detail.startswith("planning failed: the planner did not submit a valid plan "
                                    "after one repair: the plan is not valid: steps:")
    # the repair request passes the planner's turn back unchanged, thinking and signature included
    repair = model.requests[1]
    # the planner's own answer goes back as it was (a cache breakpoint may mark its end)
    echoed = [{k: v for k, v in block.items() if k != "cache_control"}
              for block in repair.messages[1]["content"]]
    assert (repair.messages[1]["role"], echoed) == ("assistant", talk.content)
    assert repair.messages[1]["content"][0]["signature"] == SIGNATURE
    assert "did not call `submit_plan`" in text_of(repair)
    assert repair.thinking == model.requests[0].thinking
    assert [e["attempt"] for e in events(runtime, result, "plan_invalid")] == [1, 2]
    assert not events(runtime, result, "step_start")
    assert reconstruct_requests(events(runtime, result)) == [r.to_api() for r in model.requests]


async def test_an_invalid_plan_is_repaired_once_answering_its_tool_call(make_runtime: Any) -> None:
    bad = plan(("Do it.", "it"), extra="not allowed")
    model = ScriptedModel(bad, plan(("Do it.", "it")), reply("done"))
    runtime: Runtime = await make_runtime(model)
    result = await run_plan(runtime)
    model.assert_all_used()
    assert (result.status, result.output) == ("completed", "done")
    answer = model.requests[1].messages[-1]["content"]
    tool_use_id = bad.tool_uses[0]["id"]
    assert answer[0]["type"] == "tool_result" and answer[0]["tool_use_id"] == tool_use_id
    assert answer[0]["is_error"] is True and "extra" in answer[0]["content"]


async def test_the_budget_still_ends_a_plan_run_with_its_status(make_runtime: Any) -> None:
    expensive = [tool_call("get_current_time", {"timezone": "UTC"}, output_tokens=4000)
                 for _ in range(4)]
    model = ScriptedModel(plan(("Loop on the clock.", "x"), thinking=None), *expensive)
    runtime: Runtime = await make_runtime(model, KEEL_RUN_BUDGET_USD="0.10")
    result = await run_plan(runtime)
    assert result.status == "budget_exceeded" and result.exit_code == 3
    assert result.cost_usd <= 0.10
    assert not events(runtime, result, "replan")  # a run-wide limit is not a step failure
    assert events(runtime, result, "budget_halt")


async def test_the_step_limit_spans_the_whole_run(make_runtime: Any) -> None:
    clock = {"timezone": "UTC"}
    model = ScriptedModel(
        plan(("Check the clock twice.", "two times"), ("Check it again.", "a time")),
        tool_call("get_current_time", clock), tool_call("get_current_time", clock),
        reply("12:00 and 12:01"),
        tool_call("get_current_time", clock),
    )
    runtime: Runtime = await make_runtime(model, KEEL_MAX_STEPS="2")
    result = await run_plan(runtime)
    model.assert_all_used()
    assert result.status == "step_limit" and result.steps == 2
    assert not events(runtime, result, "replan")


async def test_the_default_model_call_cap_grows_by_one_answer_per_step(make_runtime: Any) -> None:
    steps = [(f"Part {i}.", f"part {i}") for i in range(1, 5)]
    model = ScriptedModel(plan(*steps), *[reply(f"part {i}") for i in range(1, 5)])
    runtime: Runtime = await make_runtime(model, KEEL_MAX_STEPS="1")  # default cap: 1 + 3 = 4
    result = await run_plan(runtime)
    model.assert_all_used()
    assert (result.status, result.model_calls) == ("completed", 5)
    assert events(runtime, result, "plan")[0]["model_call_cap"] == 4 + 1 + 4


async def test_an_explicit_model_call_cap_is_kept(make_runtime: Any) -> None:
    model = ScriptedModel(plan(("A.", "a"), ("B.", "b")), reply("a"))
    runtime: Runtime = await make_runtime(model)
    limits = replace(runtime.agent("assistant").limits, max_model_calls=2)
    result = await run_plan(runtime, limits=limits)
    assert result.status == "step_limit" and result.model_calls == 2


async def test_a_run_past_its_deadline_while_planning_ends_in_timeout(make_runtime: Any) -> None:
    model = ScriptedModel(plan(("A.", "a")), latency_s=5)
    runtime: Runtime = await make_runtime(model, KEEL_RUN_TIMEOUT_S="0.2")
    result = await run_plan(runtime)
    assert result.status == "timeout" and result.duration_s < 2


async def test_an_escalation_in_a_step_parks_the_run_and_resumes_the_plan(
        make_runtime: Any) -> None:
    model = ScriptedModel(
        plan(("Ask which city.", "the city"), ("Write the briefing for it.", "the briefing")),
        tool_call("escalate_to_human", {"reason": "Which city?", "context": "for the weather",
                                        "options": ["Madrid", "Paris"]}),
    )
    runtime: Runtime = await make_runtime(model)
    parked = await run_plan(runtime)
    assert parked.status == "waiting_human" and parked.escalation is not None
    state = parked.state
    assert state is not None and state["pattern"] == "plan_execute"
    assert (state["step_index"], state["results"], state["replans"]) == (0, [], 0)
    assert [s["id"] for s in state["plan"]["steps"]] == [1, 2]
    assert state["tool_use_id"] == parked.escalation.tool_use_id
    record = await runtime.runs.get(parked.run_id)
    # the stored state also names the run's model, so a resume answers with the same one
    assert record is not None and record.status == "waiting_human" and record.state is not None
    assert record.state.pop("model") == "claude-sonnet-4-6" and record.state == state

    # what Runtime.resume does for a plan run: the answer closes the escalation, the walk goes on
    model.then(reply("Madrid"), reply("**Madrid** briefing"))
    run = Run(agent=replace(runtime.agent("assistant"), pattern="plan_execute"),
              model=runtime.settings.executor_model,
              price=runtime.prices.require(runtime.settings.executor_model),
              limits=Limits(**state["limits"]), kind="resume", id=parked.run_id,
              trace_id=parked.trace_id,
              trace=runtime.traces.writer(trace_id=parked.trace_id, run_id=parked.run_id))
    run.steps, run.model_calls = state["steps"], state["model_calls"]
    run.budget.spent_usd = state["spent_usd"]
    planner = runtime.settings.planner_model
    result = await resume_plan(
        run, model=model, catalog=runtime.registry.catalog(list(run.agent.tools)),
        tool_ctx=runtime._tool_context(run), state=state,
        messages=answer_escalation(state["messages"], state["tool_use_id"], "Madrid"),
        planner_model=planner, planner_price=runtime.prices.require(planner))
    model.assert_all_used()
    assert (result.status, result.output) == ("completed", "**Madrid** briefing")
    answered = model.requests[2].messages[-1]["content"][0]
    assert answered["tool_use_id"] == state["tool_use_id"] and "Madrid" in answered["content"]
    assert is_step(model.requests[3], 2) and "Madrid" in text_of(model.requests[3])
    assert result.model_calls == 4


async def test_only_the_last_step_must_match_the_output_type(make_runtime: Any) -> None:
    from pydantic import BaseModel

    class Briefing(BaseModel):
        title: str

    model = ScriptedModel(plan(("Gather.", "notes"), ("Write.", "the JSON briefing")),
                          reply("free-form notes"), reply('{"title": "Today"}'))
    runtime: Runtime = await make_runtime(model)
    runtime.agents["assistant"] = replace(runtime.agents["assistant"], output_type=Briefing)
    result = await run_plan(runtime)
    model.assert_all_used()
    assert result.status == "completed" and result.output_data == Briefing(title="Today")
