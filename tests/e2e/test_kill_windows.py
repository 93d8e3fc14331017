"""Kills at chosen moments of the durable path (issue 11): the real bot as a subprocess, SIGKILLed
where a crash used to lose or repeat work, then restarted on the same data directory.

- A scheduled briefing whose run has committed but whose post has not reached Telegram yet is
  delivered exactly once after the restart, and its run is not repeated.
- A kill while the conversation is being compacted (after the reply was delivered) neither
  repeats the turn nor loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ALICE_ID, API_KEY, is_compactor, is_router
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WHEN = re.compile(r"\[Scheduled run 'brief' for (\d{4}-\d\d-\d\d \d\d:\d\d)")


class Bot:
    """The keel bot as a process over one data directory, restartable."""

    def __init__(self, telegram: FakeTelegram, anthropic: FakeAnthropic, workdir: Path,
                 **extra: str) -> None:
        self.workdir = workdir
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_API_BASE_URL": telegram.base_url,
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": anthropic.base_url,
            "KEEL_ALLOWED_USER_IDS": str(ALICE_ID),
            "KEEL_DATA_DIR": str(workdir / "data"),
            "KEEL_LOG_LEVEL": "INFO",
            **extra,
        }
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        with (self.workdir / f"bot-{self.starts}.log").open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "run", cwd=str(self.workdir), env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int | None:
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        except TimeoutError:
            process.kill()
            await process.wait()
        return process.returncode

    def log(self) -> str:
        return "\n".join(p.read_text("utf-8", "replace")[-3000:]
                         for p in sorted(self.workdir.glob("bot-*.log")))

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.workdir / "data" / "keel.sqlite3")
        conn.row_factory = sqlite3.Row
        return conn


def _briefer_toml(workdir: Path, chat_id: int, cron: str) -> None:
    """keel.toml with one agent and one schedule "brief" posting into ``chat_id``."""
    (workdir / "keel.toml").write_text(
        'default_agent = "briefer"\n'
        '[agents.briefer]\ndescription = "Writes the briefing."\nsystem = "Brief the person."\n'
        f'[[schedules]]\nname = "brief"\nagent = "briefer"\ncron = "{cron}"\n'
        f'timezone = "UTC"\nchat_id = {chat_id}\ntask = "Brief me."\n', "utf-8")


async def _until(bot: Bot, sql: str, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    """Poll the bot's database until ``sql`` returns a row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.closing(bot.db()) as conn:
            if conn.execute(sql).fetchone() is not None:
                return
        if loop.time() > deadline:
            raise TimeoutError(f"never true within {timeout}s: {sql}")
        await asyncio.sleep(0.005)


