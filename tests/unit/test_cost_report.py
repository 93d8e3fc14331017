"""`/cost` and `keel cost`: spent, reserved and left from the daily ledger, scoped per person."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.cli_cost import render
from storage.connect import open_database
from storage.ledger import DailyCaps, Hold, Ledger
from storage.usage import UsageDelta

CAPS = DailyCaps(total_usd=1.0, per_user_usd=0.5, per_schedule_usd=0.2)


async def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEEL_DAILY_BUDGET_USD", "1.0")
    monkeypatch.setenv("KEEL_DAILY_BUDGET_USD_PER_USER", "0.5")
    monkeypatch.setenv("KEEL_DAILY_BUDGET_USD_PER_SCHEDULE", "0.2")
    from agents.config import load_settings

    db = await open_database(load_settings())
    ledger = Ledger(db)
    for user, schedule, spend, keep in ((1, None, 0.03, 0.02), (2, None, 0.05, 0.0),
                                        (None, "digest", 0.01, 0.0)):
        first = await ledger.hold(run_id=f"r{user}", agent="a", user_id=user, schedule=schedule,
                                  caps=CAPS, want_usd=spend, min_usd=0.0)
        assert isinstance(first, Hold)
        await ledger.settle(first, UsageDelta(cost_usd=spend))
        if keep:
            await ledger.hold(run_id=f"r{user}", agent="a", user_id=user, schedule=schedule,
                              caps=CAPS, want_usd=keep, min_usd=0.0)
    return ledger


async def test_a_person_sees_their_own_spend_reserved_and_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger = await seeded(tmp_path, monkeypatch)
    report = await ledger.report(CAPS)
    await ledger.db.close()
    mine = render(report, viewer=1, everyone=False, per_user_cap=0.5)
    assert mine[1] == "You: $0.0300 spent, $0.0200 reserved, $0.45 left of $0.50"
    assert len(mine) == 2 and "0.0500" not in "\n".join(mine)  # nobody else's figures
    everyone = "\n".join(render(report, viewer=1, everyone=True, per_user_cap=0.5))
    assert "Everyone: $0.0900 spent, $0.0200 reserved, $0.89 left of $1.00" in everyone
    assert "person 2: $0.0500 spent" in everyone and "schedule digest: $0.0100 spent" in everyone


def test_keel_cost_prints_the_ledger_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any,
) -> None:
    async def seed() -> None:
        ledger = await seeded(tmp_path, monkeypatch)
        await ledger.db.close()

    asyncio.run(seed())
    assert main(["cost", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["overall"] == {"spent_usd": 0.09, "reserved_usd": 0.02, "cap_usd": 1.0,
                              "left_usd": 0.89}
    assert out["users"]["1"]["reserved_usd"] == 0.02 and out["schedules"]["digest"]["left_usd"] == 0.19
    assert main(["cost", "--user", "2", "--json"]) == 0
    only = json.loads(capsys.readouterr().out)
    assert set(only["users"]) == {"2"} and "overall" not in only
