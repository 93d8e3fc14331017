"""keel on several processes (issue 16): `keel serve` and two `keel worker`s on PostgreSQL, one
worker SIGKILLed mid-way; every message answered once, each chat in order, no side effect twice.

Real processes, the real python-telegram-bot and anthropic clients against the fakes, a real
PostgreSQL (a schema of the test's own). Without a server the test is skipped (failed in CI)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import API_KEY, is_compactor, is_router
from tests.e2e.killharness import (
    KEEL_TOML,
    RESEND_NOTICE,
    TOKEN,
    TOOL,
    _last_assistant_blocks,
    _lines,
)
from tests.e2e.sidefx_tools import EFFECTS_FILE_VARIABLE
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import JSON, FakeTelegram

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
CHATS = int(os.environ.get("KEEL_WORKERS_TEST_CHATS", "100"))
PER_CHAT = 5
FIRST_USER = 5001


class Deployment:
    def __init__(self, telegram: FakeTelegram, anthropic: FakeAnthropic, workdir: Path,
                 database_url: str) -> None:
        self.workdir = workdir
        self.effects = workdir / "effects.tsv"
        users = ",".join(str(FIRST_USER + c) for c in range(CHATS))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_API_BASE_URL": telegram.base_url,
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": anthropic.base_url,
            "KEEL_ALLOWED_USER_IDS": users,
            "KEEL_DATA_DIR": str(workdir / "data"),
            "KEEL_CONFIG": str(workdir / "keel.toml"),
            "KEEL_DATABASE_URL": database_url,
            "KEEL_LOG_LEVEL": "INFO",
            "KEEL_WORKER_HEARTBEAT_S": "1",
            "KEEL_WORKER_STALLED_S": "4",
            EFFECTS_FILE_VARIABLE: str(self.effects),
        }
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, name: str, *args: str, without: tuple[str, ...] = ()) -> None:
        env = {k: v for k, v in self.env.items() if k not in without}
        with (self.workdir / f"{name}.log").open("ab") as log:
            self.processes[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", *args, cwd=str(self.workdir), env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)

    async def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name, process in self.processes.items():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout=30)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            codes[name] = process.returncode
        return codes

    def problems(self) -> str:
        """Every warning, error and traceback line the processes logged (the tail alone may
        show only the last jobs that ended well)."""
        lines = [f"{p.stem}: {line}" for p in sorted(self.workdir.glob("*.log"))
                 for line in p.read_text("utf-8", "replace").splitlines()
                 if any(w in line for w in ("WARNING", "ERROR", "Traceback", "Error:"))]
        return "\n".join(lines[-80:])

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text("utf-8", "replace")[-4000:]
                         for p in sorted(self.workdir.glob("*.log")))


async def test_two_workers_one_killed_answer_every_message_once_and_in_order(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        postgres_url: str, pg_schema: str) -> None:
    rng = random.Random(1600)
    (tmp_path / "keel.toml").write_text(KEEL_TOML, "utf-8")
    url = f"{postgres_url}?options=-csearch_path%3D{pg_schema}"
    tokens = {(c, m): f"T0C{c}M{m}" for c in range(CHATS) for m in range(PER_CHAT)}
    calls_tool = {token: m % 2 == 0 for (c, m), token in tokens.items()}

    def respond(req: RecordedRequest) -> Reply:
        latency = rng.uniform(0.0, 0.05)
        if is_router(req):
            return reply(tool_use("route", {"agent": "scribe"}), latency=latency)
        if is_compactor(req):
            return reply("Earlier: notes were recorded.")
        if req.tool_results:
            effects = [b["input"]["effect"] for b in _last_assistant_blocks(req)
                       if b.get("type") == "tool_use" and b.get("name") == TOOL]
            return reply(f"Recorded {' and '.join(effects)}.", latency=latency)
        found = TOKEN.findall(req.last_user_text)
        if not found:
            return reply("I do not know which note you mean.")
        if calls_tool[found[-1]]:
            return reply(tool_use(TOOL, {"effect": found[-1]}), latency=latency)
        return reply(f"About {found[-1]}: nothing to add.", latency=latency)

    fake_anthropic.responder = respond
    deployment = Deployment(fake_telegram, fake_anthropic, tmp_path, url)
    chats = [fake_telegram.private_chat(fake_telegram.user(f"P{c}", id=FIRST_USER + c))
             for c in range(CHATS)]

    def replies() -> Counter[str]:
        counts: Counter[str] = Counter()
        for sent in fake_telegram.sent():
            for token in set(TOKEN.findall(sent.get("text", ""))):
                counts[token] += 1
        return counts

    try:
        await deployment.start("worker-1", "worker", "--concurrency", "20")
        await deployment.start("worker-2", "worker", "--concurrency", "20")
        # the ingress never calls the model: it starts without the API key
        await deployment.start("ingress", "serve", without=("ANTHROPIC_API_KEY",))
        await fake_telegram.wait_for(lambda: fake_telegram.calls("getUpdates"), timeout=60)
        for m in range(PER_CHAT):  # every chat's m-th message, then the next round
            for c in range(CHATS):
                fake_telegram.inject_text(chats[c], f"Please record {tokens[(c, m)]}."
                                          if calls_tool[tokens[(c, m)]]
                                          else f"Tell me about {tokens[(c, m)]}.")
        total = CHATS * PER_CHAT
        await fake_telegram.wait_for(lambda: len(replies()) >= total // 5, timeout=120)
        # by now the workers call Telegram over aiohttp (bot/telegram_http.py): the kill below
        # attacks that path
        for name in ("worker-1", "worker-2"):
            worker_log = (deployment.workdir / f"{name}.log").read_text("utf-8", "replace")
            assert "Telegram calls go over aiohttp" in worker_log, deployment.log()
        # mid-way, with replies on their way to Telegram: the fake holds the next few sends;
        # worker-1's are never processed (their client is gone), worker-2's go on when released
        fake_telegram.hang_next("sendMessage", times=4)
        await fake_telegram.wait_for(lambda: len(fake_telegram.hung) >= 4, timeout=60)
        await deployment.kill("worker-1")  # its running jobs are taken over
        fake_telegram.release_hung()
        answered = len(replies())

        def noticed() -> dict[str, JSON]:
            """The 'reply may be missing' notices, by the token of the message each answers:
            a reply worker-1 was handing to Telegram when it died is not resent unasked."""
            return {token: sent for sent in fake_telegram.sent()
                    if sent.get("text", "").startswith(RESEND_NOTICE)
                    for token in TOKEN.findall((sent.get("reply_to_message") or {})
                                               .get("text", ""))}

        def settled() -> bool:
            got, told = replies(), noticed()
            return all(got[t] or t in told for t in tokens.values())

        try:
            await fake_telegram.wait_for(settled, timeout=240)
            resent = {t for t in noticed() if not replies()[t]}
            for token, notice in noticed().items():  # as a person would: only where missing
                if token in resent:
                    fake_telegram.press_button(notice, text="Send it again")
            await fake_telegram.wait_for(lambda: len(replies()) >= total, timeout=60)
        except TimeoutError:
            missing = sorted(t for t in tokens.values() if not replies()[t])
            pytest.fail(f"{len(missing)} of {total} messages never answered (answered "
                        f"{answered} when worker-1 was killed; notices {sorted(noticed())}): "
                        f"{missing[:40]}\n{_job_states(url)}\n{deployment.problems()}\n"
                        f"{deployment.log()}")
        await asyncio.sleep(3)  # give a duplicate every chance to appear
    finally:
        codes = await deployment.stop_all()

    counts = replies()
    twice = {t: n for t, n in counts.items() if n > 1}
    assert not twice, f"answered more than once: {twice}"
    for c, chat in enumerate(chats):  # each chat's replies in the order of its messages
        order = [int(token.rsplit("M", 1)[1]) for s in fake_telegram.sent(chat.id)
                 for token in TOKEN.findall(s.get("text", ""))[:1]
                 if not s["text"].startswith(RESEND_NOTICE) and token not in resent]
        assert order == sorted(order), f"chat {c} answered out of order: {order}"
    done = Counter(line.split("\t")[0] for line in _lines(deployment.effects))
    assert {t: n for t, n in done.items() if n > 1} == {}, "a side effect happened twice"
    assert sorted(done) == sorted(t for t, tool in calls_tool.items() if tool)
    assert codes["ingress"] == 0 and codes["worker-2"] == 0, deployment.log()


def _built_in_agents(telegram: FakeTelegram, anthropic: FakeAnthropic, workdir: Path,
                     postgres_url: str, pg_schema: str) -> tuple[Deployment, str]:
    """A deployment with keel's built-in agents (no keel.toml), in the test's own schema."""
    url = f"{postgres_url}?options=-csearch_path%3D{pg_schema}"
    deployment = Deployment(telegram, anthropic, workdir, url)
    deployment.env.pop("KEEL_CONFIG")
    return deployment, url


def _job_states(url: str) -> str:
    """The jobs left in procrastinate and the inbox rows not answered, for a failure message."""
    with contextlib.closing(psycopg.connect(url)) as conn:
        jobs = conn.execute("SELECT status, lock, count(*), min(id) FROM procrastinate_jobs"
                            " GROUP BY status, lock ORDER BY 4 LIMIT 30").fetchall()
        inbox = conn.execute("SELECT status, count(*) FROM inbox GROUP BY status").fetchall()
    return f"jobs (status, lock, count, first id): {jobs}\ninbox: {inbox}"


async def test_a_question_asked_on_one_worker_is_answered_on_another(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        postgres_url: str, pg_schema: str) -> None:
    # The run parks on worker-1; worker-1 stops; the button press is a job for worker-2, which
    # commits the answer and resumes the run from its stored state to the end.
    import json

    def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "assistant"}))
        if not req.tool_results:
            return reply("Let me ask.", tool_use("escalate_to_human", {
                "reason": "Refund over the limit", "context": "Order 1234, 180 EUR.",
                "options": ["Approve", "Reject"]}))
        answer = json.loads(req.tool_results[0]["content"])
        return reply(f"Done: {answer['answer']}, pid {os.getpid()}.")

    fake_anthropic.responder = respond
    deployment, url = _built_in_agents(fake_telegram, fake_anthropic, tmp_path, postgres_url,
                                       pg_schema)
    alice = fake_telegram.user("Alice", id=FIRST_USER)
    chat = fake_telegram.private_chat(alice)
    try:
        await deployment.start("worker-1", "worker")
        await deployment.start("ingress", "serve")
        fake_telegram.inject_text(chat, "Please refund order 1234")
        question = await fake_telegram.next_bot_message(chat.id, timeout=60)
        assert "Refund over the limit" in question["text"]
        with contextlib.closing(psycopg.connect(url)) as conn:
            for _ in range(500):  # the question's message id is stored right after the send
                row = conn.execute("SELECT message_id FROM escalations").fetchone()
                if row and row[0] is not None:
                    break
                await asyncio.sleep(0.02)
        deployment.processes["worker-1"].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(deployment.processes["worker-1"].wait(), 30) == 0
        await deployment.start("worker-2", "worker")
        fake_telegram.press_button(question, text="Approve", user=alice)
        final = await fake_telegram.wait_for(
            lambda: next((m for m in fake_telegram.sent(chat.id)
                          if m["text"].startswith("Done: Approve")), None), timeout=60)
        assert final is not None
        with contextlib.closing(psycopg.connect(url)) as conn:
            [(status,)] = conn.execute("SELECT status FROM runs").fetchall()
        assert status == "completed"
    finally:
        codes = await deployment.stop_all()
    assert codes["worker-2"] == 0 and codes["ingress"] == 0, deployment.log()


async def test_cancel_handled_by_another_worker_stops_the_run(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        postgres_url: str, pg_schema: str) -> None:
    # The run works on worker-1; worker-1 is paused while /cancel is deferred, so worker-2 takes
    # the /cancel job: it can only ask through the database, and worker-1 cancels its own run.
    asked = asyncio.Event()
    never = asyncio.Event()

    async def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "assistant"}))
        asked.set()
        await never.wait()  # the model never answers: only /cancel ends the run
        raise AssertionError("unreachable")

    fake_anthropic.responder = respond
    deployment, url = _built_in_agents(fake_telegram, fake_anthropic, tmp_path, postgres_url,
                                       pg_schema)
    alice = fake_telegram.user("Alice", id=FIRST_USER)
    chat = fake_telegram.private_chat(alice)
    try:
        await deployment.start("worker-1", "worker")
        await deployment.start("ingress", "serve")
        await fake_telegram.wait_for(lambda: fake_telegram.calls("getUpdates"), timeout=60)
        fake_telegram.inject_text(chat, "think about it for a long time")
        await asyncio.wait_for(asked.wait(), 60)
        await deployment.start("worker-2", "worker")
        with contextlib.closing(psycopg.connect(url)) as conn:  # worker-2 is up and fetching
            for _ in range(600):
                if conn.execute("SELECT COUNT(*) FROM procrastinate_workers").fetchone()[0] >= 2:
                    break
                await asyncio.sleep(0.05)
        deployment.processes["worker-1"].send_signal(signal.SIGSTOP)
        try:
            fake_telegram.inject_text(chat, "/cancel")
            await fake_telegram.wait_for(
                lambda: any(m["text"].startswith("Cancelling") for m in fake_telegram.sent(chat.id)),
                timeout=30)
        finally:
            deployment.processes["worker-1"].send_signal(signal.SIGCONT)
        final = await fake_telegram.wait_for(
            lambda: next((m for m in fake_telegram.sent(chat.id)
                          if "cancel" in m["text"].lower() and not m["text"].startswith(
                              "Cancelling")), None), timeout=30)
        assert final is not None
        with contextlib.closing(psycopg.connect(url)) as conn:
            [(status,)] = conn.execute("SELECT status FROM runs").fetchall()
        assert status == "cancelled"
    finally:
        never.set()
        codes = await deployment.stop_all()
    assert codes["worker-1"] == 0 and codes["worker-2"] == 0, deployment.log()


async def test_a_reply_in_flight_when_its_worker_died_is_offered_again_once(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        postgres_url: str, pg_schema: str) -> None:
    # worker-1's reply is on its way to Telegram (held by the fake, so never processed) when
    # worker-1 is SIGKILLed. worker-2 takes the job over: it must not run the turn again nor send
    # the reply unasked (it may have arrived); it tells the person, whose press sends it once.
    answers: Counter[str] = Counter()

    def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "assistant"}))
        found = TOKEN.findall(req.last_user_text)
        answers[found[-1]] += 1
        return reply(f"About {found[-1]}: nothing to add.")

    fake_anthropic.responder = respond
    deployment, url = _built_in_agents(fake_telegram, fake_anthropic, tmp_path, postgres_url,
                                       pg_schema)
    alice = fake_telegram.user("Alice", id=FIRST_USER)
    chat = fake_telegram.private_chat(alice)
    try:
        await deployment.start("worker-1", "worker")
        await deployment.start("ingress", "serve")
        await fake_telegram.wait_for(lambda: fake_telegram.calls("getUpdates"), timeout=60)
        fake_telegram.hang_next("sendMessage")
        fake_telegram.inject_text(chat, "Tell me about T0C0M0.")
        await fake_telegram.wait_for(lambda: fake_telegram.hung, timeout=60)
        await deployment.kill("worker-1")
        fake_telegram.clear_faults()
        await deployment.start("worker-2", "worker")
        notice = await fake_telegram.wait_for(
            lambda: next((m for m in fake_telegram.sent(chat.id)
                          if m["text"].startswith(RESEND_NOTICE)), None), timeout=60)
        assert not any("T0C0M0" in m["text"] for m in fake_telegram.sent(chat.id))
        fake_telegram.press_button(notice, text="Send it again", user=alice)
        await fake_telegram.wait_for(
            lambda: any("T0C0M0" in m["text"] for m in fake_telegram.sent(chat.id)), timeout=30)
        await asyncio.sleep(2)  # a second copy, or a second notice, would come by now
    finally:
        codes = await deployment.stop_all()
    texts = [m["text"] for m in fake_telegram.sent(chat.id)]
    assert sum("T0C0M0" in t for t in texts) == 1, texts
    assert sum(t.startswith(RESEND_NOTICE) for t in texts) == 1, texts
    assert answers == {"T0C0M0": 1}, "the turn ran again"
    assert codes["worker-2"] == 0 and codes["ingress"] == 0, deployment.log()
