"""Slash commands. Each handler answers the person; none calls a model."""

from __future__ import annotations

import asyncio

from telegram import BotCommand, Update
from telegram.ext import ContextTypes

from agents.router import routable
from agents.trace_view import render_summary, summarise
from bot.service import KeelBot

COMMANDS: list[tuple[str, str]] = [
    ("start", "what this bot is and how to use it"),
    ("help", "commands and tips"),
    ("agents", "the agents you can talk to"),
    ("agent", "pin an agent for this chat: /agent NAME"),
    ("auto", "let the router pick the agent again"),
    ("new", "start a fresh session (forget this chat's history)"),
    ("cancel", "stop the run that is working now"),
    ("cost", "today's spend and what is left"),
    ("runs", "your recent runs"),
    ("trace", "a run's trace: /trace ID"),
    ("schedules", "scheduled agents, next runs and worst-case spend"),
    ("run", "run a scheduled agent now: /run NAME"),
]


def bot_commands() -> list[BotCommand]:
    return [BotCommand(name, description) for name, description in COMMANDS]


def _keel(context: ContextTypes.DEFAULT_TYPE) -> KeelBot:
    keel: KeelBot = context.bot_data["keel"]
    return keel


async def _reply(update: Update, context: ContextTypes.DEFAULT_TYPE, markdown: str) -> None:
    message = update.effective_message
    assert message is not None
    thread = message.message_thread_id if message.is_topic_message else None
    await _keel(context).notifier.send(message.chat_id, markdown, thread_id=thread)


def _key(update: Update) -> tuple[int, int]:
    message = update.effective_message
    assert message is not None
    return (message.chat_id, (message.message_thread_id if message.is_topic_message else None) or 0)


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet and explain."""
    keel = _keel(context)
    names = ", ".join(f"`{n}`" for n in routable(keel.runtime.agents))
    await _reply(update, context,
                 "**keel** — your agents, in Telegram.\n\nJust write: a router picks the right "
                 f"agent ({names}). Every run has a budget, a deadline and a trace you can read "
                 "with /trace. /help lists the commands.")


async def help_(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """List the commands."""
    lines = ["**Commands**"] + [f"/{name} — {text}" for name, text in COMMANDS]
    lines.append("\nIn groups, mention me or reply to one of my messages.")
    await _reply(update, context, "\n".join(lines))


async def agents(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """List the agents."""
    keel = _keel(context)
    conversation = await keel.runtime.conversations.get_or_create(*_key(update))
    lines = ["**Agents**"]
    for name, spec in routable(keel.runtime.agents).items():
        mark = " (pinned)" if conversation.pinned_agent == name else ""
        lines.append(f"• `{name}`{mark} — {spec.description}")
    lines.append("\n/agent NAME pins one for this chat; /auto lets the router choose.")
    await _reply(update, context, "\n".join(lines))


async def agent(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Pin an agent for this conversation."""
    keel = _keel(context)
    names = routable(keel.runtime.agents)
    if not context.args:
        await _reply(update, context, f"Usage: `/agent NAME` — one of {', '.join(names)}.")
        return
    name = context.args[0].strip().lower()
    if name not in names:
        await _reply(update, context, f"No agent named `{name}`. Try one of: "
                     f"{', '.join(f'`{n}`' for n in names)}.")
        return
    conversation = await keel.runtime.conversations.get_or_create(*_key(update))
    await keel.runtime.conversations.pin(conversation.id, name)
    await _reply(update, context, f"Pinned `{name}` for this chat. /auto to unpin.")


