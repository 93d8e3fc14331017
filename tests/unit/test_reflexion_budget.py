"""A rubric grader whose call the run's budget cannot hold ends the run as budget_exceeded, with
the unchecked answer kept back — not as an internal error, and never sent unchecked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.replay import replay
from agents.runtime import RunRequest, Runtime
from tests.fakes.scripted_model import ScriptedModel, reply

CHECKED = """
[agents.checked]
description = "Answers that are checked"
system = "Answer in one sentence."
[agents.checked.limits]
budget_usd = 0.10
[agents.checked.grader]
kind = "rubric"
rubric = "Mentions the return window in days."
"""


async def test_an_answer_the_budget_cannot_check_ends_budget_exceeded_and_is_not_sent(
        make_runtime: Any, tmp_path: Path) -> None:
    (tmp_path / "keel.toml").write_text(CHECKED)
    # the answer's input nearly fills the $0.10 cap: too little is left for the grader's call
    model = ScriptedModel(reply("Within 30 days.", input_tokens=33_200))
    runtime: Runtime = await make_runtime(model, KEEL_CONFIG=str(tmp_path / "keel.toml"))
    result = await runtime.run(RunRequest(agent="checked", messages=[{"role": "user", "content": [
        {"type": "text", "text": "How long can I return things?"}]}], new_from=0))
    assert result.status == "budget_exceeded", result.detail
    assert result.detail is not None and "check the answer" in result.detail
    assert result.output is None and result.cost_usd <= 0.10
    events = runtime.traces.read(result.trace_id)
    assert [e.get("reason") for e in events if e["type"] == "budget_halt"] == [
        "no budget left to check the answer"]
    assert not [e for e in events if e["type"] == "error"]
    model.assert_all_used()
    report = await replay(events)
    assert report.identical, report.render()
