"""Trace files: ``<data>/traces/YYYY-MM-DD/<trace_id>.jsonl``, one JSON event per line.

Events are appended and flushed as they happen, so a process killed mid-run leaves every event it
wrote as a complete line. Secrets are scrubbed before a line is written. Files of earlier days are
gzipped (``.jsonl.gz``) and files past the retention are deleted by ``TraceStore.housekeep()``.
"""

from __future__ import annotations

import builtins
import gzip
import json
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REDACTED = "[redacted]"
_SECRET_KEYS = {"authorization", "x-api-key", "api_key", "token", "bot_token"}


class Redactor:
    """Replaces known secret values anywhere in an event, and drops values under secret-ish keys."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {
                k: (REDACTED if str(k).lower() in _SECRET_KEYS else self.scrub(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value


class TraceWriter:
    """Appends events of one run to its trace file. Thread-safe; every line flushed at once."""

    def __init__(self, path: Path, *, trace_id: str, run_id: str, redactor: Redactor) -> None:
        self.path = path
        self.trace_id = trace_id
        self.run_id = run_id
        self._redactor = redactor
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq = _last_seq(path)
        self._file = path.open("a", encoding="utf-8")

    @property
    def seq(self) -> int:
        return self._seq

    def emit(self, type_: str, **payload: Any) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            event = {
                "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                "trace_id": self.trace_id,
                "run_id": self.run_id,
                "seq": self._seq,
                "type": type_,
                **self._redactor.scrub(payload),
            }
            line = json.dumps(event, ensure_ascii=False, default=_json_default)
            self._file.write(line + "\n")
            self._file.flush()
            return event

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


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


def _last_seq(path: Path) -> int:
    """A resumed run appends to its trace; continue numbering after the last complete line."""
    if not path.exists():
        return 0
    last = 0
    for event in _read_lines(path):
        last = max(last, int(event.get("seq", 0)))
    return last


@dataclass(frozen=True)
class TraceFile:
    trace_id: str
    day: str
    path: Path


class TraceStore:
    def __init__(self, root: Path, *, redactor: Redactor | None = None) -> None:
        self.root = root
        self.redactor = redactor or Redactor()

    def path_for(self, trace_id: str, day: date | None = None) -> Path:
        day = day or datetime.now(UTC).date()
        return self.root / day.isoformat() / f"{trace_id}.jsonl"

    def writer(self, *, trace_id: str, run_id: str, day: date | None = None) -> TraceWriter:
        existing = self.find(trace_id)
        if existing is not None and existing.path.suffix == ".jsonl":
            path = existing.path  # a resumed run keeps appending to its own file
        else:
            path = self.path_for(trace_id, day)
        return TraceWriter(path, trace_id=trace_id, run_id=run_id, redactor=self.redactor)

    def list(self, day: str | None = None) -> builtins.list[TraceFile]:
        if not self.root.exists():
            return []
        days = [self.root / day] if day else sorted(p for p in self.root.iterdir() if p.is_dir())
        out: builtins.list[TraceFile] = []
        for folder in days:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime):
                name = path.name
                for suffix in (".jsonl.gz", ".jsonl"):
                    if name.endswith(suffix):
                        out.append(TraceFile(name[: -len(suffix)], folder.name, path))
        return out

    def find(self, trace_id: str) -> TraceFile | None:
        """The trace with this id, or the only one whose id starts with it (a short prefix)."""
        if not trace_id or "/" in trace_id or ".." in trace_id:
            return None
        if self.root.exists():
            for folder in sorted(self.root.iterdir(), reverse=True):
                for suffix in (".jsonl", ".jsonl.gz"):
                    path = folder / f"{trace_id}{suffix}"
                    if path.exists():
                        return TraceFile(trace_id, folder.name, path)
        matches = [t for t in self.list() if t.trace_id.startswith(trace_id)]
        return matches[0] if len(matches) == 1 else None

    def read(self, trace_id: str) -> builtins.list[dict[str, Any]]:
        found = self.find(trace_id)
        if found is None:
            raise FileNotFoundError(f"no trace {trace_id!r} under {self.root}")
        return list(_read_lines(found.path))

    def housekeep(self, *, retention_days: int, today: date | None = None) -> tuple[int, int]:
        """Gzip files of days before today; delete days older than the retention. Returns counts."""
        today = today or datetime.now(UTC).date()
        cutoff = today - timedelta(days=retention_days)
        zipped = deleted = 0
        if not self.root.exists():
            return (0, 0)
        for folder in sorted(self.root.iterdir()):
            try:
                day = date.fromisoformat(folder.name)
            except ValueError:
                continue
            if day < cutoff:
                deleted += sum(1 for _ in folder.iterdir())
                shutil.rmtree(folder)
            elif day < today:
                for path in folder.glob("*.jsonl"):
                    with path.open("rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    path.unlink()
                    zipped += 1
        return zipped, deleted


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
                # A torn last line from a crash mid-write: everything before it is intact.
                break
