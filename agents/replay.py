"""Replay: re-run a traced run offline against its recorded model responses and tool results.

The replay rebuilds the run from its trace — the stable prefix (system and tools), the limits and
the first request's messages — and drives the real executor with a model that answers what was
recorded and tools that return what they returned. Every request the executor builds is compared
with the recorded one, so a replay answers "would keel make the same requests and decisions
today?" without calling a model or a tool.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.executor import execute
from agents.model.types import ModelRequest, ModelResponse, OnText, usage_from_api
from agents.pricing import Price, PriceTable
from agents.run import Run
from agents.spec import AgentSpec, Limits
from agents.tools.contract import ToolCall, ToolContext, ToolOutcome
from agents.trace_view import reconstruct_requests
from storage.traces import TraceStore


class ReplayError(Exception):
    """The trace cannot be replayed (incomplete, or the replay asked for more than was recorded)."""


class ReplayModel:
    """Answers with the recorded responses, in order, and records what it was asked."""

    def __init__(self, responses: list[dict[str, Any]]) -> None:
        self._responses = list(responses)
        self.requests: list[ModelRequest] = []

    async def create(self, request: ModelRequest, *, on_text: OnText | None = None) -> ModelResponse:
        self.requests.append(request)
        if len(self.requests) > len(self._responses):
            raise ReplayError(f"the replay made model call {len(self.requests)}, but the trace "
                              f"recorded only {len(self._responses)}")
        e = self._responses[len(self.requests) - 1]
        usage = e.get("usage") or {}
        return ModelResponse(
            id=e.get("id", ""), model=request.model, content=e.get("content") or [],
            stop_reason=e.get("stop_reason"),
            usage=usage_from_api({
                "input_tokens": usage.get("input_tokens", 0),
                "output_tokens": usage.get("output_tokens", 0),
                "cache_read_input_tokens": usage.get("cache_read_tokens", 0),
                "cache_creation_input_tokens": usage.get("cache_write_tokens", 0)}),
            request_id=e.get("request_id"))


class ReplayCatalog:
    """The recorded tools: the same definitions, and each call answered with its recorded result."""

    def __init__(self, schemas: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> None:
        self._schemas = schemas
        self._results = results

    def schemas(self) -> list[dict[str, Any]]:
        return self._schemas

    def names(self) -> list[str]:
        return [s["name"] for s in self._schemas]

    async def invoke(self, call: ToolCall, ctx: ToolContext) -> ToolOutcome:
        recorded = self._results.get(call.id)
        if recorded is None:
            raise ReplayError(f"tool call {call.name} ({call.id}) has no recorded result")
        return ToolOutcome(content=str(recorded.get("content", "")),
                           is_error=bool(recorded.get("is_error")),
                           version=str(recorded.get("version", "1")))


class _MemoryIdempotency:
    async def get(self, run_id: str, tool: str, args: Any) -> str | None:
        return None

    async def put(self, run_id: str, tool: str, args: Any, result: str) -> None:
        return None


@dataclass(frozen=True)
class ReplayReport:
    trace_id: str
    recorded_requests: int
    replayed_requests: int
    identical: bool
    first_difference: str | None
    recorded_status: str | None
    replayed_status: str
    recorded_output: str | None
    replayed_output: str | None

    def render(self) -> str:
        lines = [f"replay of trace {self.trace_id}",
                 f"model requests: recorded {self.recorded_requests}, replayed "
                 f"{self.replayed_requests}",
                 "requests identical: yes" if self.identical else
                 f"requests identical: no — {self.first_difference}",
                 f"status: recorded {self.recorded_status}, replayed {self.replayed_status}",
                 "output: same" if self.recorded_output == self.replayed_output else
                 f"output differs:\n  recorded: {self.recorded_output!r}\n  replayed: "
                 f"{self.replayed_output!r}"]
        return "\n".join(lines)


async def replay(events: list[dict[str, Any]], *, prices: PriceTable | None = None) -> ReplayReport:
    start = _one(events, "run_start")
    prefix = _one(events, "prefix")
    bodies = reconstruct_requests(events)
    if not bodies:
        raise ReplayError("the trace has no model request to replay")
    responses = [e for e in events if e["type"] == "model_response"]
    results = {str(e.get("id")): e for e in events if e["type"] == "tool_result"}
    end = next((e for e in events if e["type"] == "run_end"), None)

    limits = Limits(**{k: v for k, v in (start.get("limits") or {}).items()
                       if k in Limits.__dataclass_fields__})
    system = "".join(b.get("text", "") for b in prefix.get("system") or [])
    model_name = str(bodies[0]["model"])
    price = (prices.get(model_name) if prices else None) or Price(
        input=0, output=0, cache_write_5m=0, cache_write_1h=0, cache_read=0)
    spec = AgentSpec(name=str(start.get("agent")), description="replay", system=system,
                     tools=tuple(t["name"] for t in prefix.get("tools") or []), limits=limits)
    model = ReplayModel(responses)
    catalog = ReplayCatalog(list(prefix.get("tools") or []), results)
    with tempfile.TemporaryDirectory(prefix="keel-replay-") as scratch:
        store = TraceStore(Path(scratch))
        trace = store.writer(trace_id="replay", run_id="replay")
        run = Run(agent=spec, model=model_name, price=price, limits=limits, trace=trace)
        route = next((e for e in events if e["type"] == "route"), None)
        if route is not None:  # the router's cost counted against the recorded run's budget
            run.budget.spent_usd += float(route.get("cost_usd") or 0.0)
        ctx = ToolContext(run_id=run.id, agent=spec.name, emit=trace.emit,
                          idempotency=_MemoryIdempotency(), default_timeout_s=limits.tool_timeout_s)
        first = bodies[0]["messages"]
        history = int(start.get("history_messages", len(first) - 1))
        try:
            result = await execute(run, model=model, catalog=catalog, tool_ctx=ctx,
                                   messages=_strip_markers(first), new_from=history)
        finally:
            trace.close()
    replayed = [r.to_api() for r in model.requests]
    difference = _first_difference(bodies, replayed)
    return ReplayReport(
        trace_id=str(start.get("trace_id")), recorded_requests=len(bodies),
        replayed_requests=len(replayed), identical=difference is None,
        first_difference=difference, recorded_status=end.get("status") if end else None,
        replayed_status=result.status, recorded_output=end.get("output") if end else None,
        replayed_output=result.output)


def _one(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    for e in events:
        if e["type"] == kind:
            return e
    raise ReplayError(f"the trace has no {kind!r} event; it cannot be replayed")


def _strip_markers(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{k: v for k, v in b.items() if k != "cache_control"} for b in content]
        out.append({**m, "content": content})
    return out


def _first_difference(recorded: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> str | None:
    for i, (a, b) in enumerate(zip(recorded, replayed, strict=False), start=1):
        if a != b:
            where = _diff_path(a, b)
            return f"request {i} differs at {where}"
    if len(recorded) != len(replayed):
        return f"recorded {len(recorded)} request(s), the replay made {len(replayed)}"
    return None


def _diff_path(a: Any, b: Any, path: str = "$") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _diff_path(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return _diff_path(x, y, f"{path}[{i}]")
        if len(a) != len(b):
            return f"{path} (length {len(a)} vs {len(b)})"
    return path
