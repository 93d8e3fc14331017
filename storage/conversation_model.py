"""The model chosen for one conversation (a chat, or a topic in it) with /model.

A column of ``conversations`` (migration 0009_conversation_model); NULL means the agent's own
model. Which models may be chosen is the price table's business, not this table's.
"""

from __future__ import annotations

from storage.conversations import NO_THREAD
from storage.db import Database, now_iso


class ConversationModels:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, chat_id: int, thread_id: int | None) -> str | None:
        row = await self.db.fetchone(
            "SELECT model FROM conversations WHERE chat_id = ? AND thread_id = ?",
            (chat_id, thread_id or NO_THREAD), quick=True)
        return row["model"] if row is not None else None

    async def set(self, chat_id: int, thread_id: int | None, model: str | None) -> None:
        """Choose ``model`` for the conversation (None: back to the agent's own)."""
        now = now_iso()
        await self.db.execute_write(
            "INSERT INTO conversations (chat_id, thread_id, created_at, updated_at, model)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (chat_id, thread_id)"
            " DO UPDATE SET model = excluded.model, updated_at = excluded.updated_at",
            (chat_id, thread_id or NO_THREAD, now, now, model))
