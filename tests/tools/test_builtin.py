"""The built-in tools: the time in a zone, and asking a human."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from agents.tools import ToolCall, ToolContext, builtin_registry
from agents.tools.contract import EscalationRequest
from tests.tools.conftest import MakeCtx

CATALOG = builtin_registry().catalog(["get_current_time", "escalate_to_human"])


async def invoke(name: str, ctx: ToolContext, **args: Any) -> tuple[str, bool]:
    outcome = await CATALOG.invoke(ToolCall(id="t", name=name, input=args), ctx)
    return outcome.content, outcome.is_error


async def test_current_time_in_a_named_zone(ctx: ToolContext) -> None:
    content, is_error = await invoke("get_current_time", ctx, timezone="Asia/Tokyo")
    body = json.loads(content)
    assert not is_error and body["timezone"] == "Asia/Tokyo" and body["utc_offset"] == "+09:00"
    moment = datetime.fromisoformat(body["iso"])
    assert moment.utcoffset() is not None and body["date"] == moment.date().isoformat()
    assert body["weekday"] == moment.strftime("%A")


async def test_current_time_defaults_to_the_persons_zone(make_ctx: MakeCtx) -> None:
    content, _ = await invoke("get_current_time", make_ctx(timezone="America/Sao_Paulo"))
    assert json.loads(content)["timezone"] == "America/Sao_Paulo"


async def test_a_zone_in_the_wrong_case_is_understood(ctx: ToolContext) -> None:
    content, _ = await invoke("get_current_time", ctx, timezone="europe/lisbon")
    assert json.loads(content)["timezone"] == "Europe/Lisbon"


async def test_an_unknown_zone_is_not_found_with_a_suggestion(ctx: ToolContext) -> None:
    content, is_error = await invoke("get_current_time", ctx, timezone="Europe/Berln")
    body = json.loads(content)
    assert is_error and body["error"] == "not_found"
    assert body["message"] == "'Europe/Berln' is not a known time zone."
    assert "'Europe/Berlin'" in body["suggestion"]
    content, _ = await invoke("get_current_time", ctx, timezone="../../etc/passwd")
    assert json.loads(content)["error"] == "not_found"


async def test_escalating_parks_the_run_with_the_question(ctx: ToolContext) -> None:
    outcome = await CATALOG.invoke(ToolCall(id="t", name="escalate_to_human", input={
        "reason": "Renew the domain for $12?", "context": "It expires Friday.",
        "options": ["Renew", "Let it lapse"]}), ctx)
    assert not outcome.is_error
    assert outcome.escalation == EscalationRequest(reason="Renew the domain for $12?",
                                                   context="It expires Friday.",
                                                   options=("Renew", "Let it lapse"))
    assert "waits for their answer" in outcome.content


async def test_escalation_options_are_bounded(ctx: ToolContext) -> None:
    too_many, _ = await invoke("escalate_to_human", ctx, reason="r", context="c",
                               options=[f"o{i}" for i in range(7)])
    assert "'options': List should have at most 6 items" in json.loads(too_many)["message"]
    too_long, _ = await invoke("escalate_to_human", ctx, reason="r", context="c",
                               options=["x" * 41])
    assert "'options.0': String should have at most 40 characters" in json.loads(
        too_long)["message"]
    twice, _ = await invoke("escalate_to_human", ctx, reason="r", context="c",
                            options=["yes", "yes"])
    assert "different from each other" in json.loads(twice)["message"]
