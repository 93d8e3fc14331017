"""Scheduled runs: run the agent for a fired schedule and post the outcome where it belongs.

Every scheduled run posts its outcome into its thread: the briefing, or what went wrong with the
run's trace id. A briefing counts as delivered only when ``Notifier.send`` returned (Telegram
accepted every part). Delivery is retried a bounded number of times with backoff; when it still
fails, a run that had completed is marked ``failed`` ("delivery failed: …") and the owner gets
one alert in a private chat. A run that asks a human (``waiting_human``) is handed to the
escalation flow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from agents.errors import KeelError
from agents.notify import Delivered, DeliveryError, Notifier
from agents.run import RunResult, RunStatus, describe
from agents.runtime import RunRequest, Runtime
from agents.schedule import ScheduledJob
from storage.db import now_iso

log = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = 3
DELIVERY_BACKOFF_S = 2.0
"""Wait before the second attempt; doubled before each next one."""

OnEscalation = Callable[[RunResult, int, int | None], Awaitable[None]]
"""The bot's escalation flow: post the question of a parked run into (chat, thread)."""
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class ScheduledOutcome:
    job: str
    run_id: str
    status: RunStatus | Literal["not_started"]
    """The run's final status as recorded (``failed`` when a completed briefing was not
    delivered), or ``not_started`` when the run was refused before it began."""
    delivered: bool
    """True only when the outcome's post was accepted by the platform."""
    chat_id: int
    thread_id: int | None
    trace_id: str | None = None
    message_ids: tuple[int, ...] = ()
    error: str | None = None


