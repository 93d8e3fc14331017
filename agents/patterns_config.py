"""keel.toml sections for the playbook patterns: retrieval, injected documents, graders, fan-out.

Kept apart from agents/config.py, which only names them::

    [retrieval]
    corpus = "docs"                 # a folder of .md, .txt and .pdf files, beside keel.toml

    [agents.support.inject_docs]    # narrow agent: retrieved once, placed in the cached prefix
    query = "refunds shipping returns warranty"
    top_k = 4

    [agents.extract.grader]         # each answer graded; one retry with feedback, then a human
    kind = "required"               # parses | json_schema | required | predicate | rubric
    fields = ["order_id", "amount"]

    [agents.extract.graders.lookup_order]   # each result of that tool graded (same rule)
    kind = "required"
    fields = ["order_id", "status"]

    [agents.briefing.step_graders.prices]   # a check the planner may attach to a plan step
    kind = "json_schema"
    schema = { type = "array", items = { type = "object", required = ["sku", "price"] } }
    about = "the step's answer is a JSON list of {sku, price}"

    [agents.researcher.research]    # the research tool fans sub-questions out to child runs
    agent = "assistant"
    max_branches = 5
    concurrency = 3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GraderKind = Literal["parses", "json_schema", "required", "predicate", "rubric"]


class RetrievalConfig(BaseModel):
    """The owner's documents, under ``[retrieval]``."""

    model_config = ConfigDict(extra="forbid")

    corpus: Path
    """A folder of Markdown, text and PDF (read page by page with pypdf) files; relative paths
    are taken from keel.toml's folder."""
    chunk_chars: int = Field(1200, ge=200, le=8000)
    """Most characters of one chunk (cut at headings and blank lines)."""


class InjectDocsConfig(BaseModel):
    """Retrieval by injection for a narrow agent: the top chunks for a fixed query join its
    system prompt, so they sit in the cached prefix and stay byte-stable across turns."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=300)
    top_k: int = Field(4, ge=1, le=10)


class GraderConfig(BaseModel):
    """How an answer is checked: an agent's answer (the last step's, for plan runs), a tool's
    results (``graders``, or the tool's own declaration) or a plan step's output (``step_graders``,
    attached by the planner)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: GraderKind
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    """kind = "json_schema": the schema the answer (JSON) must satisfy."""
    fields: list[str] = Field(default_factory=list)
    """kind = "required": dotted paths that must be present and non-null in the answer's JSON."""
    predicate: str | None = None
    """kind = "predicate": ``module:function`` taking the answer text and returning None or
    True (pass), or a string (what is wrong), or False."""
    rubric: str | None = None
    """kind = "rubric": what a good answer does; a cheap model grades against it."""
    model: str | None = None
    """kind = "rubric": the grading model (default KEEL_ROUTER_MODEL)."""
    max_tokens: int = Field(300, ge=50, le=2000)
    """kind = "rubric": the grader's answer length."""
    about: str | None = Field(None, max_length=300)
    """For a step grader: what it checks, in the words the planner reads when it decides which
    step's output to check with it (default: its kind)."""

    @model_validator(mode="after")
    def _complete(self) -> GraderConfig:
        need = {"json_schema": self.json_schema, "required": self.fields or None,
                "predicate": self.predicate, "rubric": self.rubric}
        if self.kind in need and need[self.kind] is None:
            field = {"json_schema": "schema"}.get(self.kind, self.kind)
            field = "fields" if self.kind == "required" else field
            raise ValueError(f"grader kind {self.kind!r} needs `{field}`")
        if self.predicate is not None and ":" not in self.predicate:
            raise ValueError("grader predicate must be 'module:function'")
        return self


STEP_CHECK_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
"""How a step grader is named (the planner writes the name into the step)."""


class ResearchConfig(BaseModel):
    """Parallel research: the ``research`` tool's child runs."""

    model_config = ConfigDict(extra="forbid")

    agent: str = "assistant"
    """The agent each sub-question goes to."""
    max_branches: int = Field(5, ge=1, le=10)
    concurrency: int = Field(3, ge=1, le=10)
    """Most child runs at once."""
    synthesis_share: float = Field(0.3, ge=0.05, le=0.9)
    """Part of what is left of the parent's budget kept back for its own synthesis."""
