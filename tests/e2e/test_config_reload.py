"""keel.toml reloads while the bot runs (issue 20): a removed schedule stops firing without a
restart, a new agent answers, and an invalid file is refused with its reason while the running
configuration is kept; /reload does the same on the owner's word."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bot.reload
from agents.config import load_settings
from tests.e2e.conftest import BotWorld, bot_env, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

# New Year only: nothing is due (or caught up) while the test runs, so every fire is the test's
SCHEDULE = ('[[schedules]]\nname = "{name}"\nagent = "assistant"\ncron = "0 0 1 1 *"\n'
            'chat_id = {chat}\ntask = "Say the time."\n')
HELPER = '[agents.helper]\ndescription = "a helper"\nsystem = "Be brief."\n'


async def _until(check: Callable[[], Any], what: str) -> None:
    for _ in range(400):  # the watcher looks every 0.05 s here
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached: {what}")


async def test_removing_a_schedule_stops_it_firing_without_a_restart(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(bot.reload, "WATCH_EVERY_S", 0.05)
    config = tmp_path / "keel.toml"
    chat = 1001
    config.write_text(SCHEDULE.format(name="gone", chat=chat)
                      + SCHEDULE.format(name="kept", chat=chat))
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_CONFIG=str(config))
    w = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    w.app = await start_bot(w.settings)
    try:
        scheduler = w.app.bot_data["scheduler"]
        runtime = w.app.bot_data["runtime"]
        assert scheduler.aps.get_job("gone") is not None

        config.write_text(SCHEDULE.format(name="kept", chat=chat) + HELPER)
        await _until(lambda: scheduler.aps.get_job("gone") is None, "schedule removed")
        assert scheduler.aps.get_job("kept") is not None  # the others keep firing
        assert "helper" in runtime.agents  # agents swapped with the schedules
        # what APScheduler would call for it, had a fire been queued already, runs nothing
        await scheduler._on_time("gone")
        assert await scheduler.fire("gone") is None
        fires = await runtime.db.fetchall("SELECT job FROM schedule_fires")
        assert fires == [] and runtime.agents["helper"].description == "a helper"

        # an invalid file is refused with its reason; what runs stays as it was
        caplog.set_level(logging.WARNING, logger="bot.reload")
        config.write_text("[agents\n")
        await _until(lambda: any("not reloaded" in r.getMessage() for r in caplog.records),
                     "refusal logged")
        refusal = next(r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage())
        assert "not valid TOML" in refusal and "running configuration is kept" in refusal
        assert "helper" in runtime.agents and scheduler.aps.get_job("kept") is not None

        # /reload by the owner says the same; a user may not reload
        w.telegram.inject_text(w.alice_chat, "/reload")
        answer = await w.telegram.next_bot_message(w.alice_chat.id, timeout=5)
        assert answer["text"].startswith("⚠️") and "not valid TOML" in answer["text"]
        config.write_text(SCHEDULE.format(name="kept", chat=chat))
        w.telegram.inject_text(w.alice_chat, "/reload")
        answer = await w.telegram.next_bot_message(w.alice_chat.id, timeout=5)
        assert answer["text"].startswith("✅") and "1 schedule(s)" in answer["text"], answer
        assert "helper" not in runtime.agents
        bob_chat = w.telegram.private_chat(w.bob)
        w.telegram.inject_text(bob_chat, "/reload")
        refused = await w.telegram.next_bot_message(bob_chat.id, timeout=5)
        assert "Reloaded" not in refused["text"]
    finally:
        await stop_bot(w.app)
