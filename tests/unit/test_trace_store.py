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


async def test_a_new_run_opens_its_trace_off_the_loop_with_one_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 15: creating a file can wait on the journal behind fsyncs; the loop must not wait
    store = TraceStore(tmp_path)
    opened: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    writer = await _off_the_loop(lambda: store.open_new(trace_id="fresh1", run_id="r"),
                                 monkeypatch, traces_module.TraceWriter, "__init__")
    writer.emit("run_start")
    writer.close()
    second = await store.open_new(trace_id="fresh2", run_id="r")  # the day's folder exists
    second.close()
    assert opened[-1].name == "fresh2.jsonl" and opened.count(opened[-1]) == 1
    assert [e["seq"] for e in store.read("fresh1")] == [1]
    assert store._live == {}  # both released: housekeeping may compress them


async def test_a_run_cancelled_while_its_trace_opens_leaves_no_file_open(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    gate = threading.Event()
    real = store.new_writer

    def slow(**kwargs: Any) -> Any:
        gate.wait(5)
        return real(**kwargs)

    store.new_writer = slow  # type: ignore[method-assign]
    task = asyncio.ensure_future(store.open_new(trace_id="cut", run_id="r"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    for _ in range(200):
        if store._live == {}:
            break
        await asyncio.sleep(0.01)
    assert store._live == {}  # opened in the thread after the cancel, then closed
