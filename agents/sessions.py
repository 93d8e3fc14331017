"""Sessions: a conversation's history per agent, loaded per message, appended per turn, compacted
rarely.

Compaction keeps a *stable head* (``agents.caching``): the first turn when it is small, and the
summaries of earlier compactions, byte for byte; the oldest turns after it are summarised into
one more summary placed right after the head. The cached prefix up to the head's end survives
the compaction, so only the new summary and the turns kept after it are written again. When the
summaries grow past ``SUMMARY_HEAD_FRACTION`` of the compaction target they are folded into one
(a full rewrite, rare).

The summary is asked of the session's own agent first, right after its turn: the request repeats
that turn's tools, system and history byte for byte and adds one instruction (``summary_request``),
so the old turns are read from the prompt cache the turn just wrote (0.1× input) instead of being
sent again uncached to a separate summariser. When that cannot work (a plan-execute agent, an
agent that does not cache, a tool call instead of a summary, a failure) the old turns go to the
``_compactor`` as a transcript, and when that fails too they are dropped.

Each session also keeps the gaps between its recent turns (in memory, seeded from its runs after
a restart): they choose the TTL of the next run's cache writes (``agents.caching.plan_cache``).

A *turn* starts with a person's message and ends with the agent's answer; every turn in stored
history is resolved (runs that stop early leave a closed transcript), so compaction can always cut
at a turn boundary and never in the middle of a tool loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from agents.budget import MIN_USEFUL_OUTPUT_TOKENS
from agents.caching import (
    SHORT_TTL_S,
    SUMMARY_TAG,
    CacheForecast,
    caches,
    first_turn_pinned,
    pin_limit,
)
from agents.executor.loop import OnProgress
from agents.history import to_messages
from agents.pricing import PER_MILLION, dearest_input_rate
from agents.router import RouteDecision
from agents.run import RunResult
from agents.runtime import OnCommit, RunRequest, Runtime
from agents.spec import AgentSpec, Limits
from agents.tokens import estimate
from storage.conversations import StoredMessage
from storage.session_counts import SessionCounts

log = logging.getLogger(__name__)

DEFAULT_COMPACT_TO_FRACTION = 0.25
"""Compact down to this fraction of KEEL_COMPACT_AT_TOKENS, so compaction (and the cache break
it causes) stays rare."""
KEEP_RECENT_TURNS = 2
SUMMARY_HEAD_FRACTION = 0.25
"""The head's summaries are folded into one when they would pass this fraction of the target."""
GAPS_KEPT = 8
"""Gaps between turns a session's cache forecast looks at."""

COMPACTOR = AgentSpec(
    name="_compactor",
    description="internal: summarises old conversation turns",
    system=(
        "You compress conversation history for an assistant. Write a faithful summary of the "
        "conversation you are given: the person's goals, facts they stated (names, numbers, "
        "preferences, decisions), what the assistant answered or did, and anything left open. "
        "Keep concrete details that later turns may need. Plain prose or bullets, no preamble, "
        "at most 300 words."
    ),
    limits=Limits(budget_usd=0.05, max_steps=1, timeout_s=60, max_tokens=1024),
)


@dataclass(frozen=True, kw_only=True)
class TurnResult:
    result: RunResult
    session_id: int
    agent: str
    compacted: bool
    history_tokens: int | None = None
    """The session's history after the turn, by the stored estimates (``maybe_compact``'s
    test without reading the history again); None when unknown."""
    outgrown: bool = False
    """The history has outgrown the agent's run cap: the next turn's first call, with room for
    a turn like the recent ones, would cost more than the cap (``maybe_compact`` compacts now,
    below ``compact_at_tokens``)."""


SEED_STARTS_SQL = ("SELECT started_at FROM runs WHERE session_id = ?"
                   " ORDER BY started_at DESC LIMIT ?")
"""When a session's last turns started (``runs_by_session`` answers it)."""


async def _nothing() -> None:
    return None


