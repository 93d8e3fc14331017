"""Prompt-cache placement and lifetime.

The request prefix is tools → system → messages. Tools and system stay byte-identical across turns
(no timestamps, deterministic schemas), so a breakpoint on the last system block caches both. A
second breakpoint ends the conversation's *stable head*: its first turn (when small, it is kept
verbatim by compaction) and the summaries compaction put after it; compaction never rewrites the
head, only appends a summary after it, so after a compaction the request still reads the head
from the cache and writes only what follows. The third breakpoint sits on the last block of the
last message; on the next call the API finds the previous call's prefix within its look-back and
reads it from the cache. Markers are added to copies at request time and never stored in history.

Lifetime (``CachePlan``): writes are 5-minute entries unless the session's own rhythm makes a
1-hour write cheaper (``plan_cache``): the moving breakpoint when enough of its recent gaps
between turns were 5-60 minutes that rewriting the whole context after them costs more than the
dearer writes; the head (and the system prefix before it) when the next compaction — the moment
the head is read again on its own — is expected between 5 minutes and an hour from now. A
5-minute entry is refreshed only when it is the longest prefix read, so the head's entry would
be long gone by then.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any, Literal

from agents.budget import MIN_USEFUL_OUTPUT_TOKENS
from agents.pricing import PER_MILLION, Price, dearest_input_rate, ttl_pays
from agents.tokens import TOOLS_PROMPT_TOKENS, bound, estimate

EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
_UNCACHEABLE = {"thinking", "redacted_thinking"}

Ttl = Literal["5m", "1h"]
SUMMARY_TAG = "[Summary of the earlier conversation]"
"""How a compaction summary's text begins (agents/sessions.py writes it, the head is found by it)."""
FIRST_TURN_PIN_TOKENS = 2_000
PIN_FRACTION = 0.1
"""A first turn of at most this many tokens (``agents.tokens.estimate``), and at most this
fraction of the compaction threshold, is kept verbatim by compaction: it is the head of the
cached prefix (and usually says what the conversation is for)."""
SHORT_TTL_S, LONG_TTL_S = 300.0, 3600.0


def pin_limit(compact_at_tokens: int | None) -> int:
    """The largest first turn compaction keeps verbatim (``FIRST_TURN_PIN_TOKENS``)."""
    if compact_at_tokens is None:
        return FIRST_TURN_PIN_TOKENS
    return min(FIRST_TURN_PIN_TOKENS, int(compact_at_tokens * PIN_FRACTION))


def marker(ttl: Ttl = "5m") -> dict[str, str]:
    """A breakpoint's ``cache_control``: 5-minute markers stay the API's default shape."""
    return dict(EPHEMERAL) if ttl == "5m" else {**EPHEMERAL, "ttl": "1h"}


def caches(agent: str) -> bool:
    """Whether an agent's requests carry cache breakpoints. Internal agents (``_compactor``)
    send one-off requests nobody reads again: a breakpoint there only writes (1.25× input) what
    is never read, so they send none."""
    return not agent.startswith("_")


# ------------------------------------------------------------------ the plan: which TTL, and why


@dataclass(frozen=True, kw_only=True)
class CachePlan:
    """The TTL of a run's cache writes: ``head`` for the system prefix and the stable head,
    ``tail`` for the moving breakpoint (a 1-hour marker may not follow a 5-minute one, so a
    1-hour tail implies a 1-hour head)."""

    head: Ttl = "5m"
    tail: Ttl = "5m"
    why: str = "default"
    pin_tokens: int = FIRST_TURN_PIN_TOKENS
    """The largest first turn that is part of the head (``pin_limit`` of the session)."""

    def as_dict(self) -> dict[str, Any]:
        return {"head": self.head, "tail": self.tail, "why": self.why,
                "pin_tokens": self.pin_tokens}

    @classmethod
    def from_dict(cls, value: Any) -> CachePlan | None:
        if not isinstance(value, dict):
            return None
        head, tail = value.get("head"), value.get("tail")
        if head not in ("5m", "1h") or tail not in ("5m", "1h"):
            return None
        pin = value.get("pin_tokens")
        return cls(head=head, tail=tail, why=str(value.get("why") or ""),
                   pin_tokens=int(pin) if isinstance(pin, int) else FIRST_TURN_PIN_TOKENS)


