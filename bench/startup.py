"""Start-up and idle memory: process start to the first getUpdates, and resident memory at rest.

Each repeat starts ``python -m bot.cli run`` three ways against the same fakes: cold (a fresh data
directory: database created and migrated), warm (the same directory again, as after a restart), and
the baseline bot (``bench.baseline_bot``: python-telegram-bot + AsyncAnthropic, no keel). Time is
from just before the process is spawned to the fake Telegram server receiving its first getUpdates.
Idle memory is VmRSS from /proc a moment after that first poll, with no message sent yet.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from bench.stats import median, ratio
from bench.world import BotProcess
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.telegram import FakeTelegram

SETTLE_S = 2.0
"""How long after its first poll a process is left alone before its idle memory is read."""


async def _start_once(telegram: FakeTelegram, anthropic: FakeAnthropic, workdir: Path,
                      module: tuple[str, ...], settle_s: float) -> tuple[float, int | None]:
    bot = BotProcess(telegram, anthropic, workdir, allowed_ids=[1], module=module)
    await bot.start()
    try:
        seconds = await bot.wait_first_poll()
        await asyncio.sleep(settle_s)
        rss = bot.memory_kb().get("VmRSS")
    finally:
        code = await bot.stop()
    if code not in (0, None):
        raise RuntimeError(f"{module} exited with {code}:\n{bot.stderr_tail()}")
    return seconds, rss


async def measure(repeats: int, settle_s: float = SETTLE_S, *, warm: bool = True) -> dict[str, Any]:
    samples: dict[str, list[tuple[float, int | None]]] = {"cold": [], "warm": [], "baseline": []}
    async with FakeTelegram() as telegram, FakeAnthropic() as anthropic:
        with tempfile.TemporaryDirectory(prefix="keel-bench-start-") as tmp:
            for i in range(repeats):
                keel_dir = Path(tmp) / f"keel-{i}"
                samples["cold"].append(await _start_once(telegram, anthropic, keel_dir,
                                                         ("bot.cli", "run"), settle_s))
                if warm:
                    samples["warm"].append(await _start_once(telegram, anthropic, keel_dir,
                                                             ("bot.cli", "run"), settle_s))
                samples["baseline"].append(await _start_once(
                    telegram, anthropic, Path(tmp) / f"base-{i}", ("bench.baseline_bot",), settle_s))
    first_poll = {k: round(median(s for s, _ in v), 3) if v else None
                  for k, v in samples.items()}
    idle_rss = {k: median(r for _, r in v if r) for k, v in samples.items()}
    keel_rss = median([r for k in ("cold", "warm") for _, r in samples[k] if r])
    return {
        "repeats": repeats,
        "how": "process spawn -> first getUpdates at the fake Telegram server; cold = fresh "
               "data dir (DB created and migrated), warm = same dir again; baseline = "
               "bench/baseline_bot.py (python-telegram-bot + AsyncAnthropic, no keel)",
        "first_getupdates_s": first_poll,
        "cold_over_baseline": ratio(first_poll["cold"], first_poll["baseline"]),
        "warm_over_baseline": ratio(first_poll["warm"], first_poll["baseline"]),
        "samples_s": {k: [round(s, 3) for s, _ in v] for k, v in samples.items()},
        "idle_rss_kb": {"keel": keel_rss, "baseline": idle_rss["baseline"]},
        "idle_rss_over_baseline": ratio(keel_rss, idle_rss["baseline"]),
        "idle_settle_s": settle_s,
    }
