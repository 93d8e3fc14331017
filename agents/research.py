"""Parallel research under one budget: the ``research`` tool (agents/tools/research.py) fans
sub-questions out to child runs.

A parent run calls ``research(questions=[...])``; each question becomes a child run of the
configured agent (``[agents.X.research] agent``), at most ``concurrency`` at once. Bounds:

- budget: what is left of the parent's cap, less ``synthesis_share`` kept for the parent's own
  synthesis, is split evenly; each child's cap is its share, and the whole pool is held on the
  parent's meter while the children run, so nothing else in the parent can spend it. After the
  fan-in the parent is charged what the children really spent (never more than the pool):
  parent + children ≤ the parent's cap. Every child call is held in the daily ledger as usual.
- time: each child's deadline ends before the parent's, leaving the parent time to synthesise.
- failure: a child that fails, times out or runs out of budget is reported in the tool result
  (status and why), never fatal; the parent's model is told to say so in its synthesis.

Tracing: the parent's trace gets ``fan_out`` (each branch's question, run id, trace id, budget
and deadline) and ``fan_in`` (each branch's status, cost and when it started and ended, relative
to the fan-out; the charge to the parent). Each child's ``run_start`` names its parent trace.
Replay: the parent replays with the recorded tool result, and ``charging_catalog`` re-applies
the recorded charge so the parent's later reservations match; each child replays on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.errors import KeelError
from agents.patterns_config import ResearchConfig
from agents.tools.errors import ToolError
from agents.tools.research import RESEARCH_EXTRA

if TYPE_CHECKING:  # agents.run imports the tools package, which holds the research tool
    from agents.run import Run
    from agents.runtime import Runtime
    from agents.tools.contract import ToolCall, ToolCatalog, ToolContext, ToolOutcome
MIN_BRANCH_USD = 0.001
ANSWER_CHARS = 4000
SYNTHESIS_TIME_S = 30.0
"""Most of the parent's remaining time kept for its synthesis (at most a quarter of it)."""


@dataclass(frozen=True, kw_only=True)
class Branch:
    index: int
    question: str
    run_id: str
    trace_id: str | None = None
    status: str = "not_started"
    detail: str | None = None
    output: str | None = None
    cost_usd: float = 0.0
    started_s: float | None = None
    ended_s: float | None = None

    def for_model(self) -> dict[str, Any]:
        out: dict[str, Any] = {"question": self.question, "status": self.status}
        if self.status == "completed":
            text = self.output or ""
            out["answer"] = text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS] + " …"
        else:
            out["error"] = self.detail or self.status
        out["trace_id"] = self.trace_id
        return out


