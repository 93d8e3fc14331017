"""The golden sets shipped in evals/ (the built-in assistant, and the support agent of
keel.example.toml) pass offline: `make test` runs them like any test."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("agent", "config"), [("assistant", None),
                                               ("support", "keel.example.toml")])
def test_shipped_golden_sets_pass(agent: str, config: str | None,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    if config:
        monkeypatch.setenv("KEEL_CONFIG", str(ROOT / config))
    code = main(["eval", agent, "--dir", str(ROOT / "evals")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{agent}/" in out and " 0 failed" in out
