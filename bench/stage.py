"""One live bot for the overhead and concurrency measurements: fakes up, bot started, chats handed out.

The bot's allowlist is fixed when it starts, so the stage reserves every simulated user up front.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.world import (
    API_KEY,
    FIRST_USER_ID,
    ROOT,
    BotProcess,
    Model,
    Replies,
    base_env,
    private_chats,
    tag,
)
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.telegram import Chat, FakeTelegram

# Per-user and overall daily caps are raised so that a thousand simulated users never hit them;
# the per-run cap stays keel's default.
GIVE_UP_IDLE_S = 10.0
"""Default: stop waiting for missing replies once the bot has sent nothing to Telegram this long."""
BOT_ENV = {"KEEL_DAILY_BUDGET_USD": "100000", "KEEL_DAILY_BUDGET_USD_PER_USER": "1000"}


@dataclass
class Stage:
    workdir: Path
    capacity: int
    latency: float
    idle_settle_s: float = 2.0
    give_up_idle_s: float = GIVE_UP_IDLE_S
    telegram: FakeTelegram = field(init=False)
    anthropic: FakeAnthropic = field(init=False)
    model: Model = field(init=False)
    replies: Replies = field(init=False)
    bot: BotProcess = field(init=False)
    first_poll_s: float | None = None
    idle_rss_kb: int | None = None
    profile: Path | None = None
    """Where the bot writes a sampling profile of its event loop at exit (bench.instrumented)."""
    profile_window_s: float | None = None
    """Profile only the first seconds of each concurrency burst (bench.instrumented)."""
    module: tuple[str, ...] = ("bench.instrumented", "run")
    """The bot: keel under bench.instrumented, or ``("bench.baseline_bot",)``."""
    _next_id: int = FIRST_USER_ID
    _turns: dict[int, int] = field(default_factory=dict)
    last_update_id: dict[int, int] = field(default_factory=dict)

    async def open(self) -> Stage:
        self.telegram = FakeTelegram()
        await self.telegram.start()
        self.model = Model(latency=self.latency)
        self.anthropic = FakeAnthropic(responder=self.model)
        await self.anthropic.start()
        self.replies = Replies(self.telegram)
        ids = range(FIRST_USER_ID, FIRST_USER_ID + self.capacity)
        env = {**BOT_ENV, "KEEL_BENCH_LAG_FILE": str(self.lag_file)}
        if os.environ.get("BENCH_GARBAGE"):  # what the bot's GC frees (bench.instrumented)
            env["KEEL_BENCH_GARBAGE"] = os.environ["BENCH_GARBAGE"]
        if self.profile is not None and self.profile.suffix == ".prof":
            env["KEEL_BENCH_CPROFILE"] = str(self.profile)  # cProfile's stats (pstats)
        elif self.profile is not None:
            env["KEEL_BENCH_PROFILE"] = str(self.profile)
        if self.profile is not None and self.profile_window_s:
            env["KEEL_BENCH_PROFILE_WINDOW_S"] = str(self.profile_window_s)
        self.bot = BotProcess(self.telegram, self.anthropic, self.workdir, allowed_ids=ids,
                              extra_env=env, module=self.module)
        await self.bot.start()
        self.first_poll_s = await self.bot.wait_first_poll()
        await asyncio.sleep(self.idle_settle_s)
        self.idle_rss_kb = self.bot.memory_kb().get("VmRSS")
        return self

    @property
    def lag_file(self) -> Path:
        """The bot's event-loop stalls (bench.instrumented)."""
        return self.workdir / "loop-lag.log"

    def watch_loop(self, on: bool) -> None:
        """Start (or stop) the bot's event-loop lag monitor (bench.instrumented)."""
        assert self.bot.proc is not None
        self.bot.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    async def close(self) -> dict[str, Any]:
        code = await self.bot.stop()
        await self.telegram.stop()
        await self.anthropic.stop()
        log = self.bot.stderr_tail(10_000_000)
        return {"exit_code": code, "fake_telegram_crashes": list(self.telegram.crashes),
                "fake_anthropic_unexpected": [r.note for r in self.anthropic.unexpected],
                "bot_error_log_lines": sum(" ERROR " in line for line in log.splitlines()),
                "bot_database_after_stop": bot_database_counts(self.workdir / "data")}

    def new_chats(self, n: int) -> list[Chat]:
        if self._next_id + n > FIRST_USER_ID + self.capacity:
            raise RuntimeError("the stage reserved too few simulated users")
        ids = range(self._next_id, self._next_id + n)
        self._next_id += n
        return private_chats(self.telegram, ids)

    def expected(self, chats: Iterable[Chat], more: int = 1) -> dict[int, int]:
        self.replies.scan()
        return {c.id: self.replies.count(c.id) + more for c in chats}

    async def pin(self, chats: list[Chat], timeout: float) -> list[int]:  # noqa: ASYNC109
        """``/agent assistant`` in each chat, so every later turn is one model call. Returns the
        chats where it did not work (no answer, or an answer other than the confirmation); those
        chats keep going through the router."""
        wanted = self.expected(chats)
        for chat in chats:
            self.telegram.inject_text(chat, "/agent assistant")
        await self.replies.until_counts(wanted, timeout, give_up_idle_s=self.give_up_idle_s)
        return [c.id for c in chats
                if not any(m.get("text", "").startswith("Pinned") for m in self.telegram.sent(c.id))]

    def say(self, chat: Chat, text: str) -> tuple[int, float]:
        """A person's message, tagged with its turn number; returns (n, time it reached the fake)."""
        n = self._turns.get(chat.id, 0) + 1
        self._turns[chat.id] = n
        update = self.telegram.inject_text(chat, f"{tag(chat.id, n)} {text}")
        self.last_update_id[chat.id] = int(update["update_id"])
        return n, time.time()

    async def turn(self, chat: Chat, text: str, timeout: float = 60.0) -> tuple[int, float, float]:  # noqa: ASYNC109
        """One message and its reply: (n, sent at, reply sent at)."""
        wanted = self.expected([chat])
        n, sent = self.say(chat, text)
        await self.replies.until_counts(wanted, timeout)
        return n, sent, self.replies.by_chat[chat.id][wanted[chat.id] - 1]


