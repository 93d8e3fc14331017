"""Roles and the gate without Telegram: who the owner is, who may change whom, what survives a
restart, and the once-a-day notice to strangers."""

from __future__ import annotations

import pytest
import pytest_asyncio

from agents.config import Settings, load_settings
from bot.access import Access, AccessRefused, scope_for, startup_hint
from storage.db import Database
from storage.runs import RunRepository
from tests.conftest import OpenDb


@pytest_asyncio.fixture
async def db(open_db: OpenDb) -> Database:
    """A migrated database, on SQLite and on PostgreSQL (one run each)."""
    return await open_db()


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_the_owner_is_the_first_allowed_id_as_written_unless_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch, KEEL_ALLOWED_USER_IDS="905, 31,7").owner_id == 905
    assert settings(monkeypatch, KEEL_OWNER_ID="42").owner_id == 42
    assert settings(monkeypatch, KEEL_OWNER_ID="", KEEL_ALLOWED_USER_IDS="").owner_id is None


def test_start_up_says_how_to_add_people(monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = startup_hint(settings(monkeypatch))
    assert nobody is not None and "KEEL_OWNER_ID" in nobody and "/allow" in nobody
    only_owner = startup_hint(settings(monkeypatch, KEEL_OWNER_ID="42"))
    assert only_owner is not None and "/allow ID" in only_owner
    assert startup_hint(settings(monkeypatch, KEEL_ALLOWED_USER_IDS="42,43")) is None


async def test_closed_by_default(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    access = Access(db, settings(monkeypatch))
    assert await access.role(1) is None and not await access.may(1)


async def test_roles_change_from_telegram_and_a_removal_survives_the_environment(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    config = settings(monkeypatch, KEEL_ALLOWED_USER_IDS="1,2,3")
    access = Access(db, config)
    assert [await access.role(i) for i in (1, 2, 3, 4)] == ["owner", "user", "user", None]
    with pytest.raises(AccessRefused):
        await access.allow(2, 4)  # users add nobody
    with pytest.raises(AccessRefused):
        await access.promote(2, 2)
    await access.promote(1, 2)
    await access.allow(2, 4)  # an admin adds a user
    await access.promote(1, 3)
    with pytest.raises(AccessRefused, match="Only the owner can remove an admin"):
        await access.deny(2, 3)
    with pytest.raises(AccessRefused, match="owner cannot be removed"):
        await access.deny(2, 1)
    await access.deny(1, 3)
    assert await access.role(3) is None

    restarted = Access(db, config)  # the environment still lists 3: the removal holds
    assert [await restarted.role(i) for i in (1, 2, 3, 4)] == ["owner", "admin", None, "user"]


async def test_a_stranger_is_told_once_a_day_even_across_a_restart(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    config = settings(monkeypatch)
    access = Access(db, config)
    assert [await access.first_reply_today(9) for _ in range(3)] == [True, False, False]
    assert await Access(db, config).first_reply_today(9) is False
    await db.execute_write("UPDATE stranger_replies SET day = '2000-01-01'")
    assert await Access(db, config).first_reply_today(9) is True


async def test_a_prefix_is_text_never_a_pattern_and_stays_in_scope(db: Database) -> None:
    runs = RunRepository(db)
    await runs.start(run_id="r-a", trace_id="abc123", agent="a", kind="chat", budget_usd=1,
                     user_id=1, chat_id=1)
    await runs.start(run_id="r-b", trace_id="abd456", agent="a", kind="chat", budget_usd=1,
                     user_id=2, chat_id=-5)
    mine = scope_for("user", user_id=2, chat_id=2, private=True)
    assert [r.id for r in await runs.visible(user_id=mine.user_id, chat_id=mine.chat_id,
                                             prefix="ab")] == ["r-b"]
    assert await runs.visible(user_id=mine.user_id, chat_id=mine.chat_id, prefix="abc") == []
    assert await runs.visible(user_id=None, chat_id=None, prefix="%") == []
    assert await runs.visible(user_id=None, chat_id=None, prefix="ab_") == []
    in_group = scope_for("owner", user_id=9, chat_id=-5, private=False)
    assert [r.id for r in await runs.visible(user_id=in_group.user_id,
                                             chat_id=in_group.chat_id)] == ["r-b"]


def test_doctor_shows_the_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.doctor import check

    found = [f.what for f in check(settings(monkeypatch, KEEL_ALLOWED_USER_IDS="77,5"))]
    assert any(what.startswith("owner: 77") for what in found), found
    monkeypatch.delenv("KEEL_ALLOWED_USER_IDS")
    found = [f.what for f in check(settings(monkeypatch))]
    assert any("no owner" in what for what in found), found
