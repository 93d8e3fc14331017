"""The planner: one reasoning-model call that writes a structured plan for the executor to walk.

The plan comes back through an optional tool, ``submit_plan`` (``tool_choice`` stays auto: the API
refuses a forced tool choice while thinking is on). Its input is validated with pydantic; an answer
without a valid plan gets one repair request (the model's turn, thinking blocks and signatures
included, goes back unchanged), then planning fails with a clear reason.

Planner calls are ordinary calls of the run: reserved and settled on the run's budget at the
planner's price, traced as ``model_request`` / ``model_response``, counted in ``model_calls``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from agents.executor.call import InputAnchor, OnUsage, call_model
from agents.executor.prepare import Prefix
from agents.model.types import ModelClient, ModelResponse
from agents.pricing import Price
from agents.run import Run

SUBMIT_PLAN = "submit_plan"
MAX_PLAN_STEPS = 6
"""Most steps in one plan (or in the remainder a re-plan writes)."""
PLANNER_THINKING_BUDGET = 2048
"""Thinking tokens for 4.5/4.6-era models (``enabled``); adaptive models decide for themselves."""
PLAN_TEXT_TOKENS = 1024
"""Output kept free for the plan itself when thinking shares ``max_tokens`` with it."""
MIN_THINKING_BUDGET = 1024
"""The API's floor for ``budget_tokens``."""
STEP_RESULT_CHARS = 6000
"""An earlier step's result, as shown to the planner and to later steps, is cut to this."""

ThinkingEra = Literal["adaptive", "enabled"]

_MODEL_VERSION = re.compile(
    r"^claude-(?:(?:opus|sonnet|haiku)-)?(\d+)(?:-(\d{1,2}))?(?:-(?:opus|sonnet|haiku))?(?:-\d{8})?$"
)


# ------------------------------------------------------------------ thinking


def thinking_era(model: str) -> ThinkingEra | None:
    """Which form of extended thinking ``model`` accepts: ``adaptive`` from Claude 4.7 on (those
    reject ``enabled``), ``enabled`` from 3.7 to 4.6, None for older or unrecognised names."""
    match = _MODEL_VERSION.match(model)
    if match is None:
        return None
    version = (int(match.group(1)), int(match.group(2) or 0))
    if version >= (4, 7):
        return "adaptive"
    if version >= (3, 7):
        return "enabled"
    return None


def thinking_config(model: str, budget_tokens: int, *, max_tokens: int) -> dict[str, Any] | None:
    """The ``thinking`` parameter for a call of ``model`` with ``max_tokens``, or None (no
    thinking) when the model has none or ``max_tokens`` cannot hold the API's 1024-token minimum.

    ``enabled`` needs ``1024 <= budget_tokens < max_tokens``; the budget is clamped below
    ``max_tokens``."""
    era = thinking_era(model)
    if era == "adaptive":
        return {"type": "adaptive"}
    if era == "enabled":
        budget = min(budget_tokens, max_tokens - 1)
        if budget < MIN_THINKING_BUDGET:
            return None
        return {"type": "enabled", "budget_tokens": budget}
    return None


# ------------------------------------------------------------------ the plan


class StepDraft(BaseModel):
    """One step as the planner submits it (keel numbers the steps)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    instruction: str = Field(min_length=1, max_length=2000)
    produces: str = Field(min_length=1, max_length=600)
    check: str | None = Field(None, max_length=64)
    """One of the agent's step graders, offered in the plan tool when it has any."""


class PlanDraft(BaseModel):
    """The input of ``submit_plan``: the trust boundary for what the planner wrote."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    goal: str = Field(min_length=1, max_length=600)
    steps: list[StepDraft] = Field(min_length=1, max_length=MAX_PLAN_STEPS)


class PlanStep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=1)
    """1-based position in the plan; stable across re-plans for the steps already done."""
    instruction: str
    """What the executor does in this step."""
    produces: str
    """What the step must hand on (its answer), e.g. "the three headlines with their links"."""
    check: str | None = None
    """The step grader its answer must pass (agents/reflexion.py), if the planner chose one."""

    @model_serializer(mode="wrap")
    def _without_no_check(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("check") is None:  # plans without checks keep the shape they always had
            out.pop("check", None)
        return out


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    goal: str
    steps: list[PlanStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _numbered(self) -> Plan:
        ids = [s.id for s in self.steps]
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"step ids must be 1..{len(ids)} in order, got {ids}")
        return self

    @classmethod
    def from_draft(cls, draft: PlanDraft) -> Plan:
        return cls(goal=draft.goal, steps=_numbered_steps(draft.steps, first=1))

    def replanned_from(self, step_id: int, draft: PlanDraft) -> Plan:
        """Steps before ``step_id`` kept as they are; the draft replaces ``step_id`` and after."""
        kept = [s for s in self.steps if s.id < step_id]
        return Plan(goal=draft.goal, steps=kept + _numbered_steps(draft.steps, first=step_id))


def _numbered_steps(drafts: list[StepDraft], *, first: int) -> list[PlanStep]:
    return [PlanStep(id=first + i, instruction=d.instruction, produces=d.produces, check=d.check)
            for i, d in enumerate(drafts)]


SUBMIT_PLAN_TOOL: dict[str, Any] = {
    "name": SUBMIT_PLAN,
    "description": "Submit the plan. Call it once, with every step, in order.",
    "input_schema": {
        "type": "object",
        "properties": {
            "goal": {"type": "string", "description": "One sentence: what the person gets at "
                     "the end."},
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_PLAN_STEPS,
                "items": {
                    "type": "object",
                    "properties": {
                        "instruction": {"type": "string", "description": "What the executor "
                                        "does in this step, concrete enough to act on."},
                        "produces": {"type": "string", "description": "What this step must "
                                     "hand on to the next ones (or, for the last step, the "
                                     "final answer's form)."},
                    },
                    "required": ["instruction", "produces"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["goal", "steps"],
        "additionalProperties": False,
    },
}


# ------------------------------------------------------------------ prompts

_PLANNER_SYSTEM = """\
You are the planner of a keel agent. You do not do the work yourself: you write the plan that an \
executor agent follows, one step at a time, with the tools listed below.

