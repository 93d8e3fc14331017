"""Can a budget cover one answer? The least a run's first call reserves, before it is made.

The figure mirrors what the executor's first reservation will be (agents/executor/call.py): the
input bound (the session's kept exact count plus a bound of what was added, or the local bound of
the whole request, tightened by the count endpoint when the bound alone does not fit), at the
dearest input rate the request can incur, plus the smallest useful answer
(``MIN_USEFUL_OUTPUT_TOKENS``). The router uses it to leave out agents that could not answer once
routing is paid (a refused turn pays no router); ``keel doctor`` and start-up use its offline
form (``typical_first_call``) to say once that a cap is too small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.budget import MIN_USEFUL_OUTPUT_TOKENS, usd
from agents.config import Settings
from agents.errors import ModelCallError
from agents.executor.call import COUNT_MARGIN, InputAnchor, TokenCounter
from agents.executor.prepare import Prefix
from agents.history import to_messages
from agents.model.types import ModelClient, ModelRequest
from agents.pricing import PER_MILLION, Price, PriceTable, dearest_input_rate
from agents.spec import AgentSpec
from agents.tokens import estimate
from agents.tools import ToolRegistry
from storage.conversations import ConversationRepository
from storage.session_counts import SessionCounts

GREETING = "hello"
"""The message a typical first call is sized with (offline checks)."""


@dataclass(frozen=True, kw_only=True)
class FirstCall:
    """The least the first call of a run reserves."""

    agent: str
    input_tokens: int
    output_tokens: int
    usd: float


class Affordability:
    """First-call needs of agents, from what a run would reserve."""

    def __init__(self, *, model: ModelClient, prices: PriceTable, registry: ToolRegistry,
                 executor_model: str, planner_model: str,
                 conversations: ConversationRepository, counts: SessionCounts) -> None:
        self.model = model
        self.prices = prices
        self.registry = registry
        self.executor_model = executor_model
        self.planner_model = planner_model
        self.conversations = conversations
        self.counts = counts

    def price_of(self, spec: AgentSpec) -> tuple[str, Price]:
        """The model (and price) of a run's first call: the planner's for plan-then-execute."""
        model = self.planner_model if spec.pattern == "plan_execute" else (
            spec.model or self.executor_model)
        return model, self.prices.require(model)

    def prefix_of(self, spec: AgentSpec) -> Prefix:
        """The prefix the agent's runs share (``Prefix.of``: kept while its tools stay the same)."""
        return Prefix.of(spec.system, self.registry.catalog(list(spec.tools)))

    async def first_call(self, spec: AgentSpec, task: dict[str, Any], *,
                         conversation_id: int | None, left_usd: float) -> FirstCall:
        """The least ``spec``'s first call on ``task`` would reserve in this conversation."""
        messages: list[dict[str, Any]] = []
        anchor = None
        if conversation_id is not None:
            session = await self.counts.live_session(conversation_id, spec.name)
            if session is not None:
                messages = to_messages(await self.conversations.history(session))
                anchor = await self.counts.anchor(session)
        messages.append(task)
        prefix = self.prefix_of(spec)
        model, price = self.price_of(spec)
        tokens = InputAnchor.seeded(anchor, prefix, messages).bound(prefix, messages)
        need = first_call_usd(price, spec, tokens)
        if need > left_usd and isinstance(self.model, TokenCounter):
            request = ModelRequest(model=model, max_tokens=spec.limits.max_tokens,
                                   system=prefix.system, tools=prefix.tools, messages=messages)
            try:
                counted = math.ceil(await self.model.count_tokens(request) * COUNT_MARGIN)
            except ModelCallError:
                counted = tokens
            if counted < tokens:
                tokens, need = counted, first_call_usd(price, spec, counted)
        return FirstCall(agent=spec.name, input_tokens=tokens,
                         output_tokens=min(MIN_USEFUL_OUTPUT_TOKENS, spec.limits.max_tokens),
                         usd=need)

    async def needs(self, agents: Mapping[str, AgentSpec], text: str, *,
                    conversation_id: int | None, left_usd: Mapping[str, float]) -> dict[str, float]:
        """Per agent, the least its first call on ``text`` reserves (see ``first_call``)."""
        task = {"role": "user", "content": [{"type": "text", "text": text}]}
        out: dict[str, float] = {}
        for name, spec in agents.items():
            call = await self.first_call(spec, task, conversation_id=conversation_id,
                                         left_usd=left_usd.get(name, spec.limits.budget_usd))
            out[name] = call.usd
        return out


