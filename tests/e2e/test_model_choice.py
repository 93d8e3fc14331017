"""/model (issue 19): the owner picks a priced model for one chat with a button; runs in that
chat use it (the request the fake API received, and the trace), other chats keep the agent's
own; a user cannot choose; a model without a price is refused, typed or forged."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import BotWorld

pytestmark = pytest.mark.e2e

DEFAULT_MODEL = "claude-sonnet-4-6"  # KEEL_EXECUTOR_MODEL's default; the assistant has none


async def _answered(world: BotWorld, chat_id: int, text: str, user: object = None) -> str:
    before = len(world.agent_requests)
    world.telegram.inject_text(world.telegram.chats[chat_id], text, user=user)
    await world.telegram.next_bot_message(chat_id)
    assert len(world.agent_requests) == before + 1
    return str(world.agent_requests[-1].body["model"])


async def test_model_is_chosen_per_chat_by_the_owner_and_only_priced(bot_world: BotWorld) -> None:
    world, tg = bot_world, bot_world.telegram
    alice_chat = world.alice_chat
    bob_chat = tg.private_chat(world.bob)

    tg.inject_text(alice_chat, "/model")
    menu = await tg.next_bot_message(alice_chat.id)
    assert f"{DEFAULT_MODEL} (assistant's own)" in menu["text"]
    press = tg.press_button(menu, text="claude-haiku-4-5")
    await tg.wait_for(lambda: tg.answered(press["callback_query"]["id"]))
    edited = await tg.wait_for(lambda: "now uses" in tg.sent(alice_chat.id)[-1]["text"]
                               and tg.sent(alice_chat.id)[-1])
    assert "claude-haiku-4-5" in edited["text"] and "reply_markup" not in edited

    db = world.app.bot_data["runtime"].db
    reads: list[str] = []
    fetchall = db.fetchall  # (fetchone and fetchval read through it)

    async def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(sql)
        return await fetchall(sql, *args, **kwargs)

    db.fetchall = counted
    assert await _answered(world, alice_chat.id, "hello") == "claude-haiku-4-5"
    db.fetchall = fetchall
    # the chat's row (its agent and its model) is read once a turn (issue 15: twice before)
    assert sum("FROM conversations" in sql for sql in reads) == 1, reads
    assert await _answered(world, bob_chat.id, "hello") == DEFAULT_MODEL  # one chat only

    # the choice is in the trace of every run in that chat
    runtime = world.app.bot_data["runtime"]
    records = await runtime.runs.visible(user_id=world.alice.id, chat_id=alice_chat.id, limit=1)
    start = next(e for e in runtime.traces.read(records[0].trace_id) if e["type"] == "run_start")
    assert (start["model"], start["model_source"]) == ("claude-haiku-4-5", "chat")

    # a user may look but not choose, typed or pressed
    tg.inject_text(bob_chat, "/model claude-haiku-4-5")
    refusal = await tg.next_bot_message(bob_chat.id)
    assert "Only the owner or an admin" in refusal["text"]
    tg.inject_text(bob_chat, "/model")
    shown = await tg.next_bot_message(bob_chat.id)
    assert "reply_markup" not in shown and DEFAULT_MODEL in shown["text"]
    tg.inject_text(alice_chat, "/model")
    menu = await tg.next_bot_message(alice_chat.id)
    by_bob = tg.press_button(menu, text="claude-opus-4-7", user=world.bob)
    await tg.wait_for(lambda: tg.answered(by_bob["callback_query"]["id"]))
    assert any("Only the owner or an admin" in (a.get("text") or "")
               for a in tg.callback_answers)

    # an unpriced model is refused, typed or sent as forged button data
    tg.inject_text(alice_chat, "/model gpt-9-turbo")
    refused = await tg.next_bot_message(alice_chat.id)
    assert "gpt-9-turbo has no price" in refused["text"] and "not changed" in refused["text"]
    # a modified client can send any callback data: add such a button to the live message
    live = tg.chats[alice_chat.id].messages[menu["message_id"]]
    live["reply_markup"]["inline_keyboard"].append(
        [{"text": "forged", "callback_data": "mdl:gpt-9-turbo"}])
    forged = tg.press_button(menu, text="forged")
    await tg.wait_for(lambda: tg.answered(forged["callback_query"]["id"]))
    assert "has no price" in tg.sent(alice_chat.id)[-1]["text"]

    assert await _answered(world, alice_chat.id, "again") == "claude-haiku-4-5"
    assert await _answered(world, bob_chat.id, "again") == DEFAULT_MODEL

    tg.inject_text(alice_chat, "/model default")
    await tg.next_bot_message(alice_chat.id)
    assert await _answered(world, alice_chat.id, "back") == DEFAULT_MODEL
