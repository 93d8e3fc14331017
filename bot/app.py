"""The Telegram bot: a python-telegram-bot Application with long polling.

Start-up work (runtime, recovery, commands) happens in ``post_init``; teardown in
``post_shutdown``. Updates are handled concurrently; ``KeelBot`` serialises per conversation.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from agents.config import Settings
from agents.runtime import Runtime
from agents.schedule import Scheduler, jobs_from_config
from agents.scheduled import ScheduledRunner
from bot.commands import HANDLERS, bot_commands
from bot.events import from_update
from bot.service import KeelBot
from storage.retention import housekeep

log = logging.getLogger(__name__)

# Handlers run concurrently; KeelBot orders each conversation itself. PTB's default (256) let
# handlers waiting on rate-limited replies hold every slot, so new chats' runs started late.
MAX_CONCURRENT_UPDATES = 4096

ALLOWED_UPDATES = [Update.MESSAGE, Update.EDITED_MESSAGE, Update.CALLBACK_QUERY]


def file_base_url(base_url: str) -> str:
    """``https://host/bot`` → ``https://host/file/bot``, as python-telegram-bot expects."""
    head, sep, tail = base_url.rstrip("/").rpartition("/")
    return f"{head}/file/{tail}" if sep else base_url


def build_application(settings: Settings, *, runtime: Runtime | None = None) -> Application[Any, Any, Any, Any, Any, Any]:
    token = settings.require_telegram_token()
    app = (
        ApplicationBuilder()
        .token(token)
        .base_url(settings.telegram_api_base_url)
        .base_file_url(file_base_url(settings.telegram_api_base_url))
        .rate_limiter(AIORateLimiter(max_retries=3))
        .concurrent_updates(MAX_CONCURRENT_UPDATES)
        .post_init(_post_init)
        .post_shutdown(_post_shutdown)
        .build()
    )
    app.bot_data["settings"] = settings
    if runtime is not None:
        app.bot_data["runtime"] = runtime
    allowed = filters.User(user_id=list(settings.allowed_user_ids)) if settings.allowed_user_ids else None
    for name, handler in HANDLERS.items():
        app.add_handler(CommandHandler(name, _gated(handler), filters=allowed, block=False))
    app.add_handler(CallbackQueryHandler(on_callback, block=False))
    app.add_handler(MessageHandler(filters.ALL & ~filters.StatusUpdate.ALL, on_message, block=False))
    app.add_error_handler(on_error)
    return app


def _gated(handler: Any) -> Any:
    async def gated(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if "keel" not in context.bot_data:
            return
        await handler(update, context)

    gated.__doc__ = handler.__doc__
    return gated


async def _post_init(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    settings: Settings = app.bot_data["settings"]
    runtime = app.bot_data.get("runtime") or await Runtime.open(settings)
    app.bot_data["runtime"] = runtime
    keel = KeelBot(runtime, app.bot)
    app.bot_data["keel"] = keel
    app.bot_data["on_button"] = keel.escalations.on_button
    if app.job_queue is not None:
        app.job_queue.run_repeating(_expire_escalations, interval=60, first=1,
                                    name="expire-escalations")
        # Starts with the job queue, after recovery below; file work runs in a thread.
        app.job_queue.run_repeating(_retention, interval=3600, first=30, name="retention")
    try:
        await app.bot.set_my_commands(bot_commands())
    except TelegramError as exc:
        log.warning("could not register commands: %s", exc)
    sent, answered = await keel.recover()
    # After recover(): it fails runs left 'running', which must not include catch-up runs.
    jobs = jobs_from_config(runtime.keel_file.schedules, default_timezone=settings.timezone,
                            agents=runtime.agents)
    if jobs:
        scheduler = Scheduler(runtime.db, jobs, ScheduledRunner(
            runtime, keel.notifier, on_escalation=_escalation_poster(keel)))
        await scheduler.start()
        app.bot_data["scheduler"] = scheduler
    log.info("keel is up as @%s: %d agents; recovered %d pending repl(ies), re-answering %d "
             "message(s)", app.bot.username, len(runtime.agents), sent, answered)
    if not settings.allowed_user_ids:
        log.warning("KEEL_ALLOWED_USER_IDS is empty: the bot serves nobody and tells each person "
                    "their id")


async def _retention(context: ContextTypes.DEFAULT_TYPE) -> None:
    runtime: Runtime | None = context.bot_data.get("runtime")
    settings: Settings = context.bot_data["settings"]
    if runtime is not None:  # a pass is time-limited so that a stop never waits long for it
        await housekeep(runtime.db, runtime.traces, days=settings.retention_days,
                        trace_days=settings.trace_retention_days, max_seconds=20)


async def _expire_escalations(context: ContextTypes.DEFAULT_TYPE) -> None:
    keel: KeelBot | None = context.bot_data.get("keel")
    if keel is not None:
        await keel.escalations.expire()


def _escalation_poster(keel: KeelBot) -> Any:
    async def post(result: Any, chat_id: int, thread_id: int | None) -> None:
        if result.status == "budget_exceeded":
            await keel.escalations.ask_budget(result, chat_id=chat_id, thread_id=thread_id)
        else:
            await keel.escalations.ask(result, chat_id=chat_id, thread_id=thread_id)

    return post


async def _post_shutdown(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    scheduler: Scheduler | None = app.bot_data.get("scheduler")
    if scheduler is not None:
        await scheduler.shutdown()
    runtime: Runtime | None = app.bot_data.get("runtime")
    if runtime is not None:
        await runtime.close()


async def on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Every message: gate, then the conversation flow."""
    keel: KeelBot | None = context.bot_data.get("keel")
    if keel is None:
        return
    message = from_update(update, bot_id=context.bot.id, bot_username=context.bot.username)
    if message is None:
        return
    if not keel.addressed(message):
        return  # a group message not meant for the bot
    if not keel.allowed(message.user_id):
        if message.is_private or message.mentions_bot or message.replies_to_bot:
            await keel.tell_unknown_user(message.chat_id, message.user_id, message.thread_id)
        return
    if message.text.startswith("/"):
        await keel.notifier.send(message.chat_id, "Unknown command. /help lists what I know.",
                                 thread_id=message.thread_id)
        return
    await keel.handle(message, update.to_dict())


async def on_callback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Button presses: escalation answers; anything else is answered as expired."""
    query = update.callback_query
    assert query is not None
    keel: KeelBot | None = context.bot_data.get("keel")
    if keel is None or not keel.allowed(query.from_user.id):
        await query.answer("You are not allowed to answer this.", show_alert=False)
        return
    handler = context.bot_data.get("on_button")
    if handler is not None and await handler(update, context):
        return
    await query.answer("This button is no longer active.")


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log first; then tell the person something went wrong, if there is one to tell."""
    log.error("error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.effective_chat is not None:
        try:
            await context.bot.send_message(
                update.effective_chat.id,
                "Something went wrong on my side and has been logged. Please try again.",
            )
        except TelegramError:
            pass


def run_bot(settings: Settings) -> int:
    app = build_application(settings)
    log.info("starting long polling against %s", settings.telegram_api_base_url)
    asyncio.set_event_loop(asyncio.new_event_loop())
    app.run_polling(allowed_updates=ALLOWED_UPDATES, stop_signals=(signal.SIGINT, signal.SIGTERM),
                    close_loop=True)
    return 0
