"""The router: one cheap model call with a forced tool whose only parameter is an enum of agents.

The router is skipped when its answer cannot change anything: an acknowledgement ("ok",
"thanks", "👍") or a conversation that goes on with its current agent within a short gap keeps
that agent, and the decision says why. It is also skipped when no agent could afford an answer
after paying for routing: such a turn is refused at $0 instead of paying a router first.

A router call is a model call like any other: its worst case is held in the daily ledger before
it is sent (``gate``) and settled after, so its spend is recorded once, by the settlement. Whatever
goes wrong — an API error, an answer outside the enum, a day that cannot cover the call — falls
back to the current or default agent, and the decision (with its cost) is traced in the run it
routes.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.budget import BudgetHalt, LedgerGate, Reservation
from agents.errors import ModelCallError
from agents.model.types import ModelClient, ModelRequest
from agents.pricing import Price, Usage, cost_of, dearest_input_rate, request_cache_ttl
from agents.spec import AgentSpec
from agents.tokens import request_bound
from storage.ledger import Hold

ROUTER_MAX_TOKENS = 64
ROUTE_TOOL = "route"
ROUTER_AGENT = "_router"
"""The name the router's spend is recorded under in the daily ledger."""

ACKNOWLEDGEMENTS = frozenset({
    "ok", "okay", "okey", "k", "kk", "oki", "okie", "alright", "all right", "fine", "sure",
    "thanks", "thank you", "thank you very much", "thanks a lot", "many thanks", "thx", "ty",
    "tysm", "cheers", "cool", "great", "nice", "perfect", "awesome", "got it", "gotcha",
    "understood", "noted", "makes sense", "sounds good", "good", "very good", "yes", "yep",
    "yeah", "yup", "no", "nope", "done", "lol", "haha", "wow", "merci", "danke", "gracias",
})
"""Messages that only acknowledge: they cannot change which agent should answer."""
_MAX_ACK_CHARS = 40

NeedsFn = Callable[[], Awaitable[Mapping[str, float]]]
"""Per agent, the least its first call would reserve (asked only when the router would run)."""


@dataclass(frozen=True, kw_only=True)
class RouteDecision:
    agent: str
    reason: str
    """``router``, ``pinned``, ``only_agent``, ``only_affordable``, ``skipped: …`` (no router
    call, and why) or ``fallback: …`` (the router failed)."""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    request: dict[str, Any] | None = None
    response: list[dict[str, Any]] | None = None
    settled: bool = False
    """The cost is already recorded in the daily ledger (the router's hold was settled)."""
    excluded: dict[str, str] = field(default_factory=dict)
    """Agents left out of the router's choice, and why (a budget that cannot cover an answer)."""

    @property
    def skipped(self) -> bool:
        return self.reason.startswith("skipped")

    def trace_payload(self) -> dict[str, Any]:
        return {"agent": self.agent, "reason": self.reason, "usage": self.usage.as_dict(),
                "cost_usd": round(self.cost_usd, 8), "latency_s": round(self.latency_s, 4),
                "request": self.request, "response": self.response,
                "excluded": self.excluded or None}


def routable(agents: dict[str, AgentSpec]) -> dict[str, AgentSpec]:
    """Agents a person can reach (internal ones start with an underscore)."""
    return {name: spec for name, spec in agents.items() if not name.startswith("_")}


def is_acknowledgement(text: str) -> bool:
    """True for a message that only acknowledges: "ok", "Thanks!", "👍", "ok thanks 🙏"."""
    text = text.strip()
    if not text or len(text) > _MAX_ACK_CHARS:
        return False
    words = "".join(ch if not _is_symbol(ch) else " " for ch in text.lower())
    words = re.sub(r"\s+", " ", words).strip()
    if not words:
        return True  # only emoji and punctuation: 👍, 🙏, !!, ...
    parts = words.split(" ")  # "ok thanks", "great, thank you": acknowledgements in a row
    i = 0
    while i < len(parts):
        for size in (4, 3, 2, 1):
            if " ".join(parts[i:i + size]) in ACKNOWLEDGEMENTS:
                i += size
                break
        else:
            return False
    return True


def _is_symbol(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] in "PSZC" or ch in "\u200d\ufe0f"


def skip_reason(text: str, *, current: str | None, agents: dict[str, AgentSpec],
                last_turn_age_s: float | None, continue_within_s: float) -> str | None:
    """Why the router need not be asked (the current agent keeps the conversation), or None."""
    if current is None or current not in routable(agents):
        return None
    if is_acknowledgement(text):
        return f"skipped: an acknowledgement; {current} continues"
    if last_turn_age_s is not None and 0 <= last_turn_age_s <= continue_within_s:
        return (f"skipped: the conversation continues with {current} "
                f"({last_turn_age_s:.0f} s since its last turn)")
    return None


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
    # No cache breakpoint: the router's prompt is far below any model's cacheable minimum, so a
    # marker could only ever write (never read) — and at most it would be billed as input anyway.
    return ModelRequest(
        model=model, max_tokens=ROUTER_MAX_TOKENS,
        system=[{"type": "text", "text": system}], tools=[tool],
        tool_choice={"type": "tool", "name": ROUTE_TOOL},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": f"{hint}Message:\n{text[:4000]}"}]}],
    )


