"""Checking a golden task's expectations against what its run did, with a diff for a person."""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from agents.evals.stand_ins import ANY, subset
from agents.evals.task import Expectations, ExpectedCall, ToolsExpectation

VARIABLE = "<variable>"
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\*|\d+)\]")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n```\s*$", re.S)


@dataclass(frozen=True)
class ObservedCall:
    name: str
    input: dict[str, Any]
    is_error: bool = False

    def line(self) -> str:
        err = " (error)" if self.is_error else ""
        return f"{self.name}({_compact(self.input)}){err}"


@dataclass(frozen=True)
class Observed:
    """What one run of a golden task did."""

    status: str
    agent: str
    output: str | None
    output_data: Any = None
    """The structured output, when the agent declares one."""
    detail: str | None = None
    tools: list[ObservedCall] = field(default_factory=list)
    cost_usd: float = 0.0
    model_calls: int = 0
    steps: int = 0
    latency_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Failure:
    expectation: str
    """status, agent, output, output_contains, tools, max_cost_usd, max_model_calls, max_steps,
    or run (the task could not run)."""
    message: str
    diff: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "message": self.message, "diff": self.diff}


def check(expect: Expectations, seen: Observed) -> list[Failure]:
    """Every expectation that does not hold, in a fixed order."""
    out: list[Failure] = []
    if seen.status != expect.status:
        detail = f" ({seen.detail})" if seen.detail else ""
        out.append(Failure("status", f"status {seen.status}{detail}, expected {expect.status}"))
    if expect.agent is not None and seen.agent != expect.agent:
        out.append(Failure("agent", f"answered by {seen.agent!r}, expected {expect.agent!r}"))
    if expect.output is not None:
        out.extend(_check_output(expect.output, expect.variable, seen))
    for needle in expect.output_contains:
        if " ".join(needle.split()) not in " ".join((seen.output or "").split()):
            out.append(Failure("output_contains", f"the output does not contain {needle!r}",
                               _excerpt(seen.output)))
    if expect.tools is not None:
        out.extend(check_tools(expect.tools, seen.tools))
    if expect.max_cost_usd is not None and seen.cost_usd > expect.max_cost_usd:
        over = (seen.cost_usd / expect.max_cost_usd - 1) * 100 if expect.max_cost_usd else 0
        out.append(Failure("max_cost_usd", f"cost ${seen.cost_usd:.6f} is over the maximum "
                           f"${expect.max_cost_usd:.6f} (+{over:.0f}%)",
                           [f"input tokens {seen.input_tokens}, output tokens "
                            f"{seen.output_tokens}, {seen.model_calls} model call(s)"]))
    if expect.max_model_calls is not None and seen.model_calls > expect.max_model_calls:
        out.append(Failure("max_model_calls", f"{seen.model_calls} model calls, at most "
                           f"{expect.max_model_calls} expected"))
    if expect.max_steps is not None and seen.steps > expect.max_steps:
        out.append(Failure("max_steps", f"{seen.steps} tool calls (steps), at most "
                           f"{expect.max_steps} expected", [c.line() for c in seen.tools]))
    return out


# ------------------------------------------------------------------ output


def check_output(expected: Any, variable: list[str], seen: Observed) -> list[Failure]:
    """The answer against ``expected``: text (whitespace normalised) or a JSON value."""
    return _check_output(expected, variable, seen)


