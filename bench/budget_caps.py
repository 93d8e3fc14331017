"""Budget: randomized runs with tight caps and expensive answers; none may finish over its cap.

In process: keel's ``Runtime.run`` (budget meter, executor loop, tools, traces, ledger) against the
fake Anthropic server through the real SDK, so the usage that is billed is the usage the server
reports for the request that was really sent, not a number the script made up. Each run draws:

* a cap between $0.005 and $0.05, a model (Haiku 4.5, Sonnet 4.6, Opus 4.7), max_steps 2-10 and
  max_tokens 1,024-16,000;
* 0-4,000 tokens of earlier history, so the input side of the reservation matters too;
* a script of 0-8 tool-call turns (each with 200-3,000 tokens of text before a
  ``get_current_time`` call) and a final answer of 1,000-20,000 tokens; the fake cuts any answer at
  the request's ``max_tokens``, as the API does.

A run is over its cap if any of three costs exceeds the cap: the run's own meter, the cost stored in
keel's runs table, or the cost recomputed from the server's usage records with keel's price table. Headroom = (cap - cost) / cap.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from agents.config import load_settings
from agents.model.types import usage_from_api
from agents.runtime import RunRequest, Runtime
from agents.spec import Limits
from bench.stats import summary
from bench.world import API_KEY, empty_config
from tests.fakes.anthropic import FakeAnthropic, Reply, reply, tool_use

MODELS = ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7")
WORDS = ("ledger invoice margin forecast quarter revenue budget audit cost spend cap limit "
         "reserve token model answer report summary detail table figure").split()


def _text(rng: random.Random, tokens: int) -> str:
    """About ``tokens`` tokens by the fake's estimate (4 characters per token)."""
    out: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def _history(rng: random.Random, tokens: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    left = tokens
    while left > 0:
        size = min(left, rng.randint(200, 1500))
        role = "user" if len(messages) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": [{"type": "text", "text": _text(rng, size)}]})
        left -= size
    if messages and messages[-1]["role"] == "user":
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "Noted."}]})
    return messages


def _script(rng: random.Random) -> list[Reply]:
    steps = [reply(_text(rng, rng.randint(200, 3000)),
                   tool_use("get_current_time", {"timezone": "UTC"}))
             for _ in range(rng.randint(0, 8))]
    steps.append(reply(_text(rng, rng.randint(1000, 20000))))
    return steps


async def measure(runs: int, seed: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    async with FakeAnthropic() as fake:
        with tempfile.TemporaryDirectory(prefix="keel-bench-budget-") as tmp:
            settings = load_settings(
                _env_file=None, ANTHROPIC_API_KEY=API_KEY, ANTHROPIC_BASE_URL=fake.base_url,
                KEEL_DATA_DIR=str(Path(tmp) / "data"), KEEL_CONFIG=str(empty_config(Path(tmp))),
                KEEL_DAILY_BUDGET_USD="100000", KEEL_DAILY_BUDGET_USD_PER_USER="100000")
            runtime = await Runtime.open(settings)
            try:
                base = runtime.agent("assistant")
                for model in MODELS:
                    runtime.agents[f"bench-{model}"] = replace(base, name=f"bench-{model}",
                                                               model=model)
                for i in range(runs):
                    rows.append(await _one(runtime, fake, random.Random(seed * 100_003 + i)))
            finally:
                await runtime.close()
        unexpected = [r.note for r in fake.unexpected]
    over = [r for r in rows if _worst(r) > r["cap_usd"]]
    headroom = [(r["cap_usd"] - _worst(r)) / r["cap_usd"] for r in rows]
    spent = [r for r in rows if r["model_calls"]]
    return {
        "how": __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "runs": len(rows),
        "seed": seed,
        "over_cap": len(over),
        "over_cap_runs": over,
        "headroom_fraction": summary(headroom),
        "headroom_fraction_runs_that_called_the_model": summary(
            [(r["cap_usd"] - r["cost_usd"]) / r["cap_usd"] for r in spent]),
        "statuses": dict(Counter(r["status"] for r in rows)),
        "halted_before_any_call": len(rows) - len(spent),
        "model_calls": summary([r["model_calls"] for r in rows], 2),
        "max_cost_over_cap": round(max(_worst(r) / r["cap_usd"] for r in rows), 4),
        "fake_unexpected": unexpected,
    }


def _worst(row: dict[str, Any]) -> float:
    """The highest of the three costs: keel's meter, keel's runs table, the server's usage."""
    return max(row["cost_usd"], row["server_cost_usd"], row["recorded_cost_usd"] or 0.0)


async def _one(runtime: Runtime, fake: FakeAnthropic, rng: random.Random) -> dict[str, Any]:
    cap = round(rng.uniform(0.005, 0.05), 4)
    model = rng.choice(MODELS)
    limits = Limits(budget_usd=cap, max_steps=rng.randint(2, 10), timeout_s=120,
                    max_tokens=rng.choice([1024, 4096, 8192, 16000]))
    history = _history(rng, rng.randint(0, 4000))
    task = {"role": "user", "content": [{"type": "text", "text":
                                         "Write the full quarterly cost report, in detail."}]}
    fake.queue.clear()
    fake.enqueue(*_script(rng))
    first = len(fake.requests)
    result = await runtime.run(RunRequest(agent=f"bench-{model}", messages=[*history, task],
                                          new_from=len(history), kind="cli", limits=limits))
    fake.queue.clear()
    served = [r for r in fake.requests[first:] if r.path == "/v1/messages" and r.usage]
    server_cost = sum(runtime.prices.cost(str(r.model), usage_from_api(r.usage)) for r in served)
    record = await runtime.runs.get(result.run_id)
    return {
        "cap_usd": cap, "model": model, "max_steps": limits.max_steps,
        "max_tokens": limits.max_tokens, "status": result.status,
        "cost_usd": result.cost_usd, "server_cost_usd": server_cost,
        "recorded_cost_usd": record.cost_usd if record else None,
        "model_calls": result.model_calls,
    }
