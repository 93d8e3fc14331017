"""The router as a model call like any other (issue 13): held in the daily ledger, skipped when
it cannot change the agent or when no answer could follow it, and traced either way."""

from __future__ import annotations

from typing import Any

import pytest

from agents.router import is_acknowledgement, routable
from agents.runtime import Runtime
from agents.sessions import Sessions
from storage.usage import UsageDelta, UsageLedger
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call


@pytest.mark.parametrize("text", ["ok", "OK!", "thanks", "Thank you very much!", "👍", "🙏🙏",
                                  "ok thanks", "great, thank you", "got it 👍", "k"])
def test_acknowledgements_are_recognised(text: str) -> None:
    assert is_acknowledgement(text)


@pytest.mark.parametrize("text", ["ok, now find me three papers on tides", "thanks, and what is 2+2?",
                                  "no idea what to do", "hello", "research tides", ""])
def test_requests_are_not_acknowledgements(text: str) -> None:
    assert not is_acknowledgement(text)


async def test_an_acknowledgement_keeps_the_current_agent_without_a_router_call(
    make_runtime: Any,
) -> None:
    model = ScriptedModel()  # any model call fails the test
    runtime: Runtime = await make_runtime(model)
    decision = await runtime.route("thanks 👍", current="researcher", run_id="r1", user_id=1)
    assert decision.agent == "researcher" and decision.skipped
    assert "acknowledgement" in decision.reason and decision.cost_usd == 0
    assert model.requests == []


async def test_a_conversation_that_goes_on_keeps_its_agent_and_says_why_in_the_trace(
    make_runtime: Any,
) -> None:
    model = ScriptedModel(tool_call("route", {"agent": "researcher"}), reply("first"),
                          reply("second"))
    runtime: Runtime = await make_runtime(model, KEEL_ROUTER_CONTINUE_S="300")
    sessions = Sessions(runtime)
    conversation = await runtime.conversations.get_or_create(7, None)
    first = await runtime.route("find papers on tides", current=None, run_id="r1", user_id=1,
                                conversation_id=conversation.id)
    assert first.reason == "router"
    await sessions.turn(chat_id=7, thread_id=None, agent=first.agent, user_id=1, route=first,
                        content=[{"type": "text", "text": "find papers on tides"}], run_id="r1")
    second = await runtime.route("and what about the moon's role?", current=first.agent,
                                 run_id="r2", user_id=1, conversation_id=conversation.id)
    assert second.agent == "researcher" and "continues with researcher" in second.reason
    turn = await sessions.turn(chat_id=7, thread_id=None, agent=second.agent, user_id=1,
                               route=second, run_id="r2",
                               content=[{"type": "text", "text": "and the moon?"}])
    route = next(e for e in runtime.traces.read(turn.result.trace_id) if e["type"] == "route")
    assert route["reason"].startswith("skipped: the conversation continues")
    model.assert_all_used()


async def test_routing_without_a_recent_turn_asks_the_router(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("route", {"agent": "assistant"}))
    runtime: Runtime = await make_runtime(model, KEEL_ROUTER_CONTINUE_S="0")
    conversation = await runtime.conversations.get_or_create(8, None)
    decision = await runtime.route("what is the time in Oslo?", current="researcher",
                                   conversation_id=conversation.id)
    assert decision.reason == "router" and len(model.requests) == 1


async def test_the_router_is_recorded_once_in_the_daily_ledger(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("route", {"agent": "assistant"}), reply("hi"))
    runtime: Runtime = await make_runtime(model)
    decision = await runtime.route("hello", current=None, run_id="r1", user_id=1)
    assert decision.settled and decision.cost_usd > 0
    assert await runtime.ledger.held() == 0  # settled, not left held
    turn = await Sessions(runtime).turn(chat_id=5, thread_id=None, agent=decision.agent,
                                        content=[{"type": "text", "text": "hello"}], user_id=1,
                                        route=decision, run_id="r1")
    assert turn.result.cost_usd > decision.cost_usd
    assert await runtime.usage.spent(user_id=1) == pytest.approx(turn.result.cost_usd)