def router_reservation(request: ModelRequest, price: Price) -> Reservation:
    """The router call's worst case: its input bound at the dearest rate it can incur, plus
    its whole ``max_tokens`` of output."""
    tokens = request_bound(request.system, request.tools, request.messages)
    rate = dearest_input_rate(price, request_cache_ttl(request.to_api()))
    worst = (tokens * rate + request.max_tokens * price.output) / 1_000_000
    return Reservation(request.max_tokens, worst, tokens, rate)


async def route(
    client: ModelClient,
    *,
    model: str,
    price: Price,
    agents: dict[str, AgentSpec],
    text: str,
    current: str | None,
    default: str,
    gate: LedgerGate | None = None,
    left_usd: Mapping[str, float] | None = None,
    needs_usd: NeedsFn | None = None,
    last_turn_age_s: float | None = None,
    continue_within_s: float = 0.0,
    on_call: Callable[[], None] | None = None,
) -> RouteDecision:
    """Pick the agent for ``text``.

    ``left_usd`` (per agent: what its run may still spend, within its cap and the day's) and
    ``needs_usd`` (asked only when the router would be called: per agent, the least its first
    call reserves) leave out the agents that could not answer once the router is paid; ``gate``
    holds the router call in the daily ledger; ``on_call`` is told when the router call is
    about to be sent (not when routing is skipped)."""
    candidates = routable(agents)
    fallback = current if current in candidates else default
    if len(candidates) == 1:
        return RouteDecision(agent=next(iter(candidates)), reason="only_agent")
    skip = skip_reason(text, current=current, agents=agents, last_turn_age_s=last_turn_age_s,
                       continue_within_s=continue_within_s)
    if skip is not None:
        return RouteDecision(agent=fallback, reason=skip)
    request = build_router_request(model, candidates, text, current)
    reservation = router_reservation(request, price)
    excluded: dict[str, str] = {}
    if left_usd is not None and needs_usd is not None:
        needs = await needs_usd()
        for name in sorted(candidates):
            if name not in left_usd or name not in needs:
                continue
            if reservation.worst_case_usd + needs[name] > left_usd[name]:
                excluded[name] = (f"${left_usd[name]:.4f} left cannot cover routing "
                                  f"(${reservation.worst_case_usd:.4f}) and an answer "
                                  f"(${needs[name]:.4f})")
    affordable = {n: s for n, s in candidates.items() if n not in excluded}
    if fallback not in affordable:
        # Routing would be paid for an answer that cannot follow (or only follows unrouted).
        return RouteDecision(agent=fallback, excluded=excluded,
                             reason=f"skipped: the budget cannot cover routing and an answer; "
                                    f"{fallback} answers unrouted")
    if len(affordable) == 1:
        return RouteDecision(agent=fallback, reason="only_affordable", excluded=excluded)
    if excluded:
        request = build_router_request(model, affordable, text, current)
        reservation = router_reservation(request, price)
    hold: Hold | None = None
    if gate is not None:
        try:
            reservation, hold = await gate.hold(price, reservation)
        except BudgetHalt as halt:
            return RouteDecision(agent=fallback, excluded=excluded,
                                 reason=f"skipped: the daily budget of {halt.cap_name} cannot "
                                        f"cover routing")
    if on_call is not None:
        on_call()
    started = time.monotonic()
    try:
        response = await client.create(request)
    except ModelCallError as exc:
        if hold is not None and gate is not None:
            # An HTTP error answer is not billed; a lost connection may have been.
            await asyncio.shield(gate.release(hold) if exc.status else gate.forfeit(hold))
        return RouteDecision(agent=fallback, reason=f"fallback: router call failed ({exc})",
                             latency_s=time.monotonic() - started, request=request.to_api(),
                             excluded=excluded, settled=hold is not None)
    except BaseException:
        if hold is not None and gate is not None:
            await asyncio.shield(gate.forfeit(hold))
        raise
    cost = cost_of(price, response.usage)
    if hold is not None and gate is not None:
        await asyncio.shield(gate.settle(hold, response.usage, cost))
    chosen = next((b.get("input", {}).get("agent") for b in response.tool_uses
                   if b.get("name") == ROUTE_TOOL), None)
    common: dict[str, Any] = {
        "usage": response.usage, "cost_usd": cost, "latency_s": response.latency_s,
        "request": request.to_api(), "response": response.content, "settled": hold is not None,
        "excluded": excluded}
    if chosen not in affordable:
        return RouteDecision(agent=fallback, reason=f"fallback: invalid answer {chosen!r}",
                             **common)
    return RouteDecision(agent=str(chosen), reason="router", **common)
