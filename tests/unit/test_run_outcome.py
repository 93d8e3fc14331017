"""A finished run's outcome: what is on disk when it commits, and what it does not wait for."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from agents.runtime import Runtime
from storage import traces
from tests.fakes.scripted_model import ScriptedModel, reply
from tests.unit.conftest import task


async def test_an_outcome_commits_with_its_trace_written_but_not_waiting_for_its_fsync(
        make_runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished run's trace lines are in the file when its outcome commits (a process killed
    after the commit keeps them), and the outcome does not wait for the disk flush: with fsync
    stuck, the run still ends and its row says so (issue 15: the flush was on every reply's
    path). Closing the runtime waits for the flush."""
    flush = threading.Event()
    flushed: list[int] = []
    fsync = traces.os.fsync

    def stuck(fd: int) -> None:
        flush.wait(10)
        flushed.append(fd)
        fsync(fd)

    monkeypatch.setattr(traces.os, "fsync", stuck)
    runtime: Runtime = await make_runtime(ScriptedModel(reply("Noon.")))
    seen: list[str] = []
    finish = runtime.runs.finish

    async def finishing(run_id: str, **kw: Any) -> Any:
        path = runtime.traces.path_for(result_trace[0])
        seen.extend(json.loads(line)["type"] for line in path.read_text().splitlines())
        return await finish(run_id, **kw)

    result_trace: list[str] = []
    new_writer = runtime.traces.new_writer

    def opened(*, trace_id: str, run_id: str) -> Any:
        result_trace.append(trace_id)
        return new_writer(trace_id=trace_id, run_id=run_id)

    monkeypatch.setattr(runtime.traces, "new_writer", opened)
    monkeypatch.setattr(runtime.runs, "finish", finishing)
    result = await asyncio.wait_for(runtime.run(task("time?")), 5)
    assert result.status == "completed" and not flushed
    assert seen[0] == "run_start" and seen[-1] == "run_end"
    record = await runtime.runs.get(result.run_id)
    assert record is not None and record.status == "completed"
    flush.set()
    await runtime.close()
    assert flushed
