"""``research``: fan independent sub-questions out to child runs (see agents/research.py).

The tool only asks the run's fan-out (``ToolContext.extras["research"]``, set by the runtime for
agents that list the tool) to run the branches; budgets, deadlines and tracing live there.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import Field

from agents.tools.contract import ToolContext
from agents.tools.declare import ToolArgs, tool
from agents.tools.errors import ToolError
from agents.tools.policy import NO_RETRY

RESEARCH_EXTRA = "research"


@runtime_checkable
class FanOutLike(Protocol):
    """``agents.research.FanOut`` as the tool sees it."""

    @property
    def max_branches(self) -> int: ...

    async def run(self, questions: list[str]) -> list[Any]: ...


class ResearchArgs(ToolArgs):
    questions: list[str] = Field(
        min_length=2, max_length=10,
        description="Independent sub-questions, each answerable on its own (no question may "
                    "depend on another's answer). They are researched at the same time.")


@tool(
    name="research",
    description=(
        "Research several independent sub-questions at once: each goes to its own assistant "
        "run, in parallel, within a share of your budget and time. Use it when a question "
        "splits into parts that do not depend on each other. Returns JSON: branches, each with "
        "question, status and answer (or error). If a branch failed, say so in your answer."
    ),
    timeout_s=24 * 3600.0,  # bounded by the run's own deadline, which the children end before
    retry=NO_RETRY,
)
async def research(args: ResearchArgs, ctx: ToolContext) -> dict[str, Any]:
    fan_out = ctx.extras.get(RESEARCH_EXTRA)
    if not isinstance(fan_out, FanOutLike):
        raise ToolError("unsupported", "Parallel research is not available here.",
                        "Answer the sub-questions yourself.")
    questions = [q.strip() for q in args.questions if q.strip()]
    if len(questions) > fan_out.max_branches:
        raise ToolError("invalid_arguments", f"At most {fan_out.max_branches} "
                        "sub-questions at once.", "Merge or drop the least important ones.")
    branches = await fan_out.run(questions)
    failed = [b for b in branches if b.status != "completed"]
    out: dict[str, Any] = {"branches": [b.for_model() for b in branches]}
    if failed:
        out["note"] = (f"{len(failed)} of {len(branches)} branch(es) did not complete; say which "
                       "in your answer and do not invent their results.")
    return out
