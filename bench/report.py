"""The short Markdown table (and its notes) from the results JSON."""

from __future__ import annotations

from typing import Any

from bench.machine import describe


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def _s(seconds: float | None, digits: int = 2) -> str:
    return "n/a" if seconds is None else f"{seconds:.{digits}f} s"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def _mb(kb: float | None) -> str:
    return "n/a" if not kb else f"{kb / 1024:.1f} MB"


def _usd(value: float) -> str:
    return f"${value:.4f}"


def _missing(results: dict[str, Any], section: str) -> str | None:
    if section in results.get("errors", {}):
        return f"not measured: {results['errors'][section]}"
    if section not in results:
        return "not run"
    return None


def _overhead_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, label in (("pinned", "pinned agent, 1 model call"),
                       ("routed", "router + agent, 2 model calls")):
        o = r[key]
        k, b = o["keel"]["overhead_s"], o["direct_sdk"]["overhead_s"]
        rows.append([f"Overhead per turn p50 / p99 — {label} ({o['timed_turns']} turns)",
                     f"{_ms(k['p50'])} / {_ms(k['p99'])}",
                     f"{_ms(b['p50'])} / {_ms(b['p99'])} (direct SDK)",
                     f"{_x(o['overhead_p50_ratio'])} / {_x(o['overhead_p99_ratio'])}; keel adds "
                     f"{_ms(o['keel_added_p50_s'])} at p50"
                     + (f"; bot CPU {o['keel']['bot_cpu_ms_per_turn']:.1f} ms a turn"
                        if "bot_cpu_ms_per_turn" in o["keel"] else "")])
    bare = r.get("baseline_bot")
    if bare is not None:
        k = r["pinned"]["keel"]
        rows.append([f"Bot CPU per turn · overhead p50 — pinned turns, keel vs a bot with no keel "
                     f"({bare['timed_turns']} turns)",
                     f"{k['bot_cpu_ms_per_turn']:.1f} ms · {_ms(k['overhead_s']['p50'])}",
                     f"{bare['bot_cpu_ms_per_turn']:.1f} ms · {_ms(bare['overhead_s']['p50'])} "
                     "(baseline bot: PTB + SDK, plain call, no typing, drafts or storage)",
                     f"{_x(k['bot_cpu_ms_per_turn'] / bare['bot_cpu_ms_per_turn'])} CPU"])
    return rows


def _concurrency_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    latency = r["model_latency_s"]
    for n, c in r["sizes"].items():
        waited = "yes" if c["any_model_call_waited_on_another"] else "no"
        rows.append([
            f"Concurrency {n} chat(s), {latency:g} s model: wall · turns/s",
            f"{_s(c['wall_s'])} · {c['turns_per_s']:.1f}/s",
            f"ideal {_s(latency)}; direct SDK {_s(c.get('direct_sdk_wall_s'))}",
            f"{_x(c['wall_over_ideal'])} ideal; {_x(c.get('wall_over_direct_sdk'))} direct",
        ])
        rows.append([
            f"… {n} chat(s): all model calls started · all replies delivered · a chat's model "
            "call waited on another?",
            f"{_s(c['all_model_calls_started_s'])} · {_s(c['all_replies_delivered_s'])} · "
            f"{waited} (peak {c['peak_model_calls_in_flight']} in flight)",
            f"direct SDK all started {_s(c.get('direct_sdk_all_started_s'))}", "",
        ])
        if int(n) >= 100 and "floor_s" in c:
            rows.append([
                f"… {n} chat(s): every model call started, after the last message · inbox → "
                "model call p50 / p99",
                f"{_s(c['all_model_calls_started_after_last_message_s'])} · "
                f"{_s(c['inbox_to_model_call_p50_s'])} / {_s(c['inbox_to_model_call_p99_s'])}",
                f"direct SDK all started {_s(c.get('direct_sdk_all_started_s'))}", ""])
            rows.append([
                f"… {n} chat(s): replies drained · drain rate (first → last reply)",
                f"{_s(c['wall_s'])} · {c['drain_replies_per_s']:.1f}/s",
                f"floor {_s(c['floor_s'])} ({n} ÷ 30/s + one model latency); Telegram ~30/s",
                f"{_x(c['wall_over_floor'])} floor"])
            rows.append([
                f"… {n} chat(s): bot CPU per turn · longest event-loop stall · stalls over 50 ms"
                " · garbage collection in the burst",
                f"{c['bot_cpu_ms_per_turn']:.1f} ms · {c['loop_lag_max_ms']:.0f} ms · "
                f"{c['loop_stalls_over_50ms']} · {c.get('gc_total_ms', 0):.0f} ms in "
                f"{c.get('gc_collections', 0):.0f} collection(s)", "", ""])
        lost, pins = sum(c["unanswered_per_repeat"]), len(c["pin_failures"])
        if lost or pins:
            rows.append([f"… {n} chat(s): replies never delivered · `/agent` pins that failed",
                         f"{lost} of {int(n) * c['repeats']} · {pins} of {n}", "should be 0 · 0",
                         "see notes"])
    return rows


