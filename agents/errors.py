"""keel's exceptions.

    KeelError
    ├── ConfigError                 a setting is missing or wrong; the message says how to fix it
    │   ├── MissingSettingError     a required environment variable is not set
    │   └── UnknownModelPriceError  a model has no price, so a run would spend unmetered
    ├── DailyCapExceeded            the usage ledger says today's cap is spent; no run starts
    └── ModelCallError              the model API failed after the SDK's bounded retries

Limits that end a run (budget, steps, time) are not exceptions callers see: the executor turns
them into a run status. Tool failures are data (see ``agents.tools.errors.ToolError``).
"""

from __future__ import annotations


class KeelError(Exception):
    """Base class for every error keel raises on purpose."""


class ConfigError(KeelError):
    """The configuration is missing something or holds a wrong value."""


class MissingSettingError(ConfigError):
    def __init__(self, variable: str, how: str) -> None:
        self.variable = variable
        self.how = how
        super().__init__(f"{variable} is not set. {how}")


class UnknownModelPriceError(ConfigError):
    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        super().__init__(
            f"No price is known for model {model!r}, so keel cannot bound what a run spends and "
            f"refuses to start it. Add it under [prices.{model!r}] in keel.toml "
            f"(input, output, cache_write_5m, cache_write_1h, cache_read in USD per million "
            f"tokens) or pin one of: {', '.join(sorted(known))}."
        )


class DailyCapExceeded(KeelError):
    def __init__(self, scope: str, spent: float, cap: float) -> None:
        self.scope = scope
        self.spent = spent
        self.cap = cap
        super().__init__(
            f"The daily budget for {scope} is spent (${spent:.4f} of ${cap:.2f}); "
            f"no new run starts until midnight UTC or until the cap is raised."
        )


class ModelCallError(KeelError):
    """The model API failed after bounded retries (rate limits, overload, server errors)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 partial: bool = False) -> None:
        self.status = status
        self.retryable = retryable
        self.partial = partial
        """The answer had begun to stream, then broke off (an error event, a dropped
        connection): the SDK does not retry that, and the call may have been billed."""
        super().__init__(message)
