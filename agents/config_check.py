"""One check of the whole configuration, shared by `keel run` (which refuses to start on any
problem) and `keel doctor` (which lists every problem with its fix).

``check_configuration`` assembles what a run needs — keel.toml, tool modules, agents, prices,
schedules — and collects every problem instead of stopping at the first; ``load_configuration``
is the same check for the commands that start things, raising one ``ConfigError`` that lists
them all. Because both go through the same assembly, doctor cannot pass what run refuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agents.catalog import builtin_agents
from agents.config import AgentConfig, KeelFile, Settings, load_keel_file, price_table
from agents.errors import ConfigError
from agents.pricing import PriceTable
from agents.schedule import ScheduledJob, jobs_from_config
from agents.spec import AgentSpec, Limits
from agents.tools import ToolRegistry, builtin_registry, load_tool_modules
from agents.tools.external import EXTERNAL_CONTENT_TOOLS, with_rule
from agents.tools.mcp import is_mcp_tool, mcp_problems, register_mcp_tools

CONFIG_FIX = "Edit keel.toml (or the file KEEL_CONFIG names); `keel doctor` checks it again."


@dataclass(frozen=True)
class Problem:
    """One thing that stops keel from starting: what is wrong, and how to fix it."""

    what: str
    fix: str = CONFIG_FIX

    def __str__(self) -> str:
        what = self.what if self.what.endswith((".", "!", "?")) else self.what + "."
        return f"{what} {self.fix}".strip()


@dataclass(kw_only=True)
class CheckedConfig:
    """What the configuration assembles to, and every problem found on the way."""

    keel_file: KeelFile
    registry: ToolRegistry
    prices: PriceTable
    agents: dict[str, AgentSpec] = field(default_factory=dict)
    jobs: list[ScheduledJob] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def check_configuration(settings: Settings, *,
                        registry: ToolRegistry | None = None) -> CheckedConfig:
    """Assemble keel.toml's agents, tools, prices and schedules; collect every problem."""
    registry = registry or builtin_registry()
    try:
        keel_file = load_keel_file(settings.config_path)
    except ConfigError as exc:
        return CheckedConfig(keel_file=KeelFile(), registry=registry,
                             prices=price_table(KeelFile()),
                             problems=[Problem(str(exc), CONFIG_FIX)])
    checked = CheckedConfig(keel_file=keel_file, registry=registry,
                            prices=price_table(keel_file))
    problems = checked.problems
    for module in keel_file.tool_modules:
        try:
            load_tool_modules(registry, [module])
        except ConfigError as exc:
            problems.append(Problem(str(exc), "Fix or remove it under tool_modules in keel.toml."))
    problems.extend(Problem(what, fix) for what, fix in mcp_problems(keel_file))
    try:  # MCP servers are not contacted here: their tools are declared, connected at start
        register_mcp_tools(registry, keel_file)
    except ConfigError as exc:
        problems.append(Problem(str(exc), "Rename the tool or the [[mcp]] server in keel.toml."))
    checked.agents = assemble_agents(settings, keel_file, registry, problems)
    if keel_file.default_agent not in checked.agents:
        problems.append(Problem(
            f"default_agent {keel_file.default_agent!r} is not an agent.",
            f"Set default_agent in keel.toml to one of: {', '.join(sorted(checked.agents))}."))
    problems.extend(_price_problems(settings, checked.agents.values(), checked.prices))
    checked.jobs = _checked_jobs(keel_file, settings, checked.agents, problems)
    return checked


def load_configuration(settings: Settings, *,
                       registry: ToolRegistry | None = None) -> CheckedConfig:
    """``check_configuration`` for commands that start something: any problem is a ConfigError
    that lists them all."""
    checked = check_configuration(settings, registry=registry)
    if checked.problems:
        raise ConfigError(describe(checked.problems))
    return checked


def describe(problems: list[Problem]) -> str:
    if len(problems) == 1:
        return str(problems[0])
    return f"{len(problems)} configuration problems:\n" + "\n".join(
        f"  - {p}" for p in problems)


def assemble_agents(settings: Settings, keel_file: KeelFile, registry: ToolRegistry,
                    problems: list[Problem]) -> dict[str, AgentSpec]:
    """Built-in agents plus those in keel.toml (one of keel.toml replaces a built-in of its
    name). An agent that cannot be built is left out and its problem recorded."""
    defaults = Limits.from_settings(settings)
    agents = builtin_agents(defaults)
    for name, cfg in keel_file.agents.items():
        try:
            agents[name] = agent_from_config(name, cfg, defaults)
        except ConfigError as exc:
            agents.pop(name, None)
            problems.append(Problem(str(exc), f"Fix system_file of [agents.{name}] in keel.toml, "
                                    "or give the prompt inline with system = \"...\"."))
    for name, spec in agents.items():
        mcp = [t for t in spec.tools if t in registry and is_mcp_tool(registry.current(t))]
        if EXTERNAL_CONTENT_TOOLS.intersection(spec.tools) or mcp:  # it reads outside text
            agents[name] = replace(spec, system=with_rule(spec.system))
    known = set(registry.names())
    for spec in list(agents.values()):
        missing = [t for t in spec.tools if t not in known]
        if missing:
            problems.append(Problem(
                f"agent {spec.name!r} names unknown tool(s) {', '.join(map(repr, missing))}.",
                f"Known tools: {', '.join(sorted(known))}; a tool of your own needs its module "
                "in tool_modules."))
    return agents


