"""Privacy end to end: closed by default, roles changed from Telegram, strangers told once, and
each person sees only their own runs, traces and spend (the owner and admins see all)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.config import load_settings
from tests.e2e.conftest import (
    ALICE_ID,
    BOB_ID,
    BotWorld,
    bot_env,
    quiet_hour,
    start_bot,
    stop_bot,
)
from tests.fakes.anthropic import FakeAnthropic, reply
from tests.fakes.telegram import Chat, FakeTelegram

pytestmark = pytest.mark.e2e

OWNER_ID = 1000


@contextlib.asynccontextmanager
async def running(telegram: FakeTelegram, anthropic: FakeAnthropic,
                  monkeypatch: pytest.MonkeyPatch, **env: str) -> AsyncIterator[BotWorld]:
    bot_env(monkeypatch, telegram, anthropic, **env)
    world = BotWorld(telegram=telegram, anthropic=anthropic, settings=load_settings())
    world.app = await start_bot(world.settings)
    try:
        yield world
    finally:
        await stop_bot(world.app)
    assert not anthropic.unexpected, [r.note for r in anthropic.unexpected]


async def settle(w: BotWorld, updates: list[dict]) -> None:  # type: ignore[type-arg]
    """Wait until the bot fetched these updates, then stop taking new ones; PTB's stop() waits
    for every handler already started, so afterwards nothing more can happen for them."""
    last = max(u["update_id"] for u in updates)
    await w.telegram.wait_for(lambda: any(
        int(r.params.get("offset", 0)) > last for r in w.telegram.calls("getUpdates")), timeout=10)
    poller = w.app.bot_data["poller"]  # keel polls itself (bot/poller.py)
    await poller.stop()
    await poller.drain(10)
    await w.app.stop()


def schedule_file(tmp_path: Path, chat: Chat) -> str:
    path = tmp_path / "keel.toml"
    path.write_text('[[schedules]]\nname = "morning"\nagent = "assistant"\n'
                    f'cron = "0 {quiet_hour()} * * *"\n'
                    f'chat_id = {chat.id}\ntask = "Brief me."\n')
    return str(path)


async def test_by_default_a_strangers_commands_do_nothing_and_cost_nothing(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    group = fake_telegram.group("Family")
    async with running(fake_telegram, fake_anthropic, monkeypatch, KEEL_ALLOWED_USER_IDS="",
                       KEEL_CONFIG=schedule_file(tmp_path, group)) as w:
        chat = w.telegram.private_chat(w.mallory)
        texts = ["/run morning", "/run morning", "/cost", "/schedules", "/runs", "/agents",
                 "/new", "/trace ab", f"/allow {w.mallory.id}", "/people", "hello"]
        updates = [w.telegram.inject_text(chat, t) for t in texts]
        runtime = w.app.bot_data["runtime"]
        await settle(w, updates)
        [told] = w.telegram.sent(chat.id)  # one reply, whatever was sent
        assert str(w.mallory.id) in told["text"] and "KEEL_" not in told["text"]
        assert w.telegram.sent(group.id) == []
        assert fake_anthropic.message_requests == []
        assert await runtime.db.fetchval("SELECT COUNT(*) FROM runs") == 0
        assert await runtime.db.fetchval("SELECT COUNT(*) FROM schedule_fires") == 0
        assert await runtime.db.fetchval("SELECT COUNT(*) FROM people") == 0


async def test_a_stranger_is_told_once_a_day_in_private_and_never_in_a_group(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(fake_telegram, fake_anthropic, monkeypatch) as w:
        chat = w.telegram.private_chat(w.mallory)
        group = w.telegram.group("Team")
        updates = [w.telegram.inject_text(chat, f"hello {i}") for i in range(3)]
        updates += [w.telegram.inject_text(group, f"hey {i}", user=w.mallory, mention_bot=True)
                    for i in range(3)]
        updates.append(w.telegram.inject_text(group, "/cost", user=w.mallory))
        await settle(w, updates)
        assert len(w.telegram.sent(chat.id)) == 1
        assert w.telegram.sent(group.id) == []
        assert fake_anthropic.message_requests == []


async def test_the_owner_allows_promotes_and_removes_people_without_a_restart(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(fake_telegram, fake_anthropic, monkeypatch, KEEL_ALLOWED_USER_IDS="",
                       KEEL_OWNER_ID=str(ALICE_ID)) as w:
        w.answer(lambda req: reply(f"answer: {req.last_user_text}"))
        tg, alice = w.telegram, w.alice_chat
        bob = tg.private_chat(w.bob)
        tg.inject_text(bob, "hi")
        told = await tg.next_bot_message(bob.id)
        assert str(BOB_ID) in told["text"] and fake_anthropic.message_requests == []

        tg.inject_text(alice, f"/allow {BOB_ID}")
        assert "Allowed" in (await tg.next_bot_message(alice.id))["text"]
        tg.inject_text(bob, "now?")
        assert (await tg.next_bot_message(bob.id))["text"] == "answer: now?"

        tg.inject_text(bob, f"/allow {w.mallory.id}")  # a user may not add people
        assert "Only the owner or an admin" in (await tg.next_bot_message(bob.id))["text"]
        tg.inject_text(bob, "/run morning")
        assert "Only the owner or an admin" in (await tg.next_bot_message(bob.id))["text"]

        tg.inject_text(alice, f"/promote {BOB_ID}")
        assert "admin" in (await tg.next_bot_message(alice.id))["text"]
        tg.inject_text(bob, f"/allow {w.mallory.id}")
        assert "Allowed" in (await tg.next_bot_message(bob.id))["text"]
        tg.inject_text(bob, f"/deny {ALICE_ID}")  # nobody removes the owner
        assert "cannot be removed" in (await tg.next_bot_message(bob.id))["text"]

        tg.inject_text(alice, "/people")
        listing = (await tg.next_bot_message(alice.id))["text"]
        assert f"{ALICE_ID} — owner" in listing and f"{BOB_ID} — admin" in listing
        assert f"{w.mallory.id} — user" in listing

        tg.inject_text(alice, f"/deny {BOB_ID}")
        assert "Removed" in (await tg.next_bot_message(alice.id))["text"]
        calls, replies = len(fake_anthropic.message_requests), len(tg.sent(bob.id))
        update = tg.inject_text(bob, "still there?")
        await settle(w, [update])
        # removed: no answer, no model call, and no second stranger notice on the same day
        assert len(tg.sent(bob.id)) == replies
        assert len(fake_anthropic.message_requests) == calls
