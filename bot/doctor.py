"""`keel doctor`: check the configuration and say what is missing and how to fix it."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from agents.affordability import budget_warnings
from agents.config import Settings
from agents.config_check import Problem, check_configuration, data_dir_problem

Level = Literal["ok", "warn", "error"]
_TOKEN_SHAPE = re.compile(r"^\d{5,}:[A-Za-z0-9_-]{30,}$")


@dataclass(frozen=True)
class Finding:
    level: Level
    what: str
    detail: str = ""


def check(settings: Settings, env_problems: list[Problem] | None = None) -> list[Finding]:
    """The whole checklist. ``env_problems``: environment variables that could not be read
    (they fell back to their defaults for the rest of the checks)."""
    out: list[Finding] = [Finding("error", p.what, p.fix) for p in env_problems or []]
    token = settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else ""
    if not token:
        out.append(Finding("error", "TELEGRAM_BOT_TOKEN is not set",
                           "Create a bot with @BotFather (/newbot) and set TELEGRAM_BOT_TOKEN in .env."))
    elif not _TOKEN_SHAPE.match(token):
        out.append(Finding("error", "TELEGRAM_BOT_TOKEN is not a bot token",
                           "Expected '<digits>:<35 letters>' as @BotFather prints it; copy it "
                           "again from @BotFather (/mybots → API Token)."))
    else:
        out.append(Finding("ok", "TELEGRAM_BOT_TOKEN is set"))
    key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else ""
    if not key:
        out.append(Finding("error", "ANTHROPIC_API_KEY is not set",
                           "Create a key at console.anthropic.com and set ANTHROPIC_API_KEY in .env."))
    else:
        out.append(Finding("ok", "ANTHROPIC_API_KEY is set"))
    if settings.telegram_api_base_url != "https://api.telegram.org/bot":
        out.append(Finding("ok", f"Telegram API at {settings.telegram_api_base_url}"))
    if settings.anthropic_base_url:
        out.append(Finding("ok", f"Anthropic API at {settings.anthropic_base_url}"))

    out.append(_check_data_dir(settings))
    if not any(p.what.startswith("KEEL_TIMEZONE") for p in env_problems or []):
        out.append(Finding("ok", f"time zone {settings.timezone}"))
    if settings.owner_id is None:
        out.append(Finding("warn", "no owner: the bot will answer nobody",
                           "Message the bot once in a private chat; it replies with your user id. "
                           "Then set KEEL_OWNER_ID=<that id> and add people from Telegram with "
                           "/allow ID."))
    else:
        how = "" if "KEEL_OWNER_ID" in os.environ else " (the first of KEEL_ALLOWED_USER_IDS)"
        out.append(Finding("ok", f"owner: {settings.owner_id}{how}"))
    if settings.allowed_user_ids:
        ids = ", ".join(str(i) for i in sorted(settings.allowed_user_ids))
        out.append(Finding("ok", f"allowed users at first start: {ids} (then /allow, /deny)"))
    elif settings.owner_id is not None:
        out.append(Finding("ok", "no other allowed users yet: the owner adds them with /allow ID"))
    out.extend(_check_configuration(settings))
    return out


def _check_configuration(settings: Settings) -> list[Finding]:
    """keel.toml, tool modules, agents, prices and schedules: the very check `keel run` makes."""
    checked = check_configuration(settings)
    where = settings.config_path or (Path("keel.toml") if Path("keel.toml").exists() else None)
    if checked.problems:
        return [Finding("error", p.what, p.fix) for p in checked.problems]
    out = [Finding("ok", f"config file {where}" if where else
                   "no keel.toml (built-in agents only)")]
    out.append(Finding("ok", f"{len(checked.agents)} agents, default {checked.keel_file.default_agent}"
                       f"; every model they use has a price"))
    if checked.jobs:
        out.append(Finding("ok", f"{len(checked.jobs)} schedule(s): "
                           + ", ".join(job.name for job in checked.jobs)))
    # issue 13: a cap too small for one answer says so once, here, not at every refused run
    out += [Finding("warn", line) for line in budget_warnings(
        settings, checked.agents, checked.prices, checked.registry)]
    return out


def _check_data_dir(settings: Settings) -> Finding:
    problem = data_dir_problem(settings.data_dir)
    if problem is not None:
        return Finding("error", problem.what, problem.fix)
    return Finding("ok", f"data directory {settings.data_dir.resolve()}")


async def check_online(settings: Settings) -> list[Finding]:
    """Call Telegram getMe and Anthropic's model list with the configured credentials."""
    out: list[Finding] = []
    if settings.telegram_bot_token:
        from telegram import Bot
        from telegram.error import TelegramError

        try:
            bot = Bot(settings.telegram_bot_token.get_secret_value(),
                      base_url=settings.telegram_api_base_url)
            async with bot:
                me = await bot.get_me()
                out.append(Finding("ok", f"Telegram getMe: @{me.username} (id {me.id})"))
                info = await bot.get_webhook_info()
            out += webhook_findings(settings, info.url or "", pending=info.pending_update_count,
                                    error_at=info.last_error_date,
                                    error=info.last_error_message)
        except TelegramError as exc:
            out.append(Finding("error", "Telegram getMe failed", str(exc)))
        except Exception as exc:  # network errors of any kind
            out.append(Finding("error", "Telegram is not reachable", f"{type(exc).__name__}: {exc}"))
    if settings.anthropic_api_key:
        import anthropic

        try:
            client = anthropic.AsyncAnthropic(
                api_key=settings.anthropic_api_key.get_secret_value(),
                base_url=settings.anthropic_base_url, max_retries=1,
            )
            page = await client.models.list(limit=100)
            ids = {m.id for m in page.data}
            out.append(Finding("ok", f"Anthropic models list: {len(ids)} models"))
            for model in {settings.router_model, settings.planner_model, settings.executor_model}:
                if model not in ids:
                    out.append(Finding("warn", f"model {model!r} is not in the account's model list"))
        except anthropic.APIError as exc:
            out.append(Finding("error", "Anthropic API call failed", str(exc)))
    return out


