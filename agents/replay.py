"""Replay: re-run a traced run offline against its recorded model responses and tool results.

The replay rebuilds the run from its trace alone — the agent's prefix (system and tools), its
limits, the prices its budget was reserved at, its input — and drives the real executor (ReAct
or plan-then-execute) with stand-ins that answer what was recorded (``agents.replay_recording``).
A run continued after it stopped is replayed segment by segment as it happened: the human's
answer to an escalation (``resume``) or a budget grant (``budget_raised``) goes into the state
the *replayed* previous segment parked, exactly as the runtime does. A run cancelled, timed out
or stopped with its process is interrupted at the same point; an API error recurs on the same
call. No model, tool or database is called.

Every request the executor builds is compared with the recorded one, and every segment's status
and output with the recorded ones; the first divergence is reported in one line with its JSON
path, then the two values. Normalised before comparing: ``cache_control`` markers (where a
breakpoint goes and its TTL change what is billed, not what the model reads, and the trace keeps
only the moving breakpoint's position), reported as a note when they differ. Nothing else needs
normalising: ids (tool_use ids, message ids) come from the recorded responses themselves, and
keel puts no timestamps in requests.
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from agents import approvals
from agents.caching import CachePlan
from agents.executor import Hooks, execute
from agents.executor.plan import execute_plan, resume_plan
from agents.pricing import Price, PriceTable
from agents.reflexion import raw_result, replay_hooks
from agents.replay_recording import (
    Diverged,
    MemoryIdempotency,
    ReplayCatalog,
    Replayer,
    ReplayError,
    ReplayGate,
    ReplayModel,
    Segment,
    split_segments,
)
from agents.research import ChargingCatalog
from agents.run import Run, RunKind, RunResult
from agents.runtime import answer_escalation
from agents.spec import AgentSpec, Limits
from agents.tools.contract import ToolContext
from agents.trace_view import reconstruct_requests
from storage.session_counts import SessionAnchor
from storage.traces import TraceStore, TraceWriter

__all__ = ["ReplayError", "ReplayReport", "SegmentReport", "replay"]

CLOCK_OFFSET_S = 1e9
"""The replayed run's clock starts this far ahead, so its deadline never passes on its own:
only a recorded timeout ends a replay as ``timeout``."""
_FREE = Price(input=0, output=0, cache_write_5m=0, cache_write_1h=0, cache_read=0)
_SHOWN_CHARS = 160


@dataclass(frozen=True)
class SegmentReport:
    label: str
    recorded_status: str
    replayed_status: str
    recorded_output: str | None
    replayed_output: str | None
    replayed_detail: str | None = None
    ended_later: str | None = None
    """A run_end written after the segment's own, outside the executor (an expired question)."""

    def line(self, i: int) -> str:
        later = f" (then {self.ended_later})" if self.ended_later else ""
        return (f"  {i}. {self.label}: recorded {self.recorded_status}{later}, replayed "
                f"{self.replayed_status}")


