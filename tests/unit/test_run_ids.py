"""Run and trace ids: random version-4 UUIDs, made from the OS's randomness read a block at a
time (each read gives the interpreter lock away; in a burst the event loop waited to get it
back, issue 15), never the same in two processes."""

from __future__ import annotations

import os
import uuid

import pytest

import agents.ids
from agents.ids import ID_RANDOMNESS_BYTES, new_id
from agents.model.anthropic_client import AnthropicModelClient
from agents.model.types import ModelRequest
from tests.fakes.anthropic import FakeAnthropic, reply


def test_ids_are_distinct_version_4_uuids_across_many_blocks() -> None:
    count = 3 * ID_RANDOMNESS_BYTES // 16 + 5
    ids = [new_id() for _ in range(count)]
    assert len(set(ids)) == count
    for made in ids:
        parsed = uuid.UUID(made)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, made)


def test_a_thousand_ids_read_the_os_randomness_a_few_times(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    urandom = os.urandom

    def counted(size: int) -> bytes:
        reads.append(size)
        return urandom(size)

    monkeypatch.setattr(agents.ids.os, "urandom", counted)
    for _ in range(1000):
        new_id()
    assert 1 <= len(reads) <= 1000 * 16 // ID_RANDOMNESS_BYTES + 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_hands_out_its_parents_next_ids() -> None:
    new_id()  # the parent holds a block, most of it not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without pytest's clean-up
        try:
            os.write(write, ",".join(new_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [new_id() for _ in range(3)]
    assert len(child) == 3
    assert not set(child) & set(parent)


async def test_model_calls_read_the_os_randomness_a_few_times(
        fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK made a retry key for every request with ``uuid.uuid4``; keel gives it one of
    its own ids instead, so a burst of model calls reads the randomness a block at a time."""
    fake_anthropic.responder = lambda req: reply("ok")
    client = AnthropicModelClient(api_key="sk-ant-test-key-0123456789",
                                  base_url=fake_anthropic.base_url, max_retries=0)
    request = ModelRequest(model="claude-sonnet-4-6", max_tokens=64,
                           messages=[{"role": "user", "content": "hi"}])
    reads: list[int] = []
    urandom = os.urandom

    def counted(size: int) -> bytes:
        reads.append(size)
        return urandom(size)

    try:
        await client.create(request)  # the client is made, its imports done
        monkeypatch.setattr(os, "urandom", counted)
        for _ in range(30):
            await client.create(request)
    finally:
        await client.close()
    assert len(fake_anthropic.message_requests) == 31
    assert len(reads) <= 2, reads
