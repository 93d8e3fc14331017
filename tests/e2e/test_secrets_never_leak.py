"""Secrets never leak (issues 14 and 20): the real `keel run`, with a distinctive bot token and API
key, goes through messages, a tool error, a model error, a scheduled run and a rejected token; then
its output at DEBUG, every trace file and the SQLite files are searched for both: 0 hits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.conftest import ALICE_ID, is_router
from tests.fakes.anthropic import (
    FakeAnthropic,
    RecordedRequest,
    Reply,
    reply,
    server_error,
    tool_use,
)
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]

BOT_SECRET = "AAleakCheckBotSecret_q7Zx9Vw2Kp4Rt6Yu8"
TOKEN = f"741852963:{BOT_SECRET}"
WRONG_TOKEN = "741852963:AAleakCheckWrongSecret_m3Nb5Vc7Xz9Lk1J"
API_KEY = "sk-ant-leakcheck-Hq8Wd3Mz5Ty1Pv7Ks2Ne4"
SECRETS = (TOKEN, BOT_SECRET, WRONG_TOKEN, WRONG_TOKEN.split(":")[1], API_KEY)


@pytest_asyncio.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as server:
        yield server
    assert not server.crashes


def respond(req: RecordedRequest) -> Reply:
    if is_router(req):
        return reply(tool_use("route", {"agent": "assistant"}))
    last = req.body["messages"][-1]["content"]
    if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
        return reply("The page could not be read; here is what I know anyway.")
    text = req.last_user_text
    if "read the page" in text:
        return reply(tool_use("fetch_url", {"url": "ftp://example.invalid/notes"}))
    if "break" in text:
        return server_error()
    return reply(f"noted ({len(text)} characters)")


def env(tmp_path: Path, telegram: FakeTelegram, anthropic: FakeAnthropic,
        token: str) -> dict[str, str]:
    config = tmp_path / "keel.toml"
    config.write_text(
        '[[schedules]]\nname = "minutely"\nagent = "assistant"\ncron = "* * * * *"\n'
        f'chat_id = {ALICE_ID}\ntask = "Say something short."\n')
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
            "TELEGRAM_BOT_TOKEN": token, "TELEGRAM_API_BASE_URL": telegram.base_url,
            "ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": anthropic.base_url,
            "KEEL_ANTHROPIC_MAX_RETRIES": "0", "KEEL_DATA_DIR": str(tmp_path / "data"),
            "KEEL_ALLOWED_USER_IDS": str(ALICE_ID), "KEEL_CONFIG": str(config),
            "KEEL_LOG_LEVEL": "DEBUG"}


async def keel_run(environment: dict[str, str], cwd: Path, output: Path) -> Any:
    """`keel run`, its output to a file (at DEBUG a pipe nobody reads would fill and block it)."""
    with output.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", cwd=str(cwd), env=environment,
            stdout=sink, stderr=asyncio.subprocess.STDOUT)


def hits(blob: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode() in blob]


async def test_no_token_or_key_in_logs_traces_or_the_database(
        telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    fake_anthropic.responder = respond
    alice = telegram.user("Alice", id=ALICE_ID)
    chat = telegram.private_chat(alice)
    log = tmp_path / "keel-run.log"
    proc = await keel_run(env(tmp_path, telegram, fake_anthropic, TOKEN), tmp_path, log)
    try:
        # the minutely schedule's catch-up runs at start and posts to Alice
        await telegram.next_bot_message(chat.id, timeout=40)
        for text in ("hello, remember my locker code 4711", "please read the page for me",
                     "break something"):
            telegram.inject_text(chat, text)
            await telegram.next_bot_message(chat.id, timeout=40)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=60)
    output = log.read_bytes()
    # the flow happened: a tool error, a model error, a scheduled run
    runs = [line for line in output.decode().splitlines() if " INFO " in line and ": run " in line]
    assert any("scheduled" in line for line in runs), output.decode()[-3000:]
    assert any(" failed: " in line for line in runs), runs
    assert sum(" completed: " in line for line in runs) >= 3, runs
    # the run logged at DEBUG (79 such lines when written; SQL statements are no longer
    # logged since keel drives SQLite itself, so the size of the log is no measure)
    assert output.count(b" DEBUG ") >= 50, output.decode()[-3000:]

    refused_log = tmp_path / "keel-run-refused.log"
    rejected = await keel_run(env(tmp_path, telegram, fake_anthropic, WRONG_TOKEN), tmp_path,
                              refused_log)
    assert await asyncio.wait_for(rejected.wait(), timeout=60) != 0
    refused = refused_log.read_bytes()
    assert b"rejected the bot token" in refused and b"Traceback" not in refused

    assert hits(output) == [] and hits(refused) == []
    data = tmp_path / "data"
    traces = [p for p in (data / "traces").rglob("*") if p.is_file()]
    # three messages and the minutely schedule's runs (a second one when the test crossed a
    # minute boundary: CI once counted 5)
    scheduled = sum("scheduled" in line for line in runs)
    assert scheduled >= 1 and len(traces) == 3 + scheduled
    assert any(b'"is_error": true' in p.read_bytes() for p in traces)  # the tool error
    for path in traces:
        assert hits(path.read_bytes()) == [], path
    stored = [p for p in data.iterdir() if p.name.startswith("keel.sqlite3")]
    assert stored
    for path in stored:
        assert hits(path.read_bytes()) == [], path