DEFAULT_PLAN = CachePlan(why="5-minute writes: no gap between turns seen in this session yet")


@dataclass(frozen=True, kw_only=True)
class CacheForecast:
    """What a session knows about its own rhythm when a turn starts (``agents.sessions``)."""

    gaps_s: tuple[float, ...]
    """Seconds between the starts of its recent turns, oldest first."""
    context_tokens: int
    """The input of its last call (exact when the session kept it), or an estimate."""
    head_tokens: int
    """The stable head: what compaction keeps (its first turn when pinned, its summaries)."""
    turn_tokens: float
    """Tokens a turn adds to the history, on average."""
    compact_at_tokens: int
    history_tokens: int
    """The history by the estimate compaction uses (it compacts past ``compact_at_tokens``)."""
    prefix_tokens: int = 0
    """The agent's tools and system. When the head's entry is gone at the next compaction, they
    are written again with it, unless another session of the agent kept them cached."""
    head_new: bool = True
    """Whether this run writes the head: it is new (the first turn just became it, or a
    compaction just put a summary in it) or its entry has expired (the last gap was longer than
    5 minutes). Otherwise the run reads the head inside a longer cached prefix and writes no entry
    for it, so the head's TTL was settled when it was written: a marker changed now writes
    nothing and only makes the reservation dearer."""

    def as_dict(self) -> dict[str, Any]:
        return {"gaps_s": [round(g, 1) for g in self.gaps_s],
                "context_tokens": self.context_tokens, "head_tokens": self.head_tokens,
                "turn_tokens": round(self.turn_tokens, 1),
                "compact_at_tokens": self.compact_at_tokens,
                "history_tokens": self.history_tokens, "prefix_tokens": self.prefix_tokens,
                "head_new": self.head_new}


def plan_cache(price: Price, forecast: CacheForecast | None, *,
               budget_usd: float | None = None) -> CachePlan:
    """The cheapest TTLs for a session's next run, by its own gaps between turns and the price.

    Tail: a gap of 5-60 minutes makes a 5-minute entry expire and the next turn rewrite the whole
    context; a 1-hour entry survives it but every turn's new tokens are written at the dearer
    rate. 1 hour when the share of such gaps × the rewrite avoided outweighs that.
    Head: read again on its own at the next compaction (which rewrites everything after it);
    1 hour when that is expected between 5 minutes and an hour from now, and the dearer write of
    at most the head costs less than rewriting it then."""
    if forecast is None:
        return DEFAULT_PLAN
    pin = pin_limit(forecast.compact_at_tokens)
    if not forecast.gaps_s:
        return replace(DEFAULT_PLAN, pin_tokens=pin)
    gaps = forecast.gaps_s
    typical = statistics.median(gaps)
    long = sum(1 for g in gaps if SHORT_TTL_S < g <= LONG_TTL_S)
    share = long / len(gaps)
    if long and ttl_pays(price, chance=share, rewrite_tokens=forecast.context_tokens,
                         written_tokens=forecast.turn_tokens) \
            and _hour_fits(price, forecast, budget_usd, hour_tokens=None):
        return CachePlan(head="1h", tail="1h", pin_tokens=pin, why=(
            f"1-hour writes: {long} of the last {len(gaps)} gaps between turns were 5-60 min; "
            f"rewriting ~{forecast.context_tokens} tokens after such a gap costs more than "
            f"writing ~{forecast.turn_tokens:.0f} a turn at the 1-hour rate"))
    left = max(0, forecast.compact_at_tokens - forecast.history_tokens)
    eta = left / max(forecast.turn_tokens, 1.0) * typical
    gap_note = (f"{len(gaps) - long} of the last {len(gaps)} gaps under 5 min" if not long else
                f"{long} of the last {len(gaps)} gaps 5-60 min, too few to pay")
    if not forecast.head_new:
        return CachePlan(pin_tokens=pin, why=(
            f"5-minute writes: the head is already cached (its lifetime was chosen when it was "
            f"written); {gap_note}; next compaction in ~{eta / 60:.0f} min"))
    chance = compaction_chance(eta, samples=len(gaps))
    rewrite = forecast.head_tokens + forecast.prefix_tokens
    if forecast.head_tokens and ttl_pays(price, chance=chance, rewrite_tokens=rewrite,
                                         written_tokens=forecast.head_tokens) \
            and _hour_fits(price, forecast, budget_usd, hour_tokens=rewrite):
        return CachePlan(head="1h", tail="5m", pin_tokens=pin, why=(
            f"head 1 hour: the next compaction is expected in ~{eta / 60:.0f} min ({chance:.0%} "
            f"likely 5-60 min from now, by {len(gaps)} gap(s)) and reads the head's "
            f"~{forecast.head_tokens} tokens (~{rewrite} with tools and system); tail 5 min: "
            f"{gap_note}"))
    return CachePlan(pin_tokens=pin, why=f"5-minute writes: {gap_note}; next compaction in ~{eta / 60:.0f} min")


