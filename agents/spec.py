"""Agents as data: what an agent is (prompt, model, tools, limits, pattern) and the limits of a run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel

from agents.config import (
    DEFAULT_MAX_STEPS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_RUN_BUDGET_USD,
    DEFAULT_RUN_TIMEOUT_S,
    DEFAULT_TOOL_TIMEOUT_S,
    LimitsConfig,
    Settings,
)

Pattern = Literal["react", "plan_execute"]


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The bounds of one run. Checked before the expensive thing, never after."""

    budget_usd: float = DEFAULT_RUN_BUDGET_USD
    """Most the run may spend, in USD. The next model call's worst case is reserved first."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Most tool calls in the run; one more ends it as ``step_limit``."""
    timeout_s: float = DEFAULT_RUN_TIMEOUT_S
    """Wall-clock deadline of the run; in-flight calls are cancelled at it (``timeout``)."""
    tool_timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    """Default timeout of one tool call; a tool may declare its own."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """max_tokens of each model call (shrunk to fit what is left of the budget)."""
    max_model_calls: int | None = None
    """Most model calls; default max_steps + 3 (answers, output repairs)."""

    @property
    def model_call_cap(self) -> int:
        return self.max_model_calls if self.max_model_calls is not None else self.max_steps + 3

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(budget_usd=settings.run_budget_usd, max_steps=settings.max_steps,
                   timeout_s=settings.run_timeout_s, tool_timeout_s=settings.tool_timeout_s)

    def overridden(self, config: LimitsConfig | None = None, **values: float | int | None) -> Limits:
        merged = {k: v for k, v in (config.model_dump() if config else {}).items() if v is not None}
        merged.update({k: v for k, v in values.items() if v is not None})
        return replace(self, **merged)


@dataclass(frozen=True, kw_only=True)
class AgentSpec:
    name: str
    description: str
    """One line for the router: what this agent is for."""
    system: str
    """The system prompt. Keep it byte-stable: no timestamps, no per-user data."""
    model: str | None = None
    """None: the executor model from the settings."""
    tools: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    pattern: Pattern = "react"
    output_type: type[BaseModel] | None = None
    """Set: the final answer must be JSON valid for this model."""
