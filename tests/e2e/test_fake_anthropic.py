"""Fidelity of the fake Anthropic API, exercised with the real anthropic SDK over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from tests.fakes.anthropic import (
    FakeAnthropic,
    RecordedRequest,
    Reply,
    mid_stream_overload,
    overloaded,
    rate_limited,
    refusal,
    reply,
    thinking,
    tool_use,
)

pytestmark = pytest.mark.e2e

MODEL = "claude-sonnet-4-6"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
LONG_SYSTEM = (
    "You are keel's careful assistant. Follow the house rules exactly. " * 120
)  # ~2000 tok
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest_asyncio.fixture
async def client(fake_anthropic: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        api_key="sk-ant-test-key", base_url=fake_anthropic.base_url
    ) as c:
        yield c


def _without_id(message: anthropic.types.Message) -> dict[str, Any]:
    data = message.model_dump(exclude={"id"})
    for block in data["content"]:
        block.pop("parsed_output", None)
    return data


async def test_tool_use_round_trip(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    call = tool_use("get_weather", {"city": "Paris"})
    fake_anthropic.enqueue(reply("Let me check.", call), reply("It is sunny in Paris."))

    first = await client.messages.create(
        model=MODEL, max_tokens=512, tools=[WEATHER_TOOL], messages=USER
    )
    assert first.stop_reason == "tool_use"
    assert first.model == "claude-sonnet-4-6"
    block = first.content[1]
    assert block.type == "tool_use" and block.id == call["id"] and block.id.startswith("toolu_")
    assert block.input == {"city": "Paris"}

    history = [
        *USER,
        first.to_param(),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}],
        },
    ]
    second = await client.messages.create(
        model=MODEL, max_tokens=512, tools=[WEATHER_TOOL], messages=history
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == "It is sunny in Paris."
    sent = fake_anthropic.last_request.messages
    assert sent[2]["content"][0]["tool_use_id"] == block.id
    # What the model produced costs as much again when it is sent back as history.
    tokens = await client.messages.count_tokens(model=MODEL, tools=[WEATHER_TOOL], messages=history)
    assert tokens.input_tokens == second.usage.input_tokens
    assert fake_anthropic.unexpected == []


async def test_tool_use_without_result_and_orphan_result_are_rejected(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    call = tool_use("get_weather", {"city": "Paris"})
    dangling: list[Any] = [
        *USER,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": "never mind"},
    ]
    with pytest.raises(anthropic.BadRequestError) as missing:
        await client.messages.create(
            model=MODEL, max_tokens=64, tools=[WEATHER_TOOL], messages=dangling
        )
    assert "`tool_use` ids were found without `tool_result` blocks immediately after" in str(
        missing.value.api_message
    )
    orphan: list[Any] = [
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}],
        }
    ]
    with pytest.raises(anthropic.BadRequestError) as unexpected:
        await client.messages.create(model=MODEL, max_tokens=64, messages=orphan)
    assert "unexpected `tool_use_id` found in `tool_result` blocks" in str(
        unexpected.value.api_message
    )
    not_first: list[Any] = [
        *USER,
        {"role": "assistant", "content": [call]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "here you go"},
                {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"},
            ],
        },
    ]
    with pytest.raises(anthropic.BadRequestError) as order:
        await client.messages.create(
            model=MODEL, max_tokens=64, tools=[WEATHER_TOOL], messages=not_first
        )
    assert "at the beginning of this message" in str(order.value.api_message)
    assert fake_anthropic.pending == 0 and fake_anthropic.unexpected == []


async def test_consecutive_user_messages_are_merged_not_rejected(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.add_reply("ok")
    messages: list[Any] = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    result = await client.messages.create(model=MODEL, max_tokens=32, messages=messages)
    assert result.content[0].type == "text"


async def test_stream_text_equals_non_stream(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    words = "The quick brown fox jumps over the lazy dog. " * 5
    fake_anthropic.enqueue(reply(words), reply(words))
    plain = await client.messages.create(model=MODEL, max_tokens=1024, messages=USER)
    async with client.messages.stream(model=MODEL, max_tokens=1024, messages=USER) as stream:
        streamed_text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert streamed_text == words
    assert _without_id(final) == _without_id(plain)

    events = [e for e, _ in fake_anthropic.last_request.events]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    assert events.count("content_block_delta") > 1  # really chunked


async def test_stream_tool_use_uses_input_json_delta(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    args = {"city": "Paris", "units": "metric", "days": [1, 2, 3], "note": "x" * 60}
    call = tool_use("get_weather", args)
    fake_anthropic.enqueue(reply("Checking.", call), reply("Checking.", call))
    plain = await client.messages.create(
        model=MODEL, max_tokens=1024, tools=[WEATHER_TOOL], messages=USER
    )
    async with client.messages.stream(
        model=MODEL, max_tokens=1024, tools=[WEATHER_TOOL], messages=USER
    ) as stream:
        final = await stream.get_final_message()
    assert _without_id(final) == _without_id(plain)
    assert final.content[1].type == "tool_use" and final.content[1].input == args
    deltas = [
        d["delta"]["partial_json"]
        for e, d in fake_anthropic.last_request.events
        if e == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert len(deltas) > 2


async def test_thinking_stream_and_signature_round_trip(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    think: dict[str, Any] = {"type": "enabled", "budget_tokens": 1024}
    call = tool_use("get_weather", {"city": "Paris"})
    fake_anthropic.enqueue(
        reply(thinking("The user wants weather; call the tool."), call), reply("Sunny.")
    )
    async with client.messages.stream(
        model=MODEL, max_tokens=4096, thinking=think, tools=[WEATHER_TOOL], messages=USER
    ) as stream:
        first = await stream.get_final_message()
    assert first.content[0].type == "thinking" and first.content[0].signature
    kinds = {
        d["delta"]["type"]
        for e, d in fake_anthropic.last_request.events
        if e == "content_block_delta"
    }
    assert {"thinking_delta", "signature_delta", "input_json_delta"} <= kinds

    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}
    history: list[Any] = [*USER, first.to_param(), {"role": "user", "content": [result]}]
    second = await client.messages.create(
        model=MODEL, max_tokens=4096, thinking=think, tools=[WEATHER_TOOL], messages=history
    )
    assert second.content[0].type == "thinking"  # `enabled` always answers with thinking first

    tampered = first.model_dump()["content"]
    tampered[0]["thinking"] += " (edited)"
    history[1] = {"role": "assistant", "content": tampered}
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(
            model=MODEL, max_tokens=4096, thinking=think, tools=[WEATHER_TOOL], messages=history
        )
    assert bad.value.api_message == "messages.1.content.0: Invalid `signature` in `thinking` block"


async def test_overloaded_then_success_is_retried_by_the_sdk(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.enqueue(overloaded(retry_after_ms=5), reply("recovered"))
    result = await client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert result.content[0].type == "text" and result.content[0].text == "recovered"
    first, second = fake_anthropic.message_requests
    assert first.status == 529 and first.error == {
        "type": "overloaded_error",
        "message": "Overloaded",
    }
    assert second.status == 200 and second.headers.get("x-stainless-retry-count") == "1"


async def test_rate_limit_surfaces_with_retry_after_when_retries_are_off(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.enqueue(rate_limited(retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as err:
        await client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=64, messages=USER
        )
    assert err.value.response.headers["retry-after"] == "7"
    assert err.value.type == "rate_limit_error"
    assert err.value.request_id == fake_anthropic.last_request.request_id
    assert err.value.request_id and err.value.request_id.startswith("req_")
    assert isinstance(err.value.body, dict) and err.value.body["request_id"] == err.value.request_id


async def test_server_error_is_internal_server_error(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    from tests.fakes.anthropic import server_error

    fake_anthropic.enqueue(server_error())
    with pytest.raises(anthropic.InternalServerError):
        await client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=64, messages=USER
        )


async def test_mid_stream_error_event(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.enqueue(mid_stream_overload("partial answer " * 10, after_events=4))
    with pytest.raises(anthropic.APIStatusError) as err:
        async with client.messages.stream(model=MODEL, max_tokens=512, messages=USER) as stream:
            await stream.get_final_message()
    assert err.value.type == "overloaded_error"
    assert fake_anthropic.last_request.events[-1][0] == "error"


async def test_cache_write_then_read_and_sums_to_count_tokens(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    system: list[Any] = [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]
    fake_anthropic.enqueue(reply("one"), reply("two"))
    first = await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=USER)
    later: list[Any] = [{"role": "user", "content": "And in Lyon?"}]
    second = await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=later)

    assert (
        first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens >= 1024
    )
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation is not None
    assert (
        first.usage.cache_creation.ephemeral_5m_input_tokens
        == first.usage.cache_creation_input_tokens
    )
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    counted = await client.messages.count_tokens(model=MODEL, system=system, messages=later)
    u = second.usage
    assert (
        u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
        == counted.input_tokens
    )


async def test_cache_short_prefix_writes_nothing(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    system: list[Any] = [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    ]
    fake_anthropic.enqueue(reply("one"), reply("two"))
    for _ in range(2):
        result = await client.messages.create(
            model=MODEL, max_tokens=64, system=system, messages=USER
        )
        assert result.usage.cache_creation_input_tokens == 0
        assert result.usage.cache_read_input_tokens == 0


async def test_cache_minimum_depends_on_model(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    # ~2000 tokens: above Sonnet 4.6's 1024 minimum, below Haiku 4.5's 4096.
    system: list[Any] = [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]
    fake_anthropic.enqueue(reply("one"))
    result = await client.messages.create(
        model="claude-haiku-4-5", max_tokens=64, system=system, messages=USER
    )
    assert result.usage.cache_creation_input_tokens == 0


async def test_cache_ttl_expiry_refresh_and_1h(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    system: list[Any] = [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]

    async def usage() -> anthropic.types.Usage:
        fake_anthropic.enqueue(reply("ok"))
        result = await client.messages.create(
            model=MODEL, max_tokens=64, system=system, messages=USER
        )
        return result.usage

    assert (await usage()).cache_creation_input_tokens
    fake_anthropic.advance_clock(200)
    assert (await usage()).cache_read_input_tokens  # a hit refreshes the 5 minutes
    fake_anthropic.advance_clock(200)
    assert (await usage()).cache_read_input_tokens
    fake_anthropic.advance_clock(301)
    expired = await usage()
    assert expired.cache_read_input_tokens == 0 and expired.cache_creation_input_tokens

    system[0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    fake_anthropic.cache.clear()
    long_lived = await usage()
    assert long_lived.cache_creation is not None
    assert (
        long_lived.cache_creation.ephemeral_1h_input_tokens
        == long_lived.cache_creation_input_tokens
    )
    fake_anthropic.advance_clock(3000)
    assert (await usage()).cache_read_input_tokens


async def test_cache_moving_breakpoint_reads_earlier_prefix(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    """Stable prefix + a breakpoint that moves with the last message (keel's layout)."""
    system: list[Any] = [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]

    def turn(text: str) -> dict[str, Any]:
        return {
            "role": "user",
            "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}],
        }

    fake_anthropic.enqueue(reply("a1"), reply("a2"))
    one = await client.messages.create(
        model=MODEL, max_tokens=64, system=system, messages=[turn("q1")]
    )
    history = [
        {"role": "user", "content": [{"type": "text", "text": "q1"}]},
        {"role": "assistant", "content": "a1"},
        turn("q2"),
    ]
    two = await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=history)
    assert one.usage.cache_creation_input_tokens
    assert two.usage.cache_read_input_tokens == one.usage.cache_creation_input_tokens
    assert two.usage.cache_creation_input_tokens and two.usage.input_tokens == 0


