"""Tools for the graded-result tests (``tool_modules = ["tests.e2e.graded_tools"]``): each call
returns the next scripted result, so a test decides what the grader sees."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agents.tools import ToolArgs, tool

ORDERS: list[dict[str, Any]] = []
"""What ``lookup_order`` returns, one per call."""
QUOTES: list[str] = []
"""What ``quote_shipping`` returns, one per call."""


class OrderArgs(ToolArgs):
    order_id: str = Field(description="The order's id, e.g. 'A-17'.")


class QuoteArgs(ToolArgs):
    country: str = Field(description="Where the parcel goes.")
    express: bool = False


@tool(description="Looks an order up. Returns its id, status and notes as JSON.", timeout_s=5,
      grader={"kind": "required", "fields": ["order_id", "status"]})
async def lookup_order(args: OrderArgs) -> dict[str, Any]:
    return ORDERS.pop(0)


@tool(description="Quotes shipping to a country. Returns the quote as text.", timeout_s=5)
async def quote_shipping(args: QuoteArgs) -> str:
    return QUOTES.pop(0)
