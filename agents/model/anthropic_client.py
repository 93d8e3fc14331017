"""The real model client: ``anthropic.AsyncAnthropic`` behind the seam.

The SDK retries 408/409/429/5xx and connection errors itself (bounded by ``max_retries``, honouring
``retry-after``); what is left after that becomes a ``ModelCallError``.

Importing the SDK takes about a second and 40 MB (thousands of modules of API types), and nothing
before the first message needs it: keel's start-up does not import it. ``warm_up()`` (called when
the first update arrives) imports it in a thread, and the first call waits for that import if it
has not finished, so no call ever goes without it and an idle bot never pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from agents.errors import ModelCallError
from agents.ids import new_id
from agents.model.types import ModelRequest, ModelResponse, OnText, usage_from_api

if TYPE_CHECKING:
    import anthropic

MAX_CONNECTIONS = 1000
"""Model calls in flight at once (the SDK's default)."""
KEEP_ALIVE = 20
"""Idle connections kept for the next calls (the SDK keeps 100)."""


FIRST_REQUEST_IMPORTS = ("aiohttp", "anthropic._vendor.httpx_aiohttp.transport")
"""Modules the SDK imports when its first client is built and its first request is sent (anthropic
2.14: 68 modules; these pull in the rest), imported by ``warm_up``'s thread instead."""
TELEMETRY_IMPORTS = ("opentelemetry.propagate",)
"""What the SDK's first request imports besides, when its OpenTelemetry spans are on."""


def _retry_key() -> str:
    return f"stainless-python-retry-{new_id()}"


def sdk_telemetry_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the SDK's own OpenTelemetry spans are wanted: only where the environment sets up
    OpenTelemetry (an ``OTEL_`` variable, as ``opentelemetry-instrument`` sets) or the SDK's
    spans (``ANTHROPIC_OPEN_TELEMETRY...``).

    Otherwise the SDK would still start a span on every call, through OpenTelemetry's no-op
    tracer: its attributes built and its trace headers asked for, ~0.15 ms of the event loop a
    call that nobody records (issue 15). keel's own traces record every call either way."""
    names = os.environ if environ is None else environ
    return any(name.startswith(("OTEL_", "ANTHROPIC_OPEN_TELEMETRY")) for name in names)


class AnthropicModelClient:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 2,
        timeout_s: float = 600.0,
    ) -> None:
        self._options: dict[str, Any] = {"api_key": api_key, "base_url": base_url,
                                         "max_retries": max_retries, "timeout": timeout_s}
        self._client: anthropic.AsyncAnthropic | None = None
        self._ssl: Any = None
        """One TLS context for every pool (built by ``_load``: reading the CA store is ~30 ms)."""
        self._loading: asyncio.Future[Any] | None = None

    def warm_up(self) -> asyncio.Future[Any]:
        """Start importing the SDK in a thread, if it is not imported yet; returns at once, with
        the import's future."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._load))
        return self._loading

    def _load(self) -> Any:
        """In a thread: import the SDK and what its first client and first request would import,
        and build the TLS context (reading the CA store). Done on the event loop, the first call
        of a burst held it for ~100 ms (issue 15)."""
        importlib.import_module("anthropic")
        import httpx2

        wanted = FIRST_REQUEST_IMPORTS + (TELEMETRY_IMPORTS if sdk_telemetry_wanted() else ())
        for name in wanted:
            with contextlib.suppress(Exception):  # an optional module the SDK would skip too
                importlib.import_module(name)
        return httpx2.create_ssl_context()

    async def _ready(self) -> anthropic.AsyncAnthropic:
        """The SDK client (the SDK is imported on the first call, waited for here)."""
        if self._client is None:
            self.warm_up()
            assert self._loading is not None
            # a cancel leaves the import running; its result is the shared TLS context
            self._ssl = await asyncio.shield(self._loading)
            if self._client is None:
                self._client = self._open()
        return self._client

    def _open(self) -> anthropic.AsyncAnthropic:
        import anthropic
        import httpx2

        # aiohttp carries the calls (the SDK's own option, its `aiohttp` extra): httpx's pool
        # walks every connection it holds on each request and each response and asks every
        # idle socket whether the server closed it (two system calls each), which was half of
        # the event loop's work in the longest stalls of a 1,000-chat burst (issue 15). aiohttp
        # takes a kept connection without the walk and parses HTTP in C.
        http = anthropic.DefaultAioHttpClient(verify=self._ssl, limits=httpx2.Limits(
            max_connections=MAX_CONNECTIONS, max_keepalive_connections=KEEP_ALIVE))
        options = dict(self._options)
        if not sdk_telemetry_wanted() and "open_telemetry" in inspect.signature(
                anthropic.AsyncAnthropic.__init__).parameters:  # an SDK without it: left as is
            options["open_telemetry"] = False
        client = anthropic.AsyncAnthropic(**options, http_client=http)
        if callable(getattr(client, "_idempotency_key", None)):
            # the SDK makes a retry key for every request (which the Messages API does not
            # read) with ``uuid.uuid4``: a read of the OS's randomness that gives the
            # interpreter lock away, 1.6% of the event loop in a 1,000-chat burst. The same
            # key, made from keel's ids (agents/ids.py).
            client._idempotency_key = _retry_key  # type: ignore[method-assign]
        return client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        elif self._loading is not None and not self._loading.done():
            await asyncio.gather(self._loading, return_exceptions=True)

    async def count_tokens(self, request: ModelRequest) -> int:
        """The API's input-token count of ``request`` (free; used to tighten budget bounds)."""
        body = {k: v for k, v in request.to_api().items() if k != "max_tokens"}
        import anthropic

        try:
            client = await self._ready()
            result = await client.messages.count_tokens(**body)
        except anthropic.APIStatusError as exc:
            raise ModelCallError(f"count_tokens answered {exc.status_code}: {_error_message(exc)}",
                                 status=exc.status_code) from None
        except anthropic.APIError as exc:
            raise ModelCallError(f"count_tokens failed: {exc}", retryable=True) from None
        return int(result.input_tokens)

    async def create(self, request: ModelRequest, *, on_text: OnText | None = None) -> ModelResponse:
        body = request.to_api()
        started = time.monotonic()
        client = await self._ready()  # (the SDK is imported by then)
        import aiohttp
        import anthropic
        import httpx2

        try:
            if on_text is None:
                raw = await client.messages.with_raw_response.create(**body)
                # the body as the API sent it: building the SDK's models only to dump them
                # back to the same dict was most of the client's CPU for a plain call
                dumped = _without_none(raw.http_response.json())
                request_id = raw.headers.get("request-id")
            else:
                # the events read as the API sends them (the SDK's stream builds a typed
                # model of every event and re-parses a tool's whole input at each piece)
                async with client.messages.with_streaming_response.create(
                        **body, stream=True) as streamed:
                    request_id = streamed.headers.get("request-id")
                    dumped = _without_none(await _accumulate(
                        _sse_events(streamed.http_response.aiter_lines()), on_text))
        except anthropic.APIStatusError as exc:
            raise ModelCallError(
                f"model API answered {exc.status_code}: {_error_message(exc)}",
                status=exc.status_code,
                retryable=exc.status_code in (408, 409, 429) or exc.status_code >= 500,
            ) from None
        except anthropic.APIConnectionError as exc:
            raise ModelCallError(f"model API unreachable: {exc}", retryable=True) from None
        except anthropic.APIError as exc:
            raise ModelCallError(f"model API error: {exc}", retryable=True) from None
        except (httpx2.HTTPError, aiohttp.ClientError) as exc:  # it broke while the answer streamed
            raise ModelCallError(f"model API stream broke off: {exc!r}", retryable=True,
                                 partial=True) from None
        return ModelResponse(
            id=dumped.get("id", ""),
            model=dumped.get("model", request.model),
            content=[_clean_block(b) for b in dumped.get("content", [])],
            stop_reason=dumped.get("stop_reason"),
            usage=usage_from_api(dumped.get("usage")),
            request_id=request_id,
            latency_s=time.monotonic() - started,
        )


