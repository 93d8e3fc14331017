"""Production samples (issue 17): 👍 / 👎 under an agent's answer, off by default, pressed through
the real python-telegram-bot client against the fake Telegram; only the asker (or the owner and
admins) rates, a second press changes the one rating, and `keel eval --from-ratings` writes the
rated run as a golden-task candidate that passes offline without a model call."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents.config import load_settings
from tests.e2e.conftest import ALICE_ID, BOB_ID, BotWorld, bot_env, start_bot, stop_bot
from tests.e2e.test_cli_runs import _keel
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

CAROL_ID = 1003
QUIET = """
[agents.quiet]
description = "Answers without asking for a rating"
system = "You answer briefly."
ratings = false
"""


def clock_agent(req: RecordedRequest) -> Reply:
    """Looks the time up, then answers with it (so the candidate has a tool call to expect)."""
    if req.tool_results:
        return reply("It is **noon** in Madrid.")
    return reply("Let me look.", tool_use("get_current_time", {"timezone": "Europe/Madrid"}))


@contextlib.asynccontextmanager
async def running(telegram: FakeTelegram, anthropic: FakeAnthropic,
                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, toml: str = "",
                  **env: str) -> AsyncIterator[BotWorld]:
    config = tmp_path / "keel.toml"
    config.write_text(toml)
    bot_env(monkeypatch, telegram, anthropic, KEEL_CONFIG=str(config),
            KEEL_DATA_DIR=str(tmp_path / "data"),
            KEEL_ALLOWED_USER_IDS=f"{ALICE_ID},{BOB_ID},{CAROL_ID}", **env)
    w = BotWorld(telegram=telegram, anthropic=anthropic, settings=load_settings())
    w.app = await start_bot(w.settings)
    try:
        yield w
    finally:
        await stop_bot(w.app)
    assert not anthropic.unexpected, [r.note for r in anthropic.unexpected]


def _labels(message: dict[str, Any]) -> list[str]:
    rows = message.get("reply_markup", {}).get("inline_keyboard", [])
    return [b["text"] for row in rows for b in row]


async def _ask(w: BotWorld, chat: Any, text: str, **kwargs: Any) -> dict[str, Any]:
    w.telegram.inject_text(chat, text, **kwargs)
    message = await w.telegram.next_bot_message(chat.id, timeout=15)
    if "reply_markup" in message:
        await _wait_sent(w, message)
    return message


async def _wait_sent(w: BotWorld, message: dict[str, Any]) -> None:
    """The answer's outbox row records the message its buttons are on right after Telegram's
    answer; a press before that is asked to come again."""
    db = w.app.bot_data["runtime"].db
    for _ in range(500):
        if await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'sent'"
                             " AND telegram_message_ids LIKE ?", (f"%{message['message_id']}]",)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"message {message['message_id']} is not recorded as sent")


async def _press(w: BotWorld, message: dict[str, Any], label: str, user: Any) -> str:
    press = w.telegram.press_button(message, text=label, user=user)
    answer = await w.telegram.wait_for(lambda: w.telegram.answered(
        press["callback_query"]["id"]), timeout=10)
    return str(answer.get("text", ""))


async def _ratings(w: BotWorld) -> list[tuple[str, int, str]]:
    rows = await w.app.bot_data["runtime"].db.fetchall(
        "SELECT run_id, user_id, rating FROM ratings ORDER BY run_id")
    return [(r["run_id"], r["user_id"], r["rating"]) for r in rows]


def _current(w: BotWorld, message: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in w.telegram.sent(message["chat"]["id"])
                if m["message_id"] == message["message_id"])


async def test_buttons_appear_only_under_answers_of_agents_with_ratings_on(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with running(fake_telegram, fake_anthropic, monkeypatch, tmp_path) as w:
        off = await _ask(w, w.alice_chat, "hello")  # off by default
        assert off["text"] == "echo: hello" and "reply_markup" not in off

    async with running(fake_telegram, fake_anthropic, monkeypatch, tmp_path,
                       toml="ratings = true\n" + QUIET, KEEL_ROUTER_CONTINUE_S="0") as w:
        w.route_to = lambda text: "quiet" if "briefly" in text else "assistant"
        rated = await _ask(w, w.alice_chat, "hello again")
        assert rated["text"] == "echo: hello again" and _labels(rated) == ["👍", "👎"]
        quiet = await _ask(w, w.alice_chat, "answer briefly")  # the agent's own ratings = false
        assert quiet["text"] == "echo: answer briefly" and "reply_markup" not in quiet
        agents = await w.app.bot_data["runtime"].db.fetchall(
            "SELECT agent FROM runs ORDER BY started_at")
        assert [r["agent"] for r in agents] == ["assistant", "assistant", "quiet"]

        # a long answer goes in two messages: the buttons ride on the last one, and work there
        w.answer(lambda req: reply("word " * 1000))
        first = await _ask(w, w.alice_chat, "say a lot")
        last = await w.telegram.next_bot_message(w.alice_chat.id, timeout=15)
        assert "reply_markup" not in first and _labels(last) == ["👍", "👎"]
        await _wait_sent(w, last)
        assert (await _press(w, last, "👍", w.alice)).startswith("Thanks")
        assert [r for _, _, r in await _ratings(w)] == ["up"]


async def test_only_the_asker_rates_once_and_a_second_press_changes_it(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with running(fake_telegram, fake_anthropic, monkeypatch, tmp_path,
                       KEEL_RATINGS="true") as w:
        w.answer(clock_agent)
        carol = w.telegram.user("Carol", username="carol", id=CAROL_ID)
        team = w.telegram.group("Team")
        answer = await _ask(w, team, "what time is it in Madrid?", user=w.bob, mention_bot=True)
        assert answer["text"] == "It is noon in Madrid." and _labels(answer) == ["👍", "👎"]
        [run_id] = [r["id"] for r in await w.app.bot_data["runtime"].db.fetchall(
            "SELECT id FROM runs WHERE status = 'completed'")]

        # someone else in the group (allowed, not an admin) and a stranger: nothing is stored
        assert "Only the person who asked" in await _press(w, answer, "👎", carol)
        assert "not allowed" in await _press(w, answer, "👎", w.mallory)
        assert await _ratings(w) == [] and _labels(_current(w, answer)) == ["👍", "👎"]

        # the asker rates; taking the buttons away fails (best effort), so they can press again
        w.telegram.fail_next("editMessageReplyMarkup")
        assert (await _press(w, answer, "👍", w.bob)).startswith("Thanks")
        assert await _ratings(w) == [(run_id, BOB_ID, "up")]
        assert _labels(_current(w, answer)) == ["👍", "👎"]
        assert (await _press(w, answer, "👎", w.bob)).startswith("Thanks")
        assert await _ratings(w) == [(run_id, BOB_ID, "down")]
        await w.telegram.wait_for(lambda: "reply_markup" not in _current(w, answer), timeout=10)

        # the owner may rate anyone's answer
        second = await _ask(w, team, "and now?", user=w.bob, mention_bot=True)
        assert (await _press(w, second, "👍", w.alice)).startswith("Thanks")
        rows = await _ratings(w)
        assert len(rows) == 2 and (ALICE_ID, "up") in [(u, r) for _, u, r in rows]


async def test_a_rated_run_exports_as_a_candidate_that_passes_offline(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"KEEL_CONFIG": str(tmp_path / "keel.toml")}
    async with running(fake_telegram, fake_anthropic, monkeypatch, tmp_path,
                       toml="ratings = true\n") as w:
        w.answer(clock_agent)
        answer = await _ask(w, w.alice_chat, "What time is it in Madrid?")
        assert (await _press(w, answer, "👎", w.alice)).startswith("Thanks")
        [(run_id, _, _)] = await _ratings(w)
        trace_id = await w.app.bot_data["runtime"].db.fetchval(
            "SELECT trace_id FROM runs WHERE id = ?", (run_id,))

    code, out, err = await _keel(fake_anthropic, data, "eval", "--from-ratings", "--rating", "up",
                                 "--json", **env)
    assert code == 0, err
    assert json.loads(out)["written"] == []  # only 👎 was given
    code, out, err = await _keel(fake_anthropic, data, "eval", "--from-ratings", "--rating",
                                 "down", "--since", "2020-01-01", "--agent", "assistant",
                                 "--json", **env)
    assert code == 0, err
    [written] = json.loads(out)["written"]
    path = Path(written["path"])
    assert path.parent == tmp_path / "evals" / "assistant"
    assert path.name.startswith("rated-down-") and path.name.endswith(f"-{trace_id[:8]}.toml")
    text = await asyncio.to_thread(path.read_text)
    assert "judged this answer WRONG" in text and "get_current_time" in text
    assert (written["run_id"], written["user_id"]) == (run_id, ALICE_ID)

    # a second export changes nothing without --force
    await asyncio.to_thread(path.write_text, text + "# reviewed\n")
    code, out, err = await _keel(fake_anthropic, data, "eval", "--from-ratings", **env)
    assert code == 0, err
    assert "1 already there" in out
    assert (await asyncio.to_thread(path.read_text)).endswith("# reviewed\n")

    # the candidate runs offline: no key, the API unreachable
    calls = len(fake_anthropic.requests)
    code, out, err = await _keel(fake_anthropic, data, "eval", "assistant", "--json",
                                 ANTHROPIC_API_KEY="", ANTHROPIC_BASE_URL="http://127.0.0.1:9",
                                 **env)
    assert code == 0, out + err
    report = json.loads(out)
    assert (report["passed"], report["failed"]) == (1, 0)
    assert report["tasks"][0]["tools"] == ["get_current_time"]
    assert len(fake_anthropic.requests) == calls


async def test_from_ratings_refuses_a_bad_date_in_one_line(fake_anthropic: FakeAnthropic,
                                                           tmp_path: Path) -> None:
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "eval", "--from-ratings",
                                 "--since", "last week")
    assert code == 2 and err.strip() == "keel: --since 'last week' is not a date; give YYYY-MM-DD"
