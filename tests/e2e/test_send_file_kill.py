"""send_file across a crash (issue 19): the document an agent sent reaches the person exactly once,
whether the bot dies while Telegram is refusing it (a 502: certainly not shown) or after Telegram
took it but before the answer came back (it may have arrived: not sent again). The real bot as a
subprocess, SIGKILLed, restarted on the same data directory (the harness of test_kill_windows).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.e2e.conftest import ALICE_ID, is_router
from tests.e2e.test_kill_windows import Bot, _until
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

CSV = "month,total\nMay,42\n"
CONFIG = ('default_agent = "filer"\n[agents.filer]\ndescription = "Makes files."\n'
          'system = "You make files."\ntools = ["send_file"]\n')


def filer(req: RecordedRequest) -> Reply:
    if is_router(req):
        return reply(tool_use("route", {"agent": "filer"}))
    if not req.tool_results:
        return reply(tool_use("send_file", {"filename": "sales.csv", "content": CSV}))
    return reply("Here is the export.")


def agent_calls(anthropic: FakeAnthropic) -> int:
    """How many times the agent was asked for the file (a repeated run would ask again)."""
    return sum(1 for r in anthropic.message_requests if not is_router(r) and not r.tool_results)


async def _world(fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
                 tmp_path: Path) -> tuple[Bot, int]:
    alice = fake_telegram.user("Alice", id=ALICE_ID)
    chat = fake_telegram.private_chat(alice)
    (tmp_path / "keel.toml").write_text(CONFIG, "utf-8")
    fake_anthropic.responder = filer
    bot = Bot(fake_telegram, fake_anthropic, tmp_path, KEEL_CONFIG=str(tmp_path / "keel.toml"))
    return bot, chat.id


async def _once_after_restart(bot: Bot, tg: FakeTelegram, anthropic: FakeAnthropic,
                              chat_id: int) -> None:
    await bot.start()
    await tg.wait_for(lambda: any(m.get("text") == "Here is the export." for m in tg.sent(chat_id)),
                      timeout=30)
    await asyncio.sleep(1.5)  # give a duplicate every chance to appear
    documents = tg.documents(chat_id)
    assert [(d["filename"], d["data"]) for d in documents] == [("sales.csv", CSV.encode())]
    texts = [m.get("text") for m in tg.sent(chat_id)]
    assert texts.count("Here is the export.") == 1, texts
    assert agent_calls(anthropic) == 1  # the run was not repeated
    with contextlib.closing(bot.db()) as conn:
        rows = conn.execute("SELECT kind, status FROM outbox ORDER BY id").fetchall()
    assert [(r["kind"], r["status"]) for r in rows] == [("document", "sent"), ("text", "sent")]


async def test_a_document_telegram_refused_when_the_bot_died_is_sent_once_after_restart(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    bot, chat_id = await _world(fake_telegram, fake_anthropic, tmp_path)
    fake_telegram.fail_next("sendDocument", status=502, times=1000)
    await bot.start()
    try:
        fake_telegram.inject_text(fake_telegram.chats[chat_id], "Export May's sales as CSV")
        await fake_telegram.wait_for(lambda: fake_telegram.calls("sendDocument"), timeout=30)
        # the run committed the document row; Telegram answered 502 (not shown); keel waits to
        # retry when it dies
        await _until(bot, "SELECT 1 FROM outbox WHERE kind = 'document' AND status = 'pending'"
                          " AND attempts >= 1 AND inflight_chunk IS NULL")
        await bot.kill()
        assert fake_telegram.documents(chat_id) == []
        fake_telegram.clear_faults()
        await _once_after_restart(bot, fake_telegram, fake_anthropic, chat_id)
    finally:
        code = await bot.stop()
    assert code == 0, bot.log()


async def test_a_document_in_flight_when_the_bot_died_is_not_sent_again(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    bot, chat_id = await _world(fake_telegram, fake_anthropic, tmp_path)
    # Telegram takes the document at once; its answer is late, and the bot dies waiting for it
    fake_telegram.slow_next("sendDocument", 120.0)
    await bot.start()
    try:
        fake_telegram.inject_text(fake_telegram.chats[chat_id], "Export May's sales as CSV")
        await fake_telegram.wait_for(lambda: fake_telegram.documents(chat_id), timeout=30)
        await _until(bot, "SELECT 1 FROM outbox WHERE kind = 'document' AND inflight_chunk = 0")
        await bot.kill()
        await _once_after_restart(bot, fake_telegram, fake_anthropic, chat_id)
        with contextlib.closing(bot.db()) as conn:
            unconfirmed = conn.execute(
                "SELECT unconfirmed_chunks FROM outbox WHERE kind = 'document'").fetchone()[0]
        assert unconfirmed == 1  # recorded as possibly delivered, not resent
    finally:
        code = await bot.stop()
    assert code == 0, bot.log()
