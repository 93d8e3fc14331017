"""One call of one resolved tool: validate, de-duplicate, rate-limit, time-bound, retry.

Every failure comes back as an error ``ToolOutcome`` whose content is a ``ToolError`` payload;
only cancellation (the run's deadline, a shutdown) propagates.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import traceback
import weakref
from typing import Any

from pydantic import BaseModel, ValidationError

from agents.tools import approval
from agents.tools.contract import EscalationRequest, ToolCall, ToolContext, ToolOutcome
from agents.tools.declare import Tool
from agents.tools.errors import ToolError

MAX_CONTENT_CHARS = 50_000
"""A tool result longer than this is cut (with a note) before the model reads it."""


class KeyedLocks:
    """One lock per key, alive while someone holds or waits on it."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def get(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


async def emit(ctx: ToolContext, type_: str, **payload: Any) -> None:
    """Write a trace event; ``ctx.emit`` may be plain or async."""
    result = ctx.emit(type_, **payload)
    if inspect.isawaitable(result):
        await result


def error_outcome(error: ToolError, *, attempts: int = 1) -> ToolOutcome:
    return ToolOutcome(content=error.content(), is_error=True, attempts=attempts)


async def execute(tool: Tool, call: ToolCall, ctx: ToolContext, locks: KeyedLocks) -> ToolOutcome:
    """Run ``call`` against ``tool``; ``version`` and ``duration_s`` are left to the caller."""
    try:
        try:
            args = tool.args_model.model_validate(call.input)
        except ValidationError as exc:
            return error_outcome(invalid_arguments(tool, exc))
        if approval.needs_approval(tool.name, tool.needs_approval, ctx, call.id):
            # a risky call waits for a person: nothing runs until it is approved
            return approval.ask(tool.name, call.input)
        if not tool.dedupes:
            return await _bounded(tool, args, call, ctx)
        return await _once_per_run(tool, args, call, ctx, locks)
    except Exception as exc:  # a bug in the tool or in the machinery around it
        return await internal_error(tool, call, ctx, exc)


async def internal_error(tool: Tool, call: ToolCall, ctx: ToolContext, exc: BaseException,
                         *, attempts: int = 1) -> ToolOutcome:
    # The model gets the exception's type only: messages can carry paths, hosts or secrets.
    await emit(ctx, "error", where="tool", tool=tool.name, version=tool.version,
               tool_use_id=call.id, message=f"{type(exc).__name__}: {exc}",
               traceback="".join(traceback.format_exception(exc)))
    error = ToolError("internal_error",
                      f"{tool.name} failed unexpectedly ({type(exc).__name__}).",
                      "This is a bug in the tool, not in your call; continue without it or "
                      "tell the person it is unavailable.")
    return error_outcome(error, attempts=attempts)


async def _once_per_run(tool: Tool, args: BaseModel, call: ToolCall, ctx: ToolContext,
                        locks: KeyedLocks) -> ToolOutcome:
    """A side effect happens once per (request, tool version, canonical arguments): a run
    retried after a crash serves the same request and gets the stored result back."""
    canonical = args.model_dump(mode="json")
    scope = ctx.effect_scope
    key = json.dumps([scope, tool.versioned_name, canonical], sort_keys=True, default=str)
    async with locks.get(key):  # the same call twice in one turn runs one after the other
        stored = await ctx.idempotency.get(scope, tool.versioned_name, canonical)
        if stored is not None:
            return ToolOutcome(content=stored, attempts=0, replayed=True)
        outcome = await _bounded(tool, args, call, ctx)
        if not outcome.is_error:
            try:
                await ctx.idempotency.put(scope, tool.versioned_name, canonical,
                                          outcome.content)
            except Exception as exc:  # the effect happened; the model must still hear of it
                await emit(ctx, "error", where="idempotency", tool=tool.name,
                           tool_use_id=call.id, message=f"{type(exc).__name__}: {exc}")
        return outcome


class _Attempts:
    count = 0


async def _bounded(tool: Tool, args: BaseModel, call: ToolCall, ctx: ToolContext) -> ToolOutcome:
    """All attempts, their backoff and any rate-limit wait share one timeout."""
    timeout_s = tool.timeout_s if tool.timeout_s is not None else ctx.default_timeout_s
    attempts = _Attempts()
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            return await _attempt_loop(tool, args, call, ctx, deadline, attempts)
    except TimeoutError:
        if not deadline.expired():
            raise
        error = ToolError("timeout", f"{tool.name} did not finish within {timeout_s:g} s.",
                          "Try again later or with a smaller request, or go on without it.")
        return error_outcome(error, attempts=max(attempts.count, 1))


