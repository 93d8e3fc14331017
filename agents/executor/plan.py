"""Plan-then-execute: the planner writes a plan once; the bounded loop walks it step by step.

Same contract as ``agents.executor.execute``: exactly one final status, the same limits (steps,
model calls, budget and deadline span the whole run, planner calls included), every model call
traced. On top of that:

  plan         one trace event with the whole validated plan
  step_start   / step_end per step (its status, and its answer's length)
  replan       a failed step re-planned from that step: the new whole plan and the reason

A step *fails* when its loop ends in ``failed`` (the model refused, answered nothing usable, or
its answer was cut) or when the model answers ``STEP_FAILED: <why>``. The plan is then re-planned
from that step — completed steps are kept and never run again — at most ``MAX_REPLANS`` times.
Run-wide limits (budget, steps, model calls, time, cancellation) end the run with their status.

The final output is the last step's answer: the planner is told the last step produces the answer
for the person, which costs nothing extra (a synthesis call would re-read every result).

A step may carry a check (one of the agent's ``step_graders``, which the planner is offered and
names in the step's ``check``): its answer is graded like an agent's final answer — one retry
with the grader's feedback, then the run parks for a person shown both attempts, and the
person's answer ends the step (agents/reflexion.py). The last step without a check of its own is
graded by the agent's ``grader``, if it has one.

A step that escalates parks the run as ``waiting_human`` with the loop's usual state (its
messages, ``tool_use_id``, limits, meter, counters) plus the plan's: ``pattern``, ``plan``,
``step_index``, ``results``, ``replans``, ``base_messages``, ``call_allowance``. ``resume_plan``
continues the parked step with the human's answer and then the rest of the plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, assert_never

from agents.budget import BudgetHalt
from agents.executor.loop import Hooks, Outcome, bounded, result_of, run_loop
from agents.executor.prepare import Prefix
from agents.executor.resolve import close_transcript
from agents.model.types import ModelClient
from agents.patterns_config import GraderConfig
from agents.planner import (
    Failure,
    Plan,
    Planner,
    PlanningFailed,
    StepResult,
    clip,
    make_plan,
    planner_prefix,
    planning_message,
    replanning_message,
)
from agents.pricing import Price
from agents.run import Run, RunResult
from agents.tools.contract import ToolCatalog, ToolContext

if TYPE_CHECKING:
    from agents.reflexion import Grader

MAX_REPLANS = 2
STEP_FAILED = "STEP_FAILED"
_STEP_FAILED = re.compile(rf"^\s*{STEP_FAILED}\s*:\s*(.*)", re.DOTALL | re.IGNORECASE)


@dataclass(kw_only=True)
class _Walk:
    """Where a plan run stands; what a parked run saves besides the loop's own state."""

    base: list[dict[str, Any]]
    """History and this run's task: every step starts from these."""
    new_from: int
    plan: Plan | None = None
    index: int = 0
    results: list[StepResult] = field(default_factory=list)
    replans: int = 0
    widen_cap: bool = False
    """The run's model-call cap is at its default (max_steps + 3, sized for one loop): widen it
    by ``call_allowance``."""
    call_allowance: int = 0
    """One answer per planned step plus the planner's own calls, all bounded by construction."""
    data: Any = None
    """The last step's validated output (agents with an output type); not saved."""

    @property
    def task(self) -> str:
        texts = []
        for message in self.base[self.new_from:]:
            if message["role"] != "user":
                continue
            content = message["content"]
            if isinstance(content, str):
                texts.append(content)
            else:
                texts += [b["text"] for b in content if b.get("type") == "text"]
        return "\n\n".join(t for t in texts if t.strip()) or "(no task text)"

    def state(self) -> dict[str, Any]:
        assert self.plan is not None
        return {
            "pattern": "plan_execute",
            "plan": self.plan.model_dump(),
            "step_index": self.index,
            "results": [{"step_id": r.step_id, "output": r.output} for r in self.results],
            "replans": self.replans,
            "base_messages": self.base,
            "widen_cap": self.widen_cap,
            "call_allowance": self.call_allowance,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Walk:
        return cls(
            base=list(state["base_messages"]), new_from=int(state.get("new_from", 0)),
            plan=Plan.model_validate(state["plan"]), index=int(state["step_index"]),
            results=[StepResult(step_id=int(r["step_id"]), output=str(r["output"]))
                     for r in state.get("results", [])],
            replans=int(state.get("replans", 0)),
            widen_cap=bool(state.get("widen_cap", False)),
            call_allowance=int(state.get("call_allowance", 0)),
        )


async def execute_plan(
    run: Run,
    *,
    model: ModelClient,
    catalog: ToolCatalog,
    tool_ctx: ToolContext,
    messages: list[dict[str, Any]],
    new_from: int,
    hooks: Hooks | None = None,
    planner_model: str,
    planner_price: Price,
) -> RunResult:
    """Plan, then walk the plan with the bounded loop. ``messages`` and ``new_from`` as for
    ``execute``; the planner runs on ``planner_model`` at ``planner_price``, on the run's budget."""
    walk = _Walk(base=list(messages), new_from=new_from,
                 widen_cap=run.limits.max_model_calls is None)
    return await _run(run, model, catalog, tool_ctx, walk, hooks or Hooks(),
                      planner_model, planner_price, parked=None)


async def resume_plan(
    run: Run,
    *,
    model: ModelClient,
    catalog: ToolCatalog,
    tool_ctx: ToolContext,
    state: dict[str, Any],
    messages: list[dict[str, Any]],
    hooks: Hooks | None = None,
    planner_model: str,
    planner_price: Price,
) -> RunResult:
    """Continue a parked plan run: ``messages`` are the parked step's messages with the
    escalation answered (``Runtime.answer_escalation``); then the rest of the plan."""
    walk = _Walk.from_state(state)
    return await _run(run, model, catalog, tool_ctx, walk, hooks or Hooks(),
                      planner_model, planner_price, parked=list(messages))


async def _run(
    run: Run,
    model: ModelClient,
    catalog: ToolCatalog,
    tool_ctx: ToolContext,
    walk: _Walk,
    hooks: Hooks,
    planner_model: str,
    planner_price: Price,
    *,
    parked: list[dict[str, Any]] | None,
) -> RunResult:
    schemas = catalog.schemas()
    prefix = Prefix.build(run.agent.system, schemas)
    checks = {name: check_about(g.config) for name, g in hooks.step_graders.items()}
    planner = Planner(model=planner_model, price=planner_price,
                      prefix=planner_prefix(run.agent.system, schemas, checks),
                      checks=frozenset(checks))
    for p in (planner.prefix, prefix):
        run.trace.emit("prefix", sha256=p.sha256, model=planner_model if p is planner.prefix
                       else run.model, system=p.system, tools=p.tools, tokens_estimate=p.tokens)
    outcome = await bounded(run, lambda: _walk(run, model, catalog, tool_ctx, prefix, planner,
                                               walk, hooks, parked))

    transcript = walk.base[walk.new_from:]
    if outcome.status == "completed":
        transcript = transcript + [{"role": "assistant",
                                    "content": [{"type": "text", "text": outcome.output or ""}]}]
    elif outcome.status != "waiting_human":
        transcript = close_transcript(transcript, f"run {outcome.status}: {outcome.detail}")
    return result_of(run, outcome, transcript)


async def _walk(
    run: Run,
    model: ModelClient,
    catalog: ToolCatalog,
    tool_ctx: ToolContext,
    prefix: Prefix,
    planner: Planner,
    walk: _Walk,
    hooks: Hooks,
    parked: list[dict[str, Any]] | None,
) -> Outcome:
    if walk.plan is None:
        halted = await _plan(run, model, planner, walk, hooks, None)
        if halted is not None:
            return halted
    while True:
        plan = walk.plan
        assert plan is not None
        if walk.index >= len(plan.steps):
            last = walk.results[-1]
            return Outcome("completed", None, last.output, walk.data)
        step = plan.steps[walk.index]
        is_last = walk.index == len(plan.steps) - 1
        if parked is not None:
            messages, parked = parked, None
            run.trace.emit("step_start", step=step.id, resumed=True)
        else:
            check = hooks.step_graders.get(step.check) if step.check else None
            messages = _step_messages(walk, step.id, is_last, check_about(check.config)
                                      if check is not None else None)
            run.trace.emit("step_start", step=step.id, instruction=step.instruction,
                           produces=step.produces, **({"check": step.check} if step.check
                                                      else {}))
        # Only the answer the person gets must match the agent's declared output type.
        agent = run.agent if is_last else replace(run.agent, output_type=None)
        # A step is graded by its own check; the last step without one by the agent's grader.
        step_hooks = replace(hooks, grader=_step_grader(hooks, step.id, step.check, is_last))
        with _swapped_agent(run, agent):
            outcome = await run_loop(run, model, catalog, tool_ctx, prefix, messages, step_hooks,
                                  walk.new_from)
        reason: str | None = None
        if outcome.status == "completed":
            reason = _cannot(outcome.output or "")
        elif outcome.status == "failed":
            reason = outcome.detail or "the step failed"
        run.trace.emit("step_end", step=step.id, status="failed" if reason else outcome.status,
                       detail=reason or outcome.detail, output_chars=len(outcome.output or ""))

        if outcome.status == "completed" and reason is None:
            walk.results.append(StepResult(step_id=step.id, output=outcome.output or ""))
            walk.index += 1
            if is_last:
                walk.data = outcome.data
            continue
        if outcome.state is not None:  # parked (waiting_human) or halted by the budget mid-step:
            outcome.state = {**outcome.state, **walk.state()}  # continue through the plan
        if outcome.status == "waiting_human":
            return outcome
        if reason is None:  # a run-wide limit or cancellation: it ends the run as it is
            return outcome
        if walk.replans >= MAX_REPLANS:
            return Outcome("failed", f"step {step.id} failed after {walk.replans} re-plan(s): "
                            f"{reason}", outcome.output)
        halted = await _plan(run, model, planner, walk, hooks,
                             Failure(step_id=step.id, reason=reason))
        if halted is not None:
            return halted


async def _plan(run: Run, model: ModelClient, planner: Planner, walk: _Walk, hooks: Hooks,
                failure: Failure | None) -> Outcome | None:
    """Plan (or re-plan from ``failure``); None when the walk can go on, else how the run ends."""
    if failure is None:
        first = planning_message(walk.task)
    else:
        assert walk.plan is not None
        first = replanning_message(walk.task, walk.plan, walk.results, failure)
    try:
        draft, calls = await make_plan(run, model, planner, first, on_usage=hooks.on_usage)
    except BudgetHalt as halt:
        run.trace.emit("budget_halt", spent_usd=round(run.budget.spent_usd, 8),
                       cap_usd=run.budget.cap_usd, needed_usd=round(halt.needed_usd, 8),
                       scope=halt.scope, cap=halt.cap_name)
        return Outcome("budget_exceeded", halt.explain(run.budget, calls=run.model_calls))
    except PlanningFailed as exc:
        where = "planning" if failure is None else f"re-planning from step {failure.step_id}"
        return Outcome("failed", f"{where} failed: {exc}")
    if failure is None:
        walk.plan = Plan.from_draft(draft)
    else:
        assert walk.plan is not None
        walk.plan = walk.plan.replanned_from(failure.step_id, draft)
        walk.replans += 1
        walk.index = failure.step_id - 1
    walk.call_allowance += calls + len(draft.steps)
    if walk.widen_cap:
        default = replace(run.limits, max_model_calls=None).model_call_cap
        run.limits = replace(run.limits, max_model_calls=default + walk.call_allowance)
    payload = {"planner_model": planner.model, "plan": walk.plan.model_dump(),
               "model_call_cap": run.limits.model_call_cap}
    if failure is None:
        run.trace.emit("plan", **payload)
    else:
        run.trace.emit("replan", from_step=failure.step_id, reason=failure.reason,
                       replans=walk.replans, **payload)
    return None


def _step_grader(hooks: Hooks, step_id: int, check: str | None,
                 is_last: bool) -> Grader | None:
    grader = hooks.step_graders.get(check) if check else None
    if grader is not None:
        return replace(grader, scope={"step": step_id, "check": check})
    return hooks.grader if is_last else None


def check_about(config: GraderConfig) -> str:
    """What a step grader checks, in the planner's and the step's words."""
    if config.about:
        return config.about
    match config.kind:
        case "parses":
            return "the answer is valid JSON"
        case "json_schema":
            return "the answer is JSON matching a schema"
        case "required":
            return f"the answer is JSON with {', '.join(config.fields)} present and non-null"
        case "predicate":
            return "the answer passes a custom check"
        case "rubric":
            return clip(config.rubric or "a rubric", 200)
        case _:
            assert_never(config.kind)


def _step_messages(walk: _Walk, step_id: int, is_last: bool,
                   check: str | None = None) -> list[dict[str, Any]]:
    """The run's messages with this step's brief added to the task: the plan, what earlier steps
    produced, and what this step must do and hand on."""
    plan = walk.plan
    assert plan is not None
    step = next(s for s in plan.steps if s.id == step_id)
    lines = [f"[keel] You are carrying out one step of a plan (goal: {plan.goal}).", "", "Plan:"]
    for s in plan.steps:
        mark = " (done)" if s.id < step_id else " ← this step" if s.id == step_id else ""
        lines.append(f"{s.id}. {s.instruction}{mark}")
    if walk.results:
        lines += ["", "What the earlier steps produced:"]
        lines += [f"--- step {r.step_id}:\n{clip(r.output)}" for r in walk.results]
    lines += ["", f"Now do step {step.id} only: {step.instruction}",
              f"Your answer must be: {step.produces}."]
    if check is not None:
        lines.append(f"Your answer is checked: {check}.")
    if is_last:
        lines.append("This is the last step: your answer is what the person receives.")
    else:
        lines.append("Answer with only that; the next steps build on it.")
    lines.append(f"If you cannot do this step, answer with one line: `{STEP_FAILED}: <why>`.")
    brief = {"type": "text", "text": "\n".join(lines)}
    out = list(walk.base)
    if out and out[-1]["role"] == "user":
        content = out[-1]["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        out[-1] = {**out[-1], "content": blocks + [brief]}
    else:
        out.append({"role": "user", "content": [brief]})
    return out


def _cannot(answer: str) -> str | None:
    """The reason when the model answered that it cannot do the step."""
    match = _STEP_FAILED.match(answer)
    if match is None:
        return None
    return "the executor said it cannot do this step: " + (match.group(1).strip() or "no reason")


@contextmanager
def _swapped_agent(run: Run, agent: Any) -> Iterator[None]:
    saved = run.agent
    run.agent = agent
    try:
        yield
    finally:
        run.agent = saved
