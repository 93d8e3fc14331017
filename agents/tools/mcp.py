"""MCP tools as keel tools: the same contract as any ``@tool``.

An agent allows one tool of a ``[[mcp]]`` server in keel.toml as ``"mcp:SERVER/TOOL"``; the model
sees it as ``SERVER__TOOL`` with the server's own description and input schema. Each such tool is
a ``Tool`` in the registry, so the catalog gives it what every tool gets: a timeout (the server's
``timeout_s``, else the agent's tool timeout), bounded retries, errors as data, idempotency of
declared side effects per request, an optional rate limit, approvals, and its call and result in
the trace — with an ``mcp`` event naming the server, its version and the tool's schema digest.

A server that is down answers its tools' calls with an ``upstream_error`` at once and is tried
again later (``McpServer``); other servers and tools are not affected. Results are outside text
and reach the model marked as such (``mark_external``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import weakref
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from agents.config import MCP_NAME_SEPARATOR, KeelFile, McpServerConfig, mcp_tool_name
from agents.tools.contract import ToolContext
from agents.tools.declare import Tool
from agents.tools.errors import ToolError
from agents.tools.external import mark_external
from agents.tools.invoke import emit
from agents.tools.mcp_client import ListedTool, McpServer, McpUnavailable, missing_variables
from agents.tools.policy import RateLimit, RetryPolicy
from agents.tools.registry import ToolRegistry

MCP_RETRY = RetryPolicy(max_attempts=2, base_delay_s=0.2, max_delay_s=1.0)
"""A lost connection is tried once more (reconnecting) for tools without side effects."""

MAX_RESULT_CHARS = 20_000
STARTUP_CONNECT_S = 15.0
"""At start-up servers are connected in parallel for at most this long; a late one is left to
connect on its first call."""

FALLBACK_DESCRIPTION = ("A tool of the MCP server {server!r}, which has not answered yet; "
                        "calling it answers an error until it does.")


class McpArguments(BaseModel):
    """Whatever object the model sends; the server's schema is checked in the call."""

    model_config = ConfigDict(extra="allow")


class McpTool(Tool):
    """One allowed tool of one MCP server."""

    definition_fixed = False  # a placeholder until the server lists it, then the server's

    def __init__(self, *, server: McpServer, tool: str, timeout_s: float | None = None,
                 side_effects: bool = False, idempotent: bool = True,
                 rate_limit: RateLimit | None = None, needs_approval: bool = False) -> None:
        self.server = server
        self.remote = tool
        super().__init__(
            fn=self._call, name=mcp_tool_name(server.name, tool),
            description=FALLBACK_DESCRIPTION.format(server=server.name),
            args_model=McpArguments, timeout_s=timeout_s, retry=MCP_RETRY,
            side_effects=side_effects, idempotent=idempotent, rate_limit=rate_limit,
            needs_approval=needs_approval)
        self.args_model = McpArguments  # the server validates; no keel-side field list

    @property
    def listed(self) -> ListedTool | None:
        return self.server.tool_named(self.remote)

    def definition(self) -> dict[str, Any]:
        """The server's description and schema once it has been listed (a placeholder until
        then: the definition settles, and the prompt cache with it, when the server answers)."""
        listed = self.listed
        if listed is None:
            return super().definition()
        description = listed.description[:1024]
        if self.side_effects:
            base = super().definition()["description"]
            description += base[len(FALLBACK_DESCRIPTION.format(server=self.server.name)):]
        return {"name": self.name, "description": description,
                "input_schema": json.loads(json.dumps(listed.input_schema))}

    def replace(self, **changes: Any) -> Tool:
        """A copy with its timeout, rate limit or approval changed (the rest is the server's)."""
        unknown = sorted(set(changes) - {"timeout_s", "rate_limit", "needs_approval"})
        if unknown:
            raise TypeError(f"MCP tool {self.name!r}: {unknown} come from the server or its "
                            "[[mcp]] entry in keel.toml")
        fields = dict(timeout_s=self.timeout_s, rate_limit=self.rate_limit,
                      needs_approval=self.needs_approval)
        return McpTool(server=self.server, tool=self.remote, side_effects=self.side_effects,
                       idempotent=self.idempotent, **{**fields, **changes})

    async def _call(self, args: McpArguments, ctx: ToolContext) -> str:
        arguments = args.model_dump(mode="json")
        try:
            await self.server.connect()
        except McpUnavailable as exc:
            raise _unavailable(self.server, str(exc), retryable=False) from None
        listed = self.listed
        if listed is None:
            raise ToolError("not_found",
                            f"the MCP server {self.server.name!r} has no tool {self.remote!r}.",
                            "Go on without it; the server's owner may have renamed it.")
        await emit(ctx, "mcp", tool=self.name, server=self.server.name,
                   server_name=self.server.server_name, server_version=self.server.server_version,
                   protocol=self.server.protocol_version, remote_tool=listed.name,
                   schema_digest=listed.digest)
        try:
            result = await self.server.call(listed.name, arguments)
        except McpUnavailable as exc:
            # the call may have run before the connection went: only a tool without side
            # effects is tried again
            raise _unavailable(self.server, str(exc), retryable=not self.side_effects) from None
        text = result_text(result)
        source = f"mcp:{self.server.name}/{listed.name}"
        if result.is_error:
            raise ToolError("upstream_error",
                            f"{self.name} answered an error: {text[:1000] or 'no details'}",
                            "Read the error: fix the arguments if they were wrong, or go on "
                            "without this tool.")
        return mark_external(source, text)


