"""`keel doctor`: check the configuration and say what is missing and how to fix it."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    if online:
        findings += asyncio.run(check_online(settings))
    print(render(findings))
    errors = sum(f.level == "error" for f in findings)
    print(f"\n{errors} problem(s) found." if errors else "\nAll checks passed.")
    return 1 if errors else 0
