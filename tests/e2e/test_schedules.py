"""Scheduled agents end to end: a schedule fires, the plan is traced, the briefing lands in the
agent's forum topic; a delivery Telegram keeps refusing ends the run failed with an alert."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.config import load_settings
from tests.e2e.conftest import (
    ALICE_ID,
    BotWorld,
    at_hour,
    bot_env,
    is_router,
    quiet_hour,
    start_bot,
    stop_bot,
)
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

HOUR = quiet_hour("Europe/Madrid")  # the schedule's daily hour: no catch-up fire at start-up

pytestmark = pytest.mark.e2e

PLAN = {"goal": "Morning briefing", "steps": [
    {"instruction": "Find today's date in Madrid", "produces": "the date"},
    {"instruction": "Write the briefing", "produces": "the briefing text"},
]}


def briefing_model(req: RecordedRequest) -> Reply:
    tools = [t.get("name") for t in req.body.get("tools") or []]
    if "submit_plan" in tools:
        return reply(tool_use("submit_plan", PLAN))
    text = req.last_user_text
    if "Write the briefing" in text:
        return reply("**Briefing for Tuesday**\n\n- Sunny in Madrid\n- Nothing else of note")
    return reply("Today is Tuesday 24 November 2026.")


async def _world(fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[BotWorld, dict]:  # type: ignore[type-arg]
    forum = fake_telegram.forum("Briefings")
    config = tmp_path / "keel.toml"
    config.write_text(
        f'[[schedules]]\nname = "morning"\nagent = "briefing"\ncron = "0 {HOUR} * * *"\n'
        f'timezone = "Europe/Madrid"\nchat_id = {forum.id}\ncreate_topic = true\n'
        'budget_usd = 0.30\ntask = "Brief me for today."\n')
    bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_CONFIG=str(config))
    world = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    world.answer(briefing_model)
    world.app = await start_bot(world.settings)
    return world, {"forum": forum}


async def test_a_schedule_fires_plans_and_posts_the_briefing_in_its_topic(
    fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w, extra = await _world(fake_telegram, fake_anthropic, tmp_path, monkeypatch)
    forum = extra["forum"]
    try:
        scheduler = w.app.bot_data["scheduler"]
        at = at_hour((2026, 11, 24), HOUR, "Europe/Madrid")  # HOUR:00:05 in Madrid
        claim = await scheduler.fire("morning", now=at)
        assert claim is not None and claim.local_time == f"2026-11-24T{HOUR:02d}:00"
        assert await scheduler.fire("morning", now=at) is None  # the same local time runs once
        [topic_call] = fake_telegram.calls("createForumTopic")
        thread_id = topic_call.response["result"]["message_thread_id"]
        briefing = await fake_telegram.next_bot_message(forum.id, thread_id=thread_id, timeout=10)
        assert briefing["text"].startswith("Briefing for Tuesday")
        runtime = w.app.bot_data["runtime"]
        [record] = await runtime.runs.recent()
        assert (record.kind, record.status) == ("scheduled", "completed")
        events = runtime.traces.read(record.trace_id)
        [plan] = [e for e in events if e["type"] == "plan"]
        assert [s["instruction"] for s in plan["plan"]["steps"]] == [
            "Find today's date in Madrid", "Write the briefing"]
        assert not any(is_router(r) for r in fake_anthropic.requests)  # schedules skip the router
        # a second run reuses the topic keel created
        await scheduler.fire("morning", now=at_hour((2026, 11, 25), HOUR, "Europe/Madrid"))
        await fake_telegram.next_bot_message(forum.id, thread_id=thread_id, timeout=10)
        assert len(fake_telegram.calls("createForumTopic")) == 1
    finally:
        await stop_bot(w.app)


async def test_a_delivery_that_keeps_failing_is_a_failed_run_with_an_alert(
    fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w, extra = await _world(fake_telegram, fake_anthropic, tmp_path, monkeypatch)
    forum = extra["forum"]
    alice_chat = w.alice_chat
    try:
        scheduler = w.app.bot_data["scheduler"]
        # Telegram refuses the briefing (one retry layer: a refusal is final, not retried)
        fake_telegram.fail_next("sendMessage", status=400, description="Bad Request: chat not found")
        await scheduler.fire("morning", now=at_hour((2026, 11, 24), HOUR, "Europe/Madrid"))
        runtime = w.app.bot_data["runtime"]
        [record] = await runtime.runs.recent()
        assert record.status == "failed" and "delivery failed" in (record.status_detail or "")
        alert = await fake_telegram.next_bot_message(alice_chat.id, timeout=10)
        assert "morning" in alert["text"] and record.trace_id[:8] in alert["text"]
        assert [m for m in fake_telegram.sent(forum.id) if "Briefing" in m["text"]] == []
        events = runtime.traces.read(record.trace_id)
        delivery = [e for e in events if e["type"] == "delivery"]
        assert delivery and not delivery[-1].get("delivered")
        assert ALICE_ID == alice_chat.id
    finally:
        await stop_bot(w.app)


async def test_schedules_lists_worst_case_spend_and_run_posts_now(
    fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w, extra = await _world(fake_telegram, fake_anthropic, tmp_path, monkeypatch)
    forum = extra["forum"]
    try:
        w.telegram.inject_text(w.alice_chat, "/schedules")
        listing = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
        assert "morning" in listing["text"] and "Europe/Madrid" in listing["text"]
        assert "1 run(s)/day × $0.30 = $0.30/day worst case" in listing["text"]
        w.telegram.inject_text(w.alice_chat, "/run morning")
        ack = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
        assert "Running `morning`" in ack["text"] or "Running morning" in ack["text"]
        briefing = await w.telegram.wait_for(lambda: next(
            (m for m in w.telegram.sent(forum.id) if m["text"].startswith("Briefing")), None),
            timeout=10)
        assert briefing is not None
    finally:
        await stop_bot(w.app)