def _hour_fits(price: Price, forecast: CacheForecast, budget_usd: float | None, *,
               hour_tokens: float | None) -> bool:
    """Whether the run's first call still fits ``budget_usd`` with 1-hour markers: its worst case
    prices every token up to the last 1-hour marker (``hour_tokens``; None: all of them) at the
    1-hour write rate (2x input, against 1.25x). A cheaper cache is not worth a refused turn:
    under a cap the 5-minute plan fits, the 1-hour one may not."""
    if budget_usd is None:
        return True
    tokens = max(forecast.context_tokens, forecast.prefix_tokens + forecast.history_tokens) \
        + forecast.turn_tokens
    hour = tokens if hour_tokens is None else min(hour_tokens, tokens)
    usd = (hour * dearest_input_rate(price, "1h") + (tokens - hour) * dearest_input_rate(price, "5m")
           + MIN_USEFUL_OUTPUT_TOKENS * price.output) / PER_MILLION
    return usd <= budget_usd


def compaction_chance(eta_s: float, *, samples: int) -> float:
    """How likely the next compaction is 5-60 minutes away (when a head written now for 5 minutes
    has expired and one written for an hour has not), when ``samples`` gaps between turns put it
    ``eta_s`` away.

    The forecast is the tokens left over the average turn, times the typical gap; with few gaps
    seen it is a guess: people's gaps vary about as much as they last (a coefficient of variation
    near 1), so the log of the real time is taken as normal around the log of the forecast with a
    spread of 1/sqrt(samples). One gap of 112 s put a compaction 79 min away that came after 44
    (the bench's seed 2): a 39% chance of being within the hour, not none."""
    if eta_s <= 0 or samples <= 0:
        return 0.0
    spread = NormalDist(math.log(eta_s), 1 / math.sqrt(samples))
    return spread.cdf(math.log(LONG_TTL_S)) - spread.cdf(math.log(SHORT_TTL_S))


# ------------------------------------------------------------------ where the breakpoints go


def system_blocks(system: str, *, cache: bool = True, ttl: Ttl = "5m") -> list[dict[str, Any]]:
    """The system prompt as one text block that ends the stable prefix (marked when cached)."""
    if not cache:
        return [{"type": "text", "text": system}]
    return [{"type": "text", "text": system, "cache_control": marker(ttl)}]


def tools_without_markers(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in t.items() if k != "cache_control"} for t in tools]


def with_ttl(system: list[dict[str, Any]], ttl: Ttl) -> list[dict[str, Any]]:
    """System blocks with their markers set to ``ttl`` (copies; unmarked blocks stay so)."""
    if ttl == "5m":
        return system
    return [{**b, "cache_control": marker(ttl)} if "cache_control" in b else b for b in system]


def _turn_start(message: dict[str, Any]) -> bool:
    content = message.get("content")
    blocks = content if isinstance(content, list) else []
    return message.get("role") == "user" and not any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks)


def _is_summary(block: Any) -> bool:
    return (isinstance(block, dict) and block.get("type") == "text"
            and str(block.get("text", "")).startswith(SUMMARY_TAG))


def first_turn_pinned(messages: list[dict[str, Any]], limit: int = FIRST_TURN_PIN_TOKENS) -> bool:
    """Whether a first turn (its messages) is small enough for compaction to keep verbatim."""
    return bool(messages) and estimate(messages) <= limit and not any(
        _is_summary(b) for m in messages for b in (m.get("content") or [])
        if isinstance(m.get("content"), list))


