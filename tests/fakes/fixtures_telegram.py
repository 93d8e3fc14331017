"""pytest fixtures for the fake Telegram Bot API server (filled in by the harness work)."""