async def test_a_day_that_cannot_cover_the_router_skips_it(make_runtime: Any) -> None:
    model = ScriptedModel()
    runtime: Runtime = await make_runtime(model, KEEL_DAILY_BUDGET_USD_PER_USER="0.0001")
    decision = await runtime.route("find me three papers", current=None, run_id="r1", user_id=1)
    assert decision.skipped and model.requests == []
    assert await runtime.usage.spent(user_id=1) == 0


async def test_a_turn_refused_for_its_budget_pays_no_router(make_runtime: Any) -> None:
    model = ScriptedModel()  # neither the router nor the agent may be called
    runtime: Runtime = await make_runtime(model, KEEL_RUN_BUDGET_USD="0.002")
    decision = await runtime.route("find me three papers", current=None, run_id="r1", user_id=1)
    assert decision.skipped and "cannot cover routing and an answer" in decision.reason
    assert set(decision.excluded) == {"assistant", "briefing", "researcher"}
    turn = await Sessions(runtime).turn(chat_id=5, thread_id=None, agent=decision.agent,
                                        content=[{"type": "text", "text": "x"}], user_id=1,
                                        route=decision, run_id="r1")
    assert turn.result.status == "budget_exceeded" and turn.result.cost_usd == 0
    assert turn.result.detail and turn.result.detail.startswith("nothing was spent")
    assert model.requests == []


async def test_the_router_chooses_only_among_agents_that_could_answer(make_runtime: Any,
                                                                     tmp_path: Any) -> None:
    config = tmp_path / "keel.toml"
    config.write_text('[agents.cheap]\ndescription = "cheap"\nsystem = "Be brief."\n'
                      '[agents.cheap.limits]\nbudget_usd = 0.02\n'
                      '[agents.pricey]\ndescription = "pricey"\nsystem = "Be brief."\n'
                      '[agents.pricey.limits]\nbudget_usd = 0.004\n')
    model = ScriptedModel(tool_call("route", {"agent": "cheap"}))
    runtime: Runtime = await make_runtime(model, KEEL_CONFIG=str(config),
                                          KEEL_RUN_BUDGET_USD="0.004")
    runtime.agents = {k: v for k, v in runtime.agents.items() if k in ("cheap", "pricey")}
    runtime.keel_file.default_agent = "cheap"
    decision = await runtime.route("hello there", current=None, run_id="r1", user_id=1)
    assert decision.agent == "cheap" and decision.reason == "only_affordable"
    assert set(decision.excluded) == {"pricey"} and model.requests == []


async def test_what_the_day_has_left_for_routing_is_this_persons_and_everyones(
        make_runtime: Any) -> None:
    """The router's budget is what the day's caps have left (one read of the ledger): another
    person's spend counts against the overall cap only, this person's against their own."""
    runtime: Runtime = await make_runtime(ScriptedModel(), KEEL_DAILY_BUDGET_USD_PER_USER="0.05",
                                          KEEL_DAILY_BUDGET_USD="0.5")
    await UsageLedger(runtime.db).add(user_id=2, agent="assistant",
                                      delta=UsageDelta(cost_usd=0.04))
    budget = await runtime._route_budget("hi", None, "r1", 1, None)
    assert budget["left_usd"] == {name: pytest.approx(min(0.05, spec.limits.budget_usd))
                                  for name, spec in routable(runtime.agents).items()}
    await UsageLedger(runtime.db).add(user_id=1, agent="assistant",
                                      delta=UsageDelta(cost_usd=0.045))
    budget = await runtime._route_budget("hi", None, "r2", 1, None)
    assert all(v == pytest.approx(0.005) for v in budget["left_usd"].values())
    await UsageLedger(runtime.db).add(user_id=3, agent="assistant",
                                      delta=UsageDelta(cost_usd=0.414))
    reads: list[str] = []
    read = runtime.db.fetchall  # (fetchone and fetchval read through it)

    def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(sql)
        return read(sql, *args, **kwargs)

    runtime.db.fetchall = counted  # type: ignore[method-assign]
    budget = await runtime._route_budget("hi", None, "r3", 1, None)
    assert all(v == pytest.approx(0.001) for v in budget["left_usd"].values())
    assert len(reads) == 1, reads  # not a sum per person and per schedule of the whole day
