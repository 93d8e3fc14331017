"""A message's path to its model call writes the database at most twice (issue 15): the inbox
store, then the run's start — its row, its inbox row taken and its first call's hold — in one
transaction. Every write is a turn of SQLite's single writer, which a burst of chats queues on.

The spy counts calls of ``Database.write`` and ``Database.execute_write``: an upper bound of the
transactions (group commit may merge statements, never split them)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from agents.model.anthropic_client import AnthropicModelClient
from agents.runtime import Runtime
from storage.db import Database
from storage.usage import today
from tests.e2e.conftest import BotWorld
from tests.fakes.anthropic import RecordedRequest, Reply, reply

pytestmark = pytest.mark.e2e


def spy_on_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    writes: list[str] = []
    write, execute_write = Database.write, Database.execute_write

    def counted_write(self: Database) -> Any:
        writes.append("transaction")
        return write(self)

    async def counted_execute_write(self: Database, sql: str, params: Any = ()) -> int:
        writes.append(sql.split("(")[0][:60])
        return await execute_write(self, sql, params)

    monkeypatch.setattr(Database, "write", counted_write)
    monkeypatch.setattr(Database, "execute_write", counted_execute_write)
    return writes


async def test_a_message_reaches_its_model_call_after_two_write_transactions(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    w = bot_world
    w.telegram.inject_text(w.alice_chat, "/agent assistant")  # pinned: no router call
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    w.telegram.inject_text(w.alice_chat, "first")  # the session exists from here on
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    await asyncio.sleep(0.3)  # compaction check, settling: done before counting starts

    writes = spy_on_writes(monkeypatch)
    before_call: list[list[str]] = []

    def answer(req: RecordedRequest) -> Reply:
        before_call.append(list(writes))
        return reply(f"echo: {req.last_user_text}")

    w.answer(answer)
    update = w.telegram.inject_text(w.alice_chat, "second")
    answer_message = await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    assert answer_message["text"] == "echo: second"
    [seen] = before_call
    assert len(seen) <= 2, seen
    # and the run's row, its hold and the taken inbox row are really there
    runtime = w.app.bot_data["runtime"]
    row = await runtime.db.fetchone(
        "SELECT r.status, i.status AS inbox FROM runs r JOIN inbox i ON i.run_id = r.id"
        " WHERE r.request_key = ?", (f"tg:{update['update_id']}",))
    assert row is not None and (row["status"], row["inbox"]) == ("completed", "done")


async def test_a_burst_is_taken_a_few_messages_at_a_time(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a burst, at most ``INTAKE_AT_ONCE`` messages are on their way to a first model call
    at once (issue 15): interleaved, every message waited for nearly all the others before its
    model call, so no reply could leave until the whole burst had been read."""
    from bot.service import IntakeGate, KeelBot

    w = bot_world
    keel = w.app.bot_data["keel"]
    keel.intake = IntakeGate(3)
    w.telegram.inject_text(w.alice_chat, "warm up")  # the SDK is imported, its pool open
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    groups = [w.telegram.supergroup(f"Burst {i}") for i in range(12)]
    on_the_way: set[str] = set()
    peak = 0
    answer = KeelBot._answer

    async def counted(self: KeelBot, message: Any, *args: Any) -> Any:
        nonlocal peak
        key = _question(message.text)
        on_the_way.add(key)
        peak = max(peak, len(on_the_way))
        try:
            return await answer(self, message, *args)
        finally:
            on_the_way.discard(key)

    create = AnthropicModelClient.create

    async def sent(self: AnthropicModelClient, request: Any, *args: Any, **kwargs: Any) -> Any:
        # a model call (the router's, or the run's when not routed) leaves keel for the API
        on_the_way.discard(_question(json.dumps(request.to_api()["messages"][-1])))
        return await create(self, request, *args, **kwargs)

    monkeypatch.setattr(KeelBot, "_answer", counted)
    monkeypatch.setattr(AnthropicModelClient, "create", sent)
    caps = Runtime.check_daily_caps

    async def slow_caps(self: Runtime, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)  # a busy database: each message's way to its call takes time
        return await caps(self, *args, **kwargs)

    monkeypatch.setattr(Runtime, "check_daily_caps", slow_caps)
    for i, group in enumerate(groups):
        w.telegram.inject_text(group, f"question {i}", user=w.alice, mention_bot=True)
    for i, group in enumerate(groups):
        got = await w.telegram.next_bot_message(group.id, timeout=30)
        assert got["text"].endswith(f"question {i}")
    assert peak <= 3, peak


