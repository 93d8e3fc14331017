"""The runtime: everything a run needs, assembled once per process, free of Telegram.

The bot, the scheduler and the command line all start runs through ``Runtime.run`` so the same
limits, traces, ledger and statuses hold whichever door a run came in by.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, assert_never

from agents import approvals, reflexion
from agents.affordability import Affordability
from agents.attachments import AttachmentClient
from agents.budget import LedgerGate
from agents.caching import CacheForecast, CachePlan, plan_cache
from agents.config import KeelFile, Settings
from agents.config_check import (
    CheckedConfig,
    Problem,
    assemble_agents,
    check_configuration,
    describe,
    load_configuration,
)
from agents.errors import ConfigError, DailyCapExceeded, KeelError, ModelCallError
from agents.executor import Hooks, execute
from agents.executor.loop import OnProgress
from agents.executor.plan import execute_plan, resume_plan
from agents.ids import new_id
from agents.model.types import ModelClient, ModelRequest, ModelResponse, OnText
from agents.patterns import Patterns
from agents.pricing import PriceTable, Usage
from agents.router import ROUTER_AGENT, RouteDecision, routable, route
from agents.run import Run, RunKind, RunResult
from agents.spec import AgentSpec, Limits
from agents.tools import ToolRegistry
from agents.tools.contract import ToolContext
from agents.tools.mcp import hub_of
from agents.tools.send_file import FILES_DIR_EXTRA, FILES_MAX_EXTRA
from storage.connect import open_database
from storage.conversation_model import ConversationModels
from storage.conversations import ConversationRepository
from storage.db import Database, WriteConnection, now_iso
from storage.files import Blobs
from storage.idempotency import IdempotencyStore
from storage.ledger import CostReport, DailyCaps, Ledger, Scope
from storage.runs import RunRepository, RunTotals
from storage.session_counts import SessionAnchor, SessionCounts
from storage.traces import Redactor, TraceStore, TraceWriter, day_of
from storage.usage import UsageDelta, UsageLedger

log = logging.getLogger(__name__)


OnCommit = Callable[[Any, RunResult], Awaitable[None]]
"""Called inside the write transaction that records a run's final status, with that transaction's
connection: what the run's outcome causes (its reply in the outbox, its history, its request
finished) commits with it or not at all."""

ROUTE_TIMEOUT_S = 20.0
"""The most routing may take of a run's deadline; past it the default agent answers."""


class UnknownAgentError(KeelError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"No agent named {name!r}. Known agents: {', '.join(sorted(known))}.")


class _NoModel:
    """The model client of a process that must not call the model (``Runtime.open``)."""

    async def create(self, request: ModelRequest, *,
                     on_text: OnText | None = None) -> ModelResponse:
        raise ModelCallError("this process (keel serve) does not call the model; a worker does")


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """Who asks which agent to do what, and where the answer goes."""

    agent: str
    messages: list[dict[str, Any]]
    """History (oldest first) followed by this run's task message."""
    new_from: int
    kind: RunKind = "cli"
    user_id: int | None = None
    chat_id: int | None = None
    thread_id: int | None = None
    session_id: int | None = None
    limits: Limits | None = None
    route: RouteDecision | None = None
    """How the agent was chosen; its cost counts against this run's budget."""
    request_key: str | None = None
    """The stored request this run serves; side effects are idempotent per request, so a run
    retried after a crash never repeats one."""
    schedule: str | None = None
    """The schedule that fired this run: its own daily cap applies."""
    started: float | None = None
    """``time.monotonic()`` when the request was taken: the deadline counts from here, so it
    covers routing and any wait before the run."""
    session_anchor: SessionAnchor | None = None
    """The exact input size the session kept from its last turn (tightens the first reservation)."""
    cache_forecast: CacheForecast | None = None
    """The session's rhythm, from which the run's cache TTLs are chosen (``plan_cache``)."""
    parent_trace_id: str | None = None
    """The run that fanned this one out (``research``): its trace links this run's."""
    on_start: Callable[[WriteConnection], Awaitable[None]] | None = None
    """Written in the transaction that records the run's start (with its first model call's
    hold): what the run's start means for the request it serves (its inbox row taken)."""
    daily_caps_checked: bool = False
    """The caller checked the daily caps a moment ago and called no model since: the run's
    start does not read them again (each model call's hold still holds them)."""
    chat_model: str | None = None
    chat_model_known: bool = False
    """The caller just read the chat's row: ``chat_model`` is its /model choice (None: none),
    and the run does not read the row again."""
    purpose: Literal["turn", "compaction"] = "turn"
    """``compaction``: the agent summarises its own session over the prefix its last turn cached
    (``agents.sessions``): the chat's model, no graders, free text whatever its output type."""


