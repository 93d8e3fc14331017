"""Slash commands. Each handler answers the person; none calls a model.

Every command declares the least role that may use it (see ``COMMANDS``) and runs behind the same
gate as messages (``bot.access.gated``). What a person sees is scoped by ``bot.access.Scope``.
"""

from __future__ import annotations

import asyncio

from telegram import BotCommand, Message, Update
from telegram.ext import ContextTypes

from agents.approvals import code_block
from agents.router import routable
from agents.trace_view import render_summary, summarise
from bot import memory_view
from bot.access import (
    AccessRefused,
    Command,
    Handler,
    Scope,
    at_least,
    parse_user_id,
    scope_for,
    sees_everyone,
)
from bot.cli_cost import render as render_cost
from bot.model_choice import model
from bot.reload import reload_configuration
from bot.service import KeelBot


def bot_commands() -> list[BotCommand]:
    """The menu everyone sees: commands any allowed person may use (/help shows the rest)."""
    return [BotCommand(c.name, c.description) for c in COMMANDS if c.role == "user"]


def _keel(context: ContextTypes.DEFAULT_TYPE) -> KeelBot:
    keel: KeelBot = context.bot_data["keel"]
    return keel


async def _reply(update: Update, context: ContextTypes.DEFAULT_TYPE, markdown: str) -> None:
    message = update.effective_message
    assert message is not None
    thread = message.message_thread_id if message.is_topic_message else None
    await _keel(context).notifier.send(message.chat_id, markdown, thread_id=thread)


def _where(update: Update) -> str:
    """What a conversation is called to the person: a topic of a forum, or a chat."""
    message = update.effective_message
    return "topic" if message is not None and message.is_topic_message else "chat"


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
    """List the commands this person may use."""
    user = update.effective_user
    assert user is not None
    role = await _keel(context).access.role(user.id)
    lines = ["**Commands**"] + [f"/{c.name} — {c.description}" for c in COMMANDS
                                if at_least(role, c.role)]
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
    lines.append(f"\n/agent NAME pins one for this {_where(update)}; /auto lets the router "
                 "choose.")
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
    await _reply(update, context, f"Pinned `{name}` for this {_where(update)}. /auto to unpin.")


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
    key = _key(update)
    # with workers the run may be in another process: it is asked through the database
    if keel.cancel(key) or await keel.runtime.runs.request_cancel(key[0], key[1] or None):
        await _reply(update, context, "Cancelling the running run…")
    else:
        await _reply(update, context, "Nothing is running here.")


async def cost(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Today's spend, reserved and left: your own; the owner and admins also everyone's, in a
    private chat."""
    keel = _keel(context)
    user, message = update.effective_user, update.effective_message
    assert user is not None and message is not None
    settings = keel.settings
    report = await keel.runtime.cost_report()
    everyone = sees_everyone(await keel.access.role(user.id))
    lines = render_cost(report, viewer=user.id, everyone=everyone and message.chat.type == "private",
                        per_user_cap=settings.daily_budget_usd_per_user)
    if everyone and message.chat.type != "private":
        lines.append("_Everyone's figures: ask me in a private chat._")
    lines += await _session_lines(keel, message)
    lines.append(f"Each run is capped at ${settings.run_budget_usd:.2f} unless its agent says "
                 "otherwise.")
    await _reply(update, context, "\n".join(lines))


async def _session_lines(keel: KeelBot, message: Message) -> list[str]:
    """The prompt cache of this chat's (or topic's) live conversation, per agent: what share of
    its input was read from the cache, and what it wrote and sent uncached."""
    thread = message.message_thread_id if message.is_topic_message else None
    where = "this topic" if thread is not None else "this chat"
    lines = []
    for agent, stats in await keel.runtime.conversations.live_session_stats(message.chat_id,
                                                                             thread):
        if not stats.total_input_tokens:
            continue
        lines.append(
            f"Prompt cache, {where} with `{agent}`: {stats.cache_hit_ratio:.0%} of "
            f"{stats.total_input_tokens:,} input tokens read from it ({stats.cache_write_tokens:,} written, "
            f"{stats.input_tokens:,} sent uncached); {stats.compactions} compaction(s).")
    return lines


async def _scope(keel: KeelBot, update: Update) -> tuple[Scope, bool]:
    """What the asker may see here, and whether this is a private chat."""
    user, message = update.effective_user, update.effective_message
    assert user is not None and message is not None
    private = message.chat.type == "private"
    role = await keel.access.role(user.id)
    return scope_for(role, user_id=user.id, chat_id=message.chat_id, private=private), private


async def runs(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Your recent runs (the owner and admins: everyone's; in a group: that group's)."""
    keel = _keel(context)
    scope, _ = await _scope(keel, update)
    records = await keel.runtime.runs.visible(user_id=scope.user_id, chat_id=scope.chat_id,
                                              limit=10)
    if not records:
        await _reply(update, context, "No runs yet.")
        return
    lines = ["**Recent runs**"]
    for r in records:
        who = f" by `{r.user_id or 'schedule'}`" if scope.user_id is None else ""
        lines.append(f"• {r.started_at[:16].replace('T', ' ')} `{r.agent}`{who} {r.status} "
                     f"${r.cost_usd:.4f} — `{r.trace_id[:8]}`")
    lines.append("\n/trace ID shows one.")
    await _reply(update, context, "\n".join(lines))


