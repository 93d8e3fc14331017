"""`keel eval --record TRACE_ID`: a traced run becomes a golden task with its fixtures.

The task's input is the run's task message; its scripted responses are the recorded model
answers (content, usage and latency, so the offline run costs what the real one did); its
fixtures are the recorded tool results; its expectations are what the run did: final status,
answer, the exact tool calls with their arguments, its model calls and steps, and a cost
ceiling with 25 % headroom. A run that went on after a person's answer is recorded up to its
first stop (the golden task expects it to park there). Tool results longer than the trace keeps
(2,000 characters) are recorded cut, and the task says so.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from typing import Any

from agents.errors import KeelError
from agents.evals.stand_ins import ALWAYS_REAL

COST_HEADROOM = 1.25
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_MACHINERY_ERRORS = frozenset({"invalid_arguments", "unknown_tool", "deprecated", "not_approved",
                               "denied"})
"""Tool errors keel itself produces before a tool runs: they recur without a fixture."""


class RecordError(KeelError):
    """A trace that cannot become a golden task (the message says why)."""


def record_task(events: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The golden task for a trace: (agent, task as a TOML-able dict)."""
    start = next((e for e in events if e.get("type") == "run_start"), None)
    if start is None:
        raise RecordError("the trace has no run_start event; it is not a run's trace")
    first_end = next((i for i, e in enumerate(events) if e.get("type") == "run_end"), None)
    if first_end is None:
        raise RecordError("the run has not ended (no run_end event); record it once it has")
    events = events[: first_end + 1]
    end = events[-1]
    agent = str(start.get("agent"))
    task: dict[str, Any] = {"description": f"recorded from trace {start.get('trace_id', '?')} "
                                           f"({start.get('ts', '')[:19]})",
                            "input": _task_text(start, events)}
    notes = []
    if int(start.get("history_messages") or 0):
        notes.append(f"the run had {start['history_messages']} message(s) of history, "
                     "which a golden task does not keep")
    route = next((e for e in events if e.get("type") == "route"), None)
    if route is not None and route.get("reason") == "router":
        task["route"] = True
        task["route_to"] = route.get("agent")
    responses = [_response(e) for e in events if e.get("type") == "model_response"]
    task["responses"] = responses
    fixtures, calls, clipped = _tools(events)
    if clipped:
        notes.append(f"{clipped} tool result(s) were longer than the trace keeps and are cut")
    if fixtures:
        task["fixtures"] = fixtures
    expect: dict[str, Any] = {"status": end.get("status")}
    if route is not None:
        expect["agent"] = route.get("agent")
    if end.get("status") == "completed" and end.get("output"):
        expect["output"] = end["output"]
    cost = float(end.get("cost_usd") or 0.0)
    expect["max_cost_usd"] = math.ceil(cost * COST_HEADROOM * 1e6) / 1e6
    expect["max_model_calls"] = int(end.get("model_calls") or len(responses))
    expect["max_steps"] = int(end.get("steps") or len(calls))
    expect["tools"] = {"mode": "exact", "calls": calls}
    task["expect"] = expect
    if notes:
        task["description"] += "; note: " + "; ".join(notes)
    return agent, task


def _task_text(start: dict[str, Any], events: list[dict[str, Any]]) -> str:
    inputs = start.get("replay") or {}
    messages = inputs.get("messages")
    if not messages:
        first = next((e for e in events if e.get("type") == "model_request"), None)
        if first is None:
            raise RecordError("the run made no model request; there is nothing to record")
        messages = (first.get("messages") or [])[int(start.get("history_messages") or 0):]
    user = next((m for m in messages if m.get("role") == "user"), None)
    content = user.get("content") if user else None
    if isinstance(content, str):
        return content
    text = "\n".join(b.get("text", "") for b in content or [] if b.get("type") == "text")
    if not text:
        raise RecordError("the run's task message has no text to record")
    return text


def _response(e: dict[str, Any]) -> dict[str, Any]:
    usage = e.get("usage") or {}
    out: dict[str, Any] = {"content": e.get("content") or []}
    if e.get("stop_reason"):
        out["stop_reason"] = e["stop_reason"]
    out["usage"] = {k: int(usage.get(k) or 0) for k in
                    ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")}
    out["latency_s"] = round(float(e.get("latency_s") or 0.0), 3)
    return out


def _tools(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    results = {str(e.get("id")): e for e in events if e.get("type") == "tool_result"}
    fixtures, calls, clipped = [], [], 0
    for call in (e for e in events if e.get("type") == "tool_call"):
        name, args = str(call.get("name")), dict(call.get("input") or {})
        result = results.get(str(call.get("id")))
        is_error = bool(result and result.get("is_error"))
        calls.append({"name": name, "input": args, "is_error": is_error})
        if result is None or name in ALWAYS_REAL:
            continue
        content = str(result.get("content") or "")
        if re.search(r"\.\.\. \[\d+ more\]$", content):
            clipped += 1
        fixture: dict[str, Any] = {"tool": name, "input": args}
        if is_error:
            error = _error_body(content)
            if error.get("code") in _MACHINERY_ERRORS:
                continue
            fixture["error"] = error
        else:
            fixture["result"] = content
        fixtures.append(fixture)
    return fixtures, calls, clipped


def _error_body(content: str) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return {"code": "upstream_error", "message": content or "error"}
    out = {"code": body.get("error") or "upstream_error",
           "message": body.get("message") or content}
    if body.get("suggestion"):
        out["suggestion"] = body["suggestion"]
    return out


# ------------------------------------------------------------------ TOML out


def to_toml(task: dict[str, Any]) -> str:
    """``task`` as TOML (scalars and inline values first, then tables and arrays of tables);
    checked by parsing it back."""
    text = _table(task, [])
    if tomllib.loads(text) != _without_none(task):
        raise ValueError("the golden task does not survive TOML; this is a bug in keel")
    return text


def _table(table: dict[str, Any], path: list[str]) -> str:
    lines: list[str] = []
    nested: list[str] = []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict) and _is_section(key):
            nested.append(f"\n[{'.'.join(_key(k) for k in [*path, key])}]\n"
                          + _table(value, [*path, key]))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value) \
                and key in ("responses", "fixtures"):
            for item in value:
                nested.append(f"\n[[{'.'.join(_key(k) for k in [*path, key])}]]\n"
                              + _table(item, [*path, key]))
        else:
            lines.append(f"{_key(key)} = {_value(value, top=True)}")
    return "\n".join(lines) + ("\n" if lines else "") + "".join(nested)


def _is_section(key: str) -> bool:
    return key in ("expect", "tools")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any, *, top: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if top and "\n" in value and "'''" not in value and _literal_ok(value):
            return "'''\n" + value + "'''"
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = [f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def _literal_ok(text: str) -> bool:
    """A TOML multi-line literal string holds no control characters but tab and newline, and
    must not end in a quote (it would join the closing delimiter)."""
    return not text.endswith("'") and all(ch in "\t\n" or (ord(ch) >= 0x20 and ord(ch) != 0x7f)
                                          for ch in text)


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value
