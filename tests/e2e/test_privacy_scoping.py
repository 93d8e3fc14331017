"""Each person sees their own runs, traces and spend; the owner sees all; nothing private reaches
a group; an escalation button answers only from its own message, pressed by someone allowed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.config import load_settings
from tests.e2e.conftest import ALICE_ID, API_KEY, BOB_ID, BotWorld, bot_env, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import Chat, FakeTelegram

pytestmark = pytest.mark.e2e

OWNER_ID = 1000
ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def running(telegram: FakeTelegram, anthropic: FakeAnthropic,
                  monkeypatch: pytest.MonkeyPatch, **env: str) -> AsyncIterator[BotWorld]:
    # Alice and Bob are users; the owner is someone else, so Alice is nobody's superior.
    bot_env(monkeypatch, telegram, anthropic, KEEL_OWNER_ID=str(OWNER_ID), **env)
    world = BotWorld(telegram=telegram, anthropic=anthropic, settings=load_settings())
    world.app = await start_bot(world.settings)
    try:
        yield world
    finally:
        await stop_bot(world.app)


async def ask(w: BotWorld, chat: Chat, text: str, **kwargs: object) -> dict:  # type: ignore[type-arg]
    w.telegram.inject_text(chat, text, **kwargs)  # type: ignore[arg-type]
    return await w.telegram.next_bot_message(chat.id, timeout=30)


def unnamed(text: str, wanted: str) -> str:
    """The reply with the id it names blanked out, only where it stands as a whole id:
    a two-character prefix such as "ce" must not also blank the "ce" of "trace"."""
    return re.sub(rf"(?<![0-9a-f-]){re.escape(wanted)}(?![0-9a-f-])", "?", text)


def test_an_id_is_blanked_only_where_it_stands_whole() -> None:
    # trace ids are random: one in 128 starts with "ce" or "ac", both inside "trace"
    assert unnamed("No trace ce. /runs lists yours.", "ce") == "No trace ?. /runs lists yours."
    assert unnamed("No trace ac. /runs lists yours.", "ac") == "No trace ?. /runs lists yours."


async def test_a_user_sees_only_their_own_runs_traces_and_spend_the_owner_sees_all(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(fake_telegram, fake_anthropic, monkeypatch) as w:
        w.answer(lambda req: reply(f"noted: {req.last_user_text}"))
        owner = w.telegram.private_chat(w.telegram.user("Olivia", id=OWNER_ID))
        bob = w.telegram.private_chat(w.bob)
        await ask(w, w.alice_chat, "my secret diagnosis is " + "very private " * 40)
        await ask(w, bob, "hi")
        runtime = w.app.bot_data["runtime"]
        [alices] = await runtime.runs.recent(user_id=ALICE_ID)
        alice_spent = await runtime.usage.spent(user_id=ALICE_ID)
        bob_spent = await runtime.usage.spent(user_id=BOB_ID)
        assert alice_spent > bob_spent > 0

        listing = (await ask(w, bob, "/runs"))["text"]
        assert alices.trace_id[:8] not in listing
        # every way of naming Alice's run answers exactly as an unknown id does
        unknown = "0123456789abcdef" * 3
        for wanted in (alices.trace_id[:2], alices.trace_id[:8], alices.trace_id, alices.id[:8]):
            said = (await ask(w, bob, f"/trace {wanted}"))["text"]
            other = (await ask(w, bob, f"/trace {unknown[:len(wanted)]}"))["text"]
            assert unnamed(said, wanted) == unnamed(other, unknown[:len(wanted)])
        assert "diagnosis" not in str(w.telegram.sent(bob.id))
        cost = (await ask(w, bob, f"/cost {ALICE_ID}"))["text"]
        assert f"{bob_spent:.4f}" in cost
        assert f"{alice_spent:.4f}" not in cost and f"{alice_spent + bob_spent:.4f}" not in cost
        assert w.telegram.documents(bob.id) == []

        assert alices.trace_id[:8] in (await ask(w, owner, "/runs"))["text"]
        summary = (await ask(w, owner, f"/trace {alices.trace_id[:8]}"))["text"]
        assert alices.trace_id in summary
        [document] = await w.telegram.wait_for(lambda: w.telegram.documents(owner.id), timeout=10)
        assert b"diagnosis" in document["data"]
        await w.telegram.next_bot_message(owner.id)  # the document's own message
        cost = (await ask(w, owner, "/cost"))["text"]
        assert f"{alice_spent:.4f}" in cost and f"{alice_spent + bob_spent:.4f}" in cost


async def test_no_trace_file_is_ever_sent_to_a_group(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(fake_telegram, fake_anthropic, monkeypatch) as w:
        w.answer(lambda req: reply(f"noted: {req.last_user_text}"))
        olivia = w.telegram.user("Olivia", id=OWNER_ID)
        group = w.telegram.group("Family")
        await ask(w, w.alice_chat, "my private question")
        await ask(w, group, "group question", user=w.alice, mention_bot=True)
        runtime = w.app.bot_data["runtime"]
        [group_run, private_run] = await runtime.runs.recent(user_id=ALICE_ID)
        assert (group_run.chat_id, private_run.chat_id) == (group.id, w.alice_chat.id)

        said = (await ask(w, group, f"/trace {group_run.trace_id[:8]}", user=w.alice))["text"]
        assert group_run.trace_id in said  # the summary of a run of this group
        await w.telegram.next_bot_message(group.id)  # "…sent only in a private chat"
        for who in (w.alice, olivia):  # the run's person, and the owner who may see everything
            said = (await ask(w, group, f"/trace {private_run.trace_id[:8]}", user=who))["text"]
            assert said.startswith("No trace") and "private question" not in said
        listing = (await ask(w, group, "/runs", user=olivia))["text"]
        assert private_run.trace_id[:8] not in listing and group_run.trace_id[:8] in listing
        cost = (await ask(w, group, "/cost", user=olivia))["text"]
        assert "Everyone:" not in cost and str(ALICE_ID) not in cost

        await ask(w, w.alice_chat, f"/trace {group_run.trace_id[:8]}")  # in private: the file
        await w.telegram.wait_for(lambda: w.telegram.documents(w.alice_chat.id), timeout=10)
        assert w.telegram.documents(group.id) == []


QUESTION = {"reason": "Refund over the limit", "context": "Order 1234.",
            "options": ["Approve", "Reject"]}


def escalating_agent(req: RecordedRequest) -> Reply:
    if not req.tool_results:
        return reply("Let me check.", tool_use("escalate_to_human", QUESTION))
    answer = json.loads(req.tool_results[0]["content"])
    return reply(f"Done: {answer['answer']}.")


async def _question(w: BotWorld, chat: Chat, **kwargs: object) -> dict:  # type: ignore[type-arg]
    question = await ask(w, chat, "Please refund order 1234", **kwargs)
    assert "Decision needed" in question["text"]
    return question


async def test_a_button_answers_only_from_its_own_message_and_only_for_someone_allowed(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(fake_telegram, fake_anthropic, monkeypatch) as w:
        w.answer(escalating_agent)
        tg = w.telegram
        owner = tg.private_chat(tg.user("Olivia", id=OWNER_ID))
        bob = tg.private_chat(w.bob)
        alices = await _question(w, w.alice_chat)
        bobs = await _question(w, bob)
        runtime = w.app.bot_data["runtime"]

        # Telegram passes on whatever callback data a client sends ("a bad client can send
        # arbitrary data"): Bob presses his own question with the data of Alice's Approve.
        alice_approve = alices["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        live = tg.chats[bob.id].messages[bobs["message_id"]]
        live["reply_markup"]["inline_keyboard"][0][0]["callback_data"] = alice_approve
        forged = tg.press_button(live, data=alice_approve, user=w.bob)
        await tg.wait_for(lambda: tg.answered(forged["callback_query"]["id"]), timeout=10)

        # in a group, a person removed by the owner presses Alice's group question
        group = tg.group("Shop")
        grouped = await _question(w, group, user=w.alice, mention_bot=True)
        await ask(w, owner, f"/deny {BOB_ID}")
        pressed = tg.press_button(grouped, text="Approve", user=w.bob)
        await tg.wait_for(lambda: tg.answered(pressed["callback_query"]["id"]), timeout=10)

        rows = await runtime.db.fetchall("SELECT status FROM escalations")
        assert [r["status"] for r in rows] == ["pending"] * 3
        assert {r.status for r in await runtime.runs.recent()} == {"waiting_human"}
        assert not any(m["text"].startswith("Done") for m in tg.sent())

        tg.press_button(alices, text="Approve", user=w.alice)  # the real press still works
        done = await tg.wait_for(lambda: next(
            (m for m in tg.sent(w.alice_chat.id) if m["text"].startswith("Done")), None), timeout=10)
        assert done["text"] == "Done: Approve."


async def test_keel_run_with_a_rejected_token_says_so_in_one_line(
        fake_telegram: FakeTelegram, tmp_path: Path) -> None:
    for token in ("999999:RejectedTokenRejectedTokenRejectedTok", "not-a-token"):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
               "TELEGRAM_BOT_TOKEN": token, "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
               "ANTHROPIC_API_KEY": API_KEY, "KEEL_DATA_DIR": str(tmp_path / "data"),
               "KEEL_ALLOWED_USER_IDS": str(ALICE_ID)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", cwd=str(tmp_path), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        text = (out + err).decode()
        assert proc.returncode not in (0, None)
        assert token not in text and "Traceback" not in text
        problems = [line for line in text.splitlines() if " INFO " not in line]
        assert len(problems) == 1 and "rejected the bot token" in problems[0], text
