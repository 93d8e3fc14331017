"""The model streams only where someone watches the answer arrive (issue 15).

A private chat with drafts on sees the answer grow, so its call streams; when nobody would see it
(under load keel sends no drafts or previews), the same call goes without streaming, which the
client parses far more cheaply, and the answer is the same.
"""

from __future__ import annotations

import pytest

import bot.service
from tests.e2e.conftest import BotWorld
from tests.fakes.anthropic import reply


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
