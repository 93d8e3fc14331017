"""The router: one cheap model call with a forced tool whose only parameter is an enum of agents.

Whatever goes wrong — an API error, an answer outside the enum, a budget that cannot cover even
this call — falls back to the default agent, and the decision (with its cost) is traced in the
run it routes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agents.errors import ModelCallError
from agents.model.types import ModelClient, ModelRequest
from agents.pricing import Price, Usage, cost_of
from agents.spec import AgentSpec

ROUTER_MAX_TOKENS = 64
ROUTE_TOOL = "route"


@dataclass(frozen=True, kw_only=True)
class RouteDecision:
    agent: str
    reason: str  # "router", "pinned", "only_agent", "fallback: ..."
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    request: dict[str, Any] | None = None
    response: list[dict[str, Any]] | None = None

    def trace_payload(self) -> dict[str, Any]:
        return {"agent": self.agent, "reason": self.reason, "usage": self.usage.as_dict(),
                "cost_usd": round(self.cost_usd, 8), "latency_s": round(self.latency_s, 4),
                "request": self.request, "response": self.response}


def routable(agents: dict[str, AgentSpec]) -> dict[str, AgentSpec]:
    """Agents a person can reach (internal ones start with an underscore)."""
    return {name: spec for name, spec in agents.items() if not name.startswith("_")}


def build_router_request(
    model: str, agents: dict[str, AgentSpec], text: str, current: str | None
) -> ModelRequest:
    names = sorted(agents)
    catalog = "\n".join(f"- {n}: {agents[n].description}" for n in names)
    system = (
        "You route a person's message to the one agent best able to answer it. Call the `route` "
        "tool with that agent's name. When the message continues the current conversation, "
        "prefer the current agent.\n\nAgents:\n" + catalog
    )
    tool = {
        "name": ROUTE_TOOL,
        "description": "Send the message to this agent.",
        "input_schema": {
            "type": "object",
            "properties": {"agent": {"type": "string", "enum": names,
                                     "description": "The agent that should answer."}},
            "required": ["agent"],
            "additionalProperties": False,
        },
    }
    hint = f"Current agent: {current}\n\n" if current else ""
    return ModelRequest(
        model=model, max_tokens=ROUTER_MAX_TOKENS,
        system=[{"type": "text", "text": system}], tools=[tool],
        tool_choice={"type": "tool", "name": ROUTE_TOOL},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": f"{hint}Message:\n{text[:4000]}"}]}],
    )


async def route(
    client: ModelClient,
    *,
    model: str,
    price: Price,
    agents: dict[str, AgentSpec],
    text: str,
    current: str | None,
    default: str,
) -> RouteDecision:
    candidates = routable(agents)
    if len(candidates) == 1:
        return RouteDecision(agent=next(iter(candidates)), reason="only_agent")
    request = build_router_request(model, candidates, text, current)
    started = time.monotonic()
    try:
        response = await client.create(request)
    except ModelCallError as exc:
        return RouteDecision(agent=default, reason=f"fallback: router call failed ({exc})",
                             latency_s=time.monotonic() - started, request=request.to_api())
    cost = cost_of(price, response.usage)
    chosen = next((b.get("input", {}).get("agent") for b in response.tool_uses
                   if b.get("name") == ROUTE_TOOL), None)
    common: dict[str, Any] = {"usage": response.usage, "cost_usd": cost, "latency_s": response.latency_s,
              "request": request.to_api(), "response": response.content}
    if chosen not in candidates:
        return RouteDecision(agent=default, reason=f"fallback: invalid answer {chosen!r}", **common)
    return RouteDecision(agent=str(chosen), reason="router", **common)
