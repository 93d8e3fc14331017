"""Start-up failures are one clear line (issue 14): a second instance polling the same token, and
a rejected token, against the fake Telegram with the real python-telegram-bot client."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from telegram import Bot
from telegram.error import Conflict

from agents.config import load_settings
from tests.e2e.conftest import ALICE_ID, API_KEY, bot_env, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, reply
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def second_instance(telegram: FakeTelegram) -> AsyncIterator[None]:
    """Another program polling the same token, as a second `keel run` would: short long polls,
    one after another, each ending the other poller's pending one with 409 Conflict."""
    other = Bot(telegram.token, base_url=telegram.base_url)
    await other.initialize()

    async def poll() -> None:
        while True:
            try:
                await other.get_updates(timeout=1, read_timeout=5)
            except Conflict:
                await asyncio.sleep(0.05)

    task = asyncio.create_task(poll())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await other.shutdown()


def _conflicts(telegram: FakeTelegram) -> int:
    return sum(1 for r in telegram.calls("getUpdates") if r.status == 409)


def _loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_lasting_conflict_is_one_line_then_a_stop(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("bot.poller.CONFLICT_GIVE_UP_S", 2.0)
    bot_env(monkeypatch, fake_telegram, fake_anthropic)
    caplog.set_level(logging.INFO)
    app = await start_bot(load_settings())
    try:
        async with second_instance(fake_telegram):
            poller = app.bot_data["poller"]
            await asyncio.wait_for(poller.stopped.wait(), timeout=30)
    finally:
        await stop_bot(app)
    assert isinstance(poller.fatal, Conflict)  # keel run turns it into its line and exit 1
    assert _conflicts(fake_telegram) >= 2
    loud = _loud(caplog)
    assert len(loud) == 1 and "409 Conflict" in loud[0].getMessage(), [
        r.getMessage() for r in loud]
    assert "up to 2 s, then stopping" in loud[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


async def test_a_conflict_that_ends_is_one_line_and_polling_goes_on(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    bot_env(monkeypatch, fake_telegram, fake_anthropic)
    fake_anthropic.responder = lambda req: reply("back")
    caplog.set_level(logging.INFO)
    app = await start_bot(load_settings())
    try:
        async with second_instance(fake_telegram):
            await fake_telegram.wait_for(lambda: _conflicts(fake_telegram) >= 3, timeout=20)
        alice = fake_telegram.user("Alice", id=ALICE_ID)
        fake_telegram.inject_text(fake_telegram.private_chat(alice), "still there?")
        answer = await fake_telegram.next_bot_message(ALICE_ID, timeout=30)
    finally:
        await stop_bot(app)
    assert answer["text"] == "back"
    assert any("receiving this bot's updates again" in r.getMessage() for r in caplog.records)
    loud = _loud(caplog)
    assert len(loud) == 1 and "409 Conflict" in loud[0].getMessage(), [
        r.getMessage() for r in loud]
    assert not any(r.exc_info for r in caplog.records)


async def test_a_rejected_token_prints_no_start_up_hint_first(
        fake_telegram: FakeTelegram, tmp_path: Path) -> None:
    # no allowed users: a bot that started would warn that it serves only its owner; one that
    # never got past getMe has nothing to say but that the token was rejected
    token = "999999:RejectedTokenRejectedTokenRejectedTok"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "TELEGRAM_BOT_TOKEN": token, "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
           "ANTHROPIC_API_KEY": API_KEY, "KEEL_DATA_DIR": str(tmp_path / "data"),
           "KEEL_OWNER_ID": str(ALICE_ID)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "run", cwd=str(tmp_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = (out + err).decode()
    assert proc.returncode == 2, text
    problems = [line for line in text.splitlines() if " INFO " not in line]
    assert len(problems) == 1 and "rejected the bot token" in problems[0], text
