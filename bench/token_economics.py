"""Token economics: what a long conversation costs with keel, against sending it naively.

In process, no Telegram: keel's own ``Runtime`` and ``Sessions`` (the code the bot runs for every
message: router call, session history, cache breakpoints, compaction) talk to the fake Anthropic
server through the real SDK. The built-in ``assistant`` agent's stable prefix (tools + system) is
~1,480 tokens by the fake's estimate, above claude-sonnet-4-6's 1,024-token cache minimum.

The naive baseline sends the same conversation (same system prompt, tools, user messages and
answers, same max_tokens) with the SDK directly, with no cache breakpoints and the full history
every turn (no compaction, no router). Costs use keel's built-in price table and the usage the
fake reports. Billed input-token equivalents = input + 1.25 x 5-minute cache writes + 2 x 1-hour
cache writes + 0.1 x cache reads.

Between turns the fake's cache clock moves 20-120 s (a person reading and typing), inside the
5-minute cache lifetime; keel's Sessions read the same clock, so the gaps it plans cache TTLs by are
the ones the cache sees.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import anthropic

from agents.config import load_settings
from agents.ids import new_id
from agents.model.types import usage_from_api
from agents.pricing import PriceTable, Usage
from agents.runtime import Runtime
from agents.sessions import Sessions
from bench.stats import median, ratio
from bench.world import API_KEY, Model, empty_config, kind_of, tag
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest

WORDS = ("soil compost tomato basil pepper water sun shade fence spring summer autumn seed "
         "leaf root mulch prune harvest weed bed pot trellis frost rain week garden plant grow "
         "yellow green early late morning evening small large north south careful often").split()
CHAT_ID = USER_ID = 1


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


class Conversation:
    """The same deterministic content for keel and for the naive replay."""

    def __init__(self, turns: int, seed: int) -> None:
        rng = random.Random(seed)
        self.questions = [f"{tag(CHAT_ID, i + 1)} " + _words(rng, rng.randint(30, 90))
                          for i in range(turns)]
        self.answers = [_words(rng, rng.randint(150, 350)) for _ in range(turns)]
        self.gaps = [rng.uniform(20, 120) for _ in range(turns)]

    def answer_for(self, text: str) -> str:
        for question, answer in zip(self.questions, self.answers, strict=True):
            if question in text:
                return answer
        return "I am not sure which message you mean."


def billed_input(u: Usage) -> float:
    return (u.input_tokens + 1.25 * u.cache_write_5m_tokens + 2 * u.cache_write_1h_tokens
            + 0.1 * u.cache_read_tokens)


def _totals(records: list[RecordedRequest], prices: PriceTable) -> dict[str, Any]:
    usage, cost = Usage(), 0.0
    for r in records:
        u = usage_from_api(r.usage)
        usage = usage + u
        cost += prices.cost(str(r.model), u)
    return {"calls": len(records), "usage": usage, "cost_usd": cost}


def _summarise(part: dict[str, Any], turns: int) -> dict[str, Any]:
    u: Usage = part["usage"]
    return {
        "calls": part["calls"], "cost_usd": round(part["cost_usd"], 6),
        "cost_per_turn_usd": round(part["cost_usd"] / turns, 6),
        "input_tokens": u.input_tokens, "cache_write_tokens": u.cache_write_tokens,
        "cache_read_tokens": u.cache_read_tokens, "output_tokens": u.output_tokens,
        "cache_hit_ratio": round(u.cache_hit_ratio, 4),
        "billed_input_equiv_per_turn": round(billed_input(u) / turns, 1),
    }


RUN_BUDGET_USD = "0.10"
"""Every turn must complete under this run cap (issue 13: the reservation is tight enough)."""


async def _keel(conv: Conversation, workdir: Path, min_cache: int | None = None) -> dict[str, Any]:
    model = Model(latency=0.0, answer=conv.answer_for)
    overrides = {"claude-sonnet-4-6": min_cache} if min_cache else None
    async with FakeAnthropic(responder=model, min_cacheable_tokens=overrides) as fake:
        settings = load_settings(
            _env_file=None, ANTHROPIC_API_KEY=API_KEY, ANTHROPIC_BASE_URL=fake.base_url,
            KEEL_DATA_DIR=str(workdir / "data"), KEEL_CONFIG=str(empty_config(workdir)),
            KEEL_RUN_BUDGET_USD=RUN_BUDGET_USD,
            KEEL_DAILY_BUDGET_USD="100000", KEEL_DAILY_BUDGET_USD_PER_USER="100000")
        runtime = await Runtime.open(settings)
        try:
            sessions = Sessions(runtime, clock=fake.now)  # keel sees the gaps the cache sees
            compactions = 0
            dearest_turn, completed = 0.0, 0
            for question, gap in zip(conv.questions, conv.gaps, strict=True):
                conversation = await runtime.conversations.get_or_create(CHAT_ID, None)
                run_id = new_id()  # as the bot does: the router is held under the run's id
                route = await runtime.route(question, current=conversation.current_agent,
                                            run_id=run_id, user_id=USER_ID,
                                            conversation_id=conversation.id)
                await runtime.conversations.set_current_agent(conversation.id, route.agent)
                turn = await sessions.turn(
                    chat_id=CHAT_ID, thread_id=None, agent=route.agent, run_id=run_id,
                    content=[{"type": "text", "text": question}], user_id=USER_ID, route=route)
                if turn.result.status != "completed":
                    raise RuntimeError(f"turn ended {turn.result.status}: {turn.result.detail}")
                completed += 1
                compactions += turn.compacted
                dearest_turn = max(dearest_turn, turn.result.cost_usd)
                fake.advance_clock(gap)
        finally:
            await runtime.close()
        records = [r for r in fake.message_requests if r.usage]
        agent_inputs = [usage_from_api(r.usage).total_input_tokens for r in records
                        if kind_of(r) == "agent"]
        first_agent = next(r for r in records if kind_of(r) == "agent")
        return {"records": records, "compactions": compactions, "agent_inputs": agent_inputs,
                "dearest_turn_usd": dearest_turn, "completed": completed,
                "first_agent_body": first_agent.body, "unexpected": len(fake.unexpected)}


def _strip_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_cache_control(v) for v in value]
    return value


async def _naive(conv: Conversation, template: dict[str, Any]) -> list[RecordedRequest]:
    model = Model(latency=0.0, answer=conv.answer_for)
    async with FakeAnthropic(responder=model) as fake:
        client = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=fake.base_url, max_retries=0)
        try:
            history: list[dict[str, Any]] = []
            for question in conv.questions:
                history.append({"role": "user", "content": [{"type": "text", "text": question}]})
                answer = await client.messages.create(
                    model=template["model"], max_tokens=template["max_tokens"],
                    system=_strip_cache_control(template["system"]),
                    tools=_strip_cache_control(template["tools"]), messages=history)
                text = "".join(b.text for b in answer.content if b.type == "text")
                history.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        finally:
            await client.close()
        return [r for r in fake.message_requests if r.usage]


async def conversation(turns: int, seed: int, min_cache: int | None = None) -> dict[str, Any]:
    prices = PriceTable.builtin()
    conv = Conversation(turns, seed)
    with tempfile.TemporaryDirectory(prefix="keel-bench-tokens-") as tmp:
        keel = await _keel(conv, Path(tmp), min_cache)
    naive_records = await _naive(conv, keel["first_agent_body"])
    parts = {kind: _totals([r for r in keel["records"] if kind_of(r) == kind], prices)
             for kind in ("agent", "router", "compactor")}
    everything = _totals(keel["records"], prices)
    naive = _summarise(_totals(naive_records, prices), turns)
    total = _summarise(everything, turns)
    return {
        "turns": turns, "seed": seed, "compactions": keel["compactions"],
        "turns_completed": keel["completed"], "run_budget_usd": float(RUN_BUDGET_USD),
        "dearest_turn_usd": round(keel["dearest_turn_usd"], 6),
        "agent_model": keel["first_agent_body"]["model"],
        "keel": total,
        "keel_agent_only": _summarise(parts["agent"], turns),
        "router": _summarise(parts["router"], turns),
        "compaction": _summarise(parts["compactor"], turns),
        "naive": naive,
        "router_share_of_cost": round(parts["router"]["cost_usd"] / everything["cost_usd"], 4),
        "compaction_share_of_cost": round(parts["compactor"]["cost_usd"] / everything["cost_usd"],
                                          4),
        "cost_over_naive": ratio(total["cost_usd"], naive["cost_usd"], 3),
        "billed_input_over_naive": ratio(total["billed_input_equiv_per_turn"],
                                         naive["billed_input_equiv_per_turn"], 3),
        "agent_input_tokens_first_last_max": [keel["agent_inputs"][0], keel["agent_inputs"][-1],
                                              max(keel["agent_inputs"])],
        "naive_input_tokens_last": usage_from_api(naive_records[-1].usage).total_input_tokens,
        "fake_unexpected": keel["unexpected"],
    }


async def measure(lengths: list[int], seeds: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "how": __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "seeds": seeds, "conversations": {},
    }
    for turns in lengths:
        runs = [await conversation(turns, seed) for seed in seeds]
        keys = ("cost_over_naive", "billed_input_over_naive", "router_share_of_cost",
                "compaction_share_of_cost")
        out["conversations"][str(turns)] = {
            "median": {k: median(r[k] for r in runs) for k in keys}
            | {f"keel_{k}": median(r["keel"][k] for r in runs)
               for k in ("cache_hit_ratio", "billed_input_equiv_per_turn", "cost_usd")}
            | {f"naive_{k}": median(r["naive"][k] for r in runs)
               for k in ("cache_hit_ratio", "billed_input_equiv_per_turn", "cost_usd")}
            | {"agent_cache_hit_ratio": median(r["keel_agent_only"]["cache_hit_ratio"]
                                               for r in runs)},
            "agent_cache_hit_ratio_per_seed": [r["keel_agent_only"]["cache_hit_ratio"]
                                               for r in runs],
            "runs": runs,
        }
    # issue 13's third figure: the longest conversation again at a 4,096-token cache minimum
    # (Opus and Haiku's), where the head alone may be too short to cache
    longest = max(lengths)
    high = [await conversation(longest, seed, HIGH_MINIMUM) for seed in seeds]
    out["high_minimum"] = {
        "turns": longest, "min_cacheable_tokens": HIGH_MINIMUM,
        "keel_cache_hit_ratio": median(r["keel"]["cache_hit_ratio"] for r in high),
        "agent_cache_hit_ratio": median(r["keel_agent_only"]["cache_hit_ratio"] for r in high),
        "cache_hit_ratio_per_seed": [r["keel"]["cache_hit_ratio"] for r in high],
    }
    return out


HIGH_MINIMUM = 4096
"""A model whose cache minimum is 4,096 tokens (claude-opus-4-5, claude-haiku-4-5)."""
