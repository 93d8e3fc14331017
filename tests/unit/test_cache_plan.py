"""Cache lifetime and placement (issue 13): which TTL a session's rhythm pays for, where the
stable head ends, and a reservation that bounds what 1-hour writes can bill."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agents.caching import (
    SUMMARY_TAG,
    CacheForecast,
    CachePlan,
    head_end,
    one_hour_bound,
    plan_cache,
    system_blocks,
    with_breakpoints,
    with_ttl,
)
from agents.pricing import (
    PriceTable,
    Usage,
    cost_of,
    dearest_input_rate,
    input_rate_bound,
    request_cache_ttl,
)
from agents.tokens import request_bound
from tests.fakes.anthropic_cache import TOKENIZERS, prefix_items

SONNET = PriceTable.builtin().require("claude-sonnet-4-6")


def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def forecast(gaps: tuple[float, ...], *, history: int = 3000) -> CacheForecast:
    return CacheForecast(gaps_s=gaps, context_tokens=history + 1600, head_tokens=700,
                         turn_tokens=600, compact_at_tokens=24_000, history_tokens=history)


def test_no_gap_seen_writes_for_five_minutes() -> None:
    assert plan_cache(SONNET, None) == CachePlan(why=plan_cache(SONNET, None).why)
    plan = plan_cache(SONNET, forecast(()))
    assert (plan.head, plan.tail) == ("5m", "5m") and "no gap" in plan.why


def test_short_gaps_write_the_head_for_an_hour_when_compaction_is_due_within_it() -> None:
    # 35 turns of 600 tokens to go at ~70 s a turn: the head is read again in ~40 min
    plan = plan_cache(SONNET, forecast((60.0, 80.0, 70.0)))
    assert (plan.head, plan.tail) == ("1h", "5m"), plan.why
    assert "next compaction" in plan.why
    # compaction hours away (turns 20 min apart would be long gaps; take 4-minute gaps): 5 min
    far = plan_cache(SONNET, forecast((240.0, 240.0)))
    assert (far.head, far.tail) == ("5m", "5m"), far.why


def test_long_gaps_write_everything_for_an_hour_when_the_rewrite_costs_more() -> None:
    plan = plan_cache(SONNET, forecast((600.0, 900.0, 60.0), history=10_000))
    assert (plan.head, plan.tail) == ("1h", "1h") and "5-60 min" in plan.why
    # one long gap in eight, a small context: the dearer writes every turn cost more
    small = CacheForecast(gaps_s=(30.0,) * 7 + (600.0,), context_tokens=800, head_tokens=0,
                          turn_tokens=600, compact_at_tokens=24_000, history_tokens=800)
    assert plan_cache(SONNET, small).tail == "5m"


def test_the_head_ends_after_a_small_first_turn_and_the_summaries_after_it() -> None:
    q1, a1 = {"role": "user", "content": [text("hi, I grow tomatoes")]}, {
        "role": "assistant", "content": [text("Nice.")]}
    q2 = {"role": "user", "content": [text(f"{SUMMARY_TAG}\nthey asked about soil"),
                                      text("and basil?")]}
    assert head_end([q1]) is None  # the first turn is not over yet
    assert head_end([q1, a1, {"role": "user", "content": [text("more")]}]) == (1, 0)
    assert head_end([q1, a1, q2]) == (2, 0)
    big = {"role": "user", "content": [text("x " * 4000)]}
    assert head_end([big, a1, {"role": "user", "content": [text("more")]}]) is None
    marked = with_breakpoints([q1, a1, q2], CachePlan(head="1h", tail="5m"))
    assert marked[2]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert marked[2]["content"][1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in q2["content"][0]  # history itself is never marked


@pytest.mark.parametrize("tokenizer", ["chars4", "bytes"])
def test_the_reservation_bounds_what_one_hour_writes_can_bill(tokenizer: str) -> None:
    first = {"role": "user", "content": [text("こんにちは\x01 " * 40)]}
    answer = {"role": "assistant", "content": [text("ok " * 50)]}
    later = {"role": "user", "content": [text("and then? " * 300)]}
    plan = CachePlan(head="1h", tail="5m")
    body = {"model": "claude-sonnet-4-6", "max_tokens": 100,
            "system": with_ttl(system_blocks("be brief " * 100), plan.head),
            "messages": with_breakpoints([first, answer, later], plan)}
    assert request_cache_ttl(body) == "1h"
    items = prefix_items(body, TOKENIZERS[tokenizer])  # type: ignore[index]
    last_hour = max(i for i, it in enumerate(items) if (it.cache_control or {}).get("ttl") == "1h")
    hour_tokens = sum(it.tokens for it in items[:last_hour + 1])
    total = sum(it.tokens for it in items)
    bound = one_hour_bound(body)
    input_bound = request_bound(body["system"], [], body["messages"])  # what a run reserves on
    assert hour_tokens <= bound < input_bound and total <= input_bound
    # the worst the fake can bill (everything written, the head at 1 hour) fits the reservation
    worst = cost_of(SONNET, Usage(cache_write_1h_tokens=hour_tokens,
                                  cache_write_5m_tokens=total - hour_tokens))
    rate = input_rate_bound(SONNET, "1h", input_tokens=input_bound, one_hour_tokens=bound)
    assert worst <= input_bound * rate / 1e6 + 1e-12
    assert rate < dearest_input_rate(SONNET, "1h")  # tighter than pricing all of it at 2x
    assert input_rate_bound(SONNET, "5m", input_tokens=total) == dearest_input_rate(SONNET, "5m")


def test_a_head_already_cached_keeps_the_lifetime_it_was_written_with() -> None:
    # the same rhythm that writes a new head for an hour: once the head sits inside the prefix
    # the last turn cached, this run writes no entry for it; a 1-hour marker would write nothing
    # and only price the head at 2x in the reservation (turns 4-32 of the bench's 60-turn chat
    # carried one for nothing)
    due = forecast((60.0, 80.0, 70.0))
    assert plan_cache(SONNET, due).head == "1h"
    cached = replace(due, head_new=False)
    plan = plan_cache(SONNET, cached)
    assert (plan.head, plan.tail) == ("5m", "5m"), plan.why
    assert "already cached" in plan.why
    # long gaps still ask for a 1-hour tail, and a 1-hour marker may not follow a 5-minute one
    slow = replace(forecast((600.0, 900.0, 60.0), history=10_000), head_new=False)
    assert (plan_cache(SONNET, slow).head, plan_cache(SONNET, slow).tail) == ("1h", "1h")


def test_one_gap_is_a_guess_and_tools_and_system_make_an_hour_for_the_head_pay() -> None:
    # the bench's seed 2 at its second turn: one gap of 112 s and one turn of 555 tokens put the
    # compaction ~79 min away, past the hour; it came after 44, and the turn after it wrote
    # tools, system and head again. One gap says little: a 39% chance it is within the hour,
    # against rewriting ~2,250 tokens at 1.25x for 555 written at 2x instead of 1.25x
    guess = CacheForecast(gaps_s=(112.0,), context_tokens=2300, head_tokens=555,
                          turn_tokens=555, compact_at_tokens=24_000, history_tokens=555,
                          prefix_tokens=1700)
    plan = plan_cache(SONNET, guess)
    assert (plan.head, plan.tail) == ("1h", "5m"), plan.why
    assert "~79 min (39% likely 5-60 min from now, by 1 gap(s))" in plan.why, plan.why
    # the head alone (tools and system kept cached by other sessions) does not pay at 39%
    assert plan_cache(SONNET, replace(guess, prefix_tokens=0)).head == "5m"
    # eight gaps that agree the compaction is hours away: 5 minutes
    sure = plan_cache(SONNET, replace(guess, gaps_s=(240.0,) * 8))
    assert sure.head == "5m", sure.why


def test_an_hour_is_never_chosen_where_its_worst_case_would_not_fit_the_run_cap() -> None:
    # a 13,000-token system prompt and a 46-token first turn, the next turn a second later: the
    # hour pays for the head, but the run's first call must then hold every token up to the head
    # at the 1-hour rate (2x input): ~$0.082 against a $0.06 cap, so the turn would be refused
    # before any call (the 5-minute plan fits). Under $0.50 it fits.
    quick = CacheForecast(gaps_s=(0.9,), context_tokens=9937, head_tokens=46, turn_tokens=46,
                          compact_at_tokens=32_000, history_tokens=46, prefix_tokens=13_001)
    assert plan_cache(SONNET, quick).head == "1h"
    assert plan_cache(SONNET, quick, budget_usd=0.50).head == "1h"
    assert plan_cache(SONNET, quick, budget_usd=0.06).head == "5m"
    # the same for the whole context after long gaps: 1 hour pays, and fits only a larger cap
    slow = forecast((600.0, 900.0, 60.0), history=10_000)
    assert plan_cache(SONNET, slow, budget_usd=0.50).tail == "1h"
    assert plan_cache(SONNET, slow, budget_usd=0.06).tail == "5m"
