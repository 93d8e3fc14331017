"""A long conversation stays bounded: compaction summarises old resolved turns."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import BotWorld, bot_env, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e


async def test_sixty_turns_keep_input_bounded_thanks_to_compaction(
    fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_COMPACT_AT_TOKENS="4000")
    from agents.config import load_settings

    w = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    w.route_to = lambda text: "assistant"
    summaries: list[RecordedRequest] = []

    def summarise(req: RecordedRequest) -> Reply:
        summaries.append(req)
        return reply("Summary: the person sent numbered messages about gardening; all answered.")

    w.summarise = summarise
    paragraph = "I planted tomatoes, basil and peppers along the south fence this spring. " * 3
    w.answer(lambda req: reply(f"Noted turn {req.last_user_text[:12]}. " + paragraph))
    w.app = await start_bot(w.settings)
    try:
        for turn in range(60):
            w.telegram.inject_text(w.alice_chat, f"turn {turn:03d}: {paragraph}")
            await w.telegram.next_bot_message(w.alice_chat.id, timeout=15)
    finally:
        await stop_bot(w.app)

    reqs = w.agent_requests
    assert len(reqs) == 60
    totals = [r.usage["input_tokens"] + r.usage["cache_read_input_tokens"]
              + r.usage["cache_creation_input_tokens"] for r in reqs]
    assert summaries, "compaction never ran"
    # without compaction the 60th request would carry ~60 turns; with it, input stays bounded
    first_compaction_turn = next(i for i, r in enumerate(reqs) if any(
        "Summary of the earlier conversation" in str(m) for m in r.messages))
    assert max(totals[first_compaction_turn:]) < totals[first_compaction_turn - 1] * 1.6
    assert totals[-1] < 3 * totals[5]
    # compaction is rare: most turns still read the cache
    hits = sum(1 for r in reqs[1:] if r.usage["cache_read_input_tokens"] > 0)
    assert hits >= 50, hits
    # the summary replaced the oldest turns after the first one (small, kept verbatim as the
    # cached head) and the model still sees the latest ones verbatim
    last = reqs[-1].messages
    assert "turn 000" in str(last[0])
    assert "Summary of the earlier conversation" in str(last[2]["content"][0])
    assert "turn 059" in str(last[-1])
    assert not fake_anthropic.unexpected
