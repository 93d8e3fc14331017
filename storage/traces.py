"""Trace files: ``<data>/traces/YYYY-MM-DD/<trace_id>.jsonl``, one JSON event per line.

Events are appended in order by one writer thread per process (``_TraceSink``), not on the
event loop: an append that extends a file can wait on the file system's journal behind other
files' fsyncs (a run's trace is fsynced when it closes), and under a burst those waits stalled the
loop for hundreds of milliseconds (issue 15). The thread hands each line to the OS moments after
``emit``; a process killed mid-run leaves every event the thread wrote as a complete line (at most
the last few, still queued, are missing). Closing a trace writes what is queued and fsyncs it, and
reading a trace through the store first writes what this process has queued for it. Secrets are
scrubbed before a line is queued. Files of earlier days are gzipped (``.jsonl.gz``) and days past
the retention are deleted by ``TraceStore.housekeep()``.

Opening a trace never lists the directory: its file is derived from the trace id and the UTC day it
was first opened (which the runs table keeps as ``started_at``), so the cost is the same with ten
stored traces or thirty thousand. Only ``find`` by a short prefix and ``list`` walk the folders;
callers on the event loop use their ``a*`` variants, which run in a thread, as do housekeeping and
reads.

One lock per store orders writers against housekeeping: a file with a live writer is neither
gzipped nor deleted, and a file is gzipped only if nobody appended while it was being compressed.
When both ``<id>.jsonl`` and ``<id>.jsonl.gz`` exist (a crash between the two steps of a gzip or an
un-gzip), the ``.jsonl`` is the complete one.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import gzip
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from storage.lane import Lane

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
_SECRET_KEYS = {"authorization", "x-api-key", "api_key", "token", "bot_token"}
_PLAIN, _GZIP = ".jsonl", ".jsonl.gz"
_TRASH_PREFIX = ".trash-"
_RECENT_TRACES = 4096
"""Paths of traces this process opened, so reopening one (a delivery note after ``run_end``)
needs no guess about its day."""
_TAIL_CHUNK = 64 * 1024


_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f]')
"""Characters ``json.dumps`` writes as escapes: a secret with one does not appear in JSON as is."""
_SECRET_KEYS_JSON = tuple(f'"{key}"' for key in _SECRET_KEYS)


def keys_clean(line: str) -> bool:
    """The second half of ``Redactor.untouched``: no secret-ish key in the JSON ``line`` (a
    quoted name that only looks like one counts too)."""
    lowered = line.lower()
    return not any(key in lowered for key in _SECRET_KEYS_JSON)


class Redactor:
    """Replaces known secret values anywhere in an event, and drops values under secret-ish keys."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(s for s in secrets if s and len(s) >= 6)  # fixed: see untouched
        self._readable_in_json = not any(_JSON_ESCAPED.search(s) for s in self.secrets)

    def untouched(self, line: str) -> bool:
        """Whether ``scrub`` would change nothing in the value that ``line`` is the JSON of: no
        secret in it and no secret-ish key (a quoted name that only looks like one counts too).
        Looking at the JSON once is cheaper than walking every string of a long history (issue
        15: a run's first model request carries it all); where this says False, scrub decides."""
        return self.secret_free(line) and keys_clean(line)

    def secret_free(self, line: str) -> bool:
        """The first half of ``untouched``: no known secret shows in the JSON ``line``."""
        return self._readable_in_json and not any(secret in line for secret in self.secrets)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {
                (self.scrub(k) if isinstance(k, str) else k):
                    (REDACTED if str(k).lower() in _SECRET_KEYS else self.scrub(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value


class Encoded:
    """A value with its JSON made once, for an event field repeated unchanged run after run (a
    prefix's tools and system: ~6 KB to encode for every run, issue 15). ``emit`` writes the JSON
    as is when the line shows no secret, and scrubs ``value`` otherwise, like any field."""

    __slots__ = ("json", "keys_clean", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.json = json.dumps(value, ensure_ascii=False, default=_json_default)
        self.keys_clean = keys_clean(self.json)
        """Looked for once: lowering and searching ~6 KB of a prefix's tools and system for
        secret-ish keys was three quarters of ``untouched``'s cost in every run (28 of 41 µs;
        ~2-3% of the event loop in a 1,000-chat burst, issue 15)."""


class _TraceSink:
    """The thread that appends queued trace lines to their files, writer by writer, in order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[TraceWriter] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def schedule(self, writer: TraceWriter) -> None:
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="keel-traces", daemon=True)
                    thread.start()
                    self._thread = thread
        self._queue.put(writer)

    def _run(self) -> None:
        while True:
            _drain(self._queue.get())

    def flush_all(self) -> None:
        """Write everything queued, in the calling thread (at exit: the daemon thread stops)."""
        while True:
            try:
                writer = self._queue.get_nowait()
            except queue.Empty:
                return
            _drain(writer)


def _drain(writer: TraceWriter) -> None:
    try:
        writer.drain()
    except Exception:  # never let one trace stop every other trace's writes
        log.exception("trace %s: writing queued events failed", writer.path)


_SINK = _TraceSink()
atexit.register(_SINK.flush_all)

CLOSE_THREADS = 4
"""Threads that close (and fsync) finished traces, apart from the default executor: queued
there, a burst's fsyncs held up the ``open`` of every new run's trace behind them (a second
1,000-chat burst waited ~4 s between a run's start and its model call, issue 15)."""
DRAIN_THREADS = 2
"""Threads that write a run's queued lines while it waits (``TraceWriter.adrain``), apart from
the closing ones, so a model request never waits behind other traces' fsyncs."""
_pools: dict[str, Lane] = {}
_pools_lock = threading.Lock()


def _pool(name: str, threads: int) -> Lane:
    with _pools_lock:
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = Lane(threads, name)
        return pool


class TraceWriter:
    """Appends events of one run to its trace file. Thread-safe; ``emit`` never waits on the disk
    (``_TraceSink`` writes), ``close`` and ``drain`` do."""

    def __init__(self, path: Path, *, trace_id: str, run_id: str, redactor: Redactor,
                 on_close: Callable[[TraceWriter], None] | None = None, new: bool = False) -> None:
        self.path = path
        self.trace_id = trace_id
        self.run_id = run_id
        self._redactor = redactor
        self._lock = threading.Lock()
        """Guards the sequence and the queued lines (held for microseconds, never over I/O)."""
        self._io = threading.Lock()
        """Guards the file: whoever writes takes the queued lines and writes them under it, so
        lines reach the file in ``seq`` order whichever thread writes them."""
        self._pending: list[str] = []
        self._scheduled = False
        self._failed = False
        self._closed = False
        self._on_close = on_close
        self._file: TextIO | None = None
        self._ended = False
        if new:  # a fresh id: nothing to continue; the file is made by whoever writes first
            self._seq = 0
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, torn = _tail_state(path)
        self._file = file = path.open("a", encoding="utf-8")
        if torn:
            # A crash cut the last line short: end it, so the next event starts a line of its own
            # instead of being glued to the fragment (and lost with it when read back).
            file.write("\n")
            file.flush()

    @property
    def seq(self) -> int:
        return self._seq

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise ValueError(f"trace {self.trace_id} is closed")
            self._seq += 1
            head = {
                "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                "trace_id": self.trace_id,
                "run_id": self.run_id,
                "seq": self._seq,
                "type": type_,
            }
            redactor = self._redactor
            encoded = [key for key, value in payload.items() if type(value) is Encoded]
            if encoded:
                plain = {k: v for k, v in payload.items() if type(v) is not Encoded}
                line = json.dumps({**head, **plain}, ensure_ascii=False, default=_json_default)
                names = [json.dumps(key, ensure_ascii=False) for key in encoded]
                # secret-ish keys looked for part by part (a quoted key cannot span two parts
                # of the line: each is whole JSON), the encoded parts' once and for all
                clean = keys_clean(line) and all(keys_clean(name) and payload[key].keys_clean
                                                 for key, name in zip(encoded, names, strict=True))
                line = line[:-1] + "".join(
                    f", {name}: {payload[key].json}"
                    for key, name in zip(encoded, names, strict=True)) + "}"
                untouched = clean and redactor.secret_free(line)
                payload = {k: v.value if type(v) is Encoded else v for k, v in payload.items()}
            else:
                line = json.dumps({**head, **payload}, ensure_ascii=False, default=_json_default)
                untouched = redactor.untouched(line)
            event = {**head, **payload}
            if not untouched:
                event = {**head, **redactor.scrub(payload)}
                line = json.dumps(event, ensure_ascii=False, default=_json_default)
            self._pending.append(line)
            if not self._scheduled:
                self._scheduled = True
                _SINK.schedule(self)
            return event

    def drain(self) -> None:
        """Write the queued lines now (the sink thread does this on its own)."""
        with self._io:
            self._write_pending()

    def _opened(self) -> TextIO:
        """The trace's file, under ``_io``. A new trace's file is created here, by the first
        write (the sink's thread, a drain's or a close's), never on the event loop: creating a
        file can wait on the file system's journal behind other fsyncs (issue 15), and a hop
        to a thread only to create it cost every run ~1 ms before its first model call."""
        if self._file is None:
            try:
                self._file = self.path.open("a", encoding="utf-8")
            except FileNotFoundError:  # the day's first trace
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
        return self._file

    def _write_pending(self) -> None:
        with self._lock:
            lines, self._pending, self._scheduled = self._pending, [], False
        if not lines or self._ended:
            return
        try:
            file = self._opened()
            file.write("\n".join(lines) + "\n")
            file.flush()
        except (OSError, ValueError) as exc:
            self._warn(f"could not write {len(lines)} event(s): {exc}")

    def _warn(self, what: str) -> None:
        if not self._failed:  # once per trace: a full disk must not flood the log
            self._failed = True
            log.warning("trace %s: %s", self.path, what)

    async def adrain(self) -> None:
        """Write the queued lines and wait for it, off the event loop: before something leaves
        the process (a model request, a tool's side effect), its event is in the file, so a
        process killed after it still has it."""
        with self._lock:
            # nothing queued and nobody writing (the sink takes lines under ``_io`` and holds
            # it until they are in the file): every event emitted so far is written
            if not self._pending and not self._io.locked():
                return
        await _pool("keel-trace-drain", DRAIN_THREADS).submit(self.drain)

    async def aclose(self) -> None:
        """``close`` in a thread of its own pool (it waits for the disk)."""
        await _pool("keel-trace-close", CLOSE_THREADS).submit(self.close)

    def close(self) -> None:
        with self._io:
            if self._ended:
                return
            with self._lock:
                self._closed = True
            try:
                self._write_pending()
                self._ended = True
                try:
                    file = self._opened()  # a trace that had nothing to say still has its file
                    file.flush()
                    os.fsync(file.fileno())
                except OSError as exc:
                    self._warn(f"could not be kept: {exc}")
            finally:
                self._ended = True
                if self._file is not None:
                    self._file.close()
                if self._on_close is not None:
                    self._on_close(self)


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    return repr(value)


def _tail_state(path: Path) -> tuple[int, bool]:
    """(last seq, whether the file ends in a torn line), reading only the file's tail.

    A resumed run appends to its trace and continues numbering after the last complete line; a
    long trace is not read whole for that."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return 0, False
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0, False
        fh.seek(size - 1)
        torn = fh.read(1) != b"\n"
        chunk = _TAIL_CHUNK
        while True:
            start = max(0, size - chunk)
            fh.seek(start)
            lines = fh.read(size - start).split(b"\n")
            if start > 0:
                lines = lines[1:]  # the first piece may be the end of a longer line
            for raw in reversed(lines):
                try:
                    return int(json.loads(raw).get("seq", 0)), torn
                except (ValueError, AttributeError):
                    continue
            if start == 0:
                return 0, torn
            chunk *= 4


@dataclass(frozen=True)
class TraceFile:
    trace_id: str
    day: str
    path: Path


def _valid_id(trace_id: str) -> bool:
    return bool(trace_id) and "/" not in trace_id and "\\" not in trace_id and ".." not in trace_id


class TraceStore:
    def __init__(self, root: Path, *, redactor: Redactor | None = None) -> None:
        self.root = root
        self.redactor = redactor or Redactor()
        self._lock = threading.Lock()
        self._live: dict[Path, int] = {}
        self._writers: dict[Path, list[TraceWriter]] = {}
        """Open writers by file: reading a trace first writes what they have queued."""
        self._recent: OrderedDict[str, Path] = OrderedDict()

    def path_for(self, trace_id: str, day: date | None = None) -> Path:
        day = day or datetime.now(UTC).date()
        return self.root / day.isoformat() / f"{trace_id}{_PLAIN}"

    # ------------------------------------------------------------------ writing

    def writer(self, *, trace_id: str, run_id: str, day: date | None = None) -> TraceWriter:
        """Open a trace for appending, creating it if new. Never lists the trace directory.

        ``day`` is the UTC day the trace was first opened — for a run being continued, the day its
        run started (``runs.started_at``); default today. An existing trace is looked for only
        there, the day before (a run that started at midnight), and among the traces this process
        opened; a trace of another day opened without its ``day`` would start a second file.
        Un-gzips the trace if housekeeping compressed it: use ``open_writer`` on the event loop."""
        if not _valid_id(trace_id):
            raise ValueError(f"not a trace id: {trace_id!r}")
        with self._lock:
            path = self._locate(trace_id, day) or self.path_for(trace_id, day)
            if path.name.endswith(_GZIP):
                path = _gunzip(path)
            self._live[path] = self._live.get(path, 0) + 1
            self._remember(trace_id, path)
        try:
            self.drain(path)  # a writer still open here: its queued lines come before ours
            writer = TraceWriter(path, trace_id=trace_id, run_id=run_id,
                                 redactor=self.redactor, on_close=self._closed)
        except BaseException:
            self._release(path)
            raise
        with self._lock:
            self._writers.setdefault(path, []).append(writer)
        return writer

    def new_writer(self, *, trace_id: str, run_id: str) -> TraceWriter:
        """Start the trace of a fresh id (``agents.ids.new_id``: no file can have it yet): no
        look-up, no tail to read, and no I/O here: the file is created by the first write, off
        the event loop (``TraceWriter._opened``), with one ``open``."""
        if not _valid_id(trace_id):
            raise ValueError(f"not a trace id: {trace_id!r}")
        path = self.path_for(trace_id)
        with self._lock:
            self._live[path] = self._live.get(path, 0) + 1
            self._remember(trace_id, path)
        try:
            writer = TraceWriter(path, trace_id=trace_id, run_id=run_id,
                                 redactor=self.redactor, on_close=self._closed, new=True)
        except BaseException:
            self._release(path)
            raise
        with self._lock:
            self._writers.setdefault(path, []).append(writer)
        return writer

    async def open_writer(self, *, trace_id: str, run_id: str,
                          day: date | None = None) -> TraceWriter:
        """``writer`` in a thread: reopening an older trace may have to un-gzip it."""
        return await asyncio.to_thread(self.writer, trace_id=trace_id, run_id=run_id, day=day)

    def _locate(self, trace_id: str, day: date | None) -> Path | None:
        """The existing file of this trace, from at most six ``stat`` calls; None if it is new."""
        known = self._recent.get(trace_id)
        candidates = [known] if known is not None else []
        first = day or datetime.now(UTC).date()
        candidates += [self.path_for(trace_id, d) for d in (first, first - timedelta(days=1))]
        for plain in candidates:
            gz = plain.with_name(plain.name + ".gz")
            if plain.exists():
                return plain
            if gz.exists():
                return gz
        return None

    def _remember(self, trace_id: str, path: Path) -> None:
        self._recent[trace_id] = path
        self._recent.move_to_end(trace_id)
        while len(self._recent) > _RECENT_TRACES:
            self._recent.popitem(last=False)

    def _closed(self, writer: TraceWriter) -> None:
        with self._lock:
            open_ = [w for w in self._writers.get(writer.path, []) if w is not writer]
            if open_:
                self._writers[writer.path] = open_
            else:
                self._writers.pop(writer.path, None)
        self._release(writer.path)

    def drain(self, path: Path) -> None:
        """Write what this process's open writers of ``path`` have queued."""
        with self._lock:
            writers = list(self._writers.get(path, []))
        for writer in writers:
            writer.drain()

    def _release(self, path: Path) -> None:
        with self._lock:
            left = self._live.get(path, 0) - 1
            if left > 0:
                self._live[path] = left
            else:
                self._live.pop(path, None)

    # ------------------------------------------------------------------ reading

    def list(self, day: str | None = None) -> builtins.list[TraceFile]:
        """Every stored trace (or one day's), oldest day first. Walks the folders: use ``alist``
        on the event loop."""
        if not self.root.exists():
            return []
        if day is not None and not _is_day(day):
            return []
        days = [self.root / day] if day else sorted(p for p in self.root.iterdir()
                                                    if p.is_dir() and _is_day(p.name))
        out: builtins.list[TraceFile] = []
        for folder in days:
            if not folder.is_dir():
                continue
            seen: set[str] = set()
            for path in sorted(folder.iterdir(), key=_mtime):
                name = path.name
                for suffix in (_GZIP, _PLAIN):
                    trace_id = name[: -len(suffix)]
                    if name.endswith(suffix) and trace_id not in seen:
                        seen.add(trace_id)
                        out.append(TraceFile(trace_id, folder.name, _best(folder, trace_id)))
        return out

    def find(self, trace_id: str) -> TraceFile | None:
        """The trace with this id, or the only one whose id starts with it (a short prefix).

        A full id costs one ``stat`` per stored day; a prefix walks every file (``afind`` on the
        event loop)."""
        if not _valid_id(trace_id):
            return None
        with self._lock:
            known = self._recent.get(trace_id)
        if known is not None:
            path = _best(known.parent, trace_id)
            if path.exists():
                return TraceFile(trace_id, known.parent.name, path)
        if self.root.exists():
            folders = sorted((p for p in self.root.iterdir() if _is_day(p.name)), reverse=True)
            for folder in folders:
                path = _best(folder, trace_id)
                if path.exists():
                    return TraceFile(trace_id, folder.name, path)
        matches = [t for t in self.list() if t.trace_id.startswith(trace_id)]
        return matches[0] if len(matches) == 1 else None

    def read(self, trace_id: str) -> builtins.list[dict[str, Any]]:
        found = self.find(trace_id)
        if found is None:
            raise FileNotFoundError(f"no trace {trace_id!r} under {self.root}")
        self.drain(found.path)
        return list(_read_lines(found.path))

    async def alist(self, day: str | None = None) -> builtins.list[TraceFile]:
        return await asyncio.to_thread(self.list, day)

    async def afind(self, trace_id: str) -> TraceFile | None:
        return await asyncio.to_thread(self.find, trace_id)

    async def aread(self, trace_id: str) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self.read, trace_id)

    # ------------------------------------------------------------------ housekeeping

    def housekeep(self, *, retention_days: int, today: date | None = None,
                  min_idle_s: float = 0.0) -> tuple[int, int]:
        """Gzip files of days before today; delete days older than the retention. Returns counts.

        Files this store is writing are left alone; ``min_idle_s`` also leaves files written to
        that recently (another process may be writing them: ``keel db prune`` beside the bot).
        Blocking and possibly long (many files): ``ahousekeep`` on the event loop."""
        today = today or datetime.now(UTC).date()
        cutoff = today - timedelta(days=retention_days)
        zipped = deleted = 0
        if not self.root.exists():
            return (0, 0)
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(_TRASH_PREFIX):
                shutil.rmtree(folder, ignore_errors=True)  # a deletion a crash interrupted
                continue
            try:
                day = date.fromisoformat(folder.name)
            except ValueError:
                continue
            if day < cutoff:
                deleted += self._delete_day(folder)
            elif day < today:
                for stale in folder.glob("*.tmp"):
                    stale.unlink(missing_ok=True)  # a gzip or un-gzip a crash interrupted
                zipped += sum(1 for path in folder.glob(f"*{_PLAIN}")
                              if self._gzip(path, min_idle_s))
        return zipped, deleted

    async def ahousekeep(self, *, retention_days: int, today: date | None = None,
                         min_idle_s: float = 0.0) -> tuple[int, int]:
        return await asyncio.to_thread(self.housekeep, retention_days=retention_days, today=today,
                                       min_idle_s=min_idle_s)

    def _delete_day(self, folder: Path) -> int:
        with self._lock:
            if any(path.parent == folder for path in self._live):
                return 0  # a run continued from that day is still writing: next time
            trash = folder.with_name(f"{_TRASH_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}")
            folder.rename(trash)  # atomic: no writer can open a file in it from now on
        count = sum(1 for p in trash.iterdir() if p.name.endswith((_PLAIN, _GZIP)))
        shutil.rmtree(trash)
        return count

    def _gzip(self, path: Path, min_idle_s: float = 0.0) -> bool:
        """Compress one file outside the lock; swap it in only if nobody wrote to it meanwhile."""
        with self._lock:
            if path in self._live:
                return False
        try:
            before = path.stat()
        except FileNotFoundError:
            return False
        if min_idle_s and time.time() - before.st_mtime < min_idle_s:
            return False
        tmp = path.with_name(path.name + ".gz.tmp")
        with path.open("rb") as src, gzip.open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        with self._lock:
            try:
                after = path.stat()
            except FileNotFoundError:
                after = None
            if (path in self._live or after is None or after.st_size != before.st_size
                    or after.st_mtime_ns != before.st_mtime_ns):
                tmp.unlink(missing_ok=True)
                return False
            os.replace(tmp, path.with_name(path.name + ".gz"))
            path.unlink()
        return True


def _gunzip(gz: Path) -> Path:
    """A trace being continued after housekeeping compressed it goes back to plain JSONL."""
    plain = gz.with_name(gz.name[: -len(".gz")])
    tmp = plain.with_name(plain.name + ".tmp")
    with gzip.open(gz, "rb") as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp, plain)
    gz.unlink()
    return plain


def _best(folder: Path, trace_id: str) -> Path:
    plain = folder / f"{trace_id}{_PLAIN}"
    return plain if plain.exists() else folder / f"{trace_id}{_GZIP}"


def _is_day(name: str) -> bool:
    try:
        date.fromisoformat(name)
    except ValueError:
        return False
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                # A line torn by a crash mid-write; a continued run appended after it on a line
                # of its own, so what follows is intact.
                continue


def day_of(stored_at: str) -> date:
    """The UTC day of a stored ISO time (``runs.started_at``): the folder of that run's trace."""
    return date.fromisoformat(stored_at[:10])