class FanOut:
    """The ``research`` tool's access to the runtime, bound to one parent run."""

    def __init__(self, runtime: Runtime, parent: Run, config: ResearchConfig | None, *,
                 request_type: Any) -> None:
        self.runtime = runtime
        self.parent = parent
        self.config = config or ResearchConfig()
        self.request_type = request_type
        """``agents.runtime.RunRequest`` (passed in: the runtime imports this module)."""

    @property
    def max_branches(self) -> int:
        return self.config.max_branches

    async def run(self, questions: list[str]) -> list[Branch]:
        parent, config = self.parent, self.config
        if config.agent not in self.runtime.agents:
            raise ToolError("unsupported", f"The research agent {config.agent!r} does not exist.",
                            "Answer from what you have.")
        left = parent.budget.left_usd
        pool = left * (1 - config.synthesis_share)
        share = pool / len(questions)
        remaining = parent.deadline - time.monotonic()
        child_timeout = remaining - min(SYNTHESIS_TIME_S, remaining / 4)
        if share < MIN_BRANCH_USD or child_timeout <= 1:
            raise ToolError("forbidden", f"Too little budget or time is left to research "
                            f"(${left:.4f}, {remaining:.0f} s).", "Answer from what you have.")
        spec = self.runtime.agent(config.agent)
        limits = dataclasses.replace(spec.limits, budget_usd=share,
                                     timeout_s=min(spec.limits.timeout_s, child_timeout))
        branches = [Branch(index=i, question=q, run_id=str(uuid.uuid4()))
                    for i, q in enumerate(questions)]
        parent.trace.emit("fan_out", agent=config.agent,
                          concurrency=config.concurrency, pool_usd=round(pool, 8),
                          branch_budget_usd=round(share, 8), branch_timeout_s=limits.timeout_s,
                          branches=[{"index": b.index, "question": b.question,
                                     "run_id": b.run_id} for b in branches])
        parent.budget.spent_usd += pool  # held: the children's caps add up to it
        gate = asyncio.Semaphore(config.concurrency)
        t0 = time.monotonic()

        async def one(branch: Branch) -> Branch:
            async with gate:
                return await self._branch(branch, limits, t0)

        tasks = [asyncio.create_task(one(b), name=f"branch {b.index}") for b in branches]
        try:
            done = await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            # the parent is cancelled or timed out: its children end cancelled, with their
            # status recorded, before it goes
            for b in branches:
                self.runtime.cancel(b.run_id)
            await asyncio.wait(tasks)
            raise
        finally:
            parent.budget.spent_usd -= pool
        spent = min(pool, sum(b.cost_usd for b in done))
        parent.budget.spent_usd += spent
        parent.trace.emit("fan_in", charged_usd=round(spent, 8),
                          branches=[{"index": b.index, "run_id": b.run_id,
                                     "trace_id": b.trace_id, "status": b.status,
                                     "detail": b.detail, "cost_usd": round(b.cost_usd, 8),
                                     "started_s": b.started_s, "ended_s": b.ended_s}
                                    for b in done])
        return list(done)

    async def _branch(self, branch: Branch, limits: Any, t0: float) -> Branch:
        parent = self.parent
        started = time.monotonic()
        request = self.request_type(
            agent=self.config.agent, new_from=0, kind=parent.kind if parent.kind != "resume"
            else "cli", user_id=parent.user_id, chat_id=parent.chat_id,
            thread_id=parent.thread_id, limits=limits, started=started,
            messages=[{"role": "user", "content": [{"type": "text", "text": branch.question}]}],
            request_key=f"{parent.request_key or parent.id}:branch:{branch.index}",
            parent_trace_id=parent.trace_id)
        try:
            result = await self.runtime.run(request, run_id=branch.run_id)
        except KeelError as exc:  # could not start (a daily cap): reported, not fatal
            return dataclasses.replace(branch, status="failed", detail=str(exc),
                                       started_s=round(started - t0, 4),
                                       ended_s=round(time.monotonic() - t0, 4))
        return dataclasses.replace(
            branch, trace_id=result.trace_id, status=result.status, detail=result.detail,
            output=result.output, cost_usd=result.cost_usd, started_s=round(started - t0, 4),
            ended_s=round(time.monotonic() - t0, 4))


# ------------------------------------------------------------------ replay


class ChargingCatalog:
    """A replay catalog that charges the parent what its recorded fan-ins charged, when the
    ``research`` call they answer is replayed (its result comes from the recording)."""

    def __init__(self, inner: ToolCatalog, events: Iterable[dict[str, Any]], run_of: Any) -> None:
        self.inner = inner
        self.run_of = run_of
        self.charges: dict[str, float] = {}
        ids = [str(e.get("id")) for e in events if e.get("type") == "tool_call"
               and e.get("name") == "research"]
        fan_ins = [e for e in events if e.get("type") == "fan_in"]
        for call_id, fan_in in zip(ids, fan_ins, strict=False):
            self.charges[call_id] = float(fan_in.get("charged_usd") or 0.0)

    def schemas(self) -> list[dict[str, Any]]:
        return self.inner.schemas()

    def names(self) -> list[str]:
        return self.inner.names()

    async def invoke(self, call: ToolCall, ctx: ToolContext) -> ToolOutcome:
        outcome = await self.inner.invoke(call, ctx)
        charge = self.charges.get(call.id)
        run: Run | None = self.run_of()
        if charge and run is not None:
            run.budget.spent_usd += charge
        return outcome


def fan_in_summary(events: Iterable[dict[str, Any]]) -> list[str]:
    """Lines for ``keel trace show``: each branch of each fan-out of a parent run."""
    out = []
    for e in events:
        if e.get("type") != "fan_in":
            continue
        for b in e.get("branches") or []:
            out.append(f"branch {b.get('index')}: {b.get('status')} ${b.get('cost_usd', 0):.4f} "
                       f"trace {b.get('trace_id')}" + (f" ({b['detail']})" if b.get("detail")
                                                       else ""))
    return out


__all__ = ["RESEARCH_EXTRA", "Branch", "ChargingCatalog", "FanOut", "fan_in_summary"]
