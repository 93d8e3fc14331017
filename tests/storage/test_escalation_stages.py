"""The escalation row as a state machine: guarded transitions, and the 0005 backfill."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import storage.migrations
from agents.escalation_flow import in_words
from storage.db import Database, now_iso
from storage.escalations import EscalationRepository
from storage.migrations import MIGRATIONS, migrate


async def _parked_run(db: Database, run_id: str, status: str = "waiting_human") -> None:
    # plain SQL over the columns every schema since 0002 has (the backfill test runs it on a
    # database as it was before 0005, which RunRepository.start no longer fits)
    await db.execute_write(
        "INSERT INTO runs (id, trace_id, agent, kind, status, budget_usd, started_at, state)"
        " VALUES (?, ?, 'assistant', 'cli', ?, 0.5, ?, '{}')",
        (run_id, f"t-{run_id}", status, now_iso()))


async def _stage(db: Database, key: str) -> str:
    return str(await db.fetchval("SELECT stage FROM escalations WHERE id = ?", (key,)))


async def test_each_transition_happens_once_and_only_from_its_stage(db: Database) -> None:
    await _parked_run(db, "r1")
    repo = EscalationRepository(db)
    e = await repo.create(run_id="r1", tool_use_id="tu", chat_id=None, thread_id=None,
                          reason="why", context="", options=["A", "B"], ttl=timedelta(hours=1))
    assert await _stage(db, e.id) == "pending"
    assert not await repo.claim(e.id)  # nothing to resume before an answer
    assert await repo.answer(e.id, answer="A", user_id=1, user_name="Ann")
    assert not await repo.answer(e.id, answer="B", user_id=2, user_name="Bo")  # first one wins
    assert (await repo.get(e.id)).answer == "A"  # type: ignore[union-attr]
    async with db.write() as conn:
        assert not await repo.expire_in(conn, e.id)  # answered: no longer expirable
    assert await repo.claim(e.id)
    assert not await repo.claim(e.id)  # a second resumer gets nothing
    async with db.write() as conn:
        assert await repo.finish_in(conn, e.id)
        assert not await repo.finish_in(conn, e.id)
    assert await _stage(db, e.id) == "done"


async def test_an_answer_after_expiry_changes_nothing(db: Database) -> None:
    await _parked_run(db, "r2")
    repo = EscalationRepository(db)
    e = await repo.create(run_id="r2", tool_use_id="tu", chat_id=None, thread_id=None,
                          reason="why", context="", options=["A"], ttl=timedelta(hours=1))
    async with db.write() as conn:
        assert await repo.expire_in(conn, e.id)
    assert not await repo.answer(e.id, answer="A", user_id=1, user_name="Ann")
    after = await repo.get(e.id)
    assert after is not None and after.stage == "expired" and after.answer is None
    # and a pending one past its time cannot be answered even before the expiry pass runs
    late = await repo.create(run_id="r2", tool_use_id="tu2", chat_id=None, thread_id=None,
                             reason="why", context="", options=["A"], ttl=timedelta(seconds=-1))
    assert not await repo.answer(late.id, answer="A", user_id=1, user_name="Ann")


async def test_migration_0005_backfills_stages_from_the_old_columns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(tmp_path / "old.sqlite3")
    await db.connect()
    try:
        before = [m for m in MIGRATIONS if int(m.name[:4]) < 5]
        with monkeypatch.context() as patch:  # a database as it was before 0005
            patch.setattr(storage.migrations, "MIGRATIONS", tuple(before))
            await migrate(db)
        await _parked_run(db, "parked")
        await _parked_run(db, "running", "running")
        await _parked_run(db, "finished", "completed")
        await _parked_run(db, "halted", "budget_exceeded")
        rows = [("e-pending", "parked", "tu", "pending"), ("e-old", "parked", "tu0", "answered"),
                ("e-parked", "parked", "tu1", "answered"), ("e-running", "running", "tu", "answered"),
                ("e-done", "finished", "tu", "answered"), ("e-expired", "finished", "x", "expired"),
                ("e-budget", "halted", "budget", "answered")]
        for i, (key, run, tool_use, status) in enumerate(rows):
            await db.execute_write(
                "INSERT INTO escalations (id, run_id, tool_use_id, reason, status, created_at,"
                " expires_at) VALUES (?, ?, ?, 'r', ?, ?, '2999-01-01')",
                (key, run, tool_use, status, f"2020-01-01T00:00:0{i}"))
        assert "0005_escalation_state" in await migrate(db)
        stages = {r["id"]: (r["stage"], r["kind"]) for r in
                  await db.fetchall("SELECT id, stage, kind FROM escalations")}
        assert stages == {
            "e-pending": ("pending", "question"),
            "e-old": ("done", "question"),        # an earlier question of a run asked again
            "e-parked": ("answered", "question"),  # its run is still parked: to resume
            "e-running": ("resumed", "question"),
            "e-done": ("done", "question"),
            "e-expired": ("expired", "question"),
            "e-budget": ("answered", "budget"),
        }
    finally:
        await db.close()


def test_durations_are_said_in_words() -> None:
    assert in_words(5) == "in 5 s"
    assert in_words(300) == "in 5 min"
    assert in_words(7200) == "in 2 h"
    assert in_words(5400) == "in 1 h 30 min"
    assert in_words(86_400) == "in 24 h"
    assert in_words(7 * 86_400) == "in 7 days"
    assert "0.00" not in in_words(5)


def test_an_escalation_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # `keel escalation answer -x2f… Approve` reads a leading dash as an option (CI failed once
    # on it: one token in 64 starts with "-")
    import secrets

    from storage import escalations

    drawn = iter(["-AbCdEfGhIjK", "_AbCdEfGhIjK"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert escalations.new_key() == "_AbCdEfGhIjK"


async def test_the_questions_pending_in_a_chat_are_read_by_that_chat_alone(db: Database) -> None:
    """Read on every private message: this chat's (and topic's) pending questions, oldest first;
    not another chat's, not another topic's, not an approval or a budget, not an answered one."""
    for n in range(6):
        await _parked_run(db, f"q{n}")
    repo = EscalationRepository(db)

    async def ask(run: str, chat: int, thread: int | None, kind: str = "question") -> str:
        e = await repo.create(run_id=run, tool_use_id="tu", chat_id=chat, thread_id=thread,
                              reason=run, context="", options=["A"], ttl=timedelta(hours=1),
                              kind=kind)  # type: ignore[arg-type]
        return e.id

    first = await ask("q0", 10, None)
    await ask("q1", 11, None)  # another chat
    await ask("q2", 10, 7)  # a topic of the same group
    await ask("q3", 10, None, kind="approval")
    answered = await ask("q4", 10, 0)  # thread 0 is no topic, as None
    assert await repo.answer(answered, answer="A", user_id=1, user_name="Ann")
    second = await ask("q5", 10, 0)
    assert [e.id for e in await repo.pending_questions(10, None)] == [first, second]
    assert [e.reason for e in await repo.pending_questions(10, 7)] == ["q2"]
    assert [e.reason for e in await repo.pending_questions(11, 0)] == ["q1"]
    assert await repo.pending_questions(12, None) == []
