"""Retrieval over the owner's corpus: chunk, index (``keel index``), search (BM25), inject.

The corpus is a folder named in keel.toml (``[retrieval] corpus = "docs"``) of Markdown, text
and — when ``pypdf`` is installed — PDF files. ``index_corpus`` reads it, splits each file into
chunks (at Markdown headings, then at blank lines, at most ``chunk_chars`` each) with their
position ("lines 12-30", "page 3"), and stores them with their terms; a file is re-indexed only
when its content hash changed, and files gone from the folder leave the index.

Two ways to use it: the ``search_docs`` tool (agents/tools/docs.py) for open-ended agents, and
injection for narrow ones — ``inject_block`` retrieves once for the agent's fixed query and the
result joins the system prompt, inside the cached prefix: the same query over the same index
gives the same bytes, so the prefix stays cached turn after turn.

Lexical search needs no download. An embedding backend can be plugged in through ``Ranker``
where a local model is installed; none is required.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agents.lexical import CorpusStats, bm25, term_counts, terms
from storage.docs_index import DocsIndex, NewChunk, StoredChunk

log = logging.getLogger(__name__)

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".rst"})
PDF_SUFFIX = ".pdf"
DEFAULT_CHUNK_CHARS = 1200
DEFAULT_TOP_K = 5
MAX_FILE_BYTES = 5_000_000


@dataclass(frozen=True, kw_only=True)
class Hit:
    source: str
    """The file, relative to the corpus folder."""
    position: int
    location: str
    heading: str | None
    text: str
    score: float

    def as_json(self) -> dict[str, object]:
        return {"source": self.source, "position": self.position, "location": self.location,
                "heading": self.heading, "score": round(self.score, 4), "text": self.text}


class Ranker(Protocol):
    """A search backend: the lexical one below, or an embedding one a deployment plugs in."""

    async def search(self, query: str, *, k: int) -> list[Hit]: ...


# ------------------------------------------------------------------ chunking


@dataclass
class _Piece:
    start: int
    end: int
    heading: str | None
    lines: list[str] = field(default_factory=list)


def chunk_text(text: str, *, markdown: bool, chunk_chars: int = DEFAULT_CHUNK_CHARS,
               ) -> list[tuple[str, str | None, str]]:
    """``(location, heading, text)`` per chunk: sections at Markdown headings, cut at blank
    lines to at most ``chunk_chars`` (a longer paragraph is its own chunk)."""
    sections: list[_Piece] = []
    heading: str | None = None
    current = _Piece(1, 1, None)
    in_code = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if markdown and stripped.startswith("```"):
            in_code = not in_code
        if markdown and not in_code and stripped.startswith("#") and \
                stripped.lstrip("#").startswith(" "):
            if any(x.strip() for x in current.lines):
                sections.append(current)
            heading = stripped.lstrip("#").strip()
            current = _Piece(number, number, heading, [line])
            continue
        current.lines.append(line)
        current.end = number
    if any(x.strip() for x in current.lines):
        sections.append(current)

    out: list[tuple[str, str | None, str]] = []
    for section in sections:
        for start, end, body in _cut(section, chunk_chars):
            location = f"line {start}" if start == end else f"lines {start}-{end}"
            out.append((location, section.heading, body))
    return out


def _cut(section: _Piece, limit: int) -> Iterable[tuple[int, int, str]]:
    """A section's text in pieces of at most ``limit`` characters, cut at blank lines."""
    paragraphs: list[tuple[int, int, str]] = []
    start: int | None = None
    buf: list[str] = []
    for offset, line in enumerate(section.lines):
        number = section.start + offset
        if line.strip():
            if start is None:
                start = number
            buf.append(line)
        elif buf:
            assert start is not None
            paragraphs.append((start, number - 1, "\n".join(buf)))
            start, buf = None, []
    if buf:
        assert start is not None
        paragraphs.append((start, section.start + len(section.lines) - 1, "\n".join(buf)))
    chunk: list[tuple[int, int, str]] = []
    size = 0
    for para in paragraphs:
        if chunk and size + len(para[2]) > limit:
            yield chunk[0][0], chunk[-1][1], "\n\n".join(p[2] for p in chunk)
            chunk, size = [], 0
        chunk.append(para)
        size += len(para[2]) + 2
    if chunk:
        yield chunk[0][0], chunk[-1][1], "\n\n".join(p[2] for p in chunk)


def _pdf_pages(path: Path) -> list[str] | None:
    """The text of each page, or None when no PDF reader is installed."""
    if importlib.util.find_spec("pypdf") is None:
        return None
    import pypdf  # optional: PDFs are indexed only where it is installed

    reader = pypdf.PdfReader(str(path))
    return [page.extract_text() or "" for page in reader.pages]


def chunks_of(path: Path, data: bytes, chunk_chars: int) -> list[NewChunk] | None:
    """The chunks of one file; None when its kind cannot be read here."""
    suffix = path.suffix.lower()
    pieces: list[tuple[str, str | None, str]] = []
    if suffix == PDF_SUFFIX:
        pages = _pdf_pages(path)
        if pages is None:
            return None
        for page_no, page in enumerate(pages, start=1):
            for _, heading, body in chunk_text(page, markdown=False, chunk_chars=chunk_chars):
                pieces.append((f"page {page_no}", heading, body))
    else:
        text = data.decode("utf-8", errors="replace")
        pieces = chunk_text(text, markdown=suffix in {".md", ".markdown"},
                            chunk_chars=chunk_chars)
    out = []
    for position, (location, heading, body) in enumerate(pieces):
        counts = term_counts(f"{heading}\n{body}" if heading and heading not in body else body)
        out.append(NewChunk(position=position, location=location, heading=heading, text=body,
                            counts=dict(counts)))
    return out


