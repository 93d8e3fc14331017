"""pytest fixtures for the fake Anthropic Messages API server (tests/fakes/anthropic.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.fakes.anthropic import FakeAnthropic


@pytest_asyncio.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    """A started FakeAnthropic on 127.0.0.1 (ephemeral port), default models, any non-empty key."""
    server = FakeAnthropic()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
