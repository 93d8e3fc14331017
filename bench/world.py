"""The stage for the live measurements: both fakes in this process, the real bot as a subprocess.

The bot is started exactly as a person starts it (``python -m bot.cli run``) with its Telegram and
Anthropic base URLs pointing at the fakes, so every byte it sends crosses real HTTP. The fake
Anthropic server answers through ``Model`` (deterministic answers, a fixed latency, the arrival time
of every call); ``Replies`` follows what the bot sends back through the fake Telegram server.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.sessions import is_compaction_request
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import Chat, FakeTelegram, RequestRecord

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-ant-bench-key-0123456789"
FIRST_USER_ID = 2_000_001

# Chat-bound Bot API methods: every one of them passes through the bot's rate limiter.
CHAT_METHODS = {"sendmessage", "sendchataction", "sendmessagedraft", "editmessagetext"}

_TAG = re.compile(r"\bq(\d+)-(\d+):")


def tag(chat_id: int, n: int) -> str:
    """The marker that ties a message, its model calls and its reply together."""
    return f"q{chat_id}-{n}:"


def kind_of(req: RecordedRequest) -> str:
    body = req.body if isinstance(req.body, dict) else {}
    if any(t.get("name") == "route" for t in body.get("tools") or []):
        return "router"
    if is_compaction_request(body):
        return "compactor"
    return "agent"


@dataclass(frozen=True)
class ModelCall:
    kind: str
    chat_id: int | None
    n: int | None
    arrived: float  # time.time() when the request reached the fake
    latency: float
    rec: RecordedRequest

    @property
    def done(self) -> float:
        """When the fake began answering (arrival + its latency; the answer's bytes follow)."""
        return self.arrived + self.latency


@dataclass
class Model:
    """The fake model: short deterministic answers after ``latency`` seconds, every call logged."""

    latency: float
    answer: Callable[[str], str] = field(default=lambda text: f"Noted: {text[:60]}")
    calls: list[ModelCall] = field(default_factory=list)
    _watchers: list[tuple[Callable[[], bool], asyncio.Event]] = field(default_factory=list)

    def __call__(self, req: RecordedRequest) -> Reply:
        kind = kind_of(req)
        found = _TAG.search(req.last_user_text)
        chat_id, n = (int(found.group(1)), int(found.group(2))) if found else (None, None)
        self.calls.append(ModelCall(kind, chat_id, n, time.time(), self.latency, req))
        for predicate, event in list(self._watchers):
            if predicate():
                event.set()
                self._watchers.remove((predicate, event))
        if kind == "router":
            return reply(tool_use("route", {"agent": "assistant"}), latency=self.latency)
        if kind == "compactor":
            return reply("Earlier: the person asked short numbered questions; all were answered.",
                         latency=self.latency)
        return reply(self.answer(req.last_user_text), latency=self.latency)

    def when(self, predicate: Callable[[], bool]) -> asyncio.Event:
        """An event set as soon as ``predicate()`` holds after a model call arrives."""
        event = asyncio.Event()
        if predicate():
            event.set()
        else:
            self._watchers.append((predicate, event))
        return event


class Replies:
    """What the bot sent, read from the fake Telegram's request log as calls complete."""

    def __init__(self, telegram: FakeTelegram) -> None:
        self.telegram = telegram
        self.by_chat: dict[int, list[float]] = {}  # successful sendMessage arrival times
        self.chat_calls: list[RequestRecord] = []  # every completed chat-bound call
        self._next = 0
        self._pending: list[int] = []

    def scan(self) -> None:
        requests = self.telegram.requests
        self._pending.extend(range(self._next, len(requests)))
        self._next = len(requests)
        still: list[int] = []
        for index in self._pending:
            record = requests[index]
            if record.status == 0:
                still.append(index)
                continue
            method = record.method.lower()
            if method in CHAT_METHODS:
                self.chat_calls.append(record)
            if method == "sendmessage" and record.ok:
                chat_id = int(record.params["chat_id"])
                self.by_chat.setdefault(chat_id, []).append(record.time)
        self._pending = still

    def count(self, chat_id: int) -> int:
        return len(self.by_chat.get(chat_id, ()))

    async def until(self, predicate: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        def check() -> bool:
            self.scan()
            return predicate()

        await self.telegram.wait_for(check, timeout=timeout)

    async def until_counts(self, wanted: dict[int, int], timeout: float, *,  # noqa: ASYNC109
                           give_up_idle_s: float | None = None) -> set[int]:
        """Wait until each chat has at least ``wanted[chat]`` replies; returns the chats that
        never got one. Without ``give_up_idle_s`` a missing reply raises TimeoutError; with it,
        once replies have begun to arrive, waiting stops when that long passes in which the bot
        sends nothing to Telegram at all, and the chats still missing are returned."""
        missing = set(wanted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def done() -> bool:
            for chat_id in list(missing):
                if self.count(chat_id) >= wanted[chat_id]:
                    missing.discard(chat_id)
            return not missing

        while True:
            before, sent_before = len(missing), len(self.chat_calls)
            left = deadline - loop.time()
            wait = min(left, give_up_idle_s) if give_up_idle_s else left
            try:
                await self.until(done, max(wait, 0.0))
                return set()
            except TimeoutError:
                # stalled: replies had begun to arrive, then for give_up_idle_s the bot sent
                # nothing at all to Telegram (so it is not being throttled; it lost them)
                stalled = (give_up_idle_s is not None and len(missing) == before
                           and len(missing) < len(wanted) and len(self.chat_calls) == sent_before)
                if loop.time() < deadline and not stalled:
                    continue
                if give_up_idle_s is not None:
                    return set(missing)
                raise TimeoutError(f"{len(missing)} of {len(wanted)} chat(s) got no reply "
                                   f"within {timeout:g}s") from None


# ---------------------------------------------------------------------------- /proc readings


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- the bot process


def empty_config(directory: Path) -> Path:
    """An empty keel.toml, so a developer's own keel.toml never shapes a benchmark."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "keel.toml"
    path.write_text("# benchmark: built-in agents and prices only\n")
    return path


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: no proxies, no KEEL_/ANTHROPIC_/TELEGRAM_ settings from the shell."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
            "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8", **extra}


@dataclass
class BotProcess:
    """``python -m bot.cli run`` (or any module) against the fakes, with its stderr kept."""

    telegram: FakeTelegram
    anthropic: FakeAnthropic
    workdir: Path
    allowed_ids: Iterable[int] = ()
    module: tuple[str, ...] = ("bot.cli", "run")
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    spawned_at: float = 0.0
    first_poll_at: float | None = None
    _log: Any = None
    _first_request: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        data = self.workdir / "data"
        return base_env(
            TELEGRAM_BOT_TOKEN=self.telegram.token,
            TELEGRAM_API_BASE_URL=self.telegram.base_url,
            ANTHROPIC_API_KEY=API_KEY,
            ANTHROPIC_BASE_URL=self.anthropic.base_url,
            KEEL_ALLOWED_USER_IDS=",".join(str(i) for i in self.allowed_ids),
            KEEL_DATA_DIR=str(data),
            KEEL_CONFIG=str(empty_config(self.workdir)),
            KEEL_LOG_LEVEL="WARNING",
            **self.extra_env,
        )

    async def start(self) -> None:
        env = self.env()
        self._first_request = len(self.telegram.requests)
        self._log = (self.workdir / "stderr.log").open("ab")
        self.spawned_at = time.time()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *self.module, cwd=str(self.workdir), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=self._log,
        )

    async def wait_first_poll(self, timeout: float = 60.0) -> float:  # noqa: ASYNC109
        """Seconds from spawning the process to its first getUpdates reaching the fake."""
        def first() -> RequestRecord | None:
            for record in self.telegram.requests[self._first_request:]:
                if record.method.lower() == "getupdates":
                    return record
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(f"{' '.join(self.module)} exited with {self.proc.returncode}; "
                                   f"see {self.workdir / 'stderr.log'}:\n{self.stderr_tail()}")
            return None

        record = await self.telegram.wait_for(first, timeout=timeout)
        self.first_poll_at = record.time
        return record.time - self.spawned_at

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            return (self.workdir / "stderr.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def memory_kb(self) -> dict[str, int]:
        return proc_status(self.pid)

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    async def stop(self, timeout: float = 30.0) -> int | None:  # noqa: ASYNC109
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def private_chats(telegram: FakeTelegram, ids: Iterable[int]) -> list[Chat]:
    return [telegram.private_chat(telegram.user(f"User{i}", id=i)) for i in ids]
