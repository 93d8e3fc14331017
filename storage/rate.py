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
import time

from storage.db import Database

_CREATE = ("INSERT INTO send_buckets (name, tokens, at_s) VALUES (?, ?, ?)"
           " ON CONFLICT DO NOTHING")
_TAKE = ("UPDATE send_buckets SET tokens = LEAST(?, tokens + (? - at_s) * ?) - 1, at_s = ?"
         " WHERE name = ? AND LEAST(?, tokens + (? - at_s) * ?) >= 1 RETURNING tokens")
_PEEK = "SELECT tokens, at_s FROM send_buckets WHERE name = ?"


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
            await self.db.fetchall(_CREATE, (self.name, self.capacity, time.time()))
            self._created = True
        while True:
            now = time.time()
            taken = await self.db.fetchall(_TAKE, (self.capacity, now, self.fill, now, self.name,
                                                   self.capacity, now, self.fill))
            if taken:
                return
            row = await self.db.fetchone(_PEEK, (self.name,))
            tokens = float(row["tokens"]) if row else 0.0
            elapsed = time.time() - float(row["at_s"]) if row else 0.0
            short = max(0.0, 1.0 - min(self.capacity, tokens + elapsed * self.fill))
            await asyncio.sleep(max(short / self.fill, 0.005))