def first_call_usd(price: Price, spec: AgentSpec, input_tokens: int) -> float:
    """Input at the dearest rate an agent request can incur (5-minute cache writes) plus the
    smallest useful answer."""
    output = min(MIN_USEFUL_OUTPUT_TOKENS, spec.limits.max_tokens)
    return (input_tokens * dearest_input_rate(price, "5m") + output * price.output) / PER_MILLION


def typical_first_call(spec: AgentSpec, price: Price, prefix: Prefix) -> FirstCall:
    """Offline: what answering a greeting typically needs (``estimate``, not the bound — the run
    tightens its bound with the API's count, so a bound here would warn about caps that work)."""
    task = {"role": "user", "content": [{"type": "text", "text": GREETING}]}
    tokens = prefix.tokens + estimate(task)
    return FirstCall(agent=spec.name, input_tokens=tokens,
                     output_tokens=min(MIN_USEFUL_OUTPUT_TOKENS, spec.limits.max_tokens),
                     usd=first_call_usd(price, spec, tokens))


def small_budget_warnings(agents: Mapping[str, AgentSpec], prices: PriceTable,
                          registry: ToolRegistry, *, executor_model: str, planner_model: str,
                          daily_caps: Mapping[str, float | None]) -> list[str]:
    """One line per cap that cannot cover one typical answer of its agent: each agent's run
    budget, and each daily cap (``daily_caps``: name → USD) against the cheapest agent."""
    lines: list[str] = []
    cheapest: FirstCall | None = None
    for name, spec in sorted(agents.items()):
        if name.startswith("_"):
            continue
        model = planner_model if spec.pattern == "plan_execute" else (spec.model or executor_model)
        price = prices.get(model)
        if price is None:
            continue  # a missing price is its own, louder problem
        prefix = Prefix.build(spec.system, registry.catalog(list(spec.tools)).schemas())
        call = typical_first_call(spec, price, prefix)
        if cheapest is None or call.usd < cheapest.usd:
            cheapest = call
        if call.usd > spec.limits.budget_usd:
            lines.append(
                f"agent {name!r}: its run budget of {usd(spec.limits.budget_usd)} cannot cover "
                f"one answer (about {usd(call.usd)}: ~{call.input_tokens:,} input tokens and "
                f"{call.output_tokens} output tokens on {model}); raise its budget_usd "
                "(or KEEL_RUN_BUDGET_USD)")
    if cheapest is not None:
        for cap_name, cap in daily_caps.items():
            if cap is not None and cap < cheapest.usd:
                lines.append(
                    f"{cap_name} = {usd(cap)} cannot cover one answer of any agent (the "
                    f"cheapest, {cheapest.agent!r}, needs about {usd(cheapest.usd)})")
    return lines


def budget_warnings(settings: Settings, agents: Mapping[str, AgentSpec], prices: PriceTable,
                    registry: ToolRegistry) -> list[str]:
    """``small_budget_warnings`` with the daily caps of ``settings`` (for doctor and start-up)."""
    return small_budget_warnings(
        agents, prices, registry, executor_model=settings.executor_model,
        planner_model=settings.planner_model,
        daily_caps={"KEEL_DAILY_BUDGET_USD": settings.daily_budget_usd_total,
                    "KEEL_DAILY_BUDGET_USD_PER_USER": settings.daily_budget_usd_per_user,
                    "KEEL_DAILY_BUDGET_USD_PER_SCHEDULE": settings.daily_budget_usd_per_schedule})
