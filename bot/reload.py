"""keel.toml reloads while the bot runs: on a change of the file (checked every few seconds) or on
/reload by the owner. A valid file swaps agents, prices and schedules at once; an invalid one is
refused with its reasons and the running configuration is kept."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from telegram.ext import Application, ContextTypes

from agents.config import Settings
from agents.config_check import describe
from agents.runtime import Runtime

log = logging.getLogger(__name__)

WATCH_EVERY_S = 3.0
"""How often the file's modification time and size are looked at (a stat, nothing more)."""

Stamp = tuple[int, int] | None


def stamp_of(path: Path | None) -> Stamp:
    """What tells a changed file: modification time (ns) and size; None when it is absent."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


App = Application[Any, Any, Any, Any, Any, Any]


def watch(app: App, *, start_scheduler: Callable[[App], Awaitable[None]] | None = None) -> None:
    """Remember the file as it is now and look at it again every WATCH_EVERY_S.
    ``start_scheduler`` starts the schedules when a reload brings the first ones (without it,
    they start at the next start)."""
    settings: Settings = app.bot_data["settings"]
    app.bot_data["config_stamp"] = stamp_of(settings.config_path)
    app.bot_data["start_scheduler"] = start_scheduler
    if app.job_queue is not None:
        app.job_queue.run_repeating(_look, interval=WATCH_EVERY_S, first=WATCH_EVERY_S,
                                    name="watch-keel-toml")


async def _look(context: ContextTypes.DEFAULT_TYPE) -> None:
    app = context.application
    settings: Settings = app.bot_data["settings"]
    stamp = stamp_of(settings.config_path)
    if stamp == app.bot_data.get("config_stamp"):
        return
    app.bot_data["config_stamp"] = stamp  # a refused file is reported once, not every look
    ok, report = await reload_configuration(app)
    (log.info if ok else log.warning)("%s", report)


async def reload_configuration(app: App) -> tuple[bool, str]:
    """Reload keel.toml now; (applied, a report for a person)."""
    settings: Settings = app.bot_data["settings"]
    runtime: Runtime = app.bot_data["runtime"]
    where = settings.config_path or "keel.toml"
    checked = runtime.reload()
    if checked.problems:
        return False, (f"{where} was not reloaded; the running configuration is kept. "
                       f"{describe(checked.problems)}")
    scheduler = app.bot_data.get("scheduler")
    added: list[str] = []
    removed: list[str] = []
    if scheduler is not None:
        added, removed = scheduler.replace_jobs(checked.jobs)  # no await since runtime.reload
    elif checked.jobs and app.bot_data.get("role", "all") == "all":
        start = app.bot_data.get("start_scheduler")
        if start is None:
            return True, (f"Reloaded {where}: {len(checked.agents)} agent(s); its first "
                          f"schedule(s) start when keel next starts.")
        await start(app)
        added = [job.name for job in checked.jobs]
    changes = "".join([f"; schedules added: {', '.join(added)}" if added else "",
                       f"; schedules removed: {', '.join(removed)}" if removed else ""])
    return True, (f"Reloaded {where}: {len(checked.agents)} agent(s), {len(checked.jobs)} "
                  f"schedule(s){changes}.")
