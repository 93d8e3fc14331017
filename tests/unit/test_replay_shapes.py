"""`keel trace replay` reproduces every shape of run from its trace alone.

Each test makes one real run through the runtime with the real anthropic client over HTTP against
the fake Anthropic server, then replays the trace with the command line — no model key, no
request to any server — and expects the very same requests, statuses and outputs. A trace changed
by hand (one model answer, one tool result) must replay differently: exit 1 and the JSON path of
the first difference.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agents.config import load_settings
from agents.runtime import RunRequest, Runtime
from agents.sessions import Sessions, is_compaction_request
from agents.spec import Limits
from tests.fakes.anthropic import (
    FakeAnthropic,
    RecordedRequest,
    Reply,
    api_error,
    mid_stream_overload,
    reply,
    tool_use,
)

API_KEY = "sk-ant-replay-test-key-0123456789"
QUESTION = {"reason": "Refund over the limit", "context": "Order 1234, 180 EUR.",
            "options": ["Approve", "Reject"]}
PLAN_AGENT = """
[agents.briefer]
description = "morning briefings"
pattern = "plan_execute"
tools = ["get_current_time", "escalate_to_human"]
system = "You write short morning briefings."
"""
TWO_AGENTS = """
[agents.support]
description = "customer support: orders, refunds, delivery"
tools = ["get_current_time", "escalate_to_human"]
system = "You are customer support."
"""

MakeRuntime = Callable[..., Any]


@pytest_asyncio.fixture
async def make_runtime(fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
                       tmp_path: Path) -> AsyncIterator[MakeRuntime]:
    opened: list[Runtime] = []

    async def make(config: str | None = None, **env: str) -> Runtime:
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.base_url)
        monkeypatch.setenv("KEEL_ANTHROPIC_MAX_RETRIES", "0")
        if config is not None:
            path = tmp_path / "keel.toml"
            path.write_text(config, encoding="utf-8")
            monkeypatch.setenv("KEEL_CONFIG", str(path))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        runtime = await Runtime.open(load_settings())
        opened.append(runtime)
        return runtime

    yield make
    for runtime in opened:
        await runtime.close()
    assert not fake_anthropic.unexpected, [r.note for r in fake_anthropic.unexpected]


def task(text: str, agent: str = "assistant", **kw: Any) -> RunRequest:
    return RunRequest(agent=agent, messages=[{"role": "user", "content": [
        {"type": "text", "text": text}]}], new_from=0, **kw)


async def replay_cli(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
                     trace_id: str) -> tuple[int, str]:
    """``keel trace replay`` in-process, with no API key set; it must not call any server."""
    from bot.cli import main

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    before = len(fake.requests)

    def call() -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["trace", "replay", trace_id])
        return code, out.getvalue() + err.getvalue()

    code, text = await asyncio.to_thread(call)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    assert len(fake.requests) == before, "the replay called the model"
    return code, text


async def assert_replays(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
                         trace_id: str) -> str:
    code, text = await replay_cli(fake, monkeypatch, trace_id)
    assert code == 0, text
    assert "replay: identical" in text, text
    return text


def trace_path(runtime: Runtime, trace_id: str) -> Path:
    found = runtime.traces.find(trace_id)
    assert found is not None
    return found.path


def rewrite(path: Path, change: Callable[[dict[str, Any]], bool]) -> None:
    """Apply ``change`` to the trace's events until it reports that it changed one."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, done = [], False
    for line in lines:
        event = json.loads(line)
        if not done:
            done = change(event)
        out.append(json.dumps(event, ensure_ascii=False))
    assert done, "nothing in the trace was changed"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def hang_second_call(fake: FakeAnthropic) -> tuple[asyncio.Event, asyncio.Event]:
    """The first call answers a tool call; the second is held until ``release`` is set."""
    arrived, release = asyncio.Event(), asyncio.Event()
    fake.enqueue(reply(tool_use("get_current_time", {"timezone": "UTC"})))

    async def hold(req: RecordedRequest) -> Reply:
        arrived.set()
        await release.wait()
        return reply("too late")

    fake.responder = hold
    return arrived, release


