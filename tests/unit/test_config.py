import subprocess
import sys
from pathlib import Path

import pytest

from agents.config import load_keel_file, load_settings, price_table
from agents.errors import ConfigError, MissingSettingError, UnknownModelPriceError
from agents.pricing import PriceTable, Usage, cost_of, worst_case_cost


def test_defaults_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_ALLOWED_USER_IDS", " 12, 34 ,,56")
    monkeypatch.setenv("KEEL_TIMEZONE", "Europe/Madrid")
    settings = load_settings()
    assert settings.allowed_user_ids == {12, 34, 56}
    assert settings.telegram_api_base_url == "https:/" + "/api.telegram.org/bot"  # the real default
    assert settings.router_model == "claude-haiku-4-5"
    assert settings.executor_model == settings.planner_model == "claude-sonnet-4-6"
    assert str(settings.tz) == "Europe/Madrid"


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match="KEEL_TIMEZONE.*IANA"):
        load_settings()
    monkeypatch.setenv("KEEL_TIMEZONE", "UTC")
    monkeypatch.setenv("KEEL_ALLOWED_USER_IDS", "12,bob")
    with pytest.raises(ConfigError, match="KEEL_ALLOWED_USER_IDS.*'bob'"):
        load_settings()


def test_missing_secrets_say_how_to_get_them() -> None:
    settings = load_settings()
    with pytest.raises(MissingSettingError, match="TELEGRAM_BOT_TOKEN.*BotFather"):
        settings.require_telegram_token()
    with pytest.raises(MissingSettingError, match="ANTHROPIC_API_KEY"):
        settings.require_anthropic_key()


def test_dotenv_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KEEL_MAX_STEPS=7\n")
    assert load_settings().max_steps == 7


def test_price_table_and_costs() -> None:
    table = PriceTable.builtin()
    haiku = table.require("claude-haiku-4-5-20251001")  # dated ids fall back to the alias
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=1_000_000,
                  cache_write_5m_tokens=1_000_000)
    assert cost_of(haiku, usage) == pytest.approx(1.0 + 5.0 + 0.10 + 1.25)
    assert worst_case_cost(haiku, input_tokens=1_000_000, max_tokens=0) == pytest.approx(2.0)
    with pytest.raises(UnknownModelPriceError, match="claude-imaginary"):
        table.require("claude-imaginary")


def test_keel_toml_overrides_prices_and_declares_agents(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text(
        '[prices."my-model"]\ninput = 1\noutput = 2\ncache_write_5m = 1\ncache_write_1h = 2\n'
        'cache_read = 0.1\n\n[agents.helper]\ndescription = "helps"\nsystem = "be brief"\n'
        'tools = ["get_current_time"]\n[agents.helper.limits]\nmax_steps = 3\n'
    )
    parsed = load_keel_file(path)
    assert price_table(parsed).require("my-model").output == 2
    assert parsed.agents["helper"].limits.max_steps == 3


def test_keel_toml_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text("[agents.x]\ndescription = 'x'\nsystem = 'y'\nmax_step = 3\n")
    with pytest.raises(ConfigError, match="(?s)keel.toml.*max_step"):
        load_keel_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_keel_file(tmp_path / "nope.toml")


def _keel(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                          "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


def test_keel_run_with_an_empty_environment_names_the_variable(tmp_path: Path) -> None:
    result = _keel("run", cwd=tmp_path)
    assert result.returncode == 2
    assert "TELEGRAM_BOT_TOKEN" in result.stderr and "BotFather" in result.stderr
    assert "Traceback" not in result.stderr


def test_keel_doctor_lists_what_is_missing(tmp_path: Path) -> None:
    result = _keel("doctor", cwd=tmp_path)
    assert result.returncode == 1
    assert "TELEGRAM_BOT_TOKEN is not set" in result.stdout
    assert "ANTHROPIC_API_KEY is not set" in result.stdout
    assert "no owner: the bot will answer nobody" in result.stdout


def test_every_command_has_help(tmp_path: Path) -> None:
    for args in (["--help"], ["run", "--help"], ["doctor", "--help"], ["db", "migrate", "--help"]):
        result = _keel(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert "usage: keel" in result.stdout


def test_the_example_keel_toml_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "keel.example.toml"
    parsed = load_keel_file(example)
    assert "support" in parsed.agents and [s.name for s in parsed.schedules] == ["morning"]