async def test_a_briefing_killed_after_its_run_and_before_delivery_is_delivered_once(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    alice = fake_telegram.user("Alice", id=ALICE_ID)
    chat = fake_telegram.private_chat(alice)
    # every minute: the start-up's catch-up fires at once, so the test needs no clock
    _briefer_toml(tmp_path, chat.id, "* * * * *")

    def respond(req: RecordedRequest) -> Reply:
        match = WHEN.search(req.last_user_text)
        return reply(f"Briefing for {match.group(1) if match else 'an unknown time'}.")

    fake_anthropic.responder = respond
    # Telegram fails every send with a 502 (it did not take it): the run commits its post to
    # the outbox, then delivery keeps retrying, and the bot is killed while it waits to retry.
    fake_telegram.fail_next("sendMessage", status=502, times=1000)
    # Start well inside a minute: started in its last seconds, the next minute's fire would
    # come before the first post (it did once in CI), and this test wants one fire to kill.
    if (into := time.time() % 60) > 40:
        await asyncio.sleep(61 - into)
    bot = Bot(fake_telegram, fake_anthropic, tmp_path, KEEL_CONFIG=str(tmp_path / "keel.toml"))
    await bot.start()
    try:
        await fake_telegram.wait_for(lambda: fake_telegram.calls("sendMessage"), timeout=30)
        [first_fire] = [WHEN.search(r.last_user_text) for r in fake_anthropic.requests]
        assert first_fire is not None
        killed_fire = first_fire.group(1)
        with contextlib.closing(bot.db()) as conn:  # the run committed its post before the kill
            status = conn.execute("SELECT status FROM runs").fetchone()["status"]
        assert status == "completed"
        # kill while keel waits to retry: the 502 is back, the post is known not to be shown
        await _until(bot, "SELECT 1 FROM outbox WHERE status = 'pending' AND attempts >= 1"
                          " AND inflight_chunk IS NULL")
        await bot.kill()
        assert fake_telegram.sent(chat.id) == []
        fake_telegram.clear_faults()

        await bot.start()
        expected = f"Briefing for {killed_fire}."
        await fake_telegram.wait_for(
            lambda: any(m["text"] == expected for m in fake_telegram.sent(chat.id)), timeout=30)
        await asyncio.sleep(1.5)  # give a duplicate every chance to appear
        texts = [m["text"] for m in fake_telegram.sent(chat.id)]
        assert texts.count(expected) == 1, texts
        asked = [WHEN.search(r.last_user_text) for r in fake_anthropic.requests]
        # the run was not repeated: its one model request came from the first process
        assert [m.group(1) for m in asked if m].count(killed_fire) == 1
        with contextlib.closing(bot.db()) as conn:
            fires = {r["local_time"]: r["status"] for r in conn.execute(
                "SELECT local_time, status FROM schedule_fires")}
        assert fires[killed_fire.replace(" ", "T")] == "done", fires
    finally:
        code = await bot.stop()
    assert code == 0, bot.log()


async def test_a_kill_during_compaction_neither_repeats_nor_loses_the_turn(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    alice = fake_telegram.user("Alice", id=ALICE_ID)
    chat = fake_telegram.private_chat(alice)
    compacting = asyncio.Event()
    never = asyncio.Event()
    killed = {"done": False}

    async def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "assistant"}))
        if is_compactor(req):
            if not killed["done"]:
                compacting.set()
                await never.wait()  # the first process dies while compacting
            return reply("Earlier: the person sent long notes, each acknowledged.")
        return reply(f"Noted: {req.last_user_text[:12]}")

    fake_anthropic.responder = respond
    bot = Bot(fake_telegram, fake_anthropic, tmp_path, KEEL_COMPACT_AT_TOKENS="1000")
    notes = [f"note {i}: " + "lorem ipsum dolor sit amet " * 60 for i in range(6)]
    await bot.start()
    try:
        sent_before = 0
        for note in notes:  # one at a time, until a turn's delivery is followed by compaction
            fake_telegram.inject_text(chat, note)
            wait_reply = asyncio.create_task(fake_telegram.wait_for(
                lambda n=sent_before: len(fake_telegram.sent(chat.id)) > n, timeout=30))
            wait_compaction = asyncio.create_task(compacting.wait())
            await asyncio.wait([wait_reply, wait_compaction],
                               return_when=asyncio.FIRST_COMPLETED)
            await wait_reply  # compaction comes after delivery: the reply is out first
            sent_before = len(fake_telegram.sent(chat.id))
            if compacting.is_set():
                wait_compaction.cancel()
                break
            await asyncio.sleep(0.3)  # compaction may start just after the reply
            if compacting.is_set():
                wait_compaction.cancel()
                break
            wait_compaction.cancel()
        assert compacting.is_set(), "compaction never started"
        turns = sent_before
        await bot.kill()
        killed["done"] = True

        await bot.start()
        fake_telegram.inject_text(chat, "one more")
        await fake_telegram.wait_for(lambda: len(fake_telegram.sent(chat.id)) > turns,
                                     timeout=30)
        await asyncio.sleep(1.5)  # give a repeated turn every chance to appear
        texts = [m["text"] for m in fake_telegram.sent(chat.id)]
        assert texts == [f"Noted: {n[:12]}" for n in notes[:turns]] + ["Noted: one more"]
        agent_requests = [r for r in fake_anthropic.requests
                          if not is_router(r) and not is_compactor(r)]
        assert len(agent_requests) == turns + 1  # no turn ran twice
        # the last request carries each of the person's turns at most once (a turn recorded
        # twice would show twice; a compacted one lives in the summary)
        last = [m for m in agent_requests[-1].body["messages"] if m["role"] == "user"]
        for note in notes[:turns]:
            assert sum(note[:40] in str(m["content"]) for m in last) <= 1
    finally:
        never.set()
        code = await bot.stop()
    assert code == 0, bot.log()


