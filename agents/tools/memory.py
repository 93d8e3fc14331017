"""Semantic memory as tools: ``remember``, ``recall`` and ``forget``, scoped to the person.

Facts live in the database (``storage.memory``), never in prompt history: they survive
compaction and /new, and an agent reads what it needs through ``recall`` (at a conversation's
start, or when the person's preferences matter), so prompts stay bounded. Every call is scoped
to the run's person (``ToolContext.user_id``); a fact limited to a chat is seen only there. A
run with no person (a schedule, the command line without one) gets a clear error, not someone
else's facts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from agents.lexical import rank
from agents.tools.contract import ToolContext
from agents.tools.declare import ToolArgs, tool
from agents.tools.errors import ToolError
from agents.tools.policy import NO_RETRY
from storage.memory import MAX_FACT_CHARS, MemoryFull, MemoryRepository

RECALL_LIMIT = 10
MEMORY_EXTRA = "memory"
"""``ToolContext.extras`` key of the run's MemoryRepository (set by the runtime)."""


def _repo(ctx: ToolContext) -> tuple[MemoryRepository, int]:
    repo = ctx.extras.get(MEMORY_EXTRA)
    if not isinstance(repo, MemoryRepository):
        raise ToolError("unsupported", "Memory is not available in this deployment.",
                        "Answer without remembered facts.")
    if ctx.user_id is None:
        raise ToolError("unsupported", "This task is not on behalf of a person, so there is no "
                        "one to remember for.", "Answer without remembered facts.")
    return repo, ctx.user_id


class RememberArgs(ToolArgs):
    fact: str = Field(min_length=1, max_length=MAX_FACT_CHARS,
                      description="One durable fact about the person, written so it reads well "
                                  "later on its own, e.g. 'Prefers answers in Spanish'.")
    scope: Literal["person", "chat"] = Field(
        "person", description="'person': wherever they talk to me; 'chat': only in this chat.")


@tool(
    name="remember",
    description=(
        "Store a durable fact about the person you are talking to (a preference, a name, a "
        "standing instruction) so later conversations can recall it, also after /new. Use it "
        "when the person tells you something worth keeping or asks you to remember; never for "
        "secrets such as passwords or keys. Returns JSON with the fact's id."
    ),
    timeout_s=5.0,
    retry=NO_RETRY,
    side_effects=True,
)
async def remember(args: RememberArgs, ctx: ToolContext) -> dict[str, Any]:
    repo, user_id = _repo(ctx)
    try:
        fact, new = await repo.add(user_id=user_id, fact=args.fact,
                                   chat_id=ctx.chat_id if args.scope == "chat" else None,
                                   agent=ctx.agent, run_id=ctx.run_id,
                                   trace_id=ctx.extras.get("trace_id"))
    except MemoryFull as exc:
        raise ToolError("forbidden", f"Memory is full: {exc}.",
                        "Ask the person to delete facts with /memory, or forget one.") from None
    return {"id": fact.id, "stored": new, "already_known": not new,
            "scope": "chat" if fact.chat_id is not None else "person"}


class RecallArgs(ToolArgs):
    query: str = Field("", max_length=300,
                       description="Words about what you need, e.g. 'language preference'; "
                                   "empty: the most recent facts.")
    limit: int = Field(RECALL_LIMIT, ge=1, le=50, description="Most facts to return.")


@tool(
    name="recall",
    description=(
        "Look up facts remembered about the person you are talking to: best matches first, "
        "then the most recent others. Use "
        "it at the start of a conversation, or whenever their preferences or earlier "
        "instructions could change your answer. Returns JSON: facts, each with id and fact."
    ),
    timeout_s=5.0,
    retry=NO_RETRY,
)
async def recall(args: RecallArgs, ctx: ToolContext) -> dict[str, Any]:
    repo, user_id = _repo(ctx)
    facts = await repo.visible(user_id, ctx.chat_id)
    # best matches first, then the most recent others: a few facts worded differently from the
    # query are still worth seeing
    by_id = {f.id: f for f in facts}
    matched = [i for i, _ in rank(args.query, {f.id: f.fact for f in facts}, limit=args.limit)]
    rest = [f.id for f in reversed(facts) if f.id not in set(matched)]
    hits = [by_id[i] for i in (matched + rest)[: args.limit]]
    return {"facts": [{"id": f.id, "fact": f.fact,
                       "scope": "chat" if f.chat_id is not None else "person"} for f in hits],
            "total_known": len(facts)}


class ForgetArgs(ToolArgs):
    id: int = Field(ge=1, description="The id of the fact, from recall.")


@tool(
    name="forget",
    description=(
        "Delete a remembered fact about the person, by the id recall gave. Use it when the "
        "person asks you to forget something or a fact is no longer true. Returns JSON."
    ),
    timeout_s=5.0,
    retry=NO_RETRY,
    side_effects=True,
)
async def forget(args: ForgetArgs, ctx: ToolContext) -> dict[str, Any]:
    repo, user_id = _repo(ctx)
    if not await repo.forget(args.id, user_id=user_id):
        raise ToolError("not_found", f"No fact {args.id} is remembered about this person.",
                        "Call recall to see the ids.")
    return {"forgotten": args.id}


MEMORY_TOOLS = (remember, recall, forget)
