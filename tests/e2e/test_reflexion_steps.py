"""Reflexion on tool results and on plan steps (issue 18), through the real runtime and anthropic
client against the fake API: a result or a step's answer that fails its grader is retried once
with the feedback, a second failure parks the run for a person with both attempts, the spend
stays within the cap, and replay reproduces it — and fails when a recorded grade is changed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agents.config import load_settings
from agents.reflexion import FEEDBACK_MARK, PERSON_MARK, RESULT_MARK
from agents.replay import replay
from agents.runtime import RunRequest, Runtime
from agents.trace_view import render_summary, summarise
from tests.e2e import graded_tools
from tests.e2e.conftest import API_KEY
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use

pytestmark = pytest.mark.e2e


async def _runtime(fake: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   config: str) -> Runtime:
    path = tmp_path / "keel.toml"
    path.write_text(config)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    monkeypatch.setenv("KEEL_CONFIG", str(path))
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    return await Runtime.open(load_settings())


def _ask(agent: str, text: str) -> RunRequest:
    return RunRequest(agent=agent, messages=[{"role": "user", "content": [  # type: ignore[arg-type]
        {"type": "text", "text": text}]}], new_from=0, user_id=1)


def _grades(events: list[dict[str, Any]], *keys: str) -> list[tuple[Any, ...]]:
    return [tuple(e.get(k) for k in keys) for e in events if e["type"] == "grade"]


ORDERS = """
tool_modules = ["tests.e2e.graded_tools"]

[agents.orders]
description = "Looks orders up"
system = "Look the order up with lookup_order and report its status."
tools = ["lookup_order"]
[agents.orders.limits]
budget_usd = 0.05
"""


async def test_a_tool_result_failing_its_declared_grader_twice_escalates_with_both_results(
        fake_anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # longer than the trace keeps of a result: replay reads them back from the requests sent
    graded_tools.ORDERS[:] = [{"order_id": "A-17", "status": None, "notes": "first " * 500},
                              {"order_id": "A-17", "status": None, "notes": "again " * 500}]

    def respond(req: RecordedRequest) -> Reply:
        if not req.tool_results:
            return reply(tool_use("lookup_order", {"order_id": "A-17"}))
        content = req.tool_results[-1]["content"]
        if PERSON_MARK in content:
            return reply("Order A-17: its status is not known yet; a person checked it.")
        assert RESULT_MARK in content  # the model reads the feedback and decides to retry
        return reply(tool_use("lookup_order", {"order_id": "a-17"}))

    fake_anthropic.responder = respond
    rt = await _runtime(fake_anthropic, tmp_path, monkeypatch, ORDERS)
    try:
        result = await rt.run(_ask("orders", "Where is my order A-17?"))
        assert result.status == "waiting_human", result.detail
        assert result.escalation is not None
        asked = result.escalation.request
        assert "lookup_order" in asked.reason and "twice" in asked.reason
        assert "Result 1:" in asked.context and "Result 2:" in asked.context
        assert "status" in asked.context.split("What the check found")[1]
        requests = fake_anthropic.message_requests
        assert len(requests) == 2  # the tool ran twice; the whole agent was not re-run
        retry = requests[1].tool_results[-1]["content"]
        assert retry.startswith('{"order_id": "A-17", "status": null')
        assert f"{RESULT_MARK} (attempt 1 of 2): these fields are missing or null: status" in retry
        assert result.cost_usd <= 0.05
        events = rt.traces.read(result.trace_id)
        assert _grades(events, "tool", "attempt", "passed") == [("lookup_order", 1, False),
                                                                 ("lookup_order", 2, False)]
        shown = render_summary(summarise(events))  # keel trace show and /trace list them
        assert 'grade: {"tool": "lookup_order", "attempt": 2, "kind": "required"' in shown
        escalated = next(e for e in events if e["type"] == "escalation")
        calls = [e["id"] for e in events if e["type"] == "tool_call"]
        assert escalated["tool_use_id"] == calls[1]  # parked on the second call itself

        done = await rt.resume(result.run_id, "Use result 2", answered_by="Alice")
        assert done.status == "completed", done.detail
        answered = fake_anthropic.message_requests[-1].tool_results[-1]["content"]
        assert "again" in answered and f"{PERSON_MARK} (Alice) and answered: Use result 2" in answered
        assert done.cost_usd <= 0.05

        events = rt.traces.read(result.trace_id)
        report = await replay(events)
        assert report.identical, report.render()
        assert [s.replayed_status for s in report.segments] == ["waiting_human", "completed"]

        # a grade changed after the fact is a divergence, even where the requests agree
        edited = copy.deepcopy(events)
        grade = next(e for e in edited if e["type"] == "grade")
        grade["feedback"] = "looked fine to me"
        changed = await replay(edited)
        assert not changed.identical and changed.divergence == "grade 1 differs at feedback"
        # ... and so is a grader that would judge otherwise today
        edited = copy.deepcopy(events)
        start = next(e for e in edited if e["type"] == "run_start")
        start["replay"]["graders"]["configs"]["tools"]["lookup_order"]["fields"] = ["order_id"]
        changed = await replay(edited)
        assert not changed.identical and changed.divergence is not None
        assert changed.divergence.startswith("request 2 differs")
    finally:
        await rt.close()


SHIPPING = """
tool_modules = ["tests.e2e.graded_tools"]

