"""The kill-anywhere harness: the real keel bot as a subprocess, SIGKILLed at chosen moments while
several chats talk to it, then restarted and checked for what was lost or done twice (issue 11).

One trial, seeded:
1. Fresh fakes (Telegram, Anthropic) and a fresh data directory. Messages are injected over about
   a second: ``chats`` chats × ``per_chat`` messages; every other message asks the agent to call
   ``record_effect`` (``tests/e2e/sidefx_tools.py``), which appends a line to a ledger file.
2. The bot is started and SIGKILLed at a moment drawn from the seed (see ``Trigger``); this
   happens once or twice, each time followed by a restart.
3. The last start runs without kills until every message has a reply (bounded), then until
   nothing happens for ``QUIET_S``; it is stopped with SIGTERM, started once more (recovery must
   not repeat anything) and stopped again.
4. Checks: one reply per message, no other messages, one ledger line per effect, every trace line
   parses. ``TrialReport.problems`` lists each violation in words.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import re
import signal
import socket
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.e2e.conftest import API_KEY, is_compactor, is_router
from tests.e2e.sidefx_tools import EFFECTS_FILE_VARIABLE
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram, RequestRecord

ROOT = Path(__file__).resolve().parents[2]
FIRST_USER_ID = 2001
AGENT = "scribe"
TOOL = "record_effect"
TOKEN = re.compile(r"\bT\d+C\d+M\d+\b")
RESEND_NOTICE = "⚠️ I was restarted while sending you my last message"

QUIET_S = 1.0  # nothing sent or asked for this long: the bot is done
ANSWER_TIMEOUT_S = 45.0  # the last start must answer everything within this
STOP_TIMEOUT_S = 15.0  # SIGTERM must end the bot within this
TRIGGER_TIMEOUT_S = 8.0  # a kill whose moment never comes is skipped
START_TIMEOUT_S = 20.0  # a start must reach its first getUpdates within this

Trigger = Literal["timer", "batch", "effect", "sent", "late_send"]
TRIGGERS: tuple[Trigger, ...] = ("timer", "batch", "effect", "sent", "late_send")
FORCED_TRIGGER: Trigger | None = os.environ.get("KEEL_KILL_TRIGGER") or None  # type: ignore[assignment]
"""When a kill happens: a random time after the start; a few ms after a getUpdates answer carried
a batch of updates; after the agent's tool ran (the model is asked with its result); after
Telegram answered a sendMessage; while Telegram holds the answer to a sendMessage it already
processed (a late answer)."""

KEEL_TOML = f"""
default_agent = "{AGENT}"
tool_modules = ["tests.e2e.sidefx_tools"]

