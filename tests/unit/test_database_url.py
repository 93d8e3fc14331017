"""KEEL_DATABASE_URL: unset, keel keeps SQLite in KEEL_DATA_DIR; a postgresql:// URL puts every
repository the runtime uses on PostgreSQL; anything else is one clear configuration error."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agents.config import load_settings
from agents.errors import ConfigError
from agents.runtime import Runtime
from storage.pg import PostgresDatabase
from tests.fakes.scripted_model import ScriptedModel, reply, tool_call
from tests.unit.conftest import task


def _in_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


async def test_a_run_on_postgresql_records_its_spend_there(
    make_runtime: Any, postgres_url: str, pg_schema: str,
) -> None:
    model = ScriptedModel(tool_call("get_current_time", {"timezone": "UTC"}), reply("Noon."))
    runtime: Runtime = await make_runtime(
        model, KEEL_DATABASE_URL=_in_schema(postgres_url, pg_schema))
    assert isinstance(runtime.db, PostgresDatabase)
    result = await runtime.run(replace(task("time?"), user_id=5))
    assert result.status == "completed"
    assert (await runtime.cost_report()).users[5].spent_usd == pytest.approx(result.cost_usd)
    stored = await runtime.db.fetchone("SELECT status, cost_usd FROM runs WHERE id = ?",
                                       (result.run_id,))
    assert stored is not None and stored["status"] == "completed"
    assert not (runtime.settings.data_dir / "keel.sqlite3").exists()


async def test_without_a_url_keel_stays_on_sqlite(make_runtime: Any) -> None:
    runtime: Runtime = await make_runtime(ScriptedModel())
    assert runtime.db.dialect == "sqlite"
    assert (runtime.settings.data_dir / "keel.sqlite3").exists()


def test_a_url_of_another_database_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_DATABASE_URL", "mysql://keel:hunter2@db/keel")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "KEEL_DATABASE_URL: must be a postgresql:// URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_the_database_password_is_among_the_secrets_kept_out_of_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEEL_DATABASE_URL", "postgresql://keel:s3cr3t-pw@db.internal/keel")
    settings = load_settings()
    assert "s3cr3t-pw" in settings.secrets()
    assert "s3cr3t-pw" not in repr(settings)
