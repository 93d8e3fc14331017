"""Reflexion, injected retrieval and parallel research through the real runtime and anthropic
client against the fake API (issue 18): each bounded by the run's budget, traced, replayable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agents.config import load_settings
from agents.reflexion import FEEDBACK_MARK, PERSON_MARK
from agents.replay import replay
from agents.runtime import RunRequest, Runtime
from agents.trace_view import render_summary, summarise
from tests.e2e.conftest import API_KEY
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).parent.parent / "retrieval_set" / "corpus"


async def _runtime(fake: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   config: str) -> Runtime:
    path = tmp_path / "keel.toml"
    path.write_text(config)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    monkeypatch.setenv("KEEL_CONFIG", str(path))
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    return await Runtime.open(load_settings())


def _user(text: str) -> dict[str, object]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _ask(agent: str, text: str, **kw: object) -> RunRequest:
    return RunRequest(agent=agent, messages=[_user(text)], new_from=0,
                      user_id=1, **kw)  # type: ignore[arg-type]


EXTRACT = """
[agents.extract]
description = "Order data as JSON"
system = "Extract the order from the message as JSON with order_id and amount."
[agents.extract.limits]
budget_usd = 0.05
[agents.extract.grader]
kind = "required"
fields = ["order_id", "amount"]
"""


async def test_a_failing_grader_retries_once_with_feedback_then_escalates_with_both_attempts(
        fake_anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(['{"order_id": "A-17", "amount": null}',
                    '{"order_id": "A-17", "amount": null, "note": "no amount given"}',
                    '{"order_id": "A-17", "amount": 42.5}'])
    fake_anthropic.responder = lambda req: reply(next(answers))
    rt = await _runtime(fake_anthropic, tmp_path, monkeypatch, EXTRACT)
    try:
        result = await rt.run(_ask("extract", "Order A-17, forty-two fifty, paid by card."))
        assert result.status == "waiting_human"
        assert result.escalation is not None
        context = result.escalation.request.context
        assert "Attempt 1:" in context and "Attempt 2:" in context and "no amount given" in context
        assert "amount" in result.escalation.request.context.split("What the check found")[1]
        requests = fake_anthropic.message_requests
        assert len(requests) == 2
        feedback = requests[1].last_user_text
        assert feedback.startswith(FEEDBACK_MARK) and "amount" in feedback
        assert result.cost_usd <= 0.05 and result.model_calls == 2
        events = rt.traces.read(result.trace_id)
        grades = [e for e in events if e["type"] == "grade"]
        assert [(g["attempt"], g["passed"]) for g in grades] == [(1, False), (2, False)]

        # the person decides; the next answer is not graded again, and the run completes
        done = await rt.resume(result.run_id, "Send attempt 2", answered_by="Alice")
        assert done.status == "completed" and json.loads(done.output or "")["amount"] == 42.5
        assert PERSON_MARK in fake_anthropic.message_requests[-1].last_user_text
        assert done.cost_usd <= 0.05

        report = await replay(rt.traces.read(result.trace_id))
        assert report.identical, report.render()
        assert [s.replayed_status for s in report.segments] == ["waiting_human", "completed"]
    finally:
        await rt.close()


RUBRIC = """
[agents.writer]
description = "Short answers"
system = "Answer in one sentence."
[agents.writer.limits]
budget_usd = 0.05
[agents.writer.grader]
kind = "rubric"
rubric = "Mentions the return window in days."
"""


async def test_a_rubric_grader_is_a_reserved_traced_model_call_and_replays(
        fake_anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def respond(req: RecordedRequest) -> Reply:
        if "grade one answer" in json.dumps(req.body.get("system")):
            ok = "30 days" in req.last_user_text.split("Answer to grade:")[1]
            return reply("PASS" if ok else "FAIL: say how many days the return window is")
        return reply("You can return it." if len(req.messages) == 1 else "Within 30 days.")

    fake_anthropic.responder = respond
    rt = await _runtime(fake_anthropic, tmp_path, monkeypatch, RUBRIC)
    try:
        result = await rt.run(_ask("writer", "How long can I return things?"))
        assert result.status == "completed" and result.output == "Within 30 days."
        models = [r.model for r in fake_anthropic.message_requests]
        assert models.count("claude-haiku-4-5") == 2 and len(models) == 4  # 2 answers, 2 grades
        events = rt.traces.read(result.trace_id)
        assert [e["passed"] for e in events if e["type"] == "grade"] == [False, True]
        assert sum(1 for e in events if e["type"] == "model_request") == 4  # each one reserved
        assert result.cost_usd <= 0.05
        report = await replay(events)
        assert report.identical, report.render()
    finally:
        await rt.close()


STYLE = "Be brief, friendly and exact; quote the number of days and the amounts. " * 60
INJECT = f"""
[retrieval]
corpus = "{CORPUS}"

