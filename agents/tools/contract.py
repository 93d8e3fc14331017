"""The contract between the executor and the tools: what a call is, what it gets, what comes back.

The executor knows only these types. Everything about declaring, validating, retrying,
rate-limiting, versioning and de-duplicating tool calls lives behind ``ToolCatalog.invoke``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# Emits one trace event: emit("deprecated_tool", tool=..., version=...).
Emit = Callable[..., Any]


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """One ``tool_use`` block from the model."""

    id: str  # the tool_use id; the tool_result answers it
    name: str
    input: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class EscalationRequest:
    """A tool asks to park the run until a human answers (``escalate_to_human``)."""

    reason: str
    context: str
    options: tuple[str, ...]
    kind: Literal["question", "approval"] = "question"
    """"approval": a tool that needs approval asks before it runs (``reason`` is its name,
    ``context`` its arguments as JSON); the answer runs it or denies it."""


class IdempotencyStoreLike(Protocol):
    async def get(self, run_id: str, tool: str, args: Any) -> str | None: ...

    async def put(self, run_id: str, tool: str, args: Any, result: str) -> None: ...


@dataclass(kw_only=True)
class ToolContext:
    """What a tool call may know about the run it belongs to."""

    run_id: str  # this attempt's run; a retry after a crash is a new run of the same request
    agent: str
    emit: Emit
    idempotency: IdempotencyStoreLike
    default_timeout_s: float
    user_id: int | None = None
    chat_id: int | None = None
    thread_id: int | None = None
    timezone: str = "UTC"
    extras: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    """What a side effect is done once for: the stored request the run serves (so a run retried
    after a crash finds the effects already done); the run id when there is none."""

    @property
    def effect_scope(self) -> str:
        """The correlation token for side effects: hand it (with the call's own arguments) to
        an external system as its idempotency key. It is the same for every retry of a request,
        so an effect done just before a crash, and before keel stored its result, is not done
        twice when the request runs again (``run_id`` changes with each attempt)."""
        return self.idempotency_key or self.run_id


@dataclass(frozen=True, kw_only=True)
class ToolOutcome:
    """The result of one call, ready to become a ``tool_result`` block.

    ``content`` is what the model reads (text, or JSON for errors: {"error", "message",
    "suggestion"}); ``escalation`` set means the run must wait for a human before going on.
    """

    content: str
    is_error: bool = False
    version: str = "1"
    attempts: int = 1
    duration_s: float = 0.0
    replayed: bool = False  # an idempotent side effect returned its stored result
    escalation: EscalationRequest | None = None

    def to_block(self, tool_use_id: str) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id,
                                 "content": self.content}
        if self.is_error:
            block["is_error"] = True
        return block


class ToolCatalog(Protocol):
    """The tools one agent may use."""

    def schemas(self) -> list[dict[str, Any]]:
        """Tool definitions for the request (name, description, input_schema), current versions
        only, in a stable order so the cached prefix stays byte-identical."""
        ...

    def names(self) -> list[str]: ...

    async def invoke(self, call: ToolCall, ctx: ToolContext) -> ToolOutcome:
        """Run one call within its timeout, retries and rate limit. Never raises for a tool's
        failure (that is an error outcome); only cancellation propagates."""
        ...


ToolFunction = Callable[..., Awaitable[Any]]
