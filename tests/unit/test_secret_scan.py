"""The session's secrets check (tests/secret_scan.py, issue 14) finds a secret wherever keel
could write one — a SQLite row, a gzipped trace, a URL-encoded token in a log, a log record of
keel's own loggers — and stays quiet on clean files and for tests listed as writing one on
purpose."""

from __future__ import annotations

import gzip
import logging
import sqlite3
from pathlib import Path

import pytest

from tests import secret_scan

TOKEN = "987654321:AAScanTestSecret_Zq1Xw2Ce3Vr4Bt5"
KEY = "sk-ant-scan-test-Lm9Nk8Jh7Gf6"


def _secrets() -> dict[str, str]:
    saved = dict(secret_scan.STATE.secrets)
    secret_scan.STATE.secrets.clear()
    secret_scan.learn(TOKEN, "bot token")
    secret_scan.learn(KEY, "API key")
    learned = dict(secret_scan.STATE.secrets)
    secret_scan.STATE.secrets.clear()
    secret_scan.STATE.secrets.update(saved)
    return learned


def test_a_secret_is_found_in_a_database_a_gzipped_trace_and_a_log(tmp_path: Path) -> None:
    secrets = _secrets()
    assert set(secrets.values()) == {"bot token", "bot token (secret part)", "API key"}
    leaky = tmp_path / "leaky" / "data"
    (leaky / "traces" / "2026-11-30").mkdir(parents=True)
    db = sqlite3.connect(leaky / "keel.sqlite3")
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (f"key={KEY}",))
    db.commit()
    db.close()
    (leaky / "traces" / "2026-11-30" / "x.jsonl.gz").write_bytes(
        gzip.compress(f'{{"token": "{TOKEN.split(":")[1]}"}}\n'.encode()))
    (leaky / "bot.log").write_text(f"GET /bot{TOKEN.replace(':', '%3A')}/getMe\n")
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "bot.log").write_text("nothing to see: 987654321 and sk-ant-...\n")

    hits = secret_scan.scan([("t::leaky", leaky), ("t::clean", clean)], secrets)
    found = {(Path(h.where).name, h.secret) for h in hits}
    assert ("keel.sqlite3", "API key") in found
    assert ("x.jsonl.gz", "bot token (secret part)") in found
    assert ("bot.log", "bot token") in found
    assert all(h.test == "t::leaky" for h in hits)
    assert all(KEY not in str(h) and TOKEN not in str(h) for h in hits)  # reports name it only


def test_keel_log_records_are_watched_and_others_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    state = secret_scan._State(secrets=_secrets(), dirs=[], log_hits=[], anthropic_servers=[],
                               current_test="t::logs")
    monkeypatch.setattr(secret_scan, "STATE", state)
    logging.getLogger("bot.service").error("delivery failed for %s", TOKEN)
    logging.getLogger("httpx").error("request to /bot%s", TOKEN)  # not keel's line
    assert [(h.test, h.secret) for h in state.log_hits] == [("t::logs", "bot token")]


def test_a_test_that_writes_a_secret_on_purpose_is_left_out(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(secret_scan.SECRET_WRITERS, "tests/e2e/test_x.py::test_env",
                        "writes .env on purpose")
    state = secret_scan._State(secrets=_secrets(), dirs=[], log_hits=[], anthropic_servers=[])
    monkeypatch.setattr(secret_scan, "STATE", state)
    (tmp_path / ".env").write_text(f"TELEGRAM_BOT_TOKEN={TOKEN}\n")
    secret_scan.after_test("tests/e2e/test_x.py::test_env", tmp_path)
    secret_scan.after_test("tests/unit/test_y.py::test_z", tmp_path)  # not an e2e test
    assert state.dirs == [] and secret_scan.findings() == []
    secret_scan.after_test("tests/e2e/test_x.py::test_other", tmp_path)
    assert [h.test for h in secret_scan.findings()] == ["tests/e2e/test_x.py::test_other"]
