"""The router's fallbacks and compaction's fallback, with the scripted model."""

from __future__ import annotations

from typing import Any

from agents.errors import ModelCallError
from agents.runtime import Runtime
from agents.sessions import Sessions, is_compaction_request
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call


async def test_the_router_picks_from_the_enum(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("route", {"agent": "researcher"}))
    runtime: Runtime = await make_runtime(model)
    decision = await runtime.route("find me three papers", current="assistant")
    assert (decision.agent, decision.reason) == ("researcher", "router")
    request = model.requests[0]
    assert request.tool_choice == {"type": "tool", "name": "route"}
    enum = request.tools[0]["input_schema"]["properties"]["agent"]["enum"]
    assert enum == ["assistant", "briefing", "researcher"]  # no internal agents
    assert "Current agent: assistant" in request.messages[0]["content"][0]["text"]
    assert decision.cost_usd > 0


async def test_an_invalid_or_failed_router_answer_falls_back_to_the_default(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("route", {"agent": "hacker"}),
                          ModelCallError("model API answered 529: Overloaded", status=529))
    runtime: Runtime = await make_runtime(model)
    invalid = await runtime.route("x", current=None)
    failed = await runtime.route("y", current=None)
    assert (invalid.agent, failed.agent) == ("assistant", "assistant")
    assert "invalid answer 'hacker'" in invalid.reason and "529" in failed.reason


async def test_the_route_decision_is_traced_and_billed_to_the_run(make_runtime: Any) -> None:
    model = ScriptedModel(tool_call("route", {"agent": "assistant"}), reply("hi"))
    runtime: Runtime = await make_runtime(model)
    sessions = Sessions(runtime)
    decision = await runtime.route("hello", current=None)
    turn = await sessions.turn(chat_id=5, thread_id=None, agent=decision.agent,
                               content=[{"type": "text", "text": "hello"}], user_id=1, route=decision)
    events = runtime.traces.read(turn.result.trace_id)
    route = next(e for e in events if e["type"] == "route")
    assert route["agent"] == "assistant" and route["reason"] == "router"
    assert turn.result.cost_usd > decision.cost_usd > 0


async def test_compaction_falls_back_to_dropping_old_turns_when_summarising_fails(
    make_runtime: Any,
) -> None:
    long = "words " * 800  # ~1,600 estimated tokens per message
    summarise_attempts = []

    def answer(request: Any) -> Any:
        if is_compaction_request(request.to_api()):
            summarise_attempts.append(request)
            raise ModelCallError("model API answered 500: boom", status=500)
        return reply(f"answer {long}")

    model = ScriptedModel(*[answer] * 8)
    runtime: Runtime = await make_runtime(model, KEEL_COMPACT_AT_TOKENS="6000")
    sessions = Sessions(runtime)
    compacted = []
    for i in range(4):
        turn = await sessions.turn(chat_id=9, thread_id=None, agent="assistant",
                                   content=[{"type": "text", "text": f"q{i} {long}"}], user_id=None)
        compacted.append(turn.compacted)
    assert compacted == [False, False, True, True]
    # per compaction: the agent over its cached prefix, then the compactor; both failed
    assert [a.system[0]["text"].startswith("You compress") for a in summarise_attempts] == [
        False, True, False, True]
    history = await runtime.conversations.history(turn.session_id)
    # the oldest turns were dropped (no summary), the latest two kept verbatim
    assert [m.content[0]["text"][:3] for m in history] == ["q2 ", "ans", "q3 ", "ans"]
    assert all(m.kind == "turn" for m in history)
    model.assert_all_used()


async def test_a_turn_reads_its_history_once_and_still_compacts_at_the_threshold(
    make_runtime: Any,
) -> None:
    # issue 15: the size after a turn is known from the turn itself; reading the whole history
    # again to learn it cost every turn a second read (and its JSON decoding)
    long = "words " * 400  # ~800 estimated tokens a message, 1,600 a turn

    def answer(request: Any) -> Any:
        if is_compaction_request(request.to_api()):
            return reply("Earlier: answers.")
        return reply(f"answer {long}")

    model = ScriptedModel(*[answer] * 9)
    runtime: Runtime = await make_runtime(model, KEEL_COMPACT_AT_TOKENS="6000")
    sessions = Sessions(runtime)
    reads = 0
    real = runtime.conversations.history

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real(*args, **kwargs)

    sessions.repo.history = counting  # type: ignore[method-assign]
    compacted, counts = [], []
    for i in range(6):
        reads = 0
        turn = await sessions.turn(chat_id=9, thread_id=None, agent="assistant",
                                   content=[{"type": "text", "text": f"q{i} {long}"}], user_id=None)
        compacted.append(turn.compacted)
        counts.append(reads)
    # 1,600 · 3,200 · 4,800 tokens: under the threshold, the turn's own read only
    assert counts[:3] == [1, 1, 1]
    assert compacted[:3] == [False, False, False] and any(compacted[3:])
    assert all(n >= 2 for n, done in zip(counts, compacted, strict=True) if done)