[agents.{AGENT}]
description = "Records effects in the ledger and answers questions about them."
system = "Record what the person asks with {TOOL}, then say what you recorded."
tools = ["{TOOL}"]
"""


@dataclass(frozen=True)
class Message:
    chat_index: int
    token: str
    calls_tool: bool

    @property
    def text(self) -> str:
        if self.calls_tool:
            return f"Please record {self.token} in the ledger."
        return f"Tell me about {self.token}."


@dataclass
class TrialReport:
    seed: int
    kills: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)  # kills whose moment never came
    duration_s: float = 0.0
    messages: int = 0
    effects: int = 0
    lost: list[str] = field(default_factory=list)  # tokens without a reply
    unconfirmed: list[str] = field(default_factory=list)
    """Tokens whose reply keel recorded as unconfirmed: a send in flight at the kill, the one
    case keel does not resend (README, "Delivery guarantees"). Almost always the reply did
    arrive; a kill in the instant between marking a chunk in flight and its request leaving
    the process loses it, recorded and logged. Such a loss is counted apart
    (``ambiguous_lost``) and is not a failure; a loss keel did not record is."""

    @property
    def ambiguous_lost(self) -> list[str]:
        return [token for token in self.lost if token in self.unconfirmed]
    twice: dict[str, int] = field(default_factory=dict)  # token → replies (> 1)
    others: list[str] = field(default_factory=list)  # bot messages that answer no message
    effects_lost: list[str] = field(default_factory=list)
    effects_twice: dict[str, int] = field(default_factory=dict)
    tool_calls: int = 0  # calls of the tool, applied or not (informative)
    resend_presses: int = 0  # "Send it again" pressed where a reply was missing (a person would)
    trace_errors: list[str] = field(default_factory=list)
    torn_last_lines: int = 0  # traces whose last line a kill cut (keel's reader skips it)
    process_errors: list[str] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def problems(self) -> list[str]:
        out = []
        silent = [token for token in self.lost if token not in self.unconfirmed]
        if silent:
            out.append(f"{len(silent)} message(s) never answered: {silent}")
        if self.twice:
            out.append(f"{len(self.twice)} message(s) answered more than once: {self.twice}")
        if self.others:
            out.append(f"{len(self.others)} message(s) that answer nothing: {self.others[:5]}")
        if self.effects_lost:
            out.append(f"{len(self.effects_lost)} side effect(s) never done: {self.effects_lost}")
        if self.effects_twice:
            out.append(f"{len(self.effects_twice)} side effect(s) done more than once: "
                       f"{self.effects_twice}")
        out.extend(self.trace_errors[:5])
        out.extend(self.process_errors)
        return out

    def line(self) -> str:
        status = "ok" if not self.problems else "; ".join(self.problems)
        missed = f", missed: {', '.join(self.missed)}" if self.missed else ""
        if self.unconfirmed:
            missed += f", unconfirmed: {', '.join(self.unconfirmed)}"
        return (f"seed {self.seed} ({self.duration_s:.0f}s, kills: {', '.join(self.kills) or 'none'}"
                f"{missed}): {status}")


def plan_messages(trial: int, rng: random.Random, chats: int, per_chat: int) -> list[Message]:
    """Every chat's messages in order, interleaved across chats in a seeded order."""
    queues = [[Message(c, f"T{trial}C{c}M{m}", calls_tool=m % 2 == 0) for m in range(per_chat)]
              for c in range(chats)]
    order: list[Message] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        order.append(queue.pop(0))
    return order


