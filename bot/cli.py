"""The `keel` command line: a thin shell over the layers.

Exit statuses: 0 success; 1 failure; 2 bad usage or configuration. `keel agent run` adds one per
run status (see ``agents.run.EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

from agents.config import Settings, load_settings
from agents.config_check import lenient_settings, load_configuration, require_data_dir
from agents.errors import ConfigError, MissingSettingError
from agents.logs import configure_logging
from bot import cli_db_copy, import_telegram, preload_tls
from storage.db import DatabaseUnavailable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keel",
        description="keel: a Telegram-first agent bot with bounded cost, bounded time, "
        "replayable runs and graceful failure. Configured by environment variables (and .env); "
        "agents and schedules in an optional keel.toml (KEEL_CONFIG).",
        epilog="Start with `keel doctor` to see what is missing. Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"keel {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the Telegram bot (long polling)",
                       description="Run the bot: long polling, SQLite under KEEL_DATA_DIR, the "
                       "scheduler in the same process. Stops cleanly on Ctrl-C or SIGTERM.")
    p.set_defaults(handler=_cmd_run, role="all")

    p = sub.add_parser("serve", help="receive updates for workers (several processes, PostgreSQL)",
                       description="The ingress of a scaled-out keel: receive updates (long "
                       "polling, or the webhook when KEEL_WEBHOOK_URL is set), commit each to the "
                       "inbox and give it to the workers as a job. Needs KEEL_DATABASE_URL="
                       "postgresql://…; run one, with any number of `keel worker`.")
    p.set_defaults(handler=_cmd_run, role="ingress", concurrency=0)
    p = sub.add_parser("worker", help="answer updates from `keel serve` (PostgreSQL)",
                       description="A worker of a scaled-out keel: runs the jobs `keel serve` "
                       "defers through the same handlers as `keel run`, one conversation's "
                       "messages in order, many conversations at once; one worker is elected to "
                       "run the schedules. A killed worker's jobs are taken over by the others. "
                       "Needs KEEL_DATABASE_URL=postgresql://….")
    p.add_argument("--concurrency", type=int, default=20, metavar="N",
                   help="jobs this worker runs at once (default 20)")
    p.set_defaults(handler=_cmd_run, role="worker")

    p = sub.add_parser("doctor", help="check the configuration and say how to fix it",
                       description="Check tokens, keys, the data directory, the time zone, "
                       "keel.toml, model prices and the database (reached, schema up to date; on "
                       "PostgreSQL the workers' job tables). Exit 1 when something must be fixed.")
    p.add_argument("--online", action="store_true",
                   help="also call Telegram getMe and getWebhookInfo, and Anthropic's model list")
    p.set_defaults(handler=_cmd_doctor)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", metavar="SUBCOMMAND", required=True)
    p = db.add_parser("migrate", help="apply pending schema migrations (safe to repeat)",
                      description="Apply pending schema migrations; on PostgreSQL also create "
                      "the workers' job tables (procrastinate's). Safe to repeat, and to run while "
                      "other processes start: run it once before starting a new version.")
    p.set_defaults(handler=_cmd_db_migrate)
    p = db.add_parser("stats", help="rows per table, database and WAL size, trace files",
                      description="What keel stores: row counts per table, the database file and "
                      "its WAL, and the trace directory's files and size.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_db_stats)
    p = db.add_parser("prune", help="delete finished rows and traces past their retention now",
                      description="Run one retention pass now (the bot runs one every hour): "
                      "finished rows older than KEEL_RETENTION_DAYS, traces older than "
                      "KEEL_TRACE_RETENTION_DAYS (earlier days gzipped). Safe while the bot runs.")
    p.set_defaults(handler=_cmd_db_prune)
    cli_db_copy.register(db)

    _register_runtime_commands(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keel")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _register_runtime_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands over the agent runtime (agents, chat, traces, schedules)."""
    import bot.cli_index
    import bot.cli_memory
    from bot import (
        cli_cost,
        cli_escalation,
        cli_eval,
        cli_mcp,
        cli_runtime,
        cli_schedule,
        cli_stats,
    )

    cli_runtime.register(sub)
    cli_escalation.register(sub)
    cli_schedule.register(sub)
    cli_cost.register(sub)
    cli_stats.register(sub)
    cli_eval.register(sub)
    bot.cli_memory.register(sub)
    bot.cli_index.register(sub)
    cli_mcp.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "doctor":  # the whole checklist, even when some variables are wrong
        settings, env_problems = lenient_settings()
        configure_logging(settings.log_level, settings.secrets())
        from bot.doctor import run_doctor

        return run_doctor(settings, online=args.online, env_problems=env_problems)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.secrets())
    handler: Handler = args.handler
    try:
        if _writes_data(args):
            require_data_dir(settings.data_dir)
        return handler(args, settings)
    except ConfigError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailable as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `keel ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _writes_data(args: argparse.Namespace) -> bool:
    """Commands that open the database or read or write traces under KEEL_DATA_DIR: a data
    directory that is a file or unwritable is one line for each of them, never a traceback."""
    if args.command in {"run", "chat", "db", "trace", "escalation", "cost", "stats",
                        "memory", "index"}:
        return True
    return args.command == "agent" and getattr(args, "agent_command", None) == "run"


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    missing = []
    # the ingress (`keel serve`) only stores and defers updates: it never calls the model
    needs = (settings.require_telegram_token,) if args.role == "ingress" else (
        settings.require_telegram_token, settings.require_anthropic_key)
    for require in needs:
        try:
            require()
        except MissingSettingError as exc:
            missing.append(str(exc))
    if missing:  # every missing variable at once, not one per attempt
        raise ConfigError("\n".join(missing))
    preload_tls()
    import_telegram()
    from telegram.error import Conflict, InvalidToken, TelegramError

    from bot.app import run_bot

    if args.role != "all":  # workers need PostgreSQL (and psycopg); `keel run` alone does not
        from bot.workers import require_postgres, run_role

        require_postgres(settings)
    # The check `keel doctor` makes: a bad agent, tool, price or schedule is a configuration
    # error before anything starts, with every problem listed.
    load_configuration(settings)

    # Each failure is one line that never quotes the exception: PTB's own messages repeat the
    # token ("The token `…` was rejected"), and a traceback would too. PTB also logs a start-up
    # failure with its traceback before raising it; the line below replaces that record.
    def not_a_startup_failure(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Network Retry Loop (Bootstrap")

    logging.getLogger("telegram.ext").addFilter(not_a_startup_failure)
    try:
        if args.role == "all":
            return run_bot(settings)
        return run_role(settings, args.role, concurrency=args.concurrency)
    except InvalidToken:
        print("keel: Telegram rejected the bot token in TELEGRAM_BOT_TOKEN; copy it again from "
              "@BotFather (/mybots → API Token).", file=sys.stderr)
        return EXIT_USAGE
    except Conflict:
        print("keel: another program is already receiving updates for this bot token (a second "
              "`keel run`, or a webhook); stop it, then start keel again.", file=sys.stderr)
        return EXIT_FAILED
    except TelegramError as exc:  # NetworkError, TimedOut: nothing answered
        print(f"keel: cannot reach Telegram at {settings.telegram_api_base_url} "
              f"({type(exc).__name__}); check the network or TELEGRAM_API_BASE_URL.",
              file=sys.stderr)
        return EXIT_FAILED


def _cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from bot.doctor import run_doctor

    return run_doctor(settings, online=args.online)  # main() calls it with env problems


def _cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from storage.connect import database_for
    from storage.migrations import migrate

    db = database_for(settings)

    async def go() -> tuple[list[str], str]:
        await db.connect()
        try:
            applied = await migrate(db)
            if db.dialect != "postgresql":
                return applied, ""
            from bot.workers import ensure_job_schema

            had = "procrastinate_jobs" in await db.table_names()
            await ensure_job_schema(str(settings.database_target))  # keel serve / keel worker's
            return applied, f"job tables (procrastinate): {'present' if had else 'created'}"
        finally:
            await db.close()

    applied, jobs = asyncio.run(go())
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    if jobs:
        print(jobs)
    print(f"database: {settings.db_path.resolve() if db.dialect == 'sqlite' else db}")
    return EXIT_OK


def _cmd_db_stats(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from storage.connect import database_for
    from storage.stats import storage_stats

    db = database_for(settings)
    if db.dialect == "sqlite" and not settings.db_path.exists():
        print(f"keel: no database at {settings.db_path} yet (`keel run` or `keel db migrate` "
              "creates it)", file=sys.stderr)
        return EXIT_FAILED

    async def go() -> int:
        await db.connect()
        try:
            stats = await storage_stats(db, settings.db_path.resolve(), settings.traces_dir)
        finally:
            await db.close()
        print(json.dumps(stats.as_json()) if args.json else stats.render())
        return EXIT_OK

    return asyncio.run(go())


def _cmd_db_prune(args: argparse.Namespace, settings: Settings) -> int:
    from storage.connect import open_database
    from storage.retention import housekeep
    from storage.traces import TraceStore

    async def go() -> int:
        db = await open_database(settings)
        try:
            report = await housekeep(db, TraceStore(settings.traces_dir),
                                     days=settings.retention_days,
                                     trace_days=settings.trace_retention_days,
                                     # the bot may be writing a trace a run began yesterday
                                     trace_min_idle_s=settings.run_timeout_s)
        finally:
            await db.close()
        rows = ", ".join(f"{t} {n}" for t, n in report.rows.deleted.items() if n) or "none"
        print(f"deleted rows older than {settings.retention_days} day(s): {rows}")
        print(f"traces: {report.traces_gzipped} gzipped, {report.traces_deleted} deleted")
        return EXIT_OK

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
