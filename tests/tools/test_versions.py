"""Old tool versions keep working for old calls until their date, then say what replaced them."""

from __future__ import annotations

import json
from datetime import date

from pydantic import Field

from agents.tools import Tool, ToolArgs, ToolCall, ToolContext, ToolRegistry
from tests.tools.conftest import MakeCtx, Trace

TODAY = date(2026, 3, 1)


class V1Args(ToolArgs):
    q: str


class V2Args(ToolArgs):
    query: str = Field(description="Search words.")
    limit: int = 5


async def search_v1(args: V1Args) -> str:
    return f"v1:{args.q}"


async def search_v2(args: V2Args) -> str:
    return f"v2:{args.query}"


def registry(retired_on: date) -> ToolRegistry:
    old = Tool(fn=search_v1, name="search", description="Search (old).", args_model=V1Args,
               version=1, deprecated_after=retired_on)
    new = Tool(fn=search_v2, name="search", description="Search. Returns hits.",
               args_model=V2Args, version=2)
    return ToolRegistry([new, old], today=lambda: TODAY)


def test_only_the_current_version_is_offered_under_the_plain_name() -> None:
    catalog = registry(date(2026, 6, 1)).catalog(["search"])
    [schema] = catalog.schemas()
    assert schema["name"] == "search" and "query" in schema["input_schema"]["properties"]
    assert catalog.names() == ["search"]


async def test_an_old_version_works_before_its_date_with_a_trace_event(
    ctx: ToolContext, trace: Trace
) -> None:
    catalog = registry(retired_on=date(2026, 3, 1)).catalog(["search"])  # last day it works
    outcome = await catalog.invoke(ToolCall(id="t1", name="search_v1", input={"q": "cats"}), ctx)
    assert (outcome.content, outcome.version, outcome.is_error) == ("v1:cats", "1", False)
    [event] = trace.of("deprecated_tool")
    assert event["tool"] == "search" and event["version"] == 1 and event["current_version"] == 2
    assert trace.of("tool_call")[0]["version"] == 1


async def test_an_old_version_is_refused_after_its_date_naming_the_new_one(
    ctx: ToolContext,
) -> None:
    catalog = registry(retired_on=date(2026, 2, 28)).catalog(["search"])
    outcome = await catalog.invoke(ToolCall(id="t1", name="search_v1", input={"q": "cats"}), ctx)
    assert outcome.is_error and outcome.version == "1"
    body = json.loads(outcome.content)
    assert body["error"] == "deprecated"
    assert "retired after 2026-02-28" in body["message"]
    assert body["suggestion"] == ("Call 'search' (version 2) instead, with parameters "
                                  "query (string, required), limit (integer).")


async def test_the_current_version_is_also_reachable_by_its_versioned_name(
    ctx: ToolContext, trace: Trace
) -> None:
    catalog = registry(date(2026, 6, 1)).catalog(["search"])
    outcome = await catalog.invoke(ToolCall(id="t1", name="search_v2", input={"query": "x"}), ctx)
    assert outcome.content == "v2:x" and trace.of("deprecated_tool") == []


async def test_a_replayed_run_pins_the_version_it_recorded(make_ctx: MakeCtx) -> None:
    catalog = registry(date(2026, 6, 1)).catalog(["search"])
    ctx = make_ctx(extras={"tool_versions": {"search": 1}})
    outcome = await catalog.invoke(ToolCall(id="t1", name="search", input={"q": "cats"}), ctx)
    assert (outcome.content, outcome.version) == ("v1:cats", "1")


async def test_a_retired_tool_without_successor_is_no_longer_offered(ctx: ToolContext) -> None:
    gone = Tool(fn=search_v1, name="legacy", description="Legacy.", args_model=V1Args,
                deprecated_after=date(2026, 1, 1), replaced_by="search")
    catalog = ToolRegistry([gone], today=lambda: TODAY).catalog(["legacy"])
    assert catalog.schemas() == []
    outcome = await catalog.invoke(ToolCall(id="t1", name="legacy", input={"q": "x"}), ctx)
    assert json.loads(outcome.content)["suggestion"] == "Call 'search' instead."
