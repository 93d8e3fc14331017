"""Prompt-cache placement: one breakpoint ends the stable prefix, one moves with the conversation.

The request prefix is tools → system → messages. Tools and system stay byte-identical across turns
(no timestamps, deterministic schemas), so a breakpoint on the last system block caches both. The
second breakpoint sits on the last block of the last message; on the next call the API finds the
previous call's prefix within its look-back and reads it from the cache. Markers are added to
copies at request time and never stored in history.
"""

from __future__ import annotations

import copy
from typing import Any

EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
_UNCACHEABLE = {"thinking", "redacted_thinking"}


def caches(agent: str) -> bool:
    """Whether an agent's requests carry cache breakpoints. Internal agents (``_compactor``)
    send one-off requests nobody reads again: a breakpoint there only writes (1.25× input) what
    is never read, so they send none."""
    return not agent.startswith("_")


def system_blocks(system: str, *, cache: bool = True) -> list[dict[str, Any]]:
    """The system prompt as one text block that ends the stable prefix (marked when cached)."""
    if not cache:
        return [{"type": "text", "text": system}]
    return [{"type": "text", "text": system, "cache_control": dict(EPHEMERAL)}]


def tools_without_markers(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in t.items() if k != "cache_control"} for t in tools]


def with_moving_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of ``messages`` with a breakpoint on the last cacheable block of the last message."""
    if not messages:
        return []
    out = list(messages[:-1])
    last = copy.deepcopy(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
        last["content"] = content
    for block in reversed(content):
        if block.get("type") not in _UNCACHEABLE:
            block["cache_control"] = dict(EPHEMERAL)
            break
    out.append(last)
    return out


def cache_hit_ratio(input_tokens: int, cache_read: int, cache_write: int) -> float:
    total = input_tokens + cache_read + cache_write
    return cache_read / total if total else 0.0
