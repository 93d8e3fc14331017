"""keel on several processes (issue 16): an ingress and any number of workers on PostgreSQL.

``keel serve`` (the ingress) receives updates — long polling or webhook — commits each to the inbox
exactly as ``keel run`` does, and defers one procrastinate job per update. ``keel worker`` runs
those jobs through the same handlers as ``keel run``. procrastinate (PostgreSQL-only, asyncio) is
the job engine; nothing here is a queue of our own:

- **Order per conversation**: a plain message's job carries the conversation as its procrastinate
  ``lock``, so one conversation's messages run one after another in the order they were deferred,
  different conversations in parallel on any worker. Commands and button presses carry no lock
  (``/cancel`` is not queued behind the run it cancels).
- **Once**: ``queueing_lock`` keeps one waiting job per update; a job for an update that is
  already answered does nothing (the inbox says so); side effects are keyed by the update.
- **A killed worker**: workers send heartbeats; every worker looks for jobs of workers silent for
  longer than ``STALLED_S`` and puts them back to run elsewhere. The retried job closes the dead
  attempt's run as interrupted and answers the update again under the same request key.
- **What runs once for the deployment** — schedules, and recovery of what a dead ingress left —
  runs on one elected worker (a PostgreSQL advisory lock held by its session; when that worker
  dies, its session ends and another takes over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from telegram import Update

from agents.config import Settings

log = logging.getLogger(__name__)

HANDLE_TASK = "keel.handle_update"
QUEUE = "keel"
HEARTBEAT_S = float(os.environ.get("KEEL_WORKER_HEARTBEAT_S", "5"))
"""How often a worker tells PostgreSQL it is alive."""
STALLED_S = float(os.environ.get("KEEL_WORKER_STALLED_S", "30"))
"""A worker silent this long is presumed dead; its running jobs are run again elsewhere."""
LEADER_RETRY_S = 5.0
FETCH_POLL_S = 1.0
"""A worker with nothing to do looks for jobs this often even without a notification."""
CANCEL_POLL_S = 0.5
"""How often a worker looks for /cancel requests another process stored for its runs."""
_LOCK_CLASS = 0x6B65656C  # "keel", as storage/pg.py's write lock


def require_postgres(settings: Settings) -> str:
    url = settings.database_url.get_secret_value() if settings.database_url else ""
    if not url.startswith(("postgresql://", "postgres://")):
        from agents.errors import ConfigError

        raise ConfigError("keel serve and keel worker share their work through PostgreSQL: set "
                          "KEEL_DATABASE_URL=postgresql://… (one process needs only `keel run`)")
    return url


def job_app(url: str) -> Any:
    """The procrastinate App over keel's database (its tables live beside keel's)."""
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))


async def ensure_job_schema(url: str) -> None:
    """Create procrastinate's tables once, whichever process gets here first."""
    app = job_app(url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        key = await _schema_key(conn, 1)
        await conn.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_CLASS, key))
        try:
            async with app.open_async():
                if not await app.job_manager.check_connection_async():
                    await app.schema_manager.apply_schema_async()
                    log.info("created procrastinate's tables")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_CLASS, key))


async def _schema_key(conn: psycopg.AsyncConnection[Any], offset: int) -> int:
    row = await (await conn.execute("SELECT current_schema()")).fetchone()
    schema = str(row[0]) if row and row[0] else "public"
    return zlib.crc32(f"{schema}/{offset}".encode()) - 2**31


def lock_of(update: Update) -> str | None:
    """The procrastinate lock of an update's job: its conversation for a plain message."""
    from bot.app import conversation_key

    key = conversation_key(update)
    return None if key is None else f"conversation:{key[0]}:{key[1]}"


class Deferrer:
    """The ingress's dispatch: one job per stored update."""

    def __init__(self, url: str) -> None:
        self.app = job_app(url)
        self._open: contextlib.AbstractAsyncContextManager[Any] | None = None

    async def open(self) -> None:
        self._open = self.app.open_async()
        await self._open.__aenter__()

    async def close(self) -> None:
        if self._open is not None:
            await self._open.__aexit__(None, None, None)
            self._open = None

    async def __call__(self, update: Update) -> None:
        await self.defer_with(self.app, update)

    @staticmethod
    async def defer_with(app: Any, update: Update) -> None:
        from procrastinate import exceptions

        try:
            await app.configure_task(
                HANDLE_TASK, queue=QUEUE, lock=lock_of(update),
                queueing_lock=f"update:{update.update_id}",
            ).defer_async(update_id=update.update_id)
        except exceptions.AlreadyEnqueued:
            log.debug("update %s already has a job waiting", update.update_id)


