"""Every `keel` command, run against every broken configuration of the doctor-vs-run table and a
bad data directory, answers with a clear `keel:` line and a non-zero exit or does its work — never
a traceback, never an exception out of `main` (issue 20).

The list of commands is read from the parser itself, so a new command that is not given its
arguments below fails this test instead of going unchecked.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import pytest

from bot import cli
from tests.unit.test_doctor_agrees_with_run import BROKEN, TOKEN

# The positional arguments each command needs to get past argparse.
ARGS: dict[str, list[str]] = {
    "agent run": ["assistant", "hi"],
    "trace show": ["abc"],
    "trace replay": ["abc"],
    "escalation answer": ["abc", "1"],
    "memory forget": ["1"],
}

# Commands that read or write under KEEL_DATA_DIR: a bad one is one line naming it, exit 2.
DATA_COMMANDS = {"run", "db migrate", "db stats", "db prune", "agent run", "chat", "trace list",
                 "trace show", "trace replay", "escalation list", "escalation answer", "cost",
                 "stats"}

# Commands that assemble agents (or start things): a broken keel.toml stops them, naming it.
CONFIG_COMMANDS = {"run", "agent run", "chat"}


def all_commands() -> list[str]:
    def walk(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [prefix]
        return [name for choice, p in subs[0].choices.items()
                for name in walk(p, f"{prefix} {choice}".strip())]

    return sorted(walk(cli.build_parser(), ""))


def test_the_tables_know_every_command() -> None:
    commands = set(all_commands())
    assert DATA_COMMANDS <= commands and CONFIG_COMMANDS <= commands
    assert {"run", "doctor", "trace list", "stats"} <= commands


def _keel(command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # `keel chat` reads no line and leaves
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        code = cli.main([*command.split(), *ARGS.get(command, [])])
    out = capsys.readouterr()
    logged = [r for r in caplog.records if r.exc_info]
    assert not logged, (command, [r.getMessage() for r in logged])
    return code, out.out + out.err


def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str,
                 env: dict[str, str]) -> None:
    (tmp_path / "keel.toml").write_text(toml)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-doctor-test")
    # nothing listens on port 9: whatever gets as far as the network fails at once
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://127.0.0.1:9/bot")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize(("case", "toml", "env", "cause"), BROKEN, ids=[b[0] for b in BROKEN])
def test_no_command_prints_a_traceback_for_a_broken_configuration(
        case: str, toml: str, env: dict[str, str], cause: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    _environment(tmp_path, monkeypatch, toml, env)
    for command in all_commands():
        code, text = _keel(command, monkeypatch, capsys, caplog)
        assert "Traceback" not in text, (command, text)
        if code != 0:
            assert text.strip(), (command, code)
            if command != "doctor":  # doctor prints its checklist; the others one message
                assert text.lstrip().startswith("keel:") or "keel: " in text, (command, text)
        if command in CONFIG_COMMANDS or (command in DATA_COMMANDS and "KEEL_DATA_DIR" in env):
            assert code == 2 and cause in text, (command, code, text)


@pytest.mark.parametrize("data_dir", ["a-file", "a-file/below"])
def test_every_command_that_uses_the_data_directory_refuses_a_bad_one_in_one_line(
        data_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    _environment(tmp_path, monkeypatch, "", {"KEEL_DATA_DIR": data_dir})
    for command in sorted(DATA_COMMANDS):
        code, text = _keel(command, monkeypatch, capsys, caplog)
        lines = text.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "KEEL_DATA_DIR" in lines[0], (command, text)
