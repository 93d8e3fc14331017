"""The bounded tool-use loop: prepare → call → resolve → act, until an answer or a limit.

Every exit sets exactly one status:
  completed        the model gave a final answer (validated when the agent declares a type)
  budget_exceeded  the next call's worst case did not fit, or spend reached the cap
  step_limit       the model asked for more tool calls (or model calls) than allowed
  timeout          the run's wall-clock deadline passed; in-flight calls were cancelled
  waiting_human    a tool escalated; the state to resume is in the result
  cancelled        someone asked the run to stop
  failed           the model API failed after retries, refused, or answered nothing usable
"""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agents.budget import BudgetHalt
from agents.caching import caches
from agents.errors import ModelCallError
from agents.executor.act import results_message, run_tools
from agents.executor.call import InputAnchor, OnUsage, call_model
from agents.executor.prepare import Prefix, budget_note
from agents.executor.resolve import classify, close_transcript, repair_request, validate_output
from agents.model.types import ModelClient
from agents.run import PendingEscalation, Run, RunResult, RunStatus
from agents.tools.contract import EscalationRequest, ToolCatalog, ToolContext

if TYPE_CHECKING:  # reflexion calls the model through this package's call step
    from agents.reflexion import Grader, ToolGraders

# Progress for a person watching: ("tool", name) before a tool runs, ("text", piece) as the answer
# streams. Failures here never touch the run.
OnProgress = Callable[[str, str], Awaitable[None]]


@dataclass
class Hooks:
    on_usage: OnUsage | None = None
    on_progress: OnProgress | None = None
    grader: Grader | None = None
    """Grades each final answer: one retry with its feedback, then a person (agents/reflexion)."""
    tool_graders: ToolGraders | None = None
    """Grades the results of some tools the same way; the model decides the retry."""
    step_graders: dict[str, Grader] = field(default_factory=dict)
    """Checks the planner may attach to a plan step (agents/executor/plan.py), by name."""


@dataclass
class Outcome:
    status: RunStatus
    detail: str | None = None
    output: str | None = None
    data: Any = None
    escalation: PendingEscalation | None = None
    state: dict[str, Any] | None = field(default=None)


async def execute(
    run: Run,
    *,
    model: ModelClient,
    catalog: ToolCatalog,
    tool_ctx: ToolContext,
    messages: list[dict[str, Any]],
    new_from: int,
    hooks: Hooks | None = None,
) -> RunResult:
    """Run the loop over ``messages`` (history + this run's task). ``new_from`` is the index of
    the first message that belongs to this run."""
    hooks = hooks or Hooks()
    prefix = Prefix.of(run.agent.system, catalog, cache=caches(run.agent.name))
    system, tools = prefix.encoded
    run.trace.emit("prefix", sha256=prefix.sha256, model=run.model, system=system, tools=tools,
                   tokens_estimate=prefix.tokens)
    messages = list(messages)
    # issue 13: start from the exact count the session kept from its last turn, if it still fits
    anchor = InputAnchor.seeded(run.session_anchor, prefix, messages)
    outcome = await bounded(
        run, lambda: run_loop(run, model, catalog, tool_ctx, prefix, messages, hooks, new_from,
                              anchor=anchor))
    transcript = messages[new_from:]
    if outcome.status not in ("completed", "waiting_human"):
        transcript = close_transcript(transcript, f"run {outcome.status}: {outcome.detail}")
    result = result_of(run, outcome, transcript)
    if outcome.status == "completed":
        result = dataclasses.replace(result, anchor=anchor.kept(prefix, messages))
    return result