async def test_more_than_four_breakpoints_is_bad_request(client: anthropic.AsyncAnthropic) -> None:
    system: list[Any] = [
        {"type": "text", "text": f"rule {i}", "cache_control": {"type": "ephemeral"}}
        for i in range(5)
    ]
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=USER)
    assert (
        err.value.api_message
        == "A maximum of 4 blocks with cache_control may be provided. Found 5."
    )


async def test_thinking_budget_below_minimum_is_bad_request(
    client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(
            model=MODEL,
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 512},
            messages=USER,
        )
    assert "budget_tokens" in str(err.value.api_message)
    with pytest.raises(anthropic.BadRequestError) as over:
        await client.messages.create(
            model=MODEL,
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 2000},
            messages=USER,
        )
    assert "`max_tokens` must be greater than `thinking.budget_tokens`" in str(
        over.value.api_message
    )


async def test_forced_tool_choice_with_thinking_is_bad_request(
    client: anthropic.AsyncAnthropic,
) -> None:
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        with pytest.raises(anthropic.BadRequestError) as err:
            await client.messages.create(
                model=MODEL,
                max_tokens=4096,
                thinking={"type": "enabled", "budget_tokens": 1024},
                tools=[WEATHER_TOOL],
                tool_choice=choice,  # type: ignore[arg-type]
                messages=USER,
            )
        assert (
            err.value.api_message == "Thinking may not be enabled when tool_choice forces tool use."
        )


