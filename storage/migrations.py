"""Append-only, numbered schema migrations.

Never edit a migration that has shipped: add the next number. ``migrate()`` applies, in order, every
migration whose name is not yet in ``schema_migrations``, each in its own write transaction, and is a
no-op when everything is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import Database, now_iso
from storage.dialect import Dialect, postgres_ddl, split_statements


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_initial",
        """
        CREATE TABLE conversations (
            id            INTEGER PRIMARY KEY,
            chat_id       INTEGER NOT NULL,
            thread_id     INTEGER NOT NULL DEFAULT 0,   -- 0: no forum topic
            pinned_agent  TEXT,                         -- set by /agent, cleared by /auto
            current_agent TEXT,                         -- the router's last choice (a hint)
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL,
            UNIQUE (chat_id, thread_id)
        );

        -- One live session per (conversation, agent); /new archives it and a fresh one starts.
        CREATE TABLE sessions (
            id                 INTEGER PRIMARY KEY,
            conversation_id    INTEGER NOT NULL REFERENCES conversations(id),
            agent              TEXT NOT NULL,
            created_at         TEXT NOT NULL,
            archived_at        TEXT,
            input_tokens       INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens      INTEGER NOT NULL DEFAULT 0,
            compactions        INTEGER NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX sessions_live ON sessions (conversation_id, agent)
            WHERE archived_at IS NULL;

        -- Messages in Anthropic's shape (role + content blocks as JSON), in order per session.
        CREATE TABLE messages (
            id          INTEGER PRIMARY KEY,
            session_id  INTEGER NOT NULL REFERENCES sessions(id),
            seq         INTEGER NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content     TEXT NOT NULL,
            kind        TEXT NOT NULL DEFAULT 'turn' CHECK (kind IN ('turn', 'summary')),
            tokens      INTEGER NOT NULL DEFAULT 0,
            run_id      TEXT,
            archived_at TEXT,                         -- compacted away; kept for the record
            created_at  TEXT NOT NULL,
            UNIQUE (session_id, seq)
        );

        CREATE TABLE runs (
            id                 TEXT PRIMARY KEY,      -- UUID; the correlation token for tools
            trace_id           TEXT NOT NULL UNIQUE,
            agent              TEXT NOT NULL,
            kind               TEXT NOT NULL,         -- chat | scheduled | cli | resume
            user_id            INTEGER,
            chat_id            INTEGER,
            thread_id          INTEGER,
            session_id         INTEGER REFERENCES sessions(id),
            status             TEXT NOT NULL,         -- running | completed | budget_exceeded | ...
            status_detail      TEXT,
            output             TEXT,
            budget_usd         REAL NOT NULL,
            cost_usd           REAL NOT NULL DEFAULT 0,
            steps              INTEGER NOT NULL DEFAULT 0,
            model_calls        INTEGER NOT NULL DEFAULT 0,
            input_tokens       INTEGER NOT NULL DEFAULT 0,
            output_tokens      INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            state              TEXT,                  -- JSON needed to resume (waiting_human)
            started_at         TEXT NOT NULL,
            ended_at           TEXT
        );
        CREATE INDEX runs_by_start ON runs (started_at);
        CREATE INDEX runs_by_status ON runs (status);

        CREATE TABLE escalations (
            id          TEXT PRIMARY KEY,             -- short key used in callback_data
            run_id      TEXT NOT NULL REFERENCES runs(id),
            tool_use_id TEXT NOT NULL,
            chat_id     INTEGER,
            thread_id   INTEGER,
            message_id  INTEGER,                      -- the question's Telegram message
            reason      TEXT NOT NULL,
            context     TEXT NOT NULL DEFAULT '',
            options     TEXT NOT NULL DEFAULT '[]',   -- JSON list of strings
            status      TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'answered', 'expired', 'cancelled')),
            answer      TEXT,
            answered_by INTEGER,
            answered_by_name TEXT,
            answered_at TEXT,
            created_at  TEXT NOT NULL,
            expires_at  TEXT NOT NULL
        );
        CREATE INDEX escalations_pending ON escalations (status, expires_at);
        CREATE INDEX escalations_by_message ON escalations (chat_id, message_id);

        -- Results of side-effecting tool calls, stored before they are returned.
        CREATE TABLE idempotency_keys (
            run_id     TEXT NOT NULL,
            tool       TEXT NOT NULL,
            args_hash  TEXT NOT NULL,
            result     TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (run_id, tool, args_hash)
        );

        -- Spend per day (UTC), user (0 = no user: scheduled and CLI runs) and agent.
        CREATE TABLE usage_ledger (
            day                TEXT NOT NULL,
            user_id            INTEGER NOT NULL DEFAULT 0,
            agent              TEXT NOT NULL,
            cost_usd           REAL NOT NULL DEFAULT 0,
            input_tokens       INTEGER NOT NULL DEFAULT 0,
            output_tokens      INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            model_calls        INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, user_id, agent)
        );

        -- Telegram updates as received, deduplicated by update_id, for recovery after a crash.
        CREATE TABLE inbox (
            update_id   INTEGER PRIMARY KEY,
            chat_id     INTEGER,
            thread_id   INTEGER,
            user_id     INTEGER,
            payload     TEXT NOT NULL,
            status      TEXT NOT NULL DEFAULT 'received'
                        CHECK (status IN ('received', 'processing', 'done', 'ignored', 'failed')),
            run_id      TEXT,
            received_at TEXT NOT NULL,
            done_at     TEXT
        );
        CREATE INDEX inbox_open ON inbox (status);

        -- Replies to deliver; marked sent only when Telegram accepted them.
        CREATE TABLE outbox (
            id                  INTEGER PRIMARY KEY,
            chat_id             INTEGER NOT NULL,
            thread_id           INTEGER,
            reply_to_message_id INTEGER,
            kind                TEXT NOT NULL DEFAULT 'text',
            payload             TEXT NOT NULL,
            status              TEXT NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sent', 'failed')),
            attempts            INTEGER NOT NULL DEFAULT 0,
            last_error          TEXT,
            telegram_message_ids TEXT,
            inbox_update_id     INTEGER,
            run_id              TEXT,
            created_at          TEXT NOT NULL,
            sent_at             TEXT
        );
        CREATE INDEX outbox_pending ON outbox (status);

        -- One row per (schedule, local fire time): a DST repeat or a double fire runs once.
        CREATE TABLE schedule_fires (
            job        TEXT NOT NULL,
            local_time TEXT NOT NULL,
            run_id     TEXT,
            fired_at   TEXT NOT NULL,
            PRIMARY KEY (job, local_time)
        );

        -- Forum topics keel created for agents, so each is created once.
        CREATE TABLE agent_topics (
            agent      TEXT NOT NULL,
            chat_id    INTEGER NOT NULL,
            thread_id  INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (agent, chat_id)
        );
        """,
    ),
    Migration(
        "0002_durable",
        """
        -- The stored request a run serves ('tg:<update_id>', 'fire:<job>:<local time>',
        -- 'cli:<id>'): a retry after a crash is a new run of the same request, and side-effect
        -- idempotency keys derive from it, so a recovered run never repeats an effect.
        ALTER TABLE runs ADD COLUMN request_key TEXT;
        CREATE INDEX runs_by_request ON runs (request_key);

        -- The chunk handed to Telegram whose answer has not come back. Found set after a crash
        -- (or after a read timeout) the chunk may or may not have arrived: it is not resent.
        ALTER TABLE outbox ADD COLUMN inflight_chunk INTEGER;
        ALTER TABLE outbox ADD COLUMN unconfirmed_chunks INTEGER NOT NULL DEFAULT 0;
        -- A question's outbox row names its escalation, so its message id is stored whoever
        -- delivers it (the run's own sender, or recovery after a crash).
        ALTER TABLE outbox ADD COLUMN escalation_id TEXT;

        -- A schedule fire is the stored request of a scheduled run: claimed → done (outcome and
        -- post committed) or failed. Rows from before this migration are finished.
        ALTER TABLE schedule_fires ADD COLUMN status TEXT NOT NULL DEFAULT 'done';
        ALTER TABLE schedule_fires ADD COLUMN scheduled_at TEXT;
        CREATE INDEX schedule_fires_open ON schedule_fires (status);
        """,
    ),
    Migration(
        "0003_ledger",
        """
        -- Money held for model calls in flight: checked and written with the day's spend in one
        -- transaction, so concurrent runs cannot together pass a daily cap (storage/ledger.py).
        CREATE TABLE budget_holds (
            id          INTEGER PRIMARY KEY,
            run_id      TEXT NOT NULL,
            day         TEXT NOT NULL,               -- UTC, as usage_ledger.day
            user_id     INTEGER NOT NULL DEFAULT 0,  -- 0: no user (scheduled and CLI runs)
            schedule    TEXT NOT NULL DEFAULT '',    -- '': not a scheduled run
            agent       TEXT NOT NULL,
            amount_usd  REAL NOT NULL,
            created_at  TEXT NOT NULL
        );
        CREATE INDEX budget_holds_by_day ON budget_holds (day, user_id);
        CREATE INDEX budget_holds_by_run ON budget_holds (run_id);

        -- Settled spend per day and schedule, for per-schedule daily caps.
        CREATE TABLE schedule_spend (
            day         TEXT NOT NULL,
            schedule    TEXT NOT NULL,
            cost_usd    REAL NOT NULL DEFAULT 0,
            model_calls INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, schedule)
        );
        """,
    ),
    Migration(
        "0004_people",
        """
        -- People keel serves and their role. The owner (KEEL_OWNER_ID) is not stored: it comes
        -- from the environment. KEEL_ALLOWED_USER_IDS seeds 'user' rows once; 'removed' keeps a
        -- /deny across restarts even while the environment still lists the id.
        CREATE TABLE people (
            user_id    INTEGER PRIMARY KEY,
            role       TEXT NOT NULL CHECK (role IN ('admin', 'user', 'removed')),
            source     TEXT NOT NULL CHECK (source IN ('environment', 'telegram')),
            changed_by INTEGER,   -- who set the role from Telegram (NULL: the environment)
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );

        -- The UTC day a stranger was last told how to get access: at most one reply a day.
        CREATE TABLE stranger_replies (
            user_id INTEGER PRIMARY KEY,
            day     TEXT NOT NULL
        );
        """,
    ),
    Migration(
        "0005_escalation_state",
        """
        -- An escalation is one row moving pending -> answered -> resumed -> done, or expired.
        -- Every transition is guarded by the stage it leaves (storage/escalations.py), so a
        -- second answer, an answer after expiry or a second resumer changes nothing. The stage
        -- is the claim: whoever moves answered -> resumed (the bot, its start-up recovery or
        -- `keel escalation answer`) is the one process that resumes the run.
        ALTER TABLE escalations ADD COLUMN stage TEXT NOT NULL DEFAULT 'pending'
            CHECK (stage IN ('pending', 'answered', 'resumed', 'done', 'expired'));
        -- question (escalate_to_human), budget (continue or stop) or approval (a risky tool).
        ALTER TABLE escalations ADD COLUMN kind TEXT NOT NULL DEFAULT 'question'
            CHECK (kind IN ('question', 'budget', 'approval'));
        -- JSON list of user ids who may answer an approval; NULL: the owner and admins.
        ALTER TABLE escalations ADD COLUMN approvers TEXT;
        ALTER TABLE escalations ADD COLUMN resumed_at TEXT;
        ALTER TABLE escalations ADD COLUMN done_at TEXT;

        UPDATE escalations SET kind = 'budget' WHERE tool_use_id = 'budget';
        UPDATE escalations SET stage = 'expired' WHERE status IN ('expired', 'cancelled');
        -- Answered before this migration: still to resume while its run is parked (or was cut
        -- off while it went on), being resumed while its run runs, otherwise finished.
        UPDATE escalations SET stage = 'done' WHERE status = 'answered';
        UPDATE escalations SET stage = 'resumed' WHERE status = 'answered' AND run_id IN
            (SELECT id FROM runs WHERE status = 'running');
        UPDATE escalations SET stage = 'answered' WHERE status = 'answered' AND run_id IN
            (SELECT id FROM runs WHERE state IS NOT NULL AND (status IN ('waiting_human',
             'budget_exceeded') OR (status = 'failed' AND status_detail LIKE 'interrupted%')))
            AND created_at = (SELECT MAX(x.created_at) FROM escalations x
                              WHERE x.run_id = escalations.run_id);
        CREATE INDEX escalations_by_stage ON escalations (stage, expires_at);
        """,
    ),
    Migration(
        "0006_session_counts",
        """
        -- The exact input size (tokens, as the API billed it) of a session's last model call,
        -- how many history messages it covered and a digest of the prefix and those messages:
        -- the next turn's first reservation is that count plus a bound of what was added since.
        ALTER TABLE sessions ADD COLUMN anchor_tokens INTEGER;
        ALTER TABLE sessions ADD COLUMN anchor_messages INTEGER;
        ALTER TABLE sessions ADD COLUMN anchor_digest TEXT;
        """,
    ),
    Migration(
        "0007_run_owner",
        """
        -- The process working on a running run ('host:pid:start', storage/owner.py): start-up
        -- recovery closes only runs whose process is gone, never a live command-line run's.
        ALTER TABLE runs ADD COLUMN owner TEXT;
        """,
    ),
    Migration(
        "0011_outbox_lease",
        """
        -- Which process is delivering an outbox row, until when (storage/owner.py names it):
        -- with several processes (workers), a sweep never sends a row another is sending.
        ALTER TABLE outbox ADD COLUMN leased_by TEXT;
        ALTER TABLE outbox ADD COLUMN leased_until TEXT;
        """,
    ),
    Migration(
        "0010_memory",
        """
        -- Semantic memory: facts an agent learned about a person, kept apart from any prompt
        -- history (they survive compaction and /new). chat_id NULL: the person's fact in every
        -- chat; set: only in that chat. Each fact names the run and trace it came from.
        CREATE TABLE memory_facts (
            id          INTEGER PRIMARY KEY,
            user_id     INTEGER NOT NULL,
            chat_id     INTEGER,
            fact        TEXT NOT NULL,
            agent       TEXT,
            run_id      TEXT,
            trace_id    TEXT,
            created_at  TEXT NOT NULL
        );
        CREATE INDEX memory_facts_user ON memory_facts (user_id, id);

        -- /memory's delete buttons: callback data is the key; a press counts only from the
        -- fact's person, on the message the button was sent on.
        CREATE TABLE memory_buttons (
            key         TEXT PRIMARY KEY,
            fact_id     INTEGER NOT NULL,
            user_id     INTEGER NOT NULL,
            chat_id     INTEGER NOT NULL,
            message_id  INTEGER,
            created_at  TEXT NOT NULL
        );

        -- The owner's document corpus (keel index): files with their content hash (reindexed
        -- when it changes), their chunks, and each chunk's terms for lexical (BM25) search,
        -- in plain tables so the same queries serve SQLite and PostgreSQL.
        CREATE TABLE doc_files (
            path        TEXT PRIMARY KEY,
            sha256      TEXT NOT NULL,
            chunks      INTEGER NOT NULL,
            indexed_at  TEXT NOT NULL
        );
        CREATE TABLE doc_chunks (
            id          INTEGER PRIMARY KEY,
            path        TEXT NOT NULL,
            position    INTEGER NOT NULL,
            location    TEXT NOT NULL,
            heading     TEXT,
            text        TEXT NOT NULL,
            terms       INTEGER NOT NULL,
            UNIQUE (path, position)
        );
        CREATE TABLE doc_terms (
            term        TEXT NOT NULL,
            chunk_id    INTEGER NOT NULL,
            tf          INTEGER NOT NULL,
            PRIMARY KEY (term, chunk_id)
        );
        CREATE INDEX doc_terms_chunk ON doc_terms (chunk_id);
        """,
    ),
    Migration(
        "0009_conversation_model",
        """
        -- /model: the model an owner or admin chose for one chat or topic (NULL: the agent's
        -- own). Only priced models are stored; a run checks the price again before using it.
        ALTER TABLE conversations ADD COLUMN model TEXT;
        """,
    ),
    Migration(
        "0008_files",
        """
        -- Files people sent and files agents made: one local copy each under <data>/files/,
        -- named by its SHA-256 (storage/files.py). A Telegram file already copied is found by
        -- its file_unique_id and never downloaded again.
        CREATE TABLE files (
            id                 INTEGER PRIMARY KEY,
            sha256             TEXT NOT NULL,
            size               INTEGER NOT NULL,
            media_type         TEXT NOT NULL,
            name               TEXT,
            origin             TEXT NOT NULL CHECK (origin IN ('telegram', 'agent')),
            telegram_file_id   TEXT,
            telegram_unique_id TEXT UNIQUE,
            created_at         TEXT NOT NULL
        );
        CREATE INDEX files_sha256 ON files (sha256);
        """,
    ),
    Migration(
        "0012_send_buckets",
        """
        -- Telegram's limits shared by every process of a deployment (storage/rate.py): one token
        -- bucket per limit ('global', 'group:<chat id>'), refilled by the time elapsed.
        CREATE TABLE send_buckets (
            name   TEXT PRIMARY KEY,
            tokens REAL NOT NULL,
            at_s   REAL NOT NULL
        );
        """,
    ),
    Migration(
        "0014_run_cancel",
        """
        -- /cancel handled by another process than the one running the run (workers): the
        -- request is stored here and the run's own process cancels it (bot/workers.py).
        ALTER TABLE runs ADD COLUMN cancel_requested TEXT;
        """,
    ),
    Migration(
        "0013_ratings",
        """
        -- 👍 / 👎 under an agent's answer (bot/ratings.py): each answer's button key, bound to
        -- its run, chat, outbox row (the message it went out on) and the person who asked.
        CREATE TABLE rating_offers (
            key         TEXT PRIMARY KEY,
            run_id      TEXT NOT NULL,
            trace_id    TEXT NOT NULL,
            agent       TEXT NOT NULL,
            chat_id     INTEGER NOT NULL,
            outbox_id   INTEGER NOT NULL,
            user_id     INTEGER,
            created_at  TEXT NOT NULL
        );
        -- One row per rated run (a second press changes it); `keel eval --from-ratings` turns
        -- them into golden-task candidates.
        CREATE TABLE ratings (
            run_id      TEXT PRIMARY KEY,
            trace_id    TEXT NOT NULL,
            agent       TEXT NOT NULL,
            user_id     INTEGER NOT NULL,
            rating      TEXT NOT NULL CHECK (rating IN ('up', 'down')),
            note        TEXT,
            rated_at    TEXT NOT NULL
        );
        CREATE INDEX ratings_by_time ON ratings (rated_at);
        """,
    ),
    Migration(
        "0016_day_spend",
        """
        -- What was spent on each UTC day by everyone: the sum of that day's usage_ledger rows,
        -- kept by the same statements that write them (storage/usage.py). The overall daily
        -- cap reads this one row on every hold instead of summing a row per person and agent
        -- (13 ms a hold at 100,000 people on the single writer, issue 15).
        CREATE TABLE day_spend (
            day      TEXT PRIMARY KEY,
            cost_usd REAL NOT NULL DEFAULT 0
        );
        INSERT INTO day_spend (day, cost_usd)
            SELECT day, SUM(cost_usd) FROM usage_ledger GROUP BY day;
        """,
    ),
    Migration(
        "0015_outbox_resend",
        """
        -- A reply possibly lost in a crash that the person asked to get again (bot/resend.py):
        -- the row it was sent again as, so a second press sends nothing.
        ALTER TABLE outbox ADD COLUMN resent_as INTEGER;
        """,
    ),
    Migration(
        "0017_runs_by_session",
        """
        -- A session's last turns' start times (agents/sessions.py, on its first turn in a
        -- process): without it the read walked every run in start order looking for the
        -- session's own, 178 ms at 100,000 runs for a session with none (issue 15).
        CREATE INDEX runs_by_session ON runs (session_id, started_at);
        """,
    ),
)
# In number order whatever the order they were appended in (work on several migrations lands in
# any order); applied by name, so a database that has a later one still gets an earlier one.
MIGRATIONS = tuple(sorted(MIGRATIONS, key=lambda m: m.name))


async def migrate(db: Database) -> list[str]:
    """Apply the migrations not yet applied; returns the names applied now (empty: nothing to do).

    Safe with several processes starting together (PostgreSQL): each migration is applied in the
    one write transaction that first checks it is still unapplied, and write transactions take
    turns (storage/pg.py), so a migration another process applied meanwhile is skipped."""
    async with db.write() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
    applied = {r["name"] for r in await db.fetchall("SELECT name FROM schema_migrations")}
    done: list[str] = []
    for migration in MIGRATIONS:
        if migration.name in applied:
            continue
        async with db.write() as conn:
            async with conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?",
                                    (migration.name,)) as cursor:
                if await cursor.fetchone() is not None:
                    continue
            for statement in _statements(migration.sql, db.dialect):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                (migration.name, now_iso()),
            )
        done.append(migration.name)
    return done


def _statements(sql: str, dialect: Dialect = "sqlite") -> list[str]:
    """Split a migration into statements (executescript would commit our transaction), in
    ``dialect``: migrations are written once, in SQLite's types (storage/dialect.py)."""
    statements = split_statements(sql)
    if dialect == "postgresql":
        return [postgres_ddl(s) for s in statements]
    return statements
