"""Concurrency: N chats send a message at the same instant while the model takes a fixed time.

Each chat pins ``/agent assistant`` first (untimed), so a turn is exactly one model call and the
ideal wall time for any N is one model latency. For every repeat we record, per chat, when its
message reached the fake Telegram server, when its model call reached the fake Anthropic server and
when its reply's sendMessage reached Telegram. From that:

* wall time (first message → last reply) against the ideal, and turns per second;
* time until every model call had started, and until every reply was delivered: the gap is the
  bot's Telegram rate limiter (AIORateLimiter, ~30 requests/s for all chat-bound calls: replies,
  typing actions, drafts), which is real keel behaviour and is not switched off here;
* whether any chat waited on another: the peak number of model calls in flight at once (N means no
  chat's model call waited for another's), and how many calls started only after the first call
  had already finished;
* the bot's resident memory while all N runs are in flight, and its peak;
* chats that never got their reply: waiting for them stops once the bot has sent nothing at all to
  Telegram for a while (it is not being throttled then), and they are counted, not hidden; the
  timing figures cover the chats that were answered.

Baseline, same run: the same N request bodies sent at once with AsyncAnthropic from one process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.instrumented import read_lag
from bench.stage import Stage, bot_timestamps, direct_calls
from bench.stats import median, peak_overlap, ratio, summary
from bench.world import CHAT_METHODS

QUESTION = "what is a good name for a grey cat? One line."
TELEGRAM_SENDS_PER_S = 30
"""Telegram's documented overall limit: N replies need at least N / 30 s after the first."""