[agents.returns]
description = "Answers questions about returns"
system = "You answer questions about returns and refunds only, from the documents below. {STYLE}"
[agents.returns.inject_docs]
query = "return window refund damaged items"
top_k = 3
"""


async def test_injected_documents_sit_in_the_cached_prefix_across_turns(
        fake_anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_anthropic.responder = lambda req: reply("Within 30 days [returns.md].")
    rt = await _runtime(fake_anthropic, tmp_path, monkeypatch, INJECT)
    try:
        history: list[dict[str, object]] = []
        for question in ("Can I return shoes?", "And a broken lamp?", "How fast is the refund?"):
            messages = [*history, _user(question)]
            result = await rt.run(RunRequest(agent="returns", messages=messages,  # type: ignore[arg-type]
                                             new_from=len(history), user_id=1))
            assert result.status == "completed"
            history = [*messages, {"role": "assistant", "content": [
                {"type": "text", "text": result.output}]}]
        first, *later = fake_anthropic.message_requests
        system = json.dumps(first.body["system"])
        assert "Return window" in system and '<document source=\\"returns.md\\"' in system
        assert all(r.body["system"] == first.body["system"] for r in later)  # byte-stable
        assert first.usage["cache_creation_input_tokens"] > 0
        for r in later:  # the documents are read from the cache, not sent again at full price
            assert r.usage["cache_read_input_tokens"] >= first.usage[
                "cache_creation_input_tokens"]
    finally:
        await rt.close()


RESEARCH = """
[agents.lead]
description = "Researches in parallel"
system = "Split the question, research the parts in parallel, then synthesise."
tools = ["research"]
[agents.lead.limits]
budget_usd = 0.06
[agents.lead.research]
agent = "helper"
concurrency = 3

[agents.helper]
description = "Answers one sub-question"
system = "Answer the sub-question briefly."
"""


async def test_a_fan_out_of_three_with_one_failing_branch_is_synthesised_within_the_cap(
        fake_anthropic: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    questions = ["Shipping cost to Norway?", "Return window for shoes?", "Warranty on a laptop?"]
    in_flight, peak = 0, 0

    async def respond(req: RecordedRequest) -> Reply:
        nonlocal in_flight, peak
        system = json.dumps(req.body.get("system"))
        if "Split the question" in system:
            if not req.tool_results:
                return reply(tool_use("research", {"questions": questions}))
            branches = json.loads(req.tool_results[-1]["content"])["branches"]
            failed = [b["question"] for b in branches if b["status"] != "completed"]
            return reply(f"Synthesis of {len(branches) - len(failed)} answers; could not "
                         f"research: {', '.join(failed)}")
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.3)  # the three branches overlap only if run concurrently
        finally:
            in_flight -= 1
        if "Warranty" in req.last_user_text:
            return reply("")  # an empty answer: that branch fails
        return reply(f"Answer to: {req.last_user_text}")

    fake_anthropic.responder = respond
    rt = await _runtime(fake_anthropic, tmp_path, monkeypatch, RESEARCH)
    try:
        result = await rt.run(_ask("lead", "Tell me about shipping, returns and warranty."))
        assert result.status == "completed"
        assert result.output == ("Synthesis of 2 answers; could not research: "
                                 "Warranty on a laptop?")
        events = rt.traces.read(result.trace_id)
        fan_out = next(e for e in events if e["type"] == "fan_out")
        fan_in = next(e for e in events if e["type"] == "fan_in")
        assert [b["question"] for b in fan_out["branches"]] == questions
        statuses = [b["status"] for b in fan_in["branches"]]
        assert statuses == ["completed", "completed", "failed"]
        # measured: all three were in flight at once, and their runs overlapped in time
        assert peak == 3
        spans = [(b["started_s"], b["ended_s"]) for b in fan_in["branches"]]
        assert max(s for s, _ in spans) < min(e for _, e in spans)
        # the children's total and the parent's own calls stay within the parent's cap
        children = [await rt.runs.get(b["run_id"]) for b in fan_in["branches"]]
        assert all(c is not None and c.budget_usd <= fan_out["branch_budget_usd"] + 1e-9
                   for c in children)
        child_total = sum(c.cost_usd for c in children if c is not None)
        assert child_total == pytest.approx(fan_in["charged_usd"], abs=1e-8)
        assert child_total < result.cost_usd <= 0.06
        # each child's trace names its parent
        for b in fan_in["branches"]:
            start = rt.traces.read(b["trace_id"])[0]
            assert start["type"] == "run_start" and start["parent_trace_id"] == result.trace_id
        # keel trace show (and /trace) show the tree
        shown = render_summary(summarise(events))
        for b in fan_in["branches"]:
            assert f"branch {b['index']}: {b['status']}" in shown and b["trace_id"] in shown
        report = await replay(events)
        assert report.identical, report.render()
        for b in fan_in["branches"]:
            child = await replay(rt.traces.read(b["trace_id"]))
            assert child.identical, child.render()
    finally:
        await rt.close()