def _target_rows(results: dict[str, Any]) -> list[list[str]]:
    """Issues 15's and 13's 'done when' figures, each against what this run measured (n/a: not
    measured)."""
    rows: list[list[str]] = []

    def row(what: str, value: str, target: str, met: bool | None) -> None:
        rows.append([f"Target: {what}", value, target,
                     "n/a" if met is None else ("met" if met else "NOT met")])

    big = max(((int(k), v) for k, v in results.get("concurrency", {}).get("sizes", {}).items()
               if "floor_s" in v), default=(0, None))
    n, c = big
    if c is not None and n >= 1000:
        started = c["all_model_calls_started_after_last_message_s"]
        row(f"{n} chats, every model call started after the last message", _s(started),
            "≤ 2 s", started <= 2.0)
        row(f"{n} chats, replies drained (÷ floor)", _x(c["wall_over_floor"]), "≤ 1.15×",
            c["wall_over_floor"] <= 1.15)
        row(f"{n} chats, longest event-loop stall", f"{c['loop_lag_max_ms']:.0f} ms", "≤ 50 ms",
            c["loop_lag_max_ms"] <= 50)
    o = results.get("overhead", {}).get("pinned")
    if o is not None:
        cpu = o["keel"].get("bot_cpu_ms_per_turn")
        bare = results["overhead"].get("baseline_bot", {}).get("bot_cpu_ms_per_turn")
        row("CPU per turn, router off",
            ("n/a" if cpu is None else f"{cpu:.1f} ms")
            + ("" if bare is None else f" (baseline bot, no keel: {bare:.1f} ms)"), "≤ 8 ms",
            None if cpu is None else cpu <= 8)
        row("keel's added latency per turn over the direct SDK, p50",
            _ms(o["keel_added_p50_s"]), "≤ 10 ms", o["keel_added_p50_s"] <= 0.010)
    st = results.get("startup")
    if st is not None:
        first = st["first_getupdates_s"]["cold"]
        row("start-up to the first getUpdates (cold)", _s(first), "≤ 0.6 s", first <= 0.6)
        rss = st["idle_rss_kb"]["keel"]
        row("idle RSS", _mb(rss), "≤ 70 MB", rss <= 70 * 1024)
    # issue 13's cache figures (60-turn chat, the median of the seeds)
    tok = results.get("tokens") or {}
    sixty = (tok.get("conversations") or {}).get("60", {}).get("median")
    if sixty and "agent_cache_hit_ratio" in sixty:
        row("60-turn chat, cache hit ratio of agent requests (issue 13)",
            f"{sixty['agent_cache_hit_ratio']:.1%}", "≥ 95%",
            sixty["agent_cache_hit_ratio"] >= 0.95)
        row("60-turn chat, cache hit ratio overall, router and compaction included (issue 13)",
            f"{sixty['keel_cache_hit_ratio']:.1%}", "≥ 92%", sixty["keel_cache_hit_ratio"] >= 0.92)
    runs = (tok.get("conversations") or {}).get("60", {}).get("runs") or []
    if runs and all("turns_completed" in r for r in runs):
        done = sum(r["turns_completed"] for r in runs)
        cap = runs[0]["run_budget_usd"]
        dearest = max(r["dearest_turn_usd"] for r in runs)
        row(f"60-turn chat, every turn completed under a {_usd(cap)} run cap (issue 13)",
            f"{done} of {60 * len(runs)} turns ({len(runs)} seeds), the dearest {_usd(dearest)}",
            "every turn", done == 60 * len(runs) and dearest <= cap)
    high = tok.get("high_minimum")
    if high and high.get("turns") == 60 and high.get("min_cacheable_tokens") == 4096:
        row("60-turn chat at a 4,096-token minimum, cache hit ratio overall (issue 13)",
            f"{high['keel_cache_hit_ratio']:.1%}", "≥ 90%", high["keel_cache_hit_ratio"] >= 0.90)
    caps = results.get("caps")
    if caps is not None:
        d = caps["daily"]
        for name, what in (("overall", "20 people at once, overall daily cap"),
                           ("per_user", "one person in 20 topics, daily cap per person")):
            keel = d[name]["keel"]
            held = (keel["billed_usd"] <= d["cap_usd"] + 1e-9
                    and abs(keel["billed_usd"] - keel["recorded_usd"]) < 0.005)
            row(f"{what}: billed ≤ the cap, and keel's record agrees to the cent (issue 13)",
                f"{_usd(keel['billed_usd'])} (recorded {_usd(keel['recorded_usd'])})",
                f"≤ {_usd(d['cap_usd'])}", held)
        a, h, g = caps["adversarial"], caps["hello"], caps["guard"]["keel"]
        row(f"{a['runs']} runs with hostile input, over their cap by the server's usage "
            "(issue 13)", str(a["over_cap"]), "0", a["over_cap"] == 0)
        row("\"hello\" completes under a $0.01 run cap (issue 13)",
            f"{h['status']}, {_usd(h['billed_usd'])}", "completed, ≤ $0.01",
            h["status"] == "completed" and h["billed_usd"] <= h["cap_usd"])
        row(f"a schedule whose guard finds nothing new, model requests over {g['fires']} fires "
            "(issue 13)", str(g["model_requests"]), "0", g["model_requests"] == 0)
    return rows


