"""How graded tool results are counted and how graders of tools and plan steps are declared."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agents.config import AgentConfig
from agents.model.types import ModelResponse
from agents.patterns_config import GraderConfig
from agents.planner import SUBMIT_PLAN_TOOL, planner_prefix, read_plan
from agents.pricing import Usage
from agents.reflexion import PERSON_MARK, RESULT_MARK, failed_results, raw_result
from agents.tools import ToolArgs, tool


def _call(i: int, name: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}", "name": name,
                                              "input": {}}]}


def _result(i: int, content: str, **kw: Any) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}",
                                         "content": content, **kw}]}


def _failed(i: int, raw: str, feedback: str) -> dict[str, Any]:
    return _result(i, f"{raw}{RESULT_MARK} (attempt 1 of 2): {feedback}\nCall it again.")


def test_failures_count_per_tool_and_start_over_after_a_pass_or_a_person() -> None:
    messages = [_call(1, "a"), _failed(1, "r1", "no status"), _call(2, "b"), _failed(2, "x", "y"),
                _call(3, "a"), _result(3, "error", is_error=True)]  # an error is not graded
    assert failed_results(messages, 0, {"a", "b"}) == {"a": [("r1", "no status")],
                                                       "b": [("x", "y")]}
    assert failed_results(messages, 2, {"a", "b"}) == {"b": [("x", "y")]}  # this run only
    passed = [*messages, _call(4, "a"), _result(4, '{"ok": true}')]
    assert failed_results(passed, 0, {"a"}) == {"a": []}
    reviewed = [*messages, _call(4, "a"),
                _result(4, f"r2{RESULT_MARK} (attempt 2 of 2): no status\n{PERSON_MARK} and "
                           "answered: use it")]
    assert failed_results(reviewed, 0, {"a"}) == {"a": []}
    assert raw_result(f"r1{RESULT_MARK} (attempt 1 of 2): no status") == "r1"


def test_graders_must_name_the_agents_own_tools_and_step_checks_a_plain_name() -> None:
    config = AgentConfig(description="d", tools=["lookup"],
                         graders={"lookup": {"kind": "parses"}})  # type: ignore[dict-item]
    assert config.graders["lookup"].kind == "parses"
    with pytest.raises(ValidationError, match=r"`graders` names tool\(s\) \['fetch_url'\]"):
        AgentConfig(description="d", tools=["lookup"],
                    graders={"fetch_url": {"kind": "parses"}})  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match="step grader name"):
        AgentConfig(description="d", pattern="plan_execute",
                    step_graders={"Has Space": {"kind": "parses"}})  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match='need pattern = "plan_execute"'):
        AgentConfig(description="d", step_graders={"json": {"kind": "parses"}})  # type: ignore[dict-item]


class _Args(ToolArgs):
    q: str


def test_a_tool_declares_its_grader_and_keeps_it_when_replaced() -> None:
    @tool(description="Looks up.", grader={"kind": "required", "fields": ["id"]})
    async def look(args: _Args) -> str:
        return args.q

    assert look.grader == GraderConfig(kind="required", fields=["id"])
    assert look.replace(timeout_s=3).grader == look.grader


def test_a_plan_may_name_only_the_checks_offered_and_plans_without_checks_are_unchanged() -> None:
    assert planner_prefix("sys", []).tools == [SUBMIT_PLAN_TOOL]
    offered = planner_prefix("sys", [], {"order_json": "the order as JSON"})
    items = offered.tools[0]["input_schema"]["properties"]["steps"]["items"]
    assert items["properties"]["check"]["enum"] == ["order_json"]
    assert SUBMIT_PLAN_TOOL["input_schema"]["properties"]["steps"]["items"]["properties"].keys() \
        == {"instruction", "produces"}  # the shared definition is left alone

    def answer(check: str) -> ModelResponse:
        plan = {"goal": "g", "steps": [{"instruction": "i", "produces": "p", "check": check}]}
        return ModelResponse(id="m", model="x", content=[{"type": "tool_use", "id": "t",
                                                          "name": "submit_plan", "input": plan}],
                             stop_reason="tool_use", usage=Usage())

    assert read_plan(answer("order_json"), frozenset({"order_json"})).draft is not None
    bad = read_plan(answer("prices"), frozenset({"order_json"}))
    assert bad.draft is None and bad.error is not None and "'prices' is not one of" in bad.error
