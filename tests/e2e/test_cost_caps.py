"""Cost bounds against the fake Anthropic server's own usage, with the real anthropic client.

The judge is the server: what it billed (its ``usage`` per request, priced here from Anthropic's
published prices, written out independently of keel's table) must never pass a cap — a run's,
under an adversarial tokenizer; a day's, with many runs at once.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agents.config import load_settings
from agents.model.anthropic_client import AnthropicModelClient
from agents.tokens import estimate
from storage.ledger import DailyCaps
from storage.traces import TraceStore
from tests.cost_harness import adversarial_text, billed, chat, crowd, make_run
from tests.e2e.conftest import BotWorld, bot_env, is_router, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, reply
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture
async def adversarial() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic(tokenizer="bytes")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def client(fake_anthropic: FakeAnthropic) -> AsyncIterator[AnthropicModelClient]:
    c = AnthropicModelClient(api_key="sk-ant-test", base_url=fake_anthropic.base_url,
                             max_retries=0)
    try:
        yield c
    finally:
        await c.close()


# ------------------------------------------------------------------ a run's cap, hostile input


async def test_200_adversarial_runs_never_pass_their_cap_by_the_servers_usage(
    adversarial: FakeAnthropic, tmp_path: Path
) -> None:
    rng = random.Random(13)

    def responder(rec: RecordedRequest) -> Any:  # long hostile answers: max_tokens must bind
        return reply("ok " + adversarial_text(rng, rng.randrange(200, 4000)))

    adversarial.responder = responder
    traces = TraceStore(tmp_path / "traces")
    client = AnthropicModelClient(api_key="sk-ant-test", base_url=adversarial.base_url,
                                  max_retries=0)
    over, calls, halted_first, undercounted = [], 0, 0, 0
    try:
        for i in range(200):
            cap = rng.choice([0.005, 0.01, 0.02, 0.05, 0.10, 0.25])
            turns = [adversarial_text(rng, rng.choice([10, 300, 2000, 8000]))
                     for _ in range(rng.randrange(1, 4))]
            before = len(adversarial.message_requests)
            run = make_run(traces, cap)
            made = await chat(run, client, turns)
            mine = adversarial.message_requests[before:]
            spent = billed(mine)
            calls += made
            halted_first += made == 0
            # the attack is real: keel's old estimate undercounts what this server bills
            undercounted += any(r.usage["input_tokens"] + r.usage["cache_creation_input_tokens"]
                                + r.usage["cache_read_input_tokens"]
                                > estimate(r.body["messages"]) + estimate(r.body["system"])
                                + estimate(r.body["tools"]) for r in mine if r.usage)
            assert spent == pytest.approx(run.budget.spent_usd, abs=1e-9)
            if spent > cap + 1e-9:
                over.append((i, cap, spent))
    finally:
        await client.close()
    assert over == []
    assert adversarial.unexpected == []
    # not vacuous: most runs called the model, and the old estimate was beaten in many of them
    print(f"200 runs: {calls} calls, {halted_first} refused before any call, old estimate beaten"
          f" in {undercounted}")
    assert calls >= 150 and halted_first < 80, (calls, halted_first)
    assert undercounted >= 50, undercounted


@pytest.mark.parametrize(("chars", "fits"), [(30_000, False), (15_000, True)])
async def test_a_control_character_task_is_refused_or_answered_never_overspent(
    adversarial: FakeAnthropic, tmp_path: Path, chars: int, fits: bool
) -> None:
    """The measured case of issue 13: 30,000 control characters on a $0.10 cap billed $0.19.

    At one token per byte 30,000 of them cost $0.1125 as input alone: the run must refuse before
    sending. Half as many fit, but only with the API's exact count: their byte bound (JSON
    escapes, 6 bytes each) alone would refuse them."""
    adversarial.responder = lambda rec: reply("fine")
    client = AnthropicModelClient(api_key="sk-ant-test", base_url=adversarial.base_url)
    try:
        run = make_run(TraceStore(tmp_path / "traces"), 0.10)
        await chat(run, client, ["\x01" * chars])
    finally:
        await client.close()
    assert billed(adversarial.message_requests) <= 0.10
    assert len(adversarial.message_requests) == (1 if fits else 0)
    assert len(adversarial.count_requests) == 1


# ------------------------------------------------------------------ a day's caps, many runs at once


async def test_twenty_people_at_once_stay_under_the_overall_daily_cap(
    fake_anthropic: FakeAnthropic, client: AnthropicModelClient, tmp_path: Path
) -> None:
    caps = DailyCaps(total_usd=0.05, per_user_usd=5.0)
    recorded, server = await crowd(fake_anthropic, client, tmp_path, users=list(range(1, 21)),
                                    caps=caps, guard="ledger")
    assert recorded == pytest.approx(server, abs=1e-9)
    assert server <= 0.05
    assert server >= 0.04  # the cap was used, not refused out of caution


async def test_one_person_in_twenty_topics_stays_under_the_per_user_cap(
    fake_anthropic: FakeAnthropic, client: AnthropicModelClient, tmp_path: Path
) -> None:
    caps = DailyCaps(total_usd=20.0, per_user_usd=0.05)
    recorded, server = await crowd(fake_anthropic, client, tmp_path, users=[7] * 20, caps=caps,
                                    guard="ledger")
    assert recorded == pytest.approx(server, abs=1e-9)
    assert 0.04 <= server <= 0.05


@pytest.mark.parametrize("caps", [DailyCaps(total_usd=0.05, per_user_usd=5.0),
                                  DailyCaps(total_usd=20.0, per_user_usd=0.05)],
                         ids=["overall", "per-user"])
async def test_checking_spend_before_each_call_is_not_enough(
    fake_anthropic: FakeAnthropic, client: AnthropicModelClient, tmp_path: Path, caps: DailyCaps
) -> None:
    """The attack the two tests above survive: without holds, the crowd passes the cap."""
    users = list(range(1, 21)) if caps.per_user_usd == 5.0 else [7] * 20
    _, server = await crowd(fake_anthropic, client, tmp_path, users=users, caps=caps,
                             guard="check")
    assert server > 0.05 * 3


# ------------------------------------------------------------------ small budgets, through the bot


@pytest_asyncio.fixture
async def small_budget_world(
    fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AsyncIterator[BotWorld]:
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_RUN_BUDGET_USD=request.param)
    world = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    world.app = await start_bot(world.settings)
    try:
        yield world
    finally:
        await stop_bot(world.app)
    assert not fake_anthropic.unexpected, [r.note for r in fake_anthropic.unexpected]


@pytest.mark.parametrize("small_budget_world", ["0.01"], indirect=True)
async def test_hello_to_the_default_agent_completes_under_a_one_cent_run_cap(
    small_budget_world: BotWorld,
) -> None:
    world = small_budget_world
    world.answer(lambda req: reply("Hello! How can I help?"))
    world.telegram.inject_text(world.alice_chat, "hello")
    message = await world.telegram.next_bot_message(world.alice_chat.id)
    assert "Hello! How can I help?" in message["text"]
    assert len(world.agent_requests) == 1
    billed_usd = billed(world.agent_requests) + sum(
        (r.usage["input_tokens"] * 1.00 + r.usage["output_tokens"] * 5.00) / 1_000_000
        for r in world.anthropic.message_requests if is_router(r) and r.usage)  # Haiku 4.5
    assert billed_usd <= 0.01


@pytest.mark.parametrize("small_budget_world", ["0.004"], indirect=True)
async def test_a_budget_too_small_for_one_answer_says_so_and_spends_nothing(
    small_budget_world: BotWorld,
) -> None:
    world = small_budget_world
    world.telegram.inject_text(world.alice_chat, "hello")
    message = await world.telegram.next_bot_message(world.alice_chat.id)
    # no answer could follow routing, so the router is not paid either: the turn costs $0
    assert world.anthropic.message_requests == []
    assert "nothing was spent; " in message["text"]
    assert "this $0.0040 budget cannot cover one answer of at most 256 tokens" in message["text"]


@pytest.mark.parametrize("small_budget_world", ["0.05"], indirect=True)
async def test_a_long_chat_under_a_small_cap_is_answered_every_time(
    small_budget_world: BotWorld,
) -> None:
    """Through the bot: at $0.05 a run pays for ~12,000 input tokens, half the default
    compaction threshold. Every message is answered; the chat is compacted after a reply, once
    the next turn would no longer fit the cap (before, from about the 22nd message on every one
    was refused with "the budget is spent", for good)."""
    world = small_budget_world
    words = "soil compost tomato basil pepper water sun shade fence spring summer".split()

    def answer(req: RecordedRequest) -> Any:
        rng = random.Random(req.last_user_text)
        return reply(" ".join(rng.choice(words) for _ in range(rng.randint(150, 350))) + ".")

    world.answer(answer)
    rng = random.Random(5)
    for n in range(32):
        world.telegram.inject_text(
            world.alice_chat, f"q{n}: " + " ".join(rng.choice(words) for _ in range(60)) + "?")
        message = await world.telegram.next_bot_message(world.alice_chat.id, timeout=10.0)
        text = message["text"]
        assert "budget" not in text and text.split()[0] in words, (n, text[:200])
    assert any("Summary of the earlier conversation" in json.dumps(r.body)
               for r in world.agent_requests), "no turn after a compaction"