class Sessions:
    def __init__(
        self,
        runtime: Runtime,
        *,
        compact_at_tokens: int | None = None,
        compact_to_fraction: float = DEFAULT_COMPACT_TO_FRACTION,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.runtime = runtime
        self.clock = clock or time.time
        """Seconds; when turns start (the bench passes the fake API's cache clock)."""
        self._starts: dict[int, list[float]] = {}
        self.compact_at_tokens = compact_at_tokens or runtime.settings.compact_at_tokens
        self.compact_to_fraction = compact_to_fraction
        self.repo = runtime.conversations
        self.counts = SessionCounts(runtime.db)

    async def turn(
        self,
        *,
        chat_id: int,
        thread_id: int | None,
        agent: str,
        content: list[dict[str, Any]],
        user_id: int | None,
        kind: str = "chat",
        on_progress: OnProgress | None = None,
        run_id: str | None = None,
        route: RouteDecision | None = None,
        request_key: str | None = None,
        started: float | None = None,
        on_commit: OnCommit | None = None,
        on_start: Callable[[Any], Awaitable[None]] | None = None,
        compact: bool | None = None,
        conversation: Any | None = None,
        daily_caps_checked: bool = False,
    ) -> TurnResult:
        """One person's message through one run. The turn's history commits in the same
        transaction as the run's outcome (and whatever ``on_commit`` adds: its reply), so a crash
        can neither lose a turn nor record it twice. Compaction is left to the caller
        (``maybe_compact`` after the reply is out) when ``on_commit`` is given; otherwise it
        follows here. ``conversation``: the chat's row when the caller just read it.
        ``daily_caps_checked``: the caller just refused the turn if a daily cap had nothing left,
        and made no model call since (the run does not read the caps again)."""
        if conversation is None:
            conversation = await self.repo.get_or_create(chat_id, thread_id)
        session_id = await self.repo.live_session(conversation.id, agent)
        # the reads at once (the database has several readers): under a burst each read is a
        # hop to a reader thread and back, and a message waits for its hops one after another
        # while it holds an intake slot (issue 15)
        history, anchor, seeded = await asyncio.gather(
            self.repo.history(session_id), self.counts.anchor(session_id),
            self._seed_starts(session_id) if session_id not in self._starts else _nothing())
        messages = to_messages(history)
        turns = split_turns(history)
        task = {"role": "user", "content": content}
        request = RunRequest(
            agent=agent, messages=[*messages, task], new_from=len(messages),
            kind="chat" if kind == "chat" else "cli", user_id=user_id, chat_id=chat_id,
            thread_id=thread_id, session_id=session_id, route=route, request_key=request_key,
            started=started, session_anchor=anchor,
            cache_forecast=self._forecast(session_id, history, turns, anchor, agent,
                                          seeded=seeded),
            on_start=on_start,
            daily_caps_checked=daily_caps_checked, chat_model=conversation.model,
            chat_model_known=True,
        )

        appended = 0

        async def commit(conn: Any, result: RunResult) -> None:
            nonlocal appended
            if not parked(result):
                appended = await self.record_in(conn, session_id, result)
                # the exact input size of the last call, for the next turn's first reservation
                await SessionCounts.save_anchor_in(conn, session_id, result.anchor)
            if on_commit is not None:
                await on_commit(conn, result)

        result = await self.runtime.run(request, on_progress=on_progress, run_id=run_id,
                                        on_commit=commit)
        after = sum(m.tokens for m in history) + appended
        outgrown = self.outgrows_cap(
            agent, history_tokens=after, turns=len(turns) + 1,
            exact=result.anchor.tokens + appended if result.anchor is not None else None,
            model=conversation.model if kind == "chat" else None, budget_usd=result.budget_usd)
        compacted = False
        if compact if compact is not None else on_commit is None:
            compacted = await self.maybe_compact(session_id, user_id=user_id,
                                                 history_tokens=after, outgrown=outgrown)
        return TurnResult(result=result, session_id=session_id, agent=agent, compacted=compacted,
                          history_tokens=after, outgrown=outgrown)

    def outgrows_cap(self, agent: str, *, history_tokens: int, turns: int,
                     exact: int | None, model: str | None = None,
                     budget_usd: float | None = None) -> bool:
        """Whether the next turn's first call could no longer be paid from ``agent``'s run cap:
        its input (``exact``: the last call's exact input plus what the turn appended; else the
        prefix and the history by estimate) plus room for a turn like the average one, as
        input for the question and as output for the answer, at the dearest rates.

        Compaction waits for ``compact_at_tokens``; under a small cap the history would pass
        what one run can pay first, and then every turn was refused before any call, for good:
        a refused turn adds nothing, so the threshold was never reached (issue 13).

        ``model``: the chat's /model choice, whose price is used while it has one (as the run
        does); ``budget_usd``: the run's own cap (else the agent's)."""
        spec = self.runtime.agents.get(agent)
        if spec is None:
            return False
        try:
            chosen = self.runtime.prices.get(model) if model else None
            price = chosen if chosen is not None else self.runtime.affordability.price_of(spec)[1]
        except Exception:  # an unknown price is reported where the run needs it
            return False
        cap = budget_usd if budget_usd else spec.limits.budget_usd
        room = max(history_tokens / max(turns, 1), MIN_USEFUL_OUTPUT_TOKENS)
        tokens = (exact if exact is not None else self._prefix_tokens(agent) + history_tokens) \
            + room
        need = (tokens * dearest_input_rate(price, "5m") + room * price.output) / PER_MILLION
        return need > cap

    def _forecast(self, session_id: int, history: list[StoredMessage],
                        turns: list[list[StoredMessage]], anchor: Any,
                        agent: str, *, seeded: list[float] | None = None) -> CacheForecast:
        """The session's rhythm as this turn starts: gaps between its recent turns, its size.
        ``turns``: ``split_turns(history)``; ``seeded``: ``_seed_starts``, read beside them
        when this process has not seen the session yet."""
        now = self.clock()
        starts = self._starts.get(session_id)
        if starts is None:
            starts = seeded or []
        starts = [*starts, now][-(GAPS_KEPT + 1):]
        self._starts[session_id] = starts
        gaps = tuple(b - a for a, b in zip(starts, starts[1:], strict=False) if b >= a)
        total = sum(m.tokens for m in history)
        head, rest = stable_head(history, compact_at_tokens=self.compact_at_tokens,
                                 continued=True)
        # written by this run: a head nothing followed yet (the first turn just became it), a
        # summary newer than every turn after it (a compaction since the last turn), or an
        # entry gone (the last gap outlived a 5-minute write)
        head_new = bool(head) and (
            not rest or max(m.id for m in head) > max(m.id for m in rest)
            or (bool(gaps) and gaps[-1] > SHORT_TTL_S))
        return CacheForecast(
            gaps_s=gaps, context_tokens=anchor.tokens if anchor is not None else total,
            head_tokens=sum(m.tokens for m in head), turn_tokens=total / len(turns) if turns else 0.0,
            compact_at_tokens=self.compact_at_tokens, history_tokens=total,
            prefix_tokens=self._prefix_tokens(agent), head_new=head_new)

    def _prefix_tokens(self, agent: str) -> int:
        """The agent's tools and system by estimate (0 when they cannot be built here)."""
        spec = self.runtime.agents.get(agent)
        if spec is None:
            return 0
        try:
            return self.runtime.affordability.prefix_of(spec).tokens
        except Exception:  # an unknown tool is reported where the run needs it
            return 0

    async def _seed_starts(self, session_id: int) -> list[float]:
        """When the session's last turns started, from its runs (after a restart, or on another
        worker); only on the wall clock."""
        if self.clock is not time.time:
            return []
        rows = await self.runtime.db.fetchall(SEED_STARTS_SQL, (session_id, GAPS_KEPT))
        out: list[float] = []
        for row in rows:
            try:
                out.append(datetime.fromisoformat(str(row["started_at"]).replace("Z", "+00:00"))
                           .timestamp())
            except ValueError:
                continue
        return sorted(out)

    async def record(self, session_id: int, result: RunResult) -> None:
        """Append a finished run's transcript and its usage to the session."""
        await self.record_messages(session_id, result.messages, run_id=result.run_id)
        await self.repo.add_session_usage(
            session_id, input_tokens=result.usage.input_tokens,
            cache_read=result.usage.cache_read_tokens, cache_write=result.usage.cache_write_tokens,
            output=result.usage.output_tokens,
        )

    async def record_in(self, conn: Any, session_id: int, result: RunResult) -> int:
        """``record`` inside the caller's transaction; returns the tokens appended (estimated)."""
        rows = [(m["role"], m["content"], estimate(m)) for m in result.messages]
        await self.repo.append_in(conn, session_id, rows, run_id=result.run_id)
        await self.repo.add_session_usage(
            session_id, input_tokens=result.usage.input_tokens,
            cache_read=result.usage.cache_read_tokens, cache_write=result.usage.cache_write_tokens,
            output=result.usage.output_tokens, conn=conn)
        return sum(tokens for _, _, tokens in rows)

    async def record_messages(self, session_id: int, messages: list[dict[str, Any]], *,
                              run_id: str | None) -> None:
        await self.repo.append(
            session_id, [(m["role"], m["content"], estimate(m)) for m in messages], run_id=run_id)

    # ------------------------------------------------------------------ compaction

    async def maybe_compact(self, session_id: int, *, user_id: int | None,
                            history_tokens: int | None = None, outgrown: bool = False) -> bool:
        """Summarise the oldest turns after the stable head once the history passes
        ``compact_at_tokens``, down to ``compact_to_fraction`` of it (the head counted).
        ``history_tokens``: the size the caller just knew it to have (``TurnResult``); below the
        threshold the history is not read again. ``outgrown``: the history has outgrown the
        agent's run cap (``TurnResult.outgrown``): compacted now, down to the same fraction of
        its present size."""
        if not outgrown and history_tokens is not None \
                and history_tokens <= self.compact_at_tokens:
            return False
        history = await self.repo.history(session_id)
        total = sum(m.tokens for m in history)
        if not outgrown and total <= self.compact_at_tokens:
            return False
        head, rest = stable_head(history, compact_at_tokens=self.compact_at_tokens)
        turns = split_turns(rest)
        if len(turns) <= KEEP_RECENT_TURNS:
            return False
        target = min(self.compact_at_tokens, total) * self.compact_to_fraction
        chosen: list[StoredMessage] = []
        remaining = total
        for turn in turns[:-KEEP_RECENT_TURNS]:
            if remaining <= target:
                break
            chosen.extend(turn)
            remaining -= sum(m.tokens for m in turn)
        if not chosen:
            return False
        summaries = [m for m in head if m.kind == "summary"]
        if sum(m.tokens for m in summaries) > target * SUMMARY_HEAD_FRACTION:
            chosen = [*summaries, *chosen]  # fold them into one: the rare full rewrite
        summary = await self._summarise_in_place(session_id, history, chosen, user_id=user_id)
        if summary is None:
            summary = await self._summarise(chosen, user_id=user_id)
        if summary is None:
            log.warning("session %s: summarising failed; dropping %d old messages", session_id,
                        len(chosen))
            await self.repo.compact(session_id, [m.id for m in chosen], None, 0)
        else:
            block = [{"type": "text", "text": f"{SUMMARY_TAG}\n{summary}"}]
            await self.repo.compact(session_id, [m.id for m in chosen], block, estimate(block))
        return True

    async def _summarise_in_place(self, session_id: int, history: list[StoredMessage],
                                  chosen: list[StoredMessage], *,
                                  user_id: int | None) -> str | None:
        """The summary of ``chosen`` written by the session's agent over its cached prefix; None
        when the agent cannot give one that way (the caller falls back to the compactor)."""
        owner = await self.repo.session_owner(session_id)
        if owner is None or not history or history[-1].role != "assistant":
            return None
        agent, chat_id, thread_id = owner
        spec = self.runtime.agents.get(agent)
        if spec is None or spec.pattern != "react" or not caches(agent):
            return None
        messages = [*to_messages(history), summary_request(chosen)]
        limits = replace(spec.limits, max_steps=0, max_model_calls=1,
                         max_tokens=COMPACTOR.limits.max_tokens,
                         timeout_s=COMPACTOR.limits.timeout_s)
        try:
            result = await self.runtime.run(RunRequest(
                agent=agent, messages=messages, new_from=len(messages) - 1, kind="cli",
                user_id=user_id, chat_id=chat_id, thread_id=thread_id, limits=limits,
                session_anchor=await self.counts.anchor(session_id), purpose="compaction"))
        except Exception as exc:  # caps, config: the compactor may still fit
            log.info("session %s: the agent could not summarise in place: %s", session_id, exc)
            return None
        if result.status != "completed" or not result.output:
            log.info("session %s: in-place summary ended %s; using the compactor", session_id,
                     result.status)
            return None
        return result.output

    async def _summarise(self, messages: list[StoredMessage], *, user_id: int | None) -> str | None:
        transcript = render_transcript(messages)
        if COMPACTOR.name not in self.runtime.agents:
            self.runtime.agents[COMPACTOR.name] = replace(
                COMPACTOR, model=self.runtime.settings.router_model)
        try:
            result = await self.runtime.run(RunRequest(
                agent=COMPACTOR.name,
                messages=[{"role": "user", "content": [{"type": "text", "text": transcript}]}],
                new_from=0, kind="cli", user_id=user_id,
            ))
        except Exception as exc:  # caps, config: fall back to dropping
            log.warning("compaction run could not start: %s", exc)
            return None
        if result.status != "completed" or not result.output:
            return None
        return result.output


COMPACTION_NOTE = "[keel] Compaction: compress conversation history."
"""How a summary request starts (benchmarks and tests tell compaction requests by it)."""
_OPENING_CHARS = 60


def is_compaction_request(body: Any) -> bool:
    """Whether a Messages API body is a compaction: the compactor's (by its system prompt) or an
    agent's summary of its own session (its last message starts with ``COMPACTION_NOTE``)."""
    if not isinstance(body, dict):
        return False
    system = body.get("system")
    if any("compress conversation history" in str(b.get("text", ""))
           for b in (system if isinstance(system, list) else []) if isinstance(b, dict)):
        return True
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    return isinstance(content, list) and any(
        isinstance(b, dict) and str(b.get("text", "")).startswith(COMPACTION_NOTE)
        for b in content)


def summary_request(chosen: list[StoredMessage]) -> dict[str, Any]:
    """The one message added to a session's history to have its agent summarise ``chosen`` (the
    oldest turns after the stable head; earlier summaries first when they are folded in)."""
    starts = [m for m in chosen if _is_turn_start(m) and m.kind != "summary"]
    first = "the start of the conversation" if not starts or chosen[0].kind == "summary" \
        else f"the message that begins “{_opening(starts[0])}”"
    last = f"your answer to the message that begins “{_opening(starts[-1])}”" if starts \
        else "the last earlier summary"
    text = (
        f"{COMPACTION_NOTE} The older part of this conversation is about to be replaced by "
        f"your summary of it. Summarise the conversation above from {first} through {last}; "
        "what comes after that stays as it is, so leave it out. Write a faithful summary: the "
        "person's goals, facts they stated (names, numbers, preferences, decisions), what you "
        "answered or did, and anything left open. Keep concrete details that later turns may "
        "need. Do not call tools. Plain prose or bullets, no preamble, at most 300 words.")
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _opening(message: StoredMessage) -> str:
    for block in message.content:
        if block.get("type") == "text" and str(block.get("text", "")).strip():
            words = " ".join(str(block["text"]).split())
            return words if len(words) <= _OPENING_CHARS else words[:_OPENING_CHARS] + "…"
    return "(an attachment)"


def parked(result: RunResult) -> bool:
    """A run that may still go on (a question to a human, a budget a human may raise): its
    transcript joins the history only when it ends for good."""
    return result.status == "waiting_human" or (
        result.status == "budget_exceeded" and result.state is not None)


def stable_head(history: list[StoredMessage], *, compact_at_tokens: int | None = None,
                continued: bool = False) -> tuple[list[StoredMessage], list[StoredMessage]]:
    """History split into the head compaction keeps byte for byte — the first turn when
    ``first_turn_pinned`` (the same test the cache breakpoint uses) and followed by another
    (``continued``: a new turn is about to follow the history), then the summaries after it —
    and the rest."""
    i = 0
    turns = split_turns(history)
    followed = len(turns) > 1 or (continued and bool(history) and history[-1].role == "assistant")
    if turns and turns[0][0].kind != "summary" and followed \
            and first_turn_pinned(to_messages(turns[0]), pin_limit(compact_at_tokens)):
        i = len(turns[0])
    while i < len(history) and history[i].kind == "summary":
        i += 1
    return history[:i], history[i:]


def _is_turn_start(m: StoredMessage) -> bool:
    return m.role == "user" and not any(b.get("type") == "tool_result" for b in m.content)


def split_turns(history: list[StoredMessage]) -> list[list[StoredMessage]]:
    turns: list[list[StoredMessage]] = []
    for m in history:
        if not turns or (_is_turn_start(m) and turns[-1][-1].role == "assistant"):
            turns.append([m])
        else:
            turns[-1].append(m)
    return turns


def render_transcript(messages: list[StoredMessage]) -> str:
    lines = ["Summarise this conversation:", ""]
    for m in messages:
        for block in m.content:
            kind = block.get("type")
            if kind == "text":
                lines.append(f"{m.role}: {block['text']}")
            elif kind == "tool_use":
                lines.append(f"{m.role} called {block['name']}({block.get('input')})")
            elif kind == "tool_result":
                content = block.get("content")
                text = content if isinstance(content, str) else str(content)
                lines.append(f"tool result: {text[:500]}")
    return "\n".join(lines)
