"""Tools: declaring them (``@tool``), their registry, each agent's catalog, and the built-ins.

The executor sees only ``agents.tools.contract``; everything here stays behind
``Catalog.invoke``. Tool failures are data (``ToolError``), never exceptions the loop handles.
"""

from agents.tools.builtin import (
    BUILTIN_TOOLS,
    builtin_registry,
    escalate_to_human,
    get_current_time,
)
from agents.tools.contract import (
    EscalationRequest,
    ToolCall,
    ToolCatalog,
    ToolContext,
    ToolOutcome,
)
from agents.tools.declare import Tool, ToolArgs, tool
from agents.tools.errors import ERROR_CODES, ErrorCode, ToolError
from agents.tools.fetch import fetch_url
from agents.tools.policy import MAX_ATTEMPTS, NO_RETRY, RateLimit, RetryPolicy
from agents.tools.registry import MAX_CATALOG_TOOLS, Catalog, ToolRegistry, load_tool_modules

__all__ = [
    "BUILTIN_TOOLS",
    "ERROR_CODES",
    "MAX_ATTEMPTS",
    "MAX_CATALOG_TOOLS",
    "NO_RETRY",
    "Catalog",
    "ErrorCode",
    "EscalationRequest",
    "RateLimit",
    "RetryPolicy",
    "Tool",
    "ToolArgs",
    "ToolCall",
    "ToolCatalog",
    "ToolContext",
    "ToolError",
    "ToolOutcome",
    "ToolRegistry",
    "builtin_registry",
    "escalate_to_human",
    "fetch_url",
    "get_current_time",
    "load_tool_modules",
    "tool",
]
