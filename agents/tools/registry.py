"""The registry of every tool keel knows, and the short catalog each agent gets.

Versions, as the model sees them:

* the current (highest) version of a tool is offered under its plain name, e.g. ``fetch_url``;
  ``Catalog.schemas()`` lists only current versions, in the agent's order;
* an older version is never offered but stays callable as ``<name>_v<version>``, e.g.
  ``fetch_url_v1``, until its ``deprecated_after`` date. A call to it works and writes a
  ``deprecated_tool`` trace event; after the date it answers a ``deprecated`` error whose
  suggestion names the current version;
* a resumed run or a replayed trace whose recorded calls used a plain name under an older version
  pins it with ``ToolContext.extras["tool_versions"] = {"fetch_url": 1}``; the ``version`` field
  of each recorded ``tool_call`` event says which version that was.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from agents.errors import ConfigError
from agents.tools.contract import ToolCall, ToolContext, ToolOutcome
from agents.tools.declare import VERSIONED_NAME, Tool
from agents.tools.errors import ToolError
from agents.tools.external import external_source
from agents.tools.invoke import KeyedLocks, describe_parameters, emit, error_outcome, execute

MAX_CATALOG_TOOLS = 10
"""An agent with more tools than this chooses worse; give it a narrower job instead."""

TRACE_CONTENT_CHARS = 2_000
"""How much of a tool result the ``tool_result`` trace event keeps."""


def utc_today() -> date:
    return datetime.now(UTC).date()


class ToolRegistry:
    """Every registered (name, version); a (name, version) may be registered only once."""

    def __init__(self, tools: Iterable[Tool] = (), *,
                 today: Callable[[], date] = utc_today) -> None:
        self._versions: dict[str, dict[int, Tool]] = {}
        self._today = today
        self._locks = KeyedLocks()
        self._catalogs: dict[tuple[str, ...], Catalog] = {}
        """Catalogs built, by their tools' names: every run of an agent asks for the same one
        (two or three times a message, ~11 us each to build); cleared by ``register``."""
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> Tool:
        self._catalogs.clear()
        versions = self._versions.setdefault(tool.name, {})
        existing = versions.get(tool.version)
        if existing is tool:
            return tool
        if existing is not None:
            raise ConfigError(
                f"tool {tool.name!r} version {tool.version} is already registered (from "
                f"{existing.fn.__module__}); give the new one another name, or a higher version "
                "if it replaces the old one")
        versions[tool.version] = tool
        return tool

    def names(self) -> list[str]:
        """Plain names of every registered tool, sorted."""
        return sorted(self._versions)

    def __contains__(self, name: object) -> bool:
        return name in self._versions

    def current(self, name: str) -> Tool:
        """The highest registered version of ``name``."""
        versions = self._versions.get(name)
        if not versions:
            raise ConfigError(f"no tool named {name!r}; known tools: {', '.join(self.names())}")
        return versions[max(versions)]

    def versions(self, name: str) -> list[Tool]:
        self.current(name)  # raises for an unknown name
        return [self._versions[name][v] for v in sorted(self._versions[name])]

    def catalog(self, names: Sequence[str]) -> Catalog:
        """The tools one agent may use, in the order given (which is the order the model sees).
        A catalog holds no state of a run: the same names get the same one until a tool is
        registered."""
        key = tuple(names)
        built = self._catalogs.get(key)
        if built is not None:
            return built
        unknown = [n for n in names if n not in self._versions]
        if unknown:
            raise ConfigError(f"unknown tool(s) {unknown}; known tools: {', '.join(self.names())}")
        duplicates = sorted({n for n in names if list(names).count(n) > 1})
        if duplicates:
            raise ConfigError(f"tool(s) {duplicates} are listed more than once")
        if len(names) > MAX_CATALOG_TOOLS:
            raise ConfigError(
                f"an agent may have at most {MAX_CATALOG_TOOLS} tools, this one lists "
                f"{len(names)} ({', '.join(names)}); split the job between agents")
        built = self._catalogs[key] = Catalog({name: self.versions(name) for name in names},
                                              today=self._today, locks=self._locks)
        return built


class Catalog:
    """One agent's tools; implements ``agents.tools.contract.ToolCatalog``."""

    def __init__(self, tools: dict[str, list[Tool]], *, today: Callable[[], date] = utc_today,
                 locks: KeyedLocks | None = None) -> None:
        self._tools = tools  # plain name -> every version, oldest first
        self._today = today
        self._locks = locks or KeyedLocks()

    def names(self) -> list[str]:
        return list(self._tools)

    def current(self) -> tuple[Tool, ...]:
        """The version of each tool the model is offered today (retired ones left out)."""
        today = self._today()
        return tuple(versions[-1] for versions in self._tools.values()
                     if not versions[-1].retired(today))

    def schemas(self) -> list[dict[str, Any]]:
        return [tool.definition() for tool in self.current()]

    def schemas_key(self) -> tuple[Tool, ...] | None:
        """What ``schemas`` follows from, to share what is built from them
        (``agents.executor.prepare.Prefix.of``): today's tools, when none of their definitions
        can change (an MCP tool's can, when its server answers); None otherwise."""
        current = self.current()
        return current if all(tool.definition_fixed for tool in current) else None

    async def invoke(self, call: ToolCall, ctx: ToolContext) -> ToolOutcome:
        started = time.monotonic()
        try:
            tool = self._resolve(call.name, ctx)
        except ToolError as exc:
            await emit(ctx, "tool_call", id=call.id, name=call.name, version=None,
                       input=call.input)
            return await self._finish(call, ctx, error_outcome(exc), None, started)
        await emit(ctx, "tool_call", id=call.id, name=tool.name, version=tool.version,
                   input=call.input)
        try:
            self._check_deprecation(tool, call)
        except ToolError as exc:
            return await self._finish(call, ctx, error_outcome(exc), tool, started)
        if tool is not self._tools[tool.name][-1] or tool.deprecated_after is not None:
            await emit(ctx, "deprecated_tool", id=call.id, tool=tool.name, version=tool.version,
                       current_version=self._tools[tool.name][-1].version,
                       deprecated_after=tool.deprecated_after, replaced_by=tool.replaced_by)
        outcome = await execute(tool, call, ctx, self._locks)
        return await self._finish(call, ctx, outcome, tool, started)

    def _resolve(self, called: str, ctx: ToolContext) -> Tool:
        versions = self._tools.get(called)
        if versions is not None:
            pins = ctx.extras.get("tool_versions")
            pinned = pins.get(called) if isinstance(pins, dict) else None
            for tool in versions:
                if tool.version == pinned:
                    return tool
            return versions[-1]
        match = VERSIONED_NAME.match(called)
        if match and match["name"] in self._tools:
            for tool in self._tools[match["name"]]:
                if tool.version == int(match["version"]):
                    return tool
        offered = ", ".join(self.names()) or "none"
        raise ToolError("unknown_tool", f"there is no tool named {called!r} here.",
                        f"Use one of the available tools: {offered}.")

    def _check_deprecation(self, tool: Tool, call: ToolCall) -> None:
        if not tool.retired(self._today()):
            return
        current = self._tools[tool.name][-1]
        if current is not tool and not current.retired(self._today()):
            instead = (f"Call {current.name!r} (version {current.version}) instead, with "
                       f"{describe_parameters(current)}.")
        elif tool.replaced_by:
            instead = f"Call {tool.replaced_by!r} instead."
        else:
            instead = "It has no replacement; go on without it."
        raise ToolError("deprecated",
                        f"{call.name} (version {tool.version}) was retired after "
                        f"{tool.deprecated_after}.", instead)

    async def _finish(self, call: ToolCall, ctx: ToolContext, outcome: ToolOutcome,
                      tool: Tool | None, started: float) -> ToolOutcome:
        outcome = dataclasses.replace(
            outcome, version=str(tool.version) if tool else "", duration_s=time.monotonic() - started)
        error_code = _error_code(outcome.content) if outcome.is_error else None
        await emit(ctx, "tool_result", id=call.id, name=tool.name if tool else call.name,
                   version=tool.version if tool else None, is_error=outcome.is_error,
                   error=error_code, duration_s=round(outcome.duration_s, 4),
                   attempts=outcome.attempts, replayed=outcome.replayed,
                   escalation=outcome.escalation is not None,
                   external=None if outcome.is_error else external_source(outcome.content),
                   content=_clip(outcome.content, TRACE_CONTENT_CHARS))
        return outcome


def load_tool_modules(registry: ToolRegistry, modules: Iterable[str]) -> list[Tool]:
    """Import each module (``keel.toml``'s ``tool_modules``) and register the tools it defines.

    A module contributes every module-level ``Tool`` it defines itself (not ones it imports), and,
    if it has one, whatever its ``register(registry)`` function registers.
    """
    added: list[Tool] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"tool module {module_name!r} cannot be imported ({exc}); check "
                              "tool_modules in keel.toml and that the module is on the path"
                              ) from None
        found = [value for value in vars(module).values()
                 if isinstance(value, Tool) and value.fn.__module__ == module.__name__]
        for tool in found:
            added.append(registry.register(tool))
        hook = getattr(module, "register", None)
        if callable(hook):
            hook(registry)
        elif not found:
            raise ConfigError(f"tool module {module_name!r} defines no tools: declare them with "
                              "@agents.tools.tool or give it a register(registry) function")
    return added


def _error_code(content: str) -> str | None:
    try:
        body = json.loads(content)
    except ValueError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more]"
