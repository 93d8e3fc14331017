"""Token estimate and prompt cache of the fake Anthropic Messages API.

One estimate is used everywhere (count_tokens, usage, cache sizes, output tokens, max_tokens):
a block costs ``ceil(len(canonical_json(block without cache_control)) / 4)`` tokens, at least 1,
where canonical JSON is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``. Image and document blocks with a base64/url/file source cost a flat
``MEDIA_BLOCK_TOKENS``. A request's input is the sum over tools, system blocks and message content
blocks (string content is first normalised to one text block, and consecutive same-role messages
are merged into one turn, like the real API does).

``FakeAnthropic(tokenizer="bytes")`` swaps in ``adversarial_block_tokens`` everywhere the estimate
is used, to attack keel's input bounds with text that a real tokenizer would split byte by byte.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

CHARS_PER_TOKEN = 4
MEDIA_BLOCK_TOKENS = 1600
CACHE_LOOKBACK_BLOCKS = 20
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}

JSON = dict[str, Any]

TokenizerName = Literal["chars4", "bytes"]
BlockTokens = Callable[[JSON], int]
"""A tokenizer of the fake: the input (or output) tokens of one block."""


def canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def without_cache_control(block: JSON) -> JSON:
    return {k: v for k, v in block.items() if k != "cache_control"}


def estimate_block_tokens(block: JSON) -> int:
    """THE token estimate of one block (a tool definition, a system block or a content block)."""
    body = without_cache_control(block)
    source = body.get("source")
    if body.get("type") in ("image", "document") and isinstance(source, dict):
        if source.get("type") in ("base64", "url", "file"):
            return MEDIA_BLOCK_TOKENS
    return max(1, math.ceil(len(canonical(body)) / CHARS_PER_TOKEN))


def adversarial_block_tokens(block: JSON) -> int:
    """The ``"bytes"`` tokenizer: what a byte-level BPE does to text it has no merges for.

    Printable ASCII still costs a quarter token a character, but every control character and
    every non-ASCII character (CJK, emoji, accents) costs one token per UTF-8 byte, the most any
    byte-level tokenizer can produce. Strings are counted as the model reads them (raw), not as
    JSON escapes them, so a control character is one byte here, not six. Media blocks as THE
    estimate.
    """
    body = without_cache_control(block)
    source = body.get("source")
    if body.get("type") in ("image", "document") and isinstance(source, dict):
        if source.get("type") in ("base64", "url", "file"):
            return MEDIA_BLOCK_TOKENS
    printable = 0
    heavy = 0
    for ch in _raw_render(body):
        if 32 <= ord(ch) < 127:
            printable += 1
        else:
            heavy += len(ch.encode("utf-8", "surrogatepass"))
    return max(1, math.ceil(printable / CHARS_PER_TOKEN) + heavy)


def _raw_render(obj: object) -> str:
    """Canonical JSON with strings left unescaped (the characters the model actually sees)."""
    if isinstance(obj, dict):
        return "{" + ",".join(f'"{k}":{_raw_render(obj[k])}' for k in sorted(obj)) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(_raw_render(v) for v in obj) + "]"
    if isinstance(obj, str):
        return f'"{obj}"'
    return json.dumps(obj)


TOKENIZERS: dict[TokenizerName, BlockTokens] = {
    "chars4": estimate_block_tokens,
    "bytes": adversarial_block_tokens,
}


def normalize_content(content: object) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def normalize_system(system: object) -> list[JSON]:
    return normalize_content(system)


@dataclass
class Turn:
    """Consecutive same-role messages merged into one turn (as the real API does)."""

    role: str
    blocks: list[JSON]
    # (message index, content index) of each block in the original request, for error messages
    origins: list[tuple[int, int]]
    first_message: int


def merge_turns(messages: list[JSON]) -> list[Turn]:
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        role = str(message.get("role"))
        blocks = normalize_content(message.get("content"))
        origins = [(i, j) for j in range(len(blocks))]
        if turns and turns[-1].role == role:
            turns[-1].blocks.extend(blocks)
            turns[-1].origins.extend(origins)
        else:
            turns.append(Turn(role, list(blocks), origins, i))
    return turns


@dataclass
class PrefixItem:
    """One block of the prompt prefix, in the order tools -> system -> messages."""

    fragment: str  # what the cache key hashes (content without cache_control)
    tokens: int
    cache_control: JSON | None
    location: str
    block_type: str


def prefix_items(body: JSON, tokens: BlockTokens = estimate_block_tokens) -> list[PrefixItem]:
    """The flattened prompt of a request, with the top-level (automatic) cache_control applied."""
    items: list[PrefixItem] = []
    for i, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict):
            items.append(_item({"tool": without_cache_control(tool)}, tool, f"tools.{i}", tokens))
    for i, block in enumerate(normalize_system(body.get("system"))):
        items.append(_item({"system": without_cache_control(block)}, block, f"system.{i}", tokens))
    # Changing tool_choice or thinking invalidates the message part of the cache, not tools/system.
    context = canonical({"tool_choice": body.get("tool_choice"), "thinking": body.get("thinking")})
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for t, turn in enumerate(merge_turns(messages)):
        for k, block in enumerate(turn.blocks):
            fragment: JSON = {"role": turn.role, "turn": t, "block": without_cache_control(block)}
            if t == 0 and k == 0:
                fragment["context"] = context
            m, j = turn.origins[k]
            items.append(_item(fragment, block, f"messages.{m}.content.{j}", tokens))
    auto = body.get("cache_control")
    if isinstance(auto, dict):
        # Automatic caching: the breakpoint goes on the last cacheable block.
        for item in reversed(items):
            if item.block_type in ("thinking", "redacted_thinking"):
                continue
            if item.cache_control is None:
                item.cache_control = auto
            break
    return items


def _item(fragment: JSON, block: JSON, location: str, tokens: BlockTokens) -> PrefixItem:
    cc = block.get("cache_control")
    return PrefixItem(
        fragment=canonical(fragment),
        tokens=tokens(block),
        cache_control=cc if isinstance(cc, dict) else None,
        location=location,
        block_type=str(block.get("type")),
    )


def count_input_tokens(body: JSON, tokens: BlockTokens = estimate_block_tokens) -> int:
    return sum(item.tokens for item in prefix_items(body, tokens))


@dataclass
class CacheEntry:
    model: str
    tokens: int
    ttl: str
    expires_at: float


@dataclass
class CacheUsage:
    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    ephemeral_5m_input_tokens: int
    ephemeral_1h_input_tokens: int

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


@dataclass
class PromptCache:
    """Prefix cache keyed by model and the exact content of the prefix (cache_control excluded).

    A breakpoint's prefix is written when it is at least ``min_tokens`` long; a request reads the
    longest live prefix found at a breakpoint or up to ``lookback`` blocks before one; a hit
    refreshes the entry's TTL. Time comes from ``clock`` so tests can expire entries.
    """

    clock: Callable[[], float]
    lookback: int = CACHE_LOOKBACK_BLOCKS
    entries: dict[str, CacheEntry] = field(default_factory=dict)

    def clear(self) -> None:
        self.entries.clear()

    def live_entries(self) -> list[CacheEntry]:
        now = self.clock()
        return [e for e in self.entries.values() if e.expires_at > now]

    def account(self, model: str, items: list[PrefixItem], min_tokens: int) -> CacheUsage:
        keys: list[str] = []
        running = hashlib.sha256(model.encode())
        prefix: list[int] = []
        total = 0
        for item in items:
            running.update(item.fragment.encode())
            running.update(b"\x00")
            keys.append(running.copy().hexdigest())
            total += item.tokens
            prefix.append(total)

        now = self.clock()
        breakpoints = [i for i, item in enumerate(items) if item.cache_control is not None]

        read_at = -1
        for b in breakpoints:
            for p in range(b, max(-1, b - self.lookback), -1):
                entry = self.entries.get(keys[p])
                if entry is not None and entry.expires_at > now:
                    read_at = max(read_at, p)
                    break
        if read_at >= 0:
            entry = self.entries[keys[read_at]]
            entry.expires_at = now + TTL_SECONDS[entry.ttl]

        def before(i: int) -> int:
            return prefix[i] if i >= 0 else 0

        written = {"5m": 0, "1h": 0}
        last = read_at
        for b in breakpoints:
            if b <= read_at or prefix[b] < min_tokens:
                continue
            ttl = _ttl(items[b].cache_control)
            written[ttl] += before(b) - before(last)
            last = b
            self.entries[keys[b]] = CacheEntry(model, prefix[b], ttl, now + TTL_SECONDS[ttl])

        read = before(read_at)
        creation = written["5m"] + written["1h"]
        return CacheUsage(
            input_tokens=total - read - creation,
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=read,
            ephemeral_5m_input_tokens=written["5m"],
            ephemeral_1h_input_tokens=written["1h"],
        )


def _ttl(cache_control: JSON | None) -> str:
    ttl = (cache_control or {}).get("ttl", "5m")
    return ttl if ttl in TTL_SECONDS else "5m"


# ------------------------------------------------------------------------- output (same estimate)


def apply_stop_sequences(content: list[JSON], stops: list[str]) -> tuple[list[JSON], str | None]:
    """Cut the first text block at the earliest stop sequence (which is not returned)."""
    for index, block in enumerate(content):
        if block.get("type") != "text":
            continue
        found = [(block["text"].find(s), s) for s in stops if s and s in block["text"]]
        if found:
            pos, seq = min(found)
            cut = {**block, "text": block["text"][:pos]}
            kept = content[:index] + ([cut] if cut["text"] else [])
            return kept, seq
    return content, None


def truncate_output(
    content: list[JSON],
    budget: int,
    sign: Callable[[str], str],
    tokens: BlockTokens = estimate_block_tokens,
) -> tuple[list[JSON], bool]:
    """Keep what fits in ``budget`` output tokens (by THE estimate), cutting a text or thinking
    block inside (a cut thinking block is re-signed with ``sign``); blocks after it are dropped."""
    kept: list[JSON] = []
    for block in content:
        cost = tokens(block)
        if cost <= budget:
            kept.append(block)
            budget -= cost
            continue
        key = {"text": "text", "thinking": "thinking"}.get(str(block.get("type")))
        if key is not None:
            lo, hi = 0, len(block[key])
            while lo < hi:  # longest prefix whose block still fits
                mid = (lo + hi + 1) // 2
                if tokens(_cut(block, key, mid, sign)) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            if lo > 0:
                kept.append(_cut(block, key, lo, sign))
        return kept, True
    return kept, False


def _cut(block: JSON, key: str, length: int, sign: Callable[[str], str]) -> JSON:
    cut = {**block, key: block[key][:length]}
    if key == "thinking":
        cut["signature"] = sign(cut["thinking"])
    return cut
