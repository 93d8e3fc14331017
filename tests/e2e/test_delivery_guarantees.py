"""Nothing twice, never stuck: each defect measured in issue 11, attacked end to end with the real
python-telegram-bot and anthropic clients against the fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agents.config import load_settings
from agents.tools import ToolArgs, ToolContext, tool
from tests.e2e.conftest import BotWorld, bot_env, is_router, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

LONG = "\n\n".join(f"Paragraph {i}: " + "words " * 600 for i in range(4))  # 4 chunks


async def _on_aiohttp(w: BotWorld) -> list[str]:
    """A first exchange, after which the bot's Telegram calls go over aiohttp (they start on
    httpx: bot/telegram_http.py); returns the texts sent so far."""
    w.answer(lambda req: reply("warm"))
    w.telegram.inject_text(w.alice_chat, "first")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    calls, updates = w.app.bot_data["telegram_requests"]
    for _ in range(500):
        if calls.upgraded and updates.upgraded:
            return ["warm"]
        await asyncio.sleep(0.01)
    raise AssertionError("the bot's Telegram calls never moved to aiohttp")


@pytest.mark.parametrize("first", [True, False], ids=["first-message", "on-aiohttp"])
async def test_a_late_answer_from_telegram_does_not_duplicate_the_reply(
        bot_world: BotWorld, first: bool) -> None:
    # Measured: Telegram accepting sendMessage but answering after 6 s (past PTB's 5 s read
    # timeout) got every reply delivered 5 times, then "Something went wrong".
    w = bot_world
    before = [] if first else await _on_aiohttp(w)
    w.answer(lambda req: reply("only once, please"))
    w.telegram.slow_next("sendMessage", 6.0)
    w.telegram.inject_text(w.alice_chat, "hello")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=15)
    runtime = w.app.bot_data["runtime"]
    for _ in range(1000):  # until the late answer came back and the outbox row is finished
        if await runtime.db.fetchval("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 0:
            break
        await asyncio.sleep(0.01)
    texts = [m["text"] for m in w.telegram.sent(w.alice_chat.id)]
    assert texts == [*before, "only once, please"]


@pytest.mark.parametrize("first", [True, False], ids=["first-message", "on-aiohttp"])
async def test_an_answer_lost_after_telegram_sent_the_message_is_not_resent(
        bot_world: BotWorld, first: bool) -> None:
    # The request reached Telegram, the message exists, the answer never comes back: resending
    # would show it twice. keel records the chunk as unconfirmed and goes on.
    w = bot_world
    before = [] if first else await _on_aiohttp(w)
    w.answer(lambda req: reply("ambiguous but single"))
    w.telegram.fail_next("sendMessage", drop_connection=True, after_processing=True)
    w.telegram.inject_text(w.alice_chat, "hello")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    runtime = w.app.bot_data["runtime"]
    for _ in range(1000):
        row = await runtime.db.fetchone("SELECT status, unconfirmed_chunks FROM outbox"
                                        " WHERE run_id IS NOT NULL ORDER BY id DESC LIMIT 1")
        if row is not None and row["status"] == "sent":
            break
        await asyncio.sleep(0.01)
    assert row is not None and (row["status"], row["unconfirmed_chunks"]) == ("sent", 1)
    assert [m["text"] for m in w.telegram.sent(w.alice_chat.id)] == [*before,
                                                                     "ambiguous but single"]
    assert len(w.telegram.calls("sendMessage")) == len(before) + 1


async def test_an_error_answer_is_retried_and_delivered_once(bot_world: BotWorld) -> None:
    # A 502 is Telegram saying it did not do it: safe to send again.
    w = bot_world
    w.answer(lambda req: reply("second time lucky"))
    w.telegram.fail_next("sendMessage", status=502)
    w.telegram.inject_text(w.alice_chat, "hello")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=15)
    assert msg["text"] == "second time lucky"
    assert [c.status for c in w.telegram.calls("sendMessage")] == [502, 200]


async def test_one_chats_flood_wait_does_not_stall_other_chats(bot_world: BotWorld) -> None:
    # Measured: AIORateLimiter paused every request for one chat's retry_after.
    w = bot_world
    w.answer(lambda req: reply(f"answer to {req.last_user_text}"))
    bob_chat = w.telegram.private_chat(w.bob)
    w.telegram.fail_next("sendMessage", status=429, retry_after=30)
    w.telegram.inject_text(w.alice_chat, "alice first")
    await w.telegram.wait_for(lambda: any(c.status == 429 for c in w.telegram.calls("sendMessage")),
                              timeout=10)
    w.telegram.inject_text(bob_chat, "bob second")
    msg = await w.telegram.next_bot_message(bob_chat.id, timeout=10)  # not 30 s later
    assert msg["text"] == "answer to bob second"
    assert w.telegram.sent(w.alice_chat.id) == []  # alice's chat is still waiting its turn


async def test_multi_chunk_answers_resume_after_a_flood_wait_without_resending(
        bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(lambda req: reply(LONG))
    w.telegram.inject_text(w.alice_chat, "long please")
    first = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert first["text"].startswith("Paragraph 0")
    w.telegram.fail_next("sendMessage", status=429, retry_after=1)
    texts = []
    for _ in range(3):
        texts.append((await w.telegram.next_bot_message(w.alice_chat.id, timeout=15))["text"])
    sent = [m["text"][:11] for m in w.telegram.sent(w.alice_chat.id)]
    assert sent == ["Paragraph 0", "Paragraph 1", "Paragraph 2", "Paragraph 3"]


@pytest_asyncio.fixture
async def slow_world(fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[BotWorld]:
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_RUN_TIMEOUT_S="3",
            KEEL_DATA_DIR=str(tmp_path / "data"))
    world = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    world.app = await start_bot(world.settings)
    try:
        yield world
    finally:
        await stop_bot(world.app)


async def test_the_deadline_covers_routing_and_every_attempt(slow_world: BotWorld) -> None:
    # Measured: with every call hanging and KEEL_RUN_TIMEOUT_S=20 people heard after 81 s: the
    # router ran outside the deadline, each attempt had the whole timeout, with 2 retries.
    w = slow_world
    never = asyncio.Event()

    async def hang(req: RecordedRequest) -> Reply:
        await never.wait()
        raise AssertionError("unreachable")

    w.anthropic.responder = hang
    loop = asyncio.get_running_loop()
    asked = loop.time()
    w.telegram.inject_text(w.alice_chat, "are you there?")
    # 3 s deadline + a few seconds for delivery: the old path took 3 attempts of 3 s for the
    # router alone, then the run's own 3 s
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=7)
    assert "ran out of time" in msg["text"]
    assert loop.time() - asked < 7
    runtime = w.app.bot_data["runtime"]
    [record] = await runtime.runs.recent()
    assert record.status == "timeout"
    never.set()


class InvoiceArgs(ToolArgs):
    customer: str


EFFECTS: list[str] = []


@tool(description="Send an invoice to a customer.", side_effects=True)
async def send_invoice(args: InvoiceArgs, ctx: ToolContext) -> str:
    EFFECTS.append(args.customer)
    return f"invoice sent to {args.customer}"


async def test_a_retried_message_does_not_repeat_its_side_effect(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Measured: recovery re-ran a message under a new run id, and the idempotency key was per
    # run id, so a side effect ran twice. Here the process is cut off after the effect and
    # before the answer; the restarted bot retries the same stored request.
    from agents.runtime import Runtime
    from agents.tools import builtin_registry
    from bot.app import build_application, start_app, stop_app

    EFFECTS.clear()
    config = tmp_path / "keel.toml"
    config.write_text('default_agent = "biller"\n[agents.biller]\ndescription = "bills"\n'
                      'system = "You bill."\ntools = ["send_invoice"]\n')
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_DATA_DIR=str(tmp_path / "data"),
            KEEL_CONFIG=str(config))
    settings = load_settings()
    first_done = asyncio.Event()
    never = asyncio.Event()
    generation = {"n": 1}

    async def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "biller"}))
        if not req.tool_results:
            return reply(tool_use("send_invoice", {"customer": "ACME"}))
        if generation["n"] == 1:
            first_done.set()
            await never.wait()  # the first process is cut off here, after the effect
        return reply("Invoice sent.")

    fake_anthropic.responder = respond
    chat = fake_telegram.private_chat(fake_telegram.user("Alice", id=1001))

    async def start() -> Any:
        registry = builtin_registry()
        registry.register(send_invoice)
        app = build_application(settings, runtime=await Runtime.open(settings, registry=registry))
        await start_app(app)
        return app

    app = await start()
    fake_telegram.inject_text(chat, "invoice ACME")
    await asyncio.wait_for(first_done.wait(), timeout=15)
    await stop_app(app, grace_s=0)  # cut off mid-run: its request stays unfinished
    generation["n"] = 2
    app = await start()
    try:
        msg = await fake_telegram.next_bot_message(chat.id, timeout=15)
        assert msg["text"] == "Invoice sent."
        assert EFFECTS == ["ACME"]
    finally:
        never.set()
        await stop_app(app)


@pytest.mark.parametrize("failure", [{"status": 502}, {"status": 429, "retry_after": 30}])
async def test_a_crash_while_waiting_to_retry_does_not_leave_the_chunk_possibly_delivered(
        fake_telegram: FakeTelegram, tmp_path: Path, failure: dict[str, Any]) -> None:
    # Found while explaining a kill-anywhere loss: the chunk was marked in flight before the
    # retry loop, so a crash during a backoff or a flood wait — when Telegram had certainly not
    # shown it — left it "possibly delivered", and recovery never sent it: the reply was lost.
    from telegram import Bot

    from bot.delivery import ChunkSender, Outbox
    from storage.db import Database

    user = fake_telegram.user("Ann")
    chat = fake_telegram.private_chat(user)
    db = await Database.open(tmp_path / "keel.sqlite3")
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as bot:
        outbox = Outbox(db, ChunkSender(bot, backoff_base_s=30.0))
        item = await outbox.enqueue(chat_id=chat.id, thread_id=None, reply_to=None,
                                    markdown="after the crash")
        fake_telegram.fail_next("sendMessage", **failure)
        delivering = asyncio.create_task(outbox.deliver(item))
        await fake_telegram.wait_for(lambda: fake_telegram.calls("sendMessage"), timeout=5)
        await asyncio.sleep(0.2)  # the answer is back; keel now waits to try again
        delivering.cancel()  # the crash: nothing after this point runs
        with pytest.raises(asyncio.CancelledError):
            await delivering
        recovered = Outbox(db, ChunkSender(bot))  # the next start's sweep
        assert await recovered.sweep() == 1
    row = await db.fetchone("SELECT status, unconfirmed_chunks FROM outbox WHERE id = ?", (item,))
    await db.close()
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == ["after the crash"]
    assert row is not None and (row["status"], row["unconfirmed_chunks"]) == ("sent", 0)


async def test_a_secret_pasted_into_a_chat_is_redacted_before_it_is_stored(
        bot_world: BotWorld) -> None:
    # Found by the secrets grep: a person who pasted the bot token into a chat had it stored in
    # the inbox and the history, and sent to the model.
    from tests.e2e.conftest import API_KEY

    w = bot_world
    w.answer(lambda req: reply("noted"))
    w.telegram.inject_text(w.alice_chat, f"my token is {w.telegram.token} and key {API_KEY}!")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    runtime = w.app.bot_data["runtime"]
    payload = await runtime.db.fetchval("SELECT payload FROM inbox")
    history = await runtime.db.fetchall("SELECT content FROM messages")
    for text in [payload, *(r["content"] for r in history),
                 *(r.body["messages"].__repr__() for r in w.anthropic.requests)]:
        assert w.telegram.token not in text and API_KEY not in text
    assert "[redacted secret]" in payload


async def test_a_reply_in_flight_at_a_crash_is_not_resent_unasked_but_on_the_persons_press(
        bot_world: BotWorld) -> None:
    # The one case keel does not resend by itself: a chunk on its way when the process died.
    # Telegram may have shown it; if not, the person would have no answer and no word of it.
    # Now the person is told once, and a press sends the reply again, once.
    w = bot_world
    keel = w.app.bot_data["keel"]
    item = await keel.outbox.enqueue(chat_id=w.alice_chat.id, thread_id=None, reply_to=None,
                                     markdown="the answer that may be lost")
    await keel.outbox.repo.handing_over(item, 0)  # the crash came right after this
    await keel.outbox.sweep()  # the next start's recovery
    [notice] = w.telegram.sent(w.alice_chat.id)
    assert notice["text"].startswith("⚠️ I was restarted while sending you my last message")
    assert [b["text"] for row in notice["reply_markup"]["inline_keyboard"] for b in row] == [
        "Send it again"]
    w.telegram.press_button(notice, text="Send it again", user=w.alice)
    await w.telegram.wait_for(lambda: any(m["text"] == "the answer that may be lost"
                                          for m in w.telegram.sent(w.alice_chat.id)), timeout=10)
    w.telegram.press_button(notice, text="Send it again", user=w.alice)  # a second press
    await asyncio.sleep(0.5)
    texts = [m["text"] for m in w.telegram.sent(w.alice_chat.id)]
    assert texts.count("the answer that may be lost") == 1, texts