async def auto(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Unpin: the router chooses again."""
    keel = _keel(context)
    conversation = await keel.runtime.conversations.get_or_create(*_key(update))
    await keel.runtime.conversations.pin(conversation.id, None)
    await _reply(update, context, "The router picks the agent again for each message.")


async def new(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Start fresh sessions in this conversation."""
    keel = _keel(context)
    conversation = await keel.runtime.conversations.get_or_create(*_key(update))
    count = await keel.runtime.conversations.archive_sessions(conversation.id)
    await _reply(update, context, "Fresh start: earlier messages are archived and no longer "
                 "sent to the model." if count else "This chat has no history yet.")


async def cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Cancel the run working in this conversation."""
    keel = _keel(context)
    if keel.cancel(_key(update)):
        await _reply(update, context, "Cancelling the running run…")
    else:
        await _reply(update, context, "Nothing is running here.")


async def cost(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Today's spend and what is left."""
    keel = _keel(context)
    user = update.effective_user
    assert user is not None
    settings = keel.settings
    mine = await keel.runtime.usage.spent(user_id=user.id)
    total = await keel.runtime.usage.spent()
    await _reply(update, context,
                 f"**Today (UTC)**\nYou: ${mine:.4f} of ${settings.daily_budget_usd_per_user:.2f} "
                 f"(${max(0.0, settings.daily_budget_usd_per_user - mine):.4f} left)\n"
                 f"Everyone: ${total:.4f} of ${settings.daily_budget_usd_total:.2f} "
                 f"(${max(0.0, settings.daily_budget_usd_total - total):.4f} left)\n"
                 f"Each run is capped at ${settings.run_budget_usd:.2f} unless its agent says "
                 "otherwise.")


async def runs(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Your recent runs."""
    keel = _keel(context)
    user = update.effective_user
    assert user is not None
    records = await keel.runtime.runs.recent(limit=10, user_id=user.id)
    if not records:
        await _reply(update, context, "No runs yet.")
        return
    lines = ["**Recent runs**"]
    for r in records:
        lines.append(f"• {r.started_at[:16].replace('T', ' ')} `{r.agent}` {r.status} "
                     f"${r.cost_usd:.4f} — `{r.trace_id[:8]}`")
    lines.append("\n/trace ID shows one.")
    await _reply(update, context, "\n".join(lines))


async def trace(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A run's summary; its owner also gets the JSONL file."""
    keel = _keel(context)
    user = update.effective_user
    assert user is not None
    if not context.args:
        await _reply(update, context, "Usage: `/trace ID` — ids are in /runs.")
        return
    wanted = context.args[0].strip()
    found = await keel.runtime.traces.afind(wanted)  # a prefix walks the trace folders
    record = await keel.runtime.runs.get(found.trace_id) if found else None
    if found is None or record is None:
        await _reply(update, context, f"No trace `{wanted}`. /runs lists yours.")
        return
    summary = render_summary(summarise(await keel.runtime.traces.aread(found.trace_id)))
    await _reply(update, context, f"```\n{summary}\n```")
    if record.user_id == user.id:
        message = update.effective_message
        assert message is not None
        await keel.notifier.send_document(
            message.chat_id, found.path.name, await asyncio.to_thread(found.path.read_bytes),
            thread_id=message.message_thread_id if message.is_topic_message else None)


async def schedules(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Scheduled jobs: next run in local time and worst-case daily spend."""
    from agents.schedule import Scheduler, worst_case_daily_usd

    scheduler: Scheduler | None = context.bot_data.get("scheduler")
    if scheduler is None or not scheduler.jobs:
        await _reply(update, context, "No schedules. Add `[[schedules]]` to keel.toml.")
        return
    lines = ["**Schedules**"]
    for job in scheduler.jobs.values():
        upcoming = job.next_fire(scheduler.now())
        when = upcoming.astimezone(job.tz).strftime("%a %d %b %H:%M %Z") if upcoming else "never"
        lines.append(f"• `{job.name}` — `{job.agent}`, `{job.cron}` ({job.timezone}); next {when}; "
                     f"≤ {job.runs_per_day} run(s)/day × ${job.budget_usd:.2f} = "
                     f"${job.worst_case_daily_usd:.2f}/day worst case")
    total = worst_case_daily_usd(list(scheduler.jobs.values()))
    lines.append(f"\nAll schedules, worst case: ${total:.2f} per day.")
    await _reply(update, context, "\n".join(lines))


async def run_now(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Run a scheduled agent now, outside its schedule."""
    from datetime import UTC, datetime

    from agents.run import new_id
    from agents.schedule import Scheduler
    from bot.service import spawn

    scheduler: Scheduler | None = context.bot_data.get("scheduler")
    names = sorted(scheduler.jobs) if scheduler else []
    if not context.args or scheduler is None or context.args[0] not in scheduler.jobs:
        await _reply(update, context, "Usage: `/run NAME` — one of: "
                     + (", ".join(f"`{n}`" for n in names) or "(no schedules)"))
        return
    job = scheduler.jobs[context.args[0]]
    await _reply(update, context, f"Running `{job.name}` now; its outcome will be posted where "
                 "it always is.")
    on_fire = scheduler.on_fire

    async def go() -> None:
        await on_fire(job, datetime.now(UTC), new_id())

    spawn(go(), f"/run {job.name}")


HANDLERS = {
    "start": start, "help": help_, "agents": agents, "agent": agent, "auto": auto, "new": new,
    "cancel": cancel, "cost": cost, "runs": runs, "trace": trace, "schedules": schedules,
    "run": run_now,
}