class ScheduledRunner:
    """The scheduler's fire handler: ``await runner(job, scheduled_time, run_id)``."""

    def __init__(
        self,
        runtime: Runtime,
        notifier: Notifier,
        *,
        on_escalation: OnEscalation | None = None,
        owner_id: int | None = None,
        attempts: int = DELIVERY_ATTEMPTS,
        backoff_s: float = DELIVERY_BACKOFF_S,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.runtime = runtime
        self.notifier = notifier
        self.on_escalation = on_escalation
        allowed = runtime.settings.allowed_user_ids
        # KEEL_ALLOWED_USER_IDS is a set; the lowest id stands in for "the first one".
        self.owner_id = owner_id if owner_id is not None else (min(allowed) if allowed else None)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sleep = sleep
        self._topic_lock = asyncio.Lock()

    async def __call__(self, job: ScheduledJob, scheduled: datetime, run_id: str) -> ScheduledOutcome:
        thread_id, note = await self.thread_for(job)
        when = scheduled.astimezone(job.tz).strftime("%Y-%m-%d %H:%M")
        spec = self.runtime.agents.get(job.agent)  # unknown: runtime.run refuses it below
        request = RunRequest(
            agent=job.agent, kind="scheduled", chat_id=job.chat_id, thread_id=thread_id,
            messages=[{"role": "user", "content": [{"type": "text", "text": (
                f"[Scheduled run {job.name!r} for {when} ({job.timezone})]\n\n{job.task}")}]}],
            new_from=0,
            limits=spec.limits.overridden(budget_usd=job.budget_usd) if spec else None,
        )
        try:
            result = await self.runtime.run(request, run_id=run_id)
        except KeelError as exc:  # refused before it began: daily cap, config
            return await self._not_started(job, run_id, thread_id, str(exc))
        except Exception as exc:
            log.exception("scheduled run %s (%s) crashed before it finished", job.name, run_id)
            return await self._not_started(job, run_id, thread_id,
                                           f"internal error: {type(exc).__name__}")

        if result.status == "waiting_human":
            return await self._escalate(job, result, thread_id, note)
        text = post_text(job, result)
        if note:
            text = f"{text}\n\n_{note}_"
        delivered, error, attempts = await self.deliver(job.chat_id, text, thread_id)
        status: RunStatus = result.status
        self._trace(result, delivered, error, attempts, job.chat_id, thread_id)
        if delivered is not None:
            log.info("scheduled run %s %s: delivered to %s/%s", job.name, result.status,
                     job.chat_id, thread_id)
            if result.status == "budget_exceeded" and result.state and self.on_escalation:
                # a budget halt escalates like a question: more budget, or stop here
                await self.on_escalation(result, job.chat_id, thread_id)
            return ScheduledOutcome(job=job.name, run_id=result.run_id, status=status,
                                    delivered=True, chat_id=job.chat_id, thread_id=thread_id,
                                    trace_id=result.trace_id, message_ids=delivered.message_ids)
        if result.status == "completed":
            status = "failed"
            await self.runtime.runs.set_status(result.run_id, "failed",
                                               f"delivery failed: {error}")
        log.error("scheduled run %s: could not deliver to %s/%s after %d attempt(s): %s",
                  job.name, job.chat_id, thread_id, attempts, error)
        await self._alert_owner(
            f"⚠️ Scheduled run `{job.name}` ({job.agent}) could not be delivered to chat "
            f"{job.chat_id}{_thread(thread_id)} after {attempts} attempt(s): {error}\n"
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
                "INSERT OR IGNORE INTO agent_topics (agent, chat_id, thread_id, created_at)"
                " VALUES (?, ?, ?, ?)", (job.agent, job.chat_id, thread_id, now_iso()))
            return thread_id, None

    # ------------------------------------------------------------------ delivery

    async def deliver(self, chat_id: int, text: str,
                      thread_id: int | None) -> tuple[Delivered | None, str | None, int]:
        """Send with bounded retries: (what was delivered or None, the last error, attempts)."""
        error = "not sent"
        for attempt in range(1, self.attempts + 1):
            try:
                return await self.notifier.send(chat_id, text, thread_id=thread_id), None, attempt
            except DeliveryError as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # the contract says DeliveryError; a bug is no delivery
                log.exception("notifier.send raised %s", type(exc).__name__)
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.attempts:
                await self.sleep(self.backoff_s * 2 ** (attempt - 1))
        return None, error, self.attempts

    async def _alert_owner(self, text: str) -> bool:
        if self.owner_id is None:
            log.error("no owner to alert (KEEL_ALLOWED_USER_IDS is empty): %s", text)
            return False
        try:
            await self.notifier.send(self.owner_id, text)
            return True
        except Exception as exc:
            log.error("could not alert the owner %s either: %s", self.owner_id, exc)
            return False

    async def _escalate(self, job: ScheduledJob, result: RunResult, thread_id: int | None,
                        note: str | None) -> ScheduledOutcome:
        if self.on_escalation is not None:
            try:
                await self.on_escalation(result, job.chat_id, thread_id)
            except Exception as exc:
                log.exception("escalation of scheduled run %s could not be posted", job.name)
                return ScheduledOutcome(job=job.name, run_id=result.run_id,
                                        status=result.status, delivered=False,
                                        chat_id=job.chat_id, thread_id=thread_id,
                                        trace_id=result.trace_id, error=str(exc))
            return ScheduledOutcome(job=job.name, run_id=result.run_id, status=result.status,
                                    delivered=True, chat_id=job.chat_id, thread_id=thread_id,
                                    trace_id=result.trace_id)
        reason = result.escalation.request.reason if result.escalation else result.detail
        text = (f"⏸ Scheduled run `{job.name}` ({job.agent}) is waiting for a human answer: "
                f"{reason}\nTrace: `{result.trace_id}`")
        delivered, error, _ = await self.deliver(job.chat_id, text, thread_id)
        return ScheduledOutcome(job=job.name, run_id=result.run_id, status=result.status,
                                delivered=delivered is not None, chat_id=job.chat_id,
                                thread_id=thread_id, trace_id=result.trace_id, error=error,
                                message_ids=delivered.message_ids if delivered else ())

    async def _not_started(self, job: ScheduledJob, run_id: str, thread_id: int | None,
                           reason: str) -> ScheduledOutcome:
        log.warning("scheduled run %s did not start: %s", job.name, reason)
        text = f"⚠️ Scheduled run `{job.name}` ({job.agent}) did not start: {reason}"
        delivered, error, _ = await self.deliver(job.chat_id, text, thread_id)
        if delivered is None:
            await self._alert_owner(f"{text}\n(And the alert could not be posted to chat "
                                    f"{job.chat_id}{_thread(thread_id)}: {error})")
        return ScheduledOutcome(job=job.name, run_id=run_id, status="not_started",
                                delivered=delivered is not None, chat_id=job.chat_id,
                                thread_id=thread_id, error=reason,
                                message_ids=delivered.message_ids if delivered else ())

    def _trace(self, result: RunResult, delivered: Delivered | None, error: str | None,
               attempts: int, chat_id: int, thread_id: int | None) -> None:
        # Appended to the run's own trace, after run_end: what happened to its outcome.
        try:
            trace = self.runtime.traces.writer(trace_id=result.trace_id, run_id=result.run_id)
        except OSError:
            return
        try:
            trace.emit("delivery", status="delivered" if delivered else "failed",
                       chat_id=chat_id, thread_id=thread_id, attempts=attempts, error=error,
                       message_ids=list(delivered.message_ids) if delivered else [])
        finally:
            trace.close()


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
