"""pytest fixtures for the fake Telegram Bot API server (see tests/fakes/README.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.fakes.telegram import FakeTelegram


@pytest_asyncio.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    """A FakeTelegram listening on 127.0.0.1 for the duration of one test.

    Fails the test afterwards if the fake itself crashed while answering a request."""
    server = FakeTelegram()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
    assert not server.crashes, f"the fake Telegram server crashed: {server.crashes}"
