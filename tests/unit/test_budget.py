import json
import random
from pathlib import Path

import pytest

from agents.budget import MIN_USEFUL_OUTPUT_TOKENS, BudgetHalt, BudgetMeter, LedgerGate, usd
from agents.caching import system_blocks, with_moving_breakpoint
from agents.pricing import PriceTable, Usage, cost_of, dearest_input_rate, request_cache_ttl
from agents.tokens import bound, estimate
from storage.db import Database
from storage.ledger import DailyCaps, Ledger
from tests.fakes.anthropic_cache import adversarial_block_tokens, estimate_block_tokens

SONNET = PriceTable.builtin().require("claude-sonnet-4-6")


def test_reservation_fits_the_whole_call_when_the_budget_allows() -> None:
    meter = BudgetMeter(1.0)
    r = meter.reserve(SONNET, input_tokens=1000, max_tokens=4096)
    assert r.max_tokens == 4096
    assert r.worst_case_usd <= meter.left_usd


def test_max_tokens_shrinks_to_what_is_left() -> None:
    meter = BudgetMeter(0.01)  # $0.01 at $15/M output is ~666 tokens minus the input
    r = meter.reserve(SONNET, input_tokens=100, max_tokens=4096)
    assert MIN_USEFUL_OUTPUT_TOKENS <= r.max_tokens < 666
    assert r.worst_case_usd <= 0.01 + 1e-12


def test_halts_before_calling_when_no_useful_call_fits() -> None:
    meter = BudgetMeter(0.001)
    with pytest.raises(BudgetHalt):
        meter.reserve(SONNET, input_tokens=100, max_tokens=4096)


def test_settled_cost_never_exceeds_the_reservation() -> None:
    meter = BudgetMeter(0.05)
    while True:
        try:
            r = meter.reserve(SONNET, input_tokens=2000, max_tokens=4096)
        except BudgetHalt:
            break
        # the worst a real call can bill: every input token as a 1h cache write, full output
        usage = Usage(cache_write_1h_tokens=2000, output_tokens=r.max_tokens)
        assert cost_of(SONNET, usage) <= r.worst_case_usd + 1e-12
        meter.settle(SONNET, usage)
    assert meter.spent_usd <= 0.05


def test_warns_once_at_seventy_percent() -> None:
    meter = BudgetMeter(1.0)
    meter.spent_usd = 0.69
    assert not meter.should_warn()
    meter.spent_usd = 0.70
    assert meter.should_warn()
    assert not meter.should_warn()


# ------------------------------------------------------------------ the input bound and its rate


def _hostile(rng: random.Random) -> str:
    ranges = [(0, 32), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x80, 0x800), (32, 127)]
    lo, hi = rng.choice(ranges)
    return "".join(chr(rng.randrange(lo, hi)) for _ in range(rng.randrange(1, 400)))


def test_the_bound_is_never_below_either_tokenizer_of_the_fake_and_the_old_estimate_is() -> None:
    rng = random.Random(7)
    beaten = 0
    for _ in range(2000):
        text = _hostile(rng)
        block = rng.choice([
            {"type": "text", "text": text},
            {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"q": text, "n": [1, text]}},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": text},
            {"type": "text", "text": json.dumps({"k": text}, ensure_ascii=rng.random() < 0.5)},
        ])
        assert bound(block) >= max(estimate_block_tokens(block), adversarial_block_tokens(block))
        beaten += estimate(block) < adversarial_block_tokens(block)
    assert beaten > 500  # the attack the bound must survive


def test_keels_requests_can_only_write_five_minute_cache_entries() -> None:
    messages = [{"role": "user", "content": "hi"}]
    body = {"system": system_blocks("be brief"), "messages": with_moving_breakpoint(messages)}
    assert request_cache_ttl(body) == "5m"
    assert request_cache_ttl({"messages": messages}) == "none"
    one_hour = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    assert request_cache_ttl(one_hour) == "1h"
    assert dearest_input_rate(SONNET, "5m") == SONNET.cache_write_5m == 3.75
    assert dearest_input_rate(SONNET, "1h") == 6.00
    assert dearest_input_rate(SONNET, "none") == SONNET.input


def test_a_five_minute_request_is_reserved_at_the_five_minute_rate() -> None:
    r = BudgetMeter(1.0).reserve(SONNET, input_tokens=10_000, max_tokens=256,
                                 input_rate=dearest_input_rate(SONNET, "5m"))
    assert r.worst_case_usd == pytest.approx((10_000 * 3.75 + 256 * 15) / 1e6)


def test_a_halt_before_any_call_says_nothing_was_spent_and_what_one_answer_needs() -> None:
    meter = BudgetMeter(0.004)
    with pytest.raises(BudgetHalt) as caught:
        meter.reserve(SONNET, input_tokens=2000, max_tokens=4096)
    text = caught.value.explain(meter)
    assert text.startswith("nothing was spent; this $0.0040 budget cannot cover one answer of "
                           f"at most {MIN_USEFUL_OUTPUT_TOKENS} tokens")
    assert usd(0.5) == "$0.50" and usd(0.0123) == "$0.0123"


async def test_a_daily_cap_shrinks_max_tokens_then_halts(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "k.sqlite3")
    try:
        gate = LedgerGate(Ledger(db), DailyCaps(total_usd=0.01), run_id="r", agent="a", user_id=1)
        want = BudgetMeter(1.0).reserve(SONNET, input_tokens=100, max_tokens=4096)
        fitted, hold = await gate.hold(SONNET, want)
        assert MIN_USEFUL_OUTPUT_TOKENS <= fitted.max_tokens < 4096
        assert fitted.worst_case_usd <= hold.amount_usd <= 0.01 + 1e-12
        with pytest.raises(BudgetHalt) as caught:  # the day is fully held by the first call
            await gate.hold(SONNET, want)
        assert caught.value.scope == "daily" and caught.value.cap_name == "everyone"
        assert "daily budget of everyone is used up" in caught.value.explain(BudgetMeter(1.0))
    finally:
        await db.close()