def _memory_rows(results: dict[str, Any]) -> list[list[str]]:
    m = results.get("memory") or {}
    rows = [["Memory (VmRSS) at idle", _mb(m.get("idle_rss_kb")),
             f"{_mb(m.get('baseline_idle_rss_kb'))} (baseline bot)",
             _x(m.get("idle_over_baseline"))]]
    if m.get("active_sessions"):
        rows.append([f"Memory with {m['active_sessions']} active sessions (all runs in flight) · "
                     "peak", f"{_mb(m.get('rss_kb_all_in_flight'))} · {_mb(m.get('peak_rss_kb'))}",
                     f"same process at idle, before any message: "
                     f"{_mb(m.get('live_idle_rss_kb'))}; before the burst (SDK loaded): "
                     f"{_mb(m.get('rss_kb_before_burst'))}",
                     f"+{m.get('per_session_kb', 0):.1f} kB per session"])
    return rows


def _startup_rows(r: dict[str, Any]) -> list[list[str]]:
    f = r["first_getupdates_s"]
    return [["Start-up: process start → first getUpdates, cold / warm",
             f"{_s(f['cold'])} / {_s(f['warm'])}", f"{_s(f['baseline'])} (baseline bot)",
             f"{_x(r['cold_over_baseline'])} / {_x(r['warm_over_baseline'])}"]]


def _token_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for turns, conv in r["conversations"].items():
        m = conv["median"]
        compactions = conv["runs"][0]["compactions"]
        rows += [
            [f"{turns}-turn conversation: cache hit ratio (compactions: {compactions})",
             f"{m['keel_cache_hit_ratio']:.1%}", f"{m['naive_cache_hit_ratio']:.1%} (naive)", ""],
            [f"{turns}-turn: billed input-token equivalents per turn",
             f"{m['keel_billed_input_equiv_per_turn']:,.0f}",
             f"{m['naive_billed_input_equiv_per_turn']:,.0f} (naive)",
             _x(m["billed_input_over_naive"])],
            [f"{turns}-turn: cost of the conversation (router and compaction included)",
             _usd(m["keel_cost_usd"]), f"{_usd(m['naive_cost_usd'])} (naive)",
             _x(m["cost_over_naive"])],
            [f"{turns}-turn: router share of cost · compaction share",
             f"{m['router_share_of_cost']:.1%} · {m['compaction_share_of_cost']:.1%}", "", ""],
        ]
        if "agent_cache_hit_ratio" in m:
            seeds = " / ".join(f"{v:.2%}" for v in conv.get("agent_cache_hit_ratio_per_seed", []))
            rows.append([f"{turns}-turn: cache hit ratio of the agent's own requests (median;"
                         " per seed)", f"{m['agent_cache_hit_ratio']:.1%}", seeds, ""])
    high = r.get("high_minimum")
    if high:
        seeds = " / ".join(f"{v:.2%}" for v in high["cache_hit_ratio_per_seed"])
        rows.append([f"{high['turns']}-turn at a {high['min_cacheable_tokens']:,}-token cache"
                     " minimum: cache hit ratio (median; per seed)",
                     f"{high['keel_cache_hit_ratio']:.1%}", seeds, ""])
    return rows


