"""Telegram's overall limit holds for a whole deployment (issue 16): two processes' senders take
from one bucket in PostgreSQL (storage/rate.py). With a bucket each, together they send twice the
rate and Telegram answers 429."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from telegram import Bot

from bot.delivery import ChunkSender
from bot.render import Chunk
from storage.migrations import migrate
from storage.pg import PostgresDatabase
from storage.rate import SharedBucket
from tests.conftest import TEST_PG_URL
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

RATE = 10  # the test's own "overall limit" per second, small to keep it quick
MESSAGES = 30  # per sender


async def _send_all(fake: FakeTelegram, shared: list[Any] | None) -> list[int]:
    """Two senders (two processes' worth: each its own database connection and Bot) send
    MESSAGES each at once to different private chats; returns the HTTP statuses Telegram gave."""
    chats = [fake.private_chat(fake.user(f"U{i}", id=9000 + i)) for i in range(2 * MESSAGES)]
    async with Bot(fake.token, base_url=fake.base_url) as bot_a, \
            Bot(fake.token, base_url=fake.base_url) as bot_b:
        senders = [ChunkSender(bot, global_rate=RATE, backoff_base_s=0.05,
                               shared=None if shared is None else shared[n])
                   for n, bot in enumerate((bot_a, bot_b))]
        await asyncio.gather(*(
            senders[i % 2].send(chat.id, Chunk(text=f"m{i}"), thread_id=None, reply_to=None,
                                markup=None)
            for i, chat in enumerate(chats)))
    return [call.status for call in fake.calls("sendMessage")]


async def test_two_processes_sharing_the_bucket_stay_under_the_overall_limit(
        fake_telegram: FakeTelegram, postgres_url: str, pg_schema: str) -> None:
    # One bucket lets through its burst plus a second's refill in any second: 2 × RATE. The fake
    # allows a quarter more, for the jitter between a token taken and its request arriving (on a
    # loaded machine a few sends taken just apart arrive together); two buckets send 4 × RATE.
    fake_telegram.enable_flood_control(overall=(2 * RATE + RATE // 2, 1.0))
    stores = [PostgresDatabase(TEST_PG_URL, schema=pg_schema) for _ in range(2)]
    for store in stores:
        await store.connect()
    try:
        await migrate(stores[0])
        shared = [lambda name, rate, per, db=db: SharedBucket(db, name, rate, per)
                  for db in stores]
        statuses = await _send_all(fake_telegram, shared)
    finally:
        for store in stores:
            await store.close()
    assert statuses.count(200) == 2 * MESSAGES
    assert 429 not in statuses


async def test_two_processes_pacing_alone_overrun_it(fake_telegram: FakeTelegram) -> None:
    # the counter-test: the same load with a bucket per process draws 429s
    fake_telegram.enable_flood_control(overall=(2 * RATE + RATE // 2, 1.0))
    statuses = await _send_all(fake_telegram, None)
    assert 429 in statuses


async def test_a_process_whose_clock_runs_ahead_takes_no_extra_sends(
        pg_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two machines share the bucket; the second's clock runs 5 s ahead. Refilled by each
    # process's own clock, its first take would refill 5 s worth (the whole burst again) right
    # after the first machine emptied the bucket. Refilled by the database's clock it waits its turn.
    stores = [PostgresDatabase(TEST_PG_URL, schema=pg_schema) for _ in range(2)]
    for store in stores:
        await store.connect()
    try:
        await migrate(stores[0])
        here, ahead = (SharedBucket(db, "global", RATE, 1.0) for db in stores)
        for _ in range(RATE):  # the burst, emptied by the first machine
            await here.take()
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 5.0)
        started = time.monotonic()
        for _ in range(RATE):
            await ahead.take()
        waited = time.monotonic() - started
    finally:
        for store in stores:
            await store.close()
    # RATE more sends need a second's refill (less what refilled while the first machine took)
    assert waited >= 0.7, f"{RATE} sends taken {waited:.2f} s after the bucket was emptied"
