"""Declaring a tool: an async function with a pydantic arguments model becomes a ``Tool``.

    class WeatherArgs(ToolArgs):
        city: str = Field(description="City name, e.g. 'Lisbon'.")
        units: Literal["metric", "imperial"] = "metric"

    @tool(description="Current weather for a city. Use when ... Returns ...", timeout_s=10)
    async def get_weather(args: WeatherArgs, ctx: ToolContext) -> dict[str, Any]:
        ...

The first parameter's annotation is the arguments model (validated before the function runs);
the optional second parameter receives the ``ToolContext``. The function returns text, a
JSON-able value, a pydantic model, or a ``ToolOutcome`` (to escalate), and raises ``ToolError``
for failures the model should read.

Name, description and input schema are the whole contract the model sees: treat them as a public
API. Changing the schema means a new ``version``; the old one stays callable until its
``deprecated_after`` date (see ``registry.py`` for how old versions are named and reached).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from datetime import date
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from agents.patterns_config import GraderConfig
from agents.tools.contract import ToolFunction
from agents.tools.policy import RateLimit, RateLimiter, RetryPolicy
from agents.tools.schema import narrow_schema

# What the Anthropic API accepts as a tool name (its limit is 128; 64 keeps every provider happy).
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Old versions are offered as ``<name>_v<version>``, so a plain name may not look like that.
VERSIONED_NAME = re.compile(r"^(?P<name>.+)_v(?P<version>[0-9]+)$")

DEFAULT_RETRY = RetryPolicy()

NOT_IDEMPOTENT_NOTE = ("Not idempotent: every call repeats its effect, even with the same "
                       "arguments, so call it once per intended effect.")
IDEMPOTENT_NOTE = ("Calling it again with the same arguments in the same task returns the first "
                   "result instead of repeating the effect.")


class ToolArgs(BaseModel):
    """Base for tool arguments: unknown fields are refused, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Tool:
    """One version of one tool, ready to be registered."""

    definition_fixed: ClassVar[bool] = True
    """``definition`` is the same for the object's whole life (it is made from what
    ``__init__`` was given), so what is built from it can be kept (``Catalog.schemas_key``)."""

    def __init__(
        self,
        *,
        fn: ToolFunction,
        name: str,
        description: str,
        args_model: type[BaseModel],
        version: int = 1,
        timeout_s: float | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        side_effects: bool = False,
        idempotent: bool = True,
        rate_limit: RateLimit | None = None,
        deprecated_after: date | None = None,
        replaced_by: str | None = None,
        needs_approval: bool = False,
        grader: GraderConfig | dict[str, Any] | None = None,
    ) -> None:
        if not TOOL_NAME.match(name):
            raise ValueError(f"tool name {name!r} must match {TOOL_NAME.pattern}")
        if VERSIONED_NAME.match(name):
            raise ValueError(f"tool name {name!r} ends like a version suffix (_v<N>), which is "
                             "reserved for old versions; pick another name")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"tool {name!r}: version must be a positive integer, not {version!r}")
        if not description.strip():
            raise ValueError(f"tool {name!r} needs a description: when to use it, what comes back")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"tool {name!r}: timeout_s must be positive")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"tool {name!r}: {fn!r} must be an async function")
        self.fn = fn
        self.name = name
        self.version = version
        self.args_model = _strict(args_model)
        self.timeout_s = timeout_s
        self.retry = retry
        self.side_effects = side_effects
        self.idempotent = idempotent
        self.rate_limit = rate_limit
        self.deprecated_after = deprecated_after
        self.replaced_by = replaced_by
        self.needs_approval = needs_approval
        self.grader = (GraderConfig.model_validate(grader) if isinstance(grader, dict)
                       else grader)
        self._declared_description = description.strip()
        self.description = _with_notes(description.strip(), side_effects, idempotent)
        self.input_schema = narrow_schema(self.args_model)
        self.limiter = RateLimiter(rate_limit) if rate_limit is not None else None
        self.takes_ctx = len(inspect.signature(fn).parameters) >= 2

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    @property
    def versioned_name(self) -> str:
        """The name that reaches exactly this version, e.g. ``fetch_url_v1``."""
        return f"{self.name}_v{self.version}"

    @property
    def dedupes(self) -> bool:
        """Whether results are stored per (run, tool, arguments) so the effect happens once."""
        return self.side_effects and self.idempotent

    def definition(self) -> dict[str, Any]:
        """The tool definition sent to the model (a fresh copy; key order is fixed)."""
        return {"name": self.name, "description": self.description,
                "input_schema": _copy(self.input_schema)}

    def replace(self, **changes: Any) -> Tool:
        """A copy with some declarations changed (e.g. a shorter timeout for one deployment)."""
        fields = dict(fn=self.fn, name=self.name, description=self._declared_description,
                      args_model=self.args_model, version=self.version, timeout_s=self.timeout_s,
                      retry=self.retry, side_effects=self.side_effects, idempotent=self.idempotent,
                      rate_limit=self.rate_limit, deprecated_after=self.deprecated_after,
                      replaced_by=self.replaced_by, needs_approval=self.needs_approval,
                      grader=self.grader)
        return Tool(**{**fields, **changes})

    def retired(self, today: date) -> bool:
        return self.deprecated_after is not None and today > self.deprecated_after

    def __repr__(self) -> str:
        return f"<Tool {self.name} v{self.version}>"


