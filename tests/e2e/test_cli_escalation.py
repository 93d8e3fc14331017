"""Escalations from the command line: `keel agent run` parks with a real question, `keel escalation
list|answer` shows and answers it, `keel chat` asks inline; expiry ends the run like any other."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.e2e.test_cli_runs import _keel
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use

pytestmark = pytest.mark.e2e

QUESTION = {"reason": "Refund over the limit", "context": "Order 1234, 180 EUR.",
            "options": ["Approve", "Reject"]}


def escalating(req: RecordedRequest) -> Reply:
    if not req.tool_results:
        return reply("Let me check with a human.", tool_use("escalate_to_human", QUESTION))
    answer = json.loads(req.tool_results[-1]["content"])
    return reply(f"Done: {answer['answer']} (decided by {answer['answered_by']}).")


def _db(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(data / "keel.sqlite3")


async def test_a_question_from_agent_run_is_listed_answered_and_completes(
        fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    # Measured: `keel agent run … [[escalate]]` exited 6 with no escalation row, so nothing could
    # ever answer it and the run stayed waiting_human forever.
    fake_anthropic.responder = escalating
    data = tmp_path / "data"
    code, out, err = await _keel(fake_anthropic, data, "agent", "run", "assistant",
                                 "Please refund order 1234", "--json")
    assert code == 6, err
    parked = json.loads(out)
    assert parked["status"] == "waiting_human"
    asked = parked["escalation"]
    assert asked["question"] == "Refund over the limit"
    assert asked["choices"] == ["Approve", "Reject"]

    code, out, err = await _keel(fake_anthropic, data, "escalation", "list", "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["id"] == asked["id"] and row["run_id"] == parked["run_id"]
    assert row["agent"] == "assistant" and row["choices"] == ["Approve", "Reject"]
    assert row["expires"] == "in 24 h" and row["age"].endswith("ago")

    code, out, err = await _keel(fake_anthropic, data, "escalation", "answer", asked["id"][:6], "2")
    assert code == 0, err
    assert out.strip() == "Done: Reject (decided by command line)."
    with _db(data) as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("completed",)]
        assert db.execute("SELECT stage, answer FROM escalations").fetchall() == [("done", "Reject")]
    assert len(fake_anthropic.message_requests) == 2

    # a second answer changes nothing and calls no model
    code, _, err = await _keel(fake_anthropic, data, "escalation", "answer", asked["id"], "Approve")
    assert code == 1 and "Already answered by command line: Reject" in err
    assert len(fake_anthropic.message_requests) == 2
    code, out, _ = await _keel(fake_anthropic, data, "escalation", "list")
    assert code == 0 and "no pending questions" in out


async def test_an_unanswered_cli_question_expires_and_its_trace_says_cancelled(
        fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    fake_anthropic.responder = escalating
    data = tmp_path / "data"
    code, out, err = await _keel(fake_anthropic, data, "agent", "run", "assistant", "refund",
                                 "--json")
    assert code == 6, err
    parked = json.loads(out)
    with _db(data) as db:
        db.execute("UPDATE escalations SET expires_at = '2000-01-01T00:00:00.000000Z'")
    code, _, err = await _keel(fake_anthropic, data, "escalation", "answer",
                               parked["escalation"]["id"], "Approve")
    assert code == 1 and "expired" in err, err
    with _db(data) as db:
        assert db.execute("SELECT status, status_detail FROM runs").fetchall() == [
            ("cancelled", "the question to a human expired unanswered")]
        assert db.execute("SELECT stage FROM escalations").fetchall() == [("expired",)]
    code, out, _ = await _keel(fake_anthropic, data, "trace", "show", parked["trace_id"][:8])
    assert code == 0 and "status: cancelled" in out
    assert len(fake_anthropic.message_requests) == 1  # nothing resumed


async def test_list_expires_due_questions(fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    fake_anthropic.responder = escalating
    data = tmp_path / "data"
    code, _, err = await _keel(fake_anthropic, data, "agent", "run", "assistant", "refund")
    assert code == 6 and "keel escalation answer" in err and "1) Approve" in err
    with _db(data) as db:
        db.execute("UPDATE escalations SET expires_at = '2000-01-01T00:00:00.000000Z'")
    code, out, _ = await _keel(fake_anthropic, data, "escalation", "list", "--json")
    assert code == 0 and json.loads(out) == []
    with _db(data) as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("cancelled",)]


async def test_chat_shows_the_question_and_takes_the_next_line_as_the_answer(
        fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    # Measured: `keel chat` printed an empty line instead of the question.
    fake_anthropic.responder = escalating
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "chat",
                                 stdin="Please refund order 1234\nApprove\n")
    assert code == 0, err
    assert "Decision needed: Refund over the limit" in out
    assert "1) Approve" in out and "2) Reject" in out
    assert "assistant> Done: Approve (decided by command line)." in out
    with _db(tmp_path / "data") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("completed",)]
        assert db.execute("SELECT stage FROM escalations").fetchall() == [("done",)]


async def test_escalation_help_says_what_it_does(fake_anthropic: FakeAnthropic,
                                                 tmp_path: Path) -> None:
    code, out, _ = await _keel(fake_anthropic, tmp_path / "data", "escalation", "answer", "--help")
    assert code == 0 and "CHOICE" in out and "Approve or Deny" in out


async def test_an_approval_from_agent_run_is_answered_on_the_command_line(
        fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    config = tmp_path / "keel.toml"
    config.write_text('tool_modules = ["tests.e2e.approval_tools"]\n\n[agents.payer]\n'
                      'description = "pays people"\nsystem = "You pay people."\n'
                      'tools = ["send_payment"]\n')

    def payer(req: RecordedRequest) -> Reply:
        if not req.tool_results:
            return reply(tool_use("send_payment", {"to": "Bob", "amount_eur": "5.00"}))
        return reply(f"Result: {req.tool_results[-1]['content']}")

    fake_anthropic.responder = payer
    data = tmp_path / "data"
    code, _, err = await _keel(fake_anthropic, data, "agent", "run", "payer", "pay Bob 5",
                               KEEL_CONFIG=str(config))
    assert code == 6, err
    assert "Approval needed: send_payment" in err and '"amount_eur": "5.00"' in err
    code, out, _ = await _keel(fake_anthropic, data, "escalation", "list", "--json",
                               KEEL_CONFIG=str(config))
    [row] = json.loads(out)
    assert row["kind"] == "approval" and row["choices"] == ["Approve", "Deny"]
    code, _, err = await _keel(fake_anthropic, data, "escalation", "answer", row["id"], "maybe",
                               KEEL_CONFIG=str(config))
    assert code == 2 and "not a choice" in err  # an approval takes Approve or Deny only
    code, out, err = await _keel(fake_anthropic, data, "escalation", "answer", row["id"], "yes",
                                 KEEL_CONFIG=str(config))
    assert code == 0, err
    assert out.strip() == "Result: paid 5.00 EUR to Bob (receipt 1)"
