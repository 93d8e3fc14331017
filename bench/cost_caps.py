"""Caps that hold, judged by the fake Anthropic server's own usage (issue 13's other figures).

In process, keel's code through the real SDK against the fake server (tests/fakes), priced from
Anthropic's published prices written out apart from keel's table (tests/cost_harness.py), each
beside what it replaced:

* a day's caps with many runs at once: 20 people against a $0.05 overall cap, and one person in
  20 forum topics against a $0.05 per-person cap; every call is held in the daily ledger first.
  Baseline: looking at the day's spend before each call and recording it after (keel before);
* 200 runs with hostile input (control characters, CJK, emoji, JSON) under a tokenizer that
  counts one token per byte, caps $0.005-$0.25: runs over their cap by the server's usage;
* a "hello" to the built-in assistant under a $0.01 run cap;
* a schedule whose guard finds nothing new, fired 100 times: model requests and spend.
  Baseline: the same schedule with no guard.
"""

from __future__ import annotations

import random
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agents.config import load_settings
from agents.ids import new_id
from agents.model.anthropic_client import AnthropicModelClient
from agents.runtime import Runtime
from agents.schedule import ScheduledJob
from agents.scheduled import ScheduledRunner
from agents.sessions import Sessions
from bench.world import API_KEY, empty_config
from storage.ledger import DailyCaps
from storage.traces import TraceStore
from tests.cost_harness import adversarial_text, billed, chat, crowd, make_run
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, reply
from tests.unit.test_schedule import RecordingNotifier

DAILY_CAP_USD = 0.05
HELLO_CAP_USD = 0.01
GUARD_FIRES = 100
ADVERSARIAL_CAPS = (0.005, 0.01, 0.02, 0.05, 0.10, 0.25)


def nothing_new(ctx: Any) -> bool:
    """The bench schedule's guard (``bench.cost_caps:nothing_new``): there is never news."""
    return False


async def measure(runs: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="keel-bench-caps-") as tmp:
        workdir = Path(tmp)
        return {
            "daily": await _daily(workdir),
            "adversarial": await _adversarial(workdir, runs, seed),
            "hello": await _hello(workdir / "hello"),
            "guard": {"keel": await _schedule(workdir / "guarded", guarded=True),
                      "baseline": await _schedule(workdir / "unguarded", guarded=False)},
        }


async def _daily(workdir: Path) -> dict[str, Any]:
    shapes = {"overall": (list(range(1, 21)), DailyCaps(total_usd=DAILY_CAP_USD,
                                                        per_user_usd=5.0)),
              "per_user": ([7] * 20, DailyCaps(total_usd=20.0, per_user_usd=DAILY_CAP_USD))}
    out: dict[str, Any] = {"cap_usd": DAILY_CAP_USD}
    for name, (users, caps) in shapes.items():
        out[name] = {}
        for guard in ("ledger", "check"):
            async with FakeAnthropic() as server:
                client = AnthropicModelClient(api_key=API_KEY, base_url=server.base_url,
                                              max_retries=0)
                try:
                    recorded, server_usd = await crowd(
                        server, client, workdir / f"{name}-{guard}", users=users, caps=caps,
                        guard=guard)
                finally:
                    await client.close()
            out[name]["keel" if guard == "ledger" else "baseline"] = {
                "recorded_usd": round(recorded, 6), "billed_usd": round(server_usd, 6)}
    return out


async def _adversarial(workdir: Path, runs: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    traces = TraceStore(workdir / "adversarial-traces")
    over = calls = refused = 0
    worst = 0.0
    async with FakeAnthropic(tokenizer="bytes") as server:
        server.responder = lambda rec: reply("ok " + adversarial_text(rng, rng.randrange(200,
                                                                                         4000)))
        client = AnthropicModelClient(api_key=API_KEY, base_url=server.base_url, max_retries=0)
        try:
            for _ in range(runs):
                cap = rng.choice(ADVERSARIAL_CAPS)
                turns = [adversarial_text(rng, rng.choice([10, 300, 2000, 8000]))
                         for _ in range(rng.randrange(1, 4))]
                before = len(server.message_requests)
                made = await chat(make_run(traces, cap), client, turns)
                spent = billed(server.message_requests[before:])
                calls += made
                refused += made == 0
                over += spent > cap + 1e-9
                worst = max(worst, spent / cap)
        finally:
            await client.close()
    return {"runs": runs, "over_cap": over, "model_calls": calls,
            "refused_before_any_call": refused, "max_billed_over_cap": round(worst, 3)}


async def _open(workdir: Path, server: FakeAnthropic, **env: str) -> Runtime:
    settings = load_settings(
        _env_file=None, ANTHROPIC_API_KEY=API_KEY, ANTHROPIC_BASE_URL=server.base_url,
        KEEL_DATA_DIR=str(workdir / "data"), KEEL_CONFIG=str(empty_config(workdir)), **env)
    return await Runtime.open(settings)


async def _hello(workdir: Path) -> dict[str, Any]:
    async with FakeAnthropic() as server:
        server.responder = lambda rec: reply("Hello! How can I help you today?")
        runtime = await _open(workdir, server, KEEL_RUN_BUDGET_USD=str(HELLO_CAP_USD))
        try:
            turn = await Sessions(runtime).turn(
                chat_id=1, thread_id=None, agent="assistant", run_id=new_id(),
                content=[{"type": "text", "text": "hello"}], user_id=1)
        finally:
            await runtime.close()
        return {"cap_usd": HELLO_CAP_USD, "status": turn.result.status,
                "recorded_usd": round(turn.result.cost_usd, 6),
                "billed_usd": round(billed(server.message_requests), 6)}


async def _schedule(workdir: Path, *, guarded: bool) -> dict[str, Any]:
    def respond(rec: RecordedRequest) -> Any:
        return reply("Nothing new since yesterday.")

    async with FakeAnthropic(responder=respond) as server:
        runtime = await _open(workdir, server, KEEL_ALLOWED_USER_IDS="1")
        notifier = RecordingNotifier()

        async def no_wait(seconds: float) -> None:
            return None

        runner = ScheduledRunner(runtime, notifier, sleep=no_wait)
        job = ScheduledJob(name="watch", agent="assistant", cron="* * * * *",
                           task="Tell me what changed on the status page.", timezone="UTC",
                           budget_usd=0.30, misfire_grace_s=60, chat_id=1,
                           guard="bench.cost_caps:nothing_new" if guarded else None)
        start = datetime(2026, 5, 4, 8, tzinfo=ZoneInfo("UTC"))
        statuses: dict[str, int] = {}
        try:
            for i in range(GUARD_FIRES):
                outcome = await runner(job, start + timedelta(minutes=i), f"fire-{i}")
                statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
        finally:
            await runtime.close()
        return {"fires": GUARD_FIRES, "model_requests": len(server.message_requests),
                "billed_usd": round(billed(server.message_requests), 6),
                "messages_sent": len(notifier.sent), "statuses": statuses}