async def bounded(run: Run, body: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """Run ``body`` inside the run's deadline and turn every way out into one Outcome."""
    try:
        async with asyncio.timeout_at(loop_deadline(run.deadline)):
            return await body()
    except TimeoutError:
        run.trace.emit("limit", limit="timeout", timeout_s=run.limits.timeout_s,
                       elapsed_s=round(run.elapsed_s, 3))
        return Outcome("timeout", f"the run passed its {run.limits.timeout_s:g} s deadline "
                       f"after {run.steps} tool call(s); in-flight calls were cancelled")
    except asyncio.CancelledError:
        if not run.cancel_requested:
            run.trace.emit("error", where="run", message="run task cancelled (shutdown)")
            raise
        uncancel()
        return Outcome("cancelled", "cancelled on request")
    except ModelCallError as exc:
        run.trace.emit("error", where="model", message=str(exc), status=exc.status)
        return Outcome("failed", f"the model API failed: {exc}")
    except Exception as exc:  # a bug must still end the run with a status and a trace
        run.trace.emit("error", where="executor", message=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc())
        return Outcome("failed", f"internal error: {type(exc).__name__}")


def result_of(run: Run, outcome: Outcome, transcript: list[dict[str, Any]]) -> RunResult:
    return RunResult(
        run_id=run.id, trace_id=run.trace_id, agent=run.agent.name, status=outcome.status,
        detail=outcome.detail, output=outcome.output, output_data=outcome.data,
        cost_usd=run.budget.spent_usd, budget_usd=run.budget.cap_usd, steps=run.steps,
        model_calls=run.model_calls, usage=run.usage, duration_s=run.elapsed_s,
        messages=transcript, escalation=outcome.escalation, state=outcome.state,
    )


async def run_loop(
    run: Run,
    model: ModelClient,
    catalog: ToolCatalog,
    tool_ctx: ToolContext,
    prefix: Prefix,
    messages: list[dict[str, Any]],
    hooks: Hooks,
    new_from: int,
    *,
    anchor: InputAnchor | None = None,
) -> Outcome:
    anchor = anchor or InputAnchor()
    sent_before = 0
    while True:
        if run.model_calls >= run.limits.model_call_cap:
            run.trace.emit("limit", limit="model_calls", max=run.limits.model_call_cap)
            return Outcome("step_limit", f"stopped after {run.model_calls} model calls without "
                            "a final answer")
        try:
            response = await call_model(
                run, model, prefix, messages, anchor, sent_before=sent_before,
                on_usage=hooks.on_usage, on_text=_text_progress(hooks),
            )
        except BudgetHalt as halt:
            run.trace.emit("budget_halt", spent_usd=round(run.budget.spent_usd, 8),
                           cap_usd=run.budget.cap_usd, needed_usd=round(halt.needed_usd, 8),
                           scope=halt.scope, cap=halt.cap_name)
            # Halted before a call, the messages are whole: a person may grant more budget and
            # the run continues from here (Runtime.continue_with_budget) — unless a daily cap
            # stopped it, which more run budget cannot lift.
            return Outcome("budget_exceeded", halt.explain(run.budget, calls=run.model_calls),
                           state=_resume_state(run, messages, None, new_from)
                           if halt.scope == "run" else None)
        sent_before = len(messages)
        messages.append({"role": "assistant", "content": response.content})
        turn = classify(response)
        extra: list[dict[str, Any]] = []
        if run.budget.should_warn():
            run.trace.emit("budget_warn", spent_usd=round(run.budget.spent_usd, 8),
                           cap_usd=run.budget.cap_usd, fraction=round(run.budget.fraction_used, 4))
            extra.append(budget_note(run.budget.left_usd, run.budget.cap_usd))

        if turn.kind == "final":
            check = validate_output(turn.text, run.agent.output_type)
            if check.error is None and hooks.grader is not None:
                try:
                    review = await hooks.grader.review(run, model, turn.text, messages,
                                                       new_from, hooks.on_usage)
                except BudgetHalt as halt:  # a rubric the budget cannot hold: never sent unchecked
                    run.trace.emit("budget_halt", spent_usd=round(run.budget.spent_usd, 8),
                                   cap_usd=run.budget.cap_usd,
                                   needed_usd=round(halt.needed_usd, 8), scope=halt.scope,
                                   cap=halt.cap_name, reason="no budget left to check the answer")
                    return Outcome("budget_exceeded", "no budget left to check the answer: "
                                   + halt.explain(run.budget, calls=run.model_calls))
                if review.action == "retry":
                    assert review.feedback_message is not None
                    messages.append(_with_extra(review.feedback_message, extra))
                    sent_before = 0  # a rubric call may have come between: trace them whole
                    continue
                if review.action == "escalate":
                    assert review.escalation is not None and review.parked is not None
                    return _graded_out(run, review.escalation, review.detail, review.parked,
                                       new_from)
            if check.error is None:
                return Outcome("completed", None, turn.text, check.data)
            run.trace.emit("output_invalid", error=check.error)
            assert run.agent.output_type is not None
            messages.append(_with_extra(repair_request(check.error, run.agent.output_type), extra))
            continue
        if turn.kind == "truncated" and run.last_call_shrunk:
            run.trace.emit("budget_halt", spent_usd=round(run.budget.spent_usd, 8),
                           cap_usd=run.budget.cap_usd, needed_usd=0, reason="answer cut short")
            return Outcome("budget_exceeded", f"the answer was cut short: only "
                            f"${run.budget.left_usd:.4f} of the ${run.budget.cap_usd:.2f} budget "
                            "was left for it", turn.text + " …" if turn.text else None)
        if turn.kind == "truncated":
            if turn.text and run.agent.output_type is None:
                return Outcome("completed", "the answer was cut at max_tokens", turn.text + " …")
            return Outcome("failed", "the model's answer was cut at max_tokens before it was usable")
        if turn.kind == "refused":
            return Outcome("failed", "the model declined to answer", turn.text or None)
        if turn.kind == "empty":
            return Outcome("failed", "the model returned an empty answer")

        # turn.kind == "tools"
        if run.steps + len(turn.tool_uses) > run.limits.max_steps:
            run.trace.emit("limit", limit="steps", max=run.limits.max_steps, used=run.steps,
                           requested=len(turn.tool_uses))
            return Outcome("step_limit", f"the agent wanted more than {run.limits.max_steps} "
                            "tool calls; stopped before running more")
        if run.budget.exhausted:
            run.trace.emit("budget_halt", spent_usd=round(run.budget.spent_usd, 8),
                           cap_usd=run.budget.cap_usd, needed_usd=0)
            return Outcome("budget_exceeded", f"spent the whole ${run.budget.cap_usd:.2f} budget")
        run.steps += len(turn.tool_uses)
        if hooks.on_progress is not None:
            for block in turn.tool_uses:
                await _safe(hooks.on_progress("tool", block["name"]))
        outcomes = await run_tools(catalog, tool_ctx, turn.tool_uses)
        if hooks.tool_graders is not None:
            calls = run.model_calls
            outcomes = await hooks.tool_graders.review(run, model, turn.tool_uses, outcomes,
                                                       messages, new_from, hooks.on_usage)
            if run.model_calls != calls:
                sent_before = 0  # a rubric call came between: trace the next request whole
        messages.append(results_message(turn.tool_uses, outcomes, extra))
        escalations = [(b, o) for b, o in zip(turn.tool_uses, outcomes, strict=True) if o.escalation]
        if escalations:
            block, outcome = escalations[0]
            assert outcome.escalation is not None
            pending = PendingEscalation(request=outcome.escalation, tool_use_id=block["id"])
            run.trace.emit("escalation", tool_use_id=block["id"], reason=outcome.escalation.reason,
                           options=list(outcome.escalation.options))
            return Outcome("waiting_human", f"asked a human: {outcome.escalation.reason}",
                            escalation=pending,
                            state=_resume_state(run, messages, block["id"], new_from))


GRADE_ESCALATION_ID = "keel_grade_review"
"""The escalation a twice-failed answer parks on (agents/reflexion.py answers it)."""


def _graded_out(run: Run, request: EscalationRequest, detail: str | None,
                parked: list[dict[str, Any]], new_from: int) -> Outcome:
    """An answer failed its grader twice: a person decides, shown both attempts."""
    run.trace.emit("escalation", tool_use_id=GRADE_ESCALATION_ID, reason=request.reason,
                   options=list(request.options))
    return Outcome("waiting_human", detail or f"asked a human: {request.reason}",
                   escalation=PendingEscalation(request=request, tool_use_id=GRADE_ESCALATION_ID),
                   state=_resume_state(run, parked, GRADE_ESCALATION_ID, new_from))


def _with_extra(message: dict[str, Any], extra: list[dict[str, Any]]) -> dict[str, Any]:
    return {**message, "content": list(message["content"]) + extra} if extra else message


def _resume_state(run: Run, messages: list[dict[str, Any]], tool_use_id: str | None,
                  new_from: int) -> dict[str, Any]:
    return {
        "messages": messages,
        "new_from": new_from,
        "tool_use_id": tool_use_id,
        "limits": dataclasses.asdict(run.limits),
        "spent_usd": run.budget.spent_usd,
        "warned": run.budget.warned,
        "steps": run.steps,
        "model_calls": run.model_calls,
        "elapsed_s": run.elapsed_s,
    }


def _text_progress(hooks: Hooks) -> Callable[[str], Awaitable[None]] | None:
    if hooks.on_progress is None:
        return None
    on_progress = hooks.on_progress

    async def on_text(piece: str) -> None:
        await _safe(on_progress("text", piece))

    async def retract(chars: int) -> None:
        """The last ``chars`` characters shown belong to an answer that broke off and is asked
        again (executor/call.py): the progress drops them instead of showing them twice."""
        await _safe(on_progress("retract", str(chars)))

    # the model is asked to stream only while the progress shows text (agents.model.watched)
    streams_text = getattr(on_progress, "streams_text", None)
    if streams_text is not None:
        on_text.watched = streams_text  # type: ignore[attr-defined]
    on_text.retract = retract  # type: ignore[attr-defined]
    return on_text


async def _safe(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception:  # progress is best effort; the run never fails for it
        pass


def loop_deadline(deadline_monotonic: float) -> float:
    """time.monotonic() deadline → the running loop's clock."""
    import time

    loop = asyncio.get_running_loop()
    return loop.time() + (deadline_monotonic - time.monotonic())


def uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
