"""Scheduled runs: run the agent for a fired schedule and post the outcome where it belongs.

Every scheduled run posts its outcome into its thread: the briefing, or what went wrong with the
run's trace id. The post is committed to the outbox with the run's outcome and delivered from
there; it counts as delivered only when Telegram accepted every part. The outbox's sender is the
one retry layer; when it gives up, a run that had completed is marked ``failed`` ("delivery
failed: …") and the owner gets one alert in a private chat. A run that asks a human
(``waiting_human``) posts its question through the escalation flow, in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from agents.errors import KeelError
from agents.guards import GuardContext, Guards
from agents.notify import Delivered, DeliveryError, Mailbox, Notifier, NotifierMailbox
from agents.run import RunResult, RunStatus, describe
from agents.runtime import RunRequest, Runtime
from agents.schedule import ScheduledJob
from agents.tools.send_file import files_sent
from storage.db import now_iso
from storage.files import Blobs
from storage.outbox import OutboxRepository

log = logging.getLogger(__name__)

OnEscalation = Callable[[Any, RunResult, int, int | None], Awaitable[int]]
"""The bot's escalation flow: inside the transaction that parks the run, store its question for
(chat, thread) and return the question's outbox id."""
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class ScheduledOutcome:
    job: str
    run_id: str
    status: RunStatus | Literal["not_started", "skipped"]
    """The run's final status as recorded (``failed`` when a completed briefing was not
    delivered), ``not_started`` when the run was refused before it began, or ``skipped`` when
    the schedule's guard found nothing new (no run, $0)."""
    delivered: bool
    """True only when the outcome's post was accepted by the platform."""
    chat_id: int
    thread_id: int | None
    trace_id: str | None = None
    message_ids: tuple[int, ...] = ()
    error: str | None = None


