"""The registry knows every tool once; each agent gets a short catalog of them."""

from __future__ import annotations

import json
import sys
import types

import pytest

from agents.errors import ConfigError
from agents.tools import (
    MAX_CATALOG_TOOLS,
    Tool,
    ToolArgs,
    ToolCall,
    ToolContext,
    ToolRegistry,
    builtin_registry,
    load_tool_modules,
    tool,
)


async def _noop(args: ToolArgs) -> str:
    return "ok"


def make(name: str, version: int = 1) -> Tool:
    return Tool(fn=_noop, name=name, description=f"{name}. Returns ok.", args_model=ToolArgs,
                version=version)


def test_a_duplicate_name_and_version_is_refused() -> None:
    registry = ToolRegistry([make("echo")])
    with pytest.raises(ConfigError, match="'echo' version 1 is already registered"):
        registry.register(make("echo"))
    registry.register(make("echo", version=2))  # a new version is not a duplicate
    assert registry.current("echo").version == 2


def test_registering_the_same_tool_object_twice_is_harmless() -> None:
    echo = make("echo")
    registry = ToolRegistry([echo])
    assert registry.register(echo) is echo


def test_a_catalog_keeps_the_agents_order() -> None:
    registry = ToolRegistry([make("b"), make("a"), make("c")])
    assert registry.names() == ["a", "b", "c"]
    catalog = registry.catalog(["c", "a"])
    assert catalog.names() == ["c", "a"]
    assert [s["name"] for s in catalog.schemas()] == ["c", "a"]


def test_a_catalog_is_built_once_per_list_of_names_until_a_tool_is_registered() -> None:
    """Every run of an agent asks for its catalog two or three times (issue 15); a new tool or
    version (an MCP server's, a tool module's) is seen by the next catalog asked for."""
    registry = ToolRegistry([make("a"), make("b")])
    first = registry.catalog(["a", "b"])
    assert registry.catalog(["a", "b"]) is first
    assert registry.catalog(("a", "b")) is first
    assert registry.catalog(["b", "a"]) is not first  # another order is another catalog
    assert [t.version for t in first.current()] == [1, 1]
    registry.register(make("a", version=2))
    again = registry.catalog(["a", "b"])
    assert again is not first
    assert [t.version for t in again.current()] == [2, 1]
    with pytest.raises(ConfigError, match="unknown tool"):  # refusals are never kept as catalogs
        registry.catalog(["a", "c"])
    registry.register(make("c"))
    assert [t.name for t in registry.catalog(["a", "c"]).current()] == ["a", "c"]


def test_a_catalog_over_ten_tools_is_refused() -> None:
    registry = ToolRegistry([make(f"t{i}") for i in range(MAX_CATALOG_TOOLS + 1)])
    registry.catalog(registry.names()[:MAX_CATALOG_TOOLS])
    with pytest.raises(ConfigError, match="at most 10 tools"):
        registry.catalog(registry.names())


def test_a_catalog_naming_an_unknown_tool_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown tool\(s\) \['nope'\]; known tools: a, b"):
        ToolRegistry([make("a"), make("b")]).catalog(["a", "nope"])
    with pytest.raises(ConfigError, match="more than once"):
        ToolRegistry([make("a")]).catalog(["a", "a"])


async def test_calling_an_unknown_tool_answers_with_the_available_ones(ctx: ToolContext) -> None:
    catalog = ToolRegistry([make("a"), make("b"), make("hidden")]).catalog(["a", "b"])
    outcome = await catalog.invoke(ToolCall(id="t", name="hidden", input={}), ctx)
    body = json.loads(outcome.content)
    assert outcome.is_error and body["error"] == "unknown_tool"
    assert body["suggestion"] == "Use one of the available tools: a, b."


def test_builtin_registry_has_the_builtins() -> None:
    registry = builtin_registry()
    assert registry.names() == ["escalate_to_human", "fetch_url", "forget", "get_current_time",
                                "recall", "remember", "research", "search_docs", "send_file"]
    assert builtin_registry() is not registry


def test_tool_modules_add_the_tools_they_define(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("keel_custom_tools")

    async def weather(args: ToolArgs) -> str:
        return "sunny"

    weather.__module__ = module.__name__
    module.weather = tool(description="Weather. Returns a word.")(weather)  # type: ignore[attr-defined]
    module.borrowed = make("borrowed")  # type: ignore[attr-defined]  # imported, not defined here
    monkeypatch.setitem(sys.modules, module.__name__, module)
    registry = builtin_registry()
    added = load_tool_modules(registry, [module.__name__])
    assert [t.name for t in added] == ["weather"]
    assert "weather" in registry and "borrowed" not in registry


def test_a_tool_module_that_cannot_be_imported_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'no_such_module_xyz' cannot be imported"):
        load_tool_modules(ToolRegistry(), ["no_such_module_xyz"])