async def test_a_run_asked_with_slash_run_and_cut_off_by_a_kill_runs_once_after_restart(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    # /run used to start the run as a bare task: killed mid-run, it was never run again (its
    # update was already marked done). It is now a stored claim keyed by the update.
    alice = fake_telegram.user("Alice", id=ALICE_ID)
    chat = fake_telegram.private_chat(alice)
    _briefer_toml(tmp_path, chat.id, "0 3 1 1 *")  # never due: only /run starts it
    asked = asyncio.Event()
    never = asyncio.Event()
    generation = {"n": 1}

    async def respond(req: RecordedRequest) -> Reply:
        if generation["n"] == 1:
            asked.set()
            await never.wait()  # the first process dies while the model works
        return reply("The briefing, at last.")

    fake_anthropic.responder = respond
    bot = Bot(fake_telegram, fake_anthropic, tmp_path, KEEL_CONFIG=str(tmp_path / "keel.toml"))
    await bot.start()
    try:
        fake_telegram.inject_text(chat, "/run brief")
        await asyncio.wait_for(asked.wait(), timeout=30)
        await bot.kill()
        generation["n"] = 2
        await bot.start()
        await fake_telegram.wait_for(
            lambda: any(m["text"] == "The briefing, at last." for m in fake_telegram.sent(chat.id)),
            timeout=30)
        await asyncio.sleep(1.5)  # give a duplicate every chance to appear
        texts = [m["text"] for m in fake_telegram.sent(chat.id)]
        assert texts.count("The briefing, at last.") == 1, texts
        assert sum(t.startswith("Running brief now") for t in texts) == 1, texts
    finally:
        never.set()
        code = await bot.stop()
    assert code == 0, bot.log()


async def test_a_reply_lost_in_flight_at_a_kill_is_offered_again_and_sent_once(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    # The ambiguous case made certain: Telegram holds the reply's request unprocessed when the
    # bot is killed, so it is never shown. keel cannot know that and does not resend it by
    # itself; after the restart it says a reply may be missing, and the person's press sends it
    # once.
    alice = fake_telegram.user("Alice", id=ALICE_ID)
    chat = fake_telegram.private_chat(alice)

    def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "assistant"}))
        return reply("the answer to the locker question")

    fake_anthropic.responder = respond
    bot = Bot(fake_telegram, fake_anthropic, tmp_path)
    await bot.start()
    try:
        fake_telegram.hang_next("sendMessage")
        fake_telegram.inject_text(chat, "what is my locker number?")
        await fake_telegram.wait_for(lambda: fake_telegram.hung, timeout=30)
        await bot.kill()
        fake_telegram.release_hung()  # its client is gone: the fake never processes it
        await asyncio.sleep(0.2)
        assert fake_telegram.sent(chat.id) == []

        await bot.start()
        notice = await fake_telegram.next_bot_message(chat.id, timeout=30)
        assert notice["text"].startswith("⚠️ I was restarted while sending you my last message")
        # it answers the message whose reply may be missing: with several in a chat, the
        # person can tell which reply it is about
        assert notice["reply_to_message"]["text"] == "what is my locker number?"
        await asyncio.sleep(1.0)
        assert [m["text"] for m in fake_telegram.sent(chat.id)] == [notice["text"]]
        fake_telegram.press_button(notice, text="Send it again", user=alice)
        answer = await fake_telegram.next_bot_message(chat.id, timeout=30)
        assert answer["text"] == "the answer to the locker question"
        fake_telegram.press_button(notice, text="Send it again", user=alice)
        await asyncio.sleep(1.0)
        texts = [m["text"] for m in fake_telegram.sent(chat.id)]
        assert texts.count("the answer to the locker question") == 1, texts
        assert len(fake_anthropic.requests) == 2  # router + agent: the turn was not run again
    finally:
        code = await bot.stop()
    assert code == 0, bot.log()
