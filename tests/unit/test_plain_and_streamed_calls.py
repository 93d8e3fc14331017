"""A plain model call and a streamed one give the same ModelResponse (issue 15: a plain call reads
the API's JSON directly instead of building the SDK's models and dumping them again)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents.errors import ModelCallError
from agents.model.anthropic_client import AnthropicModelClient
from agents.model.types import ModelRequest, usage_from_api
from tests.fakes.anthropic import (
    FakeAnthropic,
    Reply,
    mid_stream_drop,
    mid_stream_overload,
    refusal,
    reply,
    thinking,
    tool_use,
)

SEARCH = {"name": "search", "description": "Search the shop.",
          "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}
REPLIES = {
    "text": lambda: reply("Green tea: two minutes at 80 °C."),
    "tool use": lambda: reply("Let me look.", tool_use("search", {"q": "tea"}, id="toolu_01")),
    "thinking": lambda: reply(thinking("steep, then pour"), "Two minutes."),
    "refusal": lambda: refusal("I can"),
}


async def _both(fake: FakeAnthropic, scripted: Reply) -> tuple[Any, Any]:
    fake.responder = lambda req: scripted
    client = AnthropicModelClient(api_key="sk-ant-test-key-0123456789", base_url=fake.base_url,
                                  max_retries=0)
    request = ModelRequest(model="claude-sonnet-4-6", max_tokens=2048,
                           messages=[{"role": "user", "content": "tea?"}],
                           tools=[SEARCH])
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    try:
        plain = await client.create(request)
        streamed = await client.create(request, on_text=on_text)
    finally:
        await client.close()
    return plain, streamed


@pytest.mark.parametrize("kind", sorted(REPLIES))
async def test_a_plain_call_reads_the_same_answer_as_a_streamed_one(
        fake_anthropic: FakeAnthropic, kind: str) -> None:
    plain, streamed = await _both(fake_anthropic, REPLIES[kind]())
    assert [r.stream for r in fake_anthropic.message_requests] == [False, True]
    assert plain.content == streamed.content
    assert plain.stop_reason == streamed.stop_reason
    assert plain.usage == streamed.usage
    assert plain.model == streamed.model
    assert plain.content  # something was answered


STREAMED = {
    **REPLIES,
    "long tool input": lambda: reply(tool_use("search", {"q": "thé vert 緑茶 " * 40,
                                                        "n": [1, 2.5, None, True]},
                                              id="toolu_02")),
    "empty tool input": lambda: reply(tool_use("search", {}, id="toolu_03")),
    "several blocks": lambda: reply(thinking("a " * 200), "First. " * 50,
                                    tool_use("search", {"q": "x"}, id="toolu_04"), "Then."),
}


@pytest.mark.parametrize("kind", sorted(STREAMED))
async def test_keel_reads_a_stream_as_the_sdk_accumulates_it(
        fake_anthropic: FakeAnthropic, kind: str) -> None:
    # The SDK's own stream accumulation is the oracle for keel's reading of the events.
    scripted = STREAMED[kind]()
    fake_anthropic.responder = lambda req: scripted
    client = AnthropicModelClient(api_key="sk-ant-test-key-0123456789", base_url=fake_anthropic.base_url,
                                  max_retries=0)
    request = ModelRequest(model="claude-sonnet-4-6", max_tokens=2048,
                           messages=[{"role": "user", "content": "tea?"}], tools=[SEARCH])
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    try:
        ours = await client.create(request, on_text=on_text)
        sdk = await client._ready()
        async with sdk.messages.stream(**request.to_api()) as stream:
            sdk_pieces = [event.text async for event in stream if event.type == "text"]
            message = await stream.get_final_message()
    finally:
        await client.close()
    theirs = message.model_dump(mode="json", exclude_none=True)
    assert ours.content == [_clean(b) for b in theirs["content"]]
    assert ours.stop_reason == theirs["stop_reason"]
    assert ours.usage == usage_from_api(theirs["usage"])
    assert pieces == sdk_pieces and len(fake_anthropic.message_requests[0].events) > 3


def _clean(block: dict[str, Any]) -> dict[str, Any]:
    from agents.model.anthropic_client import _clean_block

    return _clean_block(block)


async def test_an_error_event_in_the_stream_is_retryable_and_maybe_billed(
        fake_anthropic: FakeAnthropic) -> None:
    # "overloaded_error … would normally correspond to an HTTP 529 in a non-streaming context"
    fake_anthropic.responder = lambda req: mid_stream_overload("Half an answer " * 20)
    client = AnthropicModelClient(api_key="sk-ant-test-key-0123456789", base_url=fake_anthropic.base_url,
                                  max_retries=0)
    request = ModelRequest(model="claude-sonnet-4-6", max_tokens=256,
                           messages=[{"role": "user", "content": "tea?"}])
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    try:
        with pytest.raises(ModelCallError) as raised:
            await client.create(request, on_text=on_text)
    finally:
        await client.close()
    assert raised.value.retryable and raised.value.partial
    # no HTTP error status: the stream began, so the call may be billed (its hold is forfeited)
    assert raised.value.status is None
    assert "Overloaded" in str(raised.value) and "529" in str(raised.value)


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "plain"])
async def test_a_connection_cut_mid_answer_is_a_retryable_partial_error(
        fake_anthropic: FakeAnthropic, streamed: bool) -> None:
    """The connection breaks while the answer is on its way (after the API began answering, so
    the call may be billed): keel gets a ModelCallError it retries and counts as possibly spent,
    never an exception of the HTTP library (aiohttp's, since model calls go over it)."""
    fake_anthropic.responder = lambda req: mid_stream_drop("A long answer " * 40, after_events=3)
    client = AnthropicModelClient(api_key="sk-ant-test-key-0123456789",
                                  base_url=fake_anthropic.base_url, max_retries=0)
    request = ModelRequest(model="claude-sonnet-4-6", max_tokens=512,
                           messages=[{"role": "user", "content": "tea?"}])
    try:
        with pytest.raises(ModelCallError) as raised:
            await client.create(request, on_text=_ignore if streamed else None)
        # and the client still answers the next call
        fake_anthropic.responder = lambda req: reply("ok")
        assert (await client.create(request)).content == [{"type": "text", "text": "ok"}]
    finally:
        await client.close()
    assert raised.value.retryable
    assert raised.value.status is None  # no HTTP error status: the answer had begun
    if streamed:
        assert raised.value.partial


async def test_after_a_burst_a_call_does_not_probe_every_kept_connection(
        fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: httpx's pool asked each of its idle connections whether the server had closed
    it (a ``poll`` and a ``getpeername`` system call each) on every request and every response,
    so after a burst every call paid for the whole pool: half of the event loop's work in the
    longest stalls of a 1,000-chat burst. keel's client must not grow a call's cost with the
    connections it keeps."""
    import select
    import socket

    fake_anthropic.default_latency = 0.3  # the calls overlap, so the burst opens many connections
    fake_anthropic.responder = lambda req: reply("ok")
    client = AnthropicModelClient(api_key="sk-ant-test-key-0123456789",
                                  base_url=fake_anthropic.base_url, max_retries=0)
    request = ModelRequest(model="claude-sonnet-4-6", max_tokens=64,
                           messages=[{"role": "user", "content": "tea?"}])
    probes = {"poll": 0, "getpeername": 0}
    real_poll, real_peer = select.poll, socket.socket.getpeername

    def poll() -> Any:
        probes["poll"] += 1
        return real_poll()

    def getpeername(sock: socket.socket) -> Any:
        probes["getpeername"] += 1
        return real_peer(sock)

    try:
        answers = await asyncio.gather(*(client.create(request) for _ in range(60)))
        assert all(a.content for a in answers)
        fake_anthropic.default_latency = 0.0
        monkeypatch.setattr(select, "poll", poll)
        monkeypatch.setattr(socket.socket, "getpeername", getpeername)
        for _ in range(10):  # one at a time, each on a kept connection
            assert (await client.create(request)).content
            await client.create(request, on_text=_ignore)
    finally:
        monkeypatch.undo()
        await client.close()
    # httpx: 20 kept connections x 2 walks x 20 calls = 800 of each
    assert probes == {"poll": 0, "getpeername": 0}


async def test_a_cancelled_call_leaves_the_client_usable(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.default_latency = 0.3
    fake_anthropic.responder = lambda req: reply("ok")
    client = AnthropicModelClient(api_key="sk-ant-test-key-0123456789",
                                  base_url=fake_anthropic.base_url, max_retries=0)
    request = ModelRequest(model="claude-sonnet-4-6", max_tokens=64,
                           messages=[{"role": "user", "content": "tea?"}])
    try:
        calls = [asyncio.create_task(client.create(request, on_text=_ignore)) for _ in range(5)]
        await asyncio.sleep(0.1)
        for call in calls:
            call.cancel()
        for call in calls:
            with pytest.raises(asyncio.CancelledError):
                await call
        answers = await asyncio.gather(*(client.create(request) for _ in range(5)))
        assert [a.content for a in answers] == [[{"type": "text", "text": "ok"}]] * 5
    finally:
        await client.close()


async def _ignore(piece: str) -> None:
    return None


@pytest.mark.parametrize("environ", [{}, {"OTEL_TRACES_EXPORTER": "console"}])
async def test_the_sdk_starts_no_span_unless_opentelemetry_is_set_up(
        fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch,
        environ: dict[str, str]) -> None:
    """Every call started a span through OpenTelemetry's no-op tracer, recorded by nobody."""
    import os

    from anthropic import _base_client

    for name in list(os.environ):
        if name.startswith(("OTEL_", "ANTHROPIC_OPEN_TELEMETRY")):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    spans: list[str] = []
    real_start = _base_client.start_api_call_span

    def counting_start(*args: Any, **kwargs: Any) -> Any:
        spans.append("span")
        return real_start(*args, **kwargs)

    monkeypatch.setattr(_base_client, "start_api_call_span", counting_start)
    plain, streamed = await _both(fake_anthropic, REPLIES["text"]())
    assert plain.content == streamed.content
    assert len(spans) == (2 if environ else 0)
