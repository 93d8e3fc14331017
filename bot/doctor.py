"""`keel doctor`: check the configuration and say what is missing and how to fix it."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Literal

from agents.config import KeelFile, Settings, load_keel_file, price_table
from agents.errors import ConfigError

Level = Literal["ok", "warn", "error"]
_TOKEN_SHAPE = re.compile(r"^\d{5,}:[A-Za-z0-9_-]{30,}$")


@dataclass(frozen=True)
class Finding:
    level: Level
    what: str
    detail: str = ""


def check(settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    token = settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else ""
    if not token:
        out.append(Finding("error", "TELEGRAM_BOT_TOKEN is not set",
                           "Create a bot with @BotFather (/newbot) and set TELEGRAM_BOT_TOKEN in .env."))
    elif not _TOKEN_SHAPE.match(token):
        out.append(Finding("warn", "TELEGRAM_BOT_TOKEN does not look like a bot token",
                           "Expected '<digits>:<35 letters>' as @BotFather prints it."))
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

    try:
        keel_file = load_keel_file(settings.config_path)
        where = str(settings.config_path or "keel.toml") if (settings.config_path or os.path.exists("keel.toml")) else None
        out.append(Finding("ok", f"config file {where}" if where else "no keel.toml (built-in agents only)"))
    except ConfigError as exc:
        out.append(Finding("error", "keel.toml has errors", str(exc)))
        keel_file = KeelFile()
    out.extend(_check_prices(settings, keel_file))
    return out


def _check_data_dir(settings: Settings) -> Finding:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Finding("error", f"data directory {settings.data_dir} is not writable",
                       f"{exc}. Set KEEL_DATA_DIR to a writable folder.")
    return Finding("ok", f"data directory {settings.data_dir.resolve()}")


def _check_prices(settings: Settings, keel_file: KeelFile) -> list[Finding]:
    table = price_table(keel_file)
    models = {
        "KEEL_ROUTER_MODEL": settings.router_model,
        "KEEL_PLANNER_MODEL": settings.planner_model,
        "KEEL_EXECUTOR_MODEL": settings.executor_model,
    }
    for name, agent in keel_file.agents.items():
        if agent.model:
            models[f"agent {name!r}"] = agent.model
    out = []
    for who, model in models.items():
        if table.get(model) is None:
            out.append(Finding("error", f"{who}: no price for model {model!r}",
                               f"Add [prices.{model!r}] to keel.toml or pin one of: "
                               f"{', '.join(table.models)}."))
    if not out:
        out.append(Finding("ok", "every pinned model has a price"))
    return out


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


def run_doctor(settings: Settings, *, online: bool) -> int:
    findings = check(settings)
    if online:
        findings += asyncio.run(check_online(settings))
    print(render(findings))
    errors = sum(f.level == "error" for f in findings)
    print(f"\n{errors} problem(s) found." if errors else "\nAll checks passed.")
    return 1 if errors else 0