# ---------------------------------------------------------------------- the database (issue 16)

async def check_database(settings: Settings) -> list[Finding]:
    """The database keel would open: can it be reached, is its schema this keel's (no migration
    pending, none from a newer keel) and — on PostgreSQL, where `keel serve` and `keel worker` run —
    are procrastinate's tables there, with the queue and the workers' heartbeats."""
    from storage.db import Database
    from storage.pg import DatabaseUnavailable, PostgresDatabase, is_postgres_url

    target = settings.database_target
    db: Database
    if is_postgres_url(target):
        db = PostgresDatabase(str(target), pool_min=1, pool_max=1)
        try:
            await db.connect()
        except DatabaseUnavailable as exc:
            return [Finding("error", "cannot connect to the database", str(exc))]
        where = f"PostgreSQL at {db}"
    else:
        path = settings.db_path
        if data_dir_problem(settings.data_dir) is not None:
            return []  # said above, with its fix
        if not path.exists():
            return [Finding("ok", f"no database yet at {path.resolve()} "
                            "(`keel run` or `keel db migrate` creates it)")]
        db = Database(path)
        where = f"SQLite at {path.resolve()}"
    try:
        if not isinstance(db, PostgresDatabase):
            await db.connect()
        tables = await db.table_names()
        out = [Finding("ok", f"database: {where}")]
        out.append(await _schema_finding(db, tables))
        if isinstance(db, PostgresDatabase):
            out += await _job_findings(db, tables)
        return out
    except sqlite3.DatabaseError as exc:
        return [Finding("error", f"cannot read the database: {where}",
                        f"{exc}; restore it from a backup, or move it away to start afresh.")]
    finally:
        await db.close()


async def _schema_finding(db: Any, tables: list[str]) -> Finding:
    from storage.migrations import MIGRATIONS

    known = [m.name for m in MIGRATIONS]
    applied = ({r["name"] for r in await db.fetchall("SELECT name FROM schema_migrations")}
               if "schema_migrations" in tables else set())
    newer = sorted(applied - set(known))
    if newer:
        return Finding("error", f"the database was migrated by a newer keel: {', '.join(newer)}",
                       "This keel does not know those changes to its tables. Deploy the keel "
                       "that made them (every process on the same version).")
    pending = [name for name in known if name not in applied]
    if pending:
        return Finding("warn", f"{len(pending)} schema migration(s) pending: {', '.join(pending)}",
                       "`keel db migrate` applies them (every keel process also does at start; "
                       "run it once before starting several processes of a new version).")
    return Finding("ok", f"schema up to date ({len(known)} migrations, the last {known[-1]})")


