"""The bench's reading of the bot's lag file (bench/instrumented.py ``read_lag``): every garbage
collection in the burst counts towards its total, only those of 10 ms or more are stalls."""

from __future__ import annotations

from pathlib import Path

from bench.instrumented import read_lag


def test_the_burst_counts_every_collection_and_only_long_ones_as_stalls(tmp_path: Path) -> None:
    lag = tmp_path / "lag"
    lag.write_text("\n".join([
        "ticks 10",
        "gc 0 99.0000 30.00 5",      # before the burst: not counted
        "gc 0 100.5000 1.25 0",
        "gc 0 101.0000 2.50 0",
        "gc 2 102.0000 12.00 900",
        "101.5000 60.0",             # a stall
        "gc 0 200.0000 40.00 0",     # after it
    ]) + "\n")
    read = read_lag(lag, 100.0, 150.0)
    assert read["gc_collections"] == 3 and read["gc_total_ms"] == 15.8
    assert read["gc_over_10ms"] == 1 and read["gc_max_ms"] == 12.0
    assert read["gc_longest_ms_generation_collected"] == [(12.0, "2", "900")]
    assert read["max_ms"] == 60.0 and read["over_50ms"] == 1
