"""A protocol-faithful fake of the Anthropic Messages API on 127.0.0.1 (aiohttp).

Tests drive the real ``anthropic.AsyncAnthropic`` client against it with
``base_url=server.base_url`` (or ``ANTHROPIC_BASE_URL``). See tests/fakes/README.md, section
"Fake Anthropic", for the scripting API, the token estimate and the cache minimums.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.anthropic_cache import (
    TOKENIZERS,
    CacheUsage,
    PromptCache,
    TokenizerName,
    apply_stop_sequences,
    canonical,
    count_input_tokens,
    prefix_items,
    truncate_output,
)
from tests.fakes.anthropic_validate import (
    ApiError,
    ModelRules,
    impossible_reply,
    sign_thinking,
    thinking_type,
    validate,
)

JSON = dict[str, Any]
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _rand_id(prefix: str, n: int = 22) -> str:
    return prefix + "".join(secrets.choice(_B58) for _ in range(n))


def new_tool_use_id() -> str:
    return _rand_id("toolu_01")


# --------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    id: str
    display_name: str
    created_at: str
    aliases: tuple[str, ...] = ()
    max_tokens: int = 64_000
    context_window: int = 200_000
    min_cacheable_tokens: int = 1024
    thinking_enabled: bool = True
    thinking_adaptive: bool = False
    prefill: bool = True
    thinking_display: str = "summarized"  # default `display` of thinking blocks
    line: str | None = None
    lifecycle: str = "active"
    deprecated_at: str | None = None
    retires_at: str | None = None

    @property
    def rules(self) -> ModelRules:
        return ModelRules(
            self.id,
            self.max_tokens,
            self.context_window,
            self.thinking_enabled,
            self.thinking_adaptive,
            self.prefill,
        )

    def info(self) -> JSON:
        def yes(flag: bool) -> JSON:
            return {"supported": flag}

        adaptive = self.thinking_adaptive
        return {
            "type": "model",
            "id": self.id,
            "display_name": self.display_name,
            "created_at": self.created_at,
            "lifecycle": self.lifecycle,
            "deprecated_at": self.deprecated_at,
            "retires_at": self.retires_at,
            "line": self.line,
            "max_input_tokens": self.context_window,
            "max_tokens": self.max_tokens,
            "capabilities": {
                "batch": yes(True),
                "citations": yes(True),
                "code_execution": yes(True),
                "context_management": {"supported": True},
                "effort": {
                    "supported": adaptive,
                    **{k: yes(adaptive) for k in ("low", "medium", "high", "max")},
                },
                "image_input": yes(True),
                "pdf_input": yes(True),
                "server_tools": {
                    "supported": True,
                    "code_execution": yes(True),
                    "web_search": yes(True),
                },
                "structured_outputs": yes(True),
                "thinking": {
                    "supported": True,
                    "types": {
                        "adaptive": yes(adaptive),
                        "between_tools": yes(adaptive),
                        "disabled": yes(True),
                        "enabled": yes(self.thinking_enabled),
                    },
                },
            },
        }


# Minimum cacheable prefix per the prompt-caching docs' table: 4096 for Opus 4.5/4.6/4.7 and
# Haiku 4.5, 1024 for Sonnet 4.5/4.6. Newest first, like GET /v1/models. Sonnet 4.5 and Opus 4.5
# are deprecated with the retirement dates of the SDK's DEPRECATED_MODELS table (the date they
# were deprecated is not known here, so deprecated_at stays null).
DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "claude-opus-4-7", "Claude Opus 4.7", "2026-04-16T00:00:00Z",
        max_tokens=128_000, context_window=1_000_000, min_cacheable_tokens=4096,
        thinking_enabled=False, thinking_adaptive=True, prefill=False, line="opus",
        thinking_display="omitted",
    ),
    ModelSpec(
        "claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z",
        context_window=1_000_000, min_cacheable_tokens=1024,
        thinking_adaptive=True, prefill=False, line="sonnet",
    ),
    ModelSpec(
        "claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-24T00:00:00Z",
        aliases=("claude-opus-4-5",), min_cacheable_tokens=4096, line="opus",
        lifecycle="deprecated", retires_at="2027-01-22T00:00:00Z",
    ),
    ModelSpec(
        "claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z",
        aliases=("claude-haiku-4-5",), min_cacheable_tokens=4096, line="haiku",
    ),
    ModelSpec(
        "claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z",
        aliases=("claude-sonnet-4-5",), min_cacheable_tokens=1024, line="sonnet",
        lifecycle="deprecated", retires_at="2026-11-30T00:00:00Z",
    ),
)  # fmt: skip


# ------------------------------------------------------------------------------------ scripting


def text(value: str) -> JSON:
    return {"type": "text", "text": value}


def tool_use(name: str, input: JSON | None = None, id: str | None = None) -> JSON:
    return {"type": "tool_use", "id": id or new_tool_use_id(), "name": name, "input": input or {}}


def thinking(value: str) -> JSON:
    """A thinking block; the fake signs it when it is sent (``sign_thinking``)."""
    return {"type": "thinking", "thinking": value, "signature": sign_thinking(value)}


def redacted_thinking(data: str | None = None) -> JSON:
    return {"type": "redacted_thinking", "data": data or "EmwK" + secrets.token_urlsafe(48)}


@dataclass
class Reply:
    """A scripted successful answer. ``stop_reason`` None means: tool_use if a tool_use block is
    present, else end_turn (max_tokens / stop_sequence are computed from the request)."""

    content: list[JSON]
    stop_reason: str | None = None
    stop_details: JSON | None = None
    latency: float | None = None
    stream_delay: float = 0.0  # pause between SSE events
    stream_error_after: int | None = None  # SSE: overloaded `event: error` after N events
    drop_after: int | None = None
    """The connection is cut after N SSE events (a plain call: after half its body is sent),
    with no end to the chunked body: a network failure mid-answer, billed by the real API."""


@dataclass
class ErrorReply:
    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    latency: float | None = None


Scripted = Reply | ErrorReply
Responder = Callable[["RecordedRequest"], "Scripted | None | Awaitable[Scripted | None]"]


def reply(*blocks: JSON | str, stop_reason: str | None = None, **kw: Any) -> Reply:
    content = [text(b) if isinstance(b, str) else b for b in blocks]
    return Reply(content, stop_reason=stop_reason, **kw)


def refusal(
    partial_text: str = "", category: str | None = None, explanation: str | None = None, **kw: Any
) -> Reply:
    details = {"type": "refusal", "category": category, "explanation": explanation}
    content = [text(partial_text)] if partial_text else []
    return Reply(content, stop_reason="refusal", stop_details=details, **kw)


def mid_stream_drop(*blocks: JSON | str, after_events: int = 3, **kw: Any) -> Reply:
    """The connection is cut after ``after_events`` events (a plain call: mid-body)."""
    return reply(*blocks, drop_after=after_events, **kw)


def mid_stream_overload(*blocks: JSON | str, after_events: int = 3, **kw: Any) -> Reply:
    """Streaming: send ``after_events`` events, then ``event: error`` (overloaded_error).
    A non-streaming request given this item gets a 529 instead."""
    return reply(*blocks, stream_error_after=after_events, **kw)


def api_error(
    status: int,
    error_type: str,
    message: str,
    *,
    retry_after: float | None = None,
    retry_after_ms: float | None = None,
    should_retry: bool | None = None,
    latency: float | None = None,
) -> ErrorReply:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = str(int(math.ceil(retry_after)))
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    if should_retry is not None:
        headers["x-should-retry"] = "true" if should_retry else "false"
    return ErrorReply(status, error_type, message, headers, latency)


def overloaded(**kw: Any) -> ErrorReply:
    return api_error(529, "overloaded_error", "Overloaded", **kw)


def server_error(**kw: Any) -> ErrorReply:
    return api_error(500, "api_error", "Internal server error", **kw)


def rate_limited(retry_after: float = 1, **kw: Any) -> ErrorReply:
    return api_error(
        429,
        "rate_limit_error",
        "This request would exceed your organization's rate limit. Please reduce the prompt "
        "length or the maximum tokens requested, or try again later.",
        retry_after=retry_after,
        **kw,
    )


# ------------------------------------------------------------------------------------ recording


@dataclass
class RecordedRequest:
    seq: int
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    stream: bool = False
    status: int | None = None
    request_id: str = ""
    response: Any = None  # JSON body, or for a stream the Message the events add up to
    events: list[tuple[str, JSON]] = field(default_factory=list)
    usage: JSON | None = None
    error: JSON | None = None
    note: str | None = None  # why the fake could not answer (see FakeAnthropic.unexpected)

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def messages(self) -> list[JSON]:
        return list(self.body.get("messages") or []) if isinstance(self.body, dict) else []

    @property
    def last_user_text(self) -> str:
        """The text blocks of the last user message, joined (handy in a responder)."""
        users = [m for m in self.messages if m.get("role") == "user"]
        if not users:
            return ""
        content = users[-1].get("content")
        if isinstance(content, str):
            return content
        return "".join(str(b.get("text", "")) for b in content or [] if b.get("type") == "text")

    @property
    def tool_results(self) -> list[JSON]:
        """The tool_result blocks of the last message (empty unless it answers tool calls)."""
        if not self.messages:
            return []
        content = self.messages[-1].get("content")
        if not isinstance(content, list):
            return []
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return self.headers.get("x-api-key")


# --------------------------------------------------------------------------------------- server


class FakeAnthropic:
    def __init__(
        self,
        *,
        models: tuple[ModelSpec, ...] | list[ModelSpec] = DEFAULT_MODELS,
        api_keys: set[str] | None = None,
        min_cacheable_tokens: dict[str, int] | None = None,
        default_latency: float = 0.0,
        clock: Callable[[], float] | None = None,
        responder: Responder | None = None,
        require_first_user: bool = False,
        stream_chunk_chars: int = 24,
        tokenizer: TokenizerName = "chars4",
    ) -> None:
        self.models = list(models)
        self.tokenizer = tokenizer
        self.block_tokens = TOKENIZERS[tokenizer]
        self.api_keys = api_keys
        self.min_cacheable_overrides = dict(min_cacheable_tokens or {})
        self.default_latency = default_latency
        self.responder = responder
        self.require_first_user = require_first_user
        self.stream_chunk_chars = stream_chunk_chars
        self._base_clock = clock or time.monotonic
        self._clock_offset = 0.0
        self.cache = PromptCache(self.now)
        self.queue: deque[Scripted] = deque()
        self.requests: list[RecordedRequest] = []
        self.unexpected: list[RecordedRequest] = []
        self.organization_id = str(uuid.uuid4())
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- lifecycle
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeAnthropic is not started")
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAnthropic:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAnthropic:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- clock and cache
    def now(self) -> float:
        return self._base_clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        self._clock_offset += seconds

    def min_cacheable(self, spec: ModelSpec) -> int:
        for name in (spec.id, *spec.aliases):
            if name in self.min_cacheable_overrides:
                return self.min_cacheable_overrides[name]
        return spec.min_cacheable_tokens

    def find_model(self, name: object) -> ModelSpec | None:
        for spec in self.models:
            if name == spec.id or name in spec.aliases:
                return spec
        return None

    # --- scripting
    def enqueue(self, *items: Scripted) -> None:
        self.queue.extend(items)

    def add_reply(self, *blocks: JSON | str, **kw: Any) -> Reply:
        item = reply(*blocks, **kw)
        self.queue.append(item)
        return item

    def add_error(self, item: ErrorReply) -> None:
        self.queue.append(item)

    def reset(self) -> None:
        """Forget the script, the recorded requests and the prompt cache."""
        self.queue.clear()
        self.requests.clear()
        self.unexpected.clear()
        self.cache.clear()

    @property
    def pending(self) -> int:
        return len(self.queue)

    # --- assertions
    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    @property
    def count_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages/count_tokens"]

    @property
    def last_request(self) -> RecordedRequest:
        return self.message_requests[-1]

    def count_tokens(self, body: JSON) -> int:
        """The input-token estimate of a request body (what /count_tokens answers)."""
        return count_input_tokens(body, self.block_tokens)

    # --- HTTP
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        parse_error = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                parse_error = True
        rec = RecordedRequest(
            seq=len(self.requests),
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            stream=isinstance(body, dict) and body.get("stream") is True,
            request_id=_rand_id("req_011C", 20),
        )
        self.requests.append(rec)
        try:
            self._check_auth(rec)
            if parse_error:
                raise ApiError(400, "invalid_request_error", "Request body is not valid JSON.")
            route = (request.method, request.path)
            if route == ("POST", "/v1/messages"):
                return await self._messages(request, rec)
            if route == ("POST", "/v1/messages/count_tokens"):
                return self._count_tokens(rec)
            if route == ("GET", "/v1/models"):
                lifecycle = request.query.getall("lifecycle[]", []) or request.query.getall(
                    "lifecycle", []
                )
                return self._json(rec, 200, self._list_models(rec.query, lifecycle))
            if request.method == "GET" and request.path.startswith("/v1/models/"):
                name = request.path.removeprefix("/v1/models/")
                spec = self.find_model(name)
                if spec is None:
                    raise ApiError(404, "not_found_error", f"model: {name}")
                return self._json(rec, 200, spec.info())
            raise ApiError(404, "not_found_error", "Not Found")
        except ApiError as err:
            return self._error(rec, err.status, err.error_type, err.message)
        except ConnectionResetError:
            # the client went away mid-answer (a killed process, a cancelled stream): the real
            # API just stops writing; nothing here is a bug of the fake or of the script
            rec.note = "client disconnected before the answer was written"
            raise
        except Exception as exc:  # a bug in a responder or in the fake: make it visible
            return self._script_problem(rec, f"FakeAnthropic crashed: {exc!r}")

    def _check_auth(self, rec: RecordedRequest) -> None:
        auth = rec.headers.get("authorization", "")
        key = rec.headers.get("x-api-key", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
            if not token or (self.api_keys is not None and token not in self.api_keys):
                raise ApiError(401, "authentication_error", "Invalid bearer token")
            return
        if not key:
            raise ApiError(401, "authentication_error", "x-api-key header is required")
        if self.api_keys is not None and key not in self.api_keys:
            raise ApiError(401, "authentication_error", "invalid x-api-key")

    def _headers(self, rec: RecordedRequest, content_type: str) -> dict[str, str]:
        return {
            "content-type": content_type,
            "request-id": rec.request_id,
            "anthropic-organization-id": self.organization_id,
        }

    def _json(self, rec: RecordedRequest, status: int, payload: JSON) -> web.Response:
        rec.status, rec.response = status, payload
        return web.Response(
            status=status,
            text=json.dumps(payload),
            headers=self._headers(rec, "application/json"),
        )

    def _error(
        self,
        rec: RecordedRequest,
        status: int,
        error_type: str,
        message: str,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        error: JSON = {"type": error_type, "message": message}
        payload: JSON = {"type": "error", "error": error, "request_id": rec.request_id}
        retryable = status in (408, 409, 429) or status >= 500
        resp = self._json(rec, status, payload)
        resp.headers["x-should-retry"] = "true" if retryable else "false"
        resp.headers.update(extra or {})
        rec.error = error
        return resp

    def _resolve(self, rec: RecordedRequest, count_only: bool) -> tuple[JSON, ModelSpec]:
        if "anthropic-version" not in rec.headers:
            raise ApiError(400, "invalid_request_error", "anthropic-version: header is required")
        body = rec.body
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request_error", "Input should be a valid dictionary")
        if "model" not in body:
            raise ApiError(400, "invalid_request_error", "model: Field required")
        spec = self.find_model(body["model"])
        if spec is None:
            raise ApiError(404, "not_found_error", f"model: {body['model']}")
        validate(
            body,
            spec.rules,
            count_only=count_only,
            require_first_user=self.require_first_user,
            tokens=self.block_tokens,
        )
        return body, spec

    def _count_tokens(self, rec: RecordedRequest) -> web.Response:
        body, _ = self._resolve(rec, count_only=True)
        return self._json(rec, 200, {"input_tokens": count_input_tokens(body, self.block_tokens)})

    def _list_models(self, query: dict[str, str], lifecycle: list[str]) -> JSON:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise ApiError(
                400, "invalid_request_error", "limit: Input should be between 1 and 1000"
            )
        wanted = set(lifecycle or ["active", "deprecated"])
        infos = [spec.info() for spec in self.models if spec.lifecycle in wanted]
        ids = [i["id"] for i in infos]
        start, end = 0, len(infos)
        if "after_id" in query and query["after_id"] in ids:
            start = ids.index(query["after_id"]) + 1
        if "before_id" in query and query["before_id"] in ids:
            end = ids.index(query["before_id"])
            start = max(start, end - limit)
        page = infos[start : min(end, start + limit)]
        has_more = (start > 0) if "before_id" in query else (start + len(page) < end)
        return {
            "data": page,
            "has_more": has_more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }

    # --- POST /v1/messages
    async def _messages(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        body, spec = self._resolve(rec, count_only=False)
        items = prefix_items(body, self.block_tokens)
        if body["max_tokens"] == 0:  # cache pre-warming: no generation, no scripted item used
            usage = self.cache.account(spec.id, items, self.min_cacheable(spec))
            return await self._send(request, rec, self._message(spec, Reply([]), body, usage))
        scripted = await self._next_scripted(rec)
        if scripted is None:
            return self._script_problem(
                rec,
                "FakeAnthropic has no scripted response for this request (queue empty, no "
                "responder); script one with enqueue()/add_reply() or set responder.",
            )
        problem = None
        if isinstance(scripted, Reply):
            problem = impossible_reply(scripted.content, scripted.stop_reason, body)
        if problem is not None:
            return self._script_problem(rec, f"FakeAnthropic script error: {problem}")
        latency = scripted.latency if scripted.latency is not None else self.default_latency
        if latency:
            await asyncio.sleep(latency)
        if isinstance(scripted, ErrorReply):
            return self._error(
                rec, scripted.status, scripted.error_type, scripted.message, scripted.headers
            )
        if scripted.stream_error_after is not None and not rec.stream:
            return self._error(rec, 529, "overloaded_error", "Overloaded")
        usage = self.cache.account(spec.id, items, self.min_cacheable(spec))
        message = self._message(spec, scripted, body, usage)
        return await self._send(request, rec, message, scripted)

    def _script_problem(self, rec: RecordedRequest, message: str) -> web.Response:
        """Not an API behaviour: the test's script cannot answer this request. Recorded in
        ``unexpected`` and answered 500 with x-should-retry: false (so the SDK does not retry)."""
        rec.note = message
        self.unexpected.append(rec)
        return self._error(rec, 500, "api_error", message, {"x-should-retry": "false"})

    async def _next_scripted(self, rec: RecordedRequest) -> Scripted | None:
        if self.queue:
            return self.queue.popleft()
        if self.responder is None:
            return None
        result = self.responder(rec)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _message(self, spec: ModelSpec, scripted: Reply, body: JSON, usage: CacheUsage) -> JSON:
        content = copy.deepcopy(scripted.content)
        for block in content:
            if block.get("type") == "tool_use" and not block.get("id"):
                block["id"] = new_tool_use_id()
            if block.get("type") == "thinking":
                block["signature"] = sign_thinking(str(block.get("thinking", "")))
        if thinking_type(body) == "enabled" and body["max_tokens"] > 0:
            if not content or content[0].get("type") not in ("thinking", "redacted_thinking"):
                content.insert(0, thinking(""))  # with `enabled`, a reply always starts thinking
        stop_reason = scripted.stop_reason if body["max_tokens"] > 0 else "max_tokens"
        stop_sequence = None
        content, hit = apply_stop_sequences(content, body.get("stop_sequences") or [])
        if hit is not None:
            stop_reason, stop_sequence = "stop_sequence", hit
        content, truncated = truncate_output(
            content, int(body["max_tokens"]), sign_thinking, self.block_tokens
        )
        if truncated:
            stop_reason, stop_sequence = "max_tokens", None
        if stop_reason is None:
            has_tool = any(b.get("type") == "tool_use" for b in content)
            stop_reason = "tool_use" if has_tool else "end_turn"
        output = sum(self.block_tokens(b) for b in content)
        output = min(max(output, 1), int(body["max_tokens"]))
        if _thinking_display(body, spec) == "omitted":  # billed in full, returned empty
            content = [_omit_thinking(b) for b in content]
        return {
            "id": _rand_id("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": spec.id,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "stop_details": scripted.stop_details if stop_reason == "refusal" else None,
            "usage": {
                "input_tokens": usage.input_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": usage.ephemeral_5m_input_tokens,
                    "ephemeral_1h_input_tokens": usage.ephemeral_1h_input_tokens,
                },
                "output_tokens": output,
                "service_tier": "standard",
            },
        }

    async def _send(
        self,
        request: web.Request,
        rec: RecordedRequest,
        message: JSON,
        scripted: Reply | None = None,
    ) -> web.StreamResponse:
        rec.usage = message["usage"]
        drop_after = scripted.drop_after if scripted else None
        if not rec.stream and drop_after is not None:
            return await self._cut_body(request, rec, message)
        if not rec.stream:
            return self._json(rec, 200, message)
        rec.status, rec.response = 200, message
        resp = web.StreamResponse(status=200, headers=self._headers(rec, "text/event-stream"))
        resp.headers["cache-control"] = "no-cache"
        await resp.prepare(request)
        delay = scripted.stream_delay if scripted else 0.0
        fail_after = scripted.stream_error_after if scripted else None
        try:
            for n, (event, data) in enumerate(self._events(message)):
                if fail_after is not None and n >= fail_after:
                    event, data = (
                        "error",
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        },
                    )
                    rec.error = data["error"]
                if drop_after is not None and n >= drop_after:
                    _cut(request)
                    return resp
                rec.events.append((event, data))
                await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                if event == "error":
                    break
                if delay:
                    await asyncio.sleep(delay)
            await resp.write_eof()
        except ConnectionError:  # the client went away mid-stream
            pass
        return resp

    async def _cut_body(self, request: web.Request, rec: RecordedRequest,
                        message: JSON) -> web.StreamResponse:
        """A plain answer whose connection is cut halfway through its body."""
        body = json.dumps(message).encode()
        rec.status, rec.response = 200, message
        resp = web.StreamResponse(status=200, headers=self._headers(rec, "application/json"))
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        _cut(request)
        return resp

    def _events(self, message: JSON) -> list[tuple[str, JSON]]:
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["stop_details"] = None
        start["usage"] = {**usage, "output_tokens": min(1, usage["output_tokens"])}
        events: list[tuple[str, JSON]] = [
            ("message_start", {"type": "message_start", "message": start}),
            ("ping", {"type": "ping"}),
        ]
        size = max(1, self.stream_chunk_chars)
        for index, block in enumerate(message["content"]):
            kind = block.get("type")
            deltas: list[JSON] = []
            if kind == "text":
                empty: JSON = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"], size)]
            elif kind == "tool_use":
                empty = {**block, "input": {}}
                raw = json.dumps(block["input"], ensure_ascii=False) if block["input"] else ""
                deltas = [{"type": "input_json_delta", "partial_json": ""}]
                deltas += [
                    {"type": "input_json_delta", "partial_json": c} for c in _chunks(raw, size)
                ]
            elif kind == "thinking":
                empty = {"type": "thinking", "thinking": "", "signature": ""}
                chunks = _chunks(block["thinking"], size)
                deltas = [{"type": "thinking_delta", "thinking": c} for c in chunks]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            else:
                empty = block
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": empty},
                )
            )
            for delta in deltas:
                events.append(
                    (
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        delta_usage = {
            k: usage[k]
            for k in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            )
        }
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": message["stop_reason"],
                        "stop_sequence": message["stop_sequence"],
                        "stop_details": message["stop_details"],
                    },
                    "usage": delta_usage,
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events


def _thinking_display(body: JSON, spec: ModelSpec) -> str:
    config = body.get("thinking")
    display = config.get("display") if isinstance(config, dict) else None
    return str(display or spec.thinking_display)


def _omit_thinking(block: JSON) -> JSON:
    if block.get("type") != "thinking":
        return block
    return {**block, "thinking": "", "signature": sign_thinking("")}


def _chunks(value: str, size: int) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)]


__all__ = [
    "DEFAULT_MODELS",
    "ErrorReply",
    "FakeAnthropic",
    "ModelSpec",
    "RecordedRequest",
    "Reply",
    "api_error",
    "canonical",
    "mid_stream_overload",
    "new_tool_use_id",
    "overloaded",
    "rate_limited",
    "redacted_thinking",
    "refusal",
    "reply",
    "server_error",
    "sign_thinking",
    "text",
    "thinking",
    "tool_use",
]


def _cut(request: web.Request) -> None:
    """Close the connection under a response being sent: the client sees its body end early."""
    transport = request.transport
    if transport is not None:
        transport.abort()
