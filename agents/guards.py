"""Schedule guards: a cheap check before any model call that can end a fire ``skipped`` at $0.

A schedule names its guard in keel.toml (``guard = "mypackage.watch:page_changed"``): a Python
function, sync or async, called with a ``GuardContext`` before the run starts. What it returns
decides:

- ``False``: nothing new — the fire ends ``skipped``: no model call, no run, no message (or the
  schedule's ``guard_message``);
- ``True`` or ``None``: run as usual;
- a string (a fingerprint: a page's hash, a query's newest id, a file's mtime): nothing new when
  it equals the fingerprint this schedule's guard returned last time (kept in this process; the
  first fire after a start always runs).

A guard that raises lets the run go ahead (a broken guard must not silence a briefing) and is
logged.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agents.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GuardContext:
    """What a guard is told about the fire it decides on."""

    schedule: str
    agent: str
    scheduled: datetime
    task: str


def load_guard(spec: str) -> Callable[[GuardContext], Any]:
    """``"module:function"`` → the function; a ConfigError that says what is wrong otherwise."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"guard {spec!r} is not 'module:function' (e.g. 'mywatch:changed')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"guard {spec!r}: cannot import {module_name!r}: {exc}") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"guard {spec!r}: {module_name!r} has no function {attr!r}")
    return func


class Guards:
    """Runs schedules' guards and remembers each one's last fingerprint."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}
        self._loaded: dict[str, Callable[[GuardContext], Any]] = {}

    async def nothing_new(self, spec: str, ctx: GuardContext) -> str | None:
        """Why the fire can be skipped, or None when the run should go ahead."""
        try:
            func = self._loaded.get(spec) or load_guard(spec)
            self._loaded[spec] = func
            verdict = func(ctx)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:
            log.warning("guard %s of schedule %s failed (%s: %s); the run goes ahead", spec,
                        ctx.schedule, type(exc).__name__, exc)
            return None
        if verdict is False:
            return f"guard {spec}: nothing new"
        if isinstance(verdict, str):
            last = self._last.get(ctx.schedule)
            self._last[ctx.schedule] = verdict
            if last == verdict:
                return f"guard {spec}: nothing new since the last fire"
        return None
