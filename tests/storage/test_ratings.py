"""storage/ratings.py on SQLite and PostgreSQL: an offer takes the run's person when the asker
is not given, a run keeps one rating row whatever the presses, and the export's filters."""

from storage.db import Database
from storage.ratings import RatingRepository, new_key


async def _run(db: Database, run_id: str, *, agent: str = "assistant",
               user_id: int | None = 7) -> None:
    await db.execute_write(
        "INSERT INTO runs (id, trace_id, agent, kind, user_id, status, budget_usd, started_at)"
        " VALUES (?, ?, ?, 'chat', ?, 'completed', 0.5, '2026-11-01T00:00:00.000000Z')",
        (run_id, f"trace-{run_id}", agent, user_id))


async def _offer(db: Database, run_id: str, *, agent: str = "assistant",
                 user_id: int | None = None) -> str:
    key = new_key()
    async with db.write() as conn:
        await RatingRepository.offer(conn, key=key, run_id=run_id, trace_id=f"trace-{run_id}",
                                     agent=agent, chat_id=-100, outbox_id=1, user_id=user_id)
    return key


async def test_an_offer_is_bound_to_the_asker_or_else_the_runs_person(db: Database) -> None:
    repo = RatingRepository(db)
    await _run(db, "r1", user_id=7)
    given = await repo.get_offer(await _offer(db, "r1", user_id=42))
    from_run = await repo.get_offer(await _offer(db, "r1"))
    assert given is not None and from_run is not None
    assert (given.user_id, from_run.user_id) == (42, 7)
    assert (from_run.chat_id, from_run.outbox_id, from_run.trace_id) == (-100, 1, "trace-r1")
    assert await repo.get_offer("nope") is None
    assert len(new_key().encode()) <= 16


async def test_a_second_press_changes_the_rating_and_never_adds_a_row(db: Database) -> None:
    repo = RatingRepository(db)
    await _run(db, "r1")
    offer = await repo.get_offer(await _offer(db, "r1"))
    assert offer is not None
    assert await repo.rate(offer, user_id=7, rating="up") is False
    assert await repo.set_note("r1", "good, but long")
    assert await repo.rate(offer, user_id=1, rating="down") is True
    assert await db.fetchval("SELECT count(*) FROM ratings") == 1
    rated = await repo.get("r1")
    assert rated is not None
    assert (rated.rating, rated.user_id, rated.note) == ("down", 1, "good, but long")


async def test_rated_runs_filter_by_rating_time_and_agent(db: Database) -> None:
    repo = RatingRepository(db)
    for run_id, agent, rating in (("a", "assistant", "up"), ("b", "support", "down"),
                                  ("c", "support", "up")):
        await _run(db, run_id, agent=agent)
        offer = await repo.get_offer(await _offer(db, run_id, agent=agent))
        assert offer is not None
        await repo.rate(offer, user_id=7, rating=rating)  # type: ignore[arg-type]
    assert [r.run_id for r in await repo.rated()] == ["a", "b", "c"]
    assert [r.run_id for r in await repo.rated(rating="down")] == ["b"]
    assert [r.run_id for r in await repo.rated(agent="support", rating="up")] == ["c"]
    assert await repo.rated(since="2999-01-01") == []
    assert len(await repo.rated(since="2000-01-01")) == 3
