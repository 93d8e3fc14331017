"""One id scheme and traces a person can read (issue 20): any unique prefix of a run id or a
trace id works in `keel trace show`, `keel trace replay` and /trace; `trace list` is newest
first with a header; `trace show` starts with what was asked; /trace survives an answer with
a code fence; copy that reads well."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import BotWorld, is_router
from tests.e2e.test_cli_runs import _keel
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply

pytestmark = pytest.mark.e2e


async def _two_runs(fake: FakeAnthropic, data: Path) -> list[dict[str, str]]:
    results = []
    for task, answer in (("First question", "First answer."), ("Second question", "Second.")):
        fake.enqueue(reply(answer))
        code, out, err = await _keel(fake, data, "agent", "run", "assistant", task, "--json")
        assert code == 0, err
        results.append(json.loads(out))
    return results


async def test_run_ids_and_trace_ids_and_their_prefixes_all_work(
        fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, second = await _two_runs(fake_anthropic, data)
    for wanted in (first["run_id"], first["run_id"][:8], first["trace_id"][:6]):
        code, out, err = await _keel(fake_anthropic, data, "trace", "show", wanted)
        assert code == 0, (wanted, err)
        lines = out.splitlines()
        assert lines[0] == "asked: First question", out  # what was asked comes first
        assert first["trace_id"] in out
        code, out, err = await _keel(fake_anthropic, data, "trace", "replay", wanted)
        assert code == 0 and "replay: identical" in out, (wanted, out, err)
    code, out, err = await _keel(fake_anthropic, data, "trace", "show", "zzzz")
    assert code == 1 and err.strip().startswith("keel: no trace or run 'zzzz'"), err
    assert "Traceback" not in err


async def test_trace_list_is_newest_first_with_a_header_a_limit_and_checked_dates(
        fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, second = await _two_runs(fake_anthropic, data)
    code, out, err = await _keel(fake_anthropic, data, "trace", "list", KEEL_TIMEZONE="Asia/Tokyo")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:2] == ["STARTED", "(Asia/Tokyo)"], header
    for word in ("TRACE", "RUN", "AGENT", "STATUS", "COST"):
        assert word in header
    assert len(rows) == 2
    assert rows[0].split()[2] == second["trace_id"][:8] and rows[1].split()[2] == first["trace_id"][:8]
    assert all("assistant" in r and "completed" in r and "$" in r for r in rows)

    code, out, _ = await _keel(fake_anthropic, data, "trace", "list", "--limit", "1", "--json")
    [only] = json.loads(out)
    assert code == 0 and only["run_id"] == second["run_id"]

    code, out, err = await _keel(fake_anthropic, data, "trace", "list", "--date", "yesterday")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "YYYY-MM-DD" in err, err
    code, out, err = await _keel(fake_anthropic, data, "--version")
    assert code == 0 and out.startswith("keel "), (out, err)


def _fenced(req: RecordedRequest) -> Reply:
    return reply("Here you go:\n\n```python\nprint('hi')\n```\n\nAnything else?")


async def test_trace_summary_survives_an_answer_with_a_code_fence(bot_world: BotWorld) -> None:
    w = bot_world
    w.answer(_fenced)
    w.telegram.inject_text(w.alice_chat, "Show me code")
    await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    runtime = w.app.bot_data["runtime"]
    [record] = await runtime.runs.recent()
    w.telegram.inject_text(w.alice_chat, f"/trace {record.id[:8]}")  # a run id prefix works
    summary = await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    assert summary["text"].startswith("asked: Show me code"), summary["text"]
    assert "Anything else?" in summary["text"]
    # the whole summary is one monospace block: the answer's ``` did not close it early
    blocks = [e for e in summary.get("entities", []) if e["type"] in ("pre", "code")]
    assert len(blocks) == 1, summary.get("entities")
    assert blocks[0]["offset"] == 0 and blocks[0]["length"] >= len(summary["text"]) - 1


async def test_a_cancelled_run_says_so_in_plain_words(bot_world: BotWorld) -> None:
    w = bot_world
    working, release = asyncio.Event(), asyncio.Event()
    router = w.anthropic.responder

    async def slow_agent(req: RecordedRequest) -> Reply:
        if is_router(req):
            return router(req)  # type: ignore[misc,return-value]
        working.set()
        await release.wait()
        return reply("too late")

    w.anthropic.responder = slow_agent
    try:
        w.telegram.inject_text(w.alice_chat, "Write a long essay")
        await asyncio.wait_for(working.wait(), 10)
        w.telegram.inject_text(w.alice_chat, "/cancel")
        done = await w.telegram.wait_for(
            lambda: next((m for m in w.telegram.sent(w.alice_chat.id) if "⚠️" in m["text"]), None),
            timeout=10)
    finally:
        release.set()
    assert "Cancelled, as you asked." in done["text"], done["text"]
    assert "cancelled on request" not in done["text"]


async def test_agent_in_a_topic_speaks_of_the_topic(bot_world: BotWorld) -> None:
    w = bot_world
    forum = w.telegram.forum("Team")
    topic = w.telegram.create_topic(forum, "Research")
    w.telegram.inject_text(forum, "/agent assistant", user=w.alice, thread=topic)
    pinned = await w.telegram.next_bot_message(forum.id, timeout=5)
    assert pinned["text"] == "Pinned assistant for this topic. /auto to unpin.", pinned["text"]
