"""A run's prefix (tools and system) is built once per distinct tool set and system prompt and
shared by later runs (issue 15), and never goes stale: a new system prompt, another tool set, a
retired tool or a tool whose definition changes (an MCP tool once its server answers) each give
the prefix ``Prefix.build`` would."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel

from agents.executor import prepare
from agents.executor.prepare import Prefix
from agents.runtime import Runtime
from agents.tools.declare import Tool, tool
from agents.tools.registry import ToolRegistry
from tests.fakes.scripted_model import ScriptedModel, reply
from tests.unit.conftest import task


class Query(BaseModel):
    q: str


@tool(description="Looks a word up.")
async def lookup(args: Query) -> str:
    return args.q


@tool(description="Counts letters.", deprecated_after=date(2026, 6, 30))
async def count(args: Query) -> str:
    return str(len(args.q))


class Listed(Tool):
    """A tool whose definition follows something outside it, like an MCP tool's server."""

    definition_fixed = False

    def __init__(self) -> None:
        super().__init__(fn=self._call, name="remote", description="Placeholder.",
                         args_model=Query)
        self.listed_description: str | None = None

    def definition(self) -> dict[str, Any]:
        base = super().definition()
        return {**base, "description": self.listed_description or base["description"]}

    async def _call(self, args: Query) -> str:
        return args.q


def same_as_built(prefix: Prefix, system: str, schemas: list[dict[str, Any]]) -> bool:
    return prefix == Prefix.build(system, schemas)


def test_runs_with_the_same_tools_and_system_share_one_prefix() -> None:
    registry = ToolRegistry([lookup, count], today=lambda: date(2026, 1, 1))
    first = Prefix.of("You are terse.", registry.catalog(["lookup", "count"]))
    again = Prefix.of("You are terse.", registry.catalog(["lookup", "count"]))  # a new catalog
    assert again is first
    assert same_as_built(first, "You are terse.", registry.catalog(["lookup", "count"]).schemas())
    other_system = Prefix.of("You are chatty.", registry.catalog(["lookup", "count"]))
    fewer_tools = Prefix.of("You are terse.", registry.catalog(["lookup"]))
    uncached = Prefix.of("You are terse.", registry.catalog(["lookup", "count"]), cache=False)
    assert len({first.sha256, other_system.sha256, fewer_tools.sha256, uncached.sha256}) == 4
    assert same_as_built(fewer_tools, "You are terse.", registry.catalog(["lookup"]).schemas())
    assert not uncached.cached and "cache_control" not in uncached.system[0]


def test_a_tool_retired_since_is_left_out_of_the_next_prefix() -> None:
    today = [date(2026, 6, 30)]
    registry = ToolRegistry([lookup, count], today=lambda: today[0])
    before = Prefix.of("S", registry.catalog(["lookup", "count"]))
    assert [t["name"] for t in before.tools] == ["lookup", "count"]
    today[0] = date(2026, 7, 1)
    after = Prefix.of("S", registry.catalog(["lookup", "count"]))
    assert [t["name"] for t in after.tools] == ["lookup"]


def test_a_tool_whose_definition_changes_is_never_served_stale() -> None:
    remote = Listed()
    registry = ToolRegistry([lookup, remote])
    before = Prefix.of("S", registry.catalog(["lookup", "remote"]))
    assert before.tools[1]["description"].startswith("Placeholder.")
    remote.listed_description = "What the server says it does."
    after = Prefix.of("S", registry.catalog(["lookup", "remote"]))
    assert after.tools[1]["description"] == "What the server says it does."
    assert after.sha256 != before.sha256


def test_the_prefixes_kept_are_bounded() -> None:
    registry = ToolRegistry([lookup])
    for n in range(prepare.PREFIXES_KEPT + 10):
        Prefix.of(f"System {n}", registry.catalog(["lookup"]))
    assert len(prepare._built) <= prepare.PREFIXES_KEPT


async def test_a_run_builds_its_prefix_only_when_it_is_new(make_runtime: Any,
                                                           monkeypatch: Any) -> None:
    builds: list[str] = []
    build = Prefix.build.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Prefix], system: str, tools: list[dict[str, Any]], *,
                 cache: bool = True) -> Prefix:
        builds.append(system)
        return build(cls, system, tools, cache=cache)

    monkeypatch.setattr(Prefix, "build", classmethod(counting))
    prepare._built.clear()
    model = ScriptedModel(*[reply(f"answer {n}") for n in range(5)])
    runtime: Runtime = await make_runtime(model)
    for n in range(5):
        result = await runtime.run(task(f"question {n}"))
        assert result.status == "completed"
    model.assert_all_used()
    assert len(builds) == 1
    # every request still carried the whole prefix, byte for byte the same
    assert len({repr((r.system, r.tools)) for r in model.requests}) == 1
    assert model.requests[0].tools and model.requests[0].system
