from storage.conversations import ConversationRepository
from storage.db import Database
from storage.idempotency import IdempotencyStore, canonical_args_hash
from storage.runs import RunRepository, RunTotals
from storage.usage import UsageDelta, UsageLedger


async def test_run_lifecycle(db: Database) -> None:
    runs = RunRepository(db)
    await runs.start(run_id="r1", trace_id="t1", agent="assistant", kind="cli", budget_usd=0.5)
    totals = RunTotals(cost_usd=0.1, steps=2, model_calls=3, input_tokens=10, output_tokens=5,
                       cache_read_tokens=7, cache_write_tokens=1)
    await runs.finish("r1", status="completed", detail=None, output="hi", totals=totals)
    record = await runs.get("t1")
    assert record is not None
    assert (record.status, record.cost_usd, record.steps, record.output) == ("completed", 0.1, 2, "hi")
    assert record.ended_at is not None


async def test_usage_ledger_sums_per_user_and_overall(db: Database) -> None:
    ledger = UsageLedger(db)
    await ledger.add(user_id=1, agent="a", delta=UsageDelta(cost_usd=0.25))
    await ledger.add(user_id=1, agent="a", delta=UsageDelta(cost_usd=0.25))
    await ledger.add(user_id=2, agent="b", delta=UsageDelta(cost_usd=1.0))
    await ledger.add(user_id=None, agent="b", delta=UsageDelta(cost_usd=2.0), day="2000-01-01")
    assert await ledger.spent(user_id=1) == 0.5
    assert await ledger.spent() == 1.5


async def test_idempotency_keeps_the_first_result_and_ignores_key_order(db: Database) -> None:
    store = IdempotencyStore(db)
    assert canonical_args_hash({"a": 1, "b": 2}) == canonical_args_hash({"b": 2, "a": 1})
    await store.put("r", "send", {"a": 1, "b": 2}, "first")
    await store.put("r", "send", {"b": 2, "a": 1}, "second")
    assert await store.get("r", "send", {"a": 1, "b": 2}) == "first"
    assert await store.get("other-run", "send", {"a": 1, "b": 2}) is None


async def test_history_append_compact_and_new_session(db: Database) -> None:
    repo = ConversationRepository(db)
    conv = await repo.get_or_create(100, None)
    assert (await repo.get_or_create(100, None)).id == conv.id
    topic = await repo.get_or_create(100, 7)
    assert topic.id != conv.id
    session = await repo.live_session(conv.id, "assistant")
    assert await repo.live_session(conv.id, "assistant") == session
    await repo.append(session, [
        ("user", [{"type": "text", "text": "one"}], 1),
        ("assistant", [{"type": "text", "text": "two"}], 1),
        ("user", [{"type": "text", "text": "three"}], 1),
    ])
    history = await repo.history(session)
    assert [m.content[0]["text"] for m in history] == ["one", "two", "three"]
    await repo.compact(session, [history[0].id, history[1].id],
                       [{"type": "text", "text": "summary"}], 1)
    after = await repo.history(session)
    assert [(m.kind, m.content[0]["text"]) for m in after] == [("summary", "summary"), ("turn", "three")]
    assert await repo.archive_sessions(conv.id) == 1
    assert await repo.live_session(conv.id, "assistant") != session


async def test_the_inbox_stores_a_batch_once_and_names_what_was_new(db: Database) -> None:
    from storage.inbox import Inbox, InboxItem

    def item(n: int) -> InboxItem:
        return InboxItem(update_id=n, chat_id=n % 7, thread_id=None, user_id=n,
                         payload={"update_id": n, "text": f"héllo {n} 'quoted' %s ?"},
                         status="received")

    inbox = Inbox(db)
    assert await inbox.store([item(n) for n in range(1, 101)]) == set(range(1, 101))
    # Telegram sends a batch again when the offset did not move: only the new ones are new
    assert await inbox.store([item(n) for n in range(90, 131)]) == set(range(101, 131))
    assert await inbox.store([]) == set()
    assert await db.fetchval("SELECT COUNT(*) FROM inbox") == 130
    stored = await inbox.get(42)
    assert stored is not None and stored.payload["text"] == "héllo 42 'quoted' %s ?"


async def test_a_live_session_is_created_once_however_many_ask(db: Database) -> None:
    import asyncio

    repo = ConversationRepository(db)
    conversation = await repo.get_or_create(1, None)
    ids = await asyncio.gather(*(repo.live_session(conversation.id, "a") for _ in range(20)))
    assert len(set(ids)) == 1
    assert await db.fetchval("SELECT COUNT(*) FROM sessions") == 1
    await repo.archive_sessions(conversation.id)
    assert await repo.live_session(conversation.id, "a") not in ids  # a new one after /new