class Leadership:
    """Holds a session-level advisory lock while this process leads; ``on_lead`` runs once when
    it becomes the leader. Another process takes over when this one's session ends."""

    def __init__(self, url: str, on_lead: Callable[[], Awaitable[None]]) -> None:
        self.url = url
        self.on_lead = on_lead
        self.leading = False
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keel-leadership")

    async def _run(self) -> None:
        while not self.leading:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                key = await _schema_key(self._conn, 2)
                row = await (await self._conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, key))).fetchone()
                if row and row[0]:
                    self.leading = True
                    log.info("this worker leads: it runs the schedules and start-up recovery")
                    await self.on_lead()
                    return
            except psycopg.Error as exc:
                log.warning("leader election: %s; trying again", exc)
                if self._conn is not None:
                    await self._conn.close()
                self._conn = None
            await asyncio.sleep(LEADER_RETRY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()  # the lock goes with the session


async def retry_stalled(app: Any, *, every_s: float = HEARTBEAT_S,
                        stalled_s: float = STALLED_S) -> None:
    """Put jobs of silent workers back to 'todo' (every worker runs this; a job is retried once:
    procrastinate's retry takes the job's row lock and only moves it from 'doing')."""
    while True:
        await asyncio.sleep(every_s)
        try:
            stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_s)
            for job in stalled:
                with contextlib.suppress(Exception):  # another worker retried it first
                    await app.job_manager.retry_job(job)
                    log.warning("job %s (%s) of a silent worker runs again", job.id,
                                job.task_name)
            await app.job_manager.prune_stalled_workers(seconds_since_heartbeat=stalled_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("looking for stalled jobs failed; trying again")


async def cancel_requested(runtime: Any, *, every_s: float = CANCEL_POLL_S) -> None:
    """Cancel this process's runs that /cancel asked for in another process."""
    while True:
        await asyncio.sleep(every_s)
        try:
            for run_id in await runtime.runs.cancel_requests():
                if runtime.cancel(run_id):
                    log.info("run %s cancelled on request from another process", run_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("looking for cancel requests failed; trying again")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------------- recovery per role

REDEFER_AFTER_S = 60.0
"""An update stored this long ago, still unanswered and with no job waiting or running, gets a
job again (an ingress that died between commit and defer, a job cut off at shutdown)."""
MAX_JOBS_PER_UPDATE = 3
"""An update whose jobs failed this often is marked failed instead of being tried forever."""


async def recover_role(app: Any, keel: Any, role: str) -> tuple[int, int]:
    """What each process recovers at start. The ingress recovers nothing: it only stores and
    defers. A worker closes what a dead process on this host left (its runs, their holds), sends
    pending replies (leased: never two processes on one row) and resumes answered questions (the
    answered → resumed claim picks one process). Unanswered updates are the jobs' business: the
    leader re-defers those without a job (``redefer_orphans``)."""
    if role == "ingress":
        return 0, 0
    runtime = keel.runtime
    # Not every hold taken before now, as one process does at start: other workers' runs hold
    # money right now. Holds of closed runs go with them (close_interrupted); a hold older than
    # any run can last belongs to no live run.
    charged = await runtime.release_stale_holds(
        older_than_s=2 * runtime.settings.run_timeout_s + 60)
    if charged:
        log.warning("budget holds left by stopped processes charged as spent: $%.4f", charged)
    interrupted = await runtime.close_interrupted()
    if interrupted:
        log.warning("%d run(s) of a stopped process on this host were closed", interrupted)
    sent = await keel.outbox.sweep()
    await keel.escalations.recover()
    return sent, 0


async def redefer_orphans(jobs: Any, keel: Any, *, older_than_s: float = REDEFER_AFTER_S) -> int:
    """Give a job to every stored, unanswered update that has none waiting or running."""
    from datetime import UTC, datetime, timedelta

    from storage.db import iso

    moment = iso(datetime.now(UTC) - timedelta(seconds=older_than_s))
    deferred = 0
    for entry in await keel.inbox.unfinished_before(moment):
        queueing_lock = f"update:{entry.update_id}"
        earlier = list(await jobs.job_manager.list_jobs_async(queueing_lock=queueing_lock))
        if any(job.status in ("todo", "doing") for job in earlier):
            continue
        if len(earlier) >= MAX_JOBS_PER_UPDATE:
            log.error("update %s failed %d times; giving up on it", entry.update_id, len(earlier))
            await keel.inbox.mark(entry.update_id, "failed")
            continue
        update = Update.de_json(entry.payload, keel.bot)
        if update is None:
            await keel.inbox.mark(entry.update_id, "ignored")
            continue
        await Deferrer.defer_with(jobs, update)
        deferred += 1
    if deferred:
        log.warning("%d stored update(s) had no job; deferred again", deferred)
    return deferred


# ---------------------------------------------------------------------- the processes

async def serve_ingress(settings: Settings, stop: asyncio.Event) -> int:
    """``keel serve``: receive, store, defer; nothing else."""
    from bot.app import build_application, start_app, stop_app

    url = require_postgres(settings)
    await ensure_job_schema(url)
    deferrer = Deferrer(url)
    await deferrer.open()
    app = build_application(settings)
    app.bot_data["role"] = "ingress"
    app.bot_data["dispatch"] = deferrer
    try:
        await start_app(app)
        poller = app.bot_data["poller"]
        stopped = asyncio.create_task(poller.stopped.wait())
        asked = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, asked}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        asked.cancel()
        await stop_app(app)
        if poller.fatal is not None:
            raise poller.fatal
    finally:
        await deferrer.close()
    return 0


async def serve_worker(settings: Settings, stop: asyncio.Event, *, concurrency: int = 20) -> int:
    """``keel worker``: run the update jobs through keel's handlers; lead when elected."""
    from bot.app import _dispatcher, _upgrade, build_application, start_scheduler, stop_app

    url = require_postgres(settings)
    await ensure_job_schema(url)
    app = build_application(settings)
    app.bot_data["role"] = "worker"
    await app.initialize()
    if app.post_init is not None:
        await app.post_init(app)
    await app.start()
    # a worker polls nothing, so no first update moves its Telegram calls to aiohttp: they move
    # once a thread has imported it (bot/telegram_http.py)
    _upgrade(app.bot_data["telegram_requests"])
    keel = app.bot_data["keel"]
    dispatch = _dispatcher(app, keel)
    jobs = job_app(url)

    @jobs.task(name=HANDLE_TASK, queue=QUEUE)
    async def handle_update(update_id: int) -> None:
        entry = await keel.inbox.get(update_id)
        if entry is not None and entry.chat_id is not None:
            # replies a dead worker committed but did not send go out first, before this
            # update's: a chat's replies keep the order of its messages
            for item in await keel.outbox.repo.pending(chat_id=entry.chat_id):
                with contextlib.suppress(Exception):
                    await keel.outbox.deliver(item.id)
        if entry is None or entry.status not in ("received", "processing"):
            return  # answered already (a job run twice does nothing the second time)
        update = Update.de_json(entry.payload, keel.bot)
        if update is None:
            await keel.inbox.mark(update_id, "ignored")
            return
        # an earlier attempt's run (a worker that died with it) ends as interrupted; this one
        # answers under the same request key, so its side effects are not repeated
        await keel.runtime.close_request_runs(f"tg:{update_id}")
        try:
            await dispatch(update)
        finally:
            if lock_of(update) is not None:
                await wake_fetchers(jobs)

    async def wake_fetchers(app_: Any) -> None:
        """procrastinate wakes idle workers only when a job is inserted; the conversation's
        next message, waiting behind this job's lock, would otherwise wait for the next poll."""
        with contextlib.suppress(Exception):
            await app_.connector.execute_query_async(
                "SELECT pg_notify(%(channel)s, %(payload)s)", channel=f"procrastinate_queue_v1#{QUEUE}",
                payload='{"type": "job_inserted", "job_id": 0}')

    async def lead() -> None:
        await start_scheduler(app)
        while True:
            try:
                await redefer_orphans(jobs, keel)
            except Exception:
                log.exception("re-deferring unanswered updates failed; trying again")
            await asyncio.sleep(REDEFER_AFTER_S / 2)

    leadership = Leadership(url, lead)
    async with jobs.open_async():
        worker = asyncio.create_task(jobs.run_worker_async(
            queues=[QUEUE], concurrency=concurrency, name=worker_name(), wait=True,
            install_signal_handlers=False, update_heartbeat_interval=HEARTBEAT_S,
            stalled_worker_timeout=STALLED_S, shutdown_graceful_timeout=10.0,
            fetch_job_polling_interval=FETCH_POLL_S,
            delete_jobs="successful"), name="keel-worker")
        retrying = asyncio.create_task(retry_stalled(jobs), name="keel-stalled-jobs")
        cancelling = asyncio.create_task(cancel_requested(keel.runtime), name="keel-cancels")
        leadership.start()
        log.info("keel worker %s is up (concurrency %d)", worker_name(), concurrency)
        asked = asyncio.create_task(stop.wait())
        await asyncio.wait({worker, asked}, return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        retrying.cancel()
        cancelling.cancel()
        await leadership.stop()
        if not worker.done():
            worker.cancel()  # procrastinate finishes running jobs within its graceful timeout
        await asyncio.gather(worker, retrying, cancelling, return_exceptions=True)
    await stop_app(app)
    return 0


def run_role(settings: Settings, role: str, *, concurrency: int = 20) -> int:
    """Run ``keel serve`` or ``keel worker`` until SIGINT/SIGTERM."""
    import signal

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if role == "ingress":
            return await serve_ingress(settings, stop)
        return await serve_worker(settings, stop, concurrency=concurrency)

    return asyncio.run(main())