async def _attempt_loop(tool: Tool, args: BaseModel, call: ToolCall, ctx: ToolContext,
                        deadline: asyncio.Timeout, attempts: _Attempts) -> ToolOutcome:
    policy = tool.retry
    loop = asyncio.get_running_loop()
    failure: ToolError | None = None
    for attempt in range(1, policy.max_attempts + 1):
        attempts.count = attempt
        refused = await _take_slot(tool, deadline)
        if refused is not None:
            return error_outcome(refused, attempts=attempt)
        try:
            return _success(await _one_attempt(tool, args, ctx), attempt)
        except ToolError as exc:
            failure = exc
        except Exception as exc:
            return await internal_error(tool, call, ctx, exc, attempts=attempt)
        if not failure.retryable or attempt == policy.max_attempts:
            break
        delay = policy.delay_s(attempt)
        if failure.retry_after_s is not None:
            delay = max(delay, failure.retry_after_s)
        when = deadline.when()
        if when is not None and loop.time() + delay >= when:
            break  # the backoff would outlive the call's time: answer now
        await emit(ctx, "tool_retry", tool_use_id=call.id, name=tool.name, version=tool.version,
                   attempt=attempt, error=failure.code, delay_s=round(delay, 3))
        await asyncio.sleep(delay)
    assert failure is not None
    return error_outcome(_gave_up(failure, attempts.count), attempts=attempts.count)


async def _one_attempt(tool: Tool, args: BaseModel, ctx: ToolContext) -> Any:
    call = tool.fn(args, ctx) if tool.takes_ctx else tool.fn(args)
    limit = tool.retry.attempt_timeout_s
    try:
        if limit is None:
            return await call
        cut = asyncio.timeout(limit)
        try:
            async with cut:
                return await call
        except TimeoutError:
            if not cut.expired():
                raise
            raise ToolError("timeout", f"{tool.name} took longer than {limit:g} s.",
                            retryable=True) from None
    except TimeoutError:  # the tool's own timeout (e.g. a client's): worth another try
        raise ToolError("timeout", f"{tool.name} timed out waiting on something it depends on.",
                        retryable=True) from None


async def _take_slot(tool: Tool, deadline: asyncio.Timeout) -> ToolError | None:
    """Wait for the tool's rate limit (``wait``) or answer when to retry (``reject``)."""
    if tool.limiter is None or tool.rate_limit is None:
        return None
    loop = asyncio.get_running_loop()
    while (wait := tool.limiter.try_acquire()) > 0:
        when = deadline.when()
        if tool.rate_limit.mode == "reject" or (when is not None and loop.time() + wait >= when):
            return rate_limited(tool.name, wait)
        await asyncio.sleep(wait)
    return None


def rate_limited(name: str, wait_s: float) -> ToolError:
    seconds = max(1, math.ceil(wait_s))
    return ToolError("rate_limited", f"rate limited, retry in {seconds}s",
                     f"Wait at least {seconds}s before calling {name} again, or do something "
                     "else first.", retry_after_s=wait_s)


def _gave_up(error: ToolError, attempts: int) -> ToolError:
    if attempts <= 1:
        return error
    return ToolError(error.code, f"{error.message} (gave up after {attempts} attempts)",
                     error.suggestion, retry_after_s=error.retry_after_s)


def _success(result: Any, attempts: int) -> ToolOutcome:
    escalation: EscalationRequest | None = None
    if isinstance(result, ToolOutcome):
        content, escalation = result.content, result.escalation
        if result.is_error:
            return ToolOutcome(content=_bounded_text(content), is_error=True, attempts=attempts)
    elif isinstance(result, str):
        content = result
    elif isinstance(result, BaseModel):
        content = result.model_dump_json()
    elif result is None:
        content = "done"
    else:
        content = json.dumps(result, ensure_ascii=False, default=str)
    return ToolOutcome(content=_bounded_text(content), attempts=attempts, escalation=escalation)


def _bounded_text(content: str) -> str:
    if len(content) <= MAX_CONTENT_CHARS:
        return content
    return (content[:MAX_CONTENT_CHARS]
            + f"\n[cut: the result had {len(content)} characters; showing the first "
              f"{MAX_CONTENT_CHARS}]")


def invalid_arguments(tool: Tool, exc: ValidationError) -> ToolError:
    """Name every bad field and what was expected, in words the model can act on."""
    problems = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"]) or "(arguments)"
        kind = err["type"]
        if kind == "missing":
            problems.append(f"{field!r} is required")
        elif kind == "extra_forbidden":
            problems.append(f"{field!r} is not a parameter of {tool.name}")
        else:
            got = json.dumps(err.get("input"), ensure_ascii=False, default=str)
            got = got if len(got) <= 60 else got[:57] + "..."
            problems.append(f"{field!r}: {err['msg']} (got {got})")
    return ToolError("invalid_arguments",
                     f"{tool.name} was called with invalid arguments: {'; '.join(problems)}.",
                     f"Call {tool.name} again with {describe_parameters(tool)}.")


def describe_parameters(tool: Tool) -> str:
    """``url (string, required), timeout (integer)`` from the tool's own schema."""
    props: dict[str, Any] = tool.input_schema.get("properties", {})
    if not props:
        return "no arguments"
    required = set(tool.input_schema.get("required", []))
    parts = []
    for name, prop in props.items():
        kind = "one of " + "/".join(map(str, prop["enum"])) if "enum" in prop else prop.get(
            "type", "value")
        parts.append(f"{name} ({kind}{', required' if name in required else ''})")
    return "parameters " + ", ".join(parts)
