"""Escalations answered inline: buttons, free-text replies, double presses, restarts, expiry."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.e2e.conftest import BotWorld, start_bot, stop_bot
from tests.fakes.anthropic import RecordedRequest, Reply, reply, tool_use

pytestmark = pytest.mark.e2e

QUESTION = {"reason": "Refund over the limit", "context": "Order 1234, 180 EUR, customer asks a refund.",
            "options": ["Approve", "Reject"]}


def escalating_agent(req: RecordedRequest) -> Reply:
    results = req.tool_results
    if not results:
        return reply("Let me check with a human.", tool_use("escalate_to_human", QUESTION))
    answer = json.loads(results[0]["content"])
    return reply(f"Done: {answer['answer']} (decided by {answer['answered_by']}).")


async def _question(w: BotWorld) -> dict:  # type: ignore[type-arg]
    w.answer(escalating_agent)
    w.telegram.inject_text(w.alice_chat, "Please refund order 1234")
    question = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    runtime = w.app.bot_data["runtime"]
    for _ in range(500):  # the bot stores the question's message id right after Telegram's answer
        if await runtime.db.fetchval("SELECT message_id FROM escalations") is not None:
            break
        await asyncio.sleep(0.01)
    return question


async def test_a_button_press_resumes_and_completes_the_run(bot_world: BotWorld) -> None:
    w = bot_world
    question = await _question(w)
    assert "Decision needed" in question["text"] and "Refund over the limit" in question["text"]
    keyboard = question["reply_markup"]["inline_keyboard"]
    assert [row[0]["text"] for row in keyboard] == ["Approve", "Reject"]
    assert all(len(row[0]["callback_data"].encode()) <= 64 for row in keyboard)
    runtime = w.app.bot_data["runtime"]
    [record] = await runtime.runs.recent()
    assert record.status == "waiting_human"

    # two people press at once: the first answer wins, the second changes nothing
    press = w.telegram.press_button(question, text="Approve", user=w.alice)
    second = w.telegram.press_button(question, text="Reject", user=w.bob)
    final = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert final["text"] == "Done: Approve (decided by Alice)."
    assert w.telegram.answered(press["callback_query"]["id"])
    edited = next(m for m in w.telegram.sent(w.alice_chat.id) if m["message_id"] == question["message_id"])
    assert "Decision: Approve" in edited["text"] and "Alice" in edited["text"]
    assert "reply_markup" not in edited or not edited["reply_markup"].get("inline_keyboard")
    record = await runtime.runs.get(record.id)
    assert record.status == "completed" and record.steps == 1
    stages = await runtime.db.fetchall("SELECT stage FROM escalations")
    assert [r["stage"] for r in stages] == ["done"]  # pending → answered → resumed → done

    await w.telegram.wait_for(lambda: w.telegram.answered(second["callback_query"]["id"]), timeout=5)
    assert "Already answered by Alice" in str(w.telegram.answered(second["callback_query"]["id"]))
    assert len(w.agent_requests) == 2  # the question, then one resumed call
    texts = [m["text"] for m in w.telegram.sent(w.alice_chat.id)]
    assert sum(t.startswith("Done:") for t in texts) == 1


async def test_a_reply_answers_a_free_text_escalation(bot_world: BotWorld) -> None:
    w = bot_world
    question = await _question(w)
    w.telegram.inject_reply(question, "Refund half of it", user=w.alice)
    final = await w.telegram.wait_for(
        lambda: next((m for m in w.telegram.sent(w.alice_chat.id) if m["text"].startswith("Done")), None),
        timeout=10)
    assert final["text"] == "Done: Refund half of it (decided by Alice)."


async def test_the_run_resumes_after_a_bot_restart(bot_world: BotWorld) -> None:
    w = bot_world
    question = await _question(w)
    await stop_bot(w.app)
    w.app = await start_bot(w.settings)  # same data directory: a new process would see the same
    w.telegram.press_button(question, text="Reject", user=w.alice)
    final = await w.telegram.wait_for(
        lambda: next((m for m in w.telegram.sent(w.alice_chat.id) if m["text"].startswith("Done")), None),
        timeout=10)
    assert final["text"] == "Done: Reject (decided by Alice)."


async def test_an_unanswered_escalation_expires_and_cancels_the_run(bot_world: BotWorld) -> None:
    w = bot_world
    question = await _question(w)
    runtime = w.app.bot_data["runtime"]
    await runtime.db.execute_write("UPDATE escalations SET expires_at = '2000-01-01T00:00:00.000000Z'")
    assert await w.app.bot_data["keel"].escalations.expire() == 1
    note = await w.telegram.wait_for(
        lambda: next((m for m in w.telegram.sent(w.alice_chat.id) if "Nobody answered" in m["text"]), None),
        timeout=5)
    assert note is not None
    [record] = await runtime.runs.recent()
    assert record.status == "cancelled" and "expired" in (record.status_detail or "")
    edited = next(m for m in w.telegram.sent(w.alice_chat.id)
                  if m["message_id"] == question["message_id"])
    assert "Expired unanswered" in edited["text"]
    assert not (edited.get("reply_markup") or {}).get("inline_keyboard")  # no buttons left


async def test_a_budget_halt_asks_and_continues_with_more_budget(
    fake_telegram: Any, fake_anthropic: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agents.config import load_settings
    from tests.e2e.conftest import bot_env

    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_RUN_BUDGET_USD="0.02")
    w = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())

    def agent(req: RecordedRequest) -> Reply:
        if len(req.tool_results) == 0 and len(req.messages) == 1:
            return reply("x" * 1600, tool_use("get_current_time", {"timezone": "UTC"}))
        return reply("All done after the top-up.")

    w.answer(agent)
    w.app = await start_bot(w.settings)
    try:
        w.telegram.inject_text(w.alice_chat, "expensive question")
        stopped = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
        assert "budget" in stopped["text"].lower()
        question = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
        assert "Budget spent" in question["text"]
        runtime = w.app.bot_data["runtime"]
        for _ in range(500):
            if await runtime.db.fetchval("SELECT message_id FROM escalations") is not None:
                break
            await asyncio.sleep(0.01)
        w.telegram.press_button(question, text="Continue (+$0.02)", user=w.alice)
        final = await w.telegram.wait_for(lambda: next(
            (m for m in w.telegram.sent(w.alice_chat.id) if m["text"] == "All done after the top-up."),
            None), timeout=10)
        assert final is not None
        [record] = await runtime.runs.recent()
        assert record.status == "completed" and record.cost_usd <= 0.04
    finally:
        await stop_bot(w.app)


async def test_an_answer_resumes_even_when_telegram_refuses_the_acknowledgements(
        bot_world: BotWorld) -> None:
    # Measured: the answer was committed, then answerCallbackQuery and the edit ran before the
    # resume was spawned; when either failed ("query is too old") the run stayed waiting forever.
    w = bot_world
    question = await _question(w)
    w.telegram.fail_next("answerCallbackQuery", status=400,
                         description="Bad Request: query is too old and response timeout expired "
                         "or query ID is invalid")
    w.telegram.fail_next("editMessageText", status=400,
                         description="Bad Request: message to edit not found")
    w.telegram.press_button(question, text="Approve", user=w.alice)
    final = await w.telegram.wait_for(
        lambda: next((m for m in w.telegram.sent(w.alice_chat.id) if m["text"].startswith("Done")),
                     None), timeout=10)
    assert final["text"] == "Done: Approve (decided by Alice)."
    assert [c.status for c in w.telegram.calls("answerCallbackQuery")] == [400]
    runtime = w.app.bot_data["runtime"]
    [record] = await runtime.runs.recent()
    assert record.status == "completed"


async def test_every_expired_run_ends_even_when_the_notices_cannot_be_sent(
        bot_world: BotWorld) -> None:
    # Measured: expiry flipped every due row first, then sent notices in a loop without a try;
    # the first failed send left the remaining runs waiting_human forever.
    w = bot_world
    w.answer(escalating_agent)
    bob_chat = w.telegram.private_chat(w.bob)
    for chat in (w.alice_chat, bob_chat):
        w.telegram.inject_text(chat, "Please refund order 1234")
        await w.telegram.next_bot_message(chat.id, timeout=10)
    runtime = w.app.bot_data["runtime"]
    await runtime.db.execute_write("UPDATE escalations SET expires_at = '2000-01-01T00:00:00.000000Z'")
    w.telegram.fail_next("sendMessage", status=403, times=10)  # every notice refused
    w.telegram.fail_next("editMessageText", status=403, times=10)
    assert await w.app.bot_data["keel"].escalations.expire() == 2
    statuses = [r.status for r in await runtime.runs.recent()]
    assert statuses == ["cancelled", "cancelled"]
    assert await runtime.db.fetchval(
        "SELECT COUNT(*) FROM escalations WHERE status = 'pending'") == 0
    for record in await runtime.runs.recent():
        ends = [e for e in runtime.traces.read(record.trace_id) if e["type"] == "run_end"]
        assert ends[-1]["status"] == "cancelled"


async def test_after_expiry_the_trace_says_cancelled_and_a_late_press_changes_nothing(
        bot_world: BotWorld) -> None:
    # Measured: the expiry notice cited an id and the question said "Expires in 0.00138889 h";
    # /trace must accept the cited id and say the final status, not waiting_human.
    w = bot_world
    question = await _question(w)
    assert "Expires in 24 h." in question["text"]
    runtime = w.app.bot_data["runtime"]
    await runtime.db.execute_write("UPDATE escalations SET expires_at = '2000-01-01T00:00:00.000000Z'")
    w.telegram.fail_next("editMessageText", status=400, times=2,  # the buttons stay
                         description="Bad Request: message to edit not found")
    assert await w.app.bot_data["keel"].escalations.expire() == 1
    note = await w.telegram.wait_for(
        lambda: next((m for m in w.telegram.sent(w.alice_chat.id) if "Nobody answered" in m["text"]),
                     None), timeout=5)
    cited = re.search(r"/trace ([0-9a-f-]+)", note["text"])
    assert cited is not None, note["text"]
    w.telegram.inject_text(w.alice_chat, f"/trace {cited.group(1)}")
    summary = await w.telegram.wait_for(
        lambda: next((m for m in w.telegram.sent(w.alice_chat.id) if "status:" in m["text"]), None),
        timeout=10)
    assert "status: cancelled — the question to a human expired unanswered" in summary["text"]

    press = w.telegram.press_button(question, text="Approve", user=w.alice)
    await w.telegram.wait_for(lambda: w.telegram.answered(press["callback_query"]["id"]), timeout=5)
    assert "expired" in str(w.telegram.answered(press["callback_query"]["id"]))
    [record] = await runtime.runs.recent()
    assert record.status == "cancelled"
    assert await runtime.db.fetchval("SELECT stage FROM escalations") == "expired"
    assert len(w.agent_requests) == 1  # the question only: nothing resumed