def bot_database_counts(data_dir: Path) -> dict[str, dict[str, int]]:
    """Statuses in the bot's own inbox, outbox and runs tables once it has stopped: a reply that
    was never delivered is still ``pending`` in the outbox."""
    path = data_dir / "keel.sqlite3"
    if not path.exists():
        return {}
    out: dict[str, dict[str, int]] = {}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for table in ("inbox", "outbox", "runs"):
            rows = conn.execute(f"SELECT status, COUNT(*) FROM {table} GROUP BY status")  # noqa: S608
            out[table] = {str(status): int(count) for status, count in rows}
    return out


def bot_timestamps(data_dir: Path, update_ids: list[int]) -> dict[int, tuple[float, float]]:
    """For each update: when the bot stored it in its inbox and when the run answering it
    started, from the bot's own database (read-only, WAL lets it read beside the bot)."""
    if not update_ids:
        return {}
    uri = f"file:{data_dir / 'keel.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute(
            "SELECT i.update_id, i.received_at, r.started_at FROM inbox i JOIN runs r"
            " ON r.id = i.run_id WHERE i.update_id BETWEEN ? AND ?",
            (min(update_ids), max(update_ids))).fetchall()
    wanted = set(update_ids)
    return {int(u): (_epoch(received), _epoch(started)) for u, received, started in rows
            if u in wanted}


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def direct_calls(base_url: str, jobs: list[dict[str, Any]],
                       timeout: float = 900.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
    """Run ``bench.direct_client`` once, in its own process, for every job (see its docstring;
    ``base_url`` and the key are filled in here)."""
    full = [{"base_url": base_url, "api_key": API_KEY, **job} for job in jobs]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.direct_client", cwd=str(ROOT), env=base_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(full).encode()), timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"direct client failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: list[dict[str, Any]] = json.loads(out)
    return result
