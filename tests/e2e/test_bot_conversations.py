"""Conversations in Telegram, end to end: real python-telegram-bot and anthropic clients, both fakes."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import API_KEY, BotWorld, is_router
from tests.fakes.anthropic import RecordedRequest, Reply, reply

pytestmark = pytest.mark.e2e

LONG_FACTS = " ".join(f"Fact {i}: the sky over city {i} was clear." for i in range(200))


async def test_private_chat_multi_turn_is_routed_and_reads_the_cache(bot_world: BotWorld) -> None:
    w = bot_world
    w.route_to = lambda text: "researcher" if "research" in text else "assistant"
    w.answer(lambda req: reply(f"answer to: {req.last_user_text}"))
    for text in ("hello there", "tell me more", "and one more thing"):
        w.telegram.inject_text(w.alice_chat, text)
        msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
        assert msg["text"] == f"answer to: {text}"
    reqs = w.agent_requests
    assert len(reqs) == 3
    # the assistant's system prompt and tools sit before the first breakpoint; history grows
    assert all("keel's assistant" in r.body["system"][0]["text"] for r in reqs)
    assert [len(r.messages) for r in reqs] == [1, 3, 5]
    cache_reads = [r.usage["cache_read_input_tokens"] for r in reqs]
    assert cache_reads[0] == 0 and all(c > 0 for c in cache_reads[1:]), cache_reads
    assert all(r.api_key == API_KEY for r in w.anthropic.requests)


async def test_a_forum_topic_is_its_own_conversation(bot_world: BotWorld) -> None:
    w = bot_world
    forum = w.telegram.forum("Team")
    topic = w.telegram.create_topic(forum, "Research")
    w.route_to = lambda text: "researcher"
    w.answer(lambda req: reply(f"[{len(req.messages)}] {req.last_user_text}"))
    w.telegram.inject_text(forum, "find papers", user=w.alice, thread=topic, mention_bot=True)
    first = await w.telegram.next_bot_message(forum.id, thread_id=topic.message_thread_id, timeout=10)
    assert first["text"].startswith("[1] find papers")
    assert first["message_thread_id"] == topic.message_thread_id
    w.telegram.inject_text(w.alice_chat, "private hello")
    private = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert private["text"] == "[1] private hello"  # no history shared with the topic
    w.telegram.inject_reply(first, "and the second one?", user=w.alice)
    second = await w.telegram.next_bot_message(forum.id, thread_id=topic.message_thread_id, timeout=10)
    assert second["text"].startswith("[3] and the second one?")
    researcher = [r for r in w.agent_requests if "researcher" in r.body["system"][0]["text"]]
    assert researcher[-1].usage["cache_read_input_tokens"] > 0


async def test_an_unknown_user_gets_their_id_and_costs_nothing(bot_world: BotWorld) -> None:
    w = bot_world
    chat = w.telegram.private_chat(w.mallory)
    w.telegram.inject_text(chat, "let me in")
    msg = await w.telegram.next_bot_message(chat.id, timeout=10)
    assert str(w.mallory.id) in msg["text"] and "KEEL_" not in msg["text"]  # names no setting
    assert w.anthropic.message_requests == []
    # Stored before Telegram is told it arrived (every update is), then finished: no run, no
    # history, nothing left for recovery.
    db = w.app.bot_data["runtime"].db
    for _ in range(500):  # the update is settled right after its handler returns
        if await db.fetchval("SELECT COUNT(*) FROM inbox WHERE status NOT IN ('done', 'ignored')"
                             ) == 0:
            break
        await asyncio.sleep(0.01)
    assert await db.fetchval("SELECT COUNT(*) FROM inbox WHERE status NOT IN ('done', 'ignored')"
                             ) == 0
    assert await db.fetchval("SELECT COUNT(*) FROM messages") == 0


async def test_a_long_markdown_answer_arrives_in_accepted_chunks(bot_world: BotWorld) -> None:
    w = bot_world
    code = "\n".join(f"    value_{i} = compute({i}) * 2  # step {i}" for i in range(100))
    parts = [f"## Part {p}\n\nSome **bold** text, `inline code`, and a [link](https://example.com/{p}).\n\n"
             f"```python\ndef part_{p}():\n{code}\n```\n" for p in range(3)]  # ~13k characters: under max_tokens, over three Telegram messages
    w.answer(lambda req: reply("\n".join(parts)))
    w.telegram.inject_text(w.alice_chat, "show me the code")
    def last_part_arrived() -> bool:
        joined = "".join(m["text"] for m in w.telegram.sent(w.alice_chat.id))
        return joined.count("value_99 = compute(99)") == 3

    await w.telegram.wait_for(last_part_arrived, timeout=15)
    sent = w.telegram.sent(w.alice_chat.id)
    assert len(sent) >= 3
    assert all(len(m["text"]) <= 4096 for m in sent)
    failed = [r for r in w.telegram.calls("sendMessage") if r.status != 200]
    assert failed == []
    assert any(e["type"] == "pre" for m in sent for e in m.get("entities", []))
    joined = "".join(m["text"] for m in sent)
    assert joined.count("value_99 = compute(99)") == 3
    assert "…" not in joined


async def test_a_slow_chat_does_not_delay_another(bot_world: BotWorld) -> None:
    w = bot_world
    bob_chat = w.telegram.private_chat(w.bob)
    release = asyncio.Event()

    async def answer(req: RecordedRequest) -> Reply:
        if "slow" in req.last_user_text:
            await release.wait()
        return reply(f"done: {req.last_user_text}")

    w.answer(answer)  # type: ignore[arg-type]
    w.telegram.inject_text(w.alice_chat, "slow question")
    await w.telegram.wait_for(lambda: any(not is_router(r) for r in w.anthropic.requests), timeout=10)
    w.telegram.inject_text(bob_chat, "quick question")
    quick = await w.telegram.next_bot_message(bob_chat.id, timeout=10)
    assert quick["text"] == "done: quick question"
    assert w.telegram.sent(w.alice_chat.id) == []  # alice is still waiting on her slow model
    release.set()
    slow = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert slow["text"] == "done: slow question"


async def test_bad_input_gets_a_clear_answer(bot_world: BotWorld) -> None:
    w = bot_world
    w.telegram.inject_sticker(w.alice_chat)
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "stickers" in msg["text"]
    w.telegram.inject_voice(w.alice_chat)
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "voice notes" in msg["text"]
    w.answer(lambda req: reply("ok"))
    update = w.telegram.inject_text(w.alice_chat, "original")
    original = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert original["text"] == "ok"
    w.telegram.inject_edit(update["message"], "edited")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "edits are not re-read" in msg["text"]
    assert len(w.agent_requests) == 1  # neither the media nor the edit reached the model


async def test_commands_pin_an_agent_and_report_cost(bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(lambda req: reply("pinned answer"))
    w.telegram.inject_text(w.alice_chat, "/agent researcher")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "Pinned `researcher`" in msg["text"] or "Pinned researcher" in msg["text"]
    w.telegram.inject_text(w.alice_chat, "question")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert not any(is_router(r) for r in w.anthropic.requests)  # pinned: no router call
    w.telegram.inject_text(w.alice_chat, "/cost")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "You: $" in msg["text"]
    # the chat's own conversation: its prompt cache, by the session's counters (one cold turn:
    # everything written, nothing read yet)
    agent = [r for r in w.anthropic.message_requests if r.usage and not is_router(r)]
    written = sum(r.usage["cache_creation_input_tokens"] for r in agent)
    assert written > 0
    total = written + sum(r.usage["input_tokens"] for r in agent)
    line = (f"Prompt cache, this chat with researcher: 0% of {total:,} input tokens read from "
            f"it ({written:,} written")
    assert line in msg["text"], msg["text"]
    w.telegram.inject_text(w.alice_chat, "/runs")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "researcher" in msg["text"] and "completed" in msg["text"]
    assert w.telegram.commands()  # setMyCommands registered at start-up