async def _job_findings(db: Any, tables: list[str]) -> list[Finding]:
    from bot.workers import QUEUE, STALLED_S

    if "procrastinate_jobs" not in tables:
        return [Finding("warn", "procrastinate's tables are missing (needed by keel serve and "
                        "keel worker)",
                        "`keel db migrate` creates them, as does the first `keel serve` or "
                        "`keel worker` to start. A single `keel run` does not use them.")]
    rows = await db.fetchall("SELECT CAST(status AS TEXT) AS status, COUNT(*) AS n"
                             " FROM procrastinate_jobs WHERE queue_name = ? GROUP BY status",
                             (QUEUE,))
    jobs = {r["status"]: int(r["n"]) for r in rows}
    alive = int(await db.fetchval(
        "SELECT COUNT(*) FROM procrastinate_workers"
        " WHERE last_heartbeat > now() - make_interval(secs => ?)", (STALLED_S,)) or 0)
    line = (f"jobs: {jobs.get('todo', 0)} waiting, {jobs.get('doing', 0)} running, "
            f"{jobs.get('failed', 0)} failed; workers alive: {alive}")
    if jobs.get("todo", 0) and not alive:
        return [Finding("warn", line + " — nobody is taking the waiting jobs",
                        "Start `keel worker` (docs/deploy.md: systemctl start keel-worker@1).")]
    return [Finding("ok", line)]


# ---------------------------------------------------------------------- the webhook (issue 16)

def webhook_findings(settings: Settings, registered: str, *, pending: int,
                     error_at: datetime | None = None, error: str | None = None,
                     now: datetime | None = None) -> list[Finding]:
    """What getWebhookInfo says, against what keel is configured to do."""
    configured = settings.webhook_url or ""
    shown = _hide(registered, settings.secrets())
    out: list[Finding] = []
    if configured and registered == configured:
        out.append(Finding("ok", f"webhook registered at {shown}"))
    elif configured and not registered:
        out.append(Finding("warn", "no webhook is registered with Telegram",
                           "`keel serve` (or `keel run`) registers KEEL_WEBHOOK_URL when it "
                           "starts; until then Telegram keeps the updates (for up to 24 hours)."))
    elif configured:
        out.append(Finding("error", f"Telegram sends updates to {shown}, not to KEEL_WEBHOOK_URL "
                           f"({_hide(configured, settings.secrets())})",
                           "Another deployment registered its URL with this bot token, or "
                           "KEEL_WEBHOOK_URL changed since keel last started. Stop the other one; "
                           "starting `keel serve` registers KEEL_WEBHOOK_URL again."))
    elif registered:
        out.append(Finding("warn", f"a webhook is registered ({shown}) but KEEL_WEBHOOK_URL is "
                           "not set",
                           "Telegram refuses long polling while it is; `keel run` removes it at "
                           "start (the pending updates are kept). Set KEEL_WEBHOOK_URL to keep "
                           "it."))
    else:
        out.append(Finding("ok", "no webhook registered (long polling)"))
    out.append(Finding("ok", f"Telegram holds {pending} pending update(s)"))
    if error:
        age = ""
        if error_at is not None:
            seconds = int(((now or datetime.now(UTC)) - error_at).total_seconds())
            age = f" {_duration(max(seconds, 0))} ago"
        out.append(Finding("warn", f"Telegram's last delivery to the webhook failed{age}: "
                           f"{_hide(error, settings.secrets())}",
                           "Telegram retries with growing pauses. Check that the URL reaches keel: "
                           "the TLS proxy forwards to KEEL_WEBHOOK_LISTEN, and GET /healthz there "
                           "answers 200."))
    return out


def _hide(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def render(findings: list[Finding]) -> str:
    marks = {"ok": "ok   ", "warn": "warn ", "error": "FAIL "}
    lines = []
    for f in findings:
        lines.append(f"{marks[f.level]} {f.what}")
        if f.detail and f.level != "ok":
            lines.extend(f"        {line}" for line in f.detail.splitlines())
    return "\n".join(lines)


def run_doctor(settings: Settings, *, online: bool,
               env_problems: list[Problem] | None = None) -> int:
    findings = check(settings, env_problems)
    if not any(p.what.startswith(("KEEL_DATABASE_URL", "KEEL_DATA_DIR"))
               for p in env_problems or []):
        findings += asyncio.run(check_database(settings))
    if online:
        findings += asyncio.run(check_online(settings))
    print(render(findings))
    errors = sum(f.level == "error" for f in findings)
    print(f"\n{errors} problem(s) found." if errors else "\nAll checks passed.")
    return 1 if errors else 0