def _budget_rows(r: dict[str, Any]) -> list[list[str]]:
    h = r["headroom_fraction_runs_that_called_the_model"]
    spent = r["runs"] - r["halted_before_any_call"]
    return [
        [f"Budget: runs that finished over their cap ({r['runs']} randomized runs)",
         f"{r['over_cap']}", "must be 0", f"max cost/cap {r['max_cost_over_cap']:.2f}"],
        [f"Budget: headroom (cap − cost)/cap, the {spent} runs that called the model",
         f"p50 {h.get('p50', 0):.0%} (min {h.get('min', 0):.0%}, max {h.get('max', 0):.0%})",
         f"{r['halted_before_any_call']} runs halted before any call", ""],
    ]


def _caps_rows(r: dict[str, Any]) -> list[list[str]]:
    d, a, h, g = r["daily"], r["adversarial"], r["hello"], r["guard"]
    rows = []
    for name, what in (("overall", "20 people at once, a $0.05 overall daily cap"),
                       ("per_user", "one person in 20 topics, a $0.05 daily cap per person")):
        keel, base = d[name]["keel"], d[name]["baseline"]
        rows.append([f"Caps: {what} — billed by the server · recorded by keel",
                     f"{_usd(keel['billed_usd'])} · {_usd(keel['recorded_usd'])}",
                     f"{_usd(base['billed_usd'])} (checked before each call, not held)",
                     _x(base["billed_usd"] / d["cap_usd"]) + " the cap"])
    rows.append([f"Caps: {a['runs']} runs with hostile input, one token per byte — over their "
                 "cap by the server's usage", f"{a['over_cap']}",
                 f"must be 0; {a['model_calls']} calls, {a['refused_before_any_call']} runs "
                 "refused before any call", f"max billed/cap {a['max_billed_over_cap']:.2f}"])
    rows.append([f"Caps: 'hello' to the built-in assistant under a {_usd(h['cap_usd'])} run cap",
                 f"{h['status']}, billed {_usd(h['billed_usd'])}", "", ""])
    keel, base = g["keel"], g["baseline"]
    rows.append([f"Caps: a schedule whose guard finds nothing new, {keel['fires']} fires — model "
                 "requests · billed",
                 f"{keel['model_requests']} · {_usd(keel['billed_usd'])}",
                 f"{base['model_requests']} · {_usd(base['billed_usd'])} (no guard)", ""])
    return rows


def _workers_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    shapes = r.get("shapes", [])
    base = shapes[0] if shapes else None
    for shape in shapes:
        rows.append([f"Scale-out: {shape['messages']} messages, {shape['shape']}",
                     f"{_s(shape['wall_s'])} ({shape['messages_per_s']} msg/s)",
                     f"{base['shape']}: {_s(base['wall_s'])}" if base else "",
                     _x(shape.get("wall_vs_single_process"))])
    if "postgres" in r:
        rows.append(["Scale-out: PostgreSQL", r["postgres"], "", ""])
    return rows


SECTIONS = (("overhead", _overhead_rows), ("concurrency", _concurrency_rows),
            ("memory", None), ("startup", _startup_rows), ("tokens", _token_rows),
            ("budget", _budget_rows), ("caps", _caps_rows), ("workers", _workers_rows),
            ("targets", None))


def table(results: dict[str, Any]) -> str:
    mode = "quick (`make bench-quick`: fewer repeats, smaller sizes)" \
        if results["mode"] == "quick" else "full (`make bench`)"
    lines = [f"Machine: {describe(results['machine'])}. Run: {mode}, "
             f"{results['duration_s']:.0f} s.", "",
             "| Measure | keel | Baseline (same run) | keel ÷ baseline |",
             "| --- | --- | --- | --- |"]
    for name, rows in SECTIONS:
        if name == "memory":
            body = _memory_rows(results)
        elif name == "targets":
            body = _target_rows(results)
        else:
            missing = _missing(results, name)
            body = [[name, missing, "", ""]] if missing else rows(results[name])  # type: ignore[misc]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                  for row in body]
    lines += ["", *results.get("notes", [])]
    return "\n".join(lines) + "\n"
