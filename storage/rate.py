"""Telegram's limits for a whole deployment: token buckets kept in PostgreSQL.

One process paces itself with in-memory buckets (bot/delivery.py). Several processes (``keel
worker``s, each sending its own replies) must share Telegram's ~30 messages a second overall and
20 a minute per group, or together they overrun them and Telegram answers 429. A shared bucket is
one row: taking a token is one atomic ``UPDATE … RETURNING`` that refills by the time elapsed and
takes a token only when one is there (the row lock orders concurrent takers). It runs outside
keel's write lock — a send never waits behind a run's transaction — and costs one round trip per
message sent.
"""

from __future__ import annotations

import asyncio

from storage.db import Database

# Every process reads one clock, the database's: with each process's own, a machine whose clock
# runs a second ahead would refill a second's worth of sends the others already took. ``at_s``
# never goes back, so a statement that waited behind another's row lock refills nothing twice.
_CREATE = """
    INSERT INTO send_buckets (name, tokens, at_s)
    VALUES (?, ?, CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION))
    ON CONFLICT DO NOTHING"""
_TAKE = """
    WITH now AS (SELECT CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION) AS s)
    UPDATE send_buckets
       SET tokens = LEAST(?, tokens + GREATEST(0, now.s - at_s) * ?) - 1,
           at_s = GREATEST(at_s, now.s)
      FROM now
     WHERE name = ? AND LEAST(?, tokens + GREATEST(0, now.s - at_s) * ?) >= 1
    RETURNING tokens"""
_PEEK = """
    WITH now AS (SELECT CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION) AS s)
    SELECT LEAST(?, tokens + GREATEST(0, now.s - at_s) * ?) AS have
      FROM send_buckets, now WHERE name = ?"""


class SharedBucket:
    """``rate`` sends per ``per`` seconds, bursts up to ``rate``, for every process at once."""

    def __init__(self, db: Database, name: str, rate: float, per: float) -> None:
        if db.dialect != "postgresql":
            raise ValueError("shared send buckets live in PostgreSQL")
        self.db = db
        self.name = name
        self.capacity = float(rate)
        self.fill = rate / per
        self._created = False

    async def take(self) -> None:
        if not self._created:
            await self.db.fetchall(_CREATE, (self.name, self.capacity))
            self._created = True
        cap, fill = self.capacity, self.fill
        while True:
            if await self.db.fetchall(_TAKE, (cap, fill, self.name, cap, fill)):
                return
            row = await self.db.fetchone(_PEEK, (cap, fill, self.name))
            have = float(row["have"]) if row else 0.0
            await asyncio.sleep(max((1.0 - have) / fill, 0.005))
