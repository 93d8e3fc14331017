"""Opening a trace lists no directory; housekeeping never loses a live writer's events; the
event loop is never the thread that compresses, reads or walks trace files."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from storage import traces as traces_module
from storage.traces import TraceStore, day_of

TODAY = datetime.now(UTC).date()


def _store_many(store: TraceStore, days: int, per_day: int) -> None:
    for d in range(days):
        folder = store.root / (TODAY - timedelta(days=d)).isoformat()
        folder.mkdir(parents=True)
        for i in range(per_day):
            (folder / f"stored-{d}-{i}.jsonl").write_text('{"seq": 1, "type": "run_start"}\n')


def _write(store: TraceStore, trace_id: str, *types: str, day: date | None = None) -> None:
    w = store.writer(trace_id=trace_id, run_id="r", day=day)
    for t in types:
        w.emit(t)
    w.close()


def test_opening_new_and_continued_traces_lists_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TraceStore(tmp_path)
    _store_many(store, days=5, per_day=50)
    ten_days_ago = TODAY - timedelta(days=10)
    _write(store, "waiting", "run_start", "escalation", day=ten_days_ago)
    _write(store, "zipped", "run_start", "escalation", day=ten_days_ago)
    store.housekeep(retention_days=30)
    assert (tmp_path / ten_days_ago.isoformat() / "zipped.jsonl.gz").exists()

    fresh = TraceStore(tmp_path)  # a restarted process: nothing remembered
    with monkeypatch.context() as m:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the trace directory was listed")
        for target, name in ((Path, "iterdir"), (Path, "glob"), (os, "scandir"), (os, "listdir")):
            m.setattr(target, name, refuse)
        _write(fresh, "new", "run_start")
        # continued runs know the day their run started (runs.started_at)
        _write(fresh, "waiting", "resume", "run_end", day=ten_days_ago)
        _write(fresh, "zipped", "resume", "run_end", day=ten_days_ago)
        # a note appended after run_end by the same process finds the file it opened
        _write(fresh, "new", "delivery")

    assert [e["type"] for e in fresh.read("new")] == ["run_start", "delivery"]
    for trace_id in ("waiting", "zipped"):
        events = fresh.read(trace_id)
        assert [(e["type"], e["seq"]) for e in events] == [
            ("run_start", 1), ("escalation", 2), ("resume", 3), ("run_end", 4)]
        folder = tmp_path / ten_days_ago.isoformat()
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{t}.jsonl" for t in ("waiting", "zipped"))  # one file each, in its own day
    assert not (tmp_path / TODAY.isoformat() / "waiting.jsonl").exists()


def test_a_run_started_just_before_midnight_is_found_from_its_run_start_day(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    yesterday = TODAY - timedelta(days=1)
    _write(store, "t", "run_start", day=yesterday)  # trace opened at 23:59:59.9 ...
    started_at = f"{TODAY.isoformat()}T00:00:00.000001Z"  # ... its runs row written at 00:00
    _write(TraceStore(tmp_path), "t", "resume", day=day_of(started_at))
    assert [e["type"] for e in store.read("t")] == ["run_start", "resume"]
    assert not (tmp_path / TODAY.isoformat()).exists()


def test_events_after_a_torn_line_survive_a_continued_run(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    _write(store, "t", "run_start", "escalation")
    path = store.path_for("t")
    with path.open("a") as fh:
        fh.write('{"ts": "2026-01-01", "type": "mod')  # killed mid-write
    _write(TraceStore(tmp_path), "t", "resume", "run_end")
    assert [(e["type"], e["seq"]) for e in store.read("t")] == [
        ("run_start", 1), ("escalation", 2), ("resume", 3), ("run_end", 4)]


def test_the_sequence_continues_after_a_last_line_longer_than_the_tail_read(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    w = store.writer(trace_id="t", run_id="r")
    w.emit("run_start")
    w.emit("model_request", body="x" * 300_000)
    w.close()
    _write(TraceStore(tmp_path), "t", "run_end")
    assert [e["seq"] for e in store.read("t")] == [1, 2, 3]


def test_housekeeping_leaves_a_live_writers_file_alone(tmp_path: Path) -> None:
    """A run that started yesterday and is still writing is not gzipped or deleted under it."""
    store = TraceStore(tmp_path)
    w = store.writer(trace_id="live", run_id="r", day=TODAY - timedelta(days=1))
    w.emit("run_start")
    old = store.writer(trace_id="old", run_id="r", day=TODAY - timedelta(days=40))
    old.emit("run_start")
    assert store.housekeep(retention_days=30) == (0, 0)
    w.emit("run_end")
    old.emit("resume")
    w.close()
    old.close()
    assert [e["type"] for e in store.read("live")] == ["run_start", "run_end"]
    assert store.housekeep(retention_days=30) == (1, 1)
    assert [e["type"] for e in store.read("live")] == ["run_start", "run_end"]
    assert store.find("live").path.name == "live.jsonl.gz"  # type: ignore[union-attr]
    assert store.find("old") is None


def test_a_file_appended_to_while_being_gzipped_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TraceStore(tmp_path)
    yesterday = TODAY - timedelta(days=1)
    _write(store, "t", "run_start", day=yesterday)
    real_copy = traces_module.shutil.copyfileobj

    def copy_then_append(src: Any, dst: Any, *args: Any) -> None:
        real_copy(src, dst, *args)
        _write(store, "t", "resume", day=yesterday)  # a writer came and went mid-compression

    monkeypatch.setattr(traces_module.shutil, "copyfileobj", copy_then_append)
    assert store.housekeep(retention_days=30) == (0, 0)
    monkeypatch.setattr(traces_module.shutil, "copyfileobj", real_copy)
    assert [e["type"] for e in store.read("t")] == ["run_start", "resume"]
    assert store.housekeep(retention_days=30) == (1, 0)
    with gzip.open(store.root / yesterday.isoformat() / "t.jsonl.gz", "rt") as fh:
        assert len(fh.read().splitlines()) == 2


def test_a_plain_file_beside_its_gzip_is_the_complete_one(tmp_path: Path) -> None:
    """A crash between writing the .gz and removing the .jsonl leaves both; nothing is counted twice."""
    store = TraceStore(tmp_path)
    yesterday = TODAY - timedelta(days=1)
    _write(store, "t", "run_start", day=yesterday)
    plain = store.path_for("t", yesterday)
    with plain.open("rb") as src, gzip.open(f"{plain}.gz", "wb") as dst:
        dst.write(src.read())
    _write(TraceStore(tmp_path), "t", "resume", day=yesterday)
    assert [t.trace_id for t in store.list()] == ["t"]
    assert [e["type"] for e in store.read("t")] == ["run_start", "resume"]
    assert store.housekeep(retention_days=30) == (1, 0)
    assert [e["type"] for e in store.read("t")] == ["run_start", "resume"]


def test_find_by_prefix_still_walks_and_refuses_paths(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    _write(store, "abcdef-1", "run_start", day=TODAY - timedelta(days=3))
    _write(store, "abcxyz-2", "run_start")
    assert TraceStore(tmp_path).find("abcd").trace_id == "abcdef-1"  # type: ignore[union-attr]
    assert TraceStore(tmp_path).find("abc") is None  # ambiguous
    assert store.find("../x") is None and store.find("") is None
    with pytest.raises(ValueError):
        store.writer(trace_id="../escape", run_id="r")


async def _off_the_loop(call: Any, monkeypatch: pytest.MonkeyPatch, target: Any,
                        name: str) -> Any:
    """Run ``call`` while ``target.name`` blocks until the event loop itself releases it: if the
    work ran on the loop, the loop could not release it and the wait would time out."""
    release = threading.Event()
    real = getattr(target, name)
    threads: list[threading.Thread] = []

    def blocking(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        if not release.wait(timeout=5):
            raise AssertionError(f"{name} ran on the event loop")
        return real(*args, **kwargs)

    async def release_soon() -> None:
        await asyncio.sleep(0)
        release.set()

    monkeypatch.setattr(target, name, blocking)
    result, _ = await asyncio.gather(call(), release_soon())
    monkeypatch.setattr(target, name, real)
    assert threads and threading.main_thread() not in threads
    return result


async def test_housekeeping_reads_and_prefix_search_run_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TraceStore(tmp_path)
    yesterday = TODAY - timedelta(days=1)
    _write(store, "abcdef", "run_start", day=yesterday)
    zipped = await _off_the_loop(lambda: store.ahousekeep(retention_days=30), monkeypatch,
                                 traces_module.shutil, "copyfileobj")
    assert zipped == (1, 0)
    found = await _off_the_loop(lambda: TraceStore(tmp_path).afind("abc"), monkeypatch,
                                Path, "iterdir")
    assert found is not None and found.trace_id == "abcdef"
    events = await _off_the_loop(lambda: store.aread("abcdef"), monkeypatch,
                                 traces_module, "_read_lines")
    assert [e["type"] for e in events] == ["run_start"]
    writer = await _off_the_loop(
        lambda: TraceStore(tmp_path).open_writer(trace_id="abcdef", run_id="r", day=yesterday),
        monkeypatch, traces_module, "_gunzip")
    writer.emit("resume")
    writer.close()
    assert [e["type"] for e in store.read("abcdef")] == ["run_start", "resume"]


async def test_an_interrupted_run_from_an_earlier_day_ends_in_its_own_trace_file(
    make_runtime: Any, tmp_path: Path
) -> None:
    """Start-up recovery appends run_end to the trace the run began days ago, not a new file."""
    from tests.fakes.scripted_model import ScriptedModel

    runtime = await make_runtime(ScriptedModel([]), KEEL_DATA_DIR=str(tmp_path / "data"))
    three_days_ago = TODAY - timedelta(days=3)
    writer = runtime.traces.writer(trace_id="t-old", run_id="r-old", day=three_days_ago)
    writer.emit("run_start", agent="assistant")
    writer.close()
    await runtime.runs.start(run_id="r-old", trace_id="t-old", agent="assistant", kind="chat",
                             budget_usd=1.0)
    await runtime.db.execute_write("UPDATE runs SET started_at = ? WHERE id = 'r-old'",
                                   (f"{three_days_ago.isoformat()}T10:00:00.000000Z",))
    fresh = TraceStore(runtime.traces.root)  # a restarted process remembers nothing
    runtime.traces = fresh
    assert await runtime.close_interrupted() == 1
    assert [e["type"] for e in fresh.read("t-old")] == ["run_start", "run_end"]
    assert not (fresh.root / TODAY.isoformat() / "t-old.jsonl").exists()


async def test_a_new_run_creates_its_trace_file_off_the_loop_with_one_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 15: creating a file can wait on the journal behind fsyncs, and a hop to a thread only
    # to create it cost each run ~1 ms before its model call: the loop neither opens the file
    # nor waits for it; the first write (a thread) creates it
    store = TraceStore(tmp_path)
    opened: list[tuple[str, str]] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append((self.name, threading.current_thread().name))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    writer = store.new_writer(trace_id="fresh1", run_id="r")
    assert opened == []  # nothing touched the disk on the loop
    writer.emit("run_start")
    await writer.adrain()  # what a model request waits for: the event is in the file
    assert {name for name, _ in opened} == {"fresh1.jsonl"}  # (the day's first: two tries)
    assert store.read("fresh1")[0]["type"] == "run_start"
    await writer.aclose()
    quiet = store.new_writer(trace_id="fresh2", run_id="r")  # the day's folder exists
    await quiet.aclose()  # nothing emitted: the file is still made, once
    assert [name for name, _ in opened].count("fresh2.jsonl") == 1
    assert all(thread != threading.main_thread().name for _, thread in opened)
    assert [e["seq"] for e in store.read("fresh1")] == [1]
    assert store.read("fresh2") == []
    assert store._live == {}  # both released: housekeeping may compress them


async def test_a_trace_that_cannot_be_created_costs_a_warning_not_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / TODAY.isoformat()).write_text("a file where the day's folder should be")
    store = TraceStore(tmp_path)
    writer = store.new_writer(trace_id="nowhere", run_id="r")
    writer.emit("run_start")
    writer.emit("model_request")
    await writer.adrain()
    await writer.aclose()
    warnings = [r.getMessage() for r in caplog.records if "nowhere" in r.getMessage()]
    assert len(warnings) == 1 and "could not write 2 event(s)" in warnings[0]
    assert store._live == {}


async def test_a_drain_waits_for_lines_the_sink_is_still_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sink thread takes the queued lines and then creates the file: a model request's
    # drain that found the queue empty meanwhile must still wait until the lines are written
    store = TraceStore(tmp_path)
    writer = store.new_writer(trace_id="slowdisk", run_id="r")
    taken, go_on = threading.Event(), threading.Event()
    real = writer._opened

    def slow_open() -> Any:
        taken.set()
        go_on.wait(5)
        return real()

    monkeypatch.setattr(writer, "_opened", slow_open)
    writer.emit("model_request")
    assert await asyncio.to_thread(taken.wait, 5)  # the sink holds the lines, file not made
    draining = asyncio.ensure_future(writer.adrain())
    await asyncio.sleep(0.05)
    assert not draining.done()
    go_on.set()
    await asyncio.wait_for(draining, 5)
    assert [e["type"] for e in store.read("slowdisk")] == ["model_request"]
    await writer.aclose()
