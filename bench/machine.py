"""What the numbers were measured on: CPU, cores, memory, Python, library versions, keel commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                             check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "bot", "agents", "storage")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "python_telegram_bot": _version("python-telegram-bot"),
        "anthropic": _version("anthropic"),
        "keel_commit": commit,
        "keel_tree_dirty": bool(dirty) if dirty is not None else None,
    }


def describe(info: dict[str, Any]) -> str:
    """One line for the README: the machine the numbers came from."""
    commit = (info.get("keel_commit") or "unknown")[:10]
    return (f"{info['cpu_model']}, {info['usable_cores'] or info['cores']} cores, "
            f"{info['ram_gb']} GB RAM, {info['os']}, Python {info['python']}, "
            f"python-telegram-bot {info['python_telegram_bot']}, anthropic {info['anthropic']}; "
            f"keel {commit}, {info['date']}")
