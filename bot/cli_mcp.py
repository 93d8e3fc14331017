"""`keel mcp list`: each MCP server of keel.toml, whether it answers now, and its tools (which
agents may use each). It connects to every server (bounded by the server's connect timeout),
lists, and disconnects; it calls no tool and no model."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from agents.config import Settings, mcp_tool_name
from agents.config_check import load_configuration
from agents.tools.mcp import McpHub, hub_of

EXAMPLE = """\
[[mcp]]
name = "files"                         # the tools are "mcp:files/TOOL" in an agent's tools
command = "npx"                        # a server keel starts and talks to over stdio
args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/shared"]
side_effects = ["write_file"]          # stored per request: a retried run does not repeat it

[[mcp]]
name = "tracker"
url = "https://mcp.example.com/mcp"    # streamable HTTP
headers = { Authorization = "Bearer ${TRACKER_TOKEN}" }   # read from the environment
timeout_s = 20

[agents.assistant]
tools = ["get_current_time", "mcp:files/read_file", "mcp:tracker/create_issue"]
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mcp = sub.add_parser(
        "mcp", help="MCP tool servers: status and tools",
        description="MCP servers are declared in keel.toml under [[mcp]]; an agent uses one of "
        "their tools when its tools list names it as \"mcp:SERVER/TOOL\".",
    ).add_subparsers(dest="mcp_command", metavar="SUBCOMMAND", required=True)
    p = mcp.add_parser(
        "list", help="each server, whether it answers, and its tools",
        description="Connect to each [[mcp]] server of keel.toml (KEEL_CONFIG), list its tools "
        "and say which agents allow each. A server that does not answer is shown with the "
        "reason. Calls no tool. Exit 1 when a server is down.",
        epilog="Example for keel.toml:\n\n" + EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_mcp_list)


def _mcp_list(args: argparse.Namespace, settings: Settings) -> int:
    checked = load_configuration(settings)
    hub = hub_of(checked.registry)
    if hub is None:
        print("No MCP servers. Add [[mcp]] entries to keel.toml (see `keel mcp list --help`).")
        return 0
    allowed: dict[str, list[str]] = {}
    for spec in checked.agents.values():
        for tool in spec.tools:
            allowed.setdefault(tool, []).append(spec.name)
    report = asyncio.run(_probe(hub, allowed))
    if args.json:
        print(json.dumps({"servers": report}, indent=2, ensure_ascii=False))
    else:
        print("\n".join(render(report)))
    return 0 if all(s["status"] == "up" for s in report) else 1


async def _probe(hub: McpHub, allowed: dict[str, list[str]]) -> list[dict[str, Any]]:
    try:
        await hub.start(within_s=max(s.config.connect_timeout_s for s in hub.servers.values()))
        out = []
        for server in hub.servers.values():
            listed = {mcp_tool_name(server.name, t.name): t for t in server.tools.values()}
            tools = [{"name": t.name, "keel_name": name, "agents": allowed.get(name, []),
                      "description": t.description.splitlines()[0][:80] if t.description
                      else ""} for name, t in listed.items()]
            missing = sorted(name for name in allowed if name.startswith(
                f"{server.name}__") and name not in listed)
            out.append({"name": server.name, "transport": server.transport,
                        "target": server.target, "status": server.state,
                        "detail": server.status_line(), "tools": tools,
                        "allowed_but_missing": missing if server.state == "up" else []})
        return out
    finally:
        await hub.close()


def render(report: list[dict[str, Any]]) -> list[str]:
    lines = []
    for server in report:
        lines.append(f"{server['name']}  {server['transport']}  {server['target']}")
        lines.append(f"  {server['detail']}")
        for tool in server["tools"]:
            who = ", ".join(tool["agents"]) or "no agent"
            lines.append(f"  - {tool['name']}  ({who})  {tool['description']}")
        for name in server["allowed_but_missing"]:
            lines.append(f"  ! {name} is allowed to an agent but the server does not list it")
    return lines
