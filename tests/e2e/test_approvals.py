"""Approvals before risky tools, end to end: the real bot against both fakes, a payment tool
declared ``needs_approval=True`` (tests/e2e/approval_tools.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agents.config import load_settings
from tests.e2e import approval_tools
from tests.e2e.conftest import BotWorld, bot_env, start_bot, stop_bot
from tests.fakes.anthropic import RecordedRequest, Reply, reply, tool_use

pytestmark = pytest.mark.e2e

# Markup and a code fence inside the arguments: shown as they are, never parsed.
ARGS = {"to": "<b>Bob</b> ```x```", "amount_eur": "180.00"}
CONFIG = """tool_modules = ["tests.e2e.approval_tools"]

[agents.payer]
description = "pays people"
system = "You pay people when asked."
tools = ["send_payment", "get_current_time"]
"""


def payer(req: RecordedRequest) -> Reply:
    if not req.tool_results:
        return reply("Paying.", tool_use("send_payment", ARGS))
    result = req.tool_results[-1]
    if result.get("is_error"):
        return reply(f"Could not pay: {json.loads(result['content'])['error']}")
    return reply(f"Done: {result['content']}")


async def _world(fake_telegram: Any, fake_anthropic: Any, monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path, config: str) -> BotWorld:
    path = tmp_path / "keel.toml"
    path.write_text(config)
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_CONFIG=str(path),
            KEEL_DATA_DIR=str(tmp_path / "data"))
    approval_tools.CALLS.clear()
    w = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    w.route_to = lambda text: "payer"
    w.answer(payer)
    w.app = await start_bot(w.settings)
    return w


@pytest_asyncio.fixture
async def world(fake_telegram: Any, fake_anthropic: Any, monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> AsyncIterator[BotWorld]:
    w = await _world(fake_telegram, fake_anthropic, monkeypatch, tmp_path, CONFIG)
    try:
        yield w
    finally:
        await stop_bot(w.app)
    assert not fake_anthropic.unexpected, [r.note for r in fake_anthropic.unexpected]


async def _asked(w: BotWorld, chat: Any = None, asked_in: Any = None) -> dict:  # type: ignore[type-arg]
    update = w.telegram.inject_text(chat or w.alice_chat, "Please pay Bob 180 EUR")
    question = await w.telegram.wait_for(lambda: next(
        (m for m in w.telegram.sent((asked_in or chat or w.alice_chat).id)
         if "Approval needed" in m["text"]), None), timeout=10)
    runtime = w.app.bot_data["runtime"]
    for _ in range(500):  # the bot stores the question's message id right after Telegram's answer
        if await runtime.db.fetchval("SELECT message_id FROM escalations") is not None:
            break
        await asyncio.sleep(0.01)
    question["update_id"] = update["update_id"]
    return question


async def _final(w: BotWorld, chat: Any, start: str) -> dict:  # type: ignore[type-arg]
    return await w.telegram.wait_for(lambda: next(
        (m for m in w.telegram.sent(chat.id) if m["text"].startswith(start)), None), timeout=10)


async def test_the_tool_does_not_run_until_approved_then_runs_once(world: BotWorld) -> None:
    w = world
    question = await _asked(w)
    assert "send_payment" in question["text"]
    assert '"to": "<b>Bob</b> ```x```"' in question["text"]  # the exact arguments, as text
    assert '"amount_eur": "180.00"' in question["text"]
    keyboard = question["reply_markup"]["inline_keyboard"]
    assert [row[0]["text"] for row in keyboard] == ["Approve", "Deny"]
    runtime = w.app.bot_data["runtime"]
    [record] = await runtime.runs.recent()
    assert record.status == "waiting_human" and approval_tools.CALLS == []

    w.telegram.press_button(question, text="Approve", user=w.alice)
    final = await _final(w, w.alice_chat, "Done:")
    assert final["text"].startswith("Done: paid 180.00 EUR to <b>Bob</b>")  # (an answer's
    assert final["text"].endswith("(receipt 1)")                            # markdown renders)
    # it ran once, under the request's own key: a retried resume finds the stored result
    assert approval_tools.CALLS == [("<b>Bob</b> ```x```", "180.00", f"tg:{question['update_id']}")]
    record = await runtime.runs.get(record.id)
    assert record.status == "completed" and record.steps == 1
    assert await runtime.db.fetchval("SELECT stage FROM escalations") == "done"
    assert await runtime.db.fetchval("SELECT kind FROM escalations") == "approval"


async def test_a_denial_reaches_the_model_as_an_error_result(world: BotWorld) -> None:
    w = world
    question = await _asked(w)
    w.telegram.press_button(question, text="Deny", user=w.alice)
    final = await _final(w, w.alice_chat, "Could not pay")
    assert final["text"] == "Could not pay: denied"
    assert approval_tools.CALLS == []
    [denial] = w.agent_requests[-1].tool_results
    assert denial["is_error"] is True
    body = json.loads(denial["content"])
    assert body["error"] == "denied" and "did not run" in body["message"]
    assert "Alice" in body["message"]


async def test_an_expired_approval_ends_the_run_and_says_so(world: BotWorld) -> None:
    w = world
    await _asked(w)
    runtime = w.app.bot_data["runtime"]
    await runtime.db.execute_write("UPDATE escalations SET expires_at = '2000-01-01T00:00:00.000000Z'")
    assert await w.app.bot_data["keel"].escalations.expire() == 1
    note = await _final(w, w.alice_chat, "⌛ Nobody approved")
    assert "send_payment" in note["text"] and "/trace" in note["text"]
    [record] = await runtime.runs.recent()
    assert record.status == "cancelled"
    assert record.status_detail == "the approval it asked for expired unanswered"
    ends = [e for e in runtime.traces.read(record.trace_id) if e["type"] == "run_end"]
    assert ends[-1]["status"] == "cancelled"
    assert approval_tools.CALLS == [] and len(w.agent_requests) == 1


async def test_a_press_by_someone_who_may_not_approve_changes_nothing(world: BotWorld) -> None:
    w = world
    question = await _asked(w)
    press = w.telegram.press_button(question, text="Approve", user=w.bob)  # a user, not an admin
    await w.telegram.wait_for(lambda: w.telegram.answered(press["callback_query"]["id"]), timeout=5)
    assert "Only an approver" in str(w.telegram.answered(press["callback_query"]["id"]))
    runtime = w.app.bot_data["runtime"]
    assert await runtime.db.fetchval("SELECT stage FROM escalations") == "pending"
    [record] = await runtime.runs.recent()
    assert record.status == "waiting_human" and approval_tools.CALLS == []
    assert len(w.agent_requests) == 1

    w.telegram.press_button(question, text="Approve", user=w.alice)  # the owner may
    await _final(w, w.alice_chat, "Done:")
    assert len(approval_tools.CALLS) == 1


async def test_a_users_approval_is_asked_of_the_owner_and_the_answer_comes_back(
        world: BotWorld) -> None:
    w = world
    bob_chat = w.telegram.private_chat(w.bob)
    question = await _asked(w, chat=bob_chat, asked_in=w.alice_chat)
    notice = await _final(w, bob_chat, "⏸")
    assert "send_payment" in notice["text"]
    assert not any("Approval needed" in m["text"] for m in w.telegram.sent(bob_chat.id))
    w.telegram.press_button(question, text="Approve", user=w.alice)
    final = await _final(w, bob_chat, "Done:")
    assert "receipt 1" in final["text"]


async def test_approvers_and_overrides_come_from_keel_toml(
        fake_telegram: Any, fake_anthropic: Any, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    # Bob is named approver of this agent; get_current_time must be approved here too, and
    # send_payment is waived.
    config = CONFIG + 'approvers = [1002]\napprove = ["get_current_time"]\n' \
        'no_approval = ["send_payment"]\n'

    def agent(req: RecordedRequest) -> Reply:
        if not req.tool_results:
            return reply(tool_use("send_payment", ARGS), tool_use("get_current_time",
                                                                  {"timezone": "UTC"}))
        return reply("Done: " + " / ".join(str(r.get("is_error", False))
                                           for r in req.tool_results))

    w = await _world(fake_telegram, fake_anthropic, monkeypatch, tmp_path, config)
    w.answer(agent)
    try:
        w.telegram.inject_text(w.alice_chat, "pay and tell the time")
        question = await w.telegram.wait_for(lambda: next(
            (m for m in w.telegram.sent(w.alice_chat.id) if "Approval needed" in m["text"]),
            None), timeout=10)
        assert "get_current_time" in question["text"]
        assert len(approval_tools.CALLS) == 1  # waived: it ran without asking
        runtime = w.app.bot_data["runtime"]
        for _ in range(500):
            if await runtime.db.fetchval("SELECT message_id FROM escalations") is not None:
                break
            await asyncio.sleep(0.01)
        w.telegram.press_button(question, text="Approve", user=w.bob)  # a named approver
        final = await _final(w, w.alice_chat, "Done:")
        assert final["text"] == "Done: False / False"
    finally:
        await stop_bot(w.app)
