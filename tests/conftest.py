"""Shared test set-up: the network guard, a clean environment, a data directory per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netguard

netguard.install()

pytest_plugins = ["tests.fakes.fixtures_telegram", "tests.fakes.fixtures_anthropic"]

# Settings read from the environment; a developer's real token or key must never leak into a test.
_KEEL_ENV_PREFIXES = ("KEEL_", "TELEGRAM_", "ANTHROPIC_")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_KEEL_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # so a developer's .env in the repo is never read by a test
    yield
