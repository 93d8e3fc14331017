"""What `keel eval` prints: a table per task, totals, the failures with their diffs; and the
side-by-side comparison of two models over the same golden set (Markdown and JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.evals.runner import TaskResult

_MAX_DIFF_LINES = 40


def render(results: list[TaskResult], *, mode: str, model: str | None = None) -> str:
    lines = [f"keel eval ({mode}{', model ' + model if model else ''})", ""]
    head = f"{'TASK':<40} {'RESULT':<6} {'STATUS':<15} {'COST':>10} {'CALLS':>5} {'STEPS':>5} " \
           f"{'LATENCY':>8}"
    lines.append(head)
    for r in results:
        seen = r.observed
        lines.append(
            f"{_name(r):<40} {'pass' if r.passed else 'FAIL':<6} "
            f"{(seen.status if seen else '-'):<15} "
            f"{'$' + format(seen.cost_usd if seen else 0.0, '.6f'):>10} "
            f"{(seen.model_calls if seen else 0):>5} {(seen.steps if seen else 0):>5} "
            f"{format(seen.latency_s if seen else 0.0, '.2f') + ' s':>8}")
        for f in r.failures:
            lines.append(f"    ✗ {f.expectation}: {f.message}")
            shown = f.diff[:_MAX_DIFF_LINES]
            lines.extend(f"        {d}" for d in shown)
            if len(f.diff) > len(shown):
                lines.append(f"        … {len(f.diff) - len(shown)} more line(s)")
    lines.append("")
    lines.append(summary_line(results))
    return "\n".join(lines)


def summary_line(results: list[TaskResult]) -> str:
    passed = sum(r.passed for r in results)
    cost = sum(r.observed.cost_usd for r in results if r.observed)
    failed = len(results) - passed
    return (f"{len(results)} task(s): {passed} passed, {failed} failed · total "
            f"${cost:.6f}")


def as_json(results: list[TaskResult], *, mode: str, model: str | None = None) -> dict[str, Any]:
    return {"mode": mode, "model": model,
            "passed": sum(r.passed for r in results),
            "failed": sum(not r.passed for r in results),
            "cost_usd": round(sum(r.observed.cost_usd for r in results if r.observed), 6),
            "tasks": [r.as_json() for r in results]}


def _name(r: TaskResult) -> str:
    name = f"{r.agent}/{r.task}"
    return name if len(name) <= 40 else name[:39] + "…"


# ------------------------------------------------------------------ model comparison


@dataclass(frozen=True)
class Comparison:
    model_a: str
    model_b: str
    a: list[TaskResult]
    b: list[TaskResult]

    def pairs(self) -> list[tuple[TaskResult, TaskResult]]:
        by_b = {(r.agent, r.task): r for r in self.b}
        return [(r, by_b[(r.agent, r.task)]) for r in self.a if (r.agent, r.task) in by_b]

    def differing(self) -> list[tuple[str, list[str]]]:
        """Tasks whose decisions differ (status, agent, tools called, answer), with how."""
        out = []
        for ra, rb in self.pairs():
            how = _decision_differences(ra, rb)
            if how:
                out.append((_name(ra), how))
        return out

    def as_json(self) -> dict[str, Any]:
        return {"models": [self.model_a, self.model_b],
                "summary": {self.model_a: _totals(self.a), self.model_b: _totals(self.b)},
                "tasks": [{"task": _name(ra), "a": ra.as_json(), "b": rb.as_json(),
                           "decisions_differ": bool(_decision_differences(ra, rb)),
                           "differences": _decision_differences(ra, rb)}
                          for ra, rb in self.pairs()]}

    def markdown(self) -> str:
        ta, tb = _totals(self.a), _totals(self.b)
        lines = [f"# Model comparison: {self.model_a} vs {self.model_b}", "",
                 f"| | {self.model_a} | {self.model_b} | difference |", "|---|---|---|---|",
                 f"| pass rate | {_rate(ta)} | {_rate(tb)} | "
                 f"{(tb['pass_rate'] - ta['pass_rate']) * 100:+.0f} pts |",
                 f"| cost | ${ta['cost_usd']:.6f} | ${tb['cost_usd']:.6f} | "
                 f"{_delta(ta['cost_usd'], tb['cost_usd'])} |",
                 f"| model calls | {ta['model_calls']} | {tb['model_calls']} | "
                 f"{tb['model_calls'] - ta['model_calls']:+d} |",
                 f"| tokens in / out | {ta['input_tokens']} / {ta['output_tokens']} | "
                 f"{tb['input_tokens']} / {tb['output_tokens']} | "
                 f"{tb['input_tokens'] - ta['input_tokens']:+d} / "
                 f"{tb['output_tokens'] - ta['output_tokens']:+d} |",
                 f"| latency | {ta['latency_s']:.2f} s | {tb['latency_s']:.2f} s | "
                 f"{tb['latency_s'] - ta['latency_s']:+.2f} s |", "",
                 "## Per task", "",
                 f"| task | {self.model_a} | {self.model_b} |", "|---|---|---|"]
        for ra, rb in self.pairs():
            lines.append(f"| {_name(ra)} | {_cell(ra)} | {_cell(rb)} |")
        differing = self.differing()
        lines += ["", "## Decisions that differ", ""]
        if not differing:
            lines.append("None: both models decided alike on every task.")
        for name, how in differing:
            lines.append(f"- **{name}**")
            lines.extend(f"  - {h}" for h in how)
        return "\n".join(lines) + "\n"

    def render(self) -> str:
        ta, tb = _totals(self.a), _totals(self.b)
        w = max(len(self.model_a), len(self.model_b), 24)
        lines = [f"{'':<16} {self.model_a:<{w}} {self.model_b:<{w}}",
                 f"{'pass rate':<16} {_rate(ta):<{w}} {_rate(tb):<{w}}",
                 f"{'cost':<16} {'$' + format(ta['cost_usd'], '.6f'):<{w}} "
                 f"{'$' + format(tb['cost_usd'], '.6f') + ' (' + _delta(ta['cost_usd'], tb['cost_usd']) + ')':<{w}}",
                 f"{'model calls':<16} {ta['model_calls']:<{w}} {tb['model_calls']:<{w}}",
                 f"{'tokens in/out':<16} {str(ta['input_tokens']) + '/' + str(ta['output_tokens']):<{w}} "
                 f"{str(tb['input_tokens']) + '/' + str(tb['output_tokens']):<{w}}",
                 f"{'latency':<16} {format(ta['latency_s'], '.2f') + ' s':<{w}} "
                 f"{format(tb['latency_s'], '.2f') + ' s':<{w}}", ""]
        for ra, rb in self.pairs():
            lines.append(f"{_name(ra):<40} {_cell(ra):<{w + 8}} {_cell(rb)}")
        differing = self.differing()
        lines += ["", f"decisions that differ: {len(differing)}"]
        for name, how in differing:
            lines.append(f"  {name}")
            lines.extend(f"    {h}" for h in how)
        return "\n".join(lines)


def _totals(results: list[TaskResult]) -> dict[str, Any]:
    seen = [r.observed for r in results if r.observed]
    passed = sum(r.passed for r in results)
    return {"tasks": len(results), "passed": passed,
            "pass_rate": passed / len(results) if results else 0.0,
            "cost_usd": round(sum(s.cost_usd for s in seen), 6),
            "model_calls": sum(s.model_calls for s in seen),
            "input_tokens": sum(s.input_tokens for s in seen),
            "output_tokens": sum(s.output_tokens for s in seen),
            "latency_s": round(sum(s.latency_s for s in seen), 3)}


def _rate(t: dict[str, Any]) -> str:
    return f"{t['passed']}/{t['tasks']} ({t['pass_rate'] * 100:.0f}%)"


def _delta(a: float, b: float) -> str:
    if a == 0:
        return f"{b - a:+.6f} USD"
    return f"{(b / a - 1) * 100:+.0f}%"


def _cell(r: TaskResult) -> str:
    seen = r.observed
    if seen is None:
        return "FAIL (did not run)"
    return (f"{'pass' if r.passed else 'FAIL'} {seen.status} ${seen.cost_usd:.6f} "
            f"{seen.model_calls} call(s)")


def _decision_differences(a: TaskResult, b: TaskResult) -> list[str]:
    sa, sb = a.observed, b.observed
    if sa is None or sb is None:
        return [] if sa is sb else ["one model's run did not start"]
    out = []
    if sa.status != sb.status:
        out.append(f"status: {sa.status} vs {sb.status}")
    if sa.agent != sb.agent:
        out.append(f"agent: {sa.agent} vs {sb.agent}")
    tools_a, tools_b = [c.name for c in sa.tools], [c.name for c in sb.tools]
    if tools_a != tools_b:
        out.append(f"tools: {', '.join(tools_a) or '(none)'} vs {', '.join(tools_b) or '(none)'}")
    if " ".join((sa.output or "").split()) != " ".join((sb.output or "").split()):
        out.append(f"answer: {_short(sa.output)} vs {_short(sb.output)}")
    return out


def _short(text: str | None) -> str:
    flat = " ".join((text or "").split())
    return repr(flat if len(flat) <= 60 else flat[:59] + "…")
