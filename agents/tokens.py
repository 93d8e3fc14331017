"""Local token sizes without a tokenizer download: an estimate, and an upper bound.

``estimate`` is a typical size (ASCII characters ÷ 3): good for compaction thresholds and traces,
but NOT an upper bound (30,000 control characters estimate at 10,000 tokens and may bill 30,000+).
``bound`` is one: budget reservations use it, tightened by the API's exact counts (see
agents/executor/call.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from agents.attachments import block_bound, block_estimate

PER_BLOCK_OVERHEAD = 8


def estimate_text(text: str) -> int:
    # (the ASCII characters counted in C: this runs over every request's text, every call)
    ascii_chars = len(text) if text.isascii() else len(text.encode("ascii", "ignore"))
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
        media = block_estimate(value)  # an image or a PDF: its pixels and pages, not its JSON
        if media is not None:
            return media + PER_BLOCK_OVERHEAD
        if "role" in value and "content" in value:
            return estimate(value["content"]) + PER_BLOCK_OVERHEAD
        return estimate_text(json.dumps(value, ensure_ascii=False, separators=(",", ":"))) + PER_BLOCK_OVERHEAD
    return estimate_text(str(value))


# ------------------------------------------------------------------ the upper bound

BLOCK_FRAMING_TOKENS = 16
"""What the API may add around one block or message beyond its own bytes (role and block markers)."""
TOOLS_PROMPT_TOKENS = 1024
"""The tool-use system prompt the API adds when tools are defined (346 tokens on Claude 4-era
models by Anthropic's table; 1024 leaves room for older or future ones)."""


def bound_bytes(value: Any) -> int:
    """UTF-8 bytes of a request fragment as JSON (no ``cache_control``): the size the bound uses."""
    return len(_canonical(value).encode("utf-8", "surrogatepass"))


def bound(value: Any) -> int:
    """Tokens of a request fragment that no tokenizer can exceed.

    Factor 1 token per UTF-8 byte, plus ``BLOCK_FRAMING_TOKENS`` per block or message. Why it holds:
    Claude's tokenizer, like every byte-level BPE, has each of the 256 bytes in its vocabulary and
    only merges bytes into longer tokens, so no token covers less than one byte and no text becomes
    more tokens than it has bytes — control characters, CJK and emoji included (they are the worst
    case: one token per byte). The bytes counted are those of the fragment's JSON, which is never
    shorter than the text the model reads: a text block's JSON contains its text, tool inputs and
    schemas are read as JSON, and JSON escapes (``\\u0001``) only lengthen it. What the API adds
    around blocks (role headers, block markers) is covered by the per-block framing; the tool-use
    system prompt by ``TOOLS_PROMPT_TOKENS`` (see ``request_bound``). For ordinary English the
    bound is about 4× the real count, so the executor tightens it with exact counts from the API
    (the previous call's usage, the count endpoint) wherever it has them.
    """
    if isinstance(value, list):
        return sum(bound(v) for v in value)
    if isinstance(value, dict):
        if "role" in value and "content" in value:
            content = value["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            return bound(content) + BLOCK_FRAMING_TOKENS
        media = block_bound(value)  # an image or a PDF: see agents/attachments.py
        if media is not None:
            return media + BLOCK_FRAMING_TOKENS
        return bound_bytes(value) + BLOCK_FRAMING_TOKENS
    return bound_bytes(value) + BLOCK_FRAMING_TOKENS


def request_bound(system: list[dict[str, Any]], tools: list[dict[str, Any]],
                  messages: list[dict[str, Any]]) -> int:
    """``bound`` of a whole request: tools, system, messages and the tool-use system prompt."""
    return bound(tools) + bound(system) + bound(messages) + (TOOLS_PROMPT_TOKENS if tools else 0)


def _canonical(value: Any) -> str:
    if isinstance(value, dict):  # a block's own marker only: inside, a key is data
        value = {k: v for k, v in value.items() if k != "cache_control"}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_DIGEST_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


class MessagesDigest:
    """A digest of a prefix and messages as the API reads them (cache markers left out): an
    exact count kept for them is reused only while it still matches (``InputAnchor.seeded``).

    A run's messages only grow, and its anchor is checked at the start over the history and
    kept at the end over history and run: each message is hashed once, the hash state moving
    on (a list whose hashed part changed, by identity, is hashed again from the start). One
    JSON encoding a message: the history of a long session took ~1.2 ms a digest encoded block
    by block and then again as a whole, twice a turn."""

    def __init__(self, prefix_sha256: str) -> None:
        self.prefix = prefix_sha256
        self._start = prefix_sha256.encode()
        self._hash = hashlib.sha256(self._start)
        self._hashed: list[int] = []
        """``id`` of each message hashed so far (alive: the caller's list holds them)."""

    def of(self, messages: list[dict[str, Any]], count: int) -> str:
        """The digest of the prefix and ``messages[:count]``."""
        hashed = self._hashed
        if count < len(hashed) or any(id(m) != h for m, h in zip(messages, hashed, strict=False)):
            self._hash, hashed = hashlib.sha256(self._start), []
            self._hashed = hashed
        update = self._hash.update
        for message in messages[len(hashed):count]:
            content = message.get("content")
            if isinstance(content, str):
                blocks: Any = [{"type": "text", "text": content}]
            else:
                blocks = [{k: v for k, v in b.items() if k != "cache_control"}
                          if isinstance(b, dict) and "cache_control" in b else b
                          for b in content or []]
            update(_DIGEST_JSON.encode([message.get("role"), blocks]).encode(
                "utf-8", "surrogatepass"))
            update(b"\x00")
            hashed.append(id(message))
        return self._hash.copy().hexdigest()


def messages_digest(prefix_sha256: str, messages: list[dict[str, Any]]) -> str:
    """``MessagesDigest`` of all of ``messages``, in one go."""
    return MessagesDigest(prefix_sha256).of(messages, len(messages))
