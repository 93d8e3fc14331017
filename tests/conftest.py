"""Shared test set-up: the network guard, a clean environment, a data directory per test, and the
database backends (SQLite, and PostgreSQL at KEEL_TEST_PG_URL) that storage tests run on."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from storage.db import Database
from storage.migrations import migrate
from storage.pg import PostgresDatabase, create_schema, drop_schema, redact
from tests import netguard, secret_scan

netguard.install()
secret_scan.install()  # issue 14: what the e2e tests make keel write holds no token or key

# Read before any test's clean environment drops every KEEL_ variable.
TEST_PG_URL = os.environ.get("KEEL_TEST_PG_URL") or "postgresql://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").lower() == "true"

pytest_plugins = ["tests.fakes.fixtures_telegram", "tests.fakes.fixtures_anthropic"]

# Settings read from the environment; a developer's real token or key must never leak into a test.
_KEEL_ENV_PREFIXES = ("KEEL_", "TELEGRAM_", "ANTHROPIC_")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(_KEEL_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # so a developer's .env in the repo is never read by a test
    secret_scan.before_test(request.node.nodeid)
    yield
    secret_scan.after_test(request.node.nodeid, tmp_path)  # its environment is still set here


@pytest.fixture(autouse=True)
def _isolate_logging() -> Iterator[None]:
    """A test that runs a CLI command in this process (``bot.cli.main``) reconfigures logging:
    the root logger's handlers are replaced by one writing to the sys.stderr of that moment,
    which pytest closes after the test. Every later record then ended in "--- Logging error ---"
    in another test's output. After each test, handlers writing to a closed stream go, and the
    secrets watch (tests/secret_scan.py) is put back if the reconfiguration dropped it."""
    yield
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for handler in list(lg.handlers):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                lg.removeHandler(handler)
    secret_scan.watch_logs()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Issue 14: a grep of the logs, traces and databases the e2e tests made finds no bot token
    and no API key (tests/secret_scan.py); any hit fails the session."""
    hits = secret_scan.findings()
    if not hits:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"SECRET LEAK: {h.secret} in {h.where} (test {h.test})" for h in hits]
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ------------------------------------------------------------------ database backends
#
# A test that takes ``backend`` (or ``open_db``) runs once on SQLite and once on PostgreSQL; each
# PostgreSQL run gets a schema of its own, dropped afterwards. Without a reachable server the
# PostgreSQL runs are skipped (and the session says so in one line) — except in CI (CI=true),
# where they fail: the PostgreSQL suite must never be skipped silently there.

_pg_problem: list[str | None] = []
_pg_skipped: list[str] = []


def _postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None: it can); asked once per session."""
    if not _pg_problem:
        try:
            psycopg.connect(TEST_PG_URL, connect_timeout=3).close()
            _pg_problem.append(None)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _pg_problem.append(f"cannot connect to {redact(TEST_PG_URL)}: {reason}")
    return _pg_problem[0]


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """The test server's URL; skips (fails in CI) when it cannot be reached."""
    problem = _postgres_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI (CI=true): {problem}", pytrace=False)
        _pg_skipped.append(request.node.nodeid)
        pytest.skip(f"PostgreSQL unavailable: {problem}")
    return TEST_PG_URL


@pytest_asyncio.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, empty schema for this test alone; dropped with everything in it afterwards."""
    name = f"keel_test_{uuid.uuid4().hex[:16]}"
    await create_schema(postgres_url, name)
    try:
        yield name
    finally:
        await drop_schema(postgres_url, name)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


OpenDb = Callable[..., Awaitable[Database]]


@pytest.fixture
def new_db(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Database]:
    """Makes unconnected Database objects on the test's backend, all on one store (one SQLite
    file, or one schema): two of them stand for two processes."""
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return lambda: PostgresDatabase(TEST_PG_URL, schema=schema)
    return lambda: Database(tmp_path / "keel.sqlite3")


@pytest_asyncio.fixture
async def open_db(new_db: Callable[[], Database]) -> AsyncIterator[OpenDb]:
    """Opens (and, by default, migrates) a database on the test's backend; closed afterwards."""
    opened: list[Database] = []

    async def open_one(*, migrated: bool = True) -> Database:
        db = new_db()
        await db.connect()
        opened.append(db)
        if migrated:
            await migrate(db)
        return db

    yield open_one
    for db in opened:
        await db.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _pg_skipped:
        terminalreporter.write_line(
            f"PostgreSQL: {len(_pg_skipped)} test(s) skipped — {_pg_problem[0]}; start the server"
            " or set KEEL_TEST_PG_URL (with CI=true they fail instead)")
