"""A run: one bounded execution of an agent, with exactly one final status."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, assert_never

from pydantic import BaseModel

from agents.budget import BudgetMeter
from agents.caching import CachePlan
from agents.ids import new_id
from agents.pricing import Price, Usage
from agents.spec import AgentSpec, Limits
from agents.tools.contract import EscalationRequest
from storage.session_counts import SessionAnchor
from storage.traces import TraceWriter

RunStatus = Literal[
    "completed", "budget_exceeded", "step_limit", "timeout", "waiting_human", "cancelled", "failed"
]
RunKind = Literal["chat", "scheduled", "cli", "resume"]

# `keel agent run` exit statuses, one per final status.
EXIT_CODES: dict[RunStatus, int] = {
    "completed": 0,
    "failed": 1,
    "budget_exceeded": 3,
    "step_limit": 4,
    "timeout": 5,
    "waiting_human": 6,
    "cancelled": 7,
}


def describe(status: RunStatus) -> str:
    """A short sentence for a person."""
    match status:
        case "completed":
            return "finished"
        case "budget_exceeded":
            return "stopped: its budget is spent"
        case "step_limit":
            return "stopped: too many tool calls"
        case "timeout":
            return "stopped: it ran out of time"
        case "waiting_human":
            return "waiting for a human answer"
        case "cancelled":
            return "cancelled"
        case "failed":
            return "failed"
        case _:
            assert_never(status)


@dataclass(kw_only=True)
class Run:
    """Everything one run needs while it goes: identity, limits, meter, clock and trace."""

    agent: AgentSpec
    model: str
    price: Price
    limits: Limits
    trace: TraceWriter
    kind: RunKind = "cli"
    id: str = field(default_factory=new_id)
    trace_id: str = field(default_factory=new_id)
    user_id: int | None = None
    chat_id: int | None = None
    thread_id: int | None = None
    budget: BudgetMeter = field(init=False)
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    model_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cancel_requested: bool = False
    request_key: str | None = None
    """The stored request this run serves (idempotency of side effects derives from it)."""
    last_call_shrunk: bool = False
    """The last call's max_tokens was cut to fit the budget."""
    session_anchor: SessionAnchor | None = None
    """The exact input size the session kept from its last turn (see storage.session_counts)."""
    cache_plan: CachePlan | None = None
    """The TTL of its cache writes and why (``agents.caching.plan_cache``); None: 5 minutes."""

    def __post_init__(self) -> None:
        self.budget = BudgetMeter(self.limits.budget_usd)

    @property
    def deadline(self) -> float:
        return self.started + self.limits.timeout_s

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True, kw_only=True)
class PendingEscalation:
    """A run parked as ``waiting_human``: what to ask and which tool call the answer closes."""

    request: EscalationRequest
    tool_use_id: str


@dataclass(frozen=True, kw_only=True)
class RunResult:
    run_id: str
    trace_id: str
    agent: str
    status: RunStatus
    detail: str | None
    output: str | None
    output_data: BaseModel | None = None
    cost_usd: float
    budget_usd: float
    steps: int
    model_calls: int
    usage: Usage
    duration_s: float
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The run's own messages (the task first), for the session's history."""
    escalation: PendingEscalation | None = None
    state: dict[str, Any] | None = None
    """What a parked run needs to resume."""
    anchor: SessionAnchor | None = None
    """A completed run's last exact input size, for its session's next turn."""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "trace_id": self.trace_id,
            "agent": self.agent,
            "status": self.status,
            "detail": self.detail,
            "output": self.output,
            "output_data": self.output_data.model_dump(mode="json") if self.output_data else None,
            "cost_usd": round(self.cost_usd, 6),
            "budget_usd": self.budget_usd,
            "steps": self.steps,
            "model_calls": self.model_calls,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "cache_hit_ratio": round(self.usage.cache_hit_ratio, 4),
            "duration_s": round(self.duration_s, 3),
        }
