"""Conversations (a chat, or a forum topic in it), their sessions per agent, and message history.

A message is stored in the Messages API's own shape — a role and a list of content blocks as JSON —
so history replays into a request byte for byte, which is what keeps the prompt cache warm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.db import Database, now_iso

NO_THREAD = 0


@dataclass(frozen=True, kw_only=True)
class Conversation:
    id: int
    chat_id: int
    thread_id: int
    pinned_agent: str | None
    current_agent: str | None
    model: str | None = None
    """The model chosen for this chat with /model (``storage.conversation_model``)."""


@dataclass(frozen=True, kw_only=True)
class StoredMessage:
    id: int
    seq: int
    role: str
    content: list[dict[str, Any]]
    kind: str
    tokens: int
    run_id: str | None


@dataclass(frozen=True, kw_only=True)
class SessionStats:
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    compactions: int

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def cache_hit_ratio(self) -> float:
        total = self.total_input_tokens
        return self.cache_read_tokens / total if total else 0.0


class ConversationRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_or_create(self, chat_id: int, thread_id: int | None) -> Conversation:
        thread = thread_id or NO_THREAD
        # a conversation is created once and read on every message: a read first, and a write
        # transaction (which waits its turn behind every other write) only the first time
        row = await self.db.fetchone(
            "SELECT * FROM conversations WHERE chat_id = ? AND thread_id = ?", (chat_id, thread),
            quick=True)
        if row is not None:
            return _conversation(row)
        now = now_iso()
        await self.db.execute_write(
            "INSERT INTO conversations (chat_id, thread_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (chat_id, thread_id) DO NOTHING",
            (chat_id, thread, now, now),
        )
        row = await self.db.fetchone(
            "SELECT * FROM conversations WHERE chat_id = ? AND thread_id = ?", (chat_id, thread),
            quick=True)
        assert row is not None
        return _conversation(row)

    async def pin(self, conversation_id: int, agent: str | None) -> None:
        await self.db.execute_write(
            "UPDATE conversations SET pinned_agent = ?, updated_at = ? WHERE id = ?",
            (agent, now_iso(), conversation_id),
        )

    async def set_current_agent(self, conversation_id: int, agent: str) -> None:
        await self.db.execute_write(
            "UPDATE conversations SET current_agent = ?, updated_at = ? WHERE id = ?",
            (agent, now_iso(), conversation_id),
        )

    # ------------------------------------------------------------ sessions

    async def live_session(self, conversation_id: int, agent: str) -> int:
        """The live session's id for (conversation, agent), created on first use."""
        live = await self.db.fetchval(
            "SELECT id FROM sessions WHERE conversation_id = ? AND agent = ?"
            " AND archived_at IS NULL", (conversation_id, agent), quick=True)
        if live is not None:  # read first: a write transaction only to create it
            return int(live)
        # created unless live, then read, in the group commit
        cursor = await self.db.write_many([
            ("INSERT INTO sessions (conversation_id, agent, created_at) VALUES (?, ?, ?)"
             " ON CONFLICT (conversation_id, agent) WHERE archived_at IS NULL DO NOTHING",
             (conversation_id, agent, now_iso())),
            ("SELECT id FROM sessions WHERE conversation_id = ? AND agent = ?"
             " AND archived_at IS NULL", (conversation_id, agent)),
        ])
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def archive_sessions(self, conversation_id: int) -> int:
        """/new: every live session of the conversation is archived; returns how many."""
        return await self.db.execute_write(
            "UPDATE sessions SET archived_at = ? WHERE conversation_id = ? AND archived_at IS NULL",
            (now_iso(), conversation_id),
        )

    async def add_session_usage(
        self, session_id: int, *, input_tokens: int, cache_read: int, cache_write: int, output: int,
        conn: Any = None,
    ) -> None:
        sql = ("UPDATE sessions SET input_tokens = input_tokens + ?,"
               " cache_read_tokens = cache_read_tokens + ?, cache_write_tokens = cache_write_tokens"
               " + ?, output_tokens = output_tokens + ? WHERE id = ?")
        params = (input_tokens, cache_read, cache_write, output, session_id)
        if conn is not None:
            await conn.later(sql, params)
        else:
            await self.db.execute_write(sql, params)

    async def session_stats(self, session_id: int) -> SessionStats:
        row = await self.db.fetchone(
            "SELECT input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, compactions"
            " FROM sessions WHERE id = ?",
            (session_id,),
        )
        if row is None:
            raise KeyError(f"no session {session_id}")
        return SessionStats(**dict(row))

    async def live_session_stats(self, chat_id: int,
                                 thread_id: int | None) -> list[tuple[str, SessionStats]]:
        """The live sessions of a chat (or topic), by agent, with their token counters (oldest
        first); nothing is created."""
        rows = await self.db.fetchall(
            "SELECT s.agent, s.input_tokens, s.cache_read_tokens, s.cache_write_tokens,"
            " s.output_tokens, s.compactions FROM sessions s"
            " JOIN conversations c ON c.id = s.conversation_id"
            " WHERE c.chat_id = ? AND c.thread_id = ? AND s.archived_at IS NULL ORDER BY s.id",
            (chat_id, thread_id or NO_THREAD))
        out = []
        for row in rows:
            counters = dict(row)
            out.append((str(counters.pop("agent")), SessionStats(**counters)))
        return out

    async def session_owner(self, session_id: int) -> tuple[str, int, int | None] | None:
        """(agent, chat_id, thread_id) of a session; None when there is no such session."""
        row = await self.db.fetchone(
            "SELECT s.agent, c.chat_id, c.thread_id FROM sessions s"
            " JOIN conversations c ON c.id = s.conversation_id WHERE s.id = ?", (session_id,))
        if row is None:
            return None
        thread = int(row["thread_id"])
        return str(row["agent"]), int(row["chat_id"]), None if thread == NO_THREAD else thread

    # ------------------------------------------------------------ messages

    async def history(self, session_id: int) -> list[StoredMessage]:
        """The live (not archived) messages of a session, oldest first."""
        rows = await self.db.fetchall(
            "SELECT id, seq, role, content, kind, tokens, run_id FROM messages"
            " WHERE session_id = ? AND archived_at IS NULL ORDER BY seq",
            (session_id,), quick=True,
        )
        return [_message(r) for r in rows]

    async def append(
        self,
        session_id: int,
        messages: list[tuple[str, list[dict[str, Any]], int]],
        *,
        run_id: str | None = None,
    ) -> None:
        """Append (role, content, tokens) messages to the session in one transaction."""
        async with self.db.write() as conn:
            await self.append_in(conn, session_id, messages, run_id=run_id)

    @staticmethod
    async def append_in(
        conn: Any,
        session_id: int,
        messages: list[tuple[str, list[dict[str, Any]], int]],
        *,
        run_id: str | None = None,
    ) -> None:
        """``append`` inside the caller's transaction (a turn's history commits with its reply).
        Each row takes the next ``seq`` in its own statement, so nothing is read back: on SQLite
        they all go with the transaction's next statement or its commit, in one hop."""
        now = now_iso()
        for role, content, tokens in messages:
            await conn.later(
                "INSERT INTO messages (session_id, seq, role, content, tokens, run_id,"
                " created_at) SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?"
                " FROM messages WHERE session_id = ?",
                (session_id, role, json.dumps(content, ensure_ascii=False), tokens, run_id, now,
                 session_id),
            )

    async def compact(
        self, session_id: int, archive_ids: list[int], summary: list[dict[str, Any]] | None,
        summary_tokens: int,
    ) -> None:
        """Archive ``archive_ids`` and, when given, put one summary message where they were."""
        if not archive_ids:
            return
        now = now_iso()
        async with self.db.write() as conn:
            marks = ", ".join("?" for _ in archive_ids)
            cursor = await conn.execute(
                f"SELECT MIN(seq) FROM messages WHERE session_id = ? AND id IN ({marks})",  # noqa: S608
                (session_id, *archive_ids),
            )
            row = await cursor.fetchone()
            first_seq = int(row[0]) if row and row[0] is not None else 0
            await conn.execute(
                f"UPDATE messages SET archived_at = ?, seq = -id WHERE id IN ({marks})",  # noqa: S608
                (now, *archive_ids),
            )
            if summary is not None:
                await conn.execute(
                    "INSERT INTO messages (session_id, seq, role, content, kind, tokens,"
                    " created_at) VALUES (?, ?, 'user', ?, 'summary', ?, ?)",
                    (session_id, first_seq, json.dumps(summary, ensure_ascii=False),
                     summary_tokens, now),
                )
            await conn.execute(
                "UPDATE sessions SET compactions = compactions + 1 WHERE id = ?", (session_id,)
            )


def _conversation(row: Any) -> Conversation:
    return Conversation(
        id=row["id"], chat_id=row["chat_id"], thread_id=row["thread_id"],
        pinned_agent=row["pinned_agent"], current_agent=row["current_agent"], model=row["model"],
    )


def _message(row: Any) -> StoredMessage:
    return StoredMessage(
        id=row["id"], seq=row["seq"], role=row["role"], content=json.loads(row["content"]),
        kind=row["kind"], tokens=row["tokens"], run_id=row["run_id"],
    )