def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    version: int = 1,
    timeout_s: float | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    side_effects: bool = False,
    idempotent: bool = True,
    rate_limit: RateLimit | None = None,
    deprecated_after: date | None = None,
    replaced_by: str | None = None,
    args_model: type[BaseModel] | None = None,
    needs_approval: bool = False,
    grader: GraderConfig | dict[str, Any] | None = None,
) -> Callable[[ToolFunction], Tool]:
    """Turn an async function into a ``Tool``.

    ``name`` defaults to the function's name and ``description`` to its docstring.
    ``timeout_s`` bounds the whole call, retries included (default: the run's tool timeout).
    ``side_effects=True`` makes results stored per (run, tool, arguments) so a repeated call does
    not repeat the effect; ``idempotent=False`` turns that off and says so in the description.
    ``args_model`` defaults to the first parameter's annotation.
    ``needs_approval=True``: before each call runs, the run parks and an approver is asked, with
    the exact arguments shown (Approve runs it, Deny comes back to the model as an error result).
    keel.toml can require it for more tools per agent (``approve``) or waive it (``no_approval``).
    ``grader`` checks each result (a ``GraderConfig`` or its fields, e.g. ``{"kind": "parses"}``):
    a result that fails reaches the model with the check's feedback appended, so it may call the
    tool again; a second failure in a row parks the run for a person, shown both results
    (agents/reflexion.py). keel.toml's ``graders`` sets or overrides it per agent.
    """

    def decorate(fn: ToolFunction) -> Tool:
        return Tool(
            fn=fn,
            name=name or fn.__name__,
            description=description or inspect.getdoc(fn) or "",
            args_model=args_model or _args_model(fn),
            version=version,
            timeout_s=timeout_s,
            retry=retry,
            side_effects=side_effects,
            idempotent=idempotent,
            rate_limit=rate_limit,
            deprecated_after=deprecated_after,
            replaced_by=replaced_by,
            needs_approval=needs_approval,
            grader=grader,
        )

    return decorate


def _args_model(fn: ToolFunction) -> type[BaseModel]:
    params = list(inspect.signature(fn).parameters)
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:  # a model defined inside a function, under postponed annotations
        raise TypeError(f"tool function {fn.__qualname__!r}: cannot resolve its arguments model "
                        f"({exc}); define the model at module level or pass args_model=") from None
    annotation = hints.get(params[0]) if params else None
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise TypeError(f"tool function {fn.__qualname__!r}: its first parameter must be annotated "
                        "with a pydantic model of its arguments (e.g. `args: FetchArgs`)")
    return annotation


def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """The arguments model with unknown fields refused, as the schema's additionalProperties says."""
    if model.model_config.get("extra") == "forbid":
        return model
    config = ConfigDict(**{**model.model_config, "extra": "forbid"})
    strict: type[BaseModel] = type(model.__name__, (model,), {
        "model_config": config, "__module__": model.__module__, "__qualname__": model.__qualname__,
    })
    return strict


def _with_notes(description: str, side_effects: bool, idempotent: bool) -> str:
    if not side_effects:
        return description
    return f"{description}\n\n{IDEMPOTENT_NOTE if idempotent else NOT_IDEMPOTENT_NOTE}"


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
