"""Overhead per turn: what keel adds between a person's message and its reply, beyond the model.

For each timed turn: from the message reaching the fake Telegram server to the bot's sendMessage
reaching it, minus the fake model's latency for every model call the turn made. Two set-ups:

* pinned — the chat pinned ``/agent assistant`` first, so a turn is one model call;
* routed — no pin, so a turn is a router call (claude-haiku-4-5) and then the agent call.

Baseline, same run: the very request bodies the bot sent, replayed directly with
``anthropic.AsyncAnthropic`` from a separate process against the same fake with the same latency;
its time minus the latency is the floor any bot pays (client, HTTP, the fake's own work).

Baseline bot, same run: the pinned turns again against ``bench/baseline_bot.py``
(python-telegram-bot + AsyncAnthropic: no storage, no traces, no budgets, no typing action, no
drafts, no streaming), on fakes of its own. Its CPU a turn is what the two libraries alone cost.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.stage import Stage, direct_calls
from bench.stats import ratio, summary
from bench.world import ModelCall
from tests.fakes.telegram import Chat

QUESTION = "how long should I steep green tea, and at what temperature? Keep it short."


def _answer(text: str) -> str:
    return ("Steep green tea for 2-3 minutes at 75-80 °C. Longer or hotter makes it bitter. "
            f"(re: {text[:24]})")


async def _timed_turns(stage: Stage, chats: list[Chat], rounds: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(rounds):
        for chat in chats:
            n, sent, replied = await stage.turn(chat, QUESTION)
            calls = [c for c in stage.model.calls if c.chat_id == chat.id and c.n == n]
            out.append({"chat": chat.id, "n": n, "sent": sent, "replied": replied,
                        "calls": calls})
    return out


def _keel_figures(turns: list[dict[str, Any]]) -> dict[str, Any]:
    overhead, pre, post, total = [], [], [], []
    for t in turns:
        calls: list[ModelCall] = t["calls"]
        latency = sum(c.latency for c in calls)
        total.append(t["replied"] - t["sent"])
        overhead.append(t["replied"] - t["sent"] - latency)
        pre.append(calls[0].arrived - t["sent"])
        post.append(t["replied"] - calls[-1].done)
    return {"turn_s": summary(total), "overhead_s": summary(overhead),
            "before_model_s": summary(pre), "after_model_s": summary(post)}


async def _run_setup(stage: Stage, chats: list[Chat], *, pinned: bool,
                     rounds: int) -> dict[str, Any]:
    pin_failures: list[int] = []
    if pinned:
        pin_failures = await stage.pin(chats, timeout=60)
    for chat in chats:  # untimed warm-up: first turn of each chat, connections, lazy imports
        await stage.turn(chat, QUESTION)
    cpu = stage.bot.cpu_s()
    turns = await _timed_turns(stage, chats, rounds)
    cpu_per_turn = (stage.bot.cpu_s() - cpu) / max(len(turns), 1)
    return {"chats": chats, "pin_failures": pin_failures, "turns": turns,
            "bot_cpu_ms_per_turn": round(cpu_per_turn * 1000, 2)}


def _figures(setup: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    turns = setup["turns"]
    keel = _keel_figures(turns)
    keel["bot_cpu_ms_per_turn"] = setup["bot_cpu_ms_per_turn"]
    floor, direct_total = [], []
    for turn, timing in zip(turns, direct["turns"], strict=True):
        latency = sum(c.latency for c in turn["calls"])
        floor.append(sum(timing["calls"]) - latency)
        direct_total.append(sum(timing["calls"]))
    base = {"turn_s": summary(direct_total), "overhead_s": summary(floor)}
    k50, b50 = keel["overhead_s"]["p50"], base["overhead_s"]["p50"]
    k99, b99 = keel["overhead_s"]["p99"], base["overhead_s"]["p99"]
    return {
        "chats": len(setup["chats"]), "pin_failures": setup["pin_failures"],
        "timed_turns": len(turns),
        "model_calls_per_turn": sorted({len(t["calls"]) for t in turns}),
        "call_kinds": sorted({c.kind for t in turns for c in t["calls"]}),
        "keel": keel, "direct_sdk": base,
        "overhead_p50_ratio": ratio(k50, b50), "overhead_p99_ratio": ratio(k99, b99),
        "keel_added_p50_s": round(k50 - b50, 4), "keel_added_p99_s": round(k99 - b99, 4),
        "turn_time_p50_ratio": ratio(keel["turn_s"]["p50"], base["turn_s"]["p50"], 3),
    }


async def baseline_bot(*, latency: float, chats: int, rounds: int) -> dict[str, Any]:
    """The pinned set-up's turns (same chats, rounds, question and latency) answered by
    bench/baseline_bot.py: its CPU a turn and its overhead (reply - message - latency)."""
    with tempfile.TemporaryDirectory(prefix="keel-bench-baseline-") as tmp:
        stage = Stage(Path(tmp), capacity=chats, latency=latency, idle_settle_s=0.5,
                      module=("bench.baseline_bot",))
        await stage.open()
        try:
            stage.model.answer = _answer
            setup = await _run_setup(stage, stage.new_chats(chats), pinned=False, rounds=rounds)
        finally:
            await stage.close()
    figures = _keel_figures(setup["turns"])
    return {"timed_turns": len(setup["turns"]), "overhead_s": figures["overhead_s"],
            "turn_s": figures["turn_s"], "bot_cpu_ms_per_turn": setup["bot_cpu_ms_per_turn"],
            "model_calls_per_turn": sorted({len(t["calls"]) for t in setup["turns"]})}


def _job(setup: dict[str, Any]) -> dict[str, Any]:
    bodies = [[c.rec.body for c in t["calls"]] for t in setup["turns"]]
    return {"concurrent": False, "turns": bodies, "warmup": bodies[0][0]}


async def measure(stage: Stage, *, latency: float, chats: int, rounds: int,
                  routed_rounds: int) -> dict[str, Any]:
    stage.model.latency = latency
    stage.model.answer = _answer
    pinned = await _run_setup(stage, stage.new_chats(chats), pinned=True, rounds=rounds)
    routed = await _run_setup(stage, stage.new_chats(chats), pinned=False, rounds=routed_rounds)
    direct = await direct_calls(stage.anthropic.base_url, [_job(pinned), _job(routed)])
    bare = await baseline_bot(latency=latency, chats=chats, rounds=rounds)
    return {
        "model_latency_s": latency,
        "how": "sequential turns round-robin over the chats; each chat's first turn is an "
               "untimed warm-up; overhead = reply sendMessage arrival - message injection - "
               "model latency x model calls in the turn; baseline = the same request bodies "
               "replayed with AsyncAnthropic (streamed when the bot streamed) from a separate "
               "process, minus the same latency; baseline_bot = bench/baseline_bot.py answering "
               "the pinned set-up's turns on fakes of its own (its CPU: the libraries alone)",
        "pinned": _figures(pinned, direct[0]),
        "routed": _figures(routed, direct[1]),
        "baseline_bot": bare,
    }