@dataclass(frozen=True)
class ReplayReport:
    trace_id: str
    run_id: str | None
    agent: str | None
    pattern: str
    recorded_requests: int
    replayed_requests: int
    segments: list[SegmentReport]
    divergence: str | None
    """The first place the replay went another way, in one line; None when identical."""
    diff: list[str] = field(default_factory=list)
    route: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.divergence is None

    @property
    def first_difference(self) -> str | None:
        return self.divergence

    @property
    def recorded_status(self) -> str | None:
        return self.segments[-1].recorded_status if self.segments else None

    @property
    def replayed_status(self) -> str | None:
        return self.segments[-1].replayed_status if self.segments else None

    @property
    def recorded_output(self) -> str | None:
        return self.segments[-1].recorded_output if self.segments else None

    @property
    def replayed_output(self) -> str | None:
        return self.segments[-1].replayed_output if self.segments else None

    def render(self) -> str:
        if self.divergence is None:
            head = ["replay: identical"]
        else:
            head = [f"replay: differs — {self.divergence}", *(f"  {d}" for d in self.diff)]
        lines = [*head, f"trace {self.trace_id}  run {self.run_id}, agent {self.agent} "
                 f"({self.pattern})"]
        if self.route:
            lines.append(f"route: {self.route}")
        lines += [s.line(i) for i, s in enumerate(self.segments, start=1)]
        lines.append(f"model requests: recorded {self.recorded_requests}, replayed "
                     f"{self.replayed_requests}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


async def replay(events: list[dict[str, Any]], *, prices: PriceTable | None = None) -> ReplayReport:
    """Replay the run whose trace ``events`` are. ``prices`` serves traces written before runs
    recorded their own prices. Raises ReplayError when the trace cannot be replayed at all."""
    segments = split_segments(events)
    start = segments[0].opener
    inputs: dict[str, Any] = start.get("replay") or {}
    notes: list[str] = []
    pattern = str(start.get("pattern") or "react")
    model_name = str(start.get("model"))
    price = _price(inputs.get("price"), model_name, prices, notes)
    planner_model = str(inputs.get("planner_model") or model_name)
    planner_price = (_price(inputs.get("planner_price"), planner_model, prices, notes)
                     if pattern == "plan_execute" else price)
    replayer = Replayer({model_name: price, planner_model: planner_price})
    bodies = reconstruct_requests(events)
    for body in bodies:
        for message in body["messages"]:
            for block in message["content"] if isinstance(message["content"], list) else []:
                if block.get("type") == "tool_result":  # as the tool returned it, before any
                    content = block.get("content")     # grader's note (agents/reflexion.py)
                    replayer.sent_results[str(block.get("tool_use_id"))] = (
                        raw_result(content) if isinstance(content, str) else content)

    spec, schemas = _agent(segments[0], start, inputs, pattern)
    # a fan-out charged the parent what its children spent (agents/research.py)
    catalog = ChargingCatalog(ReplayCatalog(schemas, replayer), events, lambda: replayer.run)
    hooks = replay_hooks(inputs, replayer.prices)
    model = ReplayModel(replayer)
    route_line, route_divergence = _route(segments[0], start)

    reports: list[SegmentReport] = []
    stopped: tuple[str, list[str]] | None = None
    with tempfile.TemporaryDirectory(prefix="keel-replay-") as scratch:
        trace = TraceStore(Path(scratch)).writer(trace_id=str(start.get("trace_id") or "replay"),
                                                 run_id=str(start.get("run_id") or "replay"))
        setting = _Setting(events=events, start=start, inputs=inputs, spec=spec, price=price,
                           planner_model=planner_model, planner_price=planner_price, trace=trace,
                           replayer=replayer, model=model, catalog=catalog, hooks=hooks)
        try:
            previous: RunResult | None = None
            for seg in segments:
                replayed: str = "not replayed"
                output = detail = None
                if stopped is None:
                    try:
                        previous = await _segment(seg, previous, setting)
                        replayed, output, detail = (previous.status, previous.output,
                                                    previous.detail)
                    except asyncio.CancelledError:  # stopped where its recorded process did
                        replayed, previous = seg.status, None
                    except Diverged as exc:
                        stopped, replayed = (str(exc), []), "stopped"
                    except _CannotContinue as exc:
                        stopped = (str(exc), [])
                reports.append(_segment_report(seg, replayed, output, detail))
        finally:
            trace.close()
        grades = _grade_difference(events, TraceStore(Path(scratch)).read(trace.trace_id))

    replayed_bodies = [r.to_api() for r in replayer.requests]
    divergence, diff = _first_divergence(route_divergence, bodies, replayed_bodies, stopped,
                                         reports, notes)
    if divergence is None and grades is not None:
        divergence, diff = grades
    return ReplayReport(
        trace_id=str(start.get("trace_id")), run_id=start.get("run_id"), agent=start.get("agent"),
        pattern=pattern, recorded_requests=len(bodies), replayed_requests=len(replayed_bodies),
        segments=reports, divergence=divergence, diff=diff, route=route_line, notes=notes)


class _CannotContinue(Exception):
    """A recorded continuation has nothing to continue in the replay."""


@dataclass(frozen=True, kw_only=True)
class _Setting:
    """What every segment of one replay shares."""

    events: list[dict[str, Any]]
    start: dict[str, Any]
    inputs: dict[str, Any]
    spec: AgentSpec
    price: Price
    planner_model: str
    planner_price: Price
    trace: TraceWriter
    replayer: Replayer
    model: ReplayModel
    catalog: ReplayCatalog | ChargingCatalog
    hooks: Hooks


async def _segment(seg: Segment, previous: RunResult | None, on: _Setting) -> RunResult:
    """Replay one segment the way the runtime ran it: a new run, or a parked one reopened."""
    spec, start, inputs = on.spec, on.start, on.inputs
    state: dict[str, Any] | None = None
    if seg.kind == "start":
        run = _run(spec, on.price, spec.limits, on.trace, start,
                   cast(RunKind, start.get("kind") or "cli"))
        route = seg.first("route")
        if route is not None:  # the router's cost counted against the run's budget
            run.budget.spent_usd += float(inputs.get("route_cost_usd") or route.get("cost_usd")
                                          or 0.0)
        kept = inputs.get("session_anchor")
        if kept:  # the first call's input bound started from the session's last exact count
            run.session_anchor = SessionAnchor(tokens=int(kept["tokens"]),
                                               messages=int(kept["messages"]),
                                               digest=str(kept["digest"]))
        run.cache_plan = CachePlan.from_dict(inputs.get("cache_plan"))  # its TTLs, as marked
    else:
        state = previous.state if previous is not None else None
        if state is None:
            was = previous.status if previous is not None else "interrupted"
            raise _CannotContinue(f"the trace continues with {seg.label()}, but the replayed run "
                                  f"ended {was} and left nothing to continue")
        run = _reopened(spec, on, state, seg)
    run.budget.gate = ReplayGate(on.replayer)
    on.replayer.enter(seg, run)
    ctx = ToolContext(run_id=run.id, agent=spec.name, emit=on.trace.emit,
                      idempotency=MemoryIdempotency(), default_timeout_s=run.limits.tool_timeout_s)
    if state is None:
        messages = _input_messages(seg, inputs, on.events, spec.pattern)
        new_from = int(start.get("history_messages", max(0, len(messages) - 1)))
        if spec.pattern == "plan_execute":
            return await execute_plan(run, model=on.model, catalog=on.catalog, tool_ctx=ctx,
                                      messages=messages, new_from=new_from,
                                      planner_model=on.planner_model,
                                      planner_price=on.planner_price, hooks=on.hooks)
        return await execute(run, model=on.model, catalog=on.catalog, tool_ctx=ctx,
                             messages=messages, new_from=new_from, hooks=on.hooks)
    messages = await _continued_messages(seg, state, on.catalog, ctx)
    if state.get("pattern") == "plan_execute":
        return await resume_plan(run, model=on.model, catalog=on.catalog, tool_ctx=ctx,
                                 state=state, messages=messages, planner_model=on.planner_model,
                                 planner_price=on.planner_price, hooks=on.hooks)
    return await execute(run, model=on.model, catalog=on.catalog, tool_ctx=ctx,
                         messages=messages, new_from=int(state.get("new_from", 0)),
                         hooks=on.hooks)


def _reopened(spec: AgentSpec, on: _Setting, state: dict[str, Any], seg: Segment) -> Run:
    """The parked run as ``Runtime._reopen`` restores it: its limits (raised by a grant), and
    its counters, meter and clock going on."""
    limits = Limits(**state["limits"])
    extra = float(seg.opener.get("extra_usd") or 0.0) if seg.kind == "budget" else 0.0
    if extra:
        limits = replace(limits, budget_usd=limits.budget_usd + extra)
    run = _run(spec, on.price, limits, on.trace, on.start, "resume")
    run.started -= float(state.get("elapsed_s", 0.0))
    run.steps = int(state.get("steps", 0))
    run.model_calls = int(state.get("model_calls", 0))
    run.budget.spent_usd = float(state.get("spent_usd", 0.0))
    run.budget.warned = bool(state.get("warned", False)) and not extra
    return run


async def _continued_messages(seg: Segment, state: dict[str, Any],
                              catalog: ReplayCatalog | ChargingCatalog,
                              ctx: ToolContext) -> list[dict[str, Any]]:
    """The parked messages as the runtime continued them: with the recorded answer to the
    question (``Runtime.resume``), the approved call run or the denial (``settle_approval``), or
    unchanged after a budget grant (``continue_with_budget``)."""
    if seg.kind == "budget":
        return list(state["messages"])
    asked = str(seg.opener.get("tool_use_id"))
    if asked != str(state.get("tool_use_id")):
        raise Diverged(f"{seg.label()} answers tool call {asked}, but the replayed run waits on "
                       f"{state.get('tool_use_id')}")
    answer, by = str(seg.opener.get("answer")), seg.opener.get("answered_by")
    if seg.opener.get("approval"):
        return await approvals.settle(state["messages"], asked,
                                      approved=answer == approvals.APPROVE, answered_by=by,
                                      catalog=catalog, ctx=ctx)
    messages = answer_escalation(state["messages"], asked, answer, by)
    return approvals.clear_unasked(messages, asked)


def _run(spec: AgentSpec, price: Price, limits: Limits, trace: TraceWriter,
         start: dict[str, Any], kind: RunKind) -> Run:
    run = Run(agent=spec, model=str(start.get("model")), price=price, limits=limits, trace=trace,
              kind=kind, id=str(start.get("run_id") or "replay"),
              trace_id=str(start.get("trace_id") or "replay"))
    run.started = time.monotonic() + CLOCK_OFFSET_S
    return run


def _agent(first: Segment, start: dict[str, Any], inputs: dict[str, Any],
           pattern: str) -> tuple[AgentSpec, list[dict[str, Any]]]:
    """The agent as the trace recorded it: its executor prefix, limits and pattern."""
    prefixes = [e for e in first.events if e["type"] == "prefix"]
    if not prefixes:
        raise ReplayError("the trace has no 'prefix' event; it cannot be replayed")
    # a plan run records the planner's prefix first, then the executor's
    prefix = prefixes[1] if pattern == "plan_execute" and len(prefixes) > 1 else prefixes[0]
    recorded = start.get("limits") or {}
    fields = {k: v for k, v in recorded.items() if k in Limits.__dataclass_fields__}
    if "replay" in start:  # the trace says whether the model call cap was left to its default
        fields["max_model_calls"] = inputs.get("max_model_calls")
    limits = Limits(**fields)
    schemas = list(prefix.get("tools") or [])
    system = "".join(b.get("text", "") for b in prefix.get("system") or [])
    spec = AgentSpec(name=str(start.get("agent")), description="replay", system=system,
                     model=str(start.get("model")), tools=tuple(t["name"] for t in schemas),
                     limits=limits, pattern="plan_execute" if pattern == "plan_execute"
                     else "react")
    return spec, schemas


def _input_messages(seg: Segment, inputs: dict[str, Any], events: list[dict[str, Any]],
                    pattern: str) -> list[dict[str, Any]]:
    """The run's input: recorded whole for plan runs; a ReAct run's first request carries it."""
    if pattern == "plan_execute":
        if "messages" not in inputs:
            raise ReplayError("this plan run was traced before keel recorded a run's input; "
                              "it cannot be replayed")
        return copy.deepcopy(list(inputs["messages"]))
    first = next((e for e in events if e["type"] == "model_request"
                  and int(e.get("messages_base", 0)) == 0), None)
    if first is None:
        raise ReplayError(f"the run ended {seg.status} before its first model call; there is "
                          "nothing to replay")
    return copy.deepcopy(list(first.get("messages") or []))


def _price(recorded: Any, model: str, table: PriceTable | None, notes: list[str]) -> Price:
    if recorded:
        return Price.model_validate(recorded)
    known = table.get(model) if table is not None else None
    if known is not None:
        notes.append(f"the trace does not record {model}'s price; today's price table is used")
        return known
    notes.append(f"no price for {model}: budgets are replayed at $0 and max_tokens may differ")
    return _FREE


def _route(first: Segment, start: dict[str, Any]) -> tuple[str | None, str | None]:
    """The router's recorded decision, and whether its recorded answer still leads to it."""
    route = first.first("route")
    if route is None:
        return None, None
    agent, reason = route.get("agent"), str(route.get("reason") or "")
    line = f"{agent} ({reason})"
    if agent != start.get("agent"):
        return line, f"route: the router chose {agent!r}, but the run was {start.get('agent')!r}"
    request, response = route.get("request") or {}, route.get("response") or []
    chosen = next((b.get("input", {}).get("agent") for b in response
                   if b.get("type") == "tool_use" and b.get("name") == "route"), None)
    tools = request.get("tools") or [{}]
    enum = (tools[0].get("input_schema", {}).get("properties", {}).get("agent", {})
            .get("enum") or [])
    if reason == "router" and (chosen != agent or chosen not in enum):
        return line, (f"route: the recorded router answer chooses {chosen!r}, but the run went "
                      f"to {agent!r}")
    if reason.startswith("fallback: invalid answer") and chosen in enum:
        return line, (f"route: the recorded router answer {chosen!r} is a valid choice, but the "
                      "run fell back to the default agent")
    return line, None


def _segment_report(seg: Segment, replayed: str, output: str | None,
                    detail: str | None) -> SegmentReport:
    later = seg.later_ends[-1] if seg.later_ends else None
    ended_later = None
    if later is not None:
        ended_later = str(later.get("status")) + (f": {later['detail']}" if later.get("detail")
                                                  else "")
    recorded_output = seg.end.get("output") if seg.end is not None else None
    return SegmentReport(label=seg.label(), recorded_status=seg.status, replayed_status=replayed,
                         recorded_output=recorded_output, replayed_output=output,
                         replayed_detail=detail, ended_later=ended_later)


def _first_divergence(route: str | None, recorded: list[dict[str, Any]],
                      replayed: list[dict[str, Any]], stopped: tuple[str, list[str]] | None,
                      segments: list[SegmentReport],
                      notes: list[str]) -> tuple[str | None, list[str]]:
    if route is not None:
        return route, []
    for i, (a, b) in enumerate(zip(recorded, replayed, strict=False), start=1):
        if a == b:
            continue
        a_clean, b_clean = _without_markers(a), _without_markers(b)
        path, left, right = _diff(a, b) if a_clean == b_clean else _diff(a_clean, b_clean)
        if a_clean == b_clean:
            notes.append(f"cache breakpoints of request {i} differ at {path}; ignored (markers "
                         "change what is billed, not what the model reads)")
            continue
        return f"request {i} differs at {path}", [f"recorded: {_shown(left)}",
                                                  f"replayed: {_shown(right)}"]
    if stopped is not None:
        return stopped
    if len(recorded) != len(replayed):
        return (f"recorded {len(recorded)} model request(s), the replay made {len(replayed)}",
                [])
    for i, s in enumerate(segments, start=1):
        if s.recorded_status != s.replayed_status:
            why = [f"replayed: {s.replayed_detail}"] if s.replayed_detail else []
            return (f"segment {i} ({s.label}) status: recorded {s.recorded_status}, replayed "
                    f"{s.replayed_status}"), why
        if s.recorded_output != s.replayed_output:
            return f"segment {i} ({s.label}) output differs", [
                f"recorded: {_shown(s.recorded_output)}", f"replayed: {_shown(s.replayed_output)}"]
    return None, []


_GRADE_KEYS = ("step", "check", "tool", "tool_use_id", "attempt", "kind", "passed", "feedback",
               "skipped")


def _grade_difference(recorded: list[dict[str, Any]],
                      replayed: list[dict[str, Any]]) -> tuple[str, list[str]] | None:
    """The first ``grade`` event the replay judged otherwise than the trace says (a grader
    changed since, or a trace edited after the fact); None when every grade agrees."""
    def grades(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: e.get(k) for k in _GRADE_KEYS if e.get(k) is not None}
                for e in events if e.get("type") == "grade"]

    a, b = grades(recorded), grades(replayed)
    for i, (x, y) in enumerate(zip(a, b, strict=False), start=1):
        if x != y:
            key = next(k for k in _GRADE_KEYS if x.get(k) != y.get(k))
            return f"grade {i} differs at {key}", [f"recorded: {_shown(x)}",
                                                   f"replayed: {_shown(y)}"]
    if len(a) != len(b):
        return f"recorded {len(a)} grade(s), the replay made {len(b)}", []
    return None


def _without_markers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_markers(v) for v in value]
    return value


_LATE_KEYS = {"thinking": 1, "max_tokens": 2}
"""Compared last: a request's thinking budget and max_tokens follow from what it sends (its
input is reserved first), so a difference in the content is the one worth pointing at."""


def _diff(a: Any, b: Any, path: str = "$") -> tuple[str, Any, Any]:
    """The JSON path of the first difference, with the two values there."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b), key=lambda k: (_LATE_KEYS.get(k, 0) if path == "$" else 0,
                                                      k))
        for key in keys:
            if a.get(key) != b.get(key):
                return _diff(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return _diff(x, y, f"{path}[{i}]")
        if len(a) != len(b):
            return f"{path} (length {len(a)} vs {len(b)})", len(a), len(b)
    return path, a, b


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
