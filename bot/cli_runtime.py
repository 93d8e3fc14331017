"""`keel agent`, `keel chat`, `keel trace`, `keel schedule`: commands over the agent runtime."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Filled in as the runtime lands."""