async def trace(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A run's summary; in a private chat also its JSONL file."""
    keel = _keel(context)
    if not context.args:
        await _reply(update, context, "Usage: `/trace ID` — ids are in /runs.")
        return
    wanted = context.args[0].strip()
    scope, private = await _scope(keel, update)
    # Only runs the asker may see are searched: someone else's run answers as an unknown id.
    matches = await keel.runtime.runs.visible(user_id=scope.user_id, chat_id=scope.chat_id,
                                              prefix=wanted, limit=2)
    found = (await asyncio.to_thread(keel.runtime.traces.find, matches[0].trace_id)
             if len(matches) == 1 else None)
    if len(matches) > 1:
        await _reply(update, context, f"More than one run starts with `{wanted}`; give more of "
                     "the id (/runs lists them).")
        return
    if found is None:
        await _reply(update, context, f"No trace `{wanted}`. /runs lists yours.")
        return
    events = await asyncio.to_thread(keel.runtime.traces.read, found.trace_id)
    summary = render_summary(summarise(events))
    # a fence longer than any backtick run in the summary: an answer's own ``` cannot close it
    await _reply(update, context, code_block(summary))
    message = update.effective_message
    assert message is not None
    if not private:  # the file holds the whole conversation and system prompt
        await _reply(update, context, "_The full trace file is sent only in a private chat._")
        return
    await keel.notifier.send_document(
        message.chat_id, found.path.name, await asyncio.to_thread(found.path.read_bytes),
        thread_id=None)


async def people(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Who keel serves, with roles (in a private chat only)."""
    keel = _keel(context)
    message = update.effective_message
    assert message is not None
    if message.chat.type != "private":
        await _reply(update, context, "I list people only in a private chat.")
        return
    owner = keel.access.owner_id
    lines = ["**People**", f"• `{owner}` — owner" if owner is not None else "• no owner set"]
    removed = []
    for person in await keel.access.everyone():
        if person.role == "removed":
            removed.append(f"`{person.user_id}`")
        elif person.user_id != owner:
            lines.append(f"• `{person.user_id}` — {person.role}")
    if removed:
        lines.append(f"\nRemoved: {', '.join(removed)}")
    lines.append("\n/allow ID adds a person, /deny ID removes one, /promote ID makes an admin, "
                 "/demote ID makes an admin a user again.")
    await _reply(update, context, "\n".join(lines))


def _changes_role(change: str) -> Handler:
    async def handler(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        keel = _keel(context)
        user = update.effective_user
        assert user is not None
        target = parse_user_id(context.args)
        if target is None:
            await _reply(update, context, f"Usage: `/{change} ID` — a numeric Telegram user id "
                         "(a stranger who writes to me in private is told theirs).")
            return
        act = {"allow": keel.access.allow, "deny": keel.access.deny,
               "promote": keel.access.promote, "demote": keel.access.demote}[change]
        try:
            said = await act(user.id, target)
        except AccessRefused as exc:
            said = str(exc)
        await _reply(update, context, said)

    handler.__doc__ = f"/{change} ID: change who keel serves."
    return handler


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
    from agents.schedule import Scheduler
    from bot.service import spawn

    scheduler: Scheduler | None = context.bot_data.get("scheduler")
    names = sorted(scheduler.jobs) if scheduler else []
    if not context.args or scheduler is None or context.args[0] not in scheduler.jobs:
        await _reply(update, context, "Usage: `/run NAME` — one of: "
                     + (", ".join(f"`{n}`" for n in names) or "(no schedules)"))
        return
    job = scheduler.jobs[context.args[0]]
    # A stored request like any fire, keyed by this update: a redelivered /run runs once, and a
    # run cut off by a crash is run again at the next start.
    claim = await scheduler.claim_now(job.name, f"tg:{update.update_id}")
    if claim is None:
        return
    await _reply(update, context, f"Running `{job.name}` now; its outcome will be posted where "
                 "it always is.")
    spawn(scheduler.run_claim(claim), f"/run {job.name}")


async def stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The last 14 days as a chart: spend per agent, runs by status, cache hit ratio (the numbers
    of `keel stats`); in a private chat only, since it shows everyone's spend."""
    keel = _keel(context)
    message = update.effective_message
    assert message is not None
    if message.chat.type != "private":
        await _reply(update, context, "I send stats only in a private chat.")
        return
    from bot.chart import render_png  # drawn on demand: nothing of it loads at start-up
    from bot.stats import collect

    numbers = await collect(keel.runtime.db)
    png = await asyncio.to_thread(render_png, numbers)
    totals = numbers.as_json()
    await keel.notifier.send_document(
        message.chat_id, "keel-stats.png", png, thread_id=None,
        caption=f"Last {len(numbers.days)} days (UTC): {totals['total_runs']} run(s), "
                f"${totals['total_spend_usd']:.4f}. keel stats prints the numbers.")


async def reload(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Read keel.toml again now: agents, prices and schedules swap at once, or the reasons why
    not (the running configuration is kept)."""
    ok, report = await reload_configuration(context.application)
    await _reply(update, context, ("✅ " if ok else "⚠️ ") + report)


COMMANDS: tuple[Command, ...] = (
    Command("start", "what this bot is and how to use it", start, "user"),
    Command("help", "commands and tips", help_, "user"),
    Command("agents", "the agents you can talk to", agents, "user"),
    Command("agent", "pin an agent for this chat: /agent NAME", agent, "user"),
    Command("auto", "let the router pick the agent again", auto, "user"),
    Command("new", "start a fresh session (forget this chat's history)", new, "user"),
    Command("cancel", "stop the run that is working now", cancel, "user"),
    Command("memory", "what I remember about you, with buttons to delete it",
            memory_view.memory, "user"),
    Command("cost", "today's spend and what is left", cost, "user"),
    Command("model", "this chat's model; the owner and admins choose another", model, "user"),
    Command("runs", "your recent runs", runs, "user"),
    Command("trace", "a run's trace: /trace ID", trace, "user"),
    Command("stats", "the last 14 days as a chart: spend, runs, cache hits", stats, "admin"),
    Command("schedules", "scheduled agents, next runs and worst-case spend", schedules, "admin"),
    Command("run", "run a scheduled agent now: /run NAME", run_now, "admin"),
    Command("people", "who I serve, and their roles", people, "admin"),
    Command("allow", "let a person use me: /allow ID", _changes_role("allow"), "admin"),
    Command("deny", "stop serving a person: /deny ID", _changes_role("deny"), "admin"),
    Command("reload", "read keel.toml again (agents, prices, schedules)", reload, "owner"),
    Command("promote", "make a person an admin: /promote ID", _changes_role("promote"), "owner"),
    Command("demote", "make an admin a user again: /demote ID", _changes_role("demote"), "owner"),
)
