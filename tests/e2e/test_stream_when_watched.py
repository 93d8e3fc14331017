"""The model streams only where someone watches the answer arrive (issue 15).

A private chat with drafts on sees the answer grow, so its call streams; when nobody would see it
(under load keel sends no drafts or previews), the same call goes without streaming, which the
client parses far more cheaply, and the answer is the same.
"""

from __future__ import annotations

import pytest

import bot.progress
import bot.service
from agents.model.types import usage_from_api
from tests.e2e.conftest import BotWorld
from tests.fakes.anthropic import mid_stream_overload, reply


async def test_a_private_chat_with_drafts_gets_a_streamed_answer(bot_world: BotWorld) -> None:
    world = bot_world
    world.answer(lambda req: reply("Green tea: two minutes at 80 °C."))
    world.telegram.inject_text(world.alice_chat, "how long for green tea?")
    message = await world.telegram.next_bot_message(world.alice_chat.id)
    assert message["text"] == "Green tea: two minutes at 80 °C."
    assert [r.stream for r in world.agent_requests] == [True]


async def test_nobody_watching_means_a_plain_call_with_the_same_answer(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    world = bot_world
    # as under load: more runs than keel shows progress for, so no drafts and no previews
    monkeypatch.setattr(bot.service, "PROGRESS_MAX_ACTIVE_RUNS", 0)
    world.answer(lambda req: reply("Green tea: two minutes at 80 °C."))
    world.telegram.inject_text(world.alice_chat, "how long for green tea?")
    message = await world.telegram.next_bot_message(world.alice_chat.id)
    assert message["text"] == "Green tea: two minutes at 80 °C."
    assert [r.stream for r in world.agent_requests] == [False]
    assert world.telegram.drafts(world.alice_chat.id) == []


async def test_an_answer_that_breaks_off_mid_stream_is_asked_once_more(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    # The API's stream can end in an error event (overloaded_error) after part of the answer
    # arrived. The SDK does not retry that; keel asks once more, and the person gets the whole
    # answer once. The broken call may be billed: it is charged at its worst case.
    monkeypatch.setattr(bot.progress, "DRAFT_EVERY_S", 0.0)  # a draft whenever none is on its way
    monkeypatch.setattr(bot.progress, "FIRST_DRAFT_AFTER_S", 0.0)  # from the first piece on
    world = bot_world
    answer = "Green tea: two minutes at 80 °C. " * 20
    calls = iter([mid_stream_overload(answer, after_events=6, stream_delay=0.02),
                  reply(answer.strip(), stream_delay=0.02)])
    world.answer(lambda req: next(calls))
    world.telegram.inject_text(world.alice_chat, "how long for green tea?")
    message = await world.telegram.next_bot_message(world.alice_chat.id)
    assert message["text"] == answer.strip()
    assert [r.stream for r in world.agent_requests] == [True, True]
    # the draft shows the answer as it grows: the broken start is taken back, not repeated
    drafts = [d["text"] for d in world.telegram.drafts(world.alice_chat.id)]
    assert len(drafts) > 2 and all(answer.startswith(d) for d in drafts), drafts
    runtime = world.app.bot_data["runtime"]
    [(status, cost)] = [tuple(r) for r in await runtime.db.fetchall(
        "SELECT status, cost_usd FROM runs")]
    assert status == "completed"
    second = usage_from_api(world.agent_requests[1].usage)
    assert cost > runtime.prices.cost(str(world.agent_requests[1].model), second) > 0


async def test_an_answer_that_breaks_off_twice_gets_one_clear_reply_and_counts_as_spent(
        bot_world: BotWorld) -> None:
    world = bot_world
    world.answer(lambda req: mid_stream_overload("Green tea: two minutes at 80 °C. " * 20,
                                                 after_events=6))
    world.telegram.inject_text(world.alice_chat, "how long for green tea?")
    message = await world.telegram.next_bot_message(world.alice_chat.id)
    assert "Overloaded" in message["text"] and "Traceback" not in message["text"]
    assert [r.stream for r in world.agent_requests] == [True, True]  # asked once more, no more
    runtime = world.app.bot_data["runtime"]
    [(status,)] = [tuple(r) for r in await runtime.db.fetchall("SELECT status FROM runs")]
    assert status == "failed"
    charged = await runtime.db.fetchval(
        "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_ledger WHERE user_id = ? AND agent = ?",
        (world.alice.id, "assistant"))  # the agent's calls, not the router's
    assert charged > 0 and await runtime.ledger.held() == 0
    assert len([m for m in world.telegram.sent(world.alice_chat.id)
                if not m.get("draft")]) == 1
