"""Prepare a turn: the exact request for the next model call, with its cache breakpoints."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from agents.caching import system_blocks, tools_without_markers, with_breakpoints, with_ttl
from agents.model.types import ModelRequest
from agents.run import Run
from agents.tokens import estimate, request_bound
from agents.tools.contract import ToolCatalog
from storage.traces import Encoded

PREFIXES_KEPT = 128
"""Prefixes ``Prefix.of`` keeps built: one for each system prompt and tool set in use."""
_built: OrderedDict[tuple[Any, ...], Prefix] = OrderedDict()


@dataclass(frozen=True)
class Prefix:
    """The byte-stable part of every request in a run: tools and system."""

    system: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    sha256: str
    tokens: int
    """A typical size (``agents.tokens.estimate``), for traces."""
    bound: int = 0
    """Tokens the API cannot exceed for tools + system (``agents.tokens.bound``), tool-use
    system prompt included."""
    cached: bool = True
    """Requests carry cache breakpoints (not for one-off requests: ``agents.caching.caches``)."""

    @cached_property
    def encoded(self) -> tuple[Encoded, Encoded]:
        """System and tools for a trace's ``prefix`` event, encoded once for every run that
        shares this prefix (``of``)."""
        return Encoded(self.system), Encoded(self.tools)

    @classmethod
    def build(cls, system: str, tools: list[dict[str, Any]], *, cache: bool = True) -> Prefix:
        blocks = system_blocks(system, cache=cache)
        clean_tools = tools_without_markers(tools)
        digest = hashlib.sha256(
            json.dumps([clean_tools, blocks], sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()
        return cls(blocks, clean_tools, digest, estimate(clean_tools) + estimate(blocks),
                   request_bound(blocks, clean_tools, []), cache)

    @classmethod
    def of(cls, system: str, catalog: ToolCatalog, *, cache: bool = True) -> Prefix:
        """``build`` of a system prompt and a catalog's tools, built once and shared while they
        stay the same. Encoding, hashing and bounding ~6 KB of tools and system for every run
        was ~10% of the event loop's work before a message's model call in a 1,000-chat burst
        (issue 15). Catalogs are told apart by ``schemas_key`` (``Catalog``'s: its current
        ``Tool`` objects, each a definition that never changes: a new version, or a tool
        replaced by config, is a new object); the key holds them, so it cannot outlive them.
        A catalog without one, or whose key is None, is built every time. A shared prefix is
        never changed: requests copy what they mark (``with_ttl``, ``with_breakpoints``)."""
        schemas_key = getattr(catalog, "schemas_key", None)
        tools_key = schemas_key() if callable(schemas_key) else None
        if tools_key is None:
            return cls.build(system, catalog.schemas(), cache=cache)
        key = (system, cache, tools_key)
        prefix = _built.get(key)
        if prefix is None:
            prefix = _built[key] = cls.build(system, catalog.schemas(), cache=cache)
            if len(_built) > PREFIXES_KEPT:
                _built.popitem(last=False)
        else:
            _built.move_to_end(key)
        return prefix


def build_request(
    run: Run,
    prefix: Prefix,
    messages: list[dict[str, Any]],
    *,
    max_tokens: int,
    thinking: dict[str, Any] | None = None,
    tool_choice: dict[str, Any] | None = None,
) -> ModelRequest:
    return ModelRequest(
        model=run.model,
        max_tokens=max_tokens,
        system=with_ttl(prefix.system, run.cache_plan.head) if run.cache_plan else prefix.system,
        tools=prefix.tools,
        messages=with_breakpoints(messages, run.cache_plan) if prefix.cached else list(messages),
        thinking=thinking,
        tool_choice=tool_choice,
    )


def budget_note(left_usd: float, cap_usd: float) -> dict[str, Any]:
    """Told to the model once spend passes the warning line, so it can wrap up."""
    return {
        "type": "text",
        "text": (
            f"[keel] Budget note: ${left_usd:.4f} of this run's ${cap_usd:.2f} budget is left. "
            "Wrap up now: finish with the best answer you can give, and avoid further tool calls "
            "unless they are essential."
        ),
    }
