"""The session-wide secrets check (issue 14): after the e2e tests, nothing they made keel write —
bot logs, trace files, databases — holds a bot token or an API key the fakes were given.

``install()`` (from tests/conftest.py) learns the secrets as the tests create them: every fake
Telegram's token, every API key a fake Anthropic server was called with, and the token and key
each test put in its environment. Each e2e test's temporary directory is remembered; when the
session ends, every file under those directories is searched (gzipped traces unpacked), and every
log record of keel's own loggers was searched as it was emitted. Any hit fails the session.

A test that writes a secret on purpose is listed in ``SECRET_WRITERS`` by its node id, with the
reason; its files are not searched.
"""

from __future__ import annotations

import gzip
import logging
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRET_WRITERS: dict[str, str] = {
    # node id (or a prefix of it): why the secret is in its files on purpose
}

MAX_FILE_BYTES = 64 * 1024 * 1024
MIN_SECRET_CHARS = 12  # shorter strings would match by chance (a bot id alone is not a secret)
KEEL_LOGGERS = ("bot", "agents", "storage")


@dataclass(frozen=True)
class Hit:
    test: str
    where: str
    secret: str  # which secret, by name; never the secret itself


@dataclass
class _State:
    secrets: dict[str, str]  # value → name
    dirs: list[tuple[str, Path]]
    log_hits: list[Hit]
    anthropic_servers: list[Any]
    current_test: str = "(outside a test)"


STATE = _State(secrets={}, dirs=[], log_hits=[], anthropic_servers=[])


def learn(value: str | None, name: str) -> None:
    """Remember a secret (and, for a bot token, its part after the colon) by name."""
    if not value:
        return
    for candidate, label in ((value, name), (value.partition(":")[2], f"{name} (secret part)")):
        if len(candidate) >= MIN_SECRET_CHARS:
            STATE.secrets.setdefault(candidate, label)


def forms(secret: str) -> list[bytes]:
    """How a secret can appear in a file: as is, or URL-encoded (a bot token in a logged URL)."""
    raw = secret.encode()
    quoted = urllib.parse.quote(secret, safe="").encode()
    return [raw] if quoted == raw else [raw, quoted]


def _readable(path: Path) -> bytes | None:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return data
    except (OSError, EOFError, gzip.BadGzipFile):
        return None


def scan(dirs: Iterable[tuple[str, Path]], secrets: Mapping[str, str]) -> list[Hit]:
    """Every (test, file, secret) where a file under a test's directory holds a secret."""
    patterns = [(form, name) for secret, name in secrets.items() for form in forms(secret)]
    hits: list[Hit] = []
    for test, root in dirs:
        if not root.exists():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = _readable(path)
            if data is None:
                continue
            for form, name in patterns:  # one hit per file: a token before its secret part
                if form in data:
                    hits.append(Hit(test, str(path), name))
                    break
    return hits


def written_on_purpose(test: str) -> bool:
    return any(test.startswith(prefix) for prefix in SECRET_WRITERS)


class _LogWatch(logging.Handler):
    """Checks each record of keel's own loggers, as emitted, for a known secret."""

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(KEEL_LOGGERS) or not STATE.secrets:
            return
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        for secret, name in STATE.secrets.items():
            if any(form.decode() in text for form in forms(secret)):
                STATE.log_hits.append(Hit(STATE.current_test, f"log record of {record.name}",
                                          name))
                return


def install() -> None:
    """Learn secrets from the fakes as tests create them, and watch keel's log records."""
    from tests.fakes.anthropic import FakeAnthropic
    from tests.fakes.telegram import FakeTelegram

    if getattr(FakeTelegram.__init__, "_keel_secret_scan", False):
        return
    telegram_init, anthropic_init = FakeTelegram.__init__, FakeAnthropic.__init__

    def telegram(self: FakeTelegram, *args: Any, **kwargs: Any) -> None:
        telegram_init(self, *args, **kwargs)
        learn(self.token, "a fake Telegram's bot token")

    def anthropic(self: FakeAnthropic, *args: Any, **kwargs: Any) -> None:
        anthropic_init(self, *args, **kwargs)
        STATE.anthropic_servers.append(self)

    telegram._keel_secret_scan = True  # type: ignore[attr-defined]
    FakeTelegram.__init__ = telegram  # type: ignore[method-assign]
    FakeAnthropic.__init__ = anthropic  # type: ignore[method-assign]
    watch_logs()


def watch_logs() -> None:
    """Watch keel's log records on the root logger (again, after a test's CLI run replaced the
    root logger's handlers)."""
    root = logging.getLogger()
    if not any(isinstance(h, _LogWatch) for h in root.handlers):
        root.addHandler(_LogWatch())


def before_test(test: str) -> None:
    STATE.current_test = test


def after_test(test: str, tmp_path: Path) -> None:
    """Learn what the test used (its environment, the keys its fake API saw) and remember its
    directory if it is an e2e test."""
    learn(os.environ.get("TELEGRAM_BOT_TOKEN"), "TELEGRAM_BOT_TOKEN of a test")
    learn(os.environ.get("ANTHROPIC_API_KEY"), "ANTHROPIC_API_KEY of a test")
    for server in STATE.anthropic_servers:
        for request in server.requests:
            learn(request.api_key, "an API key the fake Anthropic was called with")
    STATE.anthropic_servers.clear()
    if test.startswith("tests/e2e/") and not written_on_purpose(test):
        STATE.dirs.append((test, tmp_path))
    STATE.current_test = "(outside a test)"


def findings() -> list[Hit]:
    """Everything found: log records as they were emitted, then the files."""
    hits = [h for h in STATE.log_hits if not written_on_purpose(h.test)]
    return hits + scan(STATE.dirs, STATE.secrets)