class Runtime:
    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        model: ModelClient,
        registry: ToolRegistry,
        agents: dict[str, AgentSpec],
        prices: PriceTable,
        keel_file: KeelFile,
    ) -> None:
        self.settings = settings
        self.db = db
        self.model = model
        self.registry = registry
        self.agents = agents
        self.prices = prices
        self.keel_file = keel_file
        self.traces = TraceStore(settings.traces_dir, redactor=Redactor(settings.secrets()))
        self.runs = RunRepository(db)
        self.usage = UsageLedger(db)
        self.idempotency = IdempotencyStore(db)
        self.conversations = ConversationRepository(db)
        self.patterns = Patterns(self, request_type=RunRequest)
        self._active: dict[str, tuple[Run, asyncio.Task[Any]]] = {}
        self._cancel_at_start: set[str] = set()  # /cancel arrived before the run began
        self._closing: set[asyncio.Future[None]] = set()
        """Finished runs' traces being fsynced and closed, off their replies' path."""

    # ------------------------------------------------------------------ assembly

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        model: ModelClient | None = None,
        registry: ToolRegistry | None = None,
        calls_model: bool = True,
    ) -> Runtime:
        """``calls_model=False``: a process that never calls the model (the ingress of
        ``keel serve``) starts without ANTHROPIC_API_KEY; a call would fail with one line."""
        # the same check `keel doctor` runs: any problem refuses the start, all of them listed
        checked = load_configuration(settings, registry=registry)
        keel_file, prices = checked.keel_file, checked.prices
        registry, agents = checked.registry, checked.agents
        if model is None and not calls_model and settings.anthropic_api_key is None:
            model = _NoModel()
        if model is None:
            from agents.model.anthropic_client import AnthropicModelClient

            # images and PDFs travel as references and become bytes only on the wire
            model = AttachmentClient(AnthropicModelClient(
                api_key=settings.require_anthropic_key(),
                base_url=settings.anthropic_base_url,
                max_retries=settings.anthropic_max_retries,
                timeout_s=settings.run_timeout_s,
            ), Blobs(settings.files_dir))
        db = await open_database(settings)
        if (hub := hub_of(registry)) is not None:  # MCP servers: connected now, bounded
            await hub.start()
        return cls(settings=settings, db=db, model=model, registry=registry, agents=agents,
                   prices=prices, keel_file=keel_file)

    async def close(self) -> None:
        if self._closing:  # finished runs' traces are on disk before the process goes
            await asyncio.gather(*self._closing, return_exceptions=True)
        close: Callable[[], Any] | None = getattr(self.model, "close", None)
        if close is not None:
            await close()
        if (hub := hub_of(self.registry)) is not None:
            await hub.close()
        await self.db.close()

    def reload(self) -> CheckedConfig:
        """Read keel.toml again through the check `keel run` starts with. Without a problem its
        agents, prices and schedules replace the running ones in one step (no await between the
        assignments, so no run sees half of each); with any, nothing changes and the problems
        are returned in ``problems``. Tool modules load into the running registry (a new tool
        is added; MCP servers and environment settings need a restart)."""
        checked = check_configuration(self.settings, registry=self.registry)
        if not checked.problems:
            self.keel_file, self.prices, self.agents = (checked.keel_file, checked.prices,
                                                        checked.agents)
            self.__dict__.pop("affordability", None)  # a cached view of the old prices
        return checked

    def agent(self, name: str) -> AgentSpec:
        try:
            return self.agents[name]
        except KeyError:
            raise UnknownAgentError(name, list(self.agents)) from None

    @property
    def default_agent(self) -> str:
        name = self.keel_file.default_agent
        return name if name in self.agents else next(iter(self.agents))

    # ------------------------------------------------------------------ runs

    async def check_daily_caps(self, user_id: int | None, schedule: str | None = None) -> None:
        """Refuse to start a run when a daily cap has nothing left (spent + held). Only a fast
        refusal: what bounds the day is each call's hold (``attach_ledger``)."""
        caps = self.daily_caps(schedule)
        used = await self.ledger.used(caps, user_id=user_id, schedule=schedule)  # one read
        if "user" in used and caps.per_user_usd is not None \
                and used["user"] >= caps.per_user_usd:
            raise DailyCapExceeded(f"user {user_id}", used["user"], caps.per_user_usd)
        if "schedule" in used and caps.per_schedule_usd is not None \
                and used["schedule"] >= caps.per_schedule_usd:
            raise DailyCapExceeded(f"schedule {schedule!r}", used["schedule"],
                                   caps.per_schedule_usd)
        if "all" in used and caps.total_usd is not None and used["all"] >= caps.total_usd:
            raise DailyCapExceeded("all users", used["all"], caps.total_usd)

    @functools.cached_property
    def ledger(self) -> Ledger:
        """The daily ledger every model call of every run is held in."""
        return Ledger(self.db)

    def daily_caps(self, schedule: str | None = None) -> DailyCaps:
        """The daily caps from the settings (and the schedule's own, when it names one)."""
        per_schedule = self.settings.daily_budget_usd_per_schedule
        for job in self.keel_file.schedules:
            if schedule is not None and job.name == schedule and job.daily_budget_usd is not None:
                per_schedule = job.daily_budget_usd
        return DailyCaps(total_usd=self.settings.daily_budget_usd_total,
                         per_user_usd=self.settings.daily_budget_usd_per_user,
                         per_schedule_usd=per_schedule)

    @functools.cached_property
    def affordability(self) -> Affordability:
        """First-call needs of agents (routing leaves out those a budget cannot cover)."""
        return Affordability(model=self.model, prices=self.prices, registry=self.registry,
                             executor_model=self.settings.executor_model,
                             planner_model=self.settings.planner_model,
                             conversations=self.conversations, counts=SessionCounts(self.db))

    def attach_ledger(self, run: Run, *, schedule: str | None = None) -> None:
        """Hold every model call of ``run`` in the daily ledger, against every daily cap that
        applies (overall, its user's, its schedule's). Call once a Run exists, before it calls
        the model: new, resumed and continued runs alike."""
        gate = LedgerGate(self.ledger, self.daily_caps(schedule), run_id=run.id,
                          agent=run.agent.name, user_id=run.user_id, schedule=schedule)
        gate.defer_last_settle = True  # written with the outcome (``_finish``): one hop less
        run.budget.gate = gate

    async def cost_report(self) -> CostReport:
        """Today's spend for ``/cost`` and ``keel cost``: spent, reserved and left, overall, per
        person and per schedule (schedule lines use KEEL_DAILY_BUDGET_USD_PER_SCHEDULE as cap)."""
        return await self.ledger.report(self.daily_caps())

    async def release_stale_holds(self, *, older_than_s: float = 0.0) -> float:
        """At start-up, before any run: clear the holds crashed runs left (taken more than
        ``older_than_s`` ago), charged as spent (a call in flight at the crash may have been
        billed). Holds of runs still working in another live process stay. Returns the USD."""
        from datetime import UTC, datetime, timedelta

        from storage.db import iso

        gone = {r.id for r in await self.runs.abandoned()}
        live = [r.id for r in await self.runs.running() if r.id not in gone]
        before = iso(datetime.now(UTC) - timedelta(seconds=older_than_s))
        return await self.ledger.release_stale(before=before, keep_runs=live)

    async def run(
        self,
        request: RunRequest,
        *,
        on_progress: OnProgress | None = None,
        run_id: str | None = None,
        on_commit: OnCommit | None = None,
    ) -> RunResult:
        """Start and finish one run. Raises only for what prevents a start (config, daily caps).

        ``on_commit`` runs inside the transaction that records the final status."""
        spec = await self.patterns.prepare(self.agent(request.agent))
        if request.purpose == "compaction":  # a summary, whatever the agent's answers look like
            spec = replace(spec, output_type=None)
        model_name, model_source = await self._model_for(spec, request)
        price = self.prices.require(model_name)
        if not request.daily_caps_checked:
            await self.check_daily_caps(request.user_id, request.schedule)
        limits = request.limits or spec.limits
        trace_id, rid = new_id(), run_id or new_id()
        trace = self.traces.new_writer(trace_id=trace_id, run_id=rid)  # no I/O on the loop
        run = Run(agent=spec, model=model_name, price=price, limits=limits, trace=trace,
                  kind=request.kind, id=rid, trace_id=trace_id, user_id=request.user_id,
                  chat_id=request.chat_id, thread_id=request.thread_id,
                  request_key=request.request_key or f"run:{rid}")
        if request.started is not None:
            run.started = request.started
        run.session_anchor = request.session_anchor
        if request.cache_forecast is not None:  # issue 13: 1-hour writes only where they pay
            run.cache_plan = plan_cache(price, request.cache_forecast,
                                        budget_usd=limits.budget_usd)
        # issue 13: every call held against the daily caps (and its schedule's)
        self.attach_ledger(run, schedule=request.schedule)

        started_at = now_iso()

        async def write_start(conn: WriteConnection) -> None:
            await self.runs.start(run_id=run.id, trace_id=run.trace_id, agent=spec.name,
                                  kind=request.kind, budget_usd=limits.budget_usd,
                                  user_id=request.user_id, chat_id=request.chat_id,
                                  thread_id=request.thread_id, session_id=request.session_id,
                                  request_key=run.request_key, conn=conn,
                                  started_at=started_at)
            if request.on_start is not None:
                await request.on_start(conn)

        # issue 15: the run's row commits with its first hold (one write transaction before the
        # model call, not two), or with its outcome when it ends before calling the model
        assert isinstance(run.budget.gate, LedgerGate)
        run.budget.gate.unwritten = write_start
        trace.emit("run_start", agent=spec.name, kind=request.kind, model=model_name,
                   model_source=model_source,
                   pattern=spec.pattern, user_id=request.user_id, chat_id=request.chat_id,
                   thread_id=request.thread_id, session_id=request.session_id,
                   limits=_limits_dict(limits), tools=list(spec.tools),
                   history_messages=request.new_from, replay=self._replay_inputs(
                       spec, price, limits, request, run.cache_plan),
                   **({"cache": {**run.cache_plan.as_dict(),
                                 "forecast": request.cache_forecast.as_dict()}}
                      if run.cache_plan and request.cache_forecast else {}),
                   **({"parent_trace_id": request.parent_trace_id}
                      if request.parent_trace_id else {}),
                   **({"purpose": request.purpose} if request.purpose != "turn" else {}))
        if request.route is not None:
            trace.emit("route", **request.route.trace_payload())
            if request.route.cost_usd:
                run.budget.spent_usd += request.route.cost_usd
                run.usage = run.usage + request.route.usage
                if not request.route.settled:  # a held router call was recorded as it settled
                    await self._record_usage(run, request.route.usage, request.route.cost_usd)
        self._track(run)
        catalog = self.registry.catalog(list(spec.tools))
        hooks = Hooks(on_usage=self._record_usage, on_progress=on_progress,
                      **(self.patterns.graders(spec) if request.purpose == "turn" else {}))
        try:
            match spec.pattern:
                case "react":
                    result = await execute(
                        run, model=self.model, catalog=catalog, tool_ctx=self._tool_context(run),
                        messages=request.messages, new_from=request.new_from, hooks=hooks)
                case "plan_execute":
                    planner = self.settings.planner_model
                    result = await execute_plan(
                        run, model=self.model, catalog=catalog, tool_ctx=self._tool_context(run),
                        messages=request.messages, new_from=request.new_from, hooks=hooks,
                        planner_model=planner, planner_price=self.prices.require(planner))
                case _:
                    assert_never(spec.pattern)
        finally:
            self._active.pop(run.id, None)
        await self._finish(run, result, on_commit)
        return result

    async def resume(
        self,
        run_id: str,
        answer: str,
        *,
        answered_by: str | None = None,
        on_progress: OnProgress | None = None,
        on_commit: OnCommit | None = None,
    ) -> RunResult:
        """Continue a ``waiting_human`` run with the human's answer as the escalation's result.

        The run keeps its ids, trace file, spend, step count and the time it had used; waiting
        for the human does not count against its deadline."""
        run, state = await self._reopen(run_id, "waiting_human")
        messages = answer_escalation(state["messages"], state["tool_use_id"], answer, answered_by)
        messages = approvals.clear_unasked(messages, state["tool_use_id"])
        run.trace.emit("resume", tool_use_id=state["tool_use_id"], answer=answer,
                       answered_by=answered_by)
        return await self._continue(run, state, messages, on_progress, on_commit)

    async def settle_approval(
        self, run_id: str, *, approved: bool, answered_by: str | None = None,
        on_progress: OnProgress | None = None, on_commit: OnCommit | None = None,
    ) -> RunResult:
        """Continue a run parked on an approval: the approved call runs now (same request key,
        so its side effect is done once), or the model is told it was denied."""
        run, state = await self._reopen(run_id, "waiting_human")
        tool_use_id = state["tool_use_id"]
        run.trace.emit("resume", tool_use_id=tool_use_id,
                       answer=approvals.APPROVE if approved else approvals.DENY,
                       answered_by=answered_by, approval=True)
        catalog = self.registry.catalog(list(run.agent.tools))
        messages = await approvals.settle(state["messages"], tool_use_id, approved=approved,
                                          answered_by=answered_by, catalog=catalog,
                                          ctx=self._tool_context(run))
        return await self._continue(run, state, messages, on_progress, on_commit)

    async def continue_with_budget(
        self, run_id: str, extra_usd: float, *, granted_by: str | None = None,
        on_progress: OnProgress | None = None, on_commit: OnCommit | None = None,
    ) -> RunResult:
        """Continue a run its budget halted before a call, with its cap raised by ``extra_usd``."""
        if extra_usd <= 0:
            raise KeelError("extra budget must be positive")
        run, state = await self._reopen(run_id, "budget_exceeded", extra_usd=extra_usd)
        run.trace.emit("budget_raised", extra_usd=extra_usd, cap_usd=run.budget.cap_usd,
                       granted_by=granted_by)
        return await self._continue(run, state, state["messages"], on_progress, on_commit)

    async def _reopen(self, run_id: str, status: str, *,
                      extra_usd: float = 0.0) -> tuple[Run, dict[str, Any]]:
        record = await self.runs.get(run_id)
        if record is None or record.state is None:
            raise KeelError(f"run {run_id!r} has no saved state to continue from")
        # Resumed runs go through the same gates as new ones: the daily caps first.
        await self.check_daily_caps(record.user_id)
        if not await self.runs.claim_waiting(record.id, status):
            raise KeelError(f"run {run_id!r} is {record.status}, not {status}")
        state = record.state
        spec = await self.patterns.prepare(self.agent(record.agent))
        # a parked run goes on with the model it started with (a /model since changes the next)
        model_name = str(state.get("model") or spec.model or self.settings.executor_model)
        limits = Limits(**state["limits"])
        if extra_usd:
            limits = replace(limits, budget_usd=limits.budget_usd + extra_usd)
        # The trace's day is the run's start day: reopening it lists no directory, and a file
        # gzipped since is un-gzipped in a thread.
        trace = await self.traces.open_writer(trace_id=record.trace_id, run_id=record.id,
                                              day=day_of(record.started_at))
        run = Run(agent=spec, model=model_name, price=self.prices.require(model_name),
                  limits=limits, trace=trace, kind="resume", id=record.id,
                  trace_id=record.trace_id, user_id=record.user_id, chat_id=record.chat_id,
                  thread_id=record.thread_id, request_key=record.request_key or f"run:{record.id}")
        run.started -= float(state.get("elapsed_s", 0.0))
        run.steps = int(state.get("steps", 0))
        run.model_calls = int(state.get("model_calls", 0))
        run.budget.spent_usd = float(state.get("spent_usd", record.cost_usd))
        run.budget.warned = bool(state.get("warned", False)) and not extra_usd
        self.attach_ledger(run)  # issue 13: resumed and continued runs use the same ledger
        run.usage = Usage(input_tokens=record.input_tokens, output_tokens=record.output_tokens,
                          cache_read_tokens=record.cache_read_tokens,
                          cache_write_5m_tokens=record.cache_write_tokens)
        return run, state

    async def _continue(self, run: Run, state: dict[str, Any], messages: list[dict[str, Any]],
                        on_progress: OnProgress | None,
                        on_commit: OnCommit | None = None) -> RunResult:
        self._track(run)
        catalog = self.registry.catalog(list(run.agent.tools))
        hooks = Hooks(on_usage=self._record_usage, on_progress=on_progress,
                      **self.patterns.graders(run.agent))
        try:
            if state.get("pattern") == "plan_execute":
                planner = self.settings.planner_model
                result = await resume_plan(
                    run, model=self.model, catalog=catalog, tool_ctx=self._tool_context(run),
                    state=state, messages=messages, hooks=hooks, planner_model=planner,
                    planner_price=self.prices.require(planner))
            else:
                result = await execute(
                    run, model=self.model, catalog=catalog, tool_ctx=self._tool_context(run),
                    messages=messages, new_from=int(state.get("new_from", 0)), hooks=hooks)
        finally:
            self._active.pop(run.id, None)
        await self._finish(run, result, on_commit)
        return result

    def _replay_inputs(self, spec: AgentSpec, price: Any, limits: Limits,
                       request: RunRequest, cache: CachePlan | None = None) -> dict[str, Any]:
        """What ``keel trace replay`` needs besides the recorded calls: the prices the budget
        was reserved at (max_tokens and thinking budgets follow from them), whether the model
        call cap was left to its default (plan runs widen it), the router's exact cost, the
        session's kept input count, and for plan runs the planner and the input messages (no
        request of theirs carries the task whole)."""
        inputs: dict[str, Any] = {"price": price.model_dump(),
                                  "max_model_calls": limits.max_model_calls,
                                  "route_cost_usd": request.route.cost_usd if request.route
                                  else None}
        anchor = request.session_anchor
        if anchor is not None:  # the first call's input bound starts from it
            inputs["session_anchor"] = {"tokens": anchor.tokens, "messages": anchor.messages,
                                        "digest": anchor.digest}
        if cache is not None:  # the TTLs its requests were marked (and reserved) with
            inputs["cache_plan"] = cache.as_dict()
        if spec.pattern == "plan_execute":
            planner = self.settings.planner_model
            inputs.update(planner_model=planner,
                          planner_price=self.prices.require(planner).model_dump(),
                          messages=request.messages)
        inputs.update(self.patterns.replay_inputs(spec))
        return inputs

    def _track(self, run: Run) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._active[run.id] = (run, task)
            if run.id in self._cancel_at_start:  # ends cancelled at its first step
                self._cancel_at_start.discard(run.id)
                run.cancel_requested = True
                task.cancel()

    def cancel(self, run_id: str, *, before_start: bool = False) -> bool:
        """Ask a running run to stop; it ends as ``cancelled``. False if it is not running here,
        unless ``before_start``: then a run of that id that has not begun yet (its request is
        being routed or prepared) ends cancelled as it begins (see ``forget_cancel``)."""
        entry = self._active.get(run_id)
        if entry is None:
            if before_start:
                self._cancel_at_start.add(run_id)
            return before_start
        run, task = entry
        run.cancel_requested = True
        task.cancel()
        return True

    def forget_cancel(self, run_id: str) -> None:
        """The request of ``run_id`` is finished: a cancel that came too late is dropped."""
        self._cancel_at_start.discard(run_id)

    def active_runs(self) -> list[Run]:
        return [run for run, _ in self._active.values()]

    async def route(self, text: str, *, current: str | None, deadline: float | None = None,
                    run_id: str | None = None, user_id: int | None = None,
                    conversation_id: int | None = None,
                    on_call: Callable[[], None] | None = None) -> RouteDecision:
        """Pick the agent for a message with the router model (falls back to the default).

        Routing is bounded by ``deadline`` (``time.monotonic()``; the run's own deadline, which
        counts from when the request was taken) and by ROUTE_TIMEOUT_S; past it the default
        agent answers, so a hanging router cannot hold a person past their run's deadline.
        With ``run_id`` the router call is held in the daily ledger like any call of that run
        and agents that could not answer once it is paid are left out (issue 13); with
        ``conversation_id`` a conversation that goes on within KEEL_ROUTER_CONTINUE_S keeps its
        agent without asking the router."""
        model = self.settings.router_model
        limit = ROUTE_TIMEOUT_S
        if deadline is not None:
            limit = max(0.0, min(limit, deadline - time.monotonic()))
        try:
            async with asyncio.timeout(limit):
                return await route(self.model, model=model, price=self.prices.require(model),
                                   agents=self.agents, text=text, current=current,
                                   default=self.default_agent, on_call=on_call,
                                   **await self._route_budget(text, current, run_id, user_id,
                                                              conversation_id))
        except TimeoutError:
            log.warning("routing took longer than %.1f s; the default agent answers", limit)
            return RouteDecision(agent=current if current in self.agents else self.default_agent,
                                 reason=f"fallback: routing timed out after {limit:.1f} s")

    async def _route_budget(self, text: str, current: str | None, run_id: str | None,
                            user_id: int | None, conversation_id: int | None) -> dict[str, Any]:
        """What ``agents.router.route`` needs to hold the router call and skip it."""
        out: dict[str, Any] = {"continue_within_s": self.settings.router_continue_s}
        if conversation_id is not None and current is not None:
            session = await self.affordability.counts.live_session(conversation_id, current)
            if session is not None:
                out["last_turn_age_s"] = await self.affordability.counts.last_turn_age_s(session)
        if run_id is None:
            return out
        caps = self.daily_caps()
        out["gate"] = LedgerGate(self.ledger, caps, run_id=run_id, agent=ROUTER_AGENT,
                                 user_id=user_id)
        # what the day's caps have left: one read (the cost report's sums over every person
        # and schedule grew with the day's users, on every routed message)
        used = await self.ledger.used(caps, user_id=user_id, schedule=None)
        scoped: list[tuple[Scope, float | None]] = [
            ("all", caps.total_usd), ("user", caps.per_user_usd if user_id is not None else None)]
        day_left = [max(0.0, cap - used.get(scope, 0.0)) for scope, cap in scoped
                    if cap is not None]
        left = {name: min([spec.limits.budget_usd, *day_left])
                for name, spec in routable(self.agents).items()}
        out["left_usd"] = left
        out["needs_usd"] = functools.partial(self.affordability.needs, routable(self.agents),
                                             text, conversation_id=conversation_id, left_usd=left)
        return out

    async def _model_for(self, spec: AgentSpec, request: RunRequest) -> tuple[str, str]:
        """The model a run uses and why: the one chosen for its chat with /model (chat runs and
        their sessions' compactions, only while it has a price), else the agent's, else
        KEEL_EXECUTOR_MODEL."""
        if (request.kind == "chat" or request.purpose == "compaction") \
                and request.chat_id is not None:
            chosen = request.chat_model if request.chat_model_known else \
                await ConversationModels(self.db).get(request.chat_id, request.thread_id)
            if chosen is not None and self.prices.get(chosen) is not None:
                return chosen, "chat"
            if chosen is not None:
                log.warning("chat %s chose model %r, which has no price now; the agent's own "
                            "model answers", request.chat_id, chosen)
        if spec.model:
            return spec.model, "agent"
        return self.settings.executor_model, "default"

    def _tool_context(self, run: Run) -> ToolContext:
        return ToolContext(
            run_id=run.id, idempotency_key=run.request_key, agent=run.agent.name,
            emit=functools.partial(_emit_durably, run.trace),
            idempotency=self.idempotency, default_timeout_s=run.limits.tool_timeout_s,
            user_id=run.user_id, chat_id=run.chat_id, thread_id=run.thread_id,
            timezone=self.settings.timezone,
            extras={"fetch_allow_private": self.settings.fetch_allow_private,
                    FILES_DIR_EXTRA: str(self.settings.files_dir),
                    FILES_MAX_EXTRA: self.settings.max_file_bytes,
                    **approvals.extras_for(self.keel_file, run.agent.name),
                    **self.patterns.extras(run)},
        )

    async def _record_usage(self, run: Run, usage: Usage, cost: float) -> None:
        # Written per call, so spend survives a crash mid-run and daily caps see it at once.
        await self.usage.add(user_id=run.user_id, agent=run.agent.name, delta=UsageDelta(
            cost_usd=cost, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
        ))

    async def close_interrupted(self) -> int:
        """Runs a dead process left ``running`` end ``failed`` with a ``run_end`` in their trace;
        their requests are retried by their owners (inbox, schedule fires) under the same request
        key, so side effects are not repeated. Returns how many."""
        # only runs whose process is gone: a live `keel agent run` beside the bot keeps going
        return await self._close_runs(await self.runs.abandoned(),
                                      "interrupted: the bot stopped while this run was working")

    async def close_request_runs(self, request_key: str) -> int:
        """Before a request is answered again by a job that was taken over from a silent worker:
        runs of that request still marked running in another process end as interrupted (their
        holds charged as spent). Returns how many."""
        from storage.owner import this_process

        records = [r for r in await self.runs.running_for(request_key)
                   if r.owner != this_process()]
        return await self._close_runs(records, "interrupted: its worker stopped")

    async def _close_runs(self, records: list[Any], detail: str) -> int:
        """End runs whose process is gone: a run_end in the trace, status failed, and their
        budget holds charged as spent (a call in flight may have been billed)."""
        for record in records:
            await self.ledger.release_run(record.id, charge=True)
            try:
                trace = self.traces.writer(trace_id=record.trace_id, run_id=record.id,
                                           day=day_of(record.started_at))
                trace.emit("run_end", agent=record.agent, status="failed", detail=detail,
                           cost_usd=record.cost_usd, steps=record.steps,
                           model_calls=record.model_calls, interrupted=True)
                trace.close()
            except OSError as exc:
                log.warning("could not close the trace of interrupted run %s: %s", record.id, exc)
        await self.runs.fail_interrupted(detail, [r.id for r in records])
        return len(records)

    def _trace_closed(self, closing: asyncio.Future[None]) -> None:
        self._closing.discard(closing)
        if not closing.cancelled() and closing.exception() is not None:
            log.warning("a finished run's trace could not be closed: %s", closing.exception())

    async def _finish(self, run: Run, result: RunResult, on_commit: OnCommit | None = None) -> None:
        totals = RunTotals(
            cost_usd=result.cost_usd, steps=result.steps, model_calls=result.model_calls,
            input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens,
            cache_read_tokens=result.usage.cache_read_tokens,
            cache_write_tokens=result.usage.cache_write_tokens,
        )
        summary = result.as_json()
        summary.pop("run_id"), summary.pop("trace_id")
        run.trace.emit("run_end", **summary)

        async def record() -> None:
            # The run's lines are in the file before its outcome commits (a process killed
            # after the commit keeps them); the fsync and close follow off the reply's path.
            # SQLite commits with synchronous=NORMAL: the outcome itself reaches the disk only
            # at a later checkpoint, so waiting for the trace's fsync first put a disk flush
            # on every reply's path and made nothing more durable (issue 15).
            await run.trace.adrain()
            async with self.db.write() as conn:
                gate = run.budget.gate
                owed = gate.owed() if isinstance(gate, LedgerGate) else None
                if owed is not None:  # its row, if it never called the model; its last call
                    assert isinstance(gate, LedgerGate)
                    gate.written()
                    await owed(conn)
                await self.runs.finish(run.id, status=result.status, detail=result.detail,
                                       output=result.output, totals=totals,
                                       state=None if result.state is None
                                       else {**result.state, "model": run.model}, conn=conn)
                if on_commit is not None:
                    await on_commit(conn, result)

        try:
            await asyncio.shield(record())
        finally:
            closing = asyncio.ensure_future(run.trace.aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._trace_closed)
        if result.status in ("cancelled", "timeout", "failed"):
            # a hold whose taking was interrupted (cancelled while it committed) never reached
            # the run, so nothing settles it: charged as spent now rather than at the next
            # start-up (a bound that stays a bound); a normal end has none left
            await asyncio.shield(self.ledger.release_run(run.id, charge=True))
        # one line per run at INFO, for the operator following the console (no message text)
        log.info("run %s %s: agent %s, %s, chat %s, $%.4f, %.1f s, trace %s", run.id,
                 result.status, result.agent, run.kind, run.chat_id, result.cost_usd,
                 result.duration_s, result.trace_id)


