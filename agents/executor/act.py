"""Execute a turn's tool calls, concurrently, each bounded by its own timeout."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.tools.contract import ToolCall, ToolCatalog, ToolContext, ToolOutcome


async def run_tools(
    catalog: ToolCatalog, ctx: ToolContext, tool_uses: list[dict[str, Any]]
) -> list[ToolOutcome]:
    calls = [ToolCall(id=b["id"], name=b["name"], input=b.get("input") or {}) for b in tool_uses]
    # Tool failures come back as error outcomes; only cancellation (the run's deadline) propagates.
    return list(await asyncio.gather(*(catalog.invoke(call, ctx) for call in calls)))


def results_message(
    tool_uses: list[dict[str, Any]], outcomes: list[ToolOutcome], extra: list[dict[str, Any]]
) -> dict[str, Any]:
    """The user message that answers every tool_use, tool results first as the API requires."""
    blocks = [o.to_block(b["id"]) for b, o in zip(tool_uses, outcomes, strict=True)]
    return {"role": "user", "content": blocks + extra}
