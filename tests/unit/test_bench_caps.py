"""The bench's ``caps`` section (issue 13's figures in ``make bench``) runs, and each figure sits
beside a baseline that shows the attack biting: a bench whose baseline cannot fail proves
nothing."""

from __future__ import annotations

from bench import cost_caps
from bench.machine import machine_info
from bench.report import table


async def test_the_caps_section_measures_keel_beside_what_it_replaced() -> None:
    caps = await cost_caps.measure(runs=12, seed=3)
    for name in ("overall", "per_user"):
        keel, base = caps["daily"][name]["keel"], caps["daily"][name]["baseline"]
        assert 0.04 <= keel["billed_usd"] <= 0.05, keel
        assert abs(keel["billed_usd"] - keel["recorded_usd"]) < 1e-6
        assert base["billed_usd"] > 0.10, base  # checking before each call lets the crowd pass
    assert caps["adversarial"]["over_cap"] == 0 and caps["adversarial"]["model_calls"] > 0
    assert caps["hello"]["status"] == "completed" and caps["hello"]["billed_usd"] <= 0.01
    guarded, bare = caps["guard"]["keel"], caps["guard"]["baseline"]
    assert guarded["model_requests"] == 0 and guarded["statuses"] == {"skipped": 100}
    assert bare["model_requests"] >= 100 and bare["billed_usd"] > 0
    report = table({"mode": "full", "machine": machine_info(), "duration_s": 1.0, "caps": caps,
                    "notes": []})
    assert "| Target: 12 runs with hostile input" in report and "NOT met" not in report