def _unavailable(server: McpServer, reason: str, *, retryable: bool) -> ToolError:
    wait = max(server.retry_at - server._clock(), 0.0)
    return ToolError("upstream_error",
                     f"the MCP server {server.name!r} is unavailable: {reason}.",
                     "Go on without its tools for now, or tell the person it is unavailable.",
                     retryable=retryable, retry_after_s=wait if wait > 0 and not retryable
                     else None)


def result_text(result: Any) -> str:
    """A CallToolResult as text the model reads: text parts as they are, other parts named."""
    parts: list[str] = []
    for item in result.content or []:
        kind = getattr(item, "type", "")
        if kind == "text":
            parts.append(item.text)
        elif kind in ("image", "audio"):
            size = len(base64.b64decode(item.data, validate=False)) if item.data else 0
            parts.append(f"[{kind} {item.mime_type}, {size} bytes: not shown]")
        elif kind == "resource":
            inner = item.resource
            text = getattr(inner, "text", None)
            parts.append(text if text is not None else f"[resource {inner.uri}: binary]")
        elif kind == "resource_link":
            parts.append(f"[link: {item.uri}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, sort_keys=True))
    text = "\n".join(parts)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[cut: {len(text)} characters in all]"
    return text


# ---------------------------------------------------------------------- registry and lifecycle


class McpHub:
    """Every configured server of one registry."""

    def __init__(self, configs: Iterable[McpServerConfig]) -> None:
        self.servers: dict[str, McpServer] = {c.name: McpServer(c) for c in configs}

    async def start(self, *, within_s: float = STARTUP_CONNECT_S) -> None:
        """Connect every server in parallel, each bounded; failures are logged and left to be
        retried on a later call."""

        async def one(server: McpServer) -> None:
            try:
                await server.connect()
            except McpUnavailable:
                pass  # logged by the server; its tools answer errors until it is back

        if not self.servers:
            return
        try:
            async with asyncio.timeout(within_s):
                await asyncio.gather(*(one(s) for s in self.servers.values()))
        except TimeoutError:
            pass

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers.values()),
                             return_exceptions=True)


_hubs: weakref.WeakKeyDictionary[ToolRegistry, McpHub] = weakref.WeakKeyDictionary()


def hub_of(registry: ToolRegistry) -> McpHub | None:
    return _hubs.get(registry)


def mcp_problems(keel_file: KeelFile) -> list[tuple[str, str]]:
    """What is wrong with the ``[[mcp]]`` entries and the agents' MCP tools: (what, fix)."""
    out: list[tuple[str, str]] = []
    names = [c.name for c in keel_file.mcp]
    for name in sorted({n for n in names if names.count(n) > 1}):
        out.append((f"two [[mcp]] servers are named {name!r}.",
                    "Give each [[mcp]] entry its own name."))
    for config in keel_file.mcp:
        missing = missing_variables(config)
        if missing:
            out.append((f"[[mcp]] {config.name!r} uses environment variable(s) "
                        f"{', '.join(missing)}, which are not set.",
                        "Set them in the environment or .env (keel reads them when it "
                        "connects)."))
    return out


def register_mcp_tools(registry: ToolRegistry, keel_file: KeelFile) -> McpHub | None:
    """Register an ``McpTool`` for every MCP tool an agent allows (``mcp:SERVER/TOOL``), all
    sharing one hub of connections; returns the hub (None without ``[[mcp]]``)."""
    if not keel_file.mcp:
        return None
    hub = McpHub(keel_file.mcp)
    wanted: dict[str, tuple[McpServer, str]] = {}
    for cfg in keel_file.agents.values():
        for tool in cfg.tools:
            server_name, sep, remote = tool.partition(MCP_NAME_SEPARATOR)
            if sep and server_name in hub.servers:
                wanted.setdefault(tool, (hub.servers[server_name], remote))
    for server, remote in wanted.values():
        config = server.config
        rate = RateLimit(calls=config.rate_limit.calls, per_s=config.rate_limit.per_s) \
            if config.rate_limit else None
        side_effects = _named(remote, config.side_effects) or _named(remote,
                                                                     config.not_idempotent)
        registry.register(McpTool(server=server, tool=remote, timeout_s=config.timeout_s,
                                  side_effects=side_effects,
                                  idempotent=not _named(remote, config.not_idempotent),
                                  rate_limit=rate))
    _hubs[registry] = hub
    return hub


def _named(remote: str, names: list[str]) -> bool:
    """Whether keel's name part ``remote`` is one of the MCP tool ``names`` of the config."""
    return any(mcp_tool_name("x", n) == mcp_tool_name("x", remote) for n in names)


def is_mcp_tool(tool: Tool) -> bool:
    return isinstance(tool, McpTool)
