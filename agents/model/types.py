"""The model client seam: one request type, one response type, one small Protocol.

The executor builds a ``ModelRequest`` (exactly the JSON body the Messages API receives) and gets a
``ModelResponse`` back. The real client wraps ``anthropic.AsyncAnthropic``; unit tests use the one
shared scripted model in ``tests/fakes/scripted_model.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.pricing import Usage

# Called with each piece of streamed answer text, for progress previews.
OnText = Callable[[str], Awaitable[None]]


def watched(on_text: OnText | None) -> bool:
    """Whether anyone would see the text as it streams. An ``on_text`` may carry a
    ``watched()`` method that says so at the moment of each call (a private chat's drafts, a
    group's preview; neither under load or after drafts failed); without it, it is watched.
    An unwatched call is sent without streaming: the same answer, parsed far more cheaply."""
    if on_text is None:
        return False
    check = getattr(on_text, "watched", None)
    return True if check is None else bool(check())


@dataclass(frozen=True, kw_only=True)
class ModelRequest:
    model: str
    max_tokens: int
    messages: list[dict[str, Any]]
    system: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None

    def to_api(self) -> dict[str, Any]:
        """The request body, key for key."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        if self.system:
            body["system"] = self.system
        if self.tools:
            body["tools"] = self.tools
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        if self.thinking is not None:
            body["thinking"] = self.thinking
        if self.output_config is not None:
            body["output_config"] = self.output_config
        body["messages"] = self.messages
        return body


@dataclass(frozen=True, kw_only=True)
class ModelResponse:
    id: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: Usage
    request_id: str | None = None
    latency_s: float = 0.0

    @property
    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.content if b.get("type") == "text")

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.content if b.get("type") == "tool_use"]


def warm_up(client: object) -> asyncio.Future[Any] | None:
    """Let ``client`` start loading what its first call needs, without waiting for it: a client
    that loads lazily has ``warm_up()``; a wrapper exposes the client it wraps as ``inner``.
    Returns the loading's future when the client gives one."""
    seen = 0
    while client is not None and seen < 8:
        start = getattr(client, "warm_up", None)
        if callable(start):
            loading = start()
            return loading if isinstance(loading, asyncio.Future) else None
        client, seen = getattr(client, "inner", None), seen + 1
    return None


class ModelClient(Protocol):
    async def create(self, request: ModelRequest, *, on_text: OnText | None = None) -> ModelResponse:
        """Send one request; raise ``agents.errors.ModelCallError`` when it cannot be answered."""
        ...


def usage_from_api(raw: dict[str, Any] | None) -> Usage:
    """The API's usage object → ``Usage``; cache writes split by TTL when the API says so."""
    raw = raw or {}
    creation = int(raw.get("cache_creation_input_tokens") or 0)
    split = raw.get("cache_creation") or {}
    write_1h = int(split.get("ephemeral_1h_input_tokens") or 0)
    write_5m = int(split.get("ephemeral_5m_input_tokens") or 0)
    if write_1h + write_5m != creation:  # no split given: bill all writes at the 5m rate
        write_5m, write_1h = creation, 0
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("output_tokens") or 0),
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
    )
