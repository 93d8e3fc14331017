"""A deploy as docs/deploy.md tells it (issue 16): with `keel serve` and two `keel worker`s on
PostgreSQL, the workers are restarted one at a time with SIGTERM — the first in the middle of a
model call longer than its grace — then the ingress, while people keep writing. Every message is
answered once, each chat in the order of its messages, and every process exits 0.

Real processes, the real python-telegram-bot and anthropic clients against the fakes, a real
PostgreSQL (a schema of the test's own; skipped without a server, failed in CI)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.conftest import API_KEY, is_router
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SLOW_S = 25.0
"""The first model call of the slow message: longer than a stopping worker's 10 s grace."""


class Processes:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.running: dict[str, asyncio.subprocess.Process] = {}
        self.codes: dict[str, int | None] = {}

    async def start(self, name: str, *args: str) -> None:
        with (self.workdir / f"{name}.log").open("ab") as log:
            self.running[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", *args, cwd=str(self.workdir), env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)

    async def up(self, name: str, line: str, timeout: float = 60) -> None:  # noqa: ASYNC109
        log = self.workdir / f"{name}.log"
        async with asyncio.timeout(timeout):
            while line not in (log.read_text("utf-8", "replace") if log.exists() else ""):
                assert self.running[name].returncode is None, self.log()
                await asyncio.sleep(0.1)

    async def stop(self, name: str, timeout: float = 45) -> int | None:  # noqa: ASYNC109
        process = self.running.pop(name)
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.codes[name] = process.returncode
        return process.returncode

    async def stop_all(self) -> None:
        for name in list(self.running):
            await self.stop(name)

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text("utf-8", "replace")[-3000:]
                         for p in sorted(self.workdir.glob("*.log")))


async def test_workers_then_the_ingress_restarted_one_at_a_time_lose_nothing(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, tmp_path: Path,
        postgres_url: str, pg_schema: str) -> None:
    in_slow_call = asyncio.Event()

    def respond(req: RecordedRequest) -> Reply:
        if is_router(req):
            return reply(tool_use("route", {"agent": "assistant"}))
        text = req.last_user_text
        if text == "slow one" and not in_slow_call.is_set():
            in_slow_call.set()
            return reply(f"answer to {text}", latency=SLOW_S)
        return reply(f"answer to {text}")

    fake_anthropic.responder = respond
    users = [fake_telegram.user(name, id=7001 + i) for i, name in enumerate("ABC")]
    chat_a, chat_b, chat_c = (fake_telegram.private_chat(u) for u in users)
    url = f"{postgres_url}?options=-csearch_path%3D{pg_schema}"
    processes = Processes(tmp_path, {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
        "TELEGRAM_BOT_TOKEN": fake_telegram.token, "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
        "ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "KEEL_ALLOWED_USER_IDS": ",".join(str(u.id) for u in users),
        "KEEL_DATA_DIR": str(tmp_path / "data"), "KEEL_DATABASE_URL": url,
        "KEEL_LOG_LEVEL": "INFO", "KEEL_WORKER_HEARTBEAT_S": "1", "KEEL_WORKER_STALLED_S": "4",
    })
    sent: list[tuple[int, str]] = []

    def say(chat: object, text: str) -> None:
        fake_telegram.inject_text(chat, text)  # type: ignore[arg-type]
        sent.append((chat.id, text))  # type: ignore[attr-defined]

    try:
        await processes.start("worker-1", "worker")
        await processes.up("worker-1", "is up (concurrency")
        await processes.start("ingress", "serve")
        await fake_telegram.wait_for(lambda: fake_telegram.calls("getUpdates"), timeout=60)
        say(chat_a, "slow one")
        await asyncio.wait_for(in_slow_call.wait(), 60)  # worker-1 is inside the slow call
        await processes.start("worker-2", "worker")
        await processes.up("worker-2", "is up (concurrency")

        # the rolling restart: worker-1 (mid-call), then worker-2, then the ingress
        began = asyncio.get_running_loop().time()
        stopping = asyncio.create_task(processes.stop("worker-1"))
        await asyncio.sleep(0.5)
        for i in range(3):
            say(chat_b, f"b{i}")
        say(chat_a, "a2")
        assert await stopping == 0, processes.log()
        # it gave the slow run its grace, not the whole call: the run was cut off
        assert asyncio.get_running_loop().time() - began < SLOW_S - 5
        await processes.start("worker-1b", "worker")
        await processes.up("worker-1b", "is up (concurrency")
        assert await processes.stop("worker-2") == 0, processes.log()
        await processes.start("worker-2b", "worker")
        await processes.up("worker-2b", "is up (concurrency")
        assert await processes.stop("ingress") == 0, processes.log()
        for i in range(2):
            say(chat_c, f"c{i}")  # held by Telegram while no ingress runs
        say(chat_a, "a3")
        await processes.start("ingress-b", "serve")

        def answered() -> Counter[tuple[int, str]]:
            return Counter((chat.id, m["text"].removeprefix("answer to "))
                           for chat in (chat_a, chat_b, chat_c)
                           for m in fake_telegram.sent(chat.id)
                           if m.get("text", "").startswith("answer to "))

        try:
            await fake_telegram.wait_for(lambda: set(answered()) >= set(sent), timeout=180)
        except TimeoutError:
            pytest.fail(f"never answered: {set(sent) - set(answered())}\n{processes.log()}")
        await asyncio.sleep(3)  # a duplicate gets every chance to show
    finally:
        await processes.stop_all()

    asked = [r for r in fake_anthropic.message_requests
             if not is_router(r) and r.last_user_text == "slow one"]
    assert len(asked) == 2  # cut off on worker-1, answered again (once) on another worker
    counts = answered()
    assert {k: n for k, n in counts.items() if n > 1} == {}, "answered twice"
    for chat in (chat_a, chat_b, chat_c):
        order = [m["text"].removeprefix("answer to ") for m in fake_telegram.sent(chat.id)
                 if m.get("text", "").startswith("answer to ")]
        assert order == [text for chat_id, text in sent if chat_id == chat.id], order
    assert set(processes.codes.values()) == {0}, (processes.codes, processes.log())
