"""Stored history as request messages: one shape for runs, budgets and the session anchor."""

from __future__ import annotations

from typing import Any

from storage.conversations import StoredMessage


def to_messages(history: list[StoredMessage]) -> list[dict[str, Any]]:
    """Stored history → request messages; adjacent same-role messages are merged (a summary sits
    before the next person's message)."""
    out: list[dict[str, Any]] = []
    for m in history:
        if out and out[-1]["role"] == m.role:
            out[-1] = {"role": m.role, "content": [*out[-1]["content"], *m.content]}
        else:
            out.append({"role": m.role, "content": list(m.content)})
    return out
