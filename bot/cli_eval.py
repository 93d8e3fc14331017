"""`keel eval`: run agents' golden tasks (offline by default), record one from a trace, or
compare two models over the same golden set."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import date
from pathlib import Path

from agents.config import Settings, load_keel_file
from agents.errors import KeelError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_LIVE_BUDGET_USD = 1.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval", help="run agents' golden tasks (offline, deterministic) and say what failed",
        description="Run the golden tasks under evals/<agent>/*.toml (evals_dir in keel.toml) "
        "through the real runtime, apart from production's data. Offline (the default) the model "
        "answers from each task's scripted responses and tools from its fixtures: no network, no "
        "API key, the same output every time. Exit 0 when every task passes, 1 when one fails, "
        "2 on bad usage or configuration.",
        epilog="Examples: keel eval · keel eval support --json · keel eval --record 3f2a9c1e · "
        "keel eval --from-ratings --rating down --since 2026-11-01 · "
        "keel eval --live --budget-usd 0.50 · keel eval --compare claude-haiku-4-5 "
        "claude-sonnet-4-6 --budget-usd 1")
    p.add_argument("agent", nargs="?", metavar="AGENT", help="only this agent's golden set")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--dir", type=Path, metavar="DIR",
                   help="golden sets folder (default: evals_dir in keel.toml, else ./evals)")
    p.add_argument("--record", metavar="TRACE_ID",
                   help="write the traced run as a golden task of its agent")
    p.add_argument("--name", help="with --record: the task's file name (default recorded-<id>)")
    p.add_argument("--force", action="store_true",
                   help="with --record or --from-ratings: replace an existing golden task")
    p.add_argument("--from-ratings", action="store_true",
                   help="write the runs people rated 👍/👎 in Telegram as golden-task candidates "
                   "(rated-<up|down>-<date>-<trace>.toml, to review)")
    p.add_argument("--rating", choices=("up", "down", "any"), default="any",
                   help="with --from-ratings: only runs rated so (default any)")
    p.add_argument("--since", metavar="DATE",
                   help="with --from-ratings: only ratings given on or after DATE (YYYY-MM-DD, UTC)")
    p.add_argument("--agent", dest="rated_agent", metavar="NAME",
                   help="with --from-ratings: only this agent's runs")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="with --from-ratings: write under DIR/<agent>/ (default: the golden sets "
                   "folder)")
    p.add_argument("--update-snapshots", action="store_true",
                   help="write each task's snapshot file (expect.snapshot) from this run's answer")
    p.add_argument("--live", action="store_true",
                   help="call the real model API (needs ANTHROPIC_API_KEY; spends money)")
    p.add_argument("--budget-usd", type=float, metavar="USD",
                   help=f"live: the most the whole eval may spend, reserved call by call "
                   f"(default {DEFAULT_LIVE_BUDGET_USD:g}); --compare splits it between models")
    p.add_argument("--model", metavar="MODEL", help="run every agent on this model")
    p.add_argument("--compare", nargs=2, metavar=("MODEL_A", "MODEL_B"),
                   help="run the golden set live on both models and compare them side by side "
                   "(report saved as Markdown and JSON)")
    p.add_argument("--report-dir", type=Path, metavar="DIR",
                   help="with --compare: where the report goes (default <evals>/reports)")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    # one INFO line per run is for the bot's console; here the table says it all
    logging.getLogger("agents.runtime").setLevel(logging.WARNING)
    try:
        if args.from_ratings:
            return asyncio.run(_from_ratings(args, settings))
        if args.record:
            return _record(args, settings)
        if args.budget_usd is not None and args.budget_usd <= 0:
            print("keel: --budget-usd must be positive", file=sys.stderr)
            return EXIT_USAGE
        if args.compare:
            return asyncio.run(_compare(args, settings))
        return asyncio.run(_run(args, settings))
    except KeelError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _root(args: argparse.Namespace, settings: Settings) -> Path:
    from agents.evals import evals_dir

    if args.dir is not None:
        return Path(args.dir)
    return evals_dir(load_keel_file(settings.config_path), settings.config_path)


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from agents.evals import as_json, discover, render, run_tasks

    tasks = discover(_root(args, settings), args.agent)
    budget = (args.budget_usd or DEFAULT_LIVE_BUDGET_USD) if args.live else None
    results = await run_tasks(settings, tasks, live=args.live, budget_usd=budget, model=args.model,
                              update_snapshots=args.update_snapshots)
    mode = "live" if args.live else "offline"
    if args.json:
        print(json.dumps(as_json(results, mode=mode, model=args.model), ensure_ascii=False))
    else:
        print(render(results, mode=mode, model=args.model))
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAILED


async def _compare(args: argparse.Namespace, settings: Settings) -> int:
    from agents.evals import Comparison, discover, run_tasks

    model_a, model_b = args.compare
    root = _root(args, settings)
    tasks = discover(root, args.agent)
    half = (args.budget_usd or DEFAULT_LIVE_BUDGET_USD) / 2
    a = await run_tasks(settings, tasks, live=True, budget_usd=half, model=model_a)
    b = await run_tasks(settings, tasks, live=True, budget_usd=half, model=model_b)
    comparison = Comparison(model_a, model_b, a, b)
    folder = args.report_dir or root / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"compare-{_safe(model_a)}-vs-{_safe(model_b)}"
    stem.with_suffix(".md").write_text(comparison.markdown(), "utf-8")
    stem.with_suffix(".json").write_text(
        json.dumps(comparison.as_json(), ensure_ascii=False, indent=2) + "\n", "utf-8")
    if args.json:
        print(json.dumps(comparison.as_json(), ensure_ascii=False))
    else:
        print(comparison.render())
        print(f"\nreport: {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")
    return EXIT_OK


def _safe(model: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)


async def _from_ratings(args: argparse.Namespace, settings: Settings) -> int:
    from agents.evals.candidates import LABELS, export
    from storage.connect import open_database
    from storage.ratings import RatingRepository
    from storage.traces import TraceStore

    clash = [flag for flag, on in (("--record", args.record), ("--compare", args.compare),
                                   ("--live", args.live), ("--update-snapshots",
                                                           args.update_snapshots)) if on]
    if clash:
        print(f"keel: --from-ratings does not go with {clash[0]}", file=sys.stderr)
        return EXIT_USAGE
    if args.agent and args.rated_agent and args.agent != args.rated_agent:
        print(f"keel: two agents given ({args.agent!r} and --agent {args.rated_agent!r})",
              file=sys.stderr)
        return EXIT_USAGE
    since = None
    if args.since is not None:
        try:
            since = date.fromisoformat(args.since).isoformat()
        except ValueError:
            print(f"keel: --since {args.since!r} is not a date; give YYYY-MM-DD", file=sys.stderr)
            return EXIT_USAGE
    root = args.out if args.out is not None else _root(args, settings)
    rated = []
    if settings.database_url is not None or settings.db_path.exists():  # none yet: none made
        db = await open_database(settings)
        try:
            rated = await RatingRepository(db).rated(
                rating=None if args.rating == "any" else args.rating, since=since,
                agent=args.rated_agent or args.agent)
        finally:
            await db.close()
    done = export(rated, TraceStore(settings.traces_dir).read, Path(root), force=args.force)
    if args.json:
        print(json.dumps(done.as_json(), ensure_ascii=False))
    elif not rated:
        print("No rated runs match (ratings are off unless `ratings = true` in keel.toml or "
              "KEEL_RATINGS=true).")
    else:
        for w in done.written:
            print(f"wrote {w['path']} ({LABELS[w['rating']]} by user {w['user_id']}, "
                  f"{w['rated_at'][:16].replace('T', ' ')})")
        for s in done.skipped:
            print(f"skipped trace {s['trace_id'][:8]}: {s['path']} exists (--force replaces it)")
        for f in done.failed:
            print(f"failed trace {f['trace_id'][:8]} (run {f['run_id'][:8]}): {f['reason']}")
        print(f"{len(done.written)} candidate(s) written, {len(done.skipped)} already there, "
              f"{len(done.failed)} failed. Review them, then: keel eval"
              + (f" --dir {root}" if args.out is not None else ""))
    return EXIT_FAILED if done.failed else EXIT_OK


def _record(args: argparse.Namespace, settings: Settings) -> int:
    from agents.evals import record_task, to_toml
    from storage.traces import TraceStore

    try:
        events = TraceStore(settings.traces_dir).read(args.record)
    except FileNotFoundError:
        print(f"keel: no trace {args.record!r} under {settings.traces_dir} (see `keel trace "
              "list`)", file=sys.stderr)
        return EXIT_FAILED
    agent, task = record_task(events)
    trace_id = str(events[0].get("trace_id") or args.record)
    name = args.name or f"recorded-{trace_id[:8]}"
    if not name.replace("-", "").replace("_", "").isalnum():
        print(f"keel: --name {name!r} must be letters, digits, '-' or '_'", file=sys.stderr)
        return EXIT_USAGE
    path = _root(args, settings) / agent / f"{name}.toml"
    if path.exists() and not args.force:
        print(f"keel: {path} exists; pass --force to replace it, or --name for another",
              file=sys.stderr)
        return EXIT_FAILED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(task), "utf-8")
    print(f"recorded {path} ({len(task['responses'])} model response(s), "
          f"{len(task.get('fixtures', []))} tool fixture(s)); check it with: keel eval {agent}")
    return EXIT_OK
