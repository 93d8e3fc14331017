"""People keel serves, their stored roles, and strangers told how to get access.

The owner is not stored (it comes from the environment); rows hold admins, users and people
removed with /deny. The environment's allowlist seeds rows once, so a later /deny sticks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from storage.db import Database, now_iso

StoredRole = Literal["admin", "user", "removed"]
Source = Literal["environment", "telegram"]


@dataclass(frozen=True, kw_only=True)
class Person:
    user_id: int
    role: StoredRole
    source: Source
    changed_by: int | None
    created_at: str
    updated_at: str


class PeopleRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def seed(self, user_ids: Iterable[int]) -> int:
        """Add the environment's ids as users unless a row exists; returns how many were new."""
        added = 0
        async with self.db.write() as conn:
            now = now_iso()
            for user_id in sorted(set(user_ids)):
                cursor = await conn.execute(
                    "INSERT INTO people (user_id, role, source, created_at, updated_at)"
                    " VALUES (?, 'user', 'environment', ?, ?) ON CONFLICT (user_id) DO NOTHING",
                    (user_id, now, now))
                added += cursor.rowcount
        return added

    async def get(self, user_id: int) -> Person | None:
        row = await self.db.fetchone("SELECT * FROM people WHERE user_id = ?", (user_id,),
                                     quick=True)
        return None if row is None else _person(row)

    async def set_role(self, user_id: int, role: StoredRole, *, by: int) -> None:
        now = now_iso()
        await self.db.execute_write(
            "INSERT INTO people (user_id, role, source, changed_by, created_at, updated_at)"
            " VALUES (?, ?, 'telegram', ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
            " role = excluded.role, changed_by = excluded.changed_by,"
            " updated_at = excluded.updated_at",
            (user_id, role, by, now, now))

    async def all(self) -> list[Person]:
        rows = await self.db.fetchall("SELECT * FROM people ORDER BY role, user_id")
        return [_person(r) for r in rows]

    async def claim_stranger_reply(self, user_id: int, day: str) -> bool:
        """True once per (stranger, day): the caller may send the one reply of that day."""
        return await self.db.execute_write(
            "INSERT INTO stranger_replies (user_id, day) VALUES (?, ?) ON CONFLICT (user_id)"
            " DO UPDATE SET day = excluded.day WHERE stranger_replies.day <> excluded.day",
            (user_id, day)) == 1


def _person(row: Any) -> Person:
    return Person(**dict(row))
