"""A message's path to its model call writes the database at most twice (issue 15): the inbox
store, then the run's start — its row, its inbox row taken and its first call's hold — in one
transaction. Every write is a turn of SQLite's single writer, which a burst of chats queues on.

The spy counts calls of ``Database.write`` and ``Database.execute_write``: an upper bound of the
transactions (group commit may merge statements, never split them)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from storage.db import Database
from tests.e2e.conftest import BotWorld
from tests.fakes.anthropic import RecordedRequest, Reply, reply

pytestmark = pytest.mark.e2e


def spy_on_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    writes: list[str] = []
    write, execute_write = Database.write, Database.execute_write

    def counted_write(self: Database) -> Any:
        writes.append("transaction")
        return write(self)

    async def counted_execute_write(self: Database, sql: str, params: Any = ()) -> int:
        writes.append(sql.split("(")[0][:60])
        return await execute_write(self, sql, params)

    monkeypatch.setattr(Database, "write", counted_write)
    monkeypatch.setattr(Database, "execute_write", counted_execute_write)
    return writes


async def test_a_message_reaches_its_model_call_after_two_write_transactions(
        bot_world: BotWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    w = bot_world
    w.telegram.inject_text(w.alice_chat, "/agent assistant")  # pinned: no router call
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    w.telegram.inject_text(w.alice_chat, "first")  # the session exists from here on
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    await asyncio.sleep(0.3)  # compaction check, settling: done before counting starts

    writes = spy_on_writes(monkeypatch)
    before_call: list[list[str]] = []

    def answer(req: RecordedRequest) -> Reply:
        before_call.append(list(writes))
        return reply(f"echo: {req.last_user_text}")

    w.answer(answer)
    update = w.telegram.inject_text(w.alice_chat, "second")
    answer_message = await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    assert answer_message["text"] == "echo: second"
    [seen] = before_call
    assert len(seen) <= 2, seen
    # and the run's row, its hold and the taken inbox row are really there
    runtime = w.app.bot_data["runtime"]
    row = await runtime.db.fetchone(
        "SELECT r.status, i.status AS inbox FROM runs r JOIN inbox i ON i.run_id = r.id"
        " WHERE r.request_key = ?", (f"tg:{update['update_id']}",))
    assert row is not None and (row["status"], row["inbox"]) == ("completed", "done")