_STREAM_ERRORS = {"overloaded_error": 529, "api_error": 500, "rate_limit_error": 429}
"""An error event in a stream, and the HTTP status the same error has on a plain call."""
_TOOL_INPUTS = {"tool_use", "server_tool_use", "mcp_tool_use"}


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """Server-sent events as (event, parsed data); a blank line ends an event."""
    event, data = "", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield event, json.loads("\n".join(data))


async def _accumulate(events: AsyncIterator[tuple[str, Any]], on_text: OnText) -> dict[str, Any]:
    """The final message of a streamed answer, as the API's JSON (what the SDK's
    ``accumulate_event`` builds): text, tool input (parsed once, when its block ends), thinking
    and its signature, citations, then the stop reason and the usage totals of ``message_delta``.
    An ``error`` event raises: the error an HTTP status would have been, billed or not unknown."""
    message: dict[str, Any] | None = None
    inputs: dict[int, list[str]] = {}
    async for kind, data in events:
        kind = data.get("type", kind) if isinstance(data, dict) else kind
        if kind == "error":
            error = data.get("error") or {}
            status = _STREAM_ERRORS.get(str(error.get("type")))
            raise ModelCallError(
                f"model API error in the stream: {error.get('message') or error.get('type')}"
                + (f" (as HTTP {status})" if status else ""), retryable=status is not None,
                partial=status is not None)
        if kind == "message_start":
            message = dict(data["message"])
            message["content"] = list(message.get("content") or [])
            message["usage"] = dict(message.get("usage") or {})
            continue
        if message is None:
            if kind == "ping":
                continue
            raise ModelCallError(f"model API stream began with {kind!r}, not message_start",
                                 retryable=True)
        if kind == "content_block_start":
            message["content"].append(dict(data["content_block"]))
        elif kind == "content_block_delta":
            index, delta = data["index"], data["delta"]
            block = message["content"][index]
            step = delta.get("type")
            if step == "text_delta" and block.get("type") == "text":
                block["text"] = block.get("text", "") + delta["text"]
                await on_text(delta["text"])
            elif step == "input_json_delta" and block.get("type") in _TOOL_INPUTS:
                inputs.setdefault(index, []).append(delta.get("partial_json", ""))
            elif step == "citations_delta" and block.get("type") == "text":
                block["citations"] = [*(block.get("citations") or []), delta["citation"]]
            elif step == "thinking_delta" and block.get("type") == "thinking":
                block["thinking"] = block.get("thinking", "") + delta["thinking"]
            elif step == "signature_delta" and block.get("type") == "thinking":
                block["signature"] = delta["signature"]
        elif kind == "content_block_stop":
            raw = "".join(inputs.pop(data["index"], ()))
            if raw:
                try:
                    message["content"][data["index"]]["input"] = json.loads(raw)
                except ValueError:
                    raise ModelCallError("the model's tool input is not valid JSON: "
                                         f"{raw[:200]!r}", retryable=True) from None
        elif kind == "message_delta":
            delta, usage = data.get("delta") or {}, data.get("usage") or {}
            for key in ("stop_reason", "stop_sequence", "stop_details"):
                message[key] = delta.get(key)
            if delta.get("container") is not None:
                message["container"] = delta["container"]
            # totals, not increments; a field left out keeps message_start's value
            message["usage"].update({k: v for k, v in usage.items() if v is not None})
    if message is None:
        raise ModelCallError("model API stream ended before it began", retryable=True)
    return message


def _without_none(value: Any) -> Any:
    """JSON with its null fields left out, as the SDK's ``model_dump(exclude_none=True)``."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(exc.message)


def _clean_block(block: dict[str, Any]) -> dict[str, Any]:
    """A response block in the shape it is sent back in (drops SDK-only fields)."""
    kind = block.get("type")
    if kind == "text":
        out: dict[str, Any] = {"type": "text", "text": block.get("text", "")}
        if block.get("citations"):
            out["citations"] = block["citations"]
        return out
    if kind == "tool_use":
        return {"type": "tool_use", "id": block["id"], "name": block["name"],
                "input": block.get("input", {})}
    if kind == "thinking":
        return {"type": "thinking", "thinking": block.get("thinking", ""),
                "signature": block.get("signature", "")}
    if kind == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.get("data", "")}
    return block
