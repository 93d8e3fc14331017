"""A plain model call and a streamed one give the same ModelResponse (issue 15: a plain call reads
the API's JSON directly instead of building the SDK's models and dumping them again)."""

from __future__ import annotations

from typing import Any

import pytest

from agents.model.anthropic_client import AnthropicModelClient
from agents.model.types import ModelRequest
from tests.fakes.anthropic import FakeAnthropic, Reply, refusal, reply, thinking, tool_use

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
                           tools=[{"name": "search", "description": "Search the shop.",
                                   "input_schema": {"type": "object",
                                                    "properties": {"q": {"type": "string"}}}}])
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
