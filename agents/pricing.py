"""What a model call costs: the price table and the arithmetic over the API's usage fields."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

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


def worst_case_cost(price: Price, *, input_tokens: int, max_tokens: int) -> float:
    """The most a call can cost: every input token billed at the dearest input rate, full output."""
    dearest_input = max(price.input, price.cache_write_5m, price.cache_write_1h)
    return (input_tokens * dearest_input + max_tokens * price.output) / PER_MILLION
