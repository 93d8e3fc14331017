"""An agent uses the tools of two MCP servers (stdio and streamable HTTP, both local processes)
through the real runtime and the real anthropic client against the fake API; `keel mcp list`
shows the servers, their status and tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents.config import load_settings
from agents.runtime import RunRequest, Runtime
from agents.tools.external import SYSTEM_RULE
from bot.cli import main
from tests.e2e.conftest import API_KEY
from tests.fakes.anthropic import FakeAnthropic, reply, tool_use
from tests.mcp.conftest import HttpServer, http_entry, stdio_entry

pytestmark = pytest.mark.e2e

AGENT = """
[agents.ops]
description = "Runs operations with the team's tools."
system = "You run operations."
tools = ["mcp:local/echo", "mcp:remote/add", "mcp:local/hang", "mcp:remote/echo"]
[agents.ops.limits]
tool_timeout_s = 1.0
"""


def write_config(tmp_path: Path, http_server: HttpServer, monkeypatch: pytest.MonkeyPatch,
                 fake: FakeAnthropic | None = None) -> Path:
    path = tmp_path / "keel.toml"
    path.write_text(stdio_entry() + http_entry(http_server) + AGENT, "utf-8")
    monkeypatch.setenv("KEEL_CONFIG", str(path))
    if fake is not None:
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    return path


def tool_results(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["tool_use_id"]: b for b in body["messages"][-1]["content"]
            if b.get("type") == "tool_result"}


async def test_an_agent_calls_tools_of_a_stdio_and_an_http_server(
        fake_anthropic: FakeAnthropic, http_server: HttpServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, http_server, monkeypatch, fake_anthropic)
    fake_anthropic.enqueue(
        reply(tool_use("local__echo", {"text": "ping"}, id="toolu_a"),
              tool_use("remote__add", {"a": 2, "b": 40}, id="toolu_b"),
              tool_use("local__hang", {}, id="toolu_c")),
        reply(tool_use("remote__echo", {"text": "after the kill"}, id="toolu_d"),
              tool_use("local__echo", {"text": "still up"}, id="toolu_e")),
        reply("Done: ping answered, 2 + 40 = 42, hang timed out, remote went away."))
    runtime = await Runtime.open(load_settings())
    try:
        first_round_done = False

        async def kill_remote_after_first_round(kind: str, value: str) -> None:
            nonlocal first_round_done
            if kind == "tool" and value == "remote__echo" and not first_round_done:
                first_round_done = True
                http_server.kill()  # the HTTP server dies between the model's two rounds

        result = await runtime.run(RunRequest(agent="ops", new_from=0, messages=[
            {"role": "user", "content": [{"type": "text", "text": "Check the tools."}]}]),
            on_progress=kill_remote_after_first_round)
        events = runtime.traces.read(result.trace_id)
    finally:
        await runtime.close()
    assert result.status == "completed", result.detail

    first, second, third = (r.body for r in fake_anthropic.message_requests)
    names = [t["name"] for t in first["tools"]]
    assert names == ["local__echo", "remote__add", "local__hang", "remote__echo"]
    add_schema = next(t for t in first["tools"] if t["name"] == "remote__add")["input_schema"]
    assert add_schema["required"] == ["a", "b"]
    assert SYSTEM_RULE in "".join(b["text"] for b in first["system"])

    round_one = tool_results(second)
    assert "local: ping" in round_one["toolu_a"]["content"]
    assert "42" in round_one["toolu_b"]["content"]
    assert round_one["toolu_c"].get("is_error") is True
    assert json.loads(round_one["toolu_c"]["content"])["error"] == "timeout"

    round_two = tool_results(third)
    dead = json.loads(round_two["toolu_d"]["content"])
    assert round_two["toolu_d"].get("is_error") is True and dead["error"] == "upstream_error"
    assert "local: still up" in round_two["toolu_e"]["content"]  # the other server works

    mcp_events = [e for e in events if e["type"] == "mcp"]
    assert {(e["server"], e["server_version"]) for e in mcp_events} == {
        ("local", "1.2.3"), ("remote", "1.2.3")}
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [c["name"] for c in calls] == ["local__echo", "remote__add", "local__hang",
                                          "remote__echo", "local__echo"]


async def test_keel_mcp_list_shows_servers_status_and_tools(
        http_server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, http_server, monkeypatch)
    assert await _main(["mcp", "list", "--json"]) == 0
    report = {s["name"]: s for s in json.loads(capsys.readouterr().out)["servers"]}
    assert report["local"]["status"] == "up" and report["local"]["transport"] == "stdio"
    assert report["remote"]["status"] == "up" and report["remote"]["target"] == http_server.url
    tools = {t["name"]: t["agents"] for t in report["remote"]["tools"]}
    assert tools["add"] == ["ops"] and tools["whoami"] == []

    http_server.kill()
    assert await _main(["mcp", "list"]) == 1
    out = capsys.readouterr().out
    assert "remote  http  " + http_server.url in out
    assert "  down: " in out
    assert "  - echo  (ops)  Say the text back" in out  # the stdio server still answers


async def _main(argv: list[str]) -> int:
    import asyncio

    # the command runs its own event loop, as it does from a shell
    return await asyncio.to_thread(main, argv)
