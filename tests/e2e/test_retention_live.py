"""Retention runs while the real bot serves messages: a chat is answered in the middle of a pass,
and the pass removes only the old finished rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage.db import iso
from storage.retention import prune
from storage.stats import storage_stats
from tests.e2e.conftest import BotWorld
from tests.fakes.anthropic import reply

pytestmark = pytest.mark.e2e


async def test_a_chat_is_answered_between_retention_batches(bot_world: BotWorld) -> None:
    w = bot_world
    runtime = w.app.bot_data["runtime"]
    db = runtime.db
    old = iso(datetime.now(UTC) - timedelta(days=40))
    async with db.write() as conn:
        await conn.executemany(
            "INSERT INTO inbox (update_id, payload, status, received_at, done_at)"
            " VALUES (?, '{}', 'done', ?, ?)", [(-i, old, old) for i in range(3000, 0, -1)])
    before = await storage_stats(db, w.settings.db_path, w.settings.traces_dir)
    w.answer(lambda req: reply(f"answer to: {req.last_user_text}"))
    answered: list[str] = []

    async def serve_a_chat(table: str, deleted: int) -> None:
        if len(answered) < 2:  # mid-pass: the bot stores the update, runs, and replies
            text = f"question {len(answered) + 1}"
            w.telegram.inject_text(w.alice_chat, text)
            msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
            answered.append(msg["text"])

    report = await prune(db, days=w.settings.retention_days, pause_s=0, on_batch=serve_a_chat)
    assert answered == ["answer to: question 1", "answer to: question 2"]
    assert report.deleted["inbox"] == 3000 and report.batches == 6
    after = await storage_stats(db, w.settings.db_path, w.settings.traces_dir)
    assert before.rows["inbox"] == 3000 and after.rows["inbox"] == 2  # the two served updates
    assert after.rows["runs"] == 2 and after.rows["outbox"] == before.rows["outbox"] + 2
