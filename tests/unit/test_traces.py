import gzip
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
from datetime import date, timedelta
from pathlib import Path

import pytest

from storage.traces import REDACTED, Encoded, Redactor, TraceStore


def test_events_are_appended_with_sequence_and_secrets_scrubbed(tmp_path: Path) -> None:
    store = TraceStore(tmp_path, redactor=Redactor(["sk-ant-secret-key"]))
    w = store.writer(trace_id="t1", run_id="r1")
    w.emit("run_start", agent="a")
    w.emit("model_request", headers={"x-api-key": "whatever"}, note="key sk-ant-secret-key here")
    w.close()
    events = store.read("t1")
    assert [e["seq"] for e in events] == [1, 2]
    assert {e["type"] for e in events} == {"run_start", "model_request"}
    assert all(e["trace_id"] == "t1" and e["run_id"] == "r1" and "ts" in e for e in events)
    text = store.find("t1").path.read_text()  # type: ignore[union-attr]
    assert "sk-ant-secret-key" not in text and REDACTED in text
    assert events[1]["headers"]["x-api-key"] == REDACTED


def test_a_killed_writer_leaves_complete_lines(tmp_path: Path) -> None:
    """Killed mid-run, a trace is every event up to some point, in order, each a whole line:
    everything written before the last drain, and at most the last few emitted after it missing
    (the writer thread had not taken them yet)."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from storage.traces import TraceStore
        w = TraceStore(Path({str(tmp_path)!r})).writer(trace_id="t", run_id="r")
        for i in range(200):
            w.emit("model_response", i=i, content=[{{"type": "text", "text": "x" * 500}}])
            if i == 99:
                w.drain()
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert proc.returncode == -9
    events = TraceStore(tmp_path).read("t")
    got = [e["i"] for e in events]
    assert got == list(range(len(got))) and len(got) >= 100
    assert [e["seq"] for e in events] == list(range(1, len(got) + 1))
    for line in TraceStore(tmp_path).find("t").path.read_text().splitlines():  # type: ignore[union-attr]
        json.loads(line)


def test_emit_does_not_wait_for_the_disk(tmp_path: Path) -> None:
    """A write stuck behind the file system's journal holds the writer thread, not the caller
    (on the event loop, such waits stalled every chat): emit returns, and the events reach the
    file in order once the disk answers."""
    store = TraceStore(tmp_path)
    w = store.writer(trace_id="t", run_id="r")
    disk = threading.Event()
    real = w._file

    class Stuck:
        closed = False

        def write(self, text: str) -> int:
            disk.wait(30)
            return real.write(text)

        def flush(self) -> None:
            real.flush()

        def fileno(self) -> int:
            return real.fileno()

        def close(self) -> None:
            real.close()

    w._file = Stuck()  # type: ignore[assignment]
    emitted = threading.Event()

    def emit_all() -> None:
        for i in range(20):
            w.emit("step", i=i)
        emitted.set()

    caller = threading.Thread(target=emit_all)
    caller.start()
    assert emitted.wait(10), "emit waited for the stuck disk"
    disk.set()
    w.close()
    caller.join()
    assert [e["i"] for e in store.read("t")] == list(range(20))


def test_reading_a_live_trace_sees_every_event_emitted(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    w = store.writer(trace_id="t", run_id="r")
    for i in range(5):
        w.emit("step", i=i)
    assert [e["i"] for e in store.read("t")] == list(range(5))
    again = store.writer(trace_id="t", run_id="r")  # a second writer continues the sequence
    again.emit("step", i=5)
    again.close()
    w.close()
    assert [e["seq"] for e in store.read("t")] == list(range(1, 7))


def test_emit_after_close_raises(tmp_path: Path) -> None:
    w = TraceStore(tmp_path).writer(trace_id="t", run_id="r")
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.emit("late")


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    w = store.writer(trace_id="t", run_id="r")
    w.emit("run_start")
    w.close()
    with store.find("t").path.open("a") as fh:  # type: ignore[union-attr]
        fh.write('{"ts": "2026-01-01", "type": "mod')
    assert [e["type"] for e in store.read("t")] == ["run_start"]


def test_resumed_writer_continues_the_sequence(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    w = store.writer(trace_id="t", run_id="r")
    w.emit("a")
    w.close()
    w = store.writer(trace_id="t", run_id="r")
    w.emit("b")
    w.close()
    assert [(e["type"], e["seq"]) for e in store.read("t")] == [("a", 1), ("b", 2)]


def test_housekeeping_gzips_old_days_and_deletes_past_retention(tmp_path: Path) -> None:
    store = TraceStore(tmp_path)
    today = date(2026, 11, 24)
    for age in (0, 1, 40):
        w = store.writer(trace_id=f"t{age}", run_id="r", day=today - timedelta(days=age))
        w.emit("run_start", age=age)
        w.close()
    zipped, deleted = store.housekeep(retention_days=30, today=today)
    assert (zipped, deleted) == (1, 1)
    assert store.find("t0").path.suffix == ".jsonl"  # type: ignore[union-attr]
    old = store.find("t1")
    assert old is not None and old.path.name.endswith(".jsonl.gz")
    assert store.read("t1")[0]["age"] == 1
    with gzip.open(old.path, "rt") as fh:
        assert json.loads(fh.readline())["age"] == 1
    assert store.find("t40") is None
    assert not os.path.exists(tmp_path / (today - timedelta(days=40)).isoformat())


SECRETS = ["sk-ant-secret-key", "123456:AAbot-token_x", 'pa"ss\\word\n!']


def _old_line(redactor: Redactor, payload: dict) -> str:
    """The line as every event was written before the JSON-first check: scrubbed, then dumped."""
    from storage.traces import _json_default

    return json.dumps(redactor.scrub(payload), ensure_ascii=False, default=_json_default)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    pieces = ["hello", "sk-ant-secret-key", "123456:AAbot-token_x", 'pa"ss\\word\n!', "ä😀",
              "token", "Authorization", "max_tokens", '"token"', "\x00ctl", "to\u212aen"]
    kind = rng.randrange(6 if depth < 3 else 3)
    if kind == 0:
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(4)))
    if kind == 1:
        return rng.choice([1, 2.5, None, True])
    if kind == 2:
        return (rng.choice(pieces), 3)  # a tuple: scrub makes it a list, as JSON does
    if kind == 3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["text", "role", "token", "TOKEN", "x-Api-Key", "api_key", "bot_token", "to\u212aen",
            "authorization", "content", "tokens", "sk-ant-secret-key"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


@pytest.mark.parametrize("secrets", [SECRETS[:2], SECRETS])
def test_a_trace_line_is_the_scrubbed_one_whatever_the_payload(
        tmp_path: Path, secrets: list[str]) -> None:
    """Events are dumped first and walked by scrub only where the JSON shows a secret or a
    secret-ish key (issue 15: a run's first model request carries the whole history). Every
    line must still be exactly what scrubbing first gave: secrets inside any string, keys in
    any case (Kelvin sign included), a secret JSON would write with escapes."""
    rng = random.Random(15)
    redactor = Redactor(secrets)
    store = TraceStore(tmp_path, redactor=redactor)
    w = store.writer(trace_id="t", run_id="r")
    payloads = [{"body": _random_value(rng)} for _ in range(600)]
    for payload in payloads:
        w.emit("event", **payload)
    w.close()
    lines = store.find("t").path.read_text().splitlines()  # type: ignore[union-attr]
    assert len(lines) == len(payloads)
    for line, payload in zip(lines, payloads, strict=True):
        body = line[line.index('"type": "event", ') + len('"type": "event", '):-1]
        assert "{" + body + "}" == _old_line(redactor, payload)
        for secret in secrets:
            assert secret not in line and json.dumps(secret)[1:-1] not in line


@pytest.mark.parametrize("secrets", [SECRETS[:2], SECRETS])
def test_fields_encoded_once_are_written_and_scrubbed_like_any_other(
        tmp_path: Path, secrets: list[str]) -> None:
    """A field passed as ``Encoded`` (a prefix's system and tools, encoded once for many runs)
    gives the event the same fields and values, scrubbed wherever a secret shows."""
    rng = random.Random(16)
    redactor = Redactor(secrets)
    store = TraceStore(tmp_path, redactor=redactor)
    w = store.writer(trace_id="t", run_id="r")
    payloads = [{key: _random_value(rng) for key in ("system", "sha256", "tools")}
                for _ in range(600)]
    returned = []
    for payload in payloads:
        wrapped = {k: Encoded(v) if rng.random() < 0.7 else v for k, v in payload.items()}
        returned.append(w.emit("prefix", **wrapped))
    w.close()
    lines = store.find("t").path.read_text().splitlines()  # type: ignore[union-attr]
    assert len(lines) == len(payloads)
    head = ("ts", "trace_id", "run_id", "seq", "type")
    for line, payload, event in zip(lines, payloads, returned, strict=True):
        written = json.loads(line)
        assert {k: v for k, v in written.items() if k not in head} == json.loads(
            _old_line(redactor, payload))
        assert json.loads(json.dumps({k: v for k, v in event.items() if k not in head})) == (
            json.loads(json.dumps(redactor.scrub(payload))))
        for secret in secrets:
            assert secret not in line and json.dumps(secret)[1:-1] not in line


def test_untouched_is_only_said_of_json_scrub_would_leave_alone() -> None:
    redactor = Redactor(SECRETS[:2])
    assert redactor.untouched(json.dumps({"messages": [{"text": "hello", "max_tokens": 5}]}))
    assert not redactor.untouched(json.dumps({"text": "key sk-ant-secret-key"}))
    assert not redactor.untouched(json.dumps({"Authorization": "Bearer x"}))
    assert not redactor.untouched(json.dumps({"to\u212aen": "x"}, ensure_ascii=False))
    # a secret JSON escapes cannot be looked for in the JSON: scrub always decides
    assert not Redactor(SECRETS).untouched(json.dumps({"text": "hello"}))


def test_an_encoded_field_is_looked_through_for_secret_keys_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefix's tools and system (~6 KB, the same run after run) are searched for secret-ish
    keys when encoded, not again in every run's ``prefix`` event; known secret values are
    still looked for in the whole line every time."""
    import storage.traces

    searched: list[str] = []
    keys_clean = storage.traces.keys_clean

    def counted(line: str) -> bool:
        searched.append(line)
        return keys_clean(line)

    monkeypatch.setattr(storage.traces, "keys_clean", counted)
    tools = Encoded([{"name": f"tool_{n}", "description": "d" * 200} for n in range(20)])
    redactor = Redactor(SECRETS[:2])
    w = TraceStore(tmp_path, redactor=redactor).writer(trace_id="t", run_id="r")
    for _ in range(50):
        w.emit("prefix", sha256="abc", tools=tools)
    leaky = Encoded({"text": "the key is sk-ant-secret-key"})
    event = w.emit("prefix", sha256="abc", tools=tools, system=leaky)
    w.close()
    assert sum(tools.json in line for line in searched) == 1
    assert event["system"] == {"text": f"the key is {REDACTED}"}
    assert "sk-ant-secret-key" not in w.path.read_text()
