"""Reading traces back: a summary for a person, and the exact request of any model call."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents.caching import EPHEMERAL


@dataclass
class ToolLine:
    name: str
    version: str | None
    input: Any
    is_error: bool | None = None
    duration_s: float | None = None
    attempts: int | None = None
    detail: str | None = None


@dataclass
class TraceSummary:
    trace_id: str
    run_id: str | None = None
    asked: str | None = None
    """The person's (or the schedule's) request this run answered: its text."""
    agent: str | None = None
    kind: str | None = None
    model: str | None = None
    started: str | None = None
    status: str = "unfinished"
    detail: str | None = None
    output: str | None = None
    cost_usd: float = 0.0
    budget_usd: float | None = None
    model_calls: int = 0
    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    duration_s: float | None = None
    tools: list[ToolLine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def cache_hit_ratio(self) -> float:
        total = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return self.cache_read_tokens / total if total else 0.0


def summarise(events: list[dict[str, Any]]) -> TraceSummary:
    first = events[0] if events else {}
    s = TraceSummary(trace_id=first.get("trace_id", "?"), run_id=first.get("run_id"))
    pending: dict[str, ToolLine] = {}
    new_from = 0
    for e in events:
        kind = e.get("type")
        if kind == "run_start":
            s.agent, s.kind, s.model, s.started = e.get("agent"), e.get("kind"), e.get("model"), e["ts"]
            s.budget_usd = (e.get("limits") or {}).get("budget_usd")
            new_from = int(e.get("history_messages") or 0)
        elif kind == "model_request" and s.asked is None:
            s.asked = _asked(e.get("messages") or [], new_from - int(e.get("messages_base") or 0))
        elif kind == "model_response":
            s.model_calls += 1
            usage = e.get("usage") or {}
            s.input_tokens += int(usage.get("input_tokens", 0))
            s.output_tokens += int(usage.get("output_tokens", 0))
            s.cache_read_tokens += int(usage.get("cache_read_tokens", 0))
            s.cache_write_tokens += int(usage.get("cache_write_tokens", 0))
            s.cost_usd += float(e.get("cost_usd", 0.0))
        elif kind == "tool_call":
            line = ToolLine(e.get("name", "?"), e.get("version"), e.get("input"))
            s.tools.append(line)
            pending[str(e.get("id"))] = line
        elif kind == "tool_result":
            line = pending.get(str(e.get("id"))) or ToolLine(e.get("name", "?"), None, None)
            line.is_error = bool(e.get("is_error"))
            line.duration_s = e.get("duration_s")
            line.attempts = e.get("attempts")
            if line.is_error:
                line.detail = _short(e.get("content"))
        elif kind in ("budget_warn", "budget_halt", "limit", "error", "escalation",
                      "deprecated_tool", "output_invalid", "route", "resume", "budget_raised",
                      "plan", "replan", "grade", "fan_out"):
            s.notes.append(_note(e))
        elif kind == "fan_in":  # the tree: one line per child run
            s.notes.append(_note(e))
            s.notes.extend(f"  └ branch {b.get('index')}: {b.get('status')} "
                           f"${float(b.get('cost_usd') or 0):.6f}, trace {b.get('trace_id')}"
                           for b in e.get("branches") or [])
        elif kind == "run_end":
            s.status = e.get("status", s.status)
            s.detail = e.get("detail")
            s.output = e.get("output")
            s.steps = int(e.get("steps", 0))
            s.duration_s = e.get("duration_s")
    s.steps = s.steps or len(s.tools)
    return s


def _asked(messages: list[dict[str, Any]], index: int) -> str | None:
    """The text of the run's task: the first message after the history, else the last user
    message of the first request."""
    users = [m for m in messages if m.get("role") == "user"]
    chosen = messages[index] if 0 <= index < len(messages) and \
        messages[index].get("role") == "user" else (users[-1] if users else None)
    if chosen is None:
        return None
    content = chosen.get("content")
    if isinstance(content, str):
        return content
    texts = [b.get("text", "") for b in content or [] if isinstance(b, dict)
             and b.get("type") == "text"]
    return "\n".join(t for t in texts if t) or None


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_NOTE_FIELDS = {"route": ("agent", "reason", "cost_usd"),
                "resume": ("answer", "answered_by", "approval"),
                "budget_raised": ("extra_usd", "cap_usd", "granted_by"),
                "plan": ("planner_model", "plan"), "replan": ("from_step", "reason", "plan"),
                "grade": ("tool", "step", "check", "attempt", "kind", "passed", "feedback",
                          "skipped"),
                "fan_out": ("agent", "concurrency", "branch_budget_usd", "branch_timeout_s"),
                "fan_in": ("charged_usd",)}
"""Events whose payload is long (a router's whole request): only what a person reads."""


def _note(e: dict[str, Any]) -> str:
    keep = _NOTE_FIELDS.get(e["type"])
    payload = {k: v for k, v in e.items() if k not in ("ts", "trace_id", "run_id", "seq", "type",
                                                     "traceback")
               and (keep is None or k in keep) and v is not None}
    return f"{e['type']}: {_short(payload, 200)}"


def render_summary(s: TraceSummary) -> str:
    started = s.started and datetime.fromisoformat(s.started).strftime("%Y-%m-%d %H:%M:%S UTC")
    budget = f" of ${s.budget_usd:.2f}" if s.budget_usd else ""
    lines = [
        "asked: " + (_short(s.asked, 300).replace("\n", "\n       ") if s.asked else "?"),
        f"trace {s.trace_id}  run {s.run_id}",
        f"agent {s.agent} ({s.kind}) on {s.model}, started {started}",
        f"status: {s.status}" + (f" — {s.detail}" if s.detail else ""),
        f"cost: ${s.cost_usd:.6f}{budget}; {s.model_calls} model call(s), {s.steps} tool call(s)"
        + (f", {s.duration_s:.2f} s" if s.duration_s is not None else ""),
        f"tokens: input {s.input_tokens}, output {s.output_tokens}, cache read "
        f"{s.cache_read_tokens}, cache write {s.cache_write_tokens}; cache hit ratio "
        f"{s.cache_hit_ratio:.0%}",
    ]
    if s.tools:
        lines.append("tools:")
        for t in s.tools:
            status = "error" if t.is_error else ("ok" if t.is_error is False else "no result")
            extra = f" {t.duration_s:.3f}s" if t.duration_s is not None else ""
            if t.attempts and t.attempts > 1:
                extra += f", {t.attempts} attempts"
            version = f"@v{t.version}" if t.version else ""
            lines.append(f"  - {t.name}{version}({_short(t.input, 80)}) → {status}{extra}")
            if t.detail:
                lines.append(f"      {t.detail}")
    if s.notes:
        lines.append("events:")
        lines.extend(f"  - {n}" for n in s.notes)
    if s.output:
        lines.append("output:")
        lines.append("  " + _short(s.output, 600).replace("\n", "\n  "))
    return "\n".join(lines)


class RequestNotFound(LookupError):
    pass


def reconstruct_requests(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The exact body of every model request in the trace, in order."""
    prefixes: dict[str, dict[str, Any]] = {}
    bodies: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []  # messages as stored (without the moving breakpoint)
    for e in events:
        if e.get("type") == "prefix":
            prefixes[e["sha256"]] = e
        elif e.get("type") == "model_request":
            prefix = prefixes.get(e.get("prefix_sha256", ""))
            if prefix is None:
                raise RequestNotFound(f"request {e.get('n')} refers to a prefix not in the trace")
            base = int(e.get("messages_base", 0))
            sent = sent[:base] + list(e.get("messages") or [])
            messages = copy.deepcopy(sent)
            points = e.get("cache_breakpoints")
            if points is not None:  # every marker with its TTL
                for i, j, marker in points:
                    messages[i]["content"][j]["cache_control"] = dict(marker)
            else:  # traces written before: the moving breakpoint only
                point = e.get("cache_breakpoint")
                if point and point[1] is not None:
                    messages[point[0]]["content"][point[1]]["cache_control"] = dict(EPHEMERAL)
            body: dict[str, Any] = {"model": e["model"], "max_tokens": e["max_tokens"]}
            if prefix.get("system"):
                body["system"] = prefix["system"]
            if prefix.get("tools"):
                body["tools"] = prefix["tools"]
            if e.get("tool_choice") is not None:
                body["tool_choice"] = e["tool_choice"]
            if e.get("thinking") is not None:
                body["thinking"] = e["thinking"]
            body["messages"] = messages
            bodies.append(body)
    return bodies