# ------------------------------------------------------------------ indexing


@dataclass
class IndexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file, why) for files that could not be read."""
    chunks: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def lines(self) -> list[str]:
        out = [f"indexed: {len(self.added)} new, {len(self.updated)} changed, "
               f"{len(self.removed)} removed, {self.unchanged} unchanged file(s); "
               f"{self.chunks} chunk(s) written"]
        out += [f"skipped {name}: {why}" for name, why in self.skipped]
        return out


def corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() in TEXT_SUFFIXES | {PDF_SUFFIX}
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


async def index_corpus(index: DocsIndex, folder: Path, *,
                       chunk_chars: int = DEFAULT_CHUNK_CHARS) -> IndexReport:
    """Bring the index in line with ``folder``: new and changed files (by content hash) are
    indexed, files no longer there removed. Safe to repeat; files are read in a thread."""
    if not await asyncio.to_thread(folder.is_dir):
        raise FileNotFoundError(f"the corpus folder {str(folder)!r} does not exist")
    report = IndexReport()
    known = await index.files()
    seen: set[str] = set()
    for path in await asyncio.to_thread(corpus_files, folder):
        name = path.relative_to(folder).as_posix()
        seen.add(name)
        if (await asyncio.to_thread(path.stat)).st_size > MAX_FILE_BYTES:
            report.skipped.append((name, f"larger than {MAX_FILE_BYTES // 1_000_000} MB"))
            continue
        data = await asyncio.to_thread(path.read_bytes)
        digest = hashlib.sha256(data).hexdigest()
        if known.get(name) == digest:
            report.unchanged += 1
            continue
        try:
            chunks = await asyncio.to_thread(chunks_of, path, data, chunk_chars)
        except Exception as exc:  # one unreadable file must not stop the others
            report.skipped.append((name, f"{type(exc).__name__}: {exc}"))
            continue
        if chunks is None:
            report.skipped.append((name, "PDF files need the optional pypdf package"))
            continue
        await index.replace_file(name, digest, chunks)
        report.chunks += len(chunks)
        (report.updated if name in known else report.added).append(name)
    for name in sorted(set(known) - seen):
        await index.remove_file(name)
        report.removed.append(name)
    return report


# ------------------------------------------------------------------ search


class LexicalSearch:
    """BM25 over the index's postings: no download, the same ranking on SQLite and PostgreSQL."""

    def __init__(self, index: DocsIndex) -> None:
        self.index = index

    async def search(self, query: str, *, k: int = DEFAULT_TOP_K) -> list[Hit]:
        wanted = terms(query)
        if not wanted:
            return []
        postings = await self.index.postings(wanted)
        if not postings:
            return []
        stats = await self.index.stats()
        corpus = CorpusStats(stats.chunks, stats.average_terms)
        df: Counter[str] = Counter(term for term, _, _ in postings)
        tf: dict[int, dict[str, int]] = {}
        for term, chunk_id, n in postings:
            tf.setdefault(chunk_id, {})[term] = n
        lengths = await self.index.chunks(tf)
        scored = sorted(((bm25(wanted, tf[cid], lengths[cid].terms, df, corpus), cid)
                         for cid in tf if cid in lengths), key=lambda s: (-s[0], s[1]))
        return [_hit(lengths[cid], score) for score, cid in scored[:k]]


def _hit(chunk: StoredChunk, score: float) -> Hit:
    return Hit(source=chunk.path, position=chunk.position, location=chunk.location,
               heading=chunk.heading, text=chunk.text, score=score)


async def inject_block(ranker: Ranker, query: str, *, k: int) -> str:
    """The text that joins a narrow agent's system prompt: the top ``k`` chunks for its fixed
    ``query``, in rank order, each with its source. Empty when nothing matches."""
    hits = await ranker.search(query, k=k)
    if not hits:
        return ""
    parts = ["## Reference documents", "Excerpts from the owner's documents, retrieved for "
             "this agent. Rely on them and cite the source in brackets when you use one."]
    for hit in hits:
        parts.append(f'<document source="{hit.source}" location="{hit.location}">\n'
                     f"{hit.text}\n</document>")
    return "\n\n".join(parts)


class Corpus:
    """The corpus a deployment searches: indexed once per process at first use (new and
    changed files only), then searched lexically. ``keel index`` re-indexes on demand."""

    def __init__(self, index: DocsIndex, folder: Path, *,
                 chunk_chars: int = DEFAULT_CHUNK_CHARS, ranker: Ranker | None = None) -> None:
        self.index = index
        self.folder = folder
        self.chunk_chars = chunk_chars
        self.ranker: Ranker = ranker or LexicalSearch(index)
        self._fresh = False
        self._lock = asyncio.Lock()

    async def refresh(self) -> IndexReport | None:
        """Index what changed, once per process; None when it was already done here."""
        if self._fresh:
            return None
        async with self._lock:
            if self._fresh:
                return None
            report = await index_corpus(self.index, self.folder, chunk_chars=self.chunk_chars)
            self._fresh = True
            if report.changed or report.skipped:
                log.info("corpus %s: %s", self.folder, "; ".join(report.lines()))
            return report

    async def search(self, query: str, *, k: int = DEFAULT_TOP_K) -> list[Hit]:
        await self.refresh()
        return await self.ranker.search(query, k=k)