async def test_enabled_thinking_rejected_on_opus_4_7_adaptive_accepted(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(
            model="claude-opus-4-7",
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=USER,
        )
    assert '"thinking.type.enabled" is not supported for this model' in str(err.value.api_message)
    fake_anthropic.add_reply("ok")
    result = await client.messages.create(
        model="claude-opus-4-7",
        max_tokens=4096,
        thinking={"type": "adaptive"},
        output_config={"effort": "high"},
        messages=USER,
    )
    assert result.model == "claude-opus-4-7"


async def test_sampling_parameters_are_gone(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(
            model=MODEL, max_tokens=64, messages=USER, extra_body={"temperature": 0.2}
        )
    assert err.value.api_message == "`temperature` is deprecated for this model."


async def test_prefill_depends_on_model(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    prefill: list[Any] = [*USER, {"role": "assistant", "content": "The weather is"}]
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=prefill)
    fake_anthropic.add_reply(" sunny.")
    result = await client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=prefill)
    assert result.stop_reason == "end_turn"
    assert result.model == "claude-haiku-4-5-20251001"  # an alias is answered with its snapshot


async def test_missing_key_is_authentication_error(fake_anthropic: FakeAnthropic) -> None:
    async with anthropic.AsyncAnthropic(
        api_key="unused",
        base_url=fake_anthropic.base_url,
        default_headers={"Authorization": anthropic.omit},  # type: ignore[dict-item]
        max_retries=0,
    ) as no_key:
        with pytest.raises(anthropic.AuthenticationError) as err:
            await no_key.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert err.value.type == "authentication_error"
    assert "authorization" not in fake_anthropic.requests[-1].headers


async def test_wrong_key_rejected_when_keys_are_configured() -> None:
    async with FakeAnthropic(api_keys={"sk-good"}) as server:
        async with anthropic.AsyncAnthropic(
            api_key="sk-bad", base_url=server.base_url, max_retries=0
        ) as bad:
            with pytest.raises(anthropic.AuthenticationError):
                await bad.models.list()
        server.add_reply("hi")
        async with anthropic.AsyncAnthropic(api_key="sk-good", base_url=server.base_url) as good:
            await good.messages.create(model=MODEL, max_tokens=64, messages=USER)
        assert server.last_request.api_key == "sk-good"


async def test_raw_http_x_api_key_and_version_header(fake_anthropic: FakeAnthropic) -> None:
    url = fake_anthropic.base_url + "/v1/messages/count_tokens"
    body = {"model": MODEL, "messages": USER}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers={"x-api-key": "k"}) as resp:
            assert resp.status == 400
            payload = await resp.json()
            assert payload["error"]["message"] == "anthropic-version: header is required"
            assert payload["request_id"] == resp.headers["request-id"]
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json()) == {"input_tokens": fake_anthropic.count_tokens(body)}


