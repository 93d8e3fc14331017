"""Small budgets say so once (issue 13): keel doctor (and start-up) warn when a cap cannot cover
one typical answer of its agent, and stay quiet when it can."""

from __future__ import annotations

import pytest

from agents.affordability import budget_warnings
from agents.config import load_settings
from agents.config_check import check_configuration
from bot.doctor import check


def warnings_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(_env_file=None)
    checked = check_configuration(settings)
    return budget_warnings(settings, checked.agents, checked.prices, checked.registry)


def test_default_caps_cover_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert warnings_for(monkeypatch) == []


def test_a_run_cap_below_one_answer_is_named_with_what_it_would_need(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = warnings_for(monkeypatch, KEEL_RUN_BUDGET_USD="0.002")
    assert any(line.startswith("agent 'assistant': its run budget of $0.0020 cannot cover one "
                               "answer (about $0.0") for line in lines)
    assert all("KEEL_RUN_BUDGET_USD" in line for line in lines)


def test_a_daily_cap_below_one_answer_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = warnings_for(monkeypatch, KEEL_DAILY_BUDGET_USD_PER_USER="0.001")
    assert len(lines) == 1 and lines[0].startswith("KEEL_DAILY_BUDGET_USD_PER_USER = $0.0010 "
                                                   "cannot cover one answer of any agent")


def test_doctor_shows_the_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_RUN_BUDGET_USD", "0.002")
    findings = check(load_settings(_env_file=None))
    assert any(f.level == "warn" and "cannot cover one answer" in f.what for f in findings)
