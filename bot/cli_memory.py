"""`keel memory list|forget`: what agents remember about people (storage/memory.py)."""

from __future__ import annotations

import argparse
import asyncio
import json

from agents.config import Settings
from storage.memory import Fact, MemoryRepository


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    memory = sub.add_parser(
        "memory", help="facts agents remember about people: list, forget",
        description="Facts agents stored with the remember tool, per person (and optionally per "
        "chat), with the run and trace each came from. People see and delete their own with "
        "/memory in Telegram.",
    ).add_subparsers(dest="memory_command", metavar="SUBCOMMAND", required=True)
    p = memory.add_parser("list", help="every fact, or one person's",
                          description="List remembered facts: id, person, chat (or 'all'), "
                          "when, the fact, and the trace it came from.")
    p.add_argument("--user", type=int, default=None, help="only this person's facts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_list)
    p = memory.add_parser("forget", help="delete one fact by id",
                          description="Delete a remembered fact (ids are in `keel memory list`).")
    p.add_argument("id", type=int, help="the fact's id")
    p.add_argument("--user", type=int, default=None,
                   help="only if the fact is this person's (a safety check)")
    p.set_defaults(handler=_forget)


async def _repo(settings: Settings) -> MemoryRepository:
    from storage.connect import open_database

    return MemoryRepository(await open_database(settings))


def _row(fact: Fact) -> dict[str, object]:
    return {"id": fact.id, "user_id": fact.user_id, "chat_id": fact.chat_id, "fact": fact.fact,
            "agent": fact.agent, "run_id": fact.run_id, "trace_id": fact.trace_id,
            "created_at": fact.created_at}


def _list(args: argparse.Namespace, settings: Settings) -> int:
    async def go() -> list[Fact]:
        repo = await _repo(settings)
        try:
            return await (repo.of_person(args.user) if args.user is not None
                          else repo.everyone())
        finally:
            await repo.db.close()

    facts = asyncio.run(go())
    if args.json:
        print(json.dumps({"facts": [_row(f) for f in facts]}, indent=2, ensure_ascii=False))
        return 0
    if not facts:
        print("No remembered facts." if args.user is None else
              f"No remembered facts about {args.user}.")
        return 0
    for f in facts:
        chat = "all chats" if f.chat_id is None else f"chat {f.chat_id}"
        trace = f.trace_id[:8] if f.trace_id else "-"
        print(f"{f.id:>5}  person {f.user_id}  {chat}  {f.created_at[:16].replace('T', ' ')}  "
              f"trace {trace}  {f.fact}")
    return 0


def _forget(args: argparse.Namespace, settings: Settings) -> int:
    async def go() -> bool:
        repo = await _repo(settings)
        try:
            return await repo.forget(args.id, user_id=args.user)
        finally:
            await repo.db.close()

    if not asyncio.run(go()):
        who = f" about {args.user}" if args.user is not None else ""
        print(f"keel: no remembered fact {args.id}{who} (`keel memory list` shows the ids)")
        return 1
    print(f"forgot fact {args.id}")
    return 0
