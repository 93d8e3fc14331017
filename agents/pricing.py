"""What a model call costs: the price table and the arithmetic over the API's usage fields."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, assert_never

from pydantic import BaseModel, ConfigDict, Field

from agents.errors import UnknownModelPriceError

PER_MILLION = 1_000_000
_DATED_SUFFIX = re.compile(r"-\d{8}$")


class Price(BaseModel):
    """USD per million tokens for one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_write_5m: float = Field(ge=0)
    cache_write_1h: float = Field(ge=0)
    cache_read: float = Field(ge=0)


@dataclass(frozen=True, kw_only=True)
class Usage:
    """Token counts of one or more model calls, as the Messages API reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def total_input_tokens(self) -> int:
        """Everything the model read: uncached input, cache writes and cache reads."""
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    @property
    def cache_hit_ratio(self) -> float:
        total = self.total_input_tokens
        return self.cache_read_tokens / total if total else 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_write_5m_tokens=self.cache_write_5m_tokens + other.cache_write_5m_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
        )

    def as_dict(self) -> dict[str, int | float]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_hit_ratio": round(self.cache_hit_ratio, 4),
        }


class PriceTable:
    """Prices by model. Built-in table from ``agents/prices.toml``, overridable from keel.toml."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    @classmethod
    def builtin(cls) -> PriceTable:
        raw = tomllib.loads(resources.files("agents").joinpath("prices.toml").read_text("utf-8"))
        return cls({name: Price.model_validate(value) for name, value in raw.items()})

    def with_overrides(self, overrides: Mapping[str, Price]) -> PriceTable:
        return PriceTable({**self._prices, **overrides})

    @property
    def models(self) -> list[str]:
        return sorted(self._prices)

    def get(self, model: str) -> Price | None:
        """The price of ``model``; a dated id (``claude-haiku-4-5-20251001``) falls back to its alias."""
        return self._prices.get(model) or self._prices.get(_DATED_SUFFIX.sub("", model))

    def require(self, model: str) -> Price:
        price = self.get(model)
        if price is None:
            raise UnknownModelPriceError(model, self.models)
        return price

    def cost(self, model: str, usage: Usage) -> float:
        return cost_of(self.require(model), usage)


def cost_of(price: Price, usage: Usage) -> float:
    """USD for ``usage`` at ``price``."""
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_write_5m_tokens * price.cache_write_5m
        + usage.cache_write_1h_tokens * price.cache_write_1h
        + usage.cache_read_tokens * price.cache_read
    ) / PER_MILLION


CacheTtl = Literal["none", "5m", "1h"]
"""The longest cache write a request can cause: none (no breakpoint), 5 minutes or 1 hour."""


def dearest_input_rate(price: Price, ttl: CacheTtl = "1h") -> float:
    """USD per million of the dearest way an input token of a request can be billed.

    Uncached input, or a cache write of the longest TTL the request's breakpoints name: a request
    whose breakpoints are all 5-minute ones can never be billed the 1-hour write rate (2× input),
    only the 5-minute one (1.25×); one without breakpoints writes nothing."""
    match ttl:
        case "none":
            return price.input
        case "5m":
            return max(price.input, price.cache_write_5m)
        case "1h":
            return max(price.input, price.cache_write_5m, price.cache_write_1h)
        case _:
            assert_never(ttl)


def request_cache_ttl(body: Mapping[str, Any]) -> CacheTtl:
    """The longest cache TTL a Messages API request body can write (see ``dearest_input_rate``)."""
    markers: list[Any] = []
    if "cache_control" in body:  # automatic caching
        markers.append(body["cache_control"])
    for part in ("tools", "system", "messages"):
        for item in body.get(part) or []:
            if not isinstance(item, dict):
                continue
            markers.append(item.get("cache_control"))
            content = item.get("content") if part == "messages" else None
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict):
                    markers.append(block.get("cache_control"))
    ttls = [m.get("ttl", "5m") for m in markers if isinstance(m, dict)]
    if not ttls:
        return "none"
    return "5m" if all(t == "5m" for t in ttls) else "1h"


def worst_case_cost(price: Price, *, input_tokens: int, max_tokens: int,
                    ttl: CacheTtl = "1h") -> float:
    """The most a call can cost: every input token at the dearest rate its TTL allows, full output."""
    return (input_tokens * dearest_input_rate(price, ttl) + max_tokens * price.output) / PER_MILLION


def ttl_pays(price: Price, *, chance: float, rewrite_tokens: float, written_tokens: float) -> bool:
    """Whether writing ``written_tokens`` at the 1-hour rate instead of the 5-minute one costs
    less than what it saves: with probability ``chance`` the entry is needed after a 5-minute one
    expired, and ``rewrite_tokens`` are read instead of written again."""
    dearer = written_tokens * (price.cache_write_1h - price.cache_write_5m)
    saved = chance * rewrite_tokens * (price.cache_write_5m - price.cache_read)
    return saved > dearer


def input_rate_bound(price: Price, ttl: CacheTtl, *, input_tokens: int,
                     one_hour_tokens: int = 0) -> float:
    """USD per million input tokens that bounds a request's input cost: tokens up to its last
    1-hour breakpoint (``one_hour_tokens``, an upper bound) at the dearest rate, the rest at the
    dearest rate a 5-minute breakpoint allows. ``ttl`` is ``request_cache_ttl`` of the request."""
    if ttl != "1h" or input_tokens <= 0:
        return dearest_input_rate(price, ttl)
    hour = min(max(one_hour_tokens, 0), input_tokens)
    if hour == 0:  # a 1-hour marker the bound could not place: all of it at the dearest rate
        return dearest_input_rate(price, "1h")
    return (hour * dearest_input_rate(price, "1h")
            + (input_tokens - hour) * dearest_input_rate(price, "5m")) / input_tokens