def _check_output(expected: Any, variable: list[str], seen: Observed) -> list[Failure]:
    if isinstance(expected, str):
        got = seen.output or ""
        if " ".join(expected.split()) == " ".join(got.split()):
            return []
        diff = list(difflib.unified_diff(expected.splitlines(), got.splitlines(), "expected",
                                         "actual", lineterm="", n=2))
        return [Failure("output", "the final answer differs (whitespace normalised)", diff)]
    actual = seen.output_data if seen.output_data is not None else _as_json(seen.output)
    if actual is None:
        return [Failure("output", "the final answer is not JSON, expected a JSON value",
                        _excerpt(seen.output))]
    want, got = copy.deepcopy(expected), copy.deepcopy(actual)
    missing: list[str] = []
    for path in variable:
        if not _blank(got, _parts(path)):
            missing.append(path)
        _blank(want, _parts(path))
    if missing:
        return [Failure("output", f"variable field(s) missing from the answer: "
                        f"{', '.join(missing)}")]
    if _normal_json(want) == _normal_json(got):
        return []
    where, a, b = first_difference(_normal_json(want), _normal_json(got))
    text_a = json.dumps(want, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    text_b = json.dumps(got, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    diff = list(difflib.unified_diff(text_a, text_b, "expected", "actual", lineterm="", n=2))
    return [Failure("output", f"the answer differs at {where}: expected {_compact(a)}, got "
                    f"{_compact(b)}", diff)]


def _as_json(text: str | None) -> Any:
    if not text:
        return None
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        return json.loads(body)
    except ValueError:
        return None


def _parts(path: str) -> list[str]:
    return [m.group(1) or f"[{m.group(2)}]" for m in _PATH_PART.finditer(path)]


def _blank(value: Any, parts: list[str]) -> bool:
    """Replace the value at ``parts`` with VARIABLE; False when it is not there."""
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if head == "[*]":
        if not isinstance(value, list):
            return False
        return all([_blank_at(value, i, rest) for i in range(len(value))])
    if head.startswith("["):
        index = int(head[1:-1])
        return isinstance(value, list) and index < len(value) and _blank_at(value, index, rest)
    return isinstance(value, dict) and head in value and _blank_at(value, head, rest)


def _blank_at(container: Any, key: Any, rest: list[str]) -> bool:
    if rest:
        return _blank(container[key], rest)
    container[key] = VARIABLE
    return True


def _normal_json(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_normal_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normal_json(v) for k, v in value.items()}
    return value


def first_difference(a: Any, b: Any, path: str = "$") -> tuple[str, Any, Any]:
    """The first JSON path where ``a`` and ``b`` differ, with both values there."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}.{key}", a.get(key, "(absent)"), b.get(key, "(absent)")
            if a[key] != b[key]:
                return first_difference(a[key], b[key], f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
        if len(a) != len(b):
            return f"{path}.length", len(a), len(b)
    return path, a, b


# ------------------------------------------------------------------ tools


def check_tools(expect: ToolsExpectation, calls: list[ObservedCall]) -> list[Failure]:
    out: list[Failure] = []
    called = [c.line() for c in calls] or ["(no tool calls)"]
    for name in expect.must_not:
        hits = [c for c in calls if c.name == name]
        if hits:
            out.append(Failure("tools", f"{name} must not be called, and was called "
                               f"{len(hits)} time(s)", [f"+ {c.line()}" for c in hits]))
    wanted = expect.calls
    if expect.mode == "exact":
        bad = next((i for i, (w, c) in enumerate(zip(wanted, calls, strict=False))
                    if not _matches(w, c)), None)
        if bad is None and len(wanted) != len(calls):
            bad = min(len(wanted), len(calls))
        if bad is not None:
            out.append(Failure("tools", f"tool calls differ from the exact list at call "
                               f"{bad + 1}: expected {_want_line(wanted, bad)}, got "
                               f"{calls[bad].line() if bad < len(calls) else '(none)'}",
                               _call_diff(wanted, calls)))
    elif expect.mode == "subsequence":
        i = 0
        for call in calls:
            if i < len(wanted) and _matches(wanted[i], call):
                i += 1
        if i < len(wanted):
            out.append(Failure("tools", f"expected calls in this order; missing from call "
                               f"{i + 1} on: {_want_line(wanted, i)}",
                               _call_diff(wanted, calls)))
    else:
        free = list(calls)
        missing = []
        for want in wanted:
            hit = next((c for c in free if _matches(want, c)), None)
            if hit is None:
                missing.append(want)
            else:
                free.remove(hit)
        if missing:
            out.append(Failure("tools", "expected call(s) not made: " + "; ".join(
                _want_line(missing, i) for i in range(len(missing))),
                ["called:", *(f"  {line}" for line in called)]))
    return out


def _matches(want: ExpectedCall, call: ObservedCall) -> bool:
    if want.name != call.name:
        return False
    if want.is_error is not None and want.is_error != call.is_error:
        return False
    return want.input is None or subset(want.input, call.input)


def _want_line(wanted: list[ExpectedCall], i: int) -> str:
    if i >= len(wanted):
        return "(no more calls)"
    w = wanted[i]
    args = _compact(w.input) if w.input is not None else "…"
    err = "" if w.is_error is None else (" (error)" if w.is_error else " (ok)")
    return f"{w.name}({args}){err}"


def _call_diff(wanted: list[ExpectedCall], calls: list[ObservedCall]) -> list[str]:
    a = [f"  {i + 1}. {_want_line(wanted, i)}" for i in range(len(wanted))]
    b = [f"  {i + 1}. {c.line()}" for i, c in enumerate(calls)]
    return ["expected:", *(a or ["  (none)"]), "actual:", *(b or ["  (none)"])]


def _compact(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, dict):
        text = text[1:-1]
    text = text.replace(f'"{ANY}"', "<any>")
    return text if len(text) <= 120 else text[:119] + "…"


def _excerpt(text: str | None) -> list[str]:
    if not text:
        return ["(empty answer)"]
    lines = text.splitlines()
    return [f"  {line}" for line in lines[:8]] + (["  …"] if len(lines) > 8 else [])