def answer_escalation(messages: list[dict[str, Any]], tool_use_id: str, answer: str,
                      answered_by: str | None = None) -> list[dict[str, Any]]:
    """The parked messages with the escalation's tool_result replaced by the human's answer."""
    reviewed = reflexion.answered(messages, tool_use_id, answer, answered_by)
    if reviewed is not None:  # an answer that failed its grader twice: the person decided
        return reviewed
    out = [dict(m) for m in messages]
    last = out[-1]
    blocks = []
    for block in last["content"]:
        if block.get("type") == "tool_result" and block.get("tool_use_id") == tool_use_id:
            block = {"type": "tool_result", "tool_use_id": tool_use_id,
                     "content": json.dumps({"answer": answer, "answered_by": answered_by},
                                           ensure_ascii=False)}
        blocks.append(block)
    out[-1] = {**last, "content": blocks}
    return out


def _limits_dict(limits: Limits) -> dict[str, Any]:
    return {"budget_usd": limits.budget_usd, "max_steps": limits.max_steps,
            "timeout_s": limits.timeout_s, "tool_timeout_s": limits.tool_timeout_s,
            "max_tokens": limits.max_tokens, "max_model_calls": limits.model_call_cap}


def build_agents(settings: Settings, keel_file: KeelFile, registry: ToolRegistry) -> dict[str, AgentSpec]:
    """Built-in agents plus those in keel.toml (a keel.toml agent replaces a built-in of its name)."""
    problems: list[Problem] = []
    agents = assemble_agents(settings, keel_file, registry, problems)
    if problems:
        raise ConfigError(describe(problems))
    return agents


DURABLE_EVENTS = frozenset({"tool_call"})
"""Tool events written to the file before the tool runs (its side effects may not be undone)."""


async def _emit_durably(trace: TraceWriter, type_: str, **payload: Any) -> None:
    trace.emit(type_, **payload)
    if type_ in DURABLE_EVENTS:
        await trace.adrain()
