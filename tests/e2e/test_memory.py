"""Semantic memory in the bot (issue 18): a fact remembered in one session is recalled after
compaction and after /new, only by its person; /memory deletes it with a button that counts only
from that person, on its own message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agents.config import load_settings
from tests.e2e.conftest import BotWorld, bot_env, is_compactor, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

CONFIG = """
[agents.assistant]
description = "General help that remembers the person"
system = "You help. Recall what you know about the person when it matters."
tools = ["remember", "recall", "forget"]
"""
FILLER = "Tell me more about soil, compost and the watering of tomato beds in a dry summer. " * 25


def agent(req: RecordedRequest) -> Reply:
    """Remembers on 'remember ...', recalls on 'what do you know', echoes tool results."""
    if req.tool_results:
        return reply("Done: " + str(req.tool_results[-1]["content"]))
    text = req.last_user_text
    if text.startswith("remember "):
        return reply(tool_use("remember", {"fact": text.removeprefix("remember ")}))
    if text.startswith("what do you know"):
        return reply(tool_use("recall", {"query": "what drink do I like, tea or coffee"}))
    return reply("Noted.")


@pytest_asyncio.fixture
async def world(fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[BotWorld]:
    path = tmp_path / "keel.toml"
    path.write_text(CONFIG)
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_CONFIG=str(path),
            KEEL_DATA_DIR=str(tmp_path / "data"), KEEL_COMPACT_AT_TOKENS="1000")
    w = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    w.answer(agent)
    w.app = await start_bot(w.settings)
    try:
        yield w
    finally:
        await stop_bot(w.app)
    assert not fake_anthropic.unexpected, [r.note for r in fake_anthropic.unexpected]


async def _say(w: BotWorld, chat: Any, text: str) -> str:
    w.telegram.inject_text(chat, text)
    message = await w.telegram.next_bot_message(chat.id, timeout=15)
    return str(message.get("text", ""))


def _recalled(answer: str) -> list[str]:
    return [f["fact"] for f in json.loads(answer.removeprefix("Done: "))["facts"]]


async def test_a_fact_survives_compaction_and_new_and_only_its_person_sees_it(
        world: BotWorld) -> None:
    w = world
    runtime = w.app.bot_data["runtime"]
    stored = json.loads((await _say(w, w.alice_chat, "remember I drink green tea, no sugar"))
                        .removeprefix("Done: "))
    assert stored["stored"] is True

    # the fact records where it came from: the run and its trace
    [fact] = await runtime.patterns.memory.of_person(w.alice.id)
    [run] = [r for r in await runtime.runs.recent() if r.agent == "assistant"]
    assert (fact.run_id, fact.trace_id, fact.chat_id) == (run.id, run.trace_id, None)

    # long turns until the history is compacted: the fact is not in the history, so it stays
    for _ in range(4):
        await _say(w, w.alice_chat, FILLER)
    await w.telegram.wait_for(lambda: any(is_compactor(r) for r in
                                          w.anthropic.message_requests), timeout=15)
    assert _recalled(await _say(w, w.alice_chat, "what do you know about me?")) == [
        "I drink green tea, no sugar"]
    assert "Summary of the earlier conversation" in str(w.agent_requests[-2].messages[0])

    assert "Fresh start" in await _say(w, w.alice_chat, "/new")
    assert _recalled(await _say(w, w.alice_chat, "what do you know about me?")) == [
        "I drink green tea, no sugar"]
    first_after_new = w.agent_requests[-2]
    assert "green tea" not in json.dumps(first_after_new.messages)  # not carried in history

    # another person never sees it, not even by asking the same way
    bob_chat = w.telegram.private_chat(w.bob)
    assert _recalled(await _say(w, bob_chat, "what do you know about me?")) == []
    await _say(w, bob_chat, "remember I drink black coffee")
    assert _recalled(await _say(w, w.alice_chat, "what do you know about me?")) == [
        "I drink green tea, no sugar"]


async def test_memory_lists_facts_and_a_button_deletes_one_only_for_its_person(
        world: BotWorld) -> None:
    w = world
    runtime = w.app.bot_data["runtime"]
    await _say(w, w.alice_chat, "remember I drink green tea")
    await _say(w, w.alice_chat, "remember My daughter is called Ana")

    w.telegram.inject_text(w.alice_chat, "/memory")
    listing = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "green tea" in listing["text"] and "Ana" in listing["text"]
    buttons = [b for row in listing["reply_markup"]["inline_keyboard"] for b in row]
    assert [b["text"] for b in buttons] == ["🗑 1", "🗑 2"]
    for _ in range(500):  # the listing's message id is stored right after Telegram's answer
        if await runtime.db.fetchval("SELECT count(*) FROM memory_buttons "
                                     "WHERE message_id IS NOT NULL") == 2:
            break
        await asyncio.sleep(0.01)
    # Bob presses Alice's button: nothing is deleted
    press = w.telegram.press_button(listing, text="🗑 1", user=w.bob)
    answer = await w.telegram.wait_for(lambda: w.telegram.answered(
        press["callback_query"]["id"]), timeout=10)
    assert "Only the person" in answer["text"]
    assert len(await runtime.patterns.memory.of_person(w.alice.id)) == 2

    press = w.telegram.press_button(listing, text="🗑 1", user=w.alice)
    answer = await w.telegram.wait_for(lambda: w.telegram.answered(
        press["callback_query"]["id"]), timeout=10)
    assert answer["text"] == "Deleted."
    assert [f.fact for f in await runtime.patterns.memory.of_person(w.alice.id)] == [
        "My daughter is called Ana"]
    edited = await w.telegram.wait_for(lambda: next(
        (m for m in w.telegram.sent(w.alice_chat.id) if m["message_id"] ==
         listing["message_id"] and m["text"].startswith("Deleted")), None), timeout=10)
    assert "green tea" in edited["text"] and "reply_markup" not in edited
    assert _recalled(await _say(w, w.alice_chat, "what do you know about me?")) == [
        "My daughter is called Ana"]
