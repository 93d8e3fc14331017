"""What the operator sees while keel works (issue 20): one INFO line per message handled and per
run finished, without the message text; no SDK retry chatter inside CLI output."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import API_KEY, BotWorld
from tests.fakes.anthropic import FakeAnthropic, overloaded, reply

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


async def test_each_message_and_each_run_is_one_info_line_without_its_text(
        bot_world: BotWorld, caplog: pytest.LogCaptureFixture) -> None:
    w = bot_world
    caplog.set_level(logging.INFO)
    w.answer(lambda req: reply("the answer"))
    w.telegram.inject_text(w.alice_chat, "my private shopping list: eggs")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    handled = await w.telegram.wait_for(lambda: [
        r for r in caplog.records if "handled in" in r.getMessage()], timeout=10)

    runs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run ")]
    assert len(runs) == 1, runs
    line = runs[0]
    assert "completed" in line and "agent assistant" in line and str(w.alice_chat.id) in line
    assert "$0." in line and " s, trace " in line, line
    assert len(handled) == 1 and str(w.alice_chat.id) in handled[0].getMessage()
    assert all(r.levelno == logging.INFO for r in handled)
    assert not any("shopping" in r.getMessage() for r in caplog.records)


async def test_sdk_retries_do_not_appear_in_keel_agent_run_output(
        fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    fake_anthropic.enqueue(overloaded(retry_after_ms=10), reply("fine after one retry"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
           "KEEL_DATA_DIR": str(tmp_path / "data"), "KEEL_LOG_LEVEL": "INFO"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "agent", "run", "assistant", "hello", cwd=str(tmp_path),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "fine after one retry"
    assert len(fake_anthropic.message_requests) == 2  # the SDK did retry
    assert "Retrying request" not in err.decode(), err.decode()
