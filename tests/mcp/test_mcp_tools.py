"""MCP servers' tools under keel's tool contract, against real local servers (stdio and
streamable HTTP) written with the official SDK: calls, errors as data, timeouts, isolation of a
failing server, retry later, idempotent side effects."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agents.config import KeelFile
from agents.tools.contract import ToolCall, ToolContext
from agents.tools.mcp import McpHub, McpTool, hub_of, register_mcp_tools
from agents.tools.registry import Catalog, ToolRegistry
from tests.mcp.conftest import HttpServer, http_entry, stdio_entry
from tests.tools.conftest import MemoryStore, Trace

AGENT = ('[agents.ops]\ndescription = "ops"\nsystem = "You run ops."\n'
         'tools = {tools}\n')


def keel_file(entries: str, tools: list[str]) -> KeelFile:
    text = entries + AGENT.format(tools=json.dumps(tools))
    return KeelFile.model_validate(tomllib.loads(text))


def context(trace: Trace, store: MemoryStore | None = None, *, key: str = "tg:1",
            timeout_s: float = 10.0) -> ToolContext:
    return ToolContext(run_id="run-1", agent="ops", emit=trace.emit,
                       idempotency=store or MemoryStore(), default_timeout_s=timeout_s,
                       idempotency_key=key)


async def call(catalog: Catalog, name: str, args: dict[str, Any], ctx: ToolContext,
               call_id: str = "t1") -> Any:
    return await catalog.invoke(ToolCall(id=call_id, name=name, input=args), ctx)


@pytest.fixture
async def world(http_server: HttpServer, tmp_path: Path) -> Any:
    entries = (stdio_entry(count_file=tmp_path / "count.txt",
                           extra='side_effects = ["count"]\nreconnect_after_s = 0')
               + http_entry(http_server, extra="reconnect_after_s = 0"))
    tools = ["mcp:local/echo", "mcp:local/hang", "mcp:local/fail", "mcp:local/count",
             "mcp:remote/echo", "mcp:remote/whoami", "mcp:local/gone"]
    registry = ToolRegistry()
    hub = register_mcp_tools(registry, keel_file(entries, tools))
    assert hub is not None and hub_of(registry) is hub
    await hub.start()
    try:
        yield registry, hub
    finally:
        await hub.close()


async def test_tools_of_both_servers_are_called_with_their_own_schemas(world: Any) -> None:
    registry, hub = world
    catalog = registry.catalog(["local__echo", "remote__echo"])
    schemas = {s["name"]: s for s in catalog.schemas()}
    assert schemas["local__echo"]["input_schema"] == {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    assert "prefixed with the server's label" in schemas["remote__echo"]["description"]
    trace = Trace()
    local = await call(catalog, "local__echo", {"text": "hi"}, context(trace))
    remote = await call(catalog, "remote__echo", {"text": "hi"}, context(trace))
    assert not local.is_error and "local: hi" in local.content
    assert not remote.is_error and "remote: hi" in remote.content
    # outside text, marked as such; the trace names the server and its version
    assert local.content.startswith('<external source="mcp:local/echo" trust="untrusted">')
    versions = {e["server"]: e["server_version"] for e in trace.of("mcp")}
    assert versions == {"local": "1.2.3", "remote": "1.2.3"}
    assert all(e["schema_digest"] for e in trace.of("mcp"))


async def test_a_hanging_tool_times_out_as_an_error_result_and_the_server_stays_up(
        world: Any) -> None:
    registry, hub = world
    tool = registry.current("local__hang")
    assert isinstance(tool, McpTool)
    catalog = Catalog({"local__hang": [tool.replace(timeout_s=0.5)],
                       "local__echo": registry.versions("local__echo")})
    trace = Trace()
    outcome = await call(catalog, "local__hang", {}, context(trace))
    assert outcome.is_error and json.loads(outcome.content)["error"] == "timeout"
    assert hub.servers["local"].state == "up"  # one slow tool does not take the server down
    after = await call(catalog, "local__echo", {"text": "still here"}, context(trace))
    assert not after.is_error and "still here" in after.content


async def test_errors_are_data(world: Any) -> None:
    registry, _ = world
    catalog = registry.catalog(["local__fail", "local__gone", "local__echo"])
    trace = Trace()
    failed = await call(catalog, "local__fail", {"reason": "disk full"}, context(trace))
    body = json.loads(failed.content)
    assert failed.is_error and body["error"] == "upstream_error" and "disk full" in body["message"]
    gone = await call(catalog, "local__gone", {}, context(trace))
    assert gone.is_error and json.loads(gone.content)["error"] == "not_found"
    bad = await call(catalog, "local__echo", {"txt": "typo"}, context(trace))
    assert bad.is_error and json.loads(bad.content)["error"] == "upstream_error"


async def test_killing_one_server_leaves_the_other_working_and_it_is_retried_later(
        world: Any, http_server: HttpServer) -> None:
    registry, hub = world
    catalog = registry.catalog(["local__echo", "remote__echo", "remote__whoami"])
    trace = Trace()
    first = await call(catalog, "remote__whoami", {}, context(trace))
    assert not first.is_error
    http_server.kill()
    down = await call(catalog, "remote__echo", {"text": "x"}, context(trace))
    body = json.loads(down.content)
    assert down.is_error and body["error"] == "upstream_error"
    assert "'remote' is unavailable" in body["message"]
    assert hub.servers["remote"].state == "down"
    local = await call(catalog, "local__echo", {"text": "fine"}, context(trace))
    assert not local.is_error and "local: fine" in local.content
    # back: the next call connects again (reconnect_after_s = 0), nothing was removed
    await http_server.start()
    again = await call(catalog, "remote__whoami", {}, context(trace))
    assert not again.is_error, again.content
    assert str(http_server.starts[-1]) in again.content
    assert hub.servers["remote"].state == "up"


async def test_a_down_server_waits_for_its_retry_time(http_server: HttpServer) -> None:
    entries = http_entry(http_server, extra="reconnect_after_s = 300\nconnect_timeout_s = 5")
    registry = ToolRegistry()
    hub = register_mcp_tools(registry, keel_file(entries, ["mcp:remote/echo"]))
    assert isinstance(hub, McpHub)
    http_server.kill()
    try:
        await hub.start()
        server = hub.servers["remote"]
        assert server.state == "down" and server.failures == 1
        await http_server.start()
        catalog = registry.catalog(["remote__echo"])
        outcome = await call(catalog, "remote__echo", {"text": "x"}, context(Trace()))
        body = json.loads(outcome.content)
        # answered at once from the server's state: no connection attempt before its time
        assert outcome.is_error and body["retry_after_s"] > 200 and server.failures == 1
        server.retry_at = 0.0  # its time has come
        outcome = await call(catalog, "remote__echo", {"text": "x"}, context(Trace()))
        assert not outcome.is_error and server.state == "up"
    finally:
        await hub.close()


async def test_a_declared_side_effect_happens_once_per_request(world: Any,
                                                               tmp_path: Path) -> None:
    registry, _ = world
    catalog = registry.catalog(["local__count"])
    assert "returns the first result" in catalog.schemas()[0]["description"]
    store = MemoryStore()
    one = await call(catalog, "local__count", {}, context(Trace(), store, key="tg:7"))
    two = await call(catalog, "local__count", {}, context(Trace(), store, key="tg:7"))
    other = await call(catalog, "local__count", {}, context(Trace(), store, key="tg:8"))
    assert "count 1" in one.content and two.content == one.content and two.replayed
    assert "count 2" in other.content
    assert (tmp_path / "count.txt").read_text().count("x") == 2
