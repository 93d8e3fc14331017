"""A side-effecting tool for the kill-anywhere test, loaded by a keel subprocess through keel.toml
(``tool_modules = ["tests.e2e.sidefx_tools"]``).

``record_effect`` appends one line to the file named by ``KEEL_TEST_EFFECTS_FILE``, standing for
an external system that honours idempotency keys (as payment and messaging APIs do): it applies
an effect once per (effect, key) and answers a repeat with the first result. The key is what keel
hands a tool as the correlation token for side effects (``ctx.effect_scope``). So the file shows an
effect twice exactly when keel repeated it under a different key — e.g. recovery re-running a
message under a new request identity — which is the defect the test hunts; a same-key repeat is
keel doing its job.

Every call, applied or not, is also logged to ``<file>.calls`` so the test can report how often
keel called the tool at all.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pydantic import Field

from agents.tools import ToolArgs, ToolContext, tool

EFFECTS_FILE_VARIABLE = "KEEL_TEST_EFFECTS_FILE"


class EffectArgs(ToolArgs):
    effect: str = Field(description="The effect's name, exactly as the person wrote it.")


def effect_key(ctx: ToolContext) -> str:
    """The idempotency key keel gives a tool for its side effects (stable across the retries of
    one request: with ``ctx.run_id`` — the attempt — a kill after the effect and before keel
    stored its result made the retry apply it again, 4 times in one CI run of 30 trials)."""
    return ctx.effect_scope


@tool(description="Records one effect in the ledger. Use when the person asks to record "
                  "something. Returns what was recorded.", side_effects=True, timeout_s=10)
async def record_effect(args: EffectArgs, ctx: ToolContext) -> str:
    path = Path(os.environ[EFFECTS_FILE_VARIABLE])
    line = f"{args.effect}\t{effect_key(ctx)}\n"
    _append(path.with_name(path.name + ".calls"), line)
    _apply_once(path, line)  # a few bytes on a local disk: not worth a thread
    return f"recorded {args.effect}"


def _apply_once(path: Path, line: str) -> None:
    with path.open("a+", encoding="utf-8") as ledger:
        fcntl.flock(ledger, fcntl.LOCK_EX)
        ledger.seek(0)
        if line not in ledger.readlines():
            # one write() call: a SIGKILL cannot leave half a line behind
            os.write(ledger.fileno(), line.encode())


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
