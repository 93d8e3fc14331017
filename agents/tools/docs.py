"""``search_docs``: the owner's corpus as a tool (see agents/retrieval.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agents.retrieval import DEFAULT_TOP_K, Corpus
from agents.tools.contract import ToolContext
from agents.tools.declare import ToolArgs, tool
from agents.tools.errors import ToolError
from agents.tools.policy import NO_RETRY

DOCS_EXTRA = "docs"
"""``ToolContext.extras`` key of the deployment's Corpus (set by the runtime when keel.toml names
one)."""
MAX_TOP_K = 10


class SearchDocsArgs(ToolArgs):
    query: str = Field(min_length=1, max_length=300,
                       description="What you are looking for, in the words the documents would "
                                   "use, e.g. 'refund period for damaged items'.")
    top_k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="How many excerpts.")


@tool(
    name="search_docs",
    description=(
        "Search the owner's documents (manuals, policies, notes) for passages about a "
        "question. Use it before answering anything those documents may cover, and cite the "
        "source you used. Returns JSON: results, best first, each with source (file), location "
        "(lines or page), heading and text."
    ),
    timeout_s=10.0,
    retry=NO_RETRY,
)
async def search_docs(args: SearchDocsArgs, ctx: ToolContext) -> dict[str, Any]:
    corpus = ctx.extras.get(DOCS_EXTRA)
    if not isinstance(corpus, Corpus):
        raise ToolError("unsupported", "No documents are configured here.",
                        "Answer from what you know and say that no documents were searched.")
    try:
        hits = await corpus.search(args.query, k=args.top_k)
    except FileNotFoundError as exc:
        raise ToolError("upstream_error", str(exc), "Answer without the documents.") from None
    return {"query": args.query, "results": [h.as_json() for h in hits]}
