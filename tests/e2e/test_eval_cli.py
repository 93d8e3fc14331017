"""`keel eval` end to end: a run made with the real anthropic client against the fake API is
recorded as a golden task that then passes offline without a model call; live evals and the
model comparison go through the same client against the fake (never the internet)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.e2e.conftest import API_KEY
from tests.e2e.test_cli_runs import _keel
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use

SUPPORT = """
[agents.support]
description = "Customer support for the shop."
system = "{system}"
tools = ["get_current_time", "escalate_to_human"]
[agents.support.limits]
budget_usd = 0.20
"""
GOOD_PROMPT = "You are the shop's support. Escalate refunds over 100 EUR to a human."
REFUND_TASK = """
input = "Refund order 1234, 150 EUR, it arrived broken."
[expect]
status = "waiting_human"
[expect.tools]
mode = "exact"
calls = [{name = "escalate_to_human", input = {options = ["Approve", "Deny"]}}]
"""


def support_model(req: RecordedRequest) -> Reply:
    """A stand-in for the model's judgement: it escalates refunds only when its prompt says to,
    and the cheaper model never does."""
    system = " ".join(b.get("text", "") for b in req.body.get("system") or [])
    if req.tool_results:
        return reply("Waiting for a colleague.")
    if "Escalate refunds" in system and "haiku" not in (req.model or ""):
        return reply("I will ask a colleague.", tool_use(
            "escalate_to_human", {"reason": "Approve a 150 EUR refund?",
                                  "context": "Order 1234, broken.", "options": ["Approve", "Deny"]}))
    return reply("Your refund of 150 EUR is on its way.")


def project(tmp_path: Path, prompt: str = GOOD_PROMPT) -> dict[str, str]:
    (tmp_path / "keel.toml").write_text(SUPPORT.format(system=prompt))
    folder = tmp_path / "evals" / "support"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refund.toml").write_text(textwrap.dedent(REFUND_TASK))
    return {"KEEL_CONFIG": str(tmp_path / "keel.toml")}


async def test_recorded_run_replays_as_a_passing_golden_task_without_a_model_call(
        fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    data = tmp_path / "data"
    fake_anthropic.enqueue(reply("Let me check.", tool_use("get_current_time",
                                                           {"timezone": "Europe/Madrid"})),
                           reply("It is **noon** in Madrid."))
    code, out, err = await _keel(fake_anthropic, data, "agent", "run", "assistant",
                                 "What time is it in Madrid?", "--json")
    assert code == 0, err
    trace_id = json.loads(out)["trace_id"]
    code, out, err = await _keel(fake_anthropic, data, "eval", "--record", trace_id[:8],
                                 "--name", "madrid")
    assert code == 0, err
    golden = tmp_path / "evals" / "assistant" / "madrid.toml"
    assert "evals/assistant/madrid.toml" in out and golden.exists()
    assert "get_current_time" in golden.read_text() and API_KEY not in golden.read_text()
    calls = len(fake_anthropic.requests)
    # no key and an unreachable API: the golden task runs on its recording alone
    code, out, err = await _keel(fake_anthropic, data, "eval", "assistant", "--json",
                                 ANTHROPIC_API_KEY="", ANTHROPIC_BASE_URL="http://127.0.0.1:9")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["passed"] == 1 and report["failed"] == 0
    [task] = report["tasks"]
    assert task["tools"] == ["get_current_time"] and task["output"] == "It is **noon** in Madrid."
    assert task["model_calls"] == 2
    recorded = sum(r.response["usage"]["output_tokens"] for r in fake_anthropic.message_requests)
    assert task["output_tokens"] == recorded
    assert len(fake_anthropic.requests) == calls
    # recording again over it needs --force
    code, _, err = await _keel(fake_anthropic, data, "eval", "--record", trace_id,
                               "--name", "madrid")
    assert code == 1 and "--force" in err
    # a recorded expectation that no longer holds fails with its diff
    golden.write_text(golden.read_text().replace('"Europe/Madrid"}, is_error',
                                                 '"Asia/Tokyo"}, is_error'))
    code, out, err = await _keel(fake_anthropic, data, "eval", "assistant")
    assert code == 1, out + err
    assert "✗ tools:" in out and 'expected get_current_time("timezone": "Asia/Tokyo")' in out


async def test_live_eval_catches_a_broken_prompt(fake_anthropic: FakeAnthropic,
                                                 tmp_path: Path) -> None:
    fake_anthropic.responder = support_model
    env = project(tmp_path)
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "eval", "--live",
                                 "--budget-usd", "0.5", **env)
    assert code == 0, out + err
    assert "support/refund" in out and "pass" in out
    # the rule about refunds is lost from the prompt: the golden task fails and says how
    env = project(tmp_path, prompt="You are the shop's support. Be kind.")
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "eval", "--live",
                                 "--budget-usd", "0.5", **env)
    assert code == 1, out + err
    assert "✗ status: status completed, expected waiting_human" in out
    assert "✗ tools: tool calls differ from the exact list at call 1" in out
    assert "actual:\n          (none)" in out.replace("        actual:", "actual:")
    assert not fake_anthropic.unexpected


async def test_live_budget_is_reserved_before_each_call(fake_anthropic: FakeAnthropic,
                                                        tmp_path: Path) -> None:
    fake_anthropic.responder = support_model
    env = project(tmp_path)
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "eval", "--live",
                                 "--budget-usd", "0.0001", **env)
    assert code == 1, out + err
    assert "budget_exceeded" in out
    assert fake_anthropic.message_requests == []  # refused before the call, not after


async def test_compare_two_models_side_by_side(fake_anthropic: FakeAnthropic,
                                               tmp_path: Path) -> None:
    fake_anthropic.responder = support_model
    env = project(tmp_path)
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "eval", "--compare",
                                 "claude-haiku-4-5", "claude-sonnet-4-6", "--budget-usd", "1",
                                 **env)
    assert code == 0, out + err
    assert "pass rate" in out and "0/1 (0%)" in out and "1/1 (100%)" in out
    assert "decisions that differ: 1" in out and "tools: (none) vs escalate_to_human" in out
    md = (tmp_path / "evals" / "reports" / "compare-claude-haiku-4-5-vs-claude-sonnet-4-6.md")
    report = json.loads(md.with_suffix(".json").read_text())
    costs = report["summary"]
    assert costs["claude-sonnet-4-6"]["cost_usd"] > costs["claude-haiku-4-5"]["cost_usd"] > 0
    assert report["tasks"][0]["decisions_differ"] is True
    text = md.read_text()
    assert "| cost |" in text and "## Decisions that differ" in text and "support/refund" in text
    models = {r.model for r in fake_anthropic.message_requests}
    assert models == {"claude-haiku-4-5", "claude-sonnet-4-6"}
