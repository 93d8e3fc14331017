import pytest

from agents.budget import MIN_USEFUL_OUTPUT_TOKENS, BudgetHalt, BudgetMeter
from agents.pricing import PriceTable, Usage, cost_of

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
