"""`keel index`: bring the document index in line with the corpus folder of keel.toml."""

from __future__ import annotations

import argparse
import asyncio
import json

from agents.config import Settings, load_keel_file
from agents.errors import ConfigError
from agents.retrieval import IndexReport, index_corpus
from storage.docs_index import DocsIndex


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "index", help="index the document corpus for search_docs (changed files only)",
        description="Read the folder named by [retrieval] corpus in keel.toml (Markdown, text, "
        "and PDF where pypdf is installed), and index new and changed files (by content hash); "
        "files gone from the folder leave the index. Safe to repeat and safe beside the bot, "
        "which also indexes what changed once at start-up of its first search.",
        epilog='keel.toml:\n\n[retrieval]\ncorpus = "docs"',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_index)


def _index(args: argparse.Namespace, settings: Settings) -> int:
    keel_file = load_keel_file(settings.config_path)
    if keel_file.retrieval is None:
        raise ConfigError("No corpus to index: add [retrieval] with corpus = \"FOLDER\" to "
                          "keel.toml (KEEL_CONFIG).")
    config = keel_file.retrieval

    async def go() -> IndexReport:
        from storage.connect import open_database

        db = await open_database(settings)
        try:
            return await index_corpus(DocsIndex(db), config.corpus,
                                      chunk_chars=config.chunk_chars)
        finally:
            await db.close()

    try:
        report = asyncio.run(go())
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc}; fix [retrieval] corpus in keel.toml") from None
    if args.json:
        print(json.dumps({"added": report.added, "updated": report.updated,
                          "removed": report.removed, "unchanged": report.unchanged,
                          "chunks": report.chunks,
                          "skipped": [{"file": f, "why": w} for f, w in report.skipped]},
                         indent=2))
    else:
        print("\n".join(report.lines()))
    return 0