class ScheduledRunner:
    """The scheduler's fire handler: ``await runner(job, scheduled_time, run_id)``.

    The fire's claim row is the stored request; the run's outcome, its post (or question) and the
    fire's ``done`` commit in one transaction, and the post is delivered from the outbox. A crash
    before that commit re-runs the fire at the next start (side effects are idempotent per fire);
    a crash after it delivers the post from the outbox, once."""

    def __init__(
        self,
        runtime: Runtime,
        notifier: Notifier,
        *,
        mailbox: Mailbox | None = None,
        on_escalation: OnEscalation | None = None,
        owner_id: int | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.runtime = runtime
        self.notifier = notifier
        self.mailbox: Mailbox = mailbox or NotifierMailbox(runtime.db, notifier,
                                                           Blobs(runtime.settings.files_dir))
        self.on_escalation = on_escalation
        allowed = runtime.settings.allowed_user_ids
        owner = getattr(runtime.settings, "owner_id", None)
        # KEEL_ALLOWED_USER_IDS is a set; the lowest id stands in for "the first one".
        self.owner_id = owner_id if owner_id is not None else (
            owner if owner is not None else (min(allowed) if allowed else None))
        self.sleep = sleep
        self._topic_lock = asyncio.Lock()
        self.guards = Guards()

    async def __call__(self, job: ScheduledJob, scheduled: datetime, run_id: str, *,
                       key: str | None = None) -> ScheduledOutcome:
        fire_key = key or job.local_key(scheduled)  # the claim's key: its request
        if job.guard:  # issue 13: a cheap check before any model call
            why = await self.guards.nothing_new(job.guard, GuardContext(
                schedule=job.name, agent=job.agent, scheduled=scheduled, task=job.task))
            if why is not None:
                return await self._skipped(job, fire_key, run_id, why)
        thread_id, note = await self.thread_for(job)
        when = scheduled.astimezone(job.tz).strftime("%Y-%m-%d %H:%M")
        spec = self.runtime.agents.get(job.agent)  # unknown: runtime.run refuses it below
        request = RunRequest(
            agent=job.agent, kind="scheduled", chat_id=job.chat_id, thread_id=thread_id,
            messages=[{"role": "user", "content": [{"type": "text", "text": (
                f"[Scheduled run {job.name!r} for {when} ({job.timezone})]\n\n{job.task}")}]}],
            new_from=0,
            limits=spec.limits.overridden(budget_usd=job.budget_usd) if spec else None,
            request_key=f"fire:{job.name}:{fire_key}", schedule=job.name,
        )
        items: list[int] = []

        async def commit(conn: Any, result: RunResult) -> None:
            if result.status == "waiting_human" and self.on_escalation is not None:
                items.append(await self.on_escalation(conn, result, job.chat_id, thread_id))
            else:
                for file in files_sent(result.messages):  # send_file: delivered once, first
                    items.append(await self.mailbox.put(
                        conn, chat_id=job.chat_id, thread_id=thread_id, reply_to=None,
                        markdown=file.get("caption") or "", run_id=result.run_id, file=file))
                text = post_text(job, result)
                if note:
                    text = f"{text}\n\n_{note}_"
                items.append(await self.mailbox.put(conn, chat_id=job.chat_id,
                                                    thread_id=thread_id, reply_to=None,
                                                    markdown=text, run_id=result.run_id))
                if result.status == "budget_exceeded" and result.state and self.on_escalation:
                    # a budget halt escalates like a question: more budget, or stop here
                    items.append(await self.on_escalation(conn, result, job.chat_id, thread_id))
            await fire_done(conn, job.name, fire_key, "done")

        try:
            result = await self.runtime.run(request, run_id=run_id, on_commit=commit)
        except KeelError as exc:  # refused before it began: daily cap, config
            return await self._not_started(job, fire_key, run_id, thread_id, str(exc))
        except Exception as exc:
            log.exception("scheduled run %s (%s) crashed before it finished", job.name, run_id)
            return await self._not_started(job, fire_key, run_id, thread_id,
                                           f"internal error: {type(exc).__name__}")
        return await self._deliver(job, result, thread_id, items)

    async def _deliver(self, job: ScheduledJob, result: RunResult, thread_id: int | None,
                       items: list[int]) -> ScheduledOutcome:
        """Deliver what the run committed; a post Telegram would not take fails a completed run
        and alerts the owner (the one retry layer is the outbox's own)."""
        status: RunStatus = result.status
        ids: list[int] = []
        error: str | None = None
        for item in items:
            try:
                delivered = await self.mailbox.deliver(item)
            except DeliveryError as exc:
                error = str(exc) or type(exc).__name__
                await OutboxRepository(self.runtime.db).failed(item, error)
                break
            except Exception as exc:  # the contract says DeliveryError; a bug is no delivery
                log.exception("delivery raised %s", type(exc).__name__)
                error = f"{type(exc).__name__}: {exc}"
                await OutboxRepository(self.runtime.db).failed(item, error)
                break
            if delivered is not None:
                ids.extend(delivered.message_ids)
        self._trace(result, ids if error is None else None, error, job.chat_id, thread_id)
        if error is None:
            log.info("scheduled run %s %s: delivered to %s/%s", job.name, result.status,
                     job.chat_id, thread_id)
            return ScheduledOutcome(job=job.name, run_id=result.run_id, status=status,
                                    delivered=True, chat_id=job.chat_id, thread_id=thread_id,
                                    trace_id=result.trace_id, message_ids=tuple(ids))
        if result.status == "completed":
            status = "failed"
            await self.runtime.runs.set_status(result.run_id, "failed",
                                               f"delivery failed: {error}")
        log.error("scheduled run %s: could not deliver to %s/%s: %s", job.name, job.chat_id,
                  thread_id, error)
        await self._alert_owner(
            f"⚠️ Scheduled run `{job.name}` ({job.agent}) could not be delivered to chat "
            f"{job.chat_id}{_thread(thread_id)}: {error}\n"
            f"The run is {status}. Trace: `{result.trace_id}`")
        return ScheduledOutcome(job=job.name, run_id=result.run_id, status=status,
                                delivered=False, chat_id=job.chat_id, thread_id=thread_id,
                                trace_id=result.trace_id, error=error)

    # ------------------------------------------------------------------ where it goes

    async def thread_for(self, job: ScheduledJob) -> tuple[int | None, str | None]:
        """The thread to post in, and a note when the agent's topic could not be created.

        With ``create_topic`` the agent gets one forum topic per chat, created on its first run
        and remembered in ``agent_topics``."""
        if job.thread_id is not None or not job.create_topic:
            return job.thread_id, None
        async with self._topic_lock:  # two jobs of one agent firing together create one topic
            existing = await self.runtime.db.fetchval(
                "SELECT thread_id FROM agent_topics WHERE agent = ? AND chat_id = ?",
                (job.agent, job.chat_id))
            if existing is not None:
                return int(existing), None
            try:
                thread_id = await self.notifier.create_topic(job.chat_id, job.agent)
            except Exception as exc:
                log.warning("could not create a topic for %s in chat %s: %s", job.agent,
                            job.chat_id, exc)
                return None, (f"keel could not create the {job.agent!r} topic here ({exc}); "
                              "posting in the chat instead")
            await self.runtime.db.execute_write(
                "INSERT INTO agent_topics (agent, chat_id, thread_id, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (job.agent, job.chat_id, thread_id, now_iso()))
            return thread_id, None

    # ------------------------------------------------------------------ delivery

    async def _post(self, chat_id: int, text: str, thread_id: int | None, *,
                    fire: tuple[str, str] | None = None) -> tuple[Delivered | None, str | None]:
        """A message outside a run's outcome (a refusal, an alert), through the outbox."""
        async with self.runtime.db.write() as conn:
            item = await self.mailbox.put(conn, chat_id=chat_id, thread_id=thread_id,
                                          reply_to=None, markdown=text)
            if fire is not None:
                await fire_done(conn, fire[0], fire[1], "failed")
        try:
            return await self.mailbox.deliver(item), None
        except Exception as exc:
            return None, str(exc) or type(exc).__name__

    async def _alert_owner(self, text: str) -> bool:
        if self.owner_id is None:
            log.error("no owner to alert (KEEL_ALLOWED_USER_IDS is empty): %s", text)
            return False
        delivered, error = await self._post(self.owner_id, text, None)
        if delivered is None:
            log.error("could not alert the owner %s either: %s", self.owner_id, error)
        return delivered is not None

    async def _not_started(self, job: ScheduledJob, fire_key: str, run_id: str,
                           thread_id: int | None, reason: str) -> ScheduledOutcome:
        log.warning("scheduled run %s did not start: %s", job.name, reason)
        text = f"⚠️ Scheduled run `{job.name}` ({job.agent}) did not start: {reason}"
        delivered, error = await self._post(job.chat_id, text, thread_id,
                                            fire=(job.name, fire_key))
        if delivered is None:
            await self._alert_owner(f"{text}\n(And the alert could not be posted to chat "
                                    f"{job.chat_id}{_thread(thread_id)}: {error})")
        return ScheduledOutcome(job=job.name, run_id=run_id, status="not_started",
                                delivered=delivered is not None, chat_id=job.chat_id,
                                thread_id=thread_id, error=reason,
                                message_ids=delivered.message_ids if delivered else ())

    async def _skipped(self, job: ScheduledJob, fire_key: str, run_id: str,
                       why: str) -> ScheduledOutcome:
        """The guard found nothing new: the fire ends ``skipped``, no run, $0; the schedule's
        ``guard_message`` is posted when it has one."""
        log.info("scheduled run %s skipped: %s", job.name, why)
        if not job.guard_message:
            async with self.runtime.db.write() as conn:
                await fire_done(conn, job.name, fire_key, "skipped")
            return ScheduledOutcome(job=job.name, run_id=run_id, status="skipped", delivered=False,
                                    chat_id=job.chat_id, thread_id=job.thread_id, error=None)
        thread_id, _ = await self.thread_for(job)
        async with self.runtime.db.write() as conn:
            item = await self.mailbox.put(conn, chat_id=job.chat_id, thread_id=thread_id,
                                          reply_to=None, markdown=job.guard_message)
            await fire_done(conn, job.name, fire_key, "skipped")
        try:
            delivered = await self.mailbox.deliver(item)
        except Exception as exc:
            log.warning("scheduled run %s: the skip message was not delivered: %s", job.name, exc)
            delivered = None
        return ScheduledOutcome(job=job.name, run_id=run_id, status="skipped",
                                delivered=delivered is not None, chat_id=job.chat_id,
                                thread_id=thread_id,
                                message_ids=delivered.message_ids if delivered else ())

    def _trace(self, result: RunResult, message_ids: list[int] | None, error: str | None,
               chat_id: int, thread_id: int | None) -> None:
        # Appended to the run's own trace, after run_end: what happened to its outcome.
        try:
            trace = self.runtime.traces.writer(trace_id=result.trace_id, run_id=result.run_id)
        except OSError:
            return
        try:
            trace.emit("delivery", status="delivered" if message_ids is not None else "failed",
                       chat_id=chat_id, thread_id=thread_id, attempts=1, error=error,
                       message_ids=message_ids or [])
        finally:
            trace.close()


async def fire_done(conn: Any, job: str, local_time: str, status: str) -> None:
    """Finish a fire's claim inside the transaction that commits what it produced."""
    await conn.execute("UPDATE schedule_fires SET status = ? WHERE job = ? AND local_time = ?",
                       (status, job, local_time))


def post_text(job: ScheduledJob, result: RunResult) -> str:
    """What the thread sees: the briefing, or what stopped the run and its trace id."""
    if result.status == "completed" and result.output:
        return result.output
    detail = f": {result.detail}" if result.detail else ""
    if result.status == "completed":
        detail = ": it finished without an answer"
    return (f"⚠️ Scheduled run `{job.name}` ({job.agent}) {describe(result.status)}{detail}\n"
            f"Trace: `{result.trace_id}`")


def _thread(thread_id: int | None) -> str:
    return f" (thread {thread_id})" if thread_id is not None else ""
