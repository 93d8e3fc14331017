"""pytest fixtures for the fake Anthropic Messages API server (filled in by the harness work)."""
