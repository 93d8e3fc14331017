"""Semantic memory: facts about a person, by person (and optionally chat), never in history.

A fact is one row of ``memory_facts``: the person it is about, the chat it is limited to (NULL:
every chat), its text, and where it came from (agent, run, trace). Reads always name the person,
so one person's facts never reach another's run. ``memory_buttons`` holds the keys of /memory's
delete buttons, each bound to its person, chat and message.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from storage.db import Database, now_iso

MAX_FACTS_PER_PERSON = 200
MAX_FACT_CHARS = 500


@dataclass(frozen=True, kw_only=True)
class Fact:
    id: int
    user_id: int
    chat_id: int | None
    """None: the person's fact in every chat."""
    fact: str
    agent: str | None
    run_id: str | None
    trace_id: str | None
    created_at: str


@dataclass(frozen=True, kw_only=True)
class FactButton:
    key: str
    fact_id: int
    user_id: int
    chat_id: int
    message_id: int | None


class MemoryFull(Exception):
    """The person already has MAX_FACTS_PER_PERSON facts."""


def _fact(row: Any) -> Fact:
    return Fact(id=int(row["id"]), user_id=int(row["user_id"]),
                chat_id=None if row["chat_id"] is None else int(row["chat_id"]),
                fact=str(row["fact"]), agent=row["agent"], run_id=row["run_id"],
                trace_id=row["trace_id"], created_at=str(row["created_at"]))


class MemoryRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, *, user_id: int, fact: str, chat_id: int | None = None,
                  agent: str | None = None, run_id: str | None = None,
                  trace_id: str | None = None) -> tuple[Fact, bool]:
        """Store a fact; the same text already known in the same scope is returned instead
        (``False``: nothing new was stored). Raises MemoryFull past the per-person cap."""
        text = fact.strip()[:MAX_FACT_CHARS]
        async with self.db.write() as conn:
            # "chat_id = ?" never matches NULL: the person-wide scope asks with IS NULL
            same = ("SELECT id, user_id, chat_id, fact, agent, run_id, trace_id, created_at"
                    " FROM memory_facts WHERE user_id = ? AND fact = ? AND"
                    " (chat_id = ? OR (chat_id IS NULL AND ? IS NULL))")
            params = (user_id, text, chat_id, chat_id)
            async with conn.execute(same, params) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                return _fact(row), False
            async with conn.execute("SELECT count(*) FROM memory_facts WHERE user_id = ?",
                                    (user_id,)) as cursor:
                counted = await cursor.fetchone()
            if counted is not None and int(counted[0]) >= MAX_FACTS_PER_PERSON:
                raise MemoryFull(f"{MAX_FACTS_PER_PERSON} facts are kept per person")
            async with conn.execute(
                    "INSERT INTO memory_facts (user_id, chat_id, fact, agent, run_id, trace_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " RETURNING id, user_id, chat_id, fact, agent, run_id, trace_id, created_at",
                    (user_id, chat_id, text, agent, run_id, trace_id, now_iso())) as cursor:
                new = await cursor.fetchone()
        assert new is not None
        return _fact(new), True

    async def visible(self, user_id: int, chat_id: int | None) -> list[Fact]:
        """The person's facts usable in ``chat_id``: those for every chat and that chat's own
        (``chat_id`` None: only those for every chat). Oldest first."""
        if chat_id is None:
            rows = await self.db.fetchall(
                "SELECT id, user_id, chat_id, fact, agent, run_id, trace_id, created_at"
            " FROM memory_facts WHERE user_id = ? AND chat_id IS NULL"
                " ORDER BY id", (user_id,))
        else:
            rows = await self.db.fetchall(
                "SELECT id, user_id, chat_id, fact, agent, run_id, trace_id, created_at"
            " FROM memory_facts WHERE user_id = ? AND"
                " (chat_id IS NULL OR chat_id = ?) ORDER BY id", (user_id, chat_id))
        return [_fact(r) for r in rows]

    async def of_person(self, user_id: int) -> list[Fact]:
        """Every fact about the person, in any chat (for /memory and ``keel memory list``)."""
        rows = await self.db.fetchall(
            "SELECT id, user_id, chat_id, fact, agent, run_id, trace_id, created_at"
            " FROM memory_facts WHERE user_id = ? ORDER BY id", (user_id,))
        return [_fact(r) for r in rows]

    async def everyone(self) -> list[Fact]:
        rows = await self.db.fetchall("SELECT id, user_id, chat_id, fact, agent, run_id, trace_id, created_at"
            " FROM memory_facts "
                                      "ORDER BY user_id, id")
        return [_fact(r) for r in rows]

    async def get(self, fact_id: int) -> Fact | None:
        row = await self.db.fetchone("SELECT id, user_id, chat_id, fact, agent, run_id, trace_id, created_at"
            " FROM memory_facts WHERE id = ?",
                                     (fact_id,))
        return None if row is None else _fact(row)

    async def forget(self, fact_id: int, *, user_id: int | None) -> bool:
        """Delete one fact; with ``user_id`` only if it is that person's. True if deleted."""
        async with self.db.write() as conn:
            if user_id is None:
                cursor = await conn.execute("DELETE FROM memory_facts WHERE id = ?", (fact_id,))
            else:
                cursor = await conn.execute(
                    "DELETE FROM memory_facts WHERE id = ? AND user_id = ?", (fact_id, user_id))
            deleted = cursor.rowcount > 0
            if deleted:
                await conn.execute("DELETE FROM memory_buttons WHERE fact_id = ?", (fact_id,))
        return deleted

    # ------------------------------------------------------------------ /memory buttons

    async def add_buttons(self, facts: list[Fact], *, user_id: int, chat_id: int) -> list[str]:
        """One fresh key per fact (callback data ``m:<key>``), bound to the person and chat."""
        keys = [secrets.token_urlsafe(9) for _ in facts]
        now = now_iso()
        async with self.db.write() as conn:
            await conn.executemany(
                "INSERT INTO memory_buttons (key, fact_id, user_id, chat_id, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(k, f.id, user_id, chat_id, now) for k, f in zip(keys, facts, strict=True)])
        return keys

    async def bind_buttons(self, keys: list[str], message_id: int) -> None:
        """The buttons went out on ``message_id``: only a press there counts."""
        if not keys:
            return
        async with self.db.write() as conn:
            await conn.executemany("UPDATE memory_buttons SET message_id = ? WHERE key = ?",
                                   [(message_id, k) for k in keys])

    async def button(self, key: str) -> FactButton | None:
        row = await self.db.fetchone(
            "SELECT key, fact_id, user_id, chat_id, message_id FROM memory_buttons WHERE key = ?",
            (key,))
        if row is None:
            return None
        return FactButton(key=str(row["key"]), fact_id=int(row["fact_id"]),
                          user_id=int(row["user_id"]), chat_id=int(row["chat_id"]),
                          message_id=None if row["message_id"] is None else int(row["message_id"]))
