"""`keel agent run`, `keel chat` and `keel trace` end to end against the fake Anthropic server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import API_KEY
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _env(anthropic: FakeAnthropic, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": anthropic.base_url,
        "KEEL_DATA_DIR": str(data_dir),
        **extra,
    }


async def _keel(anthropic: FakeAnthropic, data_dir: Path, *args: str, stdin: str | None = None,
                **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, cwd=str(data_dir.parent),
        env=_env(anthropic, data_dir, **env),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_agent_run_prints_json_with_totals_and_exit_status(
    fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    fake_anthropic.enqueue(reply(tool_use("get_current_time", {"timezone": "Europe/Madrid"})),
                           reply("It is **noon** in Madrid."))
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "agent", "run", "assistant",
                                 "What time is it in Madrid?", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "completed" and result["steps"] == 1
    assert result["output"] == "It is **noon** in Madrid."
    for key in ("run_id", "trace_id", "agent", "cost_usd", "input_tokens", "output_tokens",
                "cache_read_tokens", "cache_write_tokens", "duration_s"):
        assert key in result
    assert result["cost_usd"] > 0
    # the trace is readable back, and the exact first request is printable
    code, out, _ = await _keel(fake_anthropic, tmp_path / "data", "trace", "show", result["trace_id"])
    assert code == 0 and "status: completed" in out and "get_current_time" in out
    code, out, _ = await _keel(fake_anthropic, tmp_path / "data", "trace", "show",
                               result["trace_id"], "--request", "2")
    assert code == 0
    assert json.loads(out) == fake_anthropic.message_requests[1].body
    # the run replays offline to the very same requests
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "trace", "replay",
                                 result["trace_id"][:8])
    assert code == 0, out + err
    assert "replay: identical" in out and "start: recorded completed, replayed completed" in out
    # the API key never reaches a trace file
    for path in (tmp_path / "data" / "traces").rglob("*.jsonl"):
        assert API_KEY not in path.read_text()


async def test_agent_run_exit_status_for_step_limit(fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    fake_anthropic.responder = lambda req: reply(tool_use("get_current_time", {"timezone": "UTC"}))
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "agent", "run", "assistant",
                                 "loop", "--max-steps", "2", "--json")
    assert code == 4, err
    assert json.loads(out)["status"] == "step_limit"


async def test_agent_run_unknown_agent_is_a_usage_error(fake_anthropic: FakeAnthropic, tmp_path: Path) -> None:
    code, _, err = await _keel(fake_anthropic, tmp_path / "data", "agent", "run", "nobody", "x")
    assert code == 2 and "No agent named 'nobody'" in err


async def test_ten_turn_chat_reads_the_cache_on_every_turn_after_the_first(
    fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    def respond(req: RecordedRequest) -> Reply:
        return reply(f"Answer {len(req.messages) // 2 + 1}: noted '{req.last_user_text}'.")

    fake_anthropic.responder = respond
    # an agent with a realistic, long system prompt: the stable prefix is above the cache minimum
    rules = "\n".join(f"- Rule {i}: when the customer mentions topic {i}, answer with care and cite "
                      f"the handbook section {i}." for i in range(80))
    config = tmp_path / "keel.toml"
    config.write_text(f'[agents.support]\ndescription = "customer support"\n'
                      f'tools = ["get_current_time"]\nsystem = """You are support.\n{rules}"""\n')
    lines = "".join(f"message number {i}\n" for i in range(1, 11))
    code, out, err = await _keel(fake_anthropic, tmp_path / "data", "chat", "support", stdin=lines,
                                 KEEL_CONFIG=str(config))
    assert code == 0, err
    assert out.count("support> Answer") == 10
    reqs = fake_anthropic.message_requests
    assert len(reqs) == 10
    # the stable prefix (tools + system) is above Sonnet's 1024-token minimum
    assert reqs[0].usage["cache_creation_input_tokens"] >= 1024
    reads = [r.usage["cache_read_input_tokens"] for r in reqs]
    assert reads[0] == 0 and all(r > 0 for r in reads[1:]), reads
    # history grows turn by turn and is read from the cache, not re-sent uncached
    assert all(r.usage["input_tokens"] < 200 for r in reqs[1:]), [r.usage for r in reqs]


async def test_trace_is_complete_json_when_killed_mid_run(
    fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    asked = asyncio.Event()
    hold = asyncio.Event()

    async def respond(req: RecordedRequest) -> Reply:
        if len(req.messages) >= 3:
            asked.set()
            await hold.wait()
        return reply(tool_use("get_current_time", {"timezone": "UTC"}))

    fake_anthropic.responder = respond
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "agent", "run", "assistant", "x", cwd=str(tmp_path),
        env=_env(fake_anthropic, tmp_path / "data"), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.wait_for(asked.wait(), 30)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        hold.set()
    files = list((tmp_path / "data" / "traces").rglob("*.jsonl"))
    assert len(files) == 1
    events = [json.loads(line) for line in files[0].read_text().splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "run_start" and "run_end" not in types
    assert types.count("tool_result") == 1 and types.count("model_request") == 2
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
