"""What answers in place of the model and the tools when a golden task runs offline.

``TaskModel`` is a model client (``agents.model.types.ModelClient``) that plays a task's scripted
responses in order; the router's call is answered with the task's ``route_to``. Usage not given
in the task is estimated from the request itself (``agents.tokens.estimate``), so a longer
prompt or tool description costs more, as it would live. ``fixture_registry`` gives a copy of
the tool registry whose tools answer the task's fixtures; the real argument validation, approval
and trace events stay in place.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from agents.errors import ModelCallError
from agents.evals.task import GoldenTask, ScriptedResponse, ToolFixture
from agents.model.types import ModelRequest, ModelResponse, OnText
from agents.pricing import Usage
from agents.router import ROUTE_TOOL
from agents.tokens import estimate
from agents.tools import ToolRegistry
from agents.tools.contract import ToolContext
from agents.tools.declare import Tool
from agents.tools.errors import ToolError
from agents.tools.policy import NO_RETRY

ALWAYS_REAL = frozenset({"escalate_to_human"})
"""Tools that run for real even offline: they only park the run for a person's answer."""
ANY = "<any>"


class TaskModel:
    """The model, offline: a task's scripted answers in order, and nothing else."""

    def __init__(self, task: GoldenTask) -> None:
        self.task = task
        self.calls = 0
        self._next = 0
        self._tool_ids = 0

    async def create(self, request: ModelRequest, *, on_text: OnText | None = None) -> ModelResponse:
        self.calls += 1
        if (request.tool_choice or {}).get("name") == ROUTE_TOOL:
            return self._route(request)
        if self._next >= len(self.task.responses):
            raise ModelCallError(
                f"golden task {self.task.name!r} scripts {len(self.task.responses)} model "
                f"response(s) and the run asked for one more (call {self._next + 1}); add a "
                "[[responses]] entry or expect the run to end sooner")
        scripted = self.task.responses[self._next]
        self._next += 1
        content = self._content(scripted)
        stop = scripted.stop_reason or (
            "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn")
        response = ModelResponse(id=f"msg_eval_{self._next:03d}", model=request.model,
                                 content=content, stop_reason=stop,
                                 usage=_usage(scripted, request, content),
                                 latency_s=scripted.latency_s)
        if on_text is not None and response.text and stop == "end_turn":
            await on_text(response.text)
        return response

    @property
    def unused(self) -> int:
        return len(self.task.responses) - self._next

    def _route(self, request: ModelRequest) -> ModelResponse:
        chosen = self.task.route_to or self.task.agent
        content = [{"type": "tool_use", "id": "toolu_eval_route", "name": ROUTE_TOOL,
                    "input": {"agent": chosen}}]
        return ModelResponse(id="msg_eval_route", model=request.model, content=content,
                             stop_reason="tool_use", usage=_estimated(request, content))

    def _content(self, scripted: ScriptedResponse) -> list[dict[str, Any]]:
        if scripted.content is not None:
            return [dict(b) for b in scripted.content]
        blocks: list[dict[str, Any]] = []
        if scripted.text:
            blocks.append({"type": "text", "text": scripted.text})
        for call in scripted.tool_calls:
            self._tool_ids += 1
            blocks.append({"type": "tool_use", "id": call.id or f"toolu_eval_{self._tool_ids:03d}",
                           "name": call.name, "input": call.input})
        return blocks


def _usage(scripted: ScriptedResponse, request: ModelRequest,
           content: list[dict[str, Any]]) -> Usage:
    if scripted.usage is None:
        return _estimated(request, content)
    u = scripted.usage
    return Usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                 cache_read_tokens=u.cache_read_tokens, cache_write_5m_tokens=u.cache_write_tokens)


def _estimated(request: ModelRequest, content: list[dict[str, Any]]) -> Usage:
    """The local estimate of what the call reads and writes (no cache: a cold start)."""
    read = estimate(request.system) + estimate(request.tools) + estimate(request.messages)
    return Usage(input_tokens=read, output_tokens=max(1, estimate(content)))


# ------------------------------------------------------------------ tools


def fixture_registry(registry: ToolRegistry, task: GoldenTask, *, offline: bool) -> ToolRegistry:
    """A registry like ``registry`` whose tools answer ``task``'s fixtures. A tool with no
    fixture runs for real when it is in ``real_tools`` (or always-real), or when ``offline`` is
    False; otherwise it answers a ``not_found`` error the run can go on with."""
    answers = _Fixtures(task)
    out = ToolRegistry()
    for name in registry.names():
        for tool in registry.versions(name):
            if name in task.real_tools or name in ALWAYS_REAL:
                out.register(tool)
            elif answers.covers(name) or offline:
                out.register(tool.replace(fn=answers.function(tool, fallback=None),
                                          retry=NO_RETRY))
            else:
                out.register(tool.replace(fn=answers.function(tool, fallback=tool)))
    return out


class _Fixtures:
    def __init__(self, task: GoldenTask) -> None:
        self.task = task
        self.used: set[int] = set()

    def covers(self, tool: str) -> bool:
        return any(f.tool == tool for f in self.task.fixtures)

    def function(self, tool: Tool, *, fallback: Tool | None) -> Any:
        async def answer(args: BaseModel, ctx: ToolContext) -> Any:
            given = args.model_dump(mode="json", exclude_unset=True)
            fixture = self._take(tool.name, given)
            if fixture is None:
                if fallback is not None:
                    return await (fallback.fn(args, ctx) if fallback.takes_ctx
                                  else fallback.fn(args))
                raise ToolError("not_found",
                                f"golden task {self.task.name!r} has no fixture for {tool.name} "
                                f"with {json.dumps(given, ensure_ascii=False, sort_keys=True)}.",
                                "Go on without this tool's result.")
            if fixture.error is not None:
                raise ToolError(fixture.error.code, fixture.error.message,
                                fixture.error.suggestion)
            return fixture.result if fixture.result is not None else ""

        return answer

    def _take(self, tool: str, given: dict[str, Any]) -> ToolFixture | None:
        for i, fixture in enumerate(self.task.fixtures):
            if fixture.tool != tool or (i in self.used and not fixture.repeat):
                continue
            if fixture.input is not None and not subset(fixture.input, given):
                continue
            self.used.add(i)
            return fixture
        return None


def subset(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Every field of ``expected`` is in ``actual`` with an equal value (``"<any>"``: present)."""
    for key, want in expected.items():
        if key not in actual:
            return False
        got = actual[key]
        if want == ANY:
            continue
        if isinstance(want, dict) and isinstance(got, dict):
            if not subset(want, got):
                return False
        elif _normal(want) != _normal(got):
            return False
    return True


def _normal(value: Any) -> Any:
    """Numbers compare by value (TOML 1 and JSON 1.0 are the same argument); text by content with
    whitespace runs collapsed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value