def agent_from_config(name: str, cfg: AgentConfig, defaults: Limits) -> AgentSpec:
    system = cfg.system
    if system is None and cfg.system_file is not None:
        try:
            system = cfg.system_file.read_text("utf-8").strip()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"agent {name!r}: cannot read system_file "
                              f"{str(cfg.system_file)!r} ({reason}).") from None
    return AgentSpec(name=name, description=cfg.description, system=system or "",
                     model=cfg.model, tools=tuple(cfg.tools),
                     limits=defaults.overridden(cfg.limits), pattern=cfg.pattern)


def _price_problems(settings: Settings, agents: Iterable[AgentSpec],
                    prices: PriceTable) -> list[Problem]:
    needed: dict[str, str] = {settings.router_model: "KEEL_ROUTER_MODEL"}
    for spec in agents:
        if spec.model:
            needed.setdefault(spec.model, f"agent {spec.name!r}")
        else:
            needed.setdefault(settings.executor_model, "KEEL_EXECUTOR_MODEL")
        if spec.pattern == "plan_execute":
            needed.setdefault(settings.planner_model, "KEEL_PLANNER_MODEL")
    out = []
    for model, who in needed.items():
        if prices.get(model) is None:
            out.append(Problem(
                f"{who}: no price for model {model!r}, so keel cannot bound what a run spends.",
                f"Add [prices.{model!r}] to keel.toml or pin one of: "
                f"{', '.join(prices.models)}."))
    return out


def _checked_jobs(keel_file: KeelFile, settings: Settings, agents: Mapping[str, AgentSpec],
                  problems: list[Problem]) -> list[ScheduledJob]:
    seen: set[str] = set()
    ok = True
    for config in keel_file.schedules:
        if config.name in seen:
            ok = False
            problems.append(Problem(f"two schedules are named {config.name!r}.",
                                    "Give each [[schedules]] entry its own name."))
            continue
        seen.add(config.name)
        if config.agent not in agents:
            ok = False
            problems.append(Problem(
                f"schedule {config.name!r} names unknown agent {config.agent!r}.",
                f"Known agents: {', '.join(sorted(agents))}."))
            continue
        try:
            ScheduledJob.from_config(config, default_timezone=settings.timezone,
                                     agent=agents[config.agent])
        except ConfigError as exc:
            ok = False
            problems.append(Problem(str(exc), "Fix that [[schedules]] entry in keel.toml."))
    if not ok:
        return []
    return jobs_from_config(keel_file.schedules, default_timezone=settings.timezone,
                            agents=agents)


# ---------------------------------------------------------------- the environment and the disk


def settings_problems(exc: ValidationError) -> list[Problem]:
    """Each wrong environment variable as a problem naming it (pydantic's wording trimmed)."""
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "?"
        message = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        secret = "TOKEN" in where or "KEY" in where
        shown = f" (is {value!r})" if isinstance(value, str) and len(value) < 80 \
            and value not in message and not secret else ""
        out.append(Problem(f"{where}{shown}: {message}",
                           f"Fix {where} in the environment or .env, or unset it for the "
                           "default."))
    return out


def lenient_settings(**overrides: Any) -> tuple[Settings, list[Problem]]:
    """Settings even when some variables are wrong: each wrong one is reported and falls back to
    its default, so `keel doctor` can still check everything else."""
    try:
        return Settings(**overrides), []
    except ValidationError as exc:
        problems = settings_problems(exc)
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    defaults = {alias: _default_for(alias) for alias in bad}
    try:
        return Settings(**{**overrides, **defaults}), problems
    except ValidationError as exc:  # a cross-field rule still fails: report it too
        return Settings.model_construct(), problems + settings_problems(exc)


def _default_for(alias: str) -> Any:
    for info in Settings.model_fields.values():
        if info.validation_alias == alias:
            return info.get_default(call_default_factory=True)
    return None


def data_dir_problem(data_dir: Path) -> Problem | None:
    """None when keel can create and write files in ``data_dir``; else what is wrong."""
    if data_dir.exists() and not data_dir.is_dir():
        return Problem(f"KEEL_DATA_DIR {str(data_dir)!r} is a file, not a folder.",
                       "Set KEEL_DATA_DIR to a folder keel may write to (it is created if "
                       "missing).")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".keel-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return Problem(f"KEEL_DATA_DIR {str(data_dir)!r} is not writable ({reason}).",
                       "Set KEEL_DATA_DIR to a folder keel may write to, or fix its "
                       "permissions.")
    return None


def require_data_dir(data_dir: Path) -> None:
    problem = data_dir_problem(data_dir)
    if problem is not None:
        raise ConfigError(str(problem))
