"""Which process a running run belongs to, and whether that process is still alive.

A run marked ``running`` is either working in a live process (the bot, a ``keel agent run``, a
``keel escalation answer``) or was left behind by one that died. Start-up recovery must close only
the second kind: failing a live command-line run because the bot restarted beside it would cut
off work that is still going. Each run records its owner as ``host:pid:start`` — the process's
start time guards against a reused pid.

On another machine (PostgreSQL deployments) liveness cannot be checked from here; such runs are
left to their own host's recovery.
"""

from __future__ import annotations

import os
import socket
from functools import cache

HOST = socket.gethostname()


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


@cache
def this_process() -> str:
    pid = os.getpid()
    return f"{HOST}:{pid}:{_start_ticks(pid) or '-'}"


def is_alive(owner: str | None) -> bool:
    """True when ``owner`` names a process that is still running (on this host, other than this
    process); False when it is gone or unknown (older rows have no owner)."""
    if not owner or owner == this_process():
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host != HOST:
        return True  # another machine's run: not ours to close
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return ticks in ("-", "") or _start_ticks(pid) == ticks