[agents.shipper]
description = "Quotes shipping"
system = "Quote shipping with quote_shipping."
tools = ["quote_shipping"]
[agents.shipper.limits]
budget_usd = 0.05
[agents.shipper.graders.quote_shipping]
kind = "rubric"
rubric = "Names a price in euros."
"""


async def test_a_rubric_graded_tool_result_is_retried_by_the_model_and_passes_within_the_cap(
        fake_anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graded_tools.QUOTES[:] = ["Shipping to Norway: please call us.",
                              "Shipping to Norway: 12 EUR, 3 days."]

    def respond(req: RecordedRequest) -> Reply:
        if "grade one answer" in json.dumps(req.body.get("system")):
            ok = "EUR" in req.last_user_text.split("Answer to grade:")[1]
            return reply("PASS" if ok else "FAIL: name the price in euros")
        if not req.tool_results:
            return reply(tool_use("quote_shipping", {"country": "Norway"}))
        content = req.tool_results[-1]["content"]
        if RESULT_MARK in content:
            return reply(tool_use("quote_shipping", {"country": "Norway", "express": False}))
        return reply(f"Shipping to Norway costs {content.split(': ')[1]}")

    fake_anthropic.responder = respond
    rt = await _runtime(fake_anthropic, tmp_path, monkeypatch, SHIPPING)
    try:
        result = await rt.run(_ask("shipper", "How much to ship to Norway?"))
        assert result.status == "completed", result.detail
        assert result.output == "Shipping to Norway costs 12 EUR, 3 days."
        models = [r.model for r in fake_anthropic.message_requests]
        assert len(models) == 5 and models.count("claude-haiku-4-5") == 2  # 3 turns, 2 grades
        events = rt.traces.read(result.trace_id)
        assert _grades(events, "tool", "attempt", "passed", "feedback") == [
            ("quote_shipping", 1, False, "name the price in euros"),
            ("quote_shipping", 2, True, None)]
        assert sum(1 for e in events if e["type"] == "model_request") == 5  # each one reserved
        assert result.cost_usd <= 0.05 and result.model_calls == 5
        report = await replay(events)
        assert report.identical, report.render()
    finally:
        await rt.close()


PLANNED = """
[agents.reporter]
description = "Order reports"
system = "Report on the order in the message."
pattern = "plan_execute"
[agents.reporter.limits]
budget_usd = 0.08
[agents.reporter.step_graders.order_json]
kind = "required"
fields = ["order_id", "amount"]
about = "the order as JSON with order_id and amount"
"""

PLAN = {"goal": "A one-line order report", "steps": [
    {"instruction": "Extract the order as JSON", "produces": "the order JSON",
     "check": "order_json"},
    {"instruction": "Write the report", "produces": "one sentence for the person"}]}


async def test_a_plan_step_with_a_check_is_retried_once_then_escalates_and_the_plan_goes_on(
        fake_anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def respond(req: RecordedRequest) -> Reply:
        if any(t.get("name") == "submit_plan" for t in req.body.get("tools") or []):
            return reply(tool_use("submit_plan", PLAN))
        text = req.last_user_text
        if "Now do step 2" in text:
            return reply("Order A-17 costs 42.50 EUR.")
        if PERSON_MARK in text:
            return reply('{"order_id": "A-17", "amount": 42.5}')
        return reply('{"order_id": "A-17", "amount": null}')

    fake_anthropic.responder = respond
    rt = await _runtime(fake_anthropic, tmp_path, monkeypatch, PLANNED)
    try:
        result = await rt.run(_ask("reporter", "Order A-17, forty-two fifty."))
        assert result.status == "waiting_human", result.detail
        assert result.escalation is not None
        assert result.escalation.request.reason.startswith("Step 1's answer failed its check")
        context = result.escalation.request.context
        assert "Attempt 1:" in context and "Attempt 2:" in context and "amount" in context
        planner, first, retry = fake_anthropic.message_requests
        tool = planner.body["tools"][0]["input_schema"]["properties"]["steps"]["items"]
        assert tool["properties"]["check"]["enum"] == ["order_json"]
        assert "- order_json: the order as JSON with order_id and amount" in json.dumps(
            planner.body["system"])
        assert "Your answer is checked: the order as JSON with order_id and amount." in (
            first.last_user_text)
        assert retry.last_user_text.startswith(FEEDBACK_MARK)
        events = rt.traces.read(result.trace_id)
        assert _grades(events, "step", "check", "attempt", "passed") == [
            (1, "order_json", 1, False), (1, "order_json", 2, False)]
        assert result.cost_usd <= 0.08

        done = await rt.resume(result.run_id, "Use attempt 2 with amount 42.5")
        assert done.status == "completed", done.detail
        assert done.output == "Order A-17 costs 42.50 EUR."
        assert done.cost_usd <= 0.08
        events = rt.traces.read(result.trace_id)
        # the person decided step 1; step 2 has no check and is not the agent's graded answer
        assert _grades(events, "step", "attempt", "passed", "skipped") == [
            (1, 1, False, None), (1, 2, False, None), (1, 2, True, "a person decided")]
        report = await replay(events)
        assert report.identical, report.render()
        assert [s.replayed_status for s in report.segments] == ["waiting_human", "completed"]
    finally:
        await rt.close()
