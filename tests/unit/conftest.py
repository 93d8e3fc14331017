"""Unit-test fixtures: a runtime over a temp database with the one shared scripted model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from agents.config import load_settings
from agents.runtime import RunRequest, Runtime
from tests.fakes.scripted_model import ScriptedModel


@pytest_asyncio.fixture
async def make_runtime(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., object]]:
    opened: list[Runtime] = []

    async def make(model: ScriptedModel, **env: str) -> Runtime:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-unit-test-key")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        runtime = await Runtime.open(load_settings(), model=model)
        opened.append(runtime)
        return runtime

    yield make
    for runtime in opened:
        await runtime.db.close()


def task(text: str) -> RunRequest:
    return RunRequest(agent="assistant", messages=[{"role": "user", "content": [
        {"type": "text", "text": text}]}], new_from=0)
