"""``python -m bench [--quick]``: run every benchmark, write the JSON and the table, print the table.

Sections run one after another (never two at once: the machine has few cores and the fakes share
this process's event loop). A section that fails is reported as not measured, with its error; the
others still run.

With ``BENCH_GARBAGE=path`` in the environment, the live bot also writes there what its garbage
collector freed, by type (``bench.instrumented.GarbageCensus``): objects left in reference cycles
live until a collection, and a collection that frees tens of thousands at once stalls the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import (
    budget_caps,
    concurrency,
    cost_caps,
    overhead,
    startup,
    token_economics,
    trace_open,
    workers,
)
from bench.machine import machine_info
from bench.report import table
from bench.stage import Stage
from bench.stats import median, ratio

RESULTS = Path(__file__).resolve().parent / "results"
ALL = ("startup", "overhead", "concurrency", "tokens", "budget", "caps", "traces", "workers")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How big each measurement is. ``FULL`` fits in 10 minutes on 2 cores, ``QUICK`` in one."""

    mode: str
    startup_repeats: int
    overhead_latency_s: float
    overhead_chats: int
    overhead_rounds: int
    """Timed turns per chat with the agent pinned (one model call per turn)."""
    routed_rounds: int
    """Timed turns per chat through the router (two model calls per turn)."""
    concurrency_latency_s: float
    concurrency_sizes: tuple[int, ...]
    concurrency_repeats: dict[int, int] = field(default_factory=dict)
    token_turns: tuple[int, ...]
    token_seeds: tuple[int, ...]
    budget_runs: int
    idle_settle_s: float = 2.0
    give_up_idle_s: float = 10.0
    """Missing replies are given up (and counted) once the bot sent nothing to Telegram this long."""
    startup_warm: bool = True
    """Also time a restart on an existing data directory."""
    time_limit_s: float
    """The whole run's target; concurrency repeats that would pass it are skipped (and said so)."""
    seed: int = 8
    trace_stored: tuple[int, ...] = (10, 30_000)
    """Traces stored when opening one is timed."""
    trace_opens: int = 200
    workers_chats: int = 50
    """Chats in the scale-out burst (keel run on SQLite beside serve + 1 and 2 workers)."""
    workers_per_chat: int = 4


FULL = Plan(mode="full", startup_repeats=5, overhead_latency_s=0.2, overhead_chats=10,
            overhead_rounds=8, routed_rounds=4, concurrency_latency_s=1.0,
            concurrency_sizes=(1, 100, 1000), concurrency_repeats={1: 5, 100: 3, 1000: 2},
            token_turns=(20, 60), token_seeds=(1, 2, 3), budget_runs=200, time_limit_s=540)
QUICK = Plan(mode="quick", startup_repeats=1, overhead_latency_s=0.2, overhead_chats=2,
             overhead_rounds=4, routed_rounds=2, concurrency_latency_s=1.0,
             concurrency_sizes=(1, 100), concurrency_repeats={1: 1, 100: 1},
             token_turns=(20,), token_seeds=(1,), budget_runs=50, idle_settle_s=1.0, startup_warm=False,
             give_up_idle_s=4.0,
             time_limit_s=55, workers_chats=10, workers_per_chat=2)
AFTER_LIVE_S = 30.0
"""Time kept for the in-process sections that run after the live bot (tokens, budget)."""


def _clean_environment() -> None:
    """A developer's own keel settings must not shape the numbers (subprocesses get a clean env
    anyway; this covers the in-process sections)."""
    for name in list(os.environ):
        if name.startswith(("KEEL_", "TELEGRAM_", "ANTHROPIC_")):
            del os.environ[name]


