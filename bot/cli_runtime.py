"""`keel agent`, `keel chat`, `keel trace`: commands over the agent runtime (no Telegram)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from agents.config import Settings
from agents.errors import DailyCapExceeded, KeelError
from agents.run import EXIT_CODES, RunResult, describe

if TYPE_CHECKING:
    from storage.escalations import Escalation

EXIT_USAGE = 2
DEFAULT_TRACE_LIMIT = 30
LOCAL_CHAT_ID = -1  # the terminal's conversation, beside Telegram's (which are never negative -1)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = sub.add_parser("agent", help="list agents or run one headless").add_subparsers(
        dest="agent_command", metavar="SUBCOMMAND", required=True)
    p = agent.add_parser("list", help="the agents keel knows (built-in and keel.toml)")
    p.set_defaults(handler=_agent_list)
    codes = ", ".join(f"{v} {k}" for k, v in sorted(EXIT_CODES.items(), key=lambda kv: kv[1]))
    p = agent.add_parser(
        "run", help="run an agent once on a task and print its answer",
        description="Run NAME on TASK headless, within its limits, and print the final output. "
        f"Exit status: {codes}, 2 bad usage or configuration.")
    p.add_argument("name", metavar="NAME", help="agent name (see `keel agent list`)")
    p.add_argument("task", metavar="TASK", help="what the agent should do")
    p.add_argument("--budget-usd", type=float, help="cap for this run in USD")
    p.add_argument("--max-steps", type=int, help="most tool calls")
    p.add_argument("--timeout", type=float, metavar="S", help="wall-clock deadline in seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object with the result")
    p.set_defaults(handler=_agent_run)

    p = sub.add_parser("chat", help="talk to an agent in the terminal (same sessions as the bot)",
                       description="A terminal conversation with AGENT (default: the default "
                       "agent), with history, caching, compaction and limits as in Telegram. "
                       "Type /new for a fresh session, /quit or Ctrl-D to leave.")
    p.add_argument("agent", nargs="?", metavar="AGENT")
    p.set_defaults(handler=_chat)

    trace = sub.add_parser("trace", help="read run traces").add_subparsers(
        dest="trace_command", metavar="SUBCOMMAND", required=True)
    p = trace.add_parser("list", help="recent runs' traces, newest first",
                         description="Traces newest first: when each run started (in "
                         "KEEL_TIMEZONE), its trace and run ids (any unique prefix of either "
                         "works in `trace show`, `trace replay` and /trace), agent, status, cost "
                         "and tool calls.")
    p.add_argument("--date", metavar="YYYY-MM-DD", help="only the traces of this day (UTC)")
    p.add_argument("--limit", type=int, default=DEFAULT_TRACE_LIMIT, metavar="N",
                   help=f"at most N traces (default {DEFAULT_TRACE_LIMIT})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_trace_list)
    p = trace.add_parser("show", help="a run's summary, or the exact JSON of one model request")
    p.add_argument("id", metavar="ID", help="trace id or run id (or a unique prefix of either)")
    p.add_argument("--request", type=int, metavar="N", help="print the N-th model request (1-based)")
    p.add_argument("--json", action="store_true", help="print the raw events")
    p.set_defaults(handler=_trace_show)
    p = trace.add_parser(
        "replay", help="re-run a traced run offline against its recorded responses",
        description="Drive the executor with the recorded model responses and tool results (no "
        "model or tool is called, no API key is needed) and compare every request it builds, "
        "and every status and output, with the recorded ones. Escalated, resumed, "
        "budget-continued, cancelled, timed-out, interrupted and plan-then-execute runs replay "
        "part by part as they happened. Exit 0 when the replay is identical, 1 when it is not "
        "(the first difference is printed with its JSON path).")
    p.add_argument("id", metavar="ID", help="trace id or run id (or a unique prefix of either)")
    p.set_defaults(handler=_trace_replay)


async def _open_runtime(settings: Settings) -> Any:
    from agents.runtime import Runtime

    return await Runtime.open(settings)


# ------------------------------------------------------------------ keel agent


def _agent_list(args: argparse.Namespace, settings: Settings) -> int:
    from agents.config import load_keel_file
    from agents.runtime import build_agents
    from agents.tools import builtin_registry, load_tool_modules

    keel_file = load_keel_file(settings.config_path)
    registry = builtin_registry()
    load_tool_modules(registry, keel_file.tool_modules)
    for spec in build_agents(settings, keel_file, registry).values():
        model = spec.model or settings.executor_model
        print(f"{spec.name:<12} {spec.description}")
        print(f"{'':<12} model {model}, pattern {spec.pattern}, tools: {', '.join(spec.tools) or '-'}"
              f"; budget ${spec.limits.budget_usd:.2f}, {spec.limits.max_steps} steps, "
              f"{spec.limits.timeout_s:g} s")
    return 0


def _agent_run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_agent_run_async(args, settings))


async def _agent_run_async(args: argparse.Namespace, settings: Settings) -> int:
    from agents.runtime import RunRequest

    runtime = await _open_runtime(settings)
    asked: list[Escalation] = []
    try:
        spec = runtime.agent(args.name)
        limits = spec.limits.overridden(budget_usd=args.budget_usd, max_steps=args.max_steps,
                                        timeout_s=args.timeout)
        task = {"role": "user", "content": [{"type": "text", "text": args.task}]}
        try:
            result = await runtime.run(RunRequest(agent=spec.name, messages=[task], new_from=0,
                                                  kind="cli", limits=limits),
                                       on_commit=_park_commit(runtime, settings, asked))
        except DailyCapExceeded as exc:
            print(f"keel: {exc}", file=sys.stderr)
            return EXIT_CODES["budget_exceeded"]
    except KeelError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        await runtime.close()
    _print_result(result, as_json=args.json, escalation=asked[0] if asked else None)
    if asked and not args.json:
        from bot.cli_escalation import print_question

        print_question(asked[0], file=sys.stderr,
                       how=f"answer with: keel escalation answer {asked[0].id} CHOICE")
    return result.exit_code


def _park_commit(runtime: Any, settings: Settings, asked: list[Escalation]) -> Any:
    """A run that parks on a question stores it with its waiting_human status, in one
    transaction, like a run from Telegram: `keel escalation` lists and answers it, and it
    expires like any other."""
    from agents.escalation_flow import EscalationFlow

    flow = EscalationFlow(runtime, ttl=timedelta(seconds=settings.escalation_ttl_s))

    async def commit(conn: Any, result: RunResult) -> None:
        if result.status == "waiting_human" and result.escalation is not None:
            asked.append(await flow.park_in(conn, result, chat_id=None, thread_id=None))

    return commit


def _print_result(result: RunResult, *, as_json: bool, escalation: Escalation | None = None) -> None:
    if as_json:
        body = result.as_json()
        if escalation is not None:
            body["escalation"] = {"id": escalation.id, "kind": escalation.kind,
                                  "question": escalation.reason, "context": escalation.context,
                                  "choices": list(escalation.options),
                                  "expires_at": escalation.expires_at}
        print(json.dumps(body, ensure_ascii=False))
        return
    if result.output:
        print(result.output)
    if result.status != "completed":
        print(f"\n[{result.status}] {describe(result.status)}"
              + (f": {result.detail}" if result.detail else ""), file=sys.stderr)
    print(f"[run {result.run_id} · trace {result.trace_id} · ${result.cost_usd:.4f} · "
          f"{result.steps} tool call(s) · cache hit {result.usage.cache_hit_ratio:.0%}]",
          file=sys.stderr)


# ------------------------------------------------------------------ keel chat


def _chat(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_chat_async(args, settings))


async def _chat_async(args: argparse.Namespace, settings: Settings) -> int:
    from agents.sessions import Sessions

    runtime = await _open_runtime(settings)
    try:
        agent = runtime.agent(args.agent or runtime.default_agent).name
        sessions = Sessions(runtime)
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"keel chat with {agent!r}. /new starts a fresh session, /quit leaves.")
        loop = asyncio.get_running_loop()
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            if text == "/new":
                conversation = await runtime.conversations.get_or_create(LOCAL_CHAT_ID, None)
                await runtime.conversations.archive_sessions(conversation.id)
                print("(fresh session)")
                continue
            asked: list[Escalation] = []
            try:
                turn = await sessions.turn(chat_id=LOCAL_CHAT_ID, thread_id=None, agent=agent,
                                           content=[{"type": "text", "text": text}], user_id=None,
                                           kind="cli", compact=True,
                                           on_commit=_park_commit(runtime, settings, asked))
            except KeelError as exc:
                print(f"keel: {exc}", file=sys.stderr)
                continue
            result = turn.result
            while asked:  # the question, then the next line is its answer; the run goes on
                result = await _ask_in_chat(runtime, settings, agent, result, asked, interactive)
            if result.output or result.status != "waiting_human":
                print(f"{agent}> {result.output or ''}".rstrip())
            stats = await runtime.conversations.session_stats(turn.session_id)
            print(f"  [{result.status} · ${result.cost_usd:.4f} · in {result.usage.input_tokens} "
                  f"· cache read {result.usage.cache_read_tokens} · write "
                  f"{result.usage.cache_write_tokens} · session cache hit "
                  f"{stats.cache_hit_ratio:.0%} · trace {result.trace_id}]", file=sys.stderr)
    except KeelError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        await runtime.close()
    return 0


async def _ask_in_chat(runtime: Any, settings: Settings, agent: str, result: RunResult,
                       asked: list[Escalation], interactive: bool) -> RunResult:
    """Show the parked run's question with its choices, take the next input line as the answer
    (a choice's text or number, or free text) and resume the run. ``asked`` gets the next
    question if the run parks again; an empty line or /quit leaves the question pending."""
    from agents.escalation_flow import EscalationFlow
    from bot.cli_escalation import answer_and_resume, pick, print_question

    e = asked.pop()
    if result.output:
        print(f"{agent}> {result.output}".rstrip())
    print_question(e, how="type a choice's number or text" + (
        ", or your own answer" if e.kind == "question" else ""))
    flow = EscalationFlow(runtime, ttl=timedelta(seconds=settings.escalation_ttl_s))
    loop = asyncio.get_running_loop()
    while True:
        if interactive:
            print("answer> ", end="", flush=True)
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line in ("/quit", "/exit"):
            print(f"(left pending: `keel escalation answer {e.id} CHOICE` answers it later)")
            return result
        choice = pick(e, line)
        if choice is not None:
            break
        print("  please type " + " or ".join(repr(o) for o in e.options) + " (or its number)")
    outcome = await answer_and_resume(flow, e, choice, user_id=settings.owner_id or 0)
    if isinstance(outcome, str):
        print(f"keel: {outcome}", file=sys.stderr)
        return result
    if outcome.status == "waiting_human":
        latest = await flow.repo.latest_of_run(outcome.run_id)
        if latest is not None and latest.stage == "pending":
            asked.append(latest)
    return outcome


# ------------------------------------------------------------------ keel trace


def _trace_store(settings: Settings) -> Any:
    from storage.traces import TraceStore

    return TraceStore(settings.traces_dir)


class TraceNotFound(LookupError):
    """No trace, or more than one, answers to an id: the message says which."""


def resolve_trace(settings: Settings, wanted: str) -> str:
    """The one trace id that ``wanted`` names: a trace id or a run id, or a unique prefix of
    either (the ids `keel trace list`, /runs, replies and notices print)."""
    wanted = wanted.strip()
    store = _trace_store(settings)
    if not wanted:
        raise TraceNotFound("give a trace or run id (see `keel trace list`)")
    exact = store.find(wanted)
    if exact is not None and exact.trace_id == wanted:
        return wanted
    found = {t.trace_id for t in store.list() if t.trace_id.startswith(wanted)}
    found |= set(asyncio.run(_traces_of_runs(settings, wanted)))
    if len(found) == 1:
        return found.pop()
    if found:
        raise TraceNotFound(f"{len(found)} runs match {wanted!r}; give more of the id (see "
                            "`keel trace list`)")
    raise TraceNotFound(f"no trace or run {wanted!r} under {settings.data_dir} (see `keel trace "
                        "list`)")


async def _traces_of_runs(settings: Settings, prefix: str) -> list[str]:
    """Trace ids of the stored runs whose run or trace id starts with ``prefix``."""
    from storage.connect import database_for
    from storage.runs import RunRepository

    db = database_for(settings)
    if db.dialect == "sqlite" and not settings.db_path.exists():
        return []
    await db.connect()
    try:
        runs = await RunRepository(db).visible(user_id=None, chat_id=None, prefix=prefix, limit=3)
    finally:
        await db.close()
    return [r.trace_id for r in runs]


def _local(iso: str | None, settings: Settings) -> str:
    if not iso:
        return "?"
    from datetime import datetime

    return datetime.fromisoformat(iso).astimezone(settings.tz).strftime("%Y-%m-%d %H:%M:%S")


def _trace_list(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import date

    from agents.trace_view import summarise

    if args.date is not None:
        try:
            date.fromisoformat(args.date)
        except ValueError:
            print(f"keel: --date {args.date!r} is not a date; write it as YYYY-MM-DD, e.g. "
                  f"{date.today().isoformat()}", file=sys.stderr)
            return EXIT_USAGE
    if args.limit < 1:
        print("keel: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    store = _trace_store(settings)
    rows = []
    # newest files first (days, then last write); only the ones shown are read
    for item in list(reversed(store.list(args.date)))[: args.limit]:
        s = summarise(store.read(item.trace_id))
        rows.append({"trace_id": item.trace_id, "run_id": s.run_id, "day": item.day,
                     "started": s.started, "agent": s.agent, "status": s.status,
                     "cost_usd": round(s.cost_usd, 6), "steps": s.steps,
                     "model_calls": s.model_calls})
    rows.sort(key=lambda r: r["started"] or "", reverse=True)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("no traces" + (f" on {args.date}" if args.date else ""))
        return 0
    header = (f"STARTED ({settings.timezone})", "TRACE", "RUN", "AGENT", "STATUS", "COST",
              "TOOLS")
    table = [header] + [(_local(r["started"], settings), r["trace_id"][:8],
                         (r["run_id"] or "?")[:8], r["agent"] or "?", r["status"],
                         f"${r['cost_usd']:.4f}", str(r["steps"])) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _trace_show(args: argparse.Namespace, settings: Settings) -> int:
    from agents.trace_view import reconstruct_requests, render_summary, summarise

    store = _trace_store(settings)
    try:
        trace_id = resolve_trace(settings, args.id)
        events = store.read(trace_id)
    except (TraceNotFound, FileNotFoundError) as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for e in events:
            print(json.dumps(e, ensure_ascii=False))
        return 0
    if args.request is not None:
        bodies = reconstruct_requests(events)
        if not 1 <= args.request <= len(bodies):
            print(f"keel: trace {args.id!r} has {len(bodies)} model request(s); "
                  f"ask for 1..{len(bodies)}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(bodies[args.request - 1], ensure_ascii=False, indent=2))
        return 0
    print(render_summary(summarise(events)))
    return 0


def _trace_replay(args: argparse.Namespace, settings: Settings) -> int:
    from agents.config import load_keel_file, price_table
    from agents.replay import ReplayError, replay

    try:
        trace_id = resolve_trace(settings, args.id)
        events = _trace_store(settings).read(trace_id)
    except (TraceNotFound, FileNotFoundError) as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return 1
    try:
        report = asyncio.run(replay(events, prices=price_table(load_keel_file(settings.config_path))))
    except ReplayError as exc:
        print(f"keel: cannot replay {args.id!r}: {exc}", file=sys.stderr)
        return 1
    print(report.render())
    return 0 if report.identical else 1
