"""Connections to MCP tool servers (the official ``mcp`` SDK, client side), each isolated.

One ``McpServer`` per ``[[mcp]]`` entry of keel.toml. Its connection lives in a task of its own
(the SDK's transports are anyio context managers, entered and left in one task); tool calls from
any run share it. A server that cannot be reached, or whose connection breaks, is marked
``down`` with the reason and a time to try again: until then its tools answer an error at once,
after it the next call connects again. Nothing is ever dropped until restart, and no other
server notices: each has its own task, state and lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from agents.config import McpServerConfig, mcp_tool_name
from agents.tools.errors import ToolError

log = logging.getLogger(__name__)

MAX_RECONNECT_DELAY_S = 600.0
CLOSE_TIMEOUT_S = 5.0
MAX_LIST_PAGES = 20

State = Literal["idle", "connecting", "up", "down"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class McpUnavailable(Exception):
    """The server cannot be reached now; ``str()`` says why, without secrets."""


@dataclass(frozen=True, kw_only=True)
class ListedTool:
    """One tool as the server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    digest: str
    """Short hash of name, description and schema: a changed tool shows in the trace."""


def expand(value: str, what: str, environ: dict[str, str] | None = None) -> str:
    """``${VAR}`` replaced from the environment; a missing variable is an McpUnavailable that
    names it (never its value)."""
    env = os.environ if environ is None else environ

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise McpUnavailable(f"environment variable {name} (used in {what}) is not set")
        return env[name]

    return _VAR.sub(one, value)


def missing_variables(config: McpServerConfig, environ: dict[str, str] | None = None) -> list[str]:
    """The ``${VAR}`` names a server's env and headers use that are not set."""
    env = os.environ if environ is None else environ
    used = [m.group(1) for v in [*config.env.values(), *config.headers.values()]
            for m in _VAR.finditer(v)]
    return sorted({name for name in used if name not in env})


