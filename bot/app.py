"""The Telegram bot: a python-telegram-bot Application with long polling.

Start-up work (runtime, recovery, commands) happens in ``post_init``; teardown in
``post_shutdown``. Updates are handled concurrently; ``KeelBot`` serialises per conversation.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
from telegram import Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from agents.affordability import budget_warnings
from agents.config import Settings
from agents.model import warm_up
from agents.runtime import Runtime
from agents.schedule import Scheduler, jobs_from_config
from agents.scheduled import ScheduledRunner
from bot import memory_view, ratings, render, resend, tls_context
from bot import reload as config_reload
from bot.access import gated, startup_hint
from bot.commands import COMMANDS, bot_commands
from bot.events import from_update
from bot.model_choice import MODEL_BUTTONS, on_model_button
from bot.poller import Poller
from bot.service import KeelBot
from bot.telegram_http import TelegramRequest, UpdatesRequest
from storage.retention import housekeep

log = logging.getLogger(__name__)

OUTBOX_SWEEP_S = 30.0
"""How often pending outbox rows (Telegram was unreachable) are tried again."""
SHUTDOWN_GRACE_S = 10.0
"""On SIGTERM, runs in flight get this long to finish; the rest are left to recovery."""

TELEGRAM_CONNECTIONS = 256
"""Telegram calls in flight at once (python-telegram-bot's default)."""
TELEGRAM_KEEP_ALIVE = 32
"""Idle connections to Telegram kept open for the next call."""
ALLOWED_UPDATES = [Update.MESSAGE, Update.EDITED_MESSAGE, Update.CALLBACK_QUERY]


def file_base_url(base_url: str) -> str:
    """``https://host/bot`` → ``https://host/file/bot``, as python-telegram-bot expects."""
    head, sep, tail = base_url.rstrip("/").rpartition("/")
    return f"{head}/file/{tail}" if sep else base_url


def build_application(settings: Settings, *, runtime: Runtime | None = None) -> Application[Any, Any, Any, Any, Any, Any]:
    token = settings.require_telegram_token()
    # One TLS context for both pools: each would read the CA store (issue 15: start-up).
    tls = tls_context()
    # httpx until the first update has aiohttp imported, then aiohttp (bot/telegram_http.py)
    calls = TelegramRequest(telegram_request(tls), tls=tls, connections=TELEGRAM_CONNECTIONS)
    updates = UpdatesRequest(HTTPXRequest(connection_pool_size=1, httpx_kwargs={
        "verify": tls, "event_hooks": {"response": [unbind_response]}}), tls=tls, connections=1)
    app = (
        ApplicationBuilder()
        .token(token)
        .base_url(settings.telegram_api_base_url)
        .base_file_url(file_base_url(settings.telegram_api_base_url))
        # keel polls itself (bot/poller.py: store before acknowledging) and paces its own sends
        # (bot/delivery.py: a 429 waits in its chat only), so neither the stock updater nor
        # AIORateLimiter, which pauses every chat for one chat's flood wait, is used.
        .updater(None)
        .request(calls)
        .get_updates_request(updates)
        .post_init(_post_init)
        .post_shutdown(_post_shutdown)
        .build()
    )
    app.bot_data["settings"] = settings
    app.bot_data["telegram_requests"] = (calls, updates)
    if runtime is not None:
        app.bot_data["runtime"] = runtime
    # No user filter here: strangers must reach the gate, which answers them at most once a day.
    for command in COMMANDS:
        app.add_handler(CommandHandler(command.name, _gated(gated(command))))
    # Handlers block: each update runs in its own task (bot/poller.py), which settles its inbox
    # row once the handler is done.
    app.add_handler(CallbackQueryHandler(_gated(on_model_button), pattern=MODEL_BUTTONS))
    app.add_handler(CallbackQueryHandler(on_callback))
    app.add_handler(MessageHandler(filters.ALL & ~filters.StatusUpdate.ALL, on_message))
    app.add_error_handler(on_error)
    return app


def telegram_request(tls: ssl.SSLContext) -> HTTPXRequest:
    """The connection pool for Telegram calls: python-telegram-bot's default keeps up to 256
    idle connections, and every request and every response walks all of them (asking each
    socket whether it is still open): after a burst that walk cost more CPU than the rest of a
    reply (issue 15). Replies are paced at ~30 a second, so a few dozen kept open serve them."""
    return HTTPXRequest(connection_pool_size=TELEGRAM_CONNECTIONS, httpx_kwargs={
        "verify": tls, "limits": httpx.Limits(max_connections=TELEGRAM_CONNECTIONS,
                                              max_keepalive_connections=TELEGRAM_KEEP_ALIVE),
        "event_hooks": {"response": [unbind_response]}})


class _Unbinding(httpx.AsyncByteStream):
    """A response's body stream that lets go of the response once closed (``unbind_response``)."""

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream: httpx.AsyncByteStream | None = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._stream is not None:
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()


async def unbind_response(response: httpx.Response) -> None:
    """httpx links a response and its body's stream both ways, so every Telegram call left ~45
    objects in a reference cycle that only the garbage collector frees: in a 1,000-chat burst,
    collections freeing 13,000-40,000 of them at once stopped the event loop for 87-100 ms
    (issue 15). Once the body is read and closed, the response no longer reaches back to
    itself, and its objects are freed as soon as python-telegram-bot drops it."""
    if isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = _Unbinding(response.stream)


def _gated(handler: Any) -> Any:
    async def gated(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if "keel" not in context.bot_data:
            return
        await handler(update, context)

    gated.__doc__ = handler.__doc__
    return gated


async def _post_init(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    settings: Settings = app.bot_data["settings"]
    runtime = app.bot_data.get("runtime") or await Runtime.open(
        settings, calls_model=app.bot_data.get("role", "all") != "ingress")
    app.bot_data["runtime"] = runtime
    keel = KeelBot(runtime, app.bot)
    app.bot_data["keel"] = keel
    app.bot_data["on_button"] = memory_view.chain(memory_view.on_button, ratings.on_button,
                                                  resend.on_button, keel.escalations.on_button)
    role = app.bot_data.get("role", "all")  # "all" (keel run), "ingress" or "worker" (workers.py)
    if app.job_queue is not None and role != "ingress":
        app.job_queue.run_repeating(_expire_escalations, interval=60, first=1,
                                    name="expire-escalations")
        app.job_queue.run_repeating(_sweep_outbox, interval=OUTBOX_SWEEP_S, first=OUTBOX_SWEEP_S,
                                    name="sweep-outbox")
        # Starts with the job queue, after recovery below; file work runs in a thread.
        app.job_queue.run_repeating(_retention, interval=3600, first=30, name="retention")
        config_reload.watch(app, start_scheduler=start_scheduler)  # keel.toml edits apply live
    try:
        await app.bot.set_my_commands(bot_commands())
    except TelegramError as exc:
        log.warning("could not register commands: %s", exc)
    poller = Poller(app.bot, store=keel.inbox.store,
                    dispatch=app.bot_data.get("dispatch") or _dispatcher(app, keel),
                    order_key=conversation_key, allowed_updates=ALLOWED_UPDATES,
                    secrets=settings.secrets(), warm_up=lambda: _warm_up(runtime.model,
                                                     app.bot_data.get("telegram_requests", ())),
                    sent=_sent_updates(app))
    app.bot_data["poller"] = poller
    keel.dispatch = poller.submit
    if role != "all":  # several processes: each role recovers its own part (bot/workers.py)
        from bot.workers import recover_role

        sent, answered = await recover_role(app, keel, role)
    else:
        sent, answered = await keel.recover()
        # After recover(): it fails runs left 'running', which must not include catch-up runs.
        await start_scheduler(app)
    log.info("keel is up as @%s: %d agents; recovered %d pending repl(ies), re-answering %d "
             "message(s)", app.bot.username, len(runtime.agents), sent, answered)
    # only now: getMe has accepted the token, so the hint is not noise before a refusal
    if (hint := startup_hint(settings)) is not None:
        log.warning("%s", hint)
    # issue 13: a cap too small for one answer says so once, at start-up
    for line in budget_warnings(settings, runtime.agents, runtime.prices, runtime.registry):
        log.warning("budget: %s", line)


def _sent_updates(app: Application[Any, Any, Any, Any, Any, Any]) -> Callable[[], list[Any]] | None:
    """The getUpdates connection's last batch as Telegram sent it, for the poller to store."""
    for request in app.bot_data.get("telegram_requests", ()):
        if isinstance(request, UpdatesRequest):
            kept: UpdatesRequest = request
            return lambda: kept.batch
    return None


def _warm_up(model: object, telegram: Sequence[TelegramRequest] = ()) -> None:
    """The first update starts the model SDK's import and the Markdown parser's in threads; once
    they are in, their objects join the frozen heap (see ``_serve``), and Telegram calls move to
    aiohttp (``bot.telegram_http``)."""
    loading: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(asyncio.to_thread(render.load_parser))]
    sdk = warm_up(model)
    if sdk is not None:
        loading.append(sdk)
    loaded = asyncio.gather(*loading, return_exceptions=True)
    loaded.add_done_callback(lambda _: gc.freeze())
    if telegram:
        loaded.add_done_callback(lambda _: _upgrade(telegram))


def _upgrade(requests: Sequence[TelegramRequest]) -> None:
    """Telegram calls over aiohttp from now on: at once when the model SDK's warm-up imported
    it, otherwise once a thread has (never on the event loop: ~0.2 s)."""
    def move() -> None:
        for request in requests:
            request.upgrade()

    if "aiohttp" in sys.modules:
        move()
        return

    def imported(done: asyncio.Future[Any]) -> None:
        if done.cancelled() or done.exception() is not None:
            log.warning("Telegram calls stay on httpx: aiohttp could not be imported (%s)",
                        None if done.cancelled() else done.exception())
        else:
            move()

    importing = asyncio.ensure_future(asyncio.to_thread(importlib.import_module, "aiohttp"))
    _IMPORTING.add(importing)  # the loop keeps only a weak reference to a task
    importing.add_done_callback(_IMPORTING.discard)
    importing.add_done_callback(imported)


_IMPORTING: set[asyncio.Future[Any]] = set()


async def start_scheduler(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Start the schedules of keel.toml in this process (with workers: on the leader only)."""
    settings: Settings = app.bot_data["settings"]
    runtime: Runtime = app.bot_data["runtime"]
    keel: KeelBot = app.bot_data["keel"]
    jobs = jobs_from_config(runtime.keel_file.schedules, default_timezone=settings.timezone,
                            agents=runtime.agents)
    if jobs:
        scheduler = Scheduler(runtime.db, jobs, ScheduledRunner(
            runtime, keel.notifier, mailbox=keel.outbox, on_escalation=_escalation_poster(keel)))
        await scheduler.start()
        app.bot_data["scheduler"] = scheduler


async def _retention(context: ContextTypes.DEFAULT_TYPE) -> None:
    runtime: Runtime | None = context.bot_data.get("runtime")
    settings: Settings = context.bot_data["settings"]
    if runtime is not None:  # a pass is time-limited so that a stop never waits long for it
        await housekeep(runtime.db, runtime.traces, days=settings.retention_days,
                        trace_days=settings.trace_retention_days, max_seconds=20)


async def _sweep_outbox(context: ContextTypes.DEFAULT_TYPE) -> None:
    """Replies Telegram was unreachable for stay pending; this sends them when it is back."""
    keel: KeelBot | None = context.bot_data.get("keel")
    if keel is not None:
        await keel.outbox.sweep()


async def _expire_escalations(context: ContextTypes.DEFAULT_TYPE) -> None:
    keel: KeelBot | None = context.bot_data.get("keel")
    if keel is not None:
        await keel.escalations.expire()


def _escalation_poster(keel: KeelBot) -> Any:
    async def post(conn: Any, result: Any, chat_id: int, thread_id: int | None) -> int:
        if result.status == "budget_exceeded":
            return await keel.escalations.ask_budget_in(conn, result, chat_id=chat_id,
                                                        thread_id=thread_id)
        return await keel.escalations.ask_in(conn, result, chat_id=chat_id, thread_id=thread_id)

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
    message = from_update(update, bot_id=context.bot.id, bot_username=context.bot.username,
                          max_photo_bytes=keel.media.photo_limit)
    if message is None:
        return
    if not keel.addressed(message):
        return  # a group message not meant for the bot
    if not await keel.allowed(message.user_id):
        await keel.tell_unknown_user(message.chat_id, message.user_id, message.thread_id,
                                     private=message.is_private)
        return
    if message.text.startswith("/"):
        await keel.notifier.send(message.chat_id, "Unknown command. /help lists what I know.",
                                 thread_id=message.thread_id)
        return
    started = time.monotonic()
    await keel.handle(message)
    # one line per message at INFO (the run's own line says agent, status and cost); no text
    log.info("message %s in chat %s%s from user %s handled in %.1f s", message.update_id,
             message.chat_id, f" thread {message.thread_id}" if message.thread_id else "",
             message.user_id, time.monotonic() - started)


async def on_callback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Button presses: escalation answers; anything else is answered as expired."""
    query = update.callback_query
    assert query is not None
    keel: KeelBot | None = context.bot_data.get("keel")
    if keel is None or not await keel.allowed(query.from_user.id):
        await query.answer("You are not allowed to answer this.", show_alert=False)
        return
    handler = context.bot_data.get("on_button")
    if handler is not None and await handler(update, context):
        return
    await query.answer("This button is no longer active.")


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log first; then close the update as failed and tell the person, if there is one."""
    log.error("error while handling an update", exc_info=context.error)
    keel: KeelBot | None = context.bot_data.get("keel")
    if not isinstance(update, Update) or keel is None:
        return
    await keel.inbox.mark(update.update_id, "failed")
    if update.effective_chat is not None:
        try:
            await keel.notifier.send(
                update.effective_chat.id,
                "Something went wrong on my side and has been logged. Please try again.",
            )
        except Exception as exc:
            log.warning("could not tell chat %s about the error: %s", update.effective_chat.id,
                        exc)


def conversation_key(update: Update) -> tuple[int, int] | None:
    """Plain messages of one conversation are handled in order; commands and button presses
    are not queued behind a run (so /cancel reaches the run it cancels)."""
    message = update.message
    if message is None or (message.text or "").startswith("/"):
        return None
    thread = message.message_thread_id if message.is_topic_message else None
    return (message.chat_id, thread or 0)


def _dispatcher(app: Application[Any, Any, Any, Any, Any, Any], keel: KeelBot) -> Any:
    async def dispatch(update: Update) -> None:
        await app.process_update(update)
        # a command, a button or a message no run took is finished once its handler returned
        await keel.inbox.settle(update.update_id)

    return dispatch


async def start_app(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Initialise, recover, and start polling (what ``keel run`` does before it waits)."""
    await app.initialize()
    if app.post_init is not None:
        await app.post_init(app)
    await app.start()
    poller: Poller = app.bot_data["poller"]
    settings: Settings = app.bot_data["settings"]
    if settings.webhook_url:
        await _start_webhook(app, settings)
    else:
        poller.start()


async def _start_webhook(app: Application[Any, Any, Any, Any, Any, Any],
                         settings: Settings) -> None:
    """Listen first, then tell Telegram where to post: its first push finds the server up."""
    from bot.webhook import Server, WebhookIngress, webhook_path

    keel: KeelBot = app.bot_data["keel"]
    poller: Poller = app.bot_data["poller"]
    url = settings.webhook_url or ""
    secret = settings.webhook_secret_value()

    async def healthy() -> bool:
        return await keel.runtime.db.fetchval("SELECT 1") == 1

    ingress = WebhookIngress(app.bot, path=webhook_path(url), secret=secret,
                             store=keel.inbox.store, submit=poller.submit, healthy=healthy,
                             secrets=settings.secrets())
    host, port = settings.webhook_listen_address()
    server = Server(ingress, host, port)
    await server.start()
    app.bot_data["webhook_server"] = server
    # Never drop_pending_updates: what Telegram queued while keel was down is answered now.
    await app.bot.set_webhook(url, secret_token=secret, allowed_updates=ALLOWED_UPDATES,
                              max_connections=settings.webhook_max_connections,
                              drop_pending_updates=False)
    log.info("receiving updates by webhook at %s (listening on %s:%d)", url, host, server.port)


async def stop_app(app: Application[Any, Any, Any, Any, Any, Any], *,
                   grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """Stop within a bounded time: no new updates, runs in flight get ``grace_s`` to finish,
    the rest are cancelled and left (stored) to recovery at the next start."""
    server = app.bot_data.pop("webhook_server", None)
    if server is not None:  # no new updates; the webhook stays set, Telegram queues for us
        await server.stop()
    poller: Poller | None = app.bot_data.get("poller")
    if poller is not None:
        await poller.stop()
        cancelled = await poller.drain(grace_s)
        if cancelled:
            log.warning("%d update(s) still in flight at shutdown; the next start finishes them",
                        cancelled)
    if app.running:
        await app.stop()
    if app.post_shutdown is not None:
        await app.post_shutdown(app)
    await app.shutdown()


async def _serve(settings: Settings) -> int:
    app = build_application(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("starting (%s) against %s", "webhook" if settings.webhook_url else "long polling",
             settings.telegram_api_base_url)
    await start_app(app)
    # Fewer, larger young collections: a burst of chats allocates fast, and each collection
    # stops the loop (issue 15). Full collections follow Python's own rule.
    gc.set_threshold(20_000, 20, 10)
    # What start-up built (modules, classes, settings) lives as long as the process: frozen, a
    # full collection no longer walks it, which was most of the longest loop stalls in a burst
    # (a gen-2 collection up to 126 ms at 1,000 chats). Again once the model SDK is imported.
    gc.freeze()
    poller: Poller = app.bot_data["poller"]
    collector = asyncio.create_task(_pause_collector(poller))
    # quick reads on the loop while it is not in a burst (storage.db.Database.inline)
    app.bot_data["runtime"].db.inline = lambda: len(poller.tasks) < poller.crowd
    stopped = asyncio.create_task(poller.stopped.wait())
    asked = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped, asked}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    asked.cancel()
    collector.cancel()
    await stop_app(app)
    if poller.fatal is not None:
        raise poller.fatal
    return 0


CROWD_CHECK_S = 0.1
"""While a burst lasts, how often the collector's pause looks whether it is over."""
COLLECTOR_PAUSE_MAX_S = 60.0
"""Longest the cyclic collector stays paused in one go: a burst that lasts longer gets one young
collection this often, so that reference cycles made meanwhile wait at most this long."""


async def _pause_collector(poller: Poller) -> None:
    """While the poller is crowded (a burst), Python's cyclic garbage collector is paused;
    reference counting still frees every object that is not in a cycle. When the burst ends, one
    young collection frees the cycles made meanwhile and the collector runs again as usual.

    In a burst, each update keeps its objects (coroutines, tasks, requests, closures) alive for
    seconds, so a young collection, however often it runs, walks each of them once and finds
    nearly nothing to free. In 1,000-chat bursts, collections every 0.1 s took 410-580 ms of the
    event loop's time in all (~0.5 ms a message, 7-8% of the loop's samples while messages were
    being taken) and freed 0 objects; every 1 s, 455 ms in all and stalls of over 50 ms; left to
    Python's own trigger, young generations of ~80,000 objects and 40-60 ms stalls (issue 15).
    Paused, the collection after the burst walks only what outlived it and the cycles made
    meanwhile: 1-11 ms, freeing 1,300-2,000 objects, after 1,000 chats with a 1 s model; 30 ms,
    freeing 8,000, when a 10 s model had kept all 1,000 model connections open at once (a whole
    run's census of what was freed: mostly the sockets and transports of closed connections).
    A burst longer than ``COLLECTOR_PAUSE_MAX_S`` gets a young collection that often, which
    walks everything still alive that was made since the last one: at the peak of a 1,000-chat
    burst up to 83 ms (measured with the limit at 2 s), so at most one such stall a minute,
    against cycles held for as long as the burst lasts.
    """
    while True:
        # asleep until a burst: an idle bot's loop has nothing to wake for
        await poller.crowded.wait()
        ours = gc.isenabled()  # a collector someone else turned off stays off
        if ours:
            gc.disable()
        try:
            paused = time.monotonic()
            while len(poller.tasks) >= poller.crowd:
                await asyncio.sleep(CROWD_CHECK_S)
                if ours and time.monotonic() - paused >= COLLECTOR_PAUSE_MAX_S:
                    gc.collect(0)
                    paused = time.monotonic()
        finally:
            if ours:
                gc.enable()
                gc.collect(0)
        poller.crowded.clear()


def run_bot(settings: Settings) -> int:
    return asyncio.run(_serve(settings))
