"""Progress from the first moment, and /cancel at any stage (issue 20): typing shows while the
router works; /cancel during routing stops the request before any agent call; a plain message
while a question is pending in a private chat asks whether it is the answer; in a group the
question names who asked."""

from __future__ import annotations

import asyncio
import json

import pytest

from agents.ids import new_id
from tests.e2e.conftest import BotWorld, is_router
from tests.fakes.anthropic import RecordedRequest, Reply, reply, tool_use

pytestmark = pytest.mark.e2e

QUESTION = {"reason": "Which colour for the logo?", "context": "Two drafts are ready.",
            "options": ["Blue", "Green"]}


def asking_agent(req: RecordedRequest) -> Reply:
    results = req.tool_results
    if not results:
        return reply("Let me ask.", tool_use("escalate_to_human", QUESTION))
    return reply(f"Going with {json.loads(results[0]['content'])['answer']}.")


async def test_typing_shows_while_routing_and_cancel_stops_the_router(
        bot_world: BotWorld) -> None:
    w = bot_world
    routing, release = asyncio.Event(), asyncio.Event()
    answer_agent = w.anthropic.responder

    async def slow_router(req: RecordedRequest) -> Reply:
        if is_router(req):
            routing.set()
            await release.wait()  # the router "thinks" until the test lets it go
        return answer_agent(req)  # type: ignore[misc,return-value]

    w.anthropic.responder = slow_router
    try:
        w.telegram.inject_text(w.alice_chat, "What is the capital of Peru?")
        await asyncio.wait_for(routing.wait(), 10)
        # keel is visibly at work while the router decides
        await w.telegram.wait_for(lambda: w.telegram.chat_actions(w.alice_chat.id), timeout=5)
        assert w.telegram.chat_actions(w.alice_chat.id)[0]["action"] == "typing"

        w.telegram.inject_text(w.alice_chat, "/cancel")
        ack = await w.telegram.next_bot_message(w.alice_chat.id, timeout=5)
        assert ack["text"] != "Nothing is running here.", ack["text"]
        done = await w.telegram.next_bot_message(w.alice_chat.id, timeout=5)
        assert "Cancelled before the agent started" in done["text"], done["text"]
    finally:
        release.set()
    # no agent answered, and nothing else was said
    assert w.agent_requests == []
    await asyncio.sleep(0)
    texts = [m["text"] for m in w.telegram.sent(w.alice_chat.id)]
    assert len(texts) == 2, texts


async def test_a_cancel_that_arrives_before_the_run_begins_ends_it_cancelled(
        bot_world: BotWorld) -> None:
    """The window between routing and the run's first step: the run still ends cancelled, and
    makes no model call."""
    runtime = bot_world.app.bot_data["runtime"]
    from agents.runtime import RunRequest

    run_id = new_id()
    assert runtime.cancel(run_id) is False  # nothing of that id runs here
    assert runtime.cancel(run_id, before_start=True) is True
    task = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    result = await runtime.run(RunRequest(agent="assistant", messages=[task], new_from=0,
                                          kind="cli"), run_id=run_id)
    assert result.status == "cancelled" and result.model_calls == 0
    assert bot_world.agent_requests == []
    runtime.forget_cancel(run_id)


async def test_a_plain_message_while_a_question_is_pending_asks_whether_it_is_the_answer(
        bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(asking_agent)
    w.telegram.inject_text(w.alice_chat, "Make me a logo")
    question = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert "Which colour" in question["text"]
    calls = len(w.agent_requests)

    # not a reply: keel does not guess, it asks
    w.telegram.inject_text(w.alice_chat, "Green, please")
    prompt = await w.telegram.next_bot_message(w.alice_chat.id, timeout=5)
    assert "Is your message the answer" in prompt["text"], prompt["text"]
    assert "Which colour for the logo?" in prompt["text"]
    assert len(w.agent_requests) == calls  # no new run was started
    press = w.telegram.press_button(prompt, text="Yes, that is my answer", user=w.alice)
    final = await w.telegram.wait_for(
        lambda: next((m for m in w.telegram.sent(w.alice_chat.id)
                      if m["text"].startswith("Going with")), None), timeout=10)
    assert final["text"] == "Going with Green, please."
    assert w.telegram.answered(press["callback_query"]["id"])
    runtime = w.app.bot_data["runtime"]
    stages = await runtime.db.fetchall("SELECT stage FROM escalations")
    assert [r["stage"] for r in stages] == ["done"]


async def test_no_runs_the_held_message_as_a_new_request_and_keeps_the_question(
        bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(asking_agent)
    w.telegram.inject_text(w.alice_chat, "Make me a logo")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    w.answer(lambda req: reply(f"echo: {req.last_user_text}"))
    w.telegram.inject_text(w.alice_chat, "What time is it?")
    prompt = await w.telegram.next_bot_message(w.alice_chat.id, timeout=5)
    w.telegram.press_button(prompt, text="No, it is a new request", user=w.alice)
    answer = await w.telegram.wait_for(
        lambda: next((m for m in w.telegram.sent(w.alice_chat.id)
                      if m["text"].startswith("echo:")), None), timeout=10)
    assert answer["text"] == "echo: What time is it?"
    runtime = w.app.bot_data["runtime"]
    stages = await runtime.db.fetchall("SELECT stage FROM escalations")
    assert [r["stage"] for r in stages] == ["pending"]


async def test_in_a_group_the_question_names_who_asked(bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(asking_agent)
    group = w.telegram.group("Design")
    w.telegram.inject_text(group, "Make me a logo", user=w.bob, mention_bot=True)
    question = await w.telegram.next_bot_message(group.id, timeout=10)
    assert "Asked by Bob" in question["text"], question["text"]
    # a mention Telegram notifies Bob of: a link to his user id (shown as a text_mention)
    mentions = [e.get("url") or f"tg://user?id={e['user']['id']}"
                for e in question.get("entities", []) if e["type"] in ("text_link", "text_mention")]
    assert f"tg://user?id={w.bob.id}" in mentions, question.get("entities")
