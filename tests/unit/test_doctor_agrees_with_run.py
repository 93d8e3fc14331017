"""`keel doctor` and `keel run` judge a configuration by the same check (issue 20).

For each broken configuration in the table, `keel run` refuses to start (exit 2, one message, no
traceback) and `keel doctor` reports an error for the same cause (exit 1), with its full checklist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot import cli

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "123456789:AAFakeTokenForTestsOnly_keel0000000"

GOOD_AGENT = '[agents.ok]\ndescription = "ok"\nsystem = "be brief"\n'
SCHEDULE = ('[[schedules]]\nname = "s"\nagent = "{agent}"\ncron = "{cron}"\ntask = "t"\n'
            'chat_id = 5\n{extra}\n')

# (case, keel.toml, extra environment, what both doctor and run must name)
BROKEN: list[tuple[str, str, dict[str, str], str]] = [
    ("unknown tool", '[agents.x]\ndescription = "x"\nsystem = "y"\ntools = ["teleport"]\n', {},
     "'teleport'"),
    ("missing system_file", '[agents.x]\ndescription = "x"\nsystem_file = "gone.md"\n', {},
     "gone.md"),
    ("unknown tool module", 'tool_modules = ["no_such_tools_module"]\n', {},
     "no_such_tools_module"),
    ("cron out of range", SCHEDULE.format(agent="assistant", cron="99 * * * *", extra=""), {},
     "'99 * * * *'"),
    ("schedule names an unknown agent", SCHEDULE.format(agent="ghost", cron="0 8 * * *",
                                                        extra=""), {}, "'ghost'"),
    ("schedule in an unknown time zone",
     SCHEDULE.format(agent="assistant", cron="0 8 * * *", extra='timezone = "Mars/Olympus"'), {},
     "Mars/Olympus"),
    ("unknown default agent", 'default_agent = "nobody"\n' + GOOD_AGENT, {}, "'nobody'"),
    ("model without a price", GOOD_AGENT + 'model = "claude-imaginary-9"\n', {},
     "claude-imaginary-9"),
    ("not TOML", "[agents\n", {}, "not valid TOML"),
    ("bad time zone in the environment", "", {"KEEL_TIMEZONE": "Mars/Olympus"}, "KEEL_TIMEZONE"),
    ("bad number in the environment", "", {"KEEL_MAX_STEPS": "many"}, "KEEL_MAX_STEPS"),
    ("bad user id in the environment", "", {"KEEL_ALLOWED_USER_IDS": "12,bob"},
     "KEEL_ALLOWED_USER_IDS"),
    ("data directory is a file", "", {"KEEL_DATA_DIR": "a-file"}, "KEEL_DATA_DIR"),
]


def _keel(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          *args: str) -> tuple[int, str]:
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(("case", "toml", "env", "cause"), BROKEN, ids=[b[0] for b in BROKEN])
def test_whatever_run_refuses_doctor_reports_as_an_error(
        case: str, toml: str, env: dict[str, str], cause: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keel.toml").write_text(toml)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-doctor-test")
    monkeypatch.setenv("KEEL_OWNER_ID", "1")
    # nothing listens here: a run that does not refuse fails to connect (exit 1, not 2)
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://127.0.0.1:9/bot")
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    code, text = _keel(monkeypatch, capsys, "run")
    assert code == 2, text
    assert cause in text and "Traceback" not in text, text

    code, text = _keel(monkeypatch, capsys, "doctor")
    assert code == 1, text
    failures = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert any(cause in line for line in failures), text
    # the whole checklist, not only the first problem
    assert "ANTHROPIC_API_KEY is set" in text and "problem(s) found" in text, text


def test_doctor_and_run_list_every_problem_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keel.toml").write_text(
        'default_agent = "nobody"\ntool_modules = ["no_such_tools_module"]\n'
        '[agents.x]\ndescription = "x"\nsystem = "y"\ntools = ["teleport"]\n'
        '[agents.z]\ndescription = "z"\nsystem_file = "gone.md"\n'
        + SCHEDULE.format(agent="assistant", cron="99 * * * *", extra="").replace('"s"', '"s1"')
        + SCHEDULE.format(agent="ghost", cron="0 8 * * *", extra="").replace('"s"', '"s2"')
        + SCHEDULE.format(agent="assistant", cron="0 8 * * *",
                          extra='timezone = "Mars/Olympus"').replace('"s"', '"s3"'))
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-doctor-test")
    causes = ["'teleport'", "gone.md", "no_such_tools_module", "'99 * * * *'", "'ghost'",
              "Mars/Olympus", "'nobody'"]

    code, run_text = _keel(monkeypatch, capsys, "run")
    assert code == 2 and all(c in run_text for c in causes), run_text
    code, doctor_text = _keel(monkeypatch, capsys, "doctor")
    fails = [line for line in doctor_text.splitlines() if line.startswith("FAIL")]
    assert code == 1 and len(fails) == len(causes), doctor_text
    assert all(any(c in line for line in fails) for c in causes), doctor_text


def test_a_malformed_bot_token_is_an_error_in_doctor(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "not-a-token")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-doctor-test")
    code, text = _keel(monkeypatch, capsys, "doctor")
    assert code == 1 and "FAIL  TELEGRAM_BOT_TOKEN is not a bot token" in text, text
    assert "not-a-token" not in text


def test_run_names_every_missing_variable_at_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _keel(monkeypatch, capsys, "run")
    assert code == 2
    assert "TELEGRAM_BOT_TOKEN is not set" in text and "ANTHROPIC_API_KEY is not set" in text


@pytest.mark.parametrize("data_dir", ["a-file", "a-file/below"])
def test_a_bad_data_directory_is_one_line_in_every_command_that_writes(
        data_dir: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "TELEGRAM_BOT_TOKEN": TOKEN, "ANTHROPIC_API_KEY": "sk-ant-doctor-test",
           "TELEGRAM_API_BASE_URL": "http://127.0.0.1:9/bot", "KEEL_DATA_DIR": data_dir}
    for args in (["db", "migrate"], ["run"], ["agent", "run", "assistant", "hi"], ["chat"],
                 ["db", "prune"]):
        result = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, env=env,
                                stdin=subprocess.DEVNULL)
        text = result.stdout + result.stderr
        assert result.returncode == 2, (args, text)
        lines = text.strip().splitlines()
        assert len(lines) == 1 and "KEEL_DATA_DIR" in lines[0], (args, text)
