"""The document index behind ``search_docs``: files, their chunks and each chunk's terms.

Plain tables and plain SQL (no SQLite FTS5, no PostgreSQL tsvector), so one index and one ranking
serve both databases: the caller computes terms (``agents.lexical``) and scores BM25 from the
postings this repository returns. A file is replaced whole in one write transaction, so a search
never sees half a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from storage.db import Database, WriteConnection, now_iso, placeholders

MAX_QUERY_TERMS = 32


@dataclass(frozen=True, kw_only=True)
class NewChunk:
    position: int
    """Order of the chunk in its file, from 0."""
    location: str
    """Where it is, for a person: "lines 12-30", "page 3"."""
    heading: str | None
    text: str
    counts: Mapping[str, int]
    """Its terms and how often each occurs."""


@dataclass(frozen=True, kw_only=True)
class StoredChunk:
    id: int
    path: str
    position: int
    location: str
    heading: str | None
    text: str
    terms: int


@dataclass(frozen=True)
class IndexStats:
    files: int
    chunks: int
    average_terms: float


class DocsIndex:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def files(self) -> dict[str, str]:
        """Indexed path → the content hash it was indexed at."""
        rows = await self.db.fetchall("SELECT path, sha256 FROM doc_files")
        return {str(r["path"]): str(r["sha256"]) for r in rows}

    async def replace_file(self, path: str, sha256: str, chunks: list[NewChunk]) -> None:
        """Index ``path`` anew (its old chunks go) in one transaction."""
        async with self.db.write() as conn:
            await _delete(conn, path)
            for chunk in chunks:
                async with conn.execute(
                        "INSERT INTO doc_chunks (path, position, location, heading, text, terms)"
                        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                        (path, chunk.position, chunk.location, chunk.heading, chunk.text,
                         sum(chunk.counts.values()))) as cursor:
                    row = await cursor.fetchone()
                assert row is not None
                chunk_id = int(row[0])
                if chunk.counts:
                    await conn.executemany(
                        "INSERT INTO doc_terms (term, chunk_id, tf) VALUES (?, ?, ?)",
                        [(term, chunk_id, n) for term, n in sorted(chunk.counts.items())])
            await conn.execute(
                "INSERT INTO doc_files (path, sha256, chunks, indexed_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256,"
                " chunks = excluded.chunks, indexed_at = excluded.indexed_at",
                (path, sha256, len(chunks), now_iso()))

    async def remove_file(self, path: str) -> None:
        async with self.db.write() as conn:
            await _delete(conn, path)
            await conn.execute("DELETE FROM doc_files WHERE path = ?", (path,))

    async def stats(self) -> IndexStats:
        row = await self.db.fetchone(
            "SELECT count(*), coalesce(avg(terms), 0) FROM doc_chunks")
        files = await self.db.fetchval("SELECT count(*) FROM doc_files")
        chunks, average = (int(row[0]), float(row[1])) if row is not None else (0, 0.0)
        return IndexStats(files=int(files or 0), chunks=chunks, average_terms=average)

    async def postings(self, terms: Iterable[str]) -> list[tuple[str, int, int]]:
        """(term, chunk id, occurrences) for every chunk holding any of ``terms``."""
        wanted = sorted(set(terms))[:MAX_QUERY_TERMS]
        if not wanted:
            return []
        rows = await self.db.fetchall(
            f"SELECT term, chunk_id, tf FROM doc_terms WHERE term IN ({placeholders(wanted)})",  # noqa: S608
            wanted)
        return [(str(r["term"]), int(r["chunk_id"]), int(r["tf"])) for r in rows]

    async def chunks(self, ids: Iterable[int]) -> dict[int, StoredChunk]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = await self.db.fetchall(
            "SELECT id, path, position, location, heading, text, terms FROM doc_chunks"  # noqa: S608
            f" WHERE id IN ({placeholders(wanted)})", wanted)
        return {int(r["id"]): StoredChunk(id=int(r["id"]), path=str(r["path"]),
                                          position=int(r["position"]),
                                          location=str(r["location"]), heading=r["heading"],
                                          text=str(r["text"]), terms=int(r["terms"]))
                for r in rows}


async def _delete(conn: WriteConnection, path: str) -> None:
    await conn.execute("DELETE FROM doc_terms WHERE chunk_id IN "
                    "(SELECT id FROM doc_chunks WHERE path = ?)", (path,))
    await conn.execute("DELETE FROM doc_chunks WHERE path = ?", (path,))
