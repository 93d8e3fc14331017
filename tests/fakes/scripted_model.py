"""The one scripted model for unit tests, behind the model client seam (no HTTP).

    model = ScriptedModel(
        tool_call("get_current_time", {"timezone": "UTC"}),
        reply("It is noon."),
    )
    ... run the executor with `model` ...
    model.assert_all_used()

Each step is a ``ModelResponse``, an exception to raise, or a function of the request that returns
one. Every call is recorded (``model.requests``). A call past the last step fails the test with the
request that nobody expected, instead of inventing an answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.model.types import ModelRequest, ModelResponse, OnText
from agents.pricing import Usage

Step = ModelResponse | BaseException | Callable[[ModelRequest], ModelResponse]

_ids = itertools.count(1)


class UnexpectedModelCall(AssertionError):
    """The code under test made a model call the script did not plan for."""


def _usage(request: ModelRequest | None, output_tokens: int, **extra: int) -> Usage:
    return Usage(input_tokens=extra.get("input_tokens", 100), output_tokens=output_tokens,
                 cache_read_tokens=extra.get("cache_read_tokens", 0),
                 cache_write_5m_tokens=extra.get("cache_write_tokens", 0))


def reply(text: str, *, stop_reason: str = "end_turn", output_tokens: int | None = None,
          **usage: int) -> ModelResponse:
    """A final text answer."""
    return ModelResponse(
        id=f"msg_scripted_{next(_ids)}", model="scripted",
        content=[{"type": "text", "text": text}], stop_reason=stop_reason,
        usage=_usage(None, output_tokens if output_tokens is not None else max(1, len(text) // 4),
                     **usage),
    )


def tool_call(name: str, input: dict[str, Any] | None = None, *, text: str | None = None,
              id: str | None = None, output_tokens: int = 20, **usage: int) -> ModelResponse:
    """An assistant turn that calls one tool (optionally after some text)."""
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    content.append({"type": "tool_use", "id": id or f"toolu_scripted_{next(_ids)}", "name": name,
                    "input": input or {}})
    return ModelResponse(id=f"msg_scripted_{next(_ids)}", model="scripted", content=content,
                         stop_reason="tool_use", usage=_usage(None, output_tokens, **usage))


def tool_calls(*calls: tuple[str, dict[str, Any]], output_tokens: int = 30, **usage: int) -> ModelResponse:
    """An assistant turn with several parallel tool calls."""
    content = [{"type": "tool_use", "id": f"toolu_scripted_{next(_ids)}", "name": n, "input": i}
               for n, i in calls]
    return ModelResponse(id=f"msg_scripted_{next(_ids)}", model="scripted", content=content,
                         stop_reason="tool_use", usage=_usage(None, output_tokens, **usage))


@dataclass
class ScriptedModel:
    steps: list[Step] = field(default_factory=list)
    requests: list[ModelRequest] = field(default_factory=list)
    latency_s: float = 0.0
    streamed: list[str] = field(default_factory=list)

    def __init__(self, *steps: Step, latency_s: float = 0.0) -> None:
        self.steps = list(steps)
        self.requests = []
        self.latency_s = latency_s
        self.streamed = []
        self.called = asyncio.Event()  # set at the first call, for tests that act mid-call
        self._next = 0

    def then(self, *steps: Step) -> ScriptedModel:
        self.steps.extend(steps)
        return self

    async def create(self, request: ModelRequest, *, on_text: OnText | None = None) -> ModelResponse:
        self.requests.append(request)
        self.called.set()
        if self._next >= len(self.steps):
            raise UnexpectedModelCall(
                f"model call #{len(self.requests)} was not scripted "
                f"({len(self.steps)} step(s) planned); last message: "
                f"{request.messages[-1] if request.messages else None!r}"
            )
        step = self.steps[self._next]
        self._next += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if isinstance(step, BaseException):
            raise step
        response = step(request) if callable(step) else step
        if response.stop_reason == "end_turn" and response.text and on_text is not None:
            self.streamed.append(response.text)
            await on_text(response.text)
        # Like the real API, an answer longer than max_tokens is cut there: the output is billed
        # up to max_tokens, a tool call cut mid-arguments is dropped, and the stop reason says so.
        if response.usage.output_tokens > request.max_tokens:
            kept = [b for b in response.content if b.get("type") != "tool_use"]
            response = dataclasses.replace(
                response, content=kept or [{"type": "text", "text": ""}], stop_reason="max_tokens",
                usage=dataclasses.replace(response.usage, output_tokens=request.max_tokens))
        return response

    @property
    def calls(self) -> int:
        return len(self.requests)

    def assert_all_used(self) -> None:
        left = len(self.steps) - self._next
        assert left == 0, f"{left} scripted model step(s) were never used"
