"""Golden tasks as data: what to ask an agent, what the model and the tools answer, what must hold.

A golden task is one TOML file under ``evals/<agent>/`` (the folder is settable with
``evals_dir`` in keel.toml; default ``evals/`` beside keel.toml, or in the working directory)::

    description = "A refund over 100 EUR goes to a person"
    input = "Refund order 1234, 150 EUR please"

    [[responses]]                  # offline: the model's answers, in order
    text = "I will ask a colleague."
    tool_calls = [{name = "escalate_to_human", input = {reason = "Refund 150 EUR?", context = "order 1234"}}]

    [[fixtures]]                   # what a tool returns (in order, per tool)
    tool = "get_current_time"
    result = {date = "2026-01-05", weekday = "Monday"}

    [expect]
    status = "waiting_human"
    max_cost_usd = 0.02
    [expect.tools]
    mode = "exact"
    calls = [{name = "escalate_to_human", input = {reason = "Refund 150 EUR?"}}]

Only ``input`` is required. Without ``[expect] status`` a task expects ``completed``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.config import KeelFile
from agents.errors import ConfigError
from agents.tools.errors import ErrorCode

EVALS_DIR = "evals"
"""The default folder of golden sets, beside keel.toml (or in the working directory)."""

RunStatusName = Literal["completed", "budget_exceeded", "step_limit", "timeout",
                        "waiting_human", "cancelled", "failed"]
ToolsMode = Literal["exact", "subsequence", "include"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScriptedToolCall(_Strict):
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    """Default: ``toolu_eval_<n>``, numbered within the task, so runs are identical."""


class ScriptedUsage(_Strict):
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    cache_read_tokens: int = Field(0, ge=0)
    cache_write_tokens: int = Field(0, ge=0)


class ScriptedResponse(_Strict):
    """One model answer. Either ``content`` (raw API blocks, as ``--record`` writes them) or
    ``text`` and/or ``tool_calls``."""

    text: str | None = None
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)
    content: list[dict[str, Any]] | None = None
    stop_reason: str | None = None
    usage: ScriptedUsage | None = None
    """Default: estimated from the request and the answer (a longer prompt costs more)."""
    latency_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _one_shape(self) -> ScriptedResponse:
        if self.content is not None and (self.text is not None or self.tool_calls):
            raise ValueError("give either content or text/tool_calls, not both")
        if self.content is None and self.text is None and not self.tool_calls:
            raise ValueError("a response needs text, tool_calls or content")
        return self


class FixtureError(_Strict):
    code: ErrorCode = "upstream_error"
    message: str
    suggestion: str | None = None


class ToolFixture(_Strict):
    """What one tool call returns. Fixtures of a tool are used in file order; one with ``input``
    answers only a call whose arguments include those values; ``repeat = true`` answers every
    matching call instead of the first one only."""

    tool: str
    input: dict[str, Any] | None = None
    result: Any = None
    error: FixtureError | None = None
    repeat: bool = False

    @model_validator(mode="after")
    def _result_or_error(self) -> ToolFixture:
        if self.error is not None and self.result is not None:
            raise ValueError(f"fixture of {self.tool!r}: give result or error, not both")
        return self


class ExpectedCall(_Strict):
    name: str
    input: dict[str, Any] | None = None
    """Arguments that must be there with these values (others may be too). The string
    ``"<any>"`` accepts any value of a field that must be present."""
    is_error: bool | None = None


class ToolsExpectation(_Strict):
    mode: ToolsMode = "subsequence"
    """``exact``: these calls and no others, in order; ``subsequence``: these in this order, others
    may come between; ``include``: each of these somewhere, any order."""
    calls: list[ExpectedCall] = Field(default_factory=list)
    must_not: list[str] = Field(default_factory=list)
    """Tool names that must not be called at all."""


class Expectations(_Strict):
    status: RunStatusName = "completed"
    agent: str | None = None
    """The agent that answered (for routed tasks: the router's choice)."""
    output: Any = None
    """The final answer: a string (compared with whitespace normalised) or a table/array
    (the answer, or the structured output, compared as JSON)."""
    snapshot: str | None = None
    """A file (relative to the task) holding the expected answer: ``.json`` compares as JSON
    (with ``variable``), anything else as text. Written only by ``keel eval --update-snapshots``."""
    output_contains: list[str] = Field(default_factory=list)
    variable: list[str] = Field(default_factory=list)
    """Paths in the JSON output whose values change from run to run (ids, timestamps): they must
    be there, any value passes. ``id``, ``items[*].created``, ``items[0].id``."""
    tools: ToolsExpectation | None = None
    max_cost_usd: float | None = Field(None, ge=0)
    max_model_calls: int | None = Field(None, ge=0)
    max_steps: int | None = Field(None, ge=0)


class GoldenTask(_Strict):
    name: str = ""
    """Default: the file name without ``.toml``."""
    description: str = ""
    agent: str = ""
    """Default: the folder name."""
    input: str = Field(min_length=1)
    route: bool = False
    """Route the input through the router first (``expect.agent`` checks its choice)."""
    route_to: str | None = None
    """Offline: what the scripted router answers (default: ``agent``)."""
    model: str | None = None
    """Run the agent on this model instead of its own."""
    budget_usd: float | None = Field(None, gt=0)
    """This task's run cap (default: the agent's)."""
    real_tools: list[str] = Field(default_factory=list)
    """Tools that run for real. Offline, any other tool without a fixture answers an error
    (``escalate_to_human`` always runs: it only parks the run)."""
    responses: list[ScriptedResponse] = Field(default_factory=list)
    fixtures: list[ToolFixture] = Field(default_factory=list)
    expect: Expectations = Field(default_factory=Expectations)
    path: Path | None = Field(None, exclude=True)


def evals_dir(keel_file: KeelFile, config_path: Path | None) -> Path:
    """Where golden sets live: keel.toml's ``evals_dir`` (relative to keel.toml), else
    ``evals/`` beside keel.toml, else ``evals/`` in the working directory."""
    base = config_path.parent if config_path is not None else Path(".")
    if keel_file.evals_dir is not None:
        path = keel_file.evals_dir
        return path if path.is_absolute() else base / path
    return base / EVALS_DIR


def load_task(path: Path, *, agent: str | None = None) -> GoldenTask:
    """One golden task file; errors name the file and the field."""
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"golden task {str(path)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read golden task {str(path)!r}: {exc.strerror}") from None
    try:
        task = GoldenTask.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise ConfigError(f"golden task {str(path)!r}: {where}: {first['msg']}"
                          + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1
                             else "")) from None
    return task.model_copy(update={"name": task.name or path.stem,
                                   "agent": task.agent or agent or path.parent.name,
                                   "path": path})


def discover(root: Path, agent: str | None = None) -> list[GoldenTask]:
    """Every golden task under ``root/<agent>/*.toml`` (one agent's, or all), sorted by agent
    then file name, so every run walks them in the same order."""
    if not root.is_dir():
        raise ConfigError(f"no golden tasks: {str(root)!r} is not a folder (create "
                          f"{str(root / (agent or '<agent>'))!r} with one .toml per task, or set "
                          "evals_dir in keel.toml)")
    folders = [root / agent] if agent else sorted(p for p in root.iterdir() if p.is_dir())
    tasks: list[GoldenTask] = []
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"no golden tasks for agent {agent!r}: {str(folder)!r} does not "
                              "exist")
        tasks.extend(load_task(p, agent=folder.name) for p in sorted(folder.glob("*.toml")))
    if not tasks:
        raise ConfigError(f"no golden tasks (*.toml) under {str(root if agent is None else folders[0])!r}")
    return tasks
