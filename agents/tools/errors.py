"""Tool failures as data.

A tool raises ``ToolError``; the catalog turns it into an ``is_error`` tool result whose content is
a small JSON object the model can reason about::

    {"error": "not_found", "message": "...", "suggestion": "..."}

The codes are a closed set, so prompts and tests can name them:

    invalid_arguments    the call does not match the tool's schema (the message names the field)
    unknown_tool         no tool of that name in this agent's catalog
    deprecated           an old tool version past its retirement date
    not_found            the thing asked for does not exist (a page, a time zone)
    forbidden            refused on purpose (a private address, a scheme we do not fetch)
    unsupported          understood but not handled (a binary content type)
    rate_limited         too many calls; the message says when to retry
    timeout              the call ran out of time
    upstream_error       a service the tool depends on failed
    internal_error       a bug in the tool; details are in the trace, never in the result
    denied               a person asked to approve the call said no; it did not run
    not_approved         the call needs a person's approval that was not asked for; it did not run
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

ErrorCode = Literal[
    "invalid_arguments",
    "unknown_tool",
    "deprecated",
    "not_found",
    "forbidden",
    "unsupported",
    "rate_limited",
    "timeout",
    "upstream_error",
    "internal_error",
    "denied",
    "not_approved",
]
ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))


class ToolError(Exception):
    """A failure the model should read: what went wrong and what to do instead.

    ``retryable`` means trying the same call again may succeed (a flaky upstream, a timeout);
    the catalog then retries within the call's bounded attempts. ``retry_after_s`` is an upstream
    hint (e.g. a 429's ``Retry-After``) honoured by those retries.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        suggestion: str | None = None,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown tool error code {code!r}; use one of {sorted(ERROR_CODES)}")
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.suggestion = suggestion
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    def payload(self) -> dict[str, Any]:
        """The JSON object the model reads."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.suggestion:
            body["suggestion"] = self.suggestion
        if self.retry_after_s is not None:
            body["retry_after_s"] = round(self.retry_after_s, 1)
        return body

    def content(self) -> str:
        return json.dumps(self.payload(), ensure_ascii=False)

    def __repr__(self) -> str:
        return f"ToolError({self.code!r}, {self.message!r}, retryable={self.retryable})"
