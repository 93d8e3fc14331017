"""`keel eval --from-ratings`: answers people rated in Telegram become golden-task candidates.

Each rated run is recorded from its trace as ``--record`` does (record.py) and written as
``<out>/<agent>/rated-<up|down>-<YYYYMMDD>-<trace8>.toml``: the name says how it was rated, when
and which trace it came from, and a comment at the top says what a reviewer should check (a 👎
candidate expects what the agent did, which the person judged wrong). A run already exported
(under any rating) is left alone unless ``force``; then its older file is replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.evals.record import RecordError, record_task, to_toml
from storage.ratings import RatedRun

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
LABELS = {"up": "👍", "down": "👎"}


@dataclass(frozen=True, kw_only=True)
class Candidate:
    rated: RatedRun
    agent: str
    name: str
    text: str
    """The golden task as TOML, after a review header of comments."""


def candidate_name(rated: RatedRun) -> str:
    day = rated.rated_at[:10].replace("-", "")
    return f"rated-{rated.rating}-{day}-{rated.trace_id[:8]}"


def build_candidate(rated: RatedRun, events: list[dict[str, Any]]) -> Candidate:
    """The golden-task candidate of one rated run from its trace's events."""
    agent, task = record_task(events)
    if not _SAFE_NAME.match(agent):
        raise RecordError(f"agent name {agent!r} cannot be a folder name")
    when = rated.rated_at[:16].replace("T", " ")
    said = f" ({rated.note})" if rated.note else ""
    task["description"] = (f"rated {LABELS[rated.rating]} by user {rated.user_id} at {when} "
                           f"UTC{said}; {task['description']}")
    header = [f"# Golden-task candidate from a rating: {LABELS[rated.rating]} by user "
              f"{rated.user_id} at {when} UTC, run {rated.run_id}, trace {rated.trace_id}."]
    if rated.note:
        header.append(f"# Their note: {' '.join(rated.note.split())}")
    if rated.rating == "down":
        header += ["# The person judged this answer WRONG, yet [expect] below holds what the agent",
                   "# did. Change it to what the agent should have done (the task then fails until",
                   "# the agent is fixed), or delete this file."]
    else:
        header += ["# The person judged this answer good: check that [expect] holds what matters",
                   "# (loosen the exact answer to output_contains if the wording may vary)."]
    return Candidate(rated=rated, agent=agent, name=candidate_name(rated),
                     text="\n".join(header) + "\n\n" + to_toml(task))


@dataclass
class Exported:
    written: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """Already exported (no ``force``): nothing was changed."""
    failed: list[dict[str, Any]] = field(default_factory=list)
    """No trace (gone with retention) or a trace that cannot become a task."""

    def as_json(self) -> dict[str, Any]:
        return {"written": self.written, "skipped": self.skipped, "failed": self.failed}


def export(rated_runs: list[RatedRun], read_trace: Callable[[str], list[dict[str, Any]]],
           root: Path, *, force: bool = False) -> Exported:
    """Write each rated run as a candidate under ``root/<agent>/``."""
    out = Exported()
    for rated in rated_runs:
        about = {"run_id": rated.run_id, "trace_id": rated.trace_id, "agent": rated.agent,
                 "rating": rated.rating, "user_id": rated.user_id, "rated_at": rated.rated_at}
        try:
            candidate = build_candidate(rated, read_trace(rated.trace_id))
        except FileNotFoundError:
            out.failed.append({**about, "reason": "its trace is gone (trace retention)"})
            continue
        except RecordError as exc:
            out.failed.append({**about, "reason": str(exc)})
            continue
        folder = root / candidate.agent
        before = sorted(folder.glob(f"rated-*-{rated.trace_id[:8]}.toml"))
        if before and not force:
            out.skipped.append({**about, "path": str(before[0]),
                                "reason": "exported before (--force replaces it)"})
            continue
        for old in before:
            old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{candidate.name}.toml"
        path.write_text(candidate.text, "utf-8")
        out.written.append({**about, "path": str(path), "replaced": [str(p) for p in before]})
    return out