def escalating(req: RecordedRequest) -> Reply:
    results = req.tool_results
    if not results:
        return reply("Let me ask a human.", tool_use("escalate_to_human", QUESTION))
    answer = json.loads(results[-1]["content"])
    return reply(f"Done: {answer['answer']} (decided by {answer['answered_by']}).")


# ------------------------------------------------------------------ statuses


async def test_a_straight_run_replays_and_a_changed_answer_or_tool_result_does_not(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_anthropic.enqueue(reply(tool_use("get_current_time", {"timezone": "Europe/Madrid"})),
                           reply("Let me check Tokyo too.",
                                 tool_use("get_current_time", {"timezone": "Asia/Tokyo"})),
                           reply("Noon in Madrid, evening in Tokyo."))
    runtime: Runtime = await make_runtime()
    result = await runtime.run(task("Madrid and Tokyo times?"))
    assert result.status == "completed"
    text = await assert_replays(fake_anthropic, monkeypatch, result.trace_id)
    assert "recorded 3, replayed 3" in text

    path = trace_path(runtime, result.trace_id)
    original = path.read_text(encoding="utf-8")

    def answer_changed(e: dict[str, Any]) -> bool:
        if e["type"] == "model_response" and e["n"] == 2:
            e["content"][0]["text"] = "Let me check Osaka too."
            return True
        return False

    rewrite(path, answer_changed)
    code, text = await replay_cli(fake_anthropic, monkeypatch, result.trace_id)
    assert code == 1, text
    assert "request 3 differs at $.messages[3].content[0].text" in text, text
    assert "Let me check Osaka too." in text and "Let me check Tokyo too." in text

    path.write_text(original, encoding="utf-8")

    def tool_result_changed(e: dict[str, Any]) -> bool:
        if e["type"] == "tool_result" and e["name"] == "get_current_time":
            e["content"] = e["content"].replace("Madrid", "Lisbon")
            return True
        return False

    rewrite(path, tool_result_changed)
    code, text = await replay_cli(fake_anthropic, monkeypatch, result.trace_id)
    assert code == 1, text
    assert "request 2 differs at $.messages[2].content[0].content" in text, text

    path.write_text(original, encoding="utf-8")

    def final_changed(e: dict[str, Any]) -> bool:
        if e["type"] == "model_response" and e["n"] == 3:
            e["content"][0]["text"] = "Noon everywhere."
            return True
        return False

    rewrite(path, final_changed)  # the last answer is in no request: the output tells
    code, text = await replay_cli(fake_anthropic, monkeypatch, result.trace_id)
    assert code == 1, text
    assert "output differs" in text and "Noon everywhere." in text, text


async def test_an_escalated_run_and_its_resumption_replay(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_anthropic.responder = escalating
    runtime: Runtime = await make_runtime()
    parked = await runtime.run(task("Please refund order 1234"))
    assert parked.status == "waiting_human"
    text = await assert_replays(fake_anthropic, monkeypatch, parked.trace_id)
    assert "waiting_human" in text

    done = await runtime.resume(parked.run_id, "Approve", answered_by="Alice")
    assert (done.status, done.output) == ("completed", "Done: Approve (decided by Alice).")
    text = await assert_replays(fake_anthropic, monkeypatch, parked.trace_id)
    assert "resume" in text and "recorded 2, replayed 2" in text

    def answer_changed(e: dict[str, Any]) -> bool:
        if e["type"] == "resume":
            e["answer"] = "Reject"
            return True
        return False

    rewrite(trace_path(runtime, parked.trace_id), answer_changed)
    code, text = await replay_cli(fake_anthropic, monkeypatch, parked.trace_id)
    assert code == 1 and "request 2 differs at $.messages[2].content[0].content" in text, text


async def test_a_budget_continued_run_replays(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    long_note = "Checking the clock before I answer. " * 250  # ~2,300 output tokens

    def script() -> None:
        fake_anthropic.enqueue(reply(long_note, tool_use("get_current_time", {"timezone": "UTC"})),
                               reply("It is noon UTC."))

    runtime: Runtime = await make_runtime()
    script()  # a probe at the default budget: what the first call costs
    probe = await runtime.run(task("What time is it?"))
    first_cost = next(e["cost_usd"] for e in runtime.traces.read(probe.trace_id)
                      if e["type"] == "model_response")
    # room for that first call, and too little left after it for any useful second one
    limits = replace(runtime.agent("assistant").limits, budget_usd=first_cost + 0.002)
    script()
    halted = await runtime.run(task("What time is it?", limits=limits))
    assert halted.status == "budget_exceeded" and halted.state is not None, halted.detail
    assert halted.model_calls == 1
    await assert_replays(fake_anthropic, monkeypatch, halted.trace_id)

    done = await runtime.continue_with_budget(halted.run_id, 0.05, granted_by="Alice")
    assert (done.status, done.output) == ("completed", "It is noon UTC."), done.detail
    text = await assert_replays(fake_anthropic, monkeypatch, halted.trace_id)
    assert "budget raised (+$0.05 by Alice)" in text and "recorded 2, replayed 2" in text

    def grant_changed(e: dict[str, Any]) -> bool:
        if e["type"] == "budget_raised":
            e["extra_usd"] = 0.001
            return True
        return False

    rewrite(trace_path(runtime, halted.trace_id), grant_changed)
    code, text = await replay_cli(fake_anthropic, monkeypatch, halted.trace_id)
    assert code == 1, text


async def test_a_run_cancelled_mid_call_replays(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    arrived, release = hang_second_call(fake_anthropic)
    runtime: Runtime = await make_runtime()
    job = asyncio.create_task(runtime.run(task("time?")))
    await arrived.wait()
    assert runtime.cancel(runtime.active_runs()[0].id)
    result = await job
    release.set()
    assert result.status == "cancelled"
    text = await assert_replays(fake_anthropic, monkeypatch, result.trace_id)
    assert "cancelled" in text and "recorded 2, replayed 2" in text


async def test_a_timed_out_run_replays(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, release = hang_second_call(fake_anthropic)
    runtime: Runtime = await make_runtime()
    limits = replace(runtime.agent("assistant").limits, timeout_s=1.5)
    result = await runtime.run(task("time?", limits=limits))
    release.set()
    assert result.status == "timeout"
    text = await assert_replays(fake_anthropic, monkeypatch, result.trace_id)
    assert "timeout" in text


async def test_step_limit_and_a_failed_model_call_replay(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime: Runtime = await make_runtime()
    fake_anthropic.enqueue(reply(tool_use("get_current_time", {"timezone": "UTC"})),
                           reply(tool_use("get_current_time", {"timezone": "UTC"})))
    limits = Limits(max_steps=1)
    capped = await runtime.run(task("loop", limits=limits))
    assert capped.status == "step_limit"
    await assert_replays(fake_anthropic, monkeypatch, capped.trace_id)

    fake_anthropic.enqueue(reply(tool_use("get_current_time", {"timezone": "UTC"})),
                           api_error(400, "invalid_request_error", "something is off"))
    failed = await runtime.run(task("fails"))
    assert failed.status == "failed"
    text = await assert_replays(fake_anthropic, monkeypatch, failed.trace_id)
    assert "failed" in text


async def test_a_run_interrupted_by_a_shutdown_replays_up_to_the_interruption(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    arrived, release = hang_second_call(fake_anthropic)
    runtime: Runtime = await make_runtime()
    job = asyncio.create_task(runtime.run(task("time?")))
    await arrived.wait()
    release.set()  # too late: the run is stopped before the answer is read
    job.cancel()  # the process stops (not /cancel): the run is left "running"
    with pytest.raises(asyncio.CancelledError):
        await job
    assert await runtime.close_interrupted() == 1
    [record] = await runtime.runs.recent()
    text = await assert_replays(fake_anthropic, monkeypatch, record.trace_id)
    assert "interrupted" in text


# ------------------------------------------------------------------ shapes


async def test_a_plan_then_execute_run_with_thinking_and_a_replan_replays(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def submit(*steps: str) -> Reply:
        return reply(tool_use("submit_plan", {"goal": "a morning briefing", "steps": [
            {"instruction": s, "produces": "its result"} for s in steps]}))

    fake_anthropic.enqueue(
        submit("Get the time in Madrid.", "Read the traffic.", "Write the briefing."),
        reply(tool_use("get_current_time", {"timezone": "Europe/Madrid"})),
        reply("08:00 in Madrid."),
        reply("STEP_FAILED: no traffic tool"),
        submit("Write the briefing without traffic."),
        reply("**Briefing**: 08:00 in Madrid; traffic unknown."),
    )
    # a planner that thinks with a token budget ("enabled"), as 4.5-era models do
    runtime: Runtime = await make_runtime(PLAN_AGENT, KEEL_PLANNER_MODEL="claude-sonnet-4-5")
    result = await runtime.run(task("Morning briefing please", agent="briefer"))
    assert result.status == "completed", result.detail
    planner = fake_anthropic.message_requests[0].body
    assert planner["thinking"]["type"] == "enabled"
    text = await assert_replays(fake_anthropic, monkeypatch, result.trace_id)
    assert "recorded 6, replayed 6" in text

    def plan_changed(e: dict[str, Any]) -> bool:
        if e["type"] == "model_response" and e["n"] == 1:
            block = next(b for b in e["content"] if b["type"] == "tool_use")
            block["input"]["steps"][0]["instruction"] = "Get the time in Lisbon."
            return True
        return False

    rewrite(trace_path(runtime, result.trace_id), plan_changed)
    code, text = await replay_cli(fake_anthropic, monkeypatch, result.trace_id)
    assert code == 1 and "request 2 differs at $.messages[0].content" in text, text


async def test_a_plan_step_that_escalates_resumes_and_replays(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_anthropic.enqueue(
        reply(tool_use("submit_plan", {"goal": "a refund decision", "steps": [
            {"instruction": "Ask a human whether to refund.", "produces": "the decision"},
            {"instruction": "Tell the customer.", "produces": "the message"}]})),
        reply(tool_use("escalate_to_human", QUESTION)),
    )
    runtime: Runtime = await make_runtime(PLAN_AGENT)
    parked = await runtime.run(task("Refund order 1234?", agent="briefer"))
    assert parked.status == "waiting_human", parked.detail
    await assert_replays(fake_anthropic, monkeypatch, parked.trace_id)

    fake_anthropic.enqueue(reply("Approved."), reply("Your refund is approved."))
    done = await runtime.resume(parked.run_id, "Approve", answered_by="Alice")
    assert (done.status, done.output) == ("completed", "Your refund is approved."), done.detail
    text = await assert_replays(fake_anthropic, monkeypatch, parked.trace_id)
    assert "recorded 4, replayed 4" in text


async def test_a_routed_run_replays_with_its_router_decision(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_anthropic.enqueue(reply(tool_use("route", {"agent": "support"})),
                           reply("Your order ships tomorrow."))
    runtime: Runtime = await make_runtime(TWO_AGENTS)
    decision = await runtime.route("Where is my order?", current=None)
    assert (decision.agent, decision.reason) == ("support", "router")
    result = await runtime.run(task("Where is my order?", agent=decision.agent, route=decision))
    assert result.status == "completed"
    text = await assert_replays(fake_anthropic, monkeypatch, result.trace_id)
    assert "route: support (router)" in text

    def choice_changed(e: dict[str, Any]) -> bool:
        if e["type"] == "route":
            e["response"][0]["input"]["agent"] = "assistant"
            return True
        return False

    rewrite(trace_path(runtime, result.trace_id), choice_changed)
    code, text = await replay_cli(fake_anthropic, monkeypatch, result.trace_id)
    assert code == 1 and "route" in text, text


async def test_runs_around_a_compaction_replay(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def respond(req: RecordedRequest) -> Reply:
        if is_compaction_request(req.body):
            return reply("Earlier: the person asked about three long topics.")
        return reply(f"Noted: {req.last_user_text[:40]}")

    fake_anthropic.responder = respond
    runtime: Runtime = await make_runtime()
    sessions = Sessions(runtime, compact_at_tokens=1000)
    filler = "lorem ipsum dolor sit amet " * 60
    turns = []
    for i in range(4):
        turns.append(await sessions.turn(chat_id=5, thread_id=None, agent="assistant",
                                         content=[{"type": "text", "text": f"topic {i}: {filler}"}],
                                         user_id=5))
    assert any(t.compacted for t in turns)
    records = await runtime.runs.recent()
    compactions = [r for r in records
                   if runtime.traces.read(r.trace_id)[0].get("purpose") == "compaction"]
    assert compactions and compactions[0].agent == "assistant"  # the agent summarised in place
    await assert_replays(fake_anthropic, monkeypatch, compactions[0].trace_id)
    # the turn after the compaction starts from the summary, and replays too
    last = turns[-1].result
    agent_requests = [r for r in fake_anthropic.message_requests
                      if not is_compaction_request(r.body)]
    assert "Summary of the earlier conversation" in json.dumps(
        agent_requests[-1].body["messages"])
    await assert_replays(fake_anthropic, monkeypatch, last.trace_id)


async def test_a_chat_turn_reserved_from_the_sessions_kept_count_replays(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_anthropic.responder = lambda req: reply(f"Noted: {req.last_user_text[:30]}")
    # a long prompt and a run budget that shrinks every call: the second turn's bound starts
    # from the exact count the session kept (within the count endpoint's 2% headroom), so the
    # call's max_tokens depends on that kept count, which only the trace can give back
    rules = "\n".join(f"- Rule {i}: answer questions about topic {i} with care." for i in range(700))
    config = f'[agents.support]\ndescription = "support"\nsystem = """{rules}"""\n'
    runtime: Runtime = await make_runtime(config, KEEL_RUN_BUDGET_USD="0.06")
    sessions = Sessions(runtime)
    for text in ("My order is 1234.", "And the refund?"):
        turn = await sessions.turn(chat_id=9, thread_id=None, agent="support",
                                   content=[{"type": "text", "text": text}], user_id=9)
        assert turn.result.status == "completed", turn.result.detail
    events = runtime.traces.read(turn.result.trace_id)
    start = next(e for e in events if e["type"] == "run_start")
    request = next(e for e in events if e["type"] == "model_request")
    assert start["replay"]["session_anchor"] is not None
    assert request["max_tokens"] < request["max_tokens_requested"]
    assert not request["input_counted"]  # the kept count made the bound tight enough
    await assert_replays(fake_anthropic, monkeypatch, turn.result.trace_id)


async def test_a_run_resumed_by_an_approval_replays_with_the_approved_call(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = ('[agents.clerk]\ndescription = "clerk"\ntools = ["get_current_time"]\n'
              'approve = ["get_current_time"]\nsystem = "You keep the time."\n')
    fake_anthropic.enqueue(reply(tool_use("get_current_time", {"timezone": "Asia/Tokyo"})))
    runtime: Runtime = await make_runtime(config)
    parked = await runtime.run(task("Tokyo time?", agent="clerk"))
    assert parked.status == "waiting_human", parked.detail
    await assert_replays(fake_anthropic, monkeypatch, parked.trace_id)

    fake_anthropic.enqueue(reply("It is evening in Tokyo."))
    done = await runtime.settle_approval(parked.run_id, approved=True, answered_by="Alice")
    assert (done.status, done.output) == ("completed", "It is evening in Tokyo."), done.detail
    text = await assert_replays(fake_anthropic, monkeypatch, parked.trace_id)
    assert "resume (approval 'Approve' by Alice)" in text

    def denied(e: dict[str, Any]) -> bool:
        if e["type"] == "resume":
            e["answer"] = "Deny"
            return True
        return False

    rewrite(trace_path(runtime, parked.trace_id), denied)
    code, text = await replay_cli(fake_anthropic, monkeypatch, parked.trace_id)
    assert code == 1 and "request 2 differs at $.messages[2].content[0]" in text, text


async def test_a_run_the_daily_cap_shrinks_then_halts_replays(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    note = "Let me look at the clock once more. " * 110  # ~1,000 output tokens a call
    fake_anthropic.responder = lambda req: reply(note, tool_use("get_current_time",
                                                                {"timezone": "UTC"}))
    # the day's cap, not the run's, cuts every call short and then stops the run: the ledger
    # is not in the trace, so the replay must answer each hold as the ledger did
    runtime: Runtime = await make_runtime(KEEL_DAILY_BUDGET_USD="0.06")
    result = await runtime.run(task("keep checking the time", user_id=3))
    assert result.status == "budget_exceeded" and result.state is None, result.detail
    events = runtime.traces.read(result.trace_id)
    requests = [e for e in events if e["type"] == "model_request"]
    assert requests and all(e["max_tokens"] < e["max_tokens_requested"] for e in requests)
    assert any(e["type"] == "budget_halt" and e.get("scope") == "daily" for e in events)
    text = await assert_replays(fake_anthropic, monkeypatch, result.trace_id)
    assert f"recorded {len(requests)}, replayed {len(requests)}" in text


async def test_trace_show_tells_each_part_of_a_continued_run(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic,
) -> None:
    from agents.trace_view import render_summary, summarise

    fake_anthropic.responder = escalating
    runtime: Runtime = await make_runtime()
    parked = await runtime.run(task("Please refund order 1234"))
    await runtime.resume(parked.run_id, "Approve", answered_by="Alice")
    shown = render_summary(summarise(runtime.traces.read(parked.trace_id)))
    assert "escalation: " in shown and "Refund over the limit" in shown
    assert 'resume: {"answer": "Approve", "answered_by": "Alice"}' in shown
    assert "status: completed" in shown


async def test_a_call_that_broke_off_mid_stream_and_was_asked_again_replays(
    make_runtime: MakeRuntime, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime: Runtime = await make_runtime()
    fake_anthropic.enqueue(mid_stream_overload("Two minutes at 80 °C. " * 10, after_events=5),
                           reply("Two minutes at 80 °C."))
    shown = ""
    retracted: list[int] = []

    async def progress(kind: str, value: str) -> None:  # someone watches: it streams
        nonlocal shown
        if kind == "text":
            shown += value
        elif kind == "retract":  # what the broken answer showed is taken back, not repeated
            retracted.append(int(value))
            shown = shown[:len(shown) - int(value)]

    result = await runtime.run(task("green tea?"), on_progress=progress)
    assert result.status == "completed" and result.output == "Two minutes at 80 °C."
    assert shown == "Two minutes at 80 °C." and len(retracted) == 1 and retracted[0] > 0
    assert [r.stream for r in fake_anthropic.message_requests] == [True, True]
    events = runtime.traces.read(result.trace_id)
    assert [e["type"] for e in events].count("model_retry") == 1
    await assert_replays(fake_anthropic, monkeypatch, result.trace_id)
