"""The Telegram bot application."""

from __future__ import annotations

from agents.config import Settings


def run_bot(settings: Settings) -> int:
    raise NotImplementedError("the Telegram bot lands with the Conversations issue")
