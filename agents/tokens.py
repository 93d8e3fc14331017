"""A local, conservative token estimate for budget reservations (no tokenizer download).

It errs high on purpose: the budget reserves the worst case before a call, and within a run the
executor anchors on the exact input count the API reported for the previous call, so the estimate
only covers what was added since.
"""

from __future__ import annotations

import json
import math
from typing import Any

PER_BLOCK_OVERHEAD = 8


def estimate_text(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    other = len(text) - ascii_chars
    # ~3 ASCII characters per token is below the real average (~3.5-4), so this overestimates;
    # other scripts and emoji are counted one token or more per character.
    return math.ceil(ascii_chars / 3) + other * 2


def estimate(value: Any) -> int:
    """Tokens of a request fragment: messages, blocks, system, tools."""
    if isinstance(value, str):
        return estimate_text(value)
    if isinstance(value, list):
        return sum(estimate(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") == "text" and isinstance(value.get("text"), str):
            return estimate_text(value["text"]) + PER_BLOCK_OVERHEAD
        if "role" in value and "content" in value:
            return estimate(value["content"]) + PER_BLOCK_OVERHEAD
        return estimate_text(json.dumps(value, ensure_ascii=False, separators=(",", ":"))) + PER_BLOCK_OVERHEAD
    return estimate_text(str(value))