class KillSwitch:
    """Sends SIGKILL to the running bot when its armed trigger fires (plus a small delay)."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.trigger: Trigger | None = None
        self.nth = 1
        self.delay_s = 0.0
        self.seen = 0
        self.fired = asyncio.Event()
        self.what = ""
        self._pending: asyncio.TimerHandle | None = None

    def arm(self, process: asyncio.subprocess.Process, trigger: Trigger, *, nth: int,
            delay_s: float) -> None:
        self.process, self.trigger, self.nth, self.delay_s = process, trigger, nth, delay_s
        self.seen = 0
        self.fired = asyncio.Event()
        self.what = f"{trigger}#{nth}+{delay_s * 1000:.0f}ms"
        if trigger == "timer":
            self._pending = asyncio.get_running_loop().call_later(delay_s, self._kill, process)

    def disarm(self) -> None:
        """No kill from now on (a pending one is called off)."""
        self.trigger = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def notice(self, trigger: Trigger) -> None:
        """A hook saw ``trigger`` happen (called synchronously by the fakes)."""
        if self.trigger != trigger or self.process is None:
            return
        self.seen += 1
        if self.seen >= self.nth:
            self.trigger = None
            self._pending = asyncio.get_running_loop().call_later(self.delay_s, self._kill,
                                                                  self.process)

    def _kill(self, process: asyncio.subprocess.Process) -> None:
        if process is self.process and process.returncode is None and not self.fired.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            self.fired.set()


class Trial:
    def __init__(self, seed: int, number: int, workdir: Path, *, chats: int,
                 per_chat: int, webhook: bool = False) -> None:
        self.webhook_port = _free_port() if webhook else None
        self.rng = random.Random(seed)
        self.report = TrialReport(seed=seed, workdir=workdir)
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.effects_file = workdir / "effects.tsv"
        self.messages = plan_messages(number, self.rng, chats, per_chat)
        self.planned = {m.token: m for m in self.messages}
        self.report.messages = len(self.messages)
        self.report.effects = sum(m.calls_tool for m in self.messages)
        self.chats = chats
        self.telegram = FakeTelegram()
        self.anthropic = FakeAnthropic()
        self.switch = KillSwitch()
        self.generation = 0
        self.started: list[asyncio.subprocess.Process] = []
        self.latency_rng = random.Random(seed ^ 0x5EED)
        # The typing pace draws from its own generator: drawn from ``rng`` it would interleave
        # with the kill plan's draws in an order that depends on timing, and a seed would not
        # replay the same kills.
        self.pace_rng = random.Random(seed ^ 0xBEA7)
        self._pressed: set[int] = set()

    # ------------------------------------------------------------------ the world

    def respond(self, req: RecordedRequest) -> Reply:
        latency = self.latency_rng.uniform(0.0, 0.08)
        if is_router(req):
            return reply(tool_use("route", {"agent": AGENT}), latency=latency)
        if is_compactor(req):
            return reply("Earlier: the person asked to record and look up notes.")
        if req.tool_results:
            self.switch.notice("effect")  # the tool has run: its effect is in the ledger
            effects = [b["input"]["effect"] for b in _last_assistant_blocks(req)
                       if b.get("type") == "tool_use" and b.get("name") == TOOL]
            return reply(f"Recorded {' and '.join(effects)}.", latency=latency)
        tokens = TOKEN.findall(req.last_user_text)
        if not tokens:
            return reply("I do not know which note you mean.", latency=latency)
        token = tokens[-1]
        if self.planned[token].calls_tool:
            return reply(tool_use(TOOL, {"effect": token}), latency=latency)
        return reply(f"About {token}: nothing to add.", latency=latency)

    def on_push(self, update_id: int, status: int) -> None:
        if 200 <= status < 300:  # keel acknowledged an update: kill right after (webhook)
            self.switch.notice("batch")

    def on_answer(self, record: RequestRecord) -> None:
        if not record.ok or record.response is None:
            return
        method = record.method.lower()
        if method == "getupdates" and record.response["result"]:
            self.switch.notice("batch")
        elif method == "sendmessage":
            self.switch.notice("sent")

    def env(self) -> dict[str, str]:
        users = ",".join(str(FIRST_USER_ID + c) for c in range(self.chats))
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "TELEGRAM_BOT_TOKEN": self.telegram.token,
            "TELEGRAM_API_BASE_URL": self.telegram.base_url,
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": self.anthropic.base_url,
            "KEEL_ALLOWED_USER_IDS": users,
            "KEEL_DATA_DIR": str(self.data_dir),
            "KEEL_CONFIG": str(self.workdir / "keel.toml"),
            "KEEL_LOG_LEVEL": "INFO",
            EFFECTS_FILE_VARIABLE: str(self.effects_file),
            **({"KEEL_WEBHOOK_URL": f"http://127.0.0.1:{self.webhook_port}/tg",
                "KEEL_WEBHOOK_LISTEN": f"127.0.0.1:{self.webhook_port}"}
               if self.webhook_port else {}),
        }

    async def start_bot(self) -> asyncio.subprocess.Process:
        self.generation += 1
        log = (self.workdir / f"bot-{self.generation}.log").open("wb")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "run", cwd=str(self.workdir), env=self.env(),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        finally:
            log.close()
        self.started.append(process)
        return process

    async def kill_leftovers(self) -> None:
        """A trial that ends by an exception (a timeout) must not leave its bot running: an
        orphan keeps polling a dead fake and loads the machine for every later test."""
        for process in self.started:
            if process.returncode is None:
                process.kill()
                await process.wait()

    async def stop_bot(self, process: asyncio.subprocess.Process, when: str) -> None:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.report.process_errors.append(
                    f"SIGTERM did not stop the bot within {STOP_TIMEOUT_S:.0f}s ({when})")
                process.kill()
                await process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            self.report.process_errors.append(
                f"the bot exited with {process.returncode} {when} "
                f"(log: {self.workdir / f'bot-{self.generation}.log'})")

    # ------------------------------------------------------------------ the run

    async def inject(self) -> None:
        chats = [self.telegram.private_chat(self.telegram.user(f"P{c}", id=FIRST_USER_ID + c))
                 for c in range(self.chats)]
        # Start talking once the bot polls, so updates arrive in several batches, not in one
        # batch that waited out the start-up; after a kill the rest queue up at Telegram.
        with contextlib.suppress(TimeoutError):  # a bot that never polls loses them all
            await self.telegram.wait_for(self._receiving, timeout=START_TIMEOUT_S)
        for message in self.messages:
            await asyncio.sleep(self.pace_rng.uniform(0.0, 0.15))  # a person's typing pace
            self.telegram.inject_text(chats[message.chat_index], message.text)

    async def kill_once(self, process: asyncio.subprocess.Process) -> bool:
        """Arm one kill from the seed as the bot starts; True when the bot was killed, False when
        its moment never came (everything was answered first, or TRIGGER_TIMEOUT_S passed)."""
        trigger = self.rng.choice(TRIGGERS)
        if FORCED_TRIGGER:  # the draw above still happens, so the rest of the plan is the same
            trigger = FORCED_TRIGGER
        nth = self.rng.randint(1, 2) if trigger in ("batch", "sent") else 1
        delay_s = self.rng.uniform(0.0, 0.04)
        watcher: asyncio.Task[None] | None = None
        if trigger == "timer":
            delay_s = self.rng.uniform(0.3, 5.0)  # start-up (recovery) takes seconds: kill there too
        elif trigger == "late_send":
            # Telegram processes the send at once and answers after 3 s; the kill lands while
            # the answer is on its way, so keel cannot know the reply was accepted.
            self.telegram.slow_next("sendMessage", delay_s=3.0)
            watcher = asyncio.create_task(self._notice_late_send())
        self.switch.arm(process, trigger, nth=nth, delay_s=delay_s)
        fired = asyncio.create_task(self.switch.fired.wait())
        done = asyncio.create_task(self._wait_started_then_answered())
        try:
            await asyncio.wait([fired, done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (fired, done, watcher):
                if task is not None:
                    task.cancel()
            self.switch.disarm()
            self.telegram.clear_faults()
        if not self.switch.fired.is_set():
            self.report.missed.append(self.switch.what)
            return False
        await process.wait()
        self.report.kills.append(self.switch.what)
        return True

    def _receiving(self) -> int:
        """How often the bot has asked for updates: getUpdates calls, or setWebhook calls."""
        return len(self.telegram.calls("setWebhook" if self.webhook_port else "getUpdates"))

    async def _wait_started_then_answered(self) -> None:
        """Returns when a kill can no longer come: all answered after the start, or too late."""
        polls = self._receiving()
        with contextlib.suppress(TimeoutError):
            await self.telegram.wait_for(lambda: self._receiving() > polls,
                                         timeout=START_TIMEOUT_S)
        with contextlib.suppress(TimeoutError):
            await self.telegram.wait_for(self._all_answered, timeout=TRIGGER_TIMEOUT_S)
            await asyncio.sleep(0.2)  # a timer or a trigger a few ms away may still land

    async def _notice_late_send(self) -> None:
        with contextlib.suppress(TimeoutError):
            await self.telegram.wait_for(
                lambda: any(r.fault == "late" and r.processed for r in self.telegram.requests),
                timeout=START_TIMEOUT_S + TRIGGER_TIMEOUT_S)
            self.switch.notice("late_send")

    async def wait_quiet(self) -> None:
        """Until neither fake has seen a request but long polls for QUIET_S seconds."""
        def activity() -> int:
            return len(self.anthropic.requests) + sum(
                1 for r in self.telegram.requests if r.method.lower() != "getupdates")

        while True:
            before = activity()
            # a model request alone does not wake the Telegram fake: compare after the wait too
            with contextlib.suppress(TimeoutError):
                await self.telegram.wait_for(lambda b=before: activity() != b, timeout=QUIET_S)
            if activity() == before:
                return

    async def run(self) -> TrialReport:
        self.workdir.mkdir(parents=True)
        (self.workdir / "keel.toml").write_text(KEEL_TOML, "utf-8")
        self.anthropic.responder = self.respond
        self.telegram.on_answer = self.on_answer
        self.telegram.on_push = self.on_push
        began = asyncio.get_running_loop().time()
        async with self.telegram, self.anthropic:
            injecting = asyncio.create_task(self.inject())
            try:
                await self._drive()
            finally:
                injecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await injecting
                await self.kill_leftovers()
            self._check()
        self.report.duration_s = asyncio.get_running_loop().time() - began
        return self.report

    async def _drive(self) -> None:
        process = await self.start_bot()
        for _ in range(self.rng.choice((1, 1, 2))):
            if not await self.kill_once(process):
                break
            process = await self.start_bot()
        # the last start: no kills, everything must be answered
        answered = await self._wait_answered()
        await self.wait_quiet()
        await self.stop_bot(process, "after answering")
        if not answered:
            return
        # one more start: recovery must not repeat anything
        process = await self.start_bot()
        polls = self._receiving()
        try:
            await self.telegram.wait_for(lambda: self._receiving() > polls,
                                         timeout=START_TIMEOUT_S)
        except TimeoutError:
            self.report.process_errors.append("the bot did not poll within "
                                              f"{START_TIMEOUT_S:.0f}s of its last start")
        await self.wait_quiet()
        await self.stop_bot(process, "after the last start")

    def _all_answered(self) -> bool:
        got = self._reply_counts()
        return all(got[m.token] for m in self.messages)

    async def _wait_answered(self) -> bool:
        """Until every message has its reply. A person who was told a reply may be missing
        (bot/resend.py), and who still lacks an answer once the bot has gone quiet, presses
        "Send it again" — not before: a reply still on its way is not missing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_TIMEOUT_S
        while True:
            try:
                await self.telegram.wait_for(self._all_answered, timeout=1.0)
                return True
            except TimeoutError:
                pass
            await asyncio.wait_for(self.wait_quiet(), timeout=max(1.0, deadline - loop.time()))
            if self._all_answered():
                return True
            self._press_resend_where_missing()
            if loop.time() >= deadline:
                return False

    def _press_resend_where_missing(self) -> None:
        """A notice answers the message whose reply may be missing; a person presses it only
        when that message has no reply in the chat (a notice about a reply that did arrive,
        pressed while another message of the chat is still being answered, would ask for the
        reply twice: the person's doing, not keel's)."""
        got = self._reply_counts()
        missing = {m.chat_index for m in self.messages if not got[m.token]}
        for c in missing:
            chat_id = FIRST_USER_ID + c
            for sent in self.telegram.sent(chat_id):
                about = TOKEN.findall((sent.get("reply_to_message") or {}).get("text", ""))
                if sent.get("text", "").startswith(RESEND_NOTICE) and \
                        sent["message_id"] not in self._pressed and sent.get("reply_markup") \
                        and not (about and all(got[token] for token in about)):
                    self._pressed.add(sent["message_id"])
                    self.report.resend_presses += 1
                    self.telegram.press_button(sent, text="Send it again",
                                               user=self.telegram.user(f"P{c}", id=chat_id))

    # ------------------------------------------------------------------ the checks

    def _reply_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for sent in self.telegram.sent():
            for token in set(TOKEN.findall(sent.get("text", ""))):
                counts[token] += 1
        return counts

    def _check(self) -> None:
        report = self.report
        counts = self._reply_counts()
        report.lost = [m.token for m in self.messages if counts[m.token] == 0]
        report.twice = {m.token: counts[m.token] for m in self.messages if counts[m.token] > 1}
        report.others = [s.get("text", "<media>")[:80] for s in self.telegram.sent()
                         if not TOKEN.search(s.get("text", ""))
                         and not s.get("text", "").startswith(RESEND_NOTICE)]
        report.unconfirmed = self._unconfirmed_tokens()
        ledger = _lines(self.effects_file)
        done = Counter(line.split("\t")[0] for line in ledger)
        for message in self.messages:
            if message.calls_tool and done[message.token] == 0:
                report.effects_lost.append(message.token)
            elif done[message.token] > 1:
                report.effects_twice[message.token] = done[message.token]
        report.tool_calls = len(_lines(self.effects_file.with_name(self.effects_file.name
                                                                   + ".calls")))
        report.trace_errors, report.torn_last_lines = check_traces(self.data_dir / "traces")
        if self.anthropic.unexpected:
            report.process_errors.append(
                f"the fake Anthropic refused requests: {[r.note for r in self.anthropic.unexpected]}")
        if self.telegram.crashes:
            report.process_errors.append(f"the fake Telegram crashed: {self.telegram.crashes}")


    def _unconfirmed_tokens(self) -> list[str]:
        path = self.data_dir / "keel.sqlite3"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("SELECT payload FROM outbox WHERE unconfirmed_chunks > 0"
                                " ORDER BY id").fetchall()
        return [token for (payload,) in rows for token in TOKEN.findall(payload)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_traces(root: Path) -> tuple[list[str], int]:
    """Every line of every trace file is a JSON object, except that a file's last line may be cut
    short by a kill (keel's reader skips such a line: tests/unit/test_traces.py). Returns the
    errors and the number of torn last lines."""
    errors: list[str] = []
    torn = 0
    if not root.exists():
        return errors, torn
    for path in sorted(root.rglob("*.jsonl*")):
        opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
        lines = text.split("\n")
        complete, last = lines[:-1], lines[-1]  # last is "" when the file ends with a newline
        for number, line in enumerate(complete, start=1):
            try:
                event = json.loads(line)
            except ValueError:
                errors.append(f"trace {path.name} line {number} is not JSON: {line[:60]!r}")
                continue
            if not isinstance(event, dict) or "type" not in event:
                errors.append(f"trace {path.name} line {number} is not an event: {line[:60]!r}")
        if last:
            torn += 1
    return errors, torn


def summarise(reports: list[TrialReport]) -> str:
    """The figures over all trials, then one line per failing trial."""
    failing = [r for r in reports if r.problems]
    total = lambda f: sum(f(r) for r in reports)  # noqa: E731
    lines = [
        f"{len(reports)} trial(s), {total(lambda r: len(r.kills))} kill(s), "
        f"{len(failing)} failing:",
        f"  messages {total(lambda r: r.messages)}: lost {total(lambda r: len(r.lost))}, "
        f"answered twice or more {total(lambda r: len(r.twice))} "
        f"(extra replies {total(lambda r: sum(n - 1 for n in r.twice.values()))}), "
        f"messages answering nothing {total(lambda r: len(r.others))}; replies recorded "
        f"unconfirmed {total(lambda r: len(r.unconfirmed))}, of which never shown "
        f"{total(lambda r: len(r.ambiguous_lost))}; 'Send it again' pressed "
        f"{total(lambda r: r.resend_presses)}",
        f"  side effects {total(lambda r: r.effects)}: lost "
        f"{total(lambda r: len(r.effects_lost))}, done twice or more "
        f"{total(lambda r: len(r.effects_twice))} (tool calls {total(lambda r: r.tool_calls)})",
        f"  trace lines that do not parse {total(lambda r: len(r.trace_errors))}, torn last "
        f"lines {total(lambda r: r.torn_last_lines)}; process errors "
        f"{total(lambda r: len(r.process_errors))}",
    ]
    lines += [f"  {r.line()}" + (f" [{r.workdir}]" if r.problems else "") for r in reports]
    return "\n".join(lines)


def _last_assistant_blocks(req: RecordedRequest) -> list[dict[str, Any]]:
    for message in reversed(req.messages):
        if message.get("role") == "assistant":
            content = message.get("content")
            return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    return []


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text("utf-8").splitlines() if line]
