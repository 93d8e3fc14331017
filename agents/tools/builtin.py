"""The tools every keel install has: the time, a web page, a human, a file to send."""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import Field, StringConstraints, field_validator

from agents.tools.contract import EscalationRequest, ToolContext, ToolOutcome
from agents.tools.declare import ToolArgs, tool
from agents.tools.docs import search_docs
from agents.tools.errors import ToolError
from agents.tools.fetch import fetch_url
from agents.tools.memory import MEMORY_TOOLS
from agents.tools.policy import NO_RETRY
from agents.tools.registry import ToolRegistry
from agents.tools.research import research
from agents.tools.send_file import send_file

MAX_ESCALATION_OPTIONS = 6
MAX_OPTION_CHARS = 40  # a Telegram inline button stays readable on a phone


class TimeArgs(ToolArgs):
    timezone: str | None = Field(
        None, max_length=64,
        description="IANA time zone name such as 'Europe/Berlin' or 'America/New_York'. "
                    "Omit it for the person's own time zone.")


@tool(
    name="get_current_time",
    description=(
        "The current date and time in a time zone. Use it whenever the answer depends on today's "
        "date, the day of the week or the time of day: you do not know them otherwise. Returns "
        "JSON with timezone, iso (ISO 8601 with offset), date, time, weekday and utc_offset."
    ),
    timeout_s=2.0,
    retry=NO_RETRY,
)
async def get_current_time(args: TimeArgs, ctx: ToolContext) -> dict[str, Any]:
    name, zone = _zone(args.timezone or ctx.timezone or "UTC")
    now = datetime.now(UTC).astimezone(zone)
    offset = now.strftime("%z")
    return {
        "timezone": name,
        "iso": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M"),
        "weekday": now.strftime("%A"),
        "utc_offset": f"{offset[:3]}:{offset[3:]}",
    }


def _zone(name: str) -> tuple[str, ZoneInfo]:
    """The zone and its canonical spelling ('europe/paris' is taken as 'Europe/Paris')."""
    names = _zone_names()
    if name not in names:
        by_case = [z for z in names if z.lower() == name.strip().lower()]
        if len(by_case) == 1:
            name = by_case[0]
    try:
        return name, ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.6)
    suggestion = (f"Did you mean {' or '.join(repr(z) for z in close)}?" if close else
                  "Use an IANA name such as 'Europe/London', 'Asia/Tokyo' or 'UTC'.")
    raise ToolError("not_found", f"{name!r} is not a known time zone.", suggestion)


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


Option = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                          max_length=MAX_OPTION_CHARS)]


class EscalateArgs(ToolArgs):
    reason: str = Field(min_length=1, max_length=300,
                        description="The question or decision you need from a person, in one "
                                    "sentence.")
    context: str = Field(max_length=2000,
                         description="What the person needs to know to answer: what you were "
                                     "doing, what you found, what each option would do.")
    options: list[Option] = Field(
        default_factory=list, max_length=MAX_ESCALATION_OPTIONS,
        description=f"Up to {MAX_ESCALATION_OPTIONS} short answers shown as buttons, each at most "
                    f"{MAX_OPTION_CHARS} characters. Leave empty to ask for a free-text answer.")

    @field_validator("options")
    @classmethod
    def _distinct(cls, options: list[str]) -> list[str]:
        if len(set(options)) != len(options):
            raise ValueError("options must be different from each other")
        return options


@tool(
    name="escalate_to_human",
    description=(
        "Ask a person to decide or to supply something you cannot: spending money, contacting "
        "someone, an ambiguous instruction with real consequences, missing access. The question "
        "is posted to the person with the options as buttons, and this task pauses until they "
        "answer; their answer arrives in a later message. Returns a confirmation that the "
        "question was sent. Call it at most once at a time, and stop after calling it."
    ),
    timeout_s=5.0,
    retry=NO_RETRY,
)
async def escalate_to_human(args: EscalateArgs) -> ToolOutcome:
    # Not a side-effecting tool in the catalog's sense: the executor delivers the question when
    # it parks the run, so a replayed result would lose the escalation itself.
    request = EscalationRequest(reason=args.reason, context=args.context,
                                options=tuple(args.options))
    return ToolOutcome(
        content="The question was sent to a person. This task now waits for their answer, which "
                "will arrive in a later message; do not call other tools or answer for them.",
        escalation=request,
    )


BUILTIN_TOOLS = (get_current_time, fetch_url, escalate_to_human, *MEMORY_TOOLS, search_docs,
                 research, send_file)


def builtin_registry() -> ToolRegistry:
    """A fresh registry holding the built-in tools (custom tool modules are added to it)."""
    return ToolRegistry(BUILTIN_TOOLS)
