"""`keel doctor --online` reads the webhook registration (issue 16): getWebhookInfo through the real
python-telegram-bot client against the fake Telegram, compared with KEEL_WEBHOOK_URL — registered
there, elsewhere, nowhere, or left behind by a webhook deployment that went back to polling — with
the updates Telegram holds and its last failed delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from agents.config import load_settings
from bot.doctor import Finding, check_online, webhook_findings
from tests.e2e.conftest import bot_env
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

HOOK = "https://bot.example.org/telegram/hook"


async def _set_webhook(fake: FakeTelegram, url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.base_url}{fake.token}/setWebhook", json={"url": url}) as r:
            assert (await r.json())["ok"]


async def _webhook_findings(monkeypatch: pytest.MonkeyPatch, fake: FakeTelegram,
                            anthropic: FakeAnthropic, **env: str) -> list[Finding]:
    bot_env(monkeypatch, fake, anthropic, **env)
    monkeypatch.delenv("ANTHROPIC_API_KEY")  # the model list is not what these tests look at
    findings = await check_online(load_settings())
    assert findings[0].what.startswith("Telegram getMe: @"), findings
    return findings[1:]


async def test_the_registration_is_compared_with_keel_webhook_url(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = await _webhook_findings(monkeypatch, fake_telegram, fake_anthropic,
                                      KEEL_WEBHOOK_URL=HOOK)
    assert nowhere[0].level == "warn" and nowhere[0].what == "no webhook is registered with Telegram"

    await _set_webhook(fake_telegram, HOOK)
    registered = await _webhook_findings(monkeypatch, fake_telegram, fake_anthropic,
                                         KEEL_WEBHOOK_URL=HOOK)
    assert registered == [Finding("ok", f"webhook registered at {HOOK}"),
                          Finding("ok", "Telegram holds 0 pending update(s)")]

    await _set_webhook(fake_telegram, "https://other.example.org/hook")
    elsewhere = await _webhook_findings(monkeypatch, fake_telegram, fake_anthropic,
                                        KEEL_WEBHOOK_URL=HOOK)
    assert elsewhere[0].level == "error"
    assert elsewhere[0].what == ("Telegram sends updates to https://other.example.org/hook, not "
                                 f"to KEEL_WEBHOOK_URL ({HOOK})")

    monkeypatch.delenv("KEEL_WEBHOOK_URL")
    left_behind = await _webhook_findings(monkeypatch, fake_telegram, fake_anthropic)
    assert left_behind[0].level == "warn"
    assert "KEEL_WEBHOOK_URL is not set" in left_behind[0].what
    assert "removes it at start" in left_behind[0].detail


async def test_pending_updates_and_the_last_failed_delivery_are_shown(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    closed = "http://127.0.0.1:9/telegram/hook"  # nothing listens there: every delivery fails
    await _set_webhook(fake_telegram, closed)
    alice = fake_telegram.private_chat(fake_telegram.user("Alice", id=1001))
    fake_telegram.inject_text(alice, "hello?")
    await fake_telegram.wait_for(lambda: fake_telegram.webhook_last_error, timeout=10)

    findings = await _webhook_findings(monkeypatch, fake_telegram, fake_anthropic,
                                       KEEL_WEBHOOK_URL=closed)
    assert findings[0] == Finding("ok", f"webhook registered at {closed}")
    assert findings[1] == Finding("ok", "Telegram holds 1 pending update(s)")
    assert findings[2].level == "warn"
    assert findings[2].what.startswith("Telegram's last delivery to the webhook failed ")
    assert findings[2].what.endswith("Connection failed: ClientConnectorError")
    assert "KEEL_WEBHOOK_LISTEN" in findings[2].detail


def test_a_secret_in_a_webhook_url_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "123456789:AAFakeTokenForTestsOnly_keel0000000"
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", token)
    monkeypatch.setenv("KEEL_WEBHOOK_URL", "https://bot.example.org/hook")
    failed = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    findings = webhook_findings(
        load_settings(), f"https://bot.example.org/{token}", pending=3, error_at=failed,
        error=f"Wrong response from the webhook: 404 Not Found /{token}",
        now=failed + timedelta(minutes=5))
    text = " ".join(f.what + f.detail for f in findings)
    assert token not in text
    assert "sends updates to https://bot.example.org/***, not" in text
    assert findings[-1].what == ("Telegram's last delivery to the webhook failed 5 min ago: "
                                 "Wrong response from the webhook: 404 Not Found /***")
