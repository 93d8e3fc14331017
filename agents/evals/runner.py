"""Running golden tasks through the real runtime, apart from production's data.

Each task is one run of ``agents.runtime.Runtime`` — the same executor, budgets, limits, router
and trace as any run — over a throw-away data directory (its own SQLite database, ledger and
traces), so an eval never touches production's runs or daily spend. Offline, the model is the
task's script (``stand_ins.TaskModel``); live, it is the real API, and the whole eval's spend is
one daily cap in that throw-away ledger: every call is reserved against it before it is made,
like any run's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.config import Settings
from agents.config_check import load_configuration
from agents.errors import KeelError
from agents.evals.expect import Failure, Observed, ObservedCall, check, check_output
from agents.evals.stand_ins import TaskModel, fixture_registry
from agents.evals.task import GoldenTask
from agents.model.types import ModelClient
from agents.runtime import RunRequest, Runtime
from storage.connect import open_database
from storage.db import Database

OFFLINE_DAY_USD = 1_000_000.0
"""Offline nothing is spent; the daily cap is out of the way (each run's own cap still holds)."""


@dataclass(frozen=True)
class TaskResult:
    task: str
    agent: str
    path: str
    model: str
    observed: Observed | None
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_json(self) -> dict[str, Any]:
        seen = self.observed
        return {
            "task": self.task, "agent": self.agent, "path": self.path, "model": self.model,
            "passed": self.passed,
            "status": seen.status if seen else None,
            "answered_by": seen.agent if seen else None,
            "output": seen.output if seen else None,
            "tools": [c.name for c in seen.tools] if seen else [],
            "cost_usd": round(seen.cost_usd, 6) if seen else 0.0,
            "model_calls": seen.model_calls if seen else 0,
            "steps": seen.steps if seen else 0,
            "input_tokens": seen.input_tokens if seen else 0,
            "output_tokens": seen.output_tokens if seen else 0,
            "latency_s": round(seen.latency_s, 3) if seen else 0.0,
            "failures": [f.as_json() for f in self.failures],
        }


class EvalSession:
    """Runs golden tasks one after another. ``async with EvalSession(settings) as s``.

    ``model``: run every agent on this model instead of its own. ``live``: call the real API
    (``budget_usd`` bounds the whole session's spend)."""

    def __init__(self, settings: Settings, *, live: bool = False, budget_usd: float | None = None,
                 model: str | None = None, client: ModelClient | None = None,
                 update_snapshots: bool = False) -> None:
        if live and (budget_usd is None or budget_usd <= 0):
            raise KeelError("a live eval needs a positive total budget (--budget-usd)")
        self.settings = settings
        self.live = live
        self.budget_usd = budget_usd
        self.model = model
        self.update_snapshots = update_snapshots
        self._client = client
        checked = load_configuration(settings)
        self.keel_file, self.prices = checked.keel_file, checked.prices
        self.registry, self.agents = checked.registry, checked.agents
        if model is not None:
            self.prices.require(model)  # an unpriced model is refused before anything runs
            self.agents = {n: replace(s, model=model) for n, s in self.agents.items()}
        self._tmp: Path | None = None
        self._db: Database | None = None
        self._eval_settings: Settings | None = None

    async def __aenter__(self) -> EvalSession:
        self._tmp = Path(tempfile.mkdtemp(prefix="keel-eval-"))
        self._eval_settings = self.settings.model_copy(update={
            "data_dir": self._tmp, "database_url": None,
            "daily_budget_usd_total": self.budget_usd if self.live else OFFLINE_DAY_USD,
            "daily_budget_usd_per_user": None, "daily_budget_usd_per_schedule": None})
        self._db = await open_database(self._eval_settings)
        if self.live and self._client is None:
            from agents.model.anthropic_client import AnthropicModelClient

            self._client = AnthropicModelClient(
                api_key=self.settings.require_anthropic_key(),
                base_url=self.settings.anthropic_base_url,
                max_retries=self.settings.anthropic_max_retries,
                timeout_s=self.settings.run_timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        close = getattr(self._client, "close", None)
        if self.live and close is not None:
            await close()
        if self._db is not None:
            await self._db.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def model_of(self, task: GoldenTask) -> str:
        spec = self.agents.get(task.agent)
        return task.model or (spec.model if spec and spec.model else self.settings.executor_model)

    async def run(self, task: GoldenTask) -> TaskResult:
        assert self._db is not None and self._eval_settings is not None, "use `async with`"
        path = str(task.path) if task.path else task.name
        model_name = self.model_of(task)

        def failed(message: str) -> TaskResult:
            return TaskResult(task=task.name, agent=task.agent, path=path, model=model_name,
                              observed=None, failures=[Failure("run", message)])

        if task.agent not in self.agents:
            return failed(f"no agent named {task.agent!r} (known: "
                          f"{', '.join(sorted(self.agents))})")
        agents = dict(self.agents)
        if task.model is not None:
            agents[task.agent] = replace(agents[task.agent], model=task.model)
        scripted = TaskModel(task)
        model: Any = self._client if self.live else scripted
        runtime = Runtime(settings=self._eval_settings, db=self._db, model=model,
                          registry=fixture_registry(self.registry, task, offline=not self.live),
                          agents=agents, prices=self.prices, keel_file=self.keel_file)
        messages = [{"role": "user", "content": [{"type": "text", "text": task.input}]}]
        try:
            agent, decision = task.agent, None
            if task.route:
                decision = await runtime.route(task.input, current=None)
                agent = decision.agent
            spec = runtime.agent(agent)
            limits = spec.limits.overridden(budget_usd=task.budget_usd)
            result = await runtime.run(RunRequest(agent=agent, messages=messages, new_from=0,
                                                  kind="cli", limits=limits, route=decision))
        except KeelError as exc:
            return failed(str(exc))
        events = runtime.traces.read(result.trace_id)
        seen = _observe(result, events, route_latency=decision.latency_s if decision else 0.0)
        failures = check(task.expect.model_copy(update={
            "agent": task.expect.agent or task.agent}), seen)
        if task.expect.snapshot is not None:
            failures.extend(self._snapshot(task, seen))
        if not self.live and scripted.unused:
            failures.append(Failure("responses", f"{scripted.unused} scripted model response(s) "
                                    "were never asked for: the run ended sooner than scripted"))
        return TaskResult(task=task.name, agent=task.agent, path=path,
                          model=agents[agent].model or self.settings.executor_model,
                          observed=seen, failures=failures)


    def _snapshot(self, task: GoldenTask, seen: Observed) -> list[Failure]:
        """Compare the answer with the task's snapshot file, or (``update_snapshots``) write it."""
        assert task.expect.snapshot is not None
        base = task.path.parent if task.path is not None else Path(".")
        path = base / task.expect.snapshot
        as_json = path.suffix == ".json"
        if self.update_snapshots:
            if as_json:
                value = seen.output_data if seen.output_data is not None else _json_or_none(
                    seen.output)
                if value is None:
                    return [Failure("snapshot", f"the answer is not JSON; {path.name} not written")]
                text = json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
            else:
                text = (seen.output or "") + "\n"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
            return []
        if not path.exists():
            return [Failure("snapshot", f"snapshot {str(path)!r} does not exist yet; write it "
                            "with `keel eval --update-snapshots` and review it")]
        raw = path.read_text("utf-8")
        if as_json:
            try:
                expected: Any = json.loads(raw)
            except ValueError:
                return [Failure("snapshot", f"snapshot {str(path)!r} is not valid JSON")]
        else:
            expected = raw
        return [replace(f, expectation="snapshot") for f in check_output(
            expected, task.expect.variable, seen)]


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text or "")
    except ValueError:
        return None


def _observe(result: Any, events: list[dict[str, Any]], *, route_latency: float) -> Observed:
    """What the run did, from its result and its trace."""
    calls: list[dict[str, Any]] = []
    errors: dict[str, bool] = {}
    latency = route_latency
    for e in events:
        kind = e.get("type")
        if kind == "tool_call":
            calls.append(e)
        elif kind == "tool_result":
            errors[str(e.get("id"))] = bool(e.get("is_error"))
        elif kind == "model_response":
            latency += float(e.get("latency_s") or 0.0)
    tools = [ObservedCall(name=str(c.get("name")), input=dict(c.get("input") or {}),
                          is_error=errors.get(str(c.get("id")), False)) for c in calls]
    data = result.output_data.model_dump(mode="json") if result.output_data is not None else None
    return Observed(status=result.status, agent=result.agent, output=result.output,
                    output_data=data, detail=result.detail, tools=tools,
                    cost_usd=result.cost_usd, model_calls=result.model_calls, steps=result.steps,
                    latency_s=latency, input_tokens=result.usage.total_input_tokens,
                    output_tokens=result.usage.output_tokens)


async def run_tasks(settings: Settings, tasks: list[GoldenTask], **session: Any) -> list[TaskResult]:
    """Run ``tasks`` in order in one session (see ``EvalSession`` for the keywords)."""
    async with EvalSession(settings, **session) as s:
        return [await s.run(task) for task in tasks]
