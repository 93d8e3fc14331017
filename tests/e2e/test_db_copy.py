"""Moving to PostgreSQL (issue 16): a bot that ran on SQLite — a conversation, a scheduled briefing,
a question waiting for a person, a day's spend — is copied with `keel db copy` (the real command, a
subprocess) and runs on PostgreSQL as if nothing happened: it remembers the conversation, does not
fire the same schedule time again, resumes the waiting question when it is answered, and the
ledger keeps the day's spend. The real python-telegram-bot and anthropic clients, against the fakes
and a real PostgreSQL (a schema of the test's own; skipped without a server, failed in CI)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from agents.config import load_settings
from storage.pg import PostgresDatabase
from tests.e2e.conftest import BotWorld, at_hour, bot_env, quiet_hour, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PLAN = {"goal": "Morning briefing", "steps": [
    {"instruction": "Find today's date", "produces": "the date"},
    {"instruction": "Write the briefing", "produces": "the briefing text"},
]}
QUESTION = {"reason": "Refund over the limit", "context": "Order 1234, 180 EUR.",
            "options": ["Approve", "Reject"]}
HOUR = quiet_hour("Europe/Madrid")  # the schedule's daily hour: no catch-up fire at start-up
FIRST_DAY = at_hour((2026, 11, 24), HOUR, "Europe/Madrid")
NEXT_DAY = at_hour((2026, 11, 25), HOUR, "Europe/Madrid")


def model(req: RecordedRequest) -> Reply:
    tools = [t.get("name") for t in req.body.get("tools") or []]
    text = req.last_user_text
    if "submit_plan" in tools:
        return reply(tool_use("submit_plan", PLAN))
    if "Write the briefing" in text:
        return reply("Briefing: sunny.")
    if "Find today's date" in text:
        return reply("Today is Tuesday.")
    if req.tool_results:
        answer = json.loads(req.tool_results[0]["content"])
        return reply(f"Done: {answer['answer']}.")
    if "refund" in text.lower():
        return reply("Let me check with a human.", tool_use("escalate_to_human", QUESTION))
    history = json.dumps(req.body.get("messages"))
    return reply(f"echo: {text} (I remember PINEAPPLE: {'PINEAPPLE' in history})")


async def _keel(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def _snapshot(db: Any) -> dict[str, Any]:
    """What must survive the move: every table's rows, and the day's spend."""
    counts = {t: await db.fetchval(f"SELECT COUNT(*) FROM {t}")  # noqa: S608
              for t in await db.table_names() if t != "schema_migrations"}
    spend = await db.fetchval("SELECT SUM(cost_usd) FROM usage_ledger")
    runs = {r["id"]: r["status"] for r in await db.fetchall("SELECT id, status FROM runs")}
    return {"counts": counts, "spend": round(float(spend or 0), 9), "runs": runs}


async def test_a_sqlite_install_moves_to_postgresql_and_carries_on(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, postgres_url: str, pg_schema: str) -> None:
    forum = fake_telegram.forum("Briefings")
    config = tmp_path / "keel.toml"
    config.write_text(
        f'[[schedules]]\nname = "morning"\nagent = "briefing"\ncron = "0 {HOUR} * * *"\n'
        f'timezone = "Europe/Madrid"\nchat_id = {forum.id}\ncreate_topic = true\n'
        'budget_usd = 0.30\ntask = "Brief me for today."\n')
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_CONFIG=str(config))
    w = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    w.answer(model)

    # ---- on SQLite: a conversation, a briefing, a question left waiting
    w.app = await start_bot(w.settings)
    try:
        w.telegram.inject_text(w.alice_chat, "The codeword is PINEAPPLE.")
        first = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
        assert first["text"].startswith("echo: The codeword is PINEAPPLE.")
        scheduler = w.app.bot_data["scheduler"]
        assert await scheduler.fire("morning", now=FIRST_DAY) is not None
        [topic] = fake_telegram.calls("createForumTopic")
        thread_id = topic.response["result"]["message_thread_id"]
        await fake_telegram.next_bot_message(forum.id, thread_id=thread_id, timeout=10)
        w.telegram.inject_text(w.alice_chat, "Please refund order 1234")
        question = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
        assert "Decision needed" in question["text"]
        runtime = w.app.bot_data["runtime"]
        for _ in range(500):  # the question's message id is stored right after Telegram's answer
            if await runtime.db.fetchval("SELECT message_id FROM escalations") is not None:
                break
            await asyncio.sleep(0.01)
        before = await _snapshot(runtime.db)
    finally:
        await stop_bot(w.app)
    assert before["spend"] > 0 and "waiting_human" in before["runs"].values()
    assert before["counts"]["schedule_fires"] == 1 and before["counts"]["escalations"] == 1

    # ---- the move: `keel db copy --to …`
    url = f"{postgres_url}?options=-csearch_path%3D{pg_schema}"
    code, out = await _keel("db", "copy", "--to", url, "--batch-size", "7")
    assert code == 0, out
    assert "row counts match" in out and "next: set KEEL_DATABASE_URL" in out
    pg = PostgresDatabase(url)
    await pg.connect()
    try:
        assert await _snapshot(pg) == before
    finally:
        await pg.close()
    code, out = await _keel("db", "copy", "--to", url)  # a second copy would lose what it holds
    assert code == 1 and "already holds keel data" in out and "--force" in out, out

    # ---- on PostgreSQL
    monkeypatch.setenv("KEEL_DATABASE_URL", url)
    w.settings = load_settings()
    w.app = await start_bot(w.settings)
    try:
        runtime = w.app.bot_data["runtime"]
        assert runtime.db.dialect == "postgresql"
        # the question asked on SQLite is answered now, and the run resumes here
        w.telegram.press_button(question, text="Approve", user=w.alice)
        done = await w.telegram.wait_for(lambda: next(
            (m for m in w.telegram.sent(w.alice_chat.id) if m["text"].startswith("Done")), None),
            timeout=15)
        assert done["text"] == "Done: Approve."
        # the conversation goes on with its history
        w.telegram.inject_text(w.alice_chat, "What was the codeword?")
        answer = await w.telegram.wait_for(lambda: next(
            (m for m in w.telegram.sent(w.alice_chat.id)
             if m["text"].startswith("echo: What was")), None), timeout=10)
        assert answer["text"].endswith("(I remember PINEAPPLE: True)")
        # the schedule's time that fired on SQLite does not fire again; the next day's does,
        # into the topic created on SQLite
        scheduler = w.app.bot_data["scheduler"]
        assert await scheduler.fire("morning", now=FIRST_DAY) is None
        assert await scheduler.fire("morning", now=NEXT_DAY) is not None
        await fake_telegram.next_bot_message(forum.id, thread_id=thread_id, timeout=10)
        assert len(fake_telegram.calls("createForumTopic")) == 1
        after = await _snapshot(runtime.db)
        assert after["spend"] > before["spend"]  # the day's spend went on from where it was
        assert set(before["runs"]) < set(after["runs"])
        assert before["runs"] != after["runs"]  # the waiting run completed
        statuses = [after["runs"][r] for r in before["runs"]]
        assert "waiting_human" not in statuses
    finally:
        await stop_bot(w.app)
    assert sum(m["text"].startswith("Done") for m in fake_telegram.sent(w.alice_chat.id)) == 1
