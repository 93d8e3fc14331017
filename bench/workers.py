"""Throughput beyond one process (issue 16): the same burst answered by

* ``keel run`` on SQLite (one process, the default),
* ``keel serve`` + 1 ``keel worker`` on PostgreSQL,
* ``keel serve`` + 2 ``keel worker``s on PostgreSQL,

side by side in one run. ``chats`` chats each send ``per_chat`` messages at once (a conversation's
messages are answered in order, so ``per_chat`` is serial work per chat); every turn is one model
call of a fixed ``latency``. Reported per shape: wall time from the first message to the last reply,
messages per second, and the ratio to the single process. On 2 cores the processes share the same
CPU, so a second worker shows what the design costs or gains here, not what a second machine adds.

``python -m bench.workers [--chats N] [--per-chat N] [--latency S]``; also the ``workers`` section of
``python -m bench`` when PostgreSQL is reachable (KEEL_BENCH_PG_URL, default the local test server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("KEEL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
API_KEY = "sk-ant-bench-key-0123456789"
FIRST_USER = 3_000_001
KEEL_TOML = """
default_agent = "echo"
[agents.echo]
description = "Answers in one line."
system = "Answer in one line."
"""


def _prepare(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "keel.toml").write_text(KEEL_TOML, "utf-8")


async def _shape(name: str, chats: int, per_chat: int, latency: float, workdir: Path,
                 pg_url: str | None, workers: int) -> dict[str, Any]:
    _prepare(workdir)
    schema = f"keel_bench_{uuid.uuid4().hex[:12]}"
    url = None
    if pg_url is not None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{pg_url}?options=-csearch_path%3D{schema}"

    def respond(req: RecordedRequest) -> Reply:
        if any(t.get("name") == "route" for t in req.body.get("tools") or []):
            return reply(tool_use("route", {"agent": "echo"}), latency=latency)
        return reply(f"ok: {req.last_user_text}", latency=latency)

    processes: list[asyncio.subprocess.Process] = []
    try:
        async with FakeTelegram() as telegram, FakeAnthropic() as anthropic:
            anthropic.responder = respond
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
                "TELEGRAM_BOT_TOKEN": telegram.token, "TELEGRAM_API_BASE_URL": telegram.base_url,
                "ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": anthropic.base_url,
                "KEEL_ALLOWED_USER_IDS": ",".join(str(FIRST_USER + c) for c in range(chats)),
                "KEEL_DATA_DIR": str(workdir / "data"), "KEEL_CONFIG": str(workdir / "keel.toml"),
                "KEEL_LOG_LEVEL": "WARNING",
                **({"KEEL_DATABASE_URL": url} if url else {}),
            }
            commands = [["run"]] if url is None else \
                [["worker"] for _ in range(workers)] + [["serve"]]
            for n, args in enumerate(commands):
                with (workdir / f"p{n}.log").open("wb") as log:
                    processes.append(await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "bot.cli", *args, cwd=str(workdir), env=env,
                        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log))
            await telegram.wait_for(lambda: telegram.calls("getUpdates"), timeout=60)
            chat_list = [telegram.private_chat(telegram.user(f"B{c}", id=FIRST_USER + c))
                         for c in range(chats)]
            started = time.monotonic()
            for m in range(per_chat):
                for chat in chat_list:
                    telegram.inject_text(chat, f"message {m}")
            total = chats * per_chat
            await telegram.wait_for(lambda: len(telegram.sent()) >= total, timeout=600)
            wall = time.monotonic() - started
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
        if pg_url is not None:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return {"shape": name, "messages": total, "wall_s": round(wall, 2),
            "messages_per_s": round(total / wall, 1),
            # Telegram's ~30 sends a second, or one chat's messages one after another
            "floor_s": round(max(per_chat * latency, total / 30), 2)}


async def measure(*, chats: int = 50, per_chat: int = 4, latency: float = 0.2,
                  workdir: Path | None = None, pg_url: str | None = PG_URL) -> dict[str, Any]:
    root = workdir or Path("/tmp") / f"keel-bench-workers-{os.getpid()}"
    shapes = [await _shape("sqlite, keel run", chats, per_chat, latency, root / "sqlite", None, 0)]
    try:
        psycopg.connect(pg_url or "", connect_timeout=3).close()
    except psycopg.Error as exc:
        return {"shapes": shapes, "postgres": f"not measured: {str(exc).strip()[:120]}"}
    for workers in (1, 2):
        shapes.append(await _shape(f"postgresql, serve + {workers} worker(s)", chats, per_chat,
                                   latency, root / f"pg{workers}", pg_url, workers))
    base = shapes[0]["wall_s"]
    for shape in shapes:
        shape["wall_vs_single_process"] = round(shape["wall_s"] / base, 2) if base else None
    return {"chats": chats, "per_chat": per_chat, "latency_s": latency, "shapes": shapes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--per-chat", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(chats=args.chats, per_chat=args.per_chat,
                                 latency=args.latency))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