async def test_unknown_model_is_not_found(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        await client.messages.create(model="claude-nope-9", max_tokens=64, messages=USER)
    assert err.value.api_message == "model: claude-nope-9"
    assert err.value.type == "not_found_error"


async def test_models_list_and_retrieve(client: anthropic.AsyncAnthropic) -> None:
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert "claude-opus-4-7" in ids and "claude-haiku-4-5-20251001" in ids
    assert page.has_more is False and page.first_id == ids[0] and page.last_id == ids[-1]
    assert all(m.type == "model" and m.display_name and m.created_at for m in page.data)
    everything = [m.id async for m in client.models.list(limit=2)]
    assert everything == ids
    assert {m.id: m.lifecycle for m in page.data}["claude-sonnet-4-5-20250929"] == "deprecated"
    active = await client.models.list(lifecycle=["active"])
    assert "claude-sonnet-4-5-20250929" not in [m.id for m in active.data]
    haiku = await client.models.retrieve("claude-haiku-4-5")
    assert haiku.id == "claude-haiku-4-5-20251001" and haiku.display_name == "Claude Haiku 4.5"


async def test_max_tokens_truncates(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    long_text = "word " * 200
    fake_anthropic.enqueue(reply(long_text), reply(long_text))
    result = await client.messages.create(model=MODEL, max_tokens=20, messages=USER)
    assert result.stop_reason == "max_tokens"
    assert result.usage.output_tokens <= 20
    assert result.content[0].type == "text" and long_text.startswith(result.content[0].text)
    async with client.messages.stream(model=MODEL, max_tokens=20, messages=USER) as stream:
        final = await stream.get_final_message()
    assert _without_id(final) == _without_id(result)


async def test_stop_sequence(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.add_reply("alpha beta END gamma")
    result = await client.messages.create(
        model=MODEL, max_tokens=64, messages=USER, stop_sequences=["END"]
    )
    assert result.stop_reason == "stop_sequence" and result.stop_sequence == "END"
    assert result.content[0].type == "text" and result.content[0].text == "alpha beta "


async def test_refusal_shape(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.enqueue(refusal(category="cyber"))
    result = await client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert result.stop_reason == "refusal" and result.content == []
    assert result.stop_details is not None and result.stop_details.category == "cyber"


async def test_nothing_scripted_is_recorded_not_invented(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.InternalServerError) as err:
        await client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert "no scripted response" in str(err.value.api_message)
    assert len(fake_anthropic.unexpected) == 1 and len(fake_anthropic.message_requests) == 1


async def test_responder_answers_from_the_request(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    def model(request: RecordedRequest) -> Reply:
        if request.tool_results:
            return reply(f"the tool said {request.tool_results[0]['content']}")
        return reply(f"turn {len(request.messages)}: {request.last_user_text}")

    fake_anthropic.responder = model
    result = await client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert result.content[0].type == "text"
    assert result.content[0].text == "turn 1: What is the weather in Paris?"


async def test_latency_and_client_timeout(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.enqueue(reply("slow", latency=0.5))
    with pytest.raises(anthropic.APITimeoutError):
        await client.with_options(timeout=0.1, max_retries=0).messages.create(
            model=MODEL, max_tokens=64, messages=USER
        )


async def test_script_the_model_could_not_produce_is_flagged(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.enqueue(reply(tool_use("launch_rocket", {})))
    with pytest.raises(anthropic.InternalServerError):
        await client.messages.create(
            model=MODEL, max_tokens=64, tools=[WEATHER_TOOL], messages=USER
        )
    (flagged,) = fake_anthropic.unexpected
    assert flagged.note and "launch_rocket" in flagged.note


async def test_dropping_thinking_in_a_tool_loop_is_rejected(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    think: dict[str, Any] = {"type": "enabled", "budget_tokens": 1024}
    call = tool_use("get_weather", {"city": "Paris"})
    fake_anthropic.enqueue(reply(call))  # the fake puts the thinking block first, like the API
    first = await client.messages.create(
        model=MODEL, max_tokens=2048, thinking=think, tools=[WEATHER_TOOL], messages=USER
    )
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}
    stripped: list[Any] = [
        *USER,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(
            model=MODEL, max_tokens=2048, thinking=think, tools=[WEATHER_TOOL], messages=stripped
        )
    assert "must start with a thinking block" in str(err.value.api_message)


async def test_opus_4_7_omits_thinking_text_by_default(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.enqueue(reply(thinking("secret reasoning " * 20), "Answer."))
    result = await client.messages.create(
        model="claude-opus-4-7", max_tokens=4096, thinking={"type": "adaptive"}, messages=USER
    )
    block = result.content[0]
    assert block.type == "thinking" and block.thinking == "" and block.signature
    assert result.usage.output_tokens > 100  # the reasoning is billed even though omitted


async def test_max_tokens_zero_prewarms_the_cache(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    system: list[Any] = [
        {"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]
    warm = await client.messages.create(model=MODEL, max_tokens=0, system=system, messages=USER)
    assert warm.content == [] and warm.stop_reason == "max_tokens"
    assert warm.usage.output_tokens == 0 and warm.usage.cache_creation_input_tokens
    assert fake_anthropic.unexpected == []  # no scripted reply was needed


async def test_automatic_top_level_cache_control(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake_anthropic.enqueue(reply("one"), reply("two"))
    messages: list[Any] = [{"role": "user", "content": LONG_SYSTEM}]
    first = await client.messages.create(
        model=MODEL, max_tokens=64, cache_control={"type": "ephemeral"}, messages=messages
    )
    messages += [{"role": "assistant", "content": "one"}, {"role": "user", "content": "more"}]
    second = await client.messages.create(
        model=MODEL, max_tokens=64, cache_control={"type": "ephemeral"}, messages=messages
    )
    assert first.usage.cache_creation_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


async def test_base_url_from_environment(
    fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    fake_anthropic.add_reply("hello")
    async with anthropic.AsyncAnthropic() as env_client:
        await env_client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert fake_anthropic.last_request.api_key == "sk-from-env"
    assert fake_anthropic.last_request.headers["anthropic-version"]


async def test_a_crashing_responder_is_recorded(
    fake_anthropic: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    def broken(request: RecordedRequest) -> Reply:
        raise KeyError("oops")

    fake_anthropic.responder = broken
    with pytest.raises(anthropic.InternalServerError):
        await client.messages.create(model=MODEL, max_tokens=64, messages=USER)
    assert len(fake_anthropic.message_requests) == 1  # x-should-retry: false, no SDK retries
    assert "KeyError" in (fake_anthropic.unexpected[0].note or "")
