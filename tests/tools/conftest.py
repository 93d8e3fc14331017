"""Fixtures for the tools tests: a recorded trace, an idempotency store, a tool context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agents.tools.contract import ToolContext
from storage.db import Database
from storage.idempotency import IdempotencyStore, canonical_args_hash


class Trace:
    """Collects what ``ctx.emit`` writes, like the run's trace file would."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, type_: str, **payload: Any) -> None:
        self.events.append({"type": type_, **payload})

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


class MemoryStore:
    """A dict-backed ``IdempotencyStoreLike``."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str, str], str] = {}

    async def get(self, run_id: str, tool: str, args: Any) -> str | None:
        return self.results.get((run_id, tool, canonical_args_hash(args)))

    async def put(self, run_id: str, tool: str, args: Any, result: str) -> None:
        self.results.setdefault((run_id, tool, canonical_args_hash(args)), result)


@pytest.fixture
def trace() -> Trace:
    return Trace()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
    db = await Database.open(tmp_path / "x.sqlite3")
    yield IdempotencyStore(db)
    await db.close()


MakeCtx = Callable[..., ToolContext]


@pytest.fixture
def make_ctx(trace: Trace, store: MemoryStore) -> MakeCtx:
    def make(**overrides: Any) -> ToolContext:
        fields: dict[str, Any] = {"run_id": "run-1", "agent": "tester", "emit": trace.emit,
                                  "idempotency": store, "default_timeout_s": 2.0}
        return ToolContext(**{**fields, **overrides})

    return make


@pytest.fixture
def ctx(make_ctx: MakeCtx) -> ToolContext:
    return make_ctx()
