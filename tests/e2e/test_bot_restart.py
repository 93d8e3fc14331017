"""Crash safety: the bot killed with SIGKILL between receiving a message and replying answers it
once after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ALICE_ID, API_KEY, is_router
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


async def _start_bot_process(telegram: FakeTelegram, anthropic: FakeAnthropic,
                             data_dir: Path) -> asyncio.subprocess.Process:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": anthropic.base_url,
        "KEEL_ALLOWED_USER_IDS": str(ALICE_ID),
        "KEEL_DATA_DIR": str(data_dir),
        "KEEL_LOG_LEVEL": "INFO",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "run", cwd=str(data_dir.parent), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )


async def test_killed_between_receiving_and_replying_answers_once_after_restart(
    fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    alice = fake_telegram.user("Alice", id=ALICE_ID)
    chat = fake_telegram.private_chat(alice)
    first_process_asked = asyncio.Event()
    hold_forever = asyncio.Event()
    generation = {"n": 1}

    async def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "assistant"}))
        if generation["n"] == 1:
            first_process_asked.set()
            await hold_forever.wait()  # the first bot dies while waiting on the model
        return reply(f"the answer to: {req.last_user_text}")

    fake_anthropic.responder = respond
    data_dir = tmp_path / "data"
    bot = await _start_bot_process(fake_telegram, fake_anthropic, data_dir)
    try:
        fake_telegram.inject_text(chat, "what is the meaning of life?")
        await asyncio.wait_for(first_process_asked.wait(), timeout=30)
        bot.send_signal(signal.SIGKILL)
        await bot.wait()
        assert fake_telegram.sent(chat.id) == []
        generation["n"] = 2
        bot = await _start_bot_process(fake_telegram, fake_anthropic, data_dir)
        answer = await fake_telegram.next_bot_message(chat.id, timeout=30)
        assert answer["text"] == "the answer to: what is the meaning of life?"
        await asyncio.sleep(1.5)  # give a duplicate every chance to appear
        assert len(fake_telegram.sent(chat.id)) == 1
    finally:
        hold_forever.set()
        if bot.returncode is None:
            bot.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(bot.wait(), timeout=15)
            except TimeoutError:
                bot.kill()
                await bot.wait()
    assert bot.returncode == 0, (await bot.stderr.read()).decode()[-2000:] if bot.stderr else ""


async def test_sigterm_stops_the_bot_in_bounded_time_while_the_model_hangs(
    fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    # Measured: with model calls hanging, SIGTERM did not stop the bot within 30 s. Shutdown now
    # gives runs a short grace, then leaves them (stored) to the next start.
    alice = fake_telegram.user("Alice", id=ALICE_ID)
    chat = fake_telegram.private_chat(alice)
    asked = asyncio.Event()
    never = asyncio.Event()

    async def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "assistant"}))
        asked.set()
        await never.wait()
        raise AssertionError("unreachable")

    fake_anthropic.responder = respond
    bot = await _start_bot_process(fake_telegram, fake_anthropic, tmp_path / "data")
    try:
        fake_telegram.inject_text(chat, "hang on")
        await asyncio.wait_for(asked.wait(), timeout=30)
        bot.send_signal(signal.SIGTERM)
        await asyncio.wait_for(bot.wait(), timeout=25)  # grace 10 s + closing
        assert bot.returncode == 0
    finally:
        never.set()
        if bot.returncode is None:
            bot.kill()
            await bot.wait()
