"""`/stats` sends a PNG chart of the last 14 days and `keel stats --json` prints the same
numbers (issue 20); nothing of the chart is loaded until someone asks."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest

from bot.chart import Canvas, render_png
from bot.stats import DayStats, Stats
from tests.e2e.conftest import BotWorld

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def png_size(data: bytes) -> tuple[int, int]:
    """Checks the PNG's structure (signature, chunk CRCs, inflatable data) and returns its size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        chunks.append(kind)
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height


async def test_stats_sends_a_png_whose_numbers_match_keel_stats_json(
        bot_world: BotWorld) -> None:
    w = bot_world
    for text in ("one", "two", "three"):
        w.telegram.inject_text(w.alice_chat, text)
        await w.telegram.next_bot_message(w.alice_chat.id, timeout=10)
    w.telegram.inject_text(w.alice_chat, "/stats")
    [document] = await w.telegram.wait_for(lambda: w.telegram.documents(w.alice_chat.id),
                                           timeout=10)
    assert document["filename"].endswith(".png")
    assert png_size(document["data"]) == (980, 760)

    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
           "KEEL_DATA_DIR": os.environ["KEEL_DATA_DIR"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "stats", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    numbers = json.loads(out)
    assert len(numbers["days"]) == 14 and numbers["total_runs"] == 3
    today = numbers["days"][-1]
    assert today["runs_by_status"] == {"completed": 3}
    assert set(today["spend_by_agent"]) == {"assistant"} and today["spend_usd"] > 0
    caption = document["message"].get("caption", "")
    assert f"{numbers['total_runs']} run(s), ${numbers['total_spend_usd']:.4f}" in caption, caption
    # the chart is drawn from the same numbers the command prints
    runtime = w.app.bot_data["runtime"]
    from bot.stats import collect

    assert (await collect(runtime.db)).as_json() == numbers


async def test_stats_in_a_group_sends_nothing_private(bot_world: BotWorld) -> None:
    w = bot_world
    group = w.telegram.group("Team")
    w.telegram.inject_text(group, "/stats", user=w.alice)
    reply = await w.telegram.next_bot_message(group.id, timeout=5)
    assert "only in a private chat" in reply["text"]
    assert w.telegram.documents(group.id) == []


def test_the_chart_draws_the_bars_it_is_given() -> None:
    days = [DayStats(f"2026-11-{d:02d}") for d in range(1, 15)]
    days[-1].spend_by_agent = {"assistant": 0.5}
    days[-1].runs_by_status = {"completed": 2}
    png = render_png(Stats(days=days))
    assert png_size(png) == (980, 760)
    assert render_png(Stats(days=days)) == png  # deterministic
    empty = render_png(Stats(days=[DayStats(f"2026-11-{d:02d}") for d in range(1, 15)]))
    assert empty != png
    canvas = Canvas(4, 2)
    canvas.rect(1, 0, 3, 1, (1, 2, 3))
    assert bytes(canvas.pixels[3:9]) == bytes([1, 2, 3, 1, 2, 3])


def test_nothing_of_the_chart_loads_at_start_up() -> None:
    code = ("import sys, bot.app, bot.commands, bot.cli; "
            "print('bot.chart' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False", out.stderr
