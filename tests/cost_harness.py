"""Spending against the fake Anthropic server, judged by its own usage (issue 13): shared by the
cost-cap tests (tests/e2e/test_cost_caps.py) and the bench's ``caps`` section (bench/cost_caps.py),
so both attack keel the same way.

What the server billed is priced here from Anthropic's published prices, written out
independently of keel's price table.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from agents.budget import BudgetHalt, LedgerGate
from agents.executor.call import InputAnchor, call_model
from agents.executor.prepare import Prefix
from agents.ids import new_id
from agents.model.anthropic_client import AnthropicModelClient
from agents.pricing import PriceTable, Usage
from agents.run import Run
from agents.spec import AgentSpec, Limits
from storage.db import Database
from storage.ledger import DailyCaps, Ledger
from storage.traces import TraceStore
from storage.usage import UsageDelta, UsageLedger
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, reply

MODEL = "claude-sonnet-4-6"
# USD per million: input, output, cache write 5m, cache write 1h, cache read (Anthropic's prices).
SONNET_USD = (3.00, 15.00, 3.75, 6.00, 0.30)
SYSTEM = "You are a terse assistant. Answer in one short paragraph."
TOOL = {"name": "lookup", "description": "Look a word up.",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}


def billed(requests: list[RecordedRequest]) -> float:
    """What the server billed for ``requests``, by its own usage."""
    total = 0.0
    for rec in requests:
        if not rec.usage:
            continue
        u, split = rec.usage, rec.usage.get("cache_creation") or {}
        total += (u["input_tokens"] * SONNET_USD[0] + u["output_tokens"] * SONNET_USD[1]
                  + split.get("ephemeral_5m_input_tokens", 0) * SONNET_USD[2]
                  + split.get("ephemeral_1h_input_tokens", 0) * SONNET_USD[3]
                  + u["cache_read_input_tokens"] * SONNET_USD[4]) / 1_000_000
    return total


def adversarial_text(rng: random.Random, size: int) -> str:
    kind = rng.choice(["control", "cjk", "emoji", "json", "mixed"])
    if kind == "control":
        return "".join(chr(rng.randrange(0, 32)) for _ in range(size))
    if kind == "cjk":
        return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(size))
    if kind == "emoji":
        return "".join(chr(rng.randrange(0x1F300, 0x1FAFF)) for _ in range(size // 2 + 1))
    if kind == "json":
        rows = [{"id": i, "名前": chr(rng.randrange(0x4E00, 0x9FFF)) * 3, "v": "\x01\x02",
                 "e": "🚀"} for i in range(size // 40 + 1)]
        return json.dumps(rows, ensure_ascii=rng.random() < 0.5)
    pool = [chr(c) for c in (*range(0, 32), *range(0x4E00, 0x4E80), *range(0x1F600, 0x1F640))]
    return "".join(rng.choice(pool + list("abc ")) for _ in range(size))


def make_run(traces: TraceStore, cap: float, *, user_id: int | None = None,
             max_tokens: int = 4096) -> Run:
    spec = AgentSpec(name="t", description="test agent", system=SYSTEM, tools=("lookup",))
    rid = new_id()
    return Run(agent=spec, model=MODEL, price=PriceTable.builtin().require(MODEL),
               limits=Limits(budget_usd=cap, max_tokens=max_tokens), user_id=user_id,
               trace=traces.writer(trace_id=new_id(), run_id=rid), id=rid)


async def chat(run: Run, client: AnthropicModelClient, turns: list[str]) -> int:
    """Send ``turns`` as a conversation until they end or the budget halts; returns calls made."""
    prefix = Prefix.build(SYSTEM, [TOOL])
    anchor, messages, sent_before = InputAnchor(), [], 0
    for text in turns:
        messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
        try:
            response = await call_model(run, client, prefix, messages, anchor,
                                        sent_before=sent_before)
        except BudgetHalt:
            break
        sent_before = len(messages)
        messages.append({"role": "assistant", "content": response.content})
    run.trace.close()
    return run.model_calls


async def crowd(server: FakeAnthropic, client: AnthropicModelClient, tmp_path: Path, *,
                users: list[int], caps: DailyCaps, guard: str) -> tuple[float, float]:
    """Run ``len(users)`` conversations at once; returns (recorded, billed) USD for the day.

    ``guard`` "ledger" holds each call in the daily ledger; "check" is what keel did before
    (look at today's spend before each call, record it after) — kept to show the attack bites."""
    server.default_latency = 0.02  # calls overlap, as they do against the real API
    server.responder = lambda rec: reply("word " * 400)
    db = await Database.open(tmp_path / "keel.sqlite3")
    ledger = Ledger(db)
    traces = TraceStore(tmp_path / "traces")

    async def record(run: Run, usage: Usage, cost: float) -> None:
        await UsageLedger(db).add(user_id=run.user_id, agent="t",
                                  delta=UsageDelta(cost_usd=cost))

    async def over_a_cap(user: int) -> bool:
        report = await ledger.report(caps)
        mine = report.users.get(user)
        return bool((caps.total_usd is not None and report.overall.spent_usd >= caps.total_usd)
                    or (caps.per_user_usd is not None and mine
                        and mine.spent_usd >= caps.per_user_usd))

    async def one(user: int) -> None:
        run = make_run(traces, 0.50, user_id=user, max_tokens=1024)
        if guard == "ledger":
            run.budget.gate = LedgerGate(ledger, caps, run_id=run.id, agent="t", user_id=user)
        prefix = Prefix.build(SYSTEM, [TOOL])
        messages = [{"role": "user", "content": [{"type": "text", "text": f"hi {user}"}]}]
        for _ in range(6):
            if guard == "check" and await over_a_cap(user):
                break
            try:
                await call_model(run, client, prefix, messages, InputAnchor(), sent_before=0,
                                 on_usage=record)
            except BudgetHalt:
                break
        run.trace.close()

    try:
        await asyncio.gather(*(one(u) for u in users))
        recorded = (await ledger.report(caps)).overall.spent_usd
        assert await ledger.held() == 0
    finally:
        await db.close()
    return recorded, billed(server.message_requests)
