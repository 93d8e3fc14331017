"""A tool's name, description and schema are its public API: narrow, honest and byte-stable."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from agents.tools import RetryPolicy, Tool, ToolArgs, ToolContext, tool
from agents.tools.declare import IDEMPOTENT_NOTE, NOT_IDEMPOTENT_NOTE


class Window(BaseModel):
    """A time window."""

    days: int = Field(ge=1, le=30, description="How many days back.")


class SearchArgs(ToolArgs):
    """Arguments of search_notes (this docstring is not part of the schema)."""

    query: str = Field(min_length=1, description="Words to look for.")
    scope: Literal["notes", "tasks"] = Field("notes", description="Where to look.")
    exact: Literal[True] = True
    limit: int = Field(5, ge=1, le=20)
    since: str | None = Field(None, description="ISO date; omit for all time.")
    window: Window | None = None


@tool(name="search_notes", version=2,
      description="Search the person's notes. Use when they ask what they wrote. Returns matches.")
async def search_notes(args: SearchArgs) -> str:
    return args.query


SNAPSHOT = {
    "name": "search_notes",
    "description": "Search the person's notes. Use when they ask what they wrote. Returns matches.",
    "input_schema": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "Words to look for.", "minLength": 1},
            "scope": {"type": "string", "description": "Where to look.",
                      "enum": ["notes", "tasks"], "default": "notes"},
            "exact": {"type": "boolean", "enum": [True], "default": True},
            "limit": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
            "since": {"type": "string", "description": "ISO date; omit for all time."},
            "window": {"type": "object", "description": "A time window.",
                       "properties": {"days": {"type": "integer",
                                               "description": "How many days back.",
                                               "minimum": 1, "maximum": 30}},
                       "required": ["days"]},
        },
        "required": ["query"],
        "additionalProperties": False,
    },
}


def test_schema_snapshot_is_narrow_and_in_a_fixed_key_order() -> None:
    definition = search_notes.definition()
    # Compared as text, not as dicts: the executor caches the tools prefix byte for byte.
    assert json.dumps(definition) == json.dumps(SNAPSHOT)
    text = json.dumps(definition)
    assert '"title"' not in text and "$ref" not in text and "anyOf" not in text


def test_schema_is_deterministic_and_callers_cannot_change_it() -> None:
    first = search_notes.definition()
    first["input_schema"]["properties"].clear()
    again = tool(name="search_notes", version=2, description=search_notes.description)(
        search_notes.fn)
    assert json.dumps(search_notes.definition()) == json.dumps(again.definition())
    assert search_notes.definition()["input_schema"]["properties"]


class Loose(BaseModel):
    x: int


def test_a_plain_basemodel_gets_unknown_fields_refused_like_its_schema_says() -> None:
    @tool(description="Loose. Returns x.")
    async def loose(args: Loose) -> int:
        return args.x

    assert loose.input_schema["additionalProperties"] is False
    assert loose.args_model.model_config.get("extra") == "forbid"


def test_name_defaults_to_function_and_description_to_docstring() -> None:
    @tool()
    async def ping(args: ToolArgs, ctx: ToolContext) -> str:
        """Check the bot is alive. Returns 'pong'."""
        return "pong"

    assert ping.name == "ping"
    assert ping.description == "Check the bot is alive. Returns 'pong'."
    assert ping.definition()["input_schema"] == {"type": "object", "properties": {},
                                                 "additionalProperties": False}
    assert ping.takes_ctx


def test_side_effects_are_announced_in_the_description() -> None:
    async def send(args: ToolArgs) -> str:
        return "sent"

    once = Tool(fn=send, name="send", description="Send it.", args_model=ToolArgs,
                side_effects=True)
    every_time = once.replace(idempotent=False)
    assert once.description.endswith(IDEMPOTENT_NOTE)
    assert every_time.description.endswith(NOT_IDEMPOTENT_NOTE)
    assert once.dedupes and not every_time.dedupes


@pytest.mark.parametrize("name", ["has space", "dots.not.allowed", "x" * 65, "", "ünï"])
def test_names_the_api_would_reject_are_refused(name: str) -> None:
    async def f(args: ToolArgs) -> str:
        return ""

    with pytest.raises(ValueError, match="must match"):
        Tool(fn=f, name=name, description="d", args_model=ToolArgs)


def test_version_suffix_is_reserved_for_old_versions() -> None:
    async def f(args: ToolArgs) -> str:
        return ""

    with pytest.raises(ValueError, match="version suffix"):
        Tool(fn=f, name="fetch_url_v2", description="d", args_model=ToolArgs)


def test_declaration_mistakes_are_caught_at_import_time() -> None:
    async def no_model(x: int) -> str:
        return ""

    def not_async(args: ToolArgs) -> str:
        return ""

    async def quiet(args: ToolArgs) -> str:
        return ""

    class Local(ToolArgs):
        pass

    async def local(args: Local) -> str:
        return ""

    with pytest.raises(TypeError, match="pydantic model"):
        tool(description="d")(no_model)
    with pytest.raises(TypeError, match="args_model="):
        tool(description="d")(local)
    assert tool(description="d", args_model=Local)(local).args_model is Local
    with pytest.raises(TypeError, match="async"):
        tool(description="d")(not_async)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a description"):
        tool()(quiet)
    with pytest.raises(ValueError, match="version"):
        tool(description="d", version=0)(quiet)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=4)
