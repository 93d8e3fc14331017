"""The digest that keeps a session's exact input count valid (agents/tokens.py MessagesDigest):
the same as hashing the messages in one go however the list grew, never stale when a hashed
message was replaced, and each message encoded once per run (it was the whole history twice a
turn)."""

from __future__ import annotations

from typing import Any

import pytest

import agents.tokens as tokens
from agents.executor.call import InputAnchor
from agents.executor.prepare import Prefix
from agents.pricing import Usage
from agents.tokens import MessagesDigest, messages_digest
from storage.session_counts import SessionAnchor

PREFIX = "ab" * 32


def _history(n: int) -> list[dict[str, Any]]:
    return [{"role": "user" if i % 2 == 0 else "assistant",
             "content": [{"type": "text", "text": f"message {i} " + "words " * (i % 7)}]}
            for i in range(n)]


def test_a_growing_list_digests_as_in_one_go() -> None:
    messages = _history(6)
    digest = MessagesDigest(PREFIX)
    assert digest.of(messages, 4) == messages_digest(PREFIX, messages[:4])
    messages += _history(9)[6:]
    assert digest.of(messages, 9) == messages_digest(PREFIX, messages)
    assert digest.of(messages, 2) == messages_digest(PREFIX, messages[:2])  # back: from the start


def test_a_replaced_message_is_hashed_again() -> None:
    messages = _history(8)
    digest = MessagesDigest(PREFIX)
    before = digest.of(messages, 8)
    messages[3] = {"role": "assistant", "content": [{"type": "text", "text": "edited"}]}
    after = digest.of(messages, 8)
    assert after != before
    assert after == messages_digest(PREFIX, messages)


def test_markers_and_string_content_do_not_change_it() -> None:
    messages = _history(4)
    marked = [*messages[:3], {**messages[3], "content": [
        {**messages[3]["content"][0], "cache_control": {"type": "ephemeral"}}]}]
    plain = [{"role": m["role"], "content": m["content"][0]["text"]} for m in messages]
    assert messages_digest(PREFIX, marked) == messages_digest(PREFIX, messages)
    assert messages_digest(PREFIX, plain) == messages_digest(PREFIX, messages)
    assert messages_digest("cd" * 32, messages) != messages_digest(PREFIX, messages)


def test_a_run_encodes_each_message_once(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = 0
    real = tokens._DIGEST_JSON

    class Counting:
        def encode(self, value: Any) -> str:
            nonlocal encoded
            encoded += 1
            return real.encode(value)

    prefix = Prefix.build("You are terse.", [])
    messages = _history(99)
    kept = SessionAnchor(tokens=5000, messages=98,
                         digest=messages_digest(prefix.sha256, messages[:98]))
    monkeypatch.setattr(tokens, "_DIGEST_JSON", Counting())
    # the run starts: the session's kept count still describes its history
    anchor = InputAnchor.seeded(kept, prefix, messages)
    assert anchor.tokens == 5000
    messages.append({"role": "assistant", "content": [{"type": "text", "text": "answer"}]})
    anchor.update(Usage(input_tokens=5200), 100)  # its last call covered one more exchange
    after = anchor.kept(prefix, messages)
    assert encoded == 100  # each message once (was 198: the history again at the end)
    assert after is not None and after.digest == messages_digest(prefix.sha256, messages)
