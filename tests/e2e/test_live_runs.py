"""Start-up recovery closes only runs whose process is gone (issue 11).

Measured: a bot started (or restarted) while `keel agent run` was working beside it marked that
live run `failed`, wrote a `run_end` into its trace and charged its budget holds as spent, then the
command-line run went on anyway. Each run now records its process (storage/owner.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from agents.config import load_settings
from tests.e2e.conftest import BotWorld, bot_env, start_bot, stop_bot
from tests.e2e.test_cli_runs import _env
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e


async def test_a_bot_starting_beside_a_live_cli_run_leaves_it_running(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = asyncio.Event()
    hold = asyncio.Event()

    async def respond(req: RecordedRequest) -> Reply:
        asked.set()
        await hold.wait()
        return reply("the command line's answer")

    fake_anthropic.responder = respond
    data_dir = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "agent", "run", "assistant", "think hard",
        cwd=str(tmp_path), env=_env(fake_anthropic, data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    app = None
    try:
        await asyncio.wait_for(asked.wait(), 30)
        bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_DATA_DIR=str(data_dir))
        world = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic,
                         settings=load_settings())
        app = await start_bot(world.settings)  # recovery runs here
        runtime = app.bot_data["runtime"]
        [record] = await runtime.runs.recent()
        assert record.status == "running"  # not closed as "interrupted"
        assert await runtime.db.fetchval("SELECT COUNT(*) FROM budget_holds") >= 1
        hold.set()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert "the command line's answer" in out.decode()
        [record] = await runtime.runs.recent()
        assert record.status == "completed"
        trace = runtime.traces.read(record.trace_id)
        assert [e["type"] for e in trace].count("run_end") == 1
    finally:
        hold.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if app is not None:
            await stop_bot(app)


async def test_a_run_whose_process_died_is_closed_at_start(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = asyncio.Event()
    hold = asyncio.Event()

    async def respond(req: RecordedRequest) -> Reply:
        asked.set()
        await hold.wait()
        return reply("never seen")

    fake_anthropic.responder = respond
    data_dir = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "agent", "run", "assistant", "think hard",
        cwd=str(tmp_path), env=_env(fake_anthropic, data_dir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.wait_for(asked.wait(), 30)
        proc.kill()
        await proc.wait()
    finally:
        hold.set()
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_DATA_DIR=str(data_dir))
    app = await start_bot(load_settings())
    try:
        runtime = app.bot_data["runtime"]
        [record] = await runtime.runs.recent()
        assert record.status == "failed" and "interrupted" in (record.status_detail or "")
        assert await runtime.db.fetchval("SELECT COUNT(*) FROM budget_holds") == 0
    finally:
        await stop_bot(app)
