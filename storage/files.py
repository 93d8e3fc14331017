"""Files people send and files agents make: one local copy each, found by its SHA-256.

A blob lives at ``<data>/files/<sha[:2]>/<sha>``, written once (to a temporary name, then renamed,
so a crash never leaves half a file under its final name). Conversation history, traces and the
outbox hold only a reference to it (its digest, media type and size), so the bytes are neither
stored twice nor fetched again: a Telegram file already copied (``telegram_unique_id``) is never
downloaded a second time, and a replay reads nothing at all (the recorded requests hold the
reference).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from storage.db import Database, Row, now_iso

FileOrigin = Literal["telegram", "agent"]


@dataclass(frozen=True, kw_only=True)
class StoredFile:
    sha256: str
    size: int
    media_type: str
    name: str | None
    origin: FileOrigin
    telegram_file_id: str | None = None
    telegram_unique_id: str | None = None


class Blobs:
    """The local copies, by digest. Synchronous and small: callers run it in a thread when the
    file is large."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"{sha256!r} is not a SHA-256 digest")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` (once) and return its digest."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists() and target.stat().st_size == len(data):
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def read(self, sha256: str) -> bytes | None:
        """The copy's bytes; None when it is gone (deleted by hand, or another machine's)."""
        try:
            data = self.path(sha256).read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def has(self, sha256: str) -> bool:
        try:
            return self.path(sha256).is_file()
        except ValueError:
            return False


class FileRepository:
    """Which blobs came from where (table ``files``, migration 0008_files)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def by_telegram(self, unique_id: str) -> StoredFile | None:
        row = await self.db.fetchone("SELECT * FROM files WHERE telegram_unique_id = ?",
                                     (unique_id,))
        return _file(row) if row is not None else None

    async def record(self, file: StoredFile) -> None:
        """Remember a stored blob (a second record of the same Telegram file is a no-op)."""
        await self.db.execute_write(
            "INSERT INTO files (sha256, size, media_type, name, origin, telegram_file_id,"
            " telegram_unique_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (file.sha256, file.size, file.media_type, file.name, file.origin,
             file.telegram_file_id, file.telegram_unique_id, now_iso()))


def _file(r: Row) -> StoredFile:
    return StoredFile(sha256=r["sha256"], size=r["size"], media_type=r["media_type"],
                      name=r["name"], origin=r["origin"], telegram_file_id=r["telegram_file_id"],
                      telegram_unique_id=r["telegram_unique_id"])
