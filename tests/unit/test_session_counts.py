"""Exact input sizes kept per session across turns (issue 13): the next turn's first reservation
is the last call's exact count plus a bound of only what was added since; and one-off requests
(compaction) carry no cache breakpoints."""

from __future__ import annotations

from typing import Any

from agents.executor.prepare import Prefix
from agents.runtime import Runtime
from agents.sessions import COMPACTION_NOTE, Sessions, is_compaction_request
from agents.tokens import bound
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call


def first_request(runtime: Runtime, trace_id: str) -> dict[str, Any]:
    return next(e for e in runtime.traces.read(trace_id) if e["type"] == "model_request")


def assistant_prefix(runtime: Runtime) -> Prefix:
    spec = runtime.agent("assistant")
    return Prefix.build(spec.system, runtime.registry.catalog(list(spec.tools)).schemas())


async def test_the_next_turn_is_reserved_on_the_last_exact_count(make_runtime: Any) -> None:
    model = ScriptedModel(reply("first answer", input_tokens=1000), reply("second answer"))
    runtime: Runtime = await make_runtime(model)
    sessions = Sessions(runtime)
    say = {"chat_id": 3, "thread_id": None, "agent": "assistant", "user_id": 1}
    await sessions.turn(content=[{"type": "text", "text": "one"}], **say)
    second = await sessions.turn(content=[{"type": "text", "text": "two"}], **say)
    added = [{"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
             {"role": "user", "content": [{"type": "text", "text": "two"}]}]
    event = first_request(runtime, second.result.trace_id)
    assert event["input_estimate"] == 1000 + bound(added)
    # the local bound of the whole request, which the first turn had to use, is far above it
    first_bound = assistant_prefix(runtime).bound + bound(
        [{"role": "user", "content": [{"type": "text", "text": "one"}]}, *added])
    assert event["input_estimate"] < first_bound


async def test_a_rewritten_history_falls_back_to_the_bound(make_runtime: Any) -> None:
    model = ScriptedModel(reply("first answer", input_tokens=1000), reply("second answer"))
    runtime: Runtime = await make_runtime(model)
    sessions = Sessions(runtime)
    say = {"chat_id": 4, "thread_id": None, "agent": "assistant", "user_id": 1}
    first = await sessions.turn(content=[{"type": "text", "text": "one"}], **say)
    history = await runtime.conversations.history(first.session_id)
    summary = [{"type": "text", "text": "[Summary] they said one"}]
    await runtime.conversations.compact(first.session_id, [m.id for m in history], summary, 10)
    second = await sessions.turn(content=[{"type": "text", "text": "two"}], **say)
    event = first_request(runtime, second.result.trace_id)
    sent = [{"role": "user", "content": summary},
            {"role": "user", "content": [{"type": "text", "text": "two"}]}]
    assert event["input_estimate"] == assistant_prefix(runtime).bound + bound(sent)


def _unmarked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unmarked(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(v) for v in value]
    return value


LONG = "words " * 800


async def _six_turns_compacted(make_runtime: Any, model: ScriptedModel) -> tuple[Runtime, int]:
    """Six long turns of one session, then its compaction (which must happen)."""
    runtime: Runtime = await make_runtime(model, KEEL_COMPACT_AT_TOKENS="3000")
    sessions = Sessions(runtime)
    for i in range(6):
        turn = await sessions.turn(chat_id=9, thread_id=None, agent="assistant", user_id=1,
                                   content=[{"type": "text", "text": f"question {i}"}],
                                   compact=False)
    assert await sessions.maybe_compact(turn.session_id, user_id=1)
    return runtime, turn.session_id


async def test_the_agent_summarises_its_session_over_the_prefix_its_last_turn_cached(
        make_runtime: Any) -> None:
    model = ScriptedModel(*[reply(f"answer {LONG}") for _ in range(6)], reply("the summary"))
    runtime, session_id = await _six_turns_compacted(make_runtime, model)
    last_turn, compaction = model.requests[-2], model.requests[-1]
    assert is_compaction_request(compaction.to_api())
    # the same model, tools and system, and the last turn's messages as its head: what that
    # turn cached is read, not sent again
    assert (compaction.model, compaction.tools, _unmarked(compaction.system)) == (
        last_turn.model, last_turn.tools, _unmarked(last_turn.system))
    sent = _unmarked(last_turn.messages)
    assert _unmarked(compaction.messages[:len(sent)]) == sent
    assert compaction.messages[len(sent)]["role"] == "assistant"  # that turn's answer, then
    assert compaction.messages[-1]["content"][0]["text"].startswith(COMPACTION_NOTE)
    assert "cache_control" in str(compaction.messages)  # a breakpoint, to read the cache
    history = await runtime.conversations.history(session_id)
    assert history[0].kind == "summary" and "the summary" in history[0].content[0]["text"]


async def test_the_compactor_fallback_carries_no_cache_breakpoint(make_runtime: Any) -> None:
    # the agent calls a tool instead of summarising: the compactor gets the old turns
    model = ScriptedModel(*[reply(f"answer {LONG}") for _ in range(6)],
                          tool_call("remember", {"note": "x"}), reply("the summary"))
    runtime, session_id = await _six_turns_compacted(make_runtime, model)
    compaction = model.requests[-1]
    assert "compress conversation history" in compaction.system[0]["text"]
    assert "cache_control" not in str(compaction.to_api())
    agent_request = model.requests[1]
    assert "cache_control" in str(agent_request.to_api())  # the agent's own requests still cache
    history = await runtime.conversations.history(session_id)
    assert history[0].kind == "summary" and "the summary" in history[0].content[0]["text"]
