"""Random ids (runs, traces, the model SDK's retry keys), made without a system call each."""

from __future__ import annotations

import os
import threading

ID_RANDOMNESS_BYTES = 4096
"""The operating system's randomness read at once for ids: 256 of them a read."""


class _Randomness:
    """``os.urandom`` read a block at a time and handed out in pieces. Each read gives the
    interpreter lock away, and in a burst the event loop then waited behind the database's
    threads to get it back: ``uuid.uuid4`` was 4% of the loop's time while 1,000 chats wrote at
    once (issue 15). The bytes are the same cryptographic randomness; a forked child starts
    with none of its parent's, so the two never hand out the same id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it at the fork
        self._block, self._at = b"", 0

    def take(self, size: int) -> bytes:
        with self._lock:
            if self._at + size > len(self._block):
                self._block, self._at = os.urandom(max(ID_RANDOMNESS_BYTES, size)), 0
            piece = self._block[self._at:self._at + size]
            self._at += size
            return piece


_randomness = _Randomness()


def new_id() -> str:
    """A random id, as ``uuid.uuid4`` makes it (122 random bits, version 4, RFC 4122)."""
    raw = bytearray(_randomness.take(16))
    raw[6] = raw[6] & 0x0F | 0x40  # the version
    raw[8] = raw[8] & 0x3F | 0x80  # the variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