async def _section(results: dict[str, Any], name: str,
                   run: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    started = time.monotonic()
    print(f"bench: {name} …", file=sys.stderr, flush=True)
    try:
        results[name] = await run()
    except Exception as exc:  # report what could not be measured, keep going
        results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    results["section_durations_s"][name] = round(time.monotonic() - started, 1)
    print(f"bench: {name} done in {results['section_durations_s'][name]} s", file=sys.stderr,
          flush=True)


async def _live(results: dict[str, Any], plan: Plan, only: set[str], deadline: float,
                profile: Path | None = None, profile_window_s: float | None = None) -> None:
    """Overhead and concurrency share one long-lived bot process."""
    capacity = 2 * plan.overhead_chats + sum(plan.concurrency_sizes)
    with tempfile.TemporaryDirectory(prefix="keel-bench-live-") as tmp:
        stage = Stage(Path(tmp), capacity=capacity, latency=plan.overhead_latency_s,
                      idle_settle_s=plan.idle_settle_s, give_up_idle_s=plan.give_up_idle_s,
                      profile=profile, profile_window_s=profile_window_s)
        await stage.open()
        try:
            if "overhead" in only:
                await _section(results, "overhead", lambda: overhead.measure(
                    stage, latency=plan.overhead_latency_s, chats=plan.overhead_chats,
                    rounds=plan.overhead_rounds, routed_rounds=plan.routed_rounds))
            if "concurrency" in only:
                await _section(results, "concurrency", lambda: concurrency.measure(
                    stage, latency=plan.concurrency_latency_s,
                    sizes=list(plan.concurrency_sizes), repeats=plan.concurrency_repeats,
                    deadline=deadline))
        finally:
            closed = await stage.close()
        results["live_bot"] = {**closed, "first_getupdates_s": round(stage.first_poll_s or 0, 3),
                               "idle_rss_kb": stage.idle_rss_kb,
                               "stderr_tail": stage.bot.stderr_tail(2000)}


def _memory(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"how": "VmRSS from /proc/<pid>/status of the bot process"}
    if "startup" in results:
        s = results["startup"]
        out |= {"idle_rss_kb": s["idle_rss_kb"]["keel"],
                "baseline_idle_rss_kb": s["idle_rss_kb"]["baseline"],
                "idle_over_baseline": s["idle_rss_over_baseline"]}
    live_idle = results.get("live_bot", {}).get("idle_rss_kb")
    if "concurrency" in results and live_idle:
        n, c = max(((int(k), v) for k, v in results["concurrency"]["sizes"].items()),
                   key=lambda kv: kv[0])
        in_flight = median(r["bot_rss_kb_all_in_flight"] for r in c["runs"]
                           if r["bot_rss_kb_all_in_flight"])
        # the SDK loads with the first message (after the idle reading): per session counts
        # from just before the burst, when it is loaded and every chat is pinned
        before = median(r.get("bot_rss_kb_before") or live_idle for r in c["runs"])
        out |= {"active_sessions": n, "live_idle_rss_kb": live_idle,
                "rss_kb_before_burst": before,
                "rss_kb_all_in_flight": in_flight,
                "peak_rss_kb": max(r["bot_rss_kb_peak_sampled"] or 0 for r in c["runs"]),
                "per_session_kb": round((in_flight - before) / n, 1),
                "in_flight_over_idle": ratio(in_flight, live_idle)}
    return out


def _notes(results: dict[str, Any], plan: Plan) -> list[str]:
    notes = [
        "How: the real bot (`python -m bot.cli run`) talks HTTP to the fake Telegram and "
        "Anthropic servers (tests/fakes) running in the bench process on 127.0.0.1. "
        f"Overhead: model latency {plan.overhead_latency_s:g} s, sequential turns; 'direct SDK' "
        "replays the very request bodies the bot sent with `anthropic.AsyncAnthropic` from a "
        "separate process (the floor any bot pays). Concurrency: each chat pins "
        "`/agent assistant` first so one turn = one model call; ideal wall = one model latency.",
        "Replies under load pass keel's own pacing (bot/delivery.py: a global budget of 30 "
        "messages/s across chats, 20 a minute per group; a 429 waits in its chat only); typing "
        "actions and drafts stop above 10 runs at once, and a model call streams only where "
        "someone watches. That is keel's real behaviour and is left on. The fake Telegram's "
        "flood control is off. The floor for N replies is N ÷ 30 s plus one model latency.",
        "The live bot runs under bench/instrumented.py: it records event-loop stalls (a "
        "callback due every 5 ms; each delay of 10 ms or more is logged) and every garbage "
        "collection (their total in the burst; those of 10 ms or more as stalls) and, with "
        "--profile, samples the loop's stack.",
        "Token economics run in process (keel's Runtime + Sessions + router against the fake "
        "through the real SDK); the naive baseline sends the same conversation with no cache "
        "breakpoints, the full history every turn, no router. Token counts are the fake's "
        "estimate (4 characters per token), not a real tokenizer: ratios matter, absolute "
        "counts do not.",
        "Memory baseline and start-up baseline: `bench/baseline_bot.py`, python-telegram-bot + "
        "AsyncAnthropic with no keel.",
    ]
    if plan.mode == "quick":
        notes.append("QUICK RUN: fewer repeats and smaller sizes (no 1,000-chat concurrency, so "
                      "no 1,000-session memory figure; no warm restart; no 60-turn conversation; "
                      f"{plan.budget_runs} budget runs). Use `make bench` for the full figures.")
    for n, c in results.get("concurrency", {}).get("sizes", {}).items():
        if int(n) < 100:
            continue
        runs = c["runs"]
        notes.append(
            f"At {n} chats the last model call started {c['all_model_calls_started_s']:.1f} s "
            f"after the messages (median; per-chat wait before its model call p50 "
            f"{median(r['message_to_model_call_s']['p50'] for r in runs):.1f} s), with at most "
            f"{c['peak_model_calls_in_flight']} model calls in flight. From the bot's own inbox "
            "and runs tables, that wait splits (p50) into message → stored in the inbox "
            f"{median(r['split_message_to_inbox_s'].get('p50', 0) for r in runs):.2f} s, inbox → "
            f"run start {median(r['split_inbox_to_run_start_s'].get('p50', 0) for r in runs):.2f}"
            " s, run start → model call "
            f"{median(r['split_run_start_to_model_call_s'].get('p50', 0) for r in runs):.2f} s. "
            "Meanwhile the bot used "
            f"{median(r['bot_cpu_share'] for r in runs):.2f} of a core and the bench process (both "
            f"fakes) {median(r['bench_cpu_share'] for r in runs):.2f}; the bot sent "
            f"{median(r['telegram_chat_calls_per_s'] or 0 for r in runs):.0f} chat-bound Telegram "
            "requests/s. Direct SDK: the same calls all started within "
            f"{c.get('direct_sdk_all_started_s', float('nan')):.2f} s.")
    if "overhead" in results:
        notes.append("p99 figures come from "
                     f"{results['overhead']['pinned']['timed_turns']} (pinned) and "
                     f"{results['overhead']['routed']['timed_turns']} (routed) turns, so one slow "
                     "turn on either side moves them; p50 is the steadier figure.")
    if "budget" in results:
        b = results["budget"]
        notes.append(
            f"Budget: {b['halted_before_any_call']} of {b['runs']} runs stopped before their first "
            "model call because even a 256-token answer's worst case (input estimated high and "
            "priced at the dearest input rate, plus output) did not fit the cap; they spent $0. "
            f"Statuses: {b['statuses']}.")
    if "caps" in results:
        notes.append(
            "Caps: in process, keel's code through the real SDK against the fake server, judged "
            "by what the server billed (its own usage at Anthropic's published prices, "
            "tests/cost_harness.py). Daily caps: 20 conversations at once, six calls each, 0.02 s "
            "a call; baseline: looking at the day's spend before each call (keel before issue "
            "13). Hostile runs: control characters, CJK, emoji and JSON under a one-token-per-byte "
            "tokenizer. The schedule fires every minute; its guard never finds news.")
    lost = {n: (sum(c["unanswered_per_repeat"]), len(c["pin_failures"]))
            for n, c in results.get("concurrency", {}).get("sizes", {}).items()}
    if any(a or b for a, b in lost.values()):
        db = results.get("live_bot", {}).get("bot_database_after_stop", {})
        notes.append(
            "FOUND UNDER LOAD: some chats never got their reply ("
            + ", ".join(f"{a} at {n} chats" for n, (a, _) in lost.items() if a)
            + ") and some `/agent` commands failed ("
            + ", ".join(f"{b} at {n} chats" for n, (_, b) in lost.items() if b)
            + f"). After the bot stopped, its outbox statuses were {db.get('outbox')} and its "
            f"runs {db.get('runs')}; the bot logged "
            f"{results.get('live_bot', {}).get('bot_error_log_lines')} ERROR line(s). Timing "
            "figures above cover the chats that were answered.")
    if "traces" in results:
        sizes = results["traces"]["sizes"]
        notes.append("Trace open (median ms, new / reopened with its day / a full listing for "
                      "comparison): " + "; ".join(
                          f"{n} stored: {s['open_new_ms']['p50']:.3f} / {s['reopen_ms']['p50']:.3f}"
                          f" / {s['full_listing_ms']:.1f}" for n, s in sizes.items()) + ".")
    for name, error in results.get("errors", {}).items():
        notes.append(f"NOT MEASURED — {name}: {error}")
    return [f"- {n}" for n in notes]


async def run(plan: Plan, only: set[str], profile: Path | None = None,
              profile_window_s: float | None = None) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"bench": "keel", "mode": plan.mode, "machine": machine_info(),
                               "plan": dataclasses.asdict(plan), "section_durations_s": {}}
    if "startup" in only:
        await _section(results, "startup", lambda: startup.measure(
            plan.startup_repeats, plan.idle_settle_s, warm=plan.startup_warm))
    if only & {"overhead", "concurrency"}:
        deadline = started + plan.time_limit_s - AFTER_LIVE_S * (plan.mode == "full")
        await _live(results, plan, only, deadline, profile, profile_window_s)
    if "tokens" in only:
        await _section(results, "tokens", lambda: token_economics.measure(
            list(plan.token_turns), list(plan.token_seeds)))
    if "budget" in only:
        await _section(results, "budget", lambda: budget_caps.measure(plan.budget_runs,
                                                                        plan.seed))
    if "caps" in only:
        await _section(results, "caps", lambda: cost_caps.measure(plan.budget_runs, plan.seed))
    if "traces" in only:
        await _section(results, "traces", lambda: trace_open.measure(list(plan.trace_stored),
                                                                     plan.trace_opens))
    if "workers" in only:
        await _section(results, "workers", lambda: workers.measure(
            chats=plan.workers_chats, per_chat=plan.workers_per_chat))
    results["memory"] = _memory(results)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["notes"] = _notes(results, plan)
    return results


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and smaller sizes (under a minute); writes quick.*")
    parser.add_argument("--only", default=",".join(ALL),
                        help=f"comma-separated sections (default all: {','.join(ALL)})")
    parser.add_argument("--latency", type=float, help="fake model latency for the overhead "
                        "measurement, seconds (default 0.2)")
    parser.add_argument("--concurrency-latency", type=float,
                        help="fake model latency for the concurrency measurement (default 1.0)")
    parser.add_argument("--sizes", help="concurrency sizes, comma-separated (e.g. 1000)")
    parser.add_argument("--repeats", type=int, help="repeats of every concurrency size")
    parser.add_argument("--profile", type=Path, help="the live bot writes a sampling profile of "
                        "its event loop here at exit (read it with python -m bench.profile_view); "
                        "a name ending in .prof gets cProfile's exact counts instead (pstats)")
    parser.add_argument("--profile-window", type=float, metavar="SECONDS",
                        help="with --profile: only the first SECONDS of each concurrency burst "
                        "(intake; a .prof covers the first burst, written when it ends)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    parser.add_argument("--name", help="file name stem (default latest, or quick with --quick)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite the table from the existing JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.latency is not None:
        plan = dataclasses.replace(plan, overhead_latency_s=args.latency)
    if args.concurrency_latency is not None:
        plan = dataclasses.replace(plan, concurrency_latency_s=args.concurrency_latency)
    if args.sizes:
        sizes = tuple(int(n) for n in args.sizes.split(","))
        plan = dataclasses.replace(plan, concurrency_sizes=sizes, concurrency_repeats={
            n: args.repeats or plan.concurrency_repeats.get(n, 1) for n in sizes})
    elif args.repeats:
        plan = dataclasses.replace(plan, concurrency_repeats={
            n: args.repeats for n in plan.concurrency_sizes})
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(ALL)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(ALL)}")

    stem = args.name or ("quick" if args.quick else "latest")
    if args.render:
        results = json.loads((args.out / f"{stem}.json").read_text())
        results["notes"] = _notes(results, Plan(**{**results["plan"], "concurrency_repeats": {
            int(k): v for k, v in results["plan"]["concurrency_repeats"].items()}}))
        _write(args.out / f"{stem}.json", json.dumps(results, indent=2, default=str) + "\n")
        _write(args.out / f"{stem}.md", table(results))
        print(table(results))
        return 0

    _clean_environment()
    from tests import netguard

    netguard.install()  # loopback only: the bench never reaches the internet
    if args.profile_window is not None and args.profile is None:
        parser.error("--profile-window needs --profile")
    results = asyncio.run(run(plan, only, args.profile.resolve() if args.profile else None,
                              args.profile_window))
    markdown = table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / f"{stem}.json", json.dumps(results, indent=2, default=str) + "\n")
    _write(args.out / f"{stem}.md", markdown)
    print(markdown)
    print(f"wrote {args.out / (stem + '.json')} and {stem}.md in {results['duration_s']:.0f} s",
          file=sys.stderr)
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
