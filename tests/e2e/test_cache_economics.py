"""What a conversation costs, end to end: keel's Runtime and Sessions (router, history, cache
breakpoints, compaction) through the real anthropic client over HTTP against the fake API and its
prompt-cache simulation (issue 13).

- a 60-turn chat completes every turn under a $0.10 run cap, and a "hello" under $0.01;
- after a compaction the turn reads the stable head (tools, system, first turn) from the cache;
- a session whose turns come 10 minutes apart switches to 1-hour writes (the trace says why),
  the turn after such a gap reads the cache, and its run replays identically.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agents.config import load_settings
from agents.ids import new_id
from agents.model.types import usage_from_api
from agents.pricing import PriceTable
from agents.runtime import Runtime
from agents.sessions import Sessions, TurnResult, is_compaction_request
from storage.conversation_model import ConversationModels
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.unit.test_replay_shapes import assert_replays

pytestmark = pytest.mark.e2e

API_KEY = "sk-ant-cache-economics-0123456789"
CHAT = 7
WORDS = ("soil compost tomato basil pepper water sun shade fence spring summer autumn seed leaf "
         "root mulch prune harvest weed bed pot trellis frost rain week garden plant grow").split()


def kind(req: RecordedRequest) -> str:
    if any(t.get("name") == "route" for t in req.body.get("tools") or []):
        return "router"
    if is_compaction_request(req.body):
        return "compactor"
    return "agent"


def respond(req: RecordedRequest) -> Reply:
    if kind(req) == "router":
        return reply(tool_use("route", {"agent": "assistant"}))
    if kind(req) == "compactor":
        return reply("Earlier: the person asked numbered gardening questions; all were answered.")
    if req.last_user_text == "hello":
        return reply("Hello! How can I help you today?")
    rng = random.Random(req.last_user_text)
    return reply(" ".join(rng.choice(WORDS) for _ in range(rng.randint(150, 350))) + ".")


@pytest_asyncio.fixture
async def open_runtime(fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
                       tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Runtime] = []
    fake_anthropic.responder = respond

    async def make(**env: str) -> Runtime:
        config = tmp_path / "keel.toml"
        config.write_text("# built-in agents and prices only\n", encoding="utf-8")
        for key, value in {"ANTHROPIC_API_KEY": API_KEY,
                           "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
                           "KEEL_DATA_DIR": str(tmp_path / "data"), "KEEL_CONFIG": str(config),
                           "KEEL_DAILY_BUDGET_USD": "1000",
                           "KEEL_DAILY_BUDGET_USD_PER_USER": "1000", **env}.items():
            monkeypatch.setenv(key, value)
        runtime = await Runtime.open(load_settings())
        opened.append(runtime)
        return runtime

    yield make
    for runtime in opened:
        await runtime.close()
    assert not fake_anthropic.unexpected, [r.note for r in fake_anthropic.unexpected]


async def chat_turn(runtime: Runtime, sessions: Sessions, text: str) -> TurnResult:
    """One message as the bot handles it: the router (held under the run's id), then the turn."""
    conversation = await runtime.conversations.get_or_create(CHAT, None)
    run_id = new_id()
    route = await runtime.route(text, current=conversation.current_agent, run_id=run_id,
                                user_id=CHAT, conversation_id=conversation.id)
    await runtime.conversations.set_current_agent(conversation.id, route.agent)
    return await sessions.turn(chat_id=CHAT, thread_id=None, agent=route.agent, run_id=run_id,
                               content=[{"type": "text", "text": text}], user_id=CHAT,
                               route=route)


def question(rng: random.Random, n: int) -> str:
    return f"q{n}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 90))) + "?"

async def answered_turns(runtime: Runtime, sessions: Sessions, fake: FakeAnthropic,
                         rng: random.Random, count: int, cap: float) -> list[TurnResult]:
    """``count`` questions 20-120 s apart, each asserted answered within ``cap``."""
    results = []
    for n in range(count):
        turn = await chat_turn(runtime, sessions, question(rng, n))
        assert turn.result.status == "completed", (n, turn.result.status, turn.result.detail)
        assert turn.result.cost_usd <= cap
        results.append(turn)
        fake.advance_clock(rng.uniform(20, 120))
    return results


def agent_usage(fake: FakeAnthropic) -> list[Any]:
    return [usage_from_api(r.usage) for r in fake.message_requests
            if r.usage and kind(r) == "agent"]


async def test_sixty_turns_under_a_ten_cent_run_cap_and_the_head_survives_compaction(
    open_runtime: Callable[..., Any], fake_anthropic: FakeAnthropic,
) -> None:
    runtime: Runtime = await open_runtime(KEEL_RUN_BUDGET_USD="0.10")
    sessions = Sessions(runtime, clock=fake_anthropic.now)
    results = await answered_turns(runtime, sessions, fake_anthropic, random.Random(1), 60, 0.10)
    assert sum(t.compacted for t in results) >= 1
    usages = agent_usage(fake_anthropic)
    agent_requests = [r for r in fake_anthropic.message_requests if r.usage and kind(r) == "agent"]
    after = next(i for i, r in enumerate(agent_requests)
                 if "Summary of the earlier conversation" in str(r.body["messages"]))
    # the first request after the compaction reads tools + system + the pinned first turn
    # (written for 1 hour at turn 2, since the compaction was due 5-60 min ahead) ...
    head = usages[after].cache_read_tokens
    assert head > usages[0].total_input_tokens, (head, usages[0])
    assert "q0:" in str(agent_requests[after].body["messages"][0])
    # ... and writes only the new summary and the turns kept after it
    assert usages[after].cache_write_tokens == usages[after].total_input_tokens - head
    # a 1-hour marker only where it writes: a head already inside the cached prefix is not
    # written again, so marking it 1 hour would only price it at 2x (turns 4-32 did)
    idle = [i for i, (r, u) in enumerate(zip(agent_requests, usages, strict=True))
            if '"ttl": "1h"' in json.dumps(r.body) and u.cache_write_1h_tokens == 0]
    assert not idle, idle
    prices = PriceTable.builtin()
    spent = sum(prices.cost(str(r.model), usage_from_api(r.usage))
                for r in fake_anthropic.message_requests if r.usage)
    recorded = sum(t.result.cost_usd for t in results)
    assert recorded <= spent + 1e-9  # compaction runs are not turns; nothing recorded twice
    hit = sum(u.cache_read_tokens for u in usages) / sum(u.total_input_tokens for u in usages)
    print(f"agent requests' cache hit ratio: {hit:.4f}")
    assert hit >= 0.93, hit  # this conversation: 94.7% (bench, other content: 94.4-95.0%)
    # the agent summarised its own session over the prefix its last turn cached: nearly all of
    # the compaction's input was read, not sent again
    compactions = [usage_from_api(r.usage) for r in fake_anthropic.message_requests
                   if r.usage and kind(r) == "compactor"]
    assert compactions and all(c.cache_read_tokens >= 0.9 * c.total_input_tokens
                               for c in compactions), compactions


async def test_a_hello_completes_under_one_cent(
    open_runtime: Callable[..., Any], fake_anthropic: FakeAnthropic,
) -> None:
    runtime: Runtime = await open_runtime(KEEL_RUN_BUDGET_USD="0.01")
    turn = await chat_turn(runtime, Sessions(runtime), "hello")
    assert turn.result.status == "completed", (turn.result.status, turn.result.detail)
    assert 0 < turn.result.cost_usd <= 0.01


async def test_turns_ten_minutes_apart_are_written_for_an_hour_and_replay(
    open_runtime: Callable[..., Any], fake_anthropic: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime: Runtime = await open_runtime(KEEL_RUN_BUDGET_USD="0.10")
    sessions = Sessions(runtime, clock=fake_anthropic.now)
    rng = random.Random(2)
    results = []
    for n in range(6):
        results.append(await chat_turn(runtime, sessions, question(rng, n)))
        fake_anthropic.advance_clock(600)
    usages = agent_usage(fake_anthropic)
    agent_requests = [r for r in fake_anthropic.message_requests if r.usage and kind(r) == "agent"]
    # turns 1-2: no or one long gap (the first turn has none; a 5-minute write expires unread)
    assert usages[1].cache_read_tokens == 0
    # from the third turn on the session's gaps say 1 hour: the last marker asks for it, the
    # turn after a 10-minute gap reads what the previous one wrote
    last = agent_requests[-1].body["messages"][-1]["content"][-1]
    assert last["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert usages[-1].cache_read_tokens > 0
    assert usages[-1].cache_write_5m_tokens == 0 and usages[-1].cache_write_1h_tokens > 0
    start = next(e for e in runtime.traces.read(results[-1].result.trace_id)
                 if e["type"] == "run_start")
    assert start["cache"]["tail"] == "1h", start["cache"]
    assert "5-60 min" in start["cache"]["why"]
    assert start["cache"]["forecast"]["gaps_s"][-1] == pytest.approx(600, abs=5)
    # the recorded cost (1-hour writes) is what replay recomputes the split from
    await assert_replays(fake_anthropic, monkeypatch, results[-1].result.trace_id)


async def test_a_run_cap_below_the_compaction_threshold_compacts_before_the_chat_stops(
    open_runtime: Callable[..., Any], fake_anthropic: FakeAnthropic,
) -> None:
    """At $0.05 a run affords ~12,000 input tokens; the default threshold (24,000 estimated) is
    reached later, so the history outgrew the cap and every turn from the 22nd on was refused
    before any call, for good: the refused turns added nothing, so it never compacted. The cap
    now brings compaction forward, before the next turn's first call could not be paid."""
    runtime: Runtime = await open_runtime(KEEL_RUN_BUDGET_USD="0.05")
    sessions = Sessions(runtime, clock=fake_anthropic.now)
    results = await answered_turns(runtime, sessions, fake_anthropic, random.Random(3), 40, 0.05)
    assert sum(t.compacted for t in results) >= 1
    assert max(t.history_tokens or 0 for t in results) < runtime.settings.compact_at_tokens


async def test_a_chat_already_too_long_for_its_cap_is_compacted_after_one_refused_turn(
    open_runtime: Callable[..., Any], fake_anthropic: FakeAnthropic,
) -> None:
    """A history that grew under a larger cap (or before this fix) and no longer fits: the turn
    that finds it so is refused with nothing spent, the session is compacted after it (by the
    compactor's cheaper model: the agent cannot afford to read it all), and the next turn is
    answered."""
    rng = random.Random(4)
    first: Runtime = await open_runtime(KEEL_RUN_BUDGET_USD="1.00")
    sessions = Sessions(first, clock=fake_anthropic.now)
    for n in range(30):
        turn = await chat_turn(first, sessions, question(rng, n))
        assert turn.result.status == "completed", (n, turn.result.status)
        assert not turn.compacted  # ~17,000 tokens by estimate: under the threshold
        fake_anthropic.advance_clock(30)
    await first.close()
    runtime: Runtime = await open_runtime(KEEL_RUN_BUDGET_USD="0.05")
    sessions = Sessions(runtime, clock=fake_anthropic.now)
    refused = await chat_turn(runtime, sessions, question(rng, 30))
    assert refused.result.status == "budget_exceeded", refused.result.status
    assert refused.result.cost_usd == 0
    assert refused.compacted
    answered = await chat_turn(runtime, sessions, question(rng, 31))
    assert answered.result.status == "completed", (answered.result.status,
                                                   answered.result.detail)
    assert answered.result.cost_usd <= 0.05


async def test_a_chat_on_a_dearer_model_compacts_by_that_models_price(
    open_runtime: Callable[..., Any], fake_anthropic: FakeAnthropic,
) -> None:
    """/model chose Opus 4.7 (1.67x Sonnet's prices) for this chat: at $0.08 a run pays for
    ~10,000 input tokens on it, ~19,000 on the agent's own Sonnet. Compaction is brought forward
    by the price the chat's runs really pay, so no turn is refused."""
    runtime: Runtime = await open_runtime(KEEL_RUN_BUDGET_USD="0.08")
    await ConversationModels(runtime.db).set(CHAT, None, "claude-opus-4-7")
    sessions = Sessions(runtime, clock=fake_anthropic.now)
    results = await answered_turns(runtime, sessions, fake_anthropic, random.Random(6), 40, 0.08)
    assert {r.model for r in fake_anthropic.message_requests if r.usage and kind(r) == "agent"} \
        == {"claude-opus-4-7"}
    assert sum(t.compacted for t in results) >= 1


async def test_a_restarted_process_reads_the_sessions_rhythm_from_its_runs(
    open_runtime: Callable[..., Any], fake_anthropic: FakeAnthropic,
) -> None:
    """The gaps between a session's turns survive a restart: its first turn in a new process
    reads when the last turns started from the runs table (beside its history, at once)."""
    runtime: Runtime = await open_runtime()
    before = Sessions(runtime)  # on the wall clock, as the bot runs it
    first = await chat_turn(runtime, before, "hello")
    await chat_turn(runtime, before, "and again")
    assert first.result.status == "completed", first.result.detail
    after = Sessions(runtime)  # what a new process knows: nothing in memory
    third = await chat_turn(runtime, after, "once more")
    assert third.session_id == first.session_id
    rows = await runtime.db.fetchall(
        "SELECT started_at FROM runs WHERE session_id = ? ORDER BY started_at",
        (first.session_id,))
    stored = [datetime.fromisoformat(str(r["started_at"])).timestamp() for r in rows]
    starts = after._starts[first.session_id]
    assert len(starts) == 3, starts
    assert starts[:2] == pytest.approx(stored[:2], abs=1e-3)
    assert starts[2] >= stored[1]