class McpServer:
    """One configured server: its connection, its tool listing and its health."""

    def __init__(self, config: McpServerConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.name = config.name
        self.state: State = "idle"
        self.error: str | None = None
        self.tools: dict[str, ListedTool] = {}
        self.server_name: str | None = None
        self.server_version: str | None = None
        self.protocol_version: str | None = None
        self.failures = 0
        self.retry_at = 0.0
        self._clock = clock
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._ready: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def transport(self) -> str:
        return "stdio" if self.config.command is not None else "http"

    @property
    def target(self) -> str:
        """Where the server is, for people (a URL without its query, or the command)."""
        if self.config.url is not None:  # no credentials: no userinfo, no query
            parts = urlsplit(self.config.url)
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{host}{port}{parts.path}"
        return " ".join([self.config.command or "", *self.config.args]).strip()

    def tool_named(self, wanted: str) -> ListedTool | None:
        """The listed tool whose keel name part is ``wanted`` (names are sanitised the same
        way on both sides)."""
        for tool in self.tools.values():
            if mcp_tool_name(self.name, tool.name) == mcp_tool_name(self.name, wanted):
                return tool
        return None

    # ------------------------------------------------------------------ connecting

    async def connect(self) -> None:
        """Connected (or already up) within the connect timeout; McpUnavailable otherwise.
        While a failed server waits for its retry time, this fails at once."""
        if self.state == "up" and self._client is not None:
            return
        wait = self.retry_at - self._clock()
        if self.state == "down" and wait > 0:
            raise McpUnavailable(f"{self.error}; tried again in {wait:.0f} s")
        async with self._lock:
            if self.state == "up" and self._client is not None:
                return
            if self.state == "down" and self.retry_at > self._clock():
                raise McpUnavailable(f"{self.error}; tried again in "
                                     f"{self.retry_at - self._clock():.0f} s")
            await self._start()

    async def _start(self) -> None:
        await self._teardown()
        self.state = "connecting"
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._ready, self._stop = ready, asyncio.Event()
        self._task = asyncio.create_task(self._own(ready, self._stop), name=f"mcp {self.name}")
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await asyncio.shield(ready)
        except TimeoutError:
            await self._teardown()
            self._down(f"no answer within {self.config.connect_timeout_s:g} s")
            raise McpUnavailable(str(self.error)) from None
        except McpUnavailable:
            raise
        except Exception as exc:
            self._down(_describe(exc))
            raise McpUnavailable(str(self.error)) from None

    async def _own(self, ready: asyncio.Future[None], stop: asyncio.Event) -> None:
        """The connection's task: enter the client, list the tools, hold it until told to stop
        or until the transport fails."""
        # the SDK is imported when a server is used: keel without [[mcp]] never loads it
        from mcp import Client
        from mcp.types import Implementation

        try:
            target = self._transport_target()
            async with Client(target, client_info=Implementation(name="keel", version="0.1.0"),
                              cache=None) as client:
                tools = await _list_tools(client)
                info = client.server_info
                self.server_name = info.name if info else None
                self.server_version = (info.version or None) if info else None
                self.protocol_version = client.protocol_version
                self.tools = tools
                self._client = client
                self.state, self.error, self.failures = "up", None, 0
                if not ready.done():
                    ready.set_result(None)
                log.info("MCP server %r is up: %d tool(s)", self.name, len(tools))
                await stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.set_exception(McpUnavailable("connecting was cancelled"))
            raise
        except BaseException as exc:  # the SDK raises exception groups from its task groups
            reason = _describe(exc)
            if not ready.done():
                ready.set_exception(McpUnavailable(reason))
            if not stop.is_set():
                self._down(reason)
        finally:
            self._client = None

    def _transport_target(self) -> Any:
        from mcp import StdioServerParameters
        from mcp.shared._httpx_utils import create_mcp_http_client

        where = f"[[mcp]] {self.name!r}"
        if self.config.command is not None:
            env = {k: expand(v, f"env of {where}") for k, v in self.config.env.items()}
            return StdioServerParameters(command=self.config.command, args=self.config.args,
                                         env=env or None, cwd=self.config.cwd)
        headers = {k: expand(v, f"headers of {where}") for k, v in self.config.headers.items()}
        http = create_mcp_http_client(headers=headers or None)
        return _OwnedHttpTransport(self.config.url or "", http)

    def _down(self, reason: str) -> None:
        self.failures += 1
        self.state, self.error = "down", reason
        delay = min(self.config.reconnect_after_s * 2 ** (self.failures - 1),
                    MAX_RECONNECT_DELAY_S)
        self.retry_at = self._clock() + delay
        log.warning("MCP server %r is unavailable (%s); its tools answer errors, tried again "
                    "in %.0f s", self.name, reason, delay)

    async def broken(self, reason: str) -> None:
        """A call found the connection broken: mark the server down and let it go."""
        if self.state == "up":
            self._down(reason)
        await self._teardown()

    async def _teardown(self) -> None:
        task, stop = self._task, self._stop
        self._task = self._stop = None
        self._client = None
        if task is None:
            return
        if stop is not None:
            stop.set()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(task)
        except (TimeoutError, Exception):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def close(self) -> None:
        await self._teardown()
        if self.state == "up":
            self.state = "idle"

    # ------------------------------------------------------------------ calling

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """One ``tools/call``; returns the SDK's CallToolResult. A broken connection marks the
        server down and raises McpUnavailable; a protocol error from the server is a ToolError."""
        from mcp import MCPError

        await self.connect()
        client = self._client
        if client is None:
            raise McpUnavailable(self.error or "the connection closed")
        try:
            return await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == _CONNECTION_CLOSED:
                await self.broken("the connection closed")
                raise McpUnavailable("the connection closed during the call") from None
            raise ToolError("upstream_error",
                            f"MCP server {self.name!r} refused the call: {exc.message[:300]}",
                            "Check the tool's name and arguments, or go on without it."
                            ) from None
        except (ToolError, asyncio.CancelledError, TimeoutError):
            raise
        except Exception as exc:  # transport failures surface as many types
            await self.broken(_describe(exc))
            raise McpUnavailable(f"the call failed ({_describe(exc)})") from None

    def status_line(self) -> str:
        match self.state:
            case "up":
                who = " ".join(x for x in (self.server_name, self.server_version) if x)
                return f"up ({who or 'unnamed server'}, protocol {self.protocol_version})"
            case "down":
                return f"down: {self.error}"
            case "connecting":
                return "connecting"
            case "idle":
                return "not connected yet"


_CONNECTION_CLOSED = -32000


class _OwnedHttpTransport:
    """The SDK's streamable HTTP transport with an httpx client of ours (for the headers),
    closed with it."""

    def __init__(self, url: str, http: Any) -> None:
        self._url = url
        self._http = http
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Any:
        from mcp.client.streamable_http import streamable_http_client

        await self._stack.enter_async_context(self._http)
        return await self._stack.enter_async_context(
            streamable_http_client(self._url, http_client=self._http))

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._stack.__aexit__(*exc)


async def _list_tools(client: Any) -> dict[str, ListedTool]:
    tools: dict[str, ListedTool] = {}
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        for tool in page.tools:
            schema = _plain_schema(tool.input_schema)
            description = (tool.description or tool.title or tool.name).strip()
            digest = hashlib.sha256(json.dumps([tool.name, description, schema],
                                               sort_keys=True).encode()).hexdigest()[:12]
            tools[tool.name] = ListedTool(name=tool.name, description=description,
                                          input_schema=schema, digest=digest)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _plain_schema(schema: Any) -> dict[str, Any]:
    """The server's input schema as the Messages API takes it: an object schema, without the
    generated ``title`` noise."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()
                    if not (k == "title" and isinstance(v, str))}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    out = strip(dict(schema or {}))
    if not isinstance(out, dict) or out.get("type") != "object":
        out = {"type": "object", "properties": {}}
    out.setdefault("properties", {})
    return out


def _describe(exc: BaseException) -> str:
    """One line for a person (and the model): the innermost exception's type and message,
    cut short; never a traceback."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, McpUnavailable):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
