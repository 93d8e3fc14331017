"""Tools for the approval tests, loaded by the bot in the test process through keel.toml
(``tool_modules = ["tests.e2e.approval_tools"]``). ``CALLS`` records every call that really ran,
with the idempotency key keel handed the tool."""

from __future__ import annotations

from pydantic import Field

from agents.tools import ToolArgs, ToolContext, tool

CALLS: list[tuple[str, str, str]] = []
"""(recipient, amount, effect key) of every payment that ran."""


class PaymentArgs(ToolArgs):
    to: str = Field(description="Who receives the money.")
    amount_eur: str = Field(description="How much, in euros, e.g. '180.00'.")


@tool(description="Sends a payment. Use when the person asks to pay someone. Returns a receipt.",
      side_effects=True, timeout_s=10, needs_approval=True)
async def send_payment(args: PaymentArgs, ctx: ToolContext) -> str:
    CALLS.append((args.to, args.amount_eur, ctx.effect_scope))
    return f"paid {args.amount_eur} EUR to {args.to} (receipt {len(CALLS)})"