Submit the plan by calling the `submit_plan` tool once:
- `goal`: one sentence, what the person gets at the end.
- `steps`: 1 to {max_steps} steps, in order. Each has an `instruction` (what the executor does) \
and `produces` (what the step must hand on).
- Each step sees the task, the plan and what earlier steps produced, but not their tool calls: \
make every `produces` carry what later steps need (facts, figures, links).
- The last step produces the final answer for the person, in the form the task asks for.
- Prefer few steps. Do not add a step for work that needs no tool.

The executor agent's own instructions:
<executor>
{executor}
</executor>

Tools the executor can use:
{tools}"""


_CHECKS = """

Checks a step's answer can be given (optional `check` of a step: its answer must pass it, or \
the step is retried once and then a person decides):
{checks}
Give a step the check that fits what it `produces`; leave it out where none fits."""


def planner_prefix(executor_system: str, tool_schemas: list[dict[str, Any]],
                   checks: dict[str, str] | None = None) -> Prefix:
    """The planner's byte-stable prefix for one agent: its instructions and ``submit_plan``
    (with a ``check`` per step when the agent has step graders: name → what it checks)."""
    tools = "\n".join(f"- {t['name']}: {_first_line(t.get('description', ''))}"
                      for t in tool_schemas) or "- (none: the executor can only write)"
    system = _PLANNER_SYSTEM.format(max_steps=MAX_PLAN_STEPS, executor=executor_system.strip()
                                    or "(none)", tools=tools)
    if not checks:
        return Prefix.build(system, [SUBMIT_PLAN_TOOL])
    system += _CHECKS.format(checks="\n".join(f"- {n}: {about}" for n, about in checks.items()))
    tool = copy.deepcopy(SUBMIT_PLAN_TOOL)
    tool["input_schema"]["properties"]["steps"]["items"]["properties"]["check"] = {
        "type": "string", "enum": list(checks),
        "description": "The check this step's answer must pass (optional)."}
    return Prefix.build(system, [tool])


@dataclass(frozen=True, kw_only=True)
class StepResult:
    step_id: int
    output: str


@dataclass(frozen=True, kw_only=True)
class Failure:
    """The step a re-plan starts from, and why it failed."""

    step_id: int
    reason: str


def planning_message(task: str) -> dict[str, Any]:
    return _user(f"Task:\n{task}\n\nWrite the plan for this task and submit it with "
                 f"`{SUBMIT_PLAN}`.")


def replanning_message(task: str, plan: Plan, results: list[StepResult],
                       failure: Failure) -> dict[str, Any]:
    """The re-planner sees the task, the plan so far, what the completed steps produced and why
    the failed step failed; it writes only the remainder, from the failed step on."""
    done = {r.step_id for r in results}
    lines = [f"Task:\n{task}", "", f"The plan so far (goal: {plan.goal}):"]
    for step in plan.steps:
        mark = ("done" if step.id in done else "failed" if step.id == failure.step_id
                else "not started")
        lines.append(f"{step.id}. [{mark}] {step.instruction} — produces: {step.produces}")
    if results:
        lines += ["", "What the completed steps produced:"]
        lines += [f"--- step {r.step_id}:\n{clip(r.output)}" for r in results]
    lines += ["", f"Step {failure.step_id} failed: {failure.reason}", ""]
    done_steps = "Step 1 is" if failure.step_id == 2 else f"Steps 1–{failure.step_id - 1} are"
    kept = (f" {done_steps} done and will not run again; build on what they produced."
            if failure.step_id > 1 else "")
    lines.append(
        f"Re-plan from step {failure.step_id}: submit with `{SUBMIT_PLAN}` the steps that replace "
        f"step {failure.step_id} and every step after it.{kept} Take a different approach to what "
        "failed. If the task cannot be finished, plan a last step that gives the person what can "
        "be given and says what is missing."
    )
    return _user("\n".join(lines))


def clip(text: str, limit: int = STEP_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + " […cut]"


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


# ------------------------------------------------------------------ reading the answer


class PlanningFailed(Exception):
    """The planner gave no valid plan, even after the repair request."""


@dataclass(frozen=True)
class Reading:
    draft: PlanDraft | None
    error: str | None


def read_plan(response: ModelResponse, checks: frozenset[str] = frozenset()) -> Reading:
    """The validated ``submit_plan`` input of ``response``, or what is wrong with the answer."""
    calls = [b for b in response.tool_uses if b.get("name") == SUBMIT_PLAN]
    if response.stop_reason == "max_tokens":
        return Reading(None, "the answer was cut at max_tokens before the plan was complete")
    if not calls:
        return Reading(None, f"the answer did not call `{SUBMIT_PLAN}`")
    try:
        draft = PlanDraft.model_validate(calls[0].get("input") or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        return Reading(None, f"the plan is not valid: {problems}")
    unknown = [f"steps.{i}.check: {s.check!r} is not one of {sorted(checks)}"
               for i, s in enumerate(draft.steps) if s.check is not None and s.check not in checks]
    if unknown:
        return Reading(None, f"the plan is not valid: {'; '.join(unknown)}")
    return Reading(draft, None)


def repair_message(response: ModelResponse, error: str) -> dict[str, Any]:
    """Answers every tool call of the rejected turn (the API requires it) and asks again."""
    blocks: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": b["id"], "is_error": True,
         "content": json.dumps({"error": "invalid_plan", "message": error})}
        for b in response.tool_uses
    ]
    blocks.append({"type": "text", "text": (
        f"[keel] The plan could not be used: {error}. Call `{SUBMIT_PLAN}` again with the whole, "
        f"corrected plan (1 to {MAX_PLAN_STEPS} steps, each with `instruction` and `produces`)."
    )})
    return {"role": "user", "content": blocks}


# ------------------------------------------------------------------ the call


@dataclass(frozen=True, kw_only=True)
class Planner:
    """The planner model of a run and the prefix it plans with."""

    model: str
    price: Price
    prefix: Prefix
    thinking_budget: int = PLANNER_THINKING_BUDGET
    checks: frozenset[str] = frozenset()
    """The step graders a plan may name (any other name is repaired like an invalid plan)."""


async def make_plan(
    run: Run,
    client: ModelClient,
    planner: Planner,
    first: dict[str, Any],
    *,
    on_usage: OnUsage | None = None,
) -> tuple[PlanDraft, int]:
    """Ask for a plan (``first`` is the planning or re-planning message); one repair at most.

    Returns the draft and the number of model calls made. Raises PlanningFailed with the reason,
    and lets BudgetHalt and ModelCallError through for the executor to turn into a status."""
    messages = [first]
    anchor = InputAnchor()
    sent_before = 0
    error = ""
    for attempt in (1, 2):
        response = await _planner_call(run, client, planner, messages, anchor, sent_before,
                                       on_usage)
        if response.stop_reason == "refusal":
            raise PlanningFailed("the planner declined to plan this task")
        reading = read_plan(response, planner.checks)
        if reading.draft is not None:
            return reading.draft, attempt
        error = reading.error or "no plan"
        run.trace.emit("plan_invalid", attempt=attempt, error=error)
        sent_before = len(messages)
        # The turn goes back exactly as received: thinking blocks keep their signatures.
        messages.append({"role": "assistant", "content": response.content})
        messages.append(repair_message(response, error))
    raise PlanningFailed(f"the planner did not submit a valid plan after one repair: {error}")


async def _planner_call(
    run: Run,
    client: ModelClient,
    planner: Planner,
    messages: list[dict[str, Any]],
    anchor: InputAnchor,
    sent_before: int,
    on_usage: OnUsage | None,
) -> ModelResponse:
    # The same reservation call_model will make (the meter does not change in between), so the
    # thinking budget fits the max_tokens the call will really have.
    preview = run.budget.reserve(planner.price, input_tokens=anchor.estimate(planner.prefix,
                                 messages), max_tokens=run.limits.max_tokens)
    thinking = thinking_config(planner.model,
                               min(planner.thinking_budget, preview.max_tokens - PLAN_TEXT_TOKENS),
                               max_tokens=preview.max_tokens)
    with calling_as(run, planner.model, planner.price):
        return await call_model(run, client, planner.prefix, messages, anchor,
                                sent_before=sent_before, on_usage=on_usage, thinking=thinking)


@contextmanager
def calling_as(run: Run, model: str, price: Price) -> Iterator[None]:
    """Make one call of the run with another model and price: the same meter, counters, usage
    and trace. (A thin stand-in for a ``model=``/``price=`` override of ``call_model``.)"""
    saved = run.model, run.price
    run.model, run.price = model, price
    try:
        yield
    finally:
        run.model, run.price = saved