def _question(text: str) -> str:
    found = re.search(r"question \d+", text)
    assert found is not None, text
    return found.group(0)


async def test_a_finished_run_commits_its_outcome_in_one_hop(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outcome of a run (its row, history, usage, inbox row and reply) is one transaction
    whose last statement, the reply, carries the commit: one hop to the writer thread, so the
    write lock is not held across a second hop while the event loop is busy (issue 15)."""
    w = bot_world
    w.telegram.inject_text(w.alice_chat, "/agent assistant")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    w.telegram.inject_text(w.alice_chat, "first")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    await asyncio.sleep(0.3)

    hops: list[str] = []
    on_writer = Database._on_writer

    def spy(self: Database, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn.__name__)
        return on_writer(self, fn, *args, **kwargs)

    monkeypatch.setattr(Database, "_on_writer", spy)
    w.telegram.inject_text(w.alice_chat, "second")
    assert (await w.telegram.next_bot_message(w.alice_chat.id, timeout=20))["text"] == \
        "echo: second"
    await asyncio.sleep(0.3)
    # every other write of the turn joins a group commit (one hop each); the outcome is a
    # transaction of its own
    assert [h for h in hops if h != "_run_batch"] == ["_run_last"], hops


async def test_a_reply_is_read_once_to_be_delivered(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run knows its reply's chat, so delivery takes the chat's turn first and reads the
    outbox row once, inside it (issue 15: a read less a turn; it read the row, took the chat's
    turn, and read it again); the row was committed with this process's delivery lease."""
    from storage.outbox import OutboxRepository

    w = bot_world
    w.telegram.inject_text(w.alice_chat, "/agent assistant")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    await asyncio.sleep(0.3)
    reads: list[int] = []
    get = OutboxRepository.get

    async def counted(self: OutboxRepository, item_id: int) -> Any:
        reads.append(item_id)
        return await get(self, item_id)

    monkeypatch.setattr(OutboxRepository, "get", counted)
    leases: list[int] = []
    lease = OutboxRepository.lease

    async def leasing(self: OutboxRepository, item_id: int, **kw: Any) -> bool:
        leases.append(item_id)
        return await lease(self, item_id, **kw)

    monkeypatch.setattr(OutboxRepository, "lease", leasing)
    w.telegram.inject_text(w.alice_chat, "hello")
    assert (await w.telegram.next_bot_message(w.alice_chat.id, timeout=20))["text"] == \
        "echo: hello"
    await asyncio.sleep(0.3)
    assert len(reads) == 1, reads
    # born with this process's delivery lease: no read and write to take it; cleared when sent
    assert leases == []
    runtime = w.app.bot_data["runtime"]
    [(status, holder)] = [tuple(r) for r in await runtime.db.fetchall(
        "SELECT status, leased_by FROM outbox WHERE id = ?", (reads[0],))]
    assert status == "sent" and holder is None


async def test_a_pinned_turn_reads_the_daily_caps_once(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bot refuses a turn whose day is spent before anything else; with no router call
    since, the run does not read the caps again (its model call's hold still holds them)."""
    w = bot_world
    w.telegram.inject_text(w.alice_chat, "/agent assistant")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    await asyncio.sleep(0.3)
    checks: list[int | None] = []
    check = Runtime.check_daily_caps

    async def counted(self: Runtime, user_id: int | None, schedule: str | None = None) -> None:
        checks.append(user_id)
        await check(self, user_id, schedule)

    monkeypatch.setattr(Runtime, "check_daily_caps", counted)
    w.telegram.inject_text(w.alice_chat, "hello")
    assert (await w.telegram.next_bot_message(w.alice_chat.id, timeout=20))["text"] == \
        "echo: hello"
    assert checks == [w.alice.id]


async def test_a_person_whose_day_is_spent_is_told_so_and_nothing_is_called(
        bot_world: BotWorld) -> None:
    """The conversation and the day's caps are read together; a spent day still refuses the
    turn before any model call, with one clear reply, and the message is answered (not retried
    after a restart)."""
    w = bot_world
    w.telegram.inject_text(w.alice_chat, "/agent assistant")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    runtime = w.app.bot_data["runtime"]
    cap = runtime.daily_caps().per_user_usd
    assert cap is not None
    await runtime.db.execute_write(
        "INSERT INTO usage_ledger (day, user_id, agent, cost_usd) VALUES (?, ?, ?, ?)",
        (today(), w.alice.id, "assistant", cap))
    calls = len(w.anthropic.requests)
    update = w.telegram.inject_text(w.alice_chat, "hello")
    text = (await w.telegram.next_bot_message(w.alice_chat.id, timeout=20))["text"]
    assert text.startswith("⚠️ The daily budget for user") and "is spent" in text, text
    assert len(w.anthropic.requests) == calls
    status = await runtime.db.fetchval("SELECT status FROM inbox WHERE update_id = ?",
                                       (update["update_id"],))
    assert status == "done"


async def test_a_polled_update_is_stored_as_telegram_sent_it(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inbox keeps each update as it came in the getUpdates answer, not rebuilt from its
    parsed object (``Update.to_dict``: 47 µs an update, and every false default stored). A
    pasted secret is still redacted before it is stored (that update alone is re-parsed)."""
    from telegram import Update

    w = bot_world
    w.telegram.inject_text(w.alice_chat, "/agent assistant")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    rebuilt: list[int] = []
    to_dict = Update.to_dict

    def counted(self: Update, recursive: bool = True) -> Any:
        rebuilt.append(self.update_id)
        return to_dict(self, recursive)

    monkeypatch.setattr(Update, "to_dict", counted)
    plain = w.telegram.inject_text(w.alice_chat, "a plain message, émoji 🦀 and \"quotes\"")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    secret = w.telegram.inject_text(w.alice_chat, f"here: {w.telegram.token}")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    runtime = w.app.bot_data["runtime"]
    stored = {row["update_id"]: json.loads(row["payload"]) for row in await runtime.db.fetchall(
        "SELECT update_id, payload FROM inbox WHERE update_id IN (?, ?)",
        (plain["update_id"], secret["update_id"]))}
    assert stored[plain["update_id"]] == plain
    assert w.telegram.token not in json.dumps(stored[secret["update_id"]])
    assert stored[secret["update_id"]]["message"]["text"] == "here: [redacted secret]"
    assert plain["update_id"] not in rebuilt


async def test_a_slow_download_holds_no_other_chat_back(bot_world: BotWorld) -> None:
    """A message's intake slot is given back while its files download: with the slots few (16),
    a handful of photos on a slow connection to Telegram's file server would otherwise hold
    every other chat's message back from its model call."""
    from bot.service import IntakeGate

    w = bot_world
    keel = w.app.bot_data["keel"]
    keel.intake = IntakeGate(1)
    w.answer(lambda req: reply(f"echo: {req.last_user_text}"))
    w.telegram.inject_text(w.alice_chat, "warm up")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    w.telegram.hang_next("getFile")  # the photo's download stalls at its first step
    w.telegram.inject_photo(w.alice_chat, caption="what is on this photo?")
    for _ in range(100):
        if w.telegram.hung:
            break
        await asyncio.sleep(0.05)
    assert w.telegram.hung, "the photo's download never started"
    group = w.telegram.supergroup("Elsewhere")
    w.telegram.inject_text(group, "question 1", user=w.bob, mention_bot=True)
    got = await w.telegram.next_bot_message(group.id, timeout=10)
    assert got["text"].endswith("question 1")
    assert w.telegram.hung  # answered while the photo still waits for its file
    w.telegram.release_hung()
    photo_answer = await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    assert "what is on this photo?" in photo_answer["text"]