def head_end(messages: list[dict[str, Any]], pin_tokens: int = FIRST_TURN_PIN_TOKENS
             ) -> tuple[int, int] | None:
    """(message, block) of the last block of the stable head, or None: the first turn when it is
    complete and pinned, then the summaries at the start of the next turn's message."""
    if not messages:
        return None
    end: tuple[int, int] | None = None
    i = 0
    if not _starts_with_summary(messages[0]):
        nxt = next((k for k in range(1, len(messages)) if _turn_start(messages[k])), None)
        if nxt is None or not first_turn_pinned(messages[:nxt], pin_tokens):
            return None
        last = messages[nxt - 1]
        content = last.get("content")
        count = len(content) if isinstance(content, list) else 1
        end, i = (nxt - 1, count - 1), nxt
    content = messages[i].get("content") if i < len(messages) else None
    if isinstance(content, list):
        for k, block in enumerate(content):
            if not _is_summary(block):
                break
            end = (i, k)
    return end


def _starts_with_summary(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and bool(content) and _is_summary(content[0])


def with_breakpoints(messages: list[dict[str, Any]], plan: CachePlan | None = None
                     ) -> list[dict[str, Any]]:
    """A copy of ``messages`` with a breakpoint at the end of the stable head (when it ends
    before the last block) and one on the last cacheable block of the last message."""
    if not messages:
        return []
    plan = plan or DEFAULT_PLAN
    out = list(messages)
    head = head_end(messages, plan.pin_tokens)
    last = messages[-1].get("content")
    if head is not None and (head[0] < len(messages) - 1
                             or (isinstance(last, list) and head[1] < len(last) - 1)):
        out[head[0]] = _marked(out[head[0]], head[1], plan.head)
    out[-1] = _marked(out[-1], None, plan.tail)
    return out


def with_moving_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of ``messages`` with a breakpoint on the last cacheable block of the last message."""
    if not messages:
        return []
    return [*messages[:-1], _marked(messages[-1], None, "5m")]


def _marked(message: dict[str, Any], index: int | None, ttl: Ttl) -> dict[str, Any]:
    """A copy of ``message`` with a marker on block ``index`` (None: the last cacheable one)."""
    message = copy.deepcopy(message)
    content = message["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
        message["content"] = content
    order = [index] if index is not None else list(range(len(content) - 1, -1, -1))
    for k in order:
        if content[k].get("type") not in _UNCACHEABLE:
            content[k]["cache_control"] = marker(ttl)
            break
    return message


def one_hour_bound(body: dict[str, Any]) -> int:
    """Tokens of a request body that a 1-hour write can bill (an upper bound by
    ``agents.tokens.bound``): everything up to and including its last 1-hour breakpoint; 0 when
    it has none. Later tokens are written, if at all, by a 5-minute breakpoint."""
    tools = list(body.get("tools") or [])
    system = body.get("system")
    system = system if isinstance(system, list) else []
    messages = list(body.get("messages") or [])

    def long(block: Any) -> bool:
        return isinstance(block, dict) and (block.get("cache_control") or {}).get("ttl") == "1h"

    tools_part = TOOLS_PROMPT_TOKENS if tools else 0
    for m in range(len(messages) - 1, -1, -1):
        content = messages[m].get("content")
        blocks = content if isinstance(content, list) else []
        for k in range(len(blocks) - 1, -1, -1):
            if long(blocks[k]):
                return (tools_part + bound(tools) + bound(system) + bound(messages[:m])
                        + bound({**messages[m], "content": blocks[:k + 1]}))
    for i in range(len(system) - 1, -1, -1):
        if long(system[i]):
            return tools_part + bound(tools) + bound(system[:i + 1])
    for i in range(len(tools) - 1, -1, -1):
        if long(tools[i]):
            return tools_part + bound(tools[:i + 1])
    return 0


def cache_hit_ratio(input_tokens: int, cache_read: int, cache_write: int) -> float:
    total = input_tokens + cache_read + cache_write
    return cache_read / total if total else 0.0
