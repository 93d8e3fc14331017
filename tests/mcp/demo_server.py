"""A small MCP server for the tests, written with the official SDK's server side.

    python demo_server.py stdio            # over stdin/stdout (keel starts it)
    python demo_server.py http PORT        # streamable HTTP on 127.0.0.1:PORT/mcp

Tools: ``echo`` (text back, with the server's label), ``add``, ``hang`` (never answers),
``fail`` (an error result), ``count`` (a side effect: appends a line to $DEMO_COUNT_FILE and
says how many lines there are), ``whoami`` (the process id: tells two connections apart).
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

LABEL = os.environ.get("DEMO_LABEL", "demo")
server = MCPServer(LABEL, version="1.2.3")


@server.tool()
async def echo(text: str) -> str:
    """Say the text back, prefixed with the server's label."""
    return f"{LABEL}: {text}"


@server.tool()
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def hang() -> str:
    """Never answers (for timeouts)."""
    await asyncio.sleep(3600)
    return "too late"


@server.tool()
async def fail(reason: str) -> str:
    """Always fails with the given reason."""
    raise ToolError(reason)


@server.tool()
def count() -> str:
    """Append a line to the count file and say how many lines it has."""
    path = os.environ["DEMO_COUNT_FILE"]
    with open(path, "a", encoding="utf-8") as f:
        f.write("x\n")
    with open(path, encoding="utf-8") as f:
        return f"count {len(f.readlines())}"


@server.tool()
async def whoami() -> str:
    """The server process id."""
    return str(os.getpid())


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
