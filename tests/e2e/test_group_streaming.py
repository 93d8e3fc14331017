"""Streaming in groups (issue 19): in a forum topic, where drafts are not available, a long
answer appears in one preview message edited as it streams, within the group's 20 messages a
minute (edits count), and ends complete through the outbox; previews are cosmetic and are shed
first: a budget that says no, or a 429, stops them and the answer still comes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from telegram import Bot

from bot import progress
from bot.progress import Progress
from tests.e2e.conftest import BotWorld
from tests.fakes.anthropic import reply
from tests.fakes.telegram import FLOOD_METHODS, FakeTelegram, ManualClock

pytestmark = pytest.mark.e2e

PARAGRAPH = ("The quarterly numbers are in and they tell a clear story about where the time "
             "went and what we should change next. ")
LONG_ANSWER = "\n\n".join(f"Part {n}: {PARAGRAPH * 3}" for n in range(1, 31))  # several chunks


def squeeze(text: str) -> str:
    return "".join(text.split())


async def test_a_long_answer_streams_into_a_topic_within_the_group_limit(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "GROUP_FIRST_PREVIEW_S", 0.0)
    monkeypatch.setattr(progress, "GROUP_EDIT_EVERY_S", 0.05)
    w, tg = bot_world, bot_world.telegram
    assert len(LONG_ANSWER) > 4096
    forum = tg.forum("Team")
    topic = tg.create_topic(forum, "Reports")
    # the window never moves on: every send and edit of this test counts against one minute
    tg.enable_flood_control(group=(20, 60.0), clock=ManualClock())
    w.answer(lambda req: reply(LONG_ANSWER, stream_delay=0.01))

    tg.inject_text(forum, "the quarterly report, please", user=w.alice, thread=topic,
                   mention_bot=True)
    await tg.wait_for(lambda: squeeze("".join(
        m["text"] for m in tg.sent(forum.id, thread_id=topic.message_thread_id)))
        == squeeze(LONG_ANSWER), timeout=30)

    in_group = [r for r in tg.requests if r.params.get("chat_id") in (forum.id, str(forum.id))]
    edits = [r for r in in_group if r.method.lower() == "editmessagetext"]
    previews = {r.params["message_id"] for r in edits}
    assert len(edits) >= 2 and len(previews) == 1, [r.method for r in in_group]
    assert all(r.status == 200 for r in edits)
    preview_id = int(previews.pop())
    # the edits grew the preview's text
    lengths = [len(r.params["text"]) for r in edits]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]

    # ends complete: the preview gave way to the whole answer, sent by the outbox in order
    assert any(m["message_id"] == preview_id for m in tg.deleted)
    final = tg.sent(forum.id, thread_id=topic.message_thread_id)
    assert len(final) >= 2 and preview_id not in {m["message_id"] for m in final}

    # within the group's limit, and no 429 on the way
    counted = [r for r in in_group if r.method.lower() in FLOOD_METHODS]
    assert len(counted) <= 20, len(counted)
    assert not [r for r in tg.requests if r.status == 429]


class Budget:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked = 0

    def try_cosmetic(self, chat_id: int) -> bool:
        self.asked += 1
        return self.answer


async def _stream(bot: Bot, chat_id: int, thread_id: int, budget: Budget,
                  pieces: int = 6) -> Progress:
    async with Progress(bot, chat_id, thread_id, private=False, draft_id=1,
                        budget=budget) as p:
        for _ in range(pieces):
            await p("text", PARAGRAPH)
            await p.shown()  # a stream's pieces come apart in time; here, once each is shown
    return p


@pytest.fixture
async def topic_bot(fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(progress, "GROUP_FIRST_PREVIEW_S", 0.0)
    monkeypatch.setattr(progress, "GROUP_EDIT_EVERY_S", 0.0)
    forum = fake_telegram.forum("Team")
    topic = fake_telegram.create_topic(forum, "Ops")
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as bot:
        yield bot, forum.id, topic.message_thread_id


async def test_previews_are_shed_when_the_budget_is_needed_for_answers(
        topic_bot: Any, fake_telegram: FakeTelegram) -> None:
    bot, chat_id, thread_id = topic_bot
    budget = Budget(False)
    await _stream(bot, chat_id, thread_id, budget)
    assert budget.asked >= 1
    assert not fake_telegram.calls("sendMessage") and not fake_telegram.calls("editMessageText")

    budget = Budget(True)
    await _stream(bot, chat_id, thread_id, budget)
    assert len(fake_telegram.calls("sendMessage")) == 1
    assert len(fake_telegram.calls("editMessageText")) >= 2
    assert len(fake_telegram.deleted) == 1  # removed at the end, before the answer is sent


async def test_a_429_on_a_preview_edit_stops_this_runs_previews(
        topic_bot: Any, fake_telegram: FakeTelegram) -> None:
    bot, chat_id, thread_id = topic_bot
    fake_telegram.fail_next("editMessageText", status=429, retry_after=30)
    budget = Budget(True)
    await _stream(bot, chat_id, thread_id, budget, pieces=8)
    edits = fake_telegram.calls("editMessageText")
    assert len(edits) == 1 and edits[0].status == 429  # no edit after the flood answer
    assert budget.asked == 2  # the send, the refused edit; then it stopped asking


async def test_a_slow_draft_never_holds_the_answers_stream(fake_telegram: FakeTelegram) -> None:
    """A private chat's draft goes out beside the stream: with Telegram answering the draft a
    second late, the answer's pieces are taken at once, and the draft has landed before the run
    lets the answer go."""
    chat = fake_telegram.private_chat(fake_telegram.user("Dana"))
    fake_telegram.slow_next("sendMessageDraft", 1.0)
    loop = asyncio.get_running_loop()
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as bot:
        p = Progress(bot, chat.id, None, private=True, draft_id=7)
        async with p:
            await p("text", PARAGRAPH)
            await asyncio.sleep(progress.FIRST_DRAFT_AFTER_S + 0.1)  # the first draft is due
            started = loop.time()
            for _ in range(20):
                await p("text", PARAGRAPH)
            taken = loop.time() - started
        finished = loop.time() - started
    assert taken < 0.5, taken  # before: the first piece waited the whole second
    drafts = fake_telegram.calls("sendMessageDraft")
    assert len(drafts) == 1 and finished >= 0.5  # the one draft due, answered before the exit


async def test_an_answer_whole_at_once_goes_out_without_typing_or_a_draft(
        fake_telegram: FakeTelegram) -> None:
    """Neither the typing action nor a draft competes with a reply that is ready at once
    (issue 15): both wait a moment, and the reply is the first thing the person sees."""
    chat = fake_telegram.private_chat(fake_telegram.user("Dana"))
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as bot:
        async with Progress(bot, chat.id, None, private=True, draft_id=7) as p:
            for _ in range(20):
                await p("text", PARAGRAPH)
        await asyncio.sleep(progress.FIRST_DRAFT_AFTER_S + 0.1)  # nothing left to fire later
    assert fake_telegram.calls("sendMessageDraft") == []
    assert fake_telegram.chat_actions(chat.id) == []


async def test_a_run_that_goes_quiet_still_shows_typing_and_its_first_draft(
        fake_telegram: FakeTelegram) -> None:
    """The first draft falls due while no new text comes (a tool at work after the model's first
    words): it is shown on time, without waiting for another piece."""
    chat = fake_telegram.private_chat(fake_telegram.user("Dana"))
    loop = asyncio.get_running_loop()
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as bot:
        async with Progress(bot, chat.id, None, private=True, draft_id=7) as p:
            started = loop.time()
            await p("text", "Let me look that up.")
            await p("tool", "web_search")
            await fake_telegram.wait_for(lambda: fake_telegram.drafts(chat.id), timeout=5)
            shown = loop.time() - started
    assert progress.FIRST_DRAFT_AFTER_S <= shown < progress.FIRST_DRAFT_AFTER_S + 1.0
    assert [d["text"] for d in fake_telegram.drafts(chat.id)] == ["Let me look that up."]
    assert [a["action"] for a in fake_telegram.chat_actions(chat.id)] == ["typing"]
