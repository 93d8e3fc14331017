"""Delivery that loses nothing, progress, and the smaller commands, end to end."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import BotWorld
from tests.fakes.anthropic import RecordedRequest, Reply, reply, tool_use

pytestmark = pytest.mark.e2e


async def test_a_rejected_format_is_resent_as_plain_text(bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(lambda req: reply("**Bold** answer with `code`."))
    w.telegram.fail_next("sendMessage", status=400,
                         description="Bad Request: can't parse entities: Unsupported entity")
    w.telegram.inject_text(w.alice_chat, "format me")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert msg["text"] == "Bold answer with code."
    assert not msg.get("entities")
    attempts = w.telegram.calls("sendMessage")
    assert [a.status for a in attempts] == [400, 200]


async def test_flood_control_is_waited_out_and_the_answer_arrives_once(bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(lambda req: reply("patient answer"))
    w.telegram.fail_next("sendMessage", status=429, retry_after=1)
    w.telegram.inject_text(w.alice_chat, "hello")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=15)
    assert msg["text"] == "patient answer"
    assert [a.status for a in w.telegram.calls("sendMessage")] == [429, 200]
    assert len(w.telegram.sent(w.alice_chat.id)) == 1


async def test_progress_shows_typing_and_a_draft_of_the_tool_in_use(bot_world: BotWorld) -> None:
    w = bot_world

    async def answer(req: RecordedRequest) -> Reply:
        await asyncio.sleep(0.4)  # a model that takes its time, as real ones do
        if not req.tool_results:
            return reply(tool_use("get_current_time", {"timezone": "UTC"}))
        return reply("It is time.")

    w.answer(answer)
    w.telegram.inject_text(w.alice_chat, "time?")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert any(a.get("action") == "typing" for a in w.telegram.chat_actions(w.alice_chat.id))
    drafts = w.telegram.drafts(w.alice_chat.id)
    assert any("get_current_time" in (d.get("text") or "") for d in drafts), drafts


async def test_unknown_button_data_gets_a_clear_answer(bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(lambda req: reply("plain"))
    w.telegram.inject_text(w.alice_chat, "hi")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    # a stale keyboard from an older message: craft a button the bot never made
    msg["reply_markup"] = {"inline_keyboard": [[{"text": "Old", "callback_data": "zz:nothing"}]]}
    w.telegram.chats[w.alice_chat.id].messages[msg["message_id"]]["reply_markup"] = msg["reply_markup"]
    press = w.telegram.press_button(msg, text="Old", user=w.alice)
    answer = await w.telegram.wait_for(lambda: w.telegram.answered(press["callback_query"]["id"]),
                                       timeout=5)
    assert "no longer active" in answer["text"]


async def test_new_forgets_history_and_trace_shows_a_run(bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(lambda req: reply(f"[{len(req.messages)}]"))
    w.telegram.inject_text(w.alice_chat, "one")
    assert (await w.telegram.next_bot_message(w.alice_chat.id, timeout=10))["text"] == "[1]"
    w.telegram.inject_text(w.alice_chat, "two")
    assert (await w.telegram.next_bot_message(w.alice_chat.id, timeout=10))["text"] == "[3]"
    w.telegram.inject_text(w.alice_chat, "/new")
    assert "Fresh start" in (await w.telegram.next_bot_message(w.alice_chat.id, timeout=10))["text"]
    w.telegram.inject_text(w.alice_chat, "three")
    assert (await w.telegram.next_bot_message(w.alice_chat.id, timeout=10))["text"] == "[1]"

    runtime = w.app.bot_data["runtime"]
    [latest, *_] = await runtime.runs.recent()
    w.telegram.inject_text(w.alice_chat, f"/trace {latest.trace_id[:8]}")
    summary = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "status: completed" in summary["text"] and latest.trace_id in summary["text"]
    await w.telegram.wait_for(lambda: w.telegram.documents(w.alice_chat.id), timeout=10)
    [document] = w.telegram.documents(w.alice_chat.id)
    assert document["filename"] == f"{latest.trace_id}.jsonl"
    assert b'"type": "run_end"' in document["data"]
