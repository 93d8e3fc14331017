"""Stored results of side-effecting tool calls, keyed by (run id, tool, canonical arguments)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from storage.db import Database, now_iso


def canonical_args_hash(args: Any) -> str:
    """The same arguments in any key order hash the same."""
    text = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, run_id: str, tool: str, args: Any) -> str | None:
        value = await self.db.fetchval(
            "SELECT result FROM idempotency_keys WHERE run_id = ? AND tool = ? AND args_hash = ?",
            (run_id, tool, canonical_args_hash(args)),
        )
        return None if value is None else str(value)

    async def put(self, run_id: str, tool: str, args: Any, result: str) -> None:
        """Store ``result``; a concurrent duplicate keeps the first stored result."""
        await self.db.execute_write(
            "INSERT INTO idempotency_keys (run_id, tool, args_hash, result, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (run_id, tool, canonical_args_hash(args), result, now_iso()),
        )