async def _sample_memory(stage: Stage, into: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        rss = stage.bot.memory_kb().get("VmRSS")
        if rss:
            into.append(rss)
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def _one(stage: Stage, chats: list[Any], latency: float,
               timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    model = stage.model
    calls_from = len(model.calls)
    stage.replies.scan()
    chat_calls_from = len(stage.replies.chat_calls)
    wanted = stage.expected(chats)
    batch: dict[int, int] = {}

    def all_in_flight() -> bool:
        return sum(1 for c in model.calls[calls_from:] if c.kind == "agent") >= len(chats)

    in_flight = model.when(all_in_flight)
    samples: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_memory(stage, samples, stop))
    stage.watch_loop(True)
    await asyncio.sleep(0.05)  # the first tick is due before the first message
    rss_before = stage.bot.memory_kb().get("VmRSS")
    cpu_bot, cpu_bench = stage.bot.cpu_s(), time.process_time()
    sent: dict[int, float] = {}
    t0 = time.time()
    for chat in chats:
        batch[chat.id], sent[chat.id] = stage.say(chat, QUESTION)
    rss_in_flight = None
    try:
        try:
            await asyncio.wait_for(in_flight.wait(), 60 + latency)
            rss_in_flight = stage.bot.memory_kb().get("VmRSS")
        except TimeoutError:
            pass  # some message never reached the model; counted below
        missing = await stage.replies.until_counts(wanted, timeout,
                                                   give_up_idle_s=stage.give_up_idle_s)
    finally:
        stop.set()
        await sampler
        stage.watch_loop(False)
    replied = {c.id: stage.replies.by_chat[c.id][wanted[c.id] - 1] for c in chats
               if c.id not in missing}
    wall = max(replied.values()) - t0
    cpu_bot, cpu_bench = stage.bot.cpu_s() - cpu_bot, time.process_time() - cpu_bench

    calls = [c for c in model.calls[calls_from:]
             if c.kind == "agent" and c.chat_id in batch and c.n == batch[c.chat_id]]
    # where the wait before the model call goes, from the bot's own inbox and runs tables
    update_of = {c.id: stage.last_update_id[c.id] for c in chats}
    stamps = bot_timestamps(stage.workdir / "data", list(update_of.values()))
    call_of = {c.chat_id: c for c in calls}
    to_inbox, to_run, to_model, inbox_to_model = [], [], [], []
    for chat_id, update_id in update_of.items():
        if update_id in stamps and chat_id in call_of:
            received, started = stamps[update_id]
            to_inbox.append(received - sent[chat_id])
            to_run.append(started - received)
            to_model.append(call_of[chat_id].arrived - started)
            inbox_to_model.append(call_of[chat_id].arrived - received)
    first_done = min(c.done for c in calls)
    tg = [r for r in stage.replies.chat_calls[chat_calls_from:] if r.method.lower() in CHAT_METHODS]
    tg_span = (max(r.time for r in tg) - min(r.time for r in tg)) if len(tg) > 1 else 0.0
    per_method: dict[str, int] = {}
    for r in tg:
        per_method[r.method] = per_method.get(r.method, 0) + 1
    reply_times = sorted(replied.values())
    drain_span = reply_times[-1] - reply_times[0] if len(reply_times) > 1 else 0.0
    last_message = max(sent.values())
    floor = len(chats) / TELEGRAM_SENDS_PER_S + latency
    return {
        "wall_s": round(wall, 4),
        "floor_s": round(floor, 3),
        "wall_over_floor": round(wall / floor, 3),
        "all_model_calls_started_after_last_message_s": round(
            max(c.arrived for c in calls) - last_message, 4),
        "inbox_to_model_call_s": summary(inbox_to_model),
        "drain_replies_per_s": round((len(reply_times) - 1) / drain_span, 1) if drain_span else None,
        "bot_cpu_ms_per_turn": round(1000 * cpu_bot / max(len(replied), 1), 2),
        "loop_lag": read_lag(stage.lag_file, t0, t0 + wall),
        "unanswered_chats": sorted(missing),
        "chats_without_model_call": len(chats) - len(calls),
        "all_model_calls_started_s": round(max(c.arrived for c in calls) - t0, 4),
        "all_model_calls_answered_s": round(max(c.done for c in calls) - t0, 4),
        "all_replies_delivered_s": round(wall, 4),
        "injection_s": round(max(sent.values()) - t0, 4),
        "peak_model_calls_in_flight": peak_overlap((c.arrived, c.done) for c in calls),
        "calls_started_after_first_answer": sum(1 for c in calls if c.arrived > first_done),
        "reply_latency_s": summary([replied[cid] - sent[cid] for cid in replied]),
        "message_to_model_call_s": summary([c.arrived - sent[c.chat_id] for c in calls]),
        "split_message_to_inbox_s": summary(to_inbox),
        "split_inbox_to_run_start_s": summary(to_run),
        "split_run_start_to_model_call_s": summary(to_model),
        "model_answer_to_reply_s": summary([replied[c.chat_id] - c.done for c in calls
                                            if c.chat_id in replied]),
        "telegram_chat_calls": per_method,
        "telegram_chat_calls_per_s": round(len(tg) / tg_span, 1) if tg_span else None,
        "bot_rss_kb_before": rss_before,
        "bot_rss_kb_all_in_flight": rss_in_flight,
        "bot_rss_kb_peak_sampled": max(samples) if samples else None,
        "bot_cpu_share": round(cpu_bot / wall, 3),
        "bench_cpu_share": round(cpu_bench / wall, 3),
        "bodies": [c.rec.body for c in calls],
    }


async def measure(stage: Stage, *, latency: float, sizes: list[int],
                  repeats: dict[int, int], deadline: float | None = None) -> dict[str, Any]:
    """``deadline`` (time.monotonic()): a repeat that would likely end after it is skipped, and
    the skip is reported, so ``make bench`` keeps to its time limit."""
    stage.model.latency = latency
    stage.model.answer = lambda text: f"Try *Ash* (re {text[:20]})."
    out: dict[str, Any] = {
        "model_latency_s": latency,
        "ideal_wall_s": latency,
        "how": "each chat pins /agent assistant first (untimed), so one model call per turn; all "
               "N messages are injected back to back and the bot's replies awaited; medians over "
               "repeats (each repeat is one more message in every chat)",
        "sizes": {},
    }
    bodies: dict[int, list[dict[str, Any]]] = {}
    for n in sizes:
        chats = stage.new_chats(n)
        timeout = 120 + n * 0.5
        pin_failures = await stage.pin(chats, timeout=timeout)
        runs: list[dict[str, Any]] = []
        skipped = 0
        took = 0.0
        for _ in range(repeats.get(n, 1)):
            if runs and deadline is not None and time.monotonic() + took * 1.3 > deadline:
                skipped += 1
                continue
            await asyncio.sleep(1.5 if n > 1 else 0.2)  # let the rate limiter's bucket refill
            started = time.monotonic()
            runs.append(await _one(stage, chats, latency, timeout))
            took = time.monotonic() - started
        bodies[n] = runs[-1].pop("bodies")
        for r in runs:
            r.pop("bodies", None)
        wall = median(r["wall_s"] for r in runs)
        out["sizes"][str(n)] = {
            "chats": n,
            "repeats": len(runs),
            "repeats_skipped_for_time": skipped,
            "pin_failures": pin_failures,
            "unanswered_per_repeat": [len(r["unanswered_chats"]) for r in runs],
            "wall_s": round(wall, 3),
            "wall_over_ideal": ratio(wall, latency),
            "turns_per_s": round(n / wall, 2),
            "all_model_calls_started_s": round(median(r["all_model_calls_started_s"]
                                                      for r in runs), 3),
            "all_replies_delivered_s": round(wall, 3),
            "peak_model_calls_in_flight": min(r["peak_model_calls_in_flight"] for r in runs),
            "any_model_call_waited_on_another": any(
                r["peak_model_calls_in_flight"] < n or r["calls_started_after_first_answer"]
                for r in runs),
            "all_model_calls_started_after_last_message_s": round(median(
                r["all_model_calls_started_after_last_message_s"] for r in runs), 3),
            "inbox_to_model_call_p50_s": round(median(
                r["inbox_to_model_call_s"].get("p50", 0) for r in runs), 4),
            "inbox_to_model_call_p99_s": round(median(
                r["inbox_to_model_call_s"].get("p99", 0) for r in runs), 4),
            "floor_s": runs[0]["floor_s"],
            "wall_over_floor": round(wall / runs[0]["floor_s"], 3),
            "drain_replies_per_s": median(r["drain_replies_per_s"] or 0 for r in runs),
            "bot_cpu_ms_per_turn": median(r["bot_cpu_ms_per_turn"] for r in runs),
            "loop_lag_max_ms": max(r["loop_lag"].get("max_ms", 0) for r in runs),
            "loop_stalls_over_50ms": sum(r["loop_lag"].get("over_50ms", 0) for r in runs),
            "gc_total_ms": median(r["loop_lag"].get("gc_total_ms", 0) for r in runs),
            "gc_collections": median(r["loop_lag"].get("gc_collections", 0) for r in runs),
            "reply_latency_p50_s": round(median(r["reply_latency_s"]["p50"] for r in runs), 3),
            "reply_latency_p99_s": round(median(r["reply_latency_s"]["p99"] for r in runs), 3),
            "runs": runs,
        }
    # the baseline: the last repeat's request bodies, all at once, from one process
    jobs = [{"concurrent": True, "turns": [[b] for b in bodies[n]], "warmup": bodies[n][0]}
            for n in sizes]
    try:
        directs = await direct_calls(stage.anthropic.base_url, jobs)
    except RuntimeError as exc:  # the baseline failed (its own connection errors): keel's stand
        out["direct_sdk_error"] = str(exc)[-500:]
        return out
    for n, direct in zip(sizes, directs, strict=True):
        size = out["sizes"][str(n)]
        starts = [t["started"] - direct["t0"] for t in direct["turns"]]
        size["direct_sdk_wall_s"] = round(direct["wall_s"], 3)
        size["direct_sdk_all_started_s"] = round(max(starts), 3)
        size["wall_over_direct_sdk"] = ratio(size["wall_s"], direct["wall_s"])
    return out
