"""Webhook ingress (issue 16): Telegram POSTs updates; keel stores each before it answers 200.

The fake Telegram pushes updates to the webhook as Telegram does (the oldest pending first, the
secret in ``X-Telegram-Bot-Api-Secret-Token``, resent until a 2xx answer), so these tests drive
keel's real ingress with the real python-telegram-bot client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from agents.config import load_settings
from tests.e2e.conftest import BotWorld, bot_env, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, reply
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture
async def hook_world(fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BotWorld]:
    port = _free_port()
    bot_env(monkeypatch, fake_telegram, fake_anthropic,
            KEEL_WEBHOOK_URL=f"http://127.0.0.1:{port}/telegram/hook",
            KEEL_WEBHOOK_LISTEN=f"127.0.0.1:{port}", KEEL_WEBHOOK_SECRET="s3cret_for-tests")
    world = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    world.app = await start_bot(world.settings)
    try:
        yield world
    finally:
        await stop_bot(world.app)


async def test_messages_come_by_webhook_and_are_answered_once_in_order(
        hook_world: BotWorld) -> None:
    w = hook_world
    w.answer(lambda req: reply(f"echo: {req.last_user_text}"))
    for i in range(5):
        w.telegram.inject_text(w.alice_chat, f"message {i}")
    await w.telegram.wait_for(lambda: len(w.telegram.sent(w.alice_chat.id)) >= 5, timeout=20)
    await asyncio.sleep(0.3)
    assert [m["text"] for m in w.telegram.sent(w.alice_chat.id)] == [
        f"echo: message {i}" for i in range(5)]
    assert w.telegram.calls("getUpdates") == []  # no polling in webhook mode
    [hook] = w.telegram.calls("setWebhook")
    assert hook.params["secret_token"] == "s3cret_for-tests"
    assert hook.params.get("drop_pending_updates") in (None, "False", "false")
    assert {status for _, status in w.telegram.webhook_log} == {200}


async def test_a_request_without_the_secret_is_refused_and_stores_nothing(
        hook_world: BotWorld) -> None:
    w = hook_world
    url = w.settings.webhook_url or ""
    update = {"update_id": 999, "message": {
        "message_id": 1, "date": 0, "chat": {"id": w.alice_chat.id, "type": "private"},
        "from": {"id": w.alice.id, "is_bot": False, "first_name": "Alice"}, "text": "forged"}}
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
            async with http.post(url, json=update, headers=headers) as response:
                assert response.status == 401
        health = url.replace("/telegram/hook", "/healthz")
        async with http.get(health) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        async with http.post(url, data=b"not json", headers={
                "X-Telegram-Bot-Api-Secret-Token": "s3cret_for-tests"}) as response:
            assert response.status == 400
    runtime = w.app.bot_data["runtime"]
    assert await runtime.db.fetchval("SELECT COUNT(*) FROM inbox") == 0
    assert w.anthropic.requests == []


async def test_an_update_keel_could_not_store_is_not_acknowledged_and_comes_again(
        hook_world: BotWorld) -> None:
    # 200 only after the commit: when the inbox write fails, Telegram gets an error, keeps the
    # update and pushes it again; it is then answered once.
    w = hook_world
    keel = w.app.bot_data["keel"]
    ingress_store = w.app.bot_data["webhook_server"]._server.config.app.store
    failures = {"left": 2}

    async def flaky_store(items: list[Any]) -> set[int]:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk full")
        return await ingress_store(items)

    w.app.bot_data["webhook_server"]._server.config.app.store = flaky_store
    w.answer(lambda req: reply("stored at last"))
    w.telegram.inject_text(w.alice_chat, "hello")
    msg = await w.telegram.next_bot_message(w.alice_chat.id, timeout=20)
    assert msg["text"] == "stored at last"
    statuses = [status for _, status in w.telegram.webhook_log]
    assert statuses == [500, 500, 200]
    await asyncio.sleep(0.3)
    assert len(w.telegram.sent(w.alice_chat.id)) == 1
    assert keel is w.app.bot_data["keel"]


async def test_polling_after_a_webhook_removes_it_and_keeps_what_telegram_held(
        fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A webhook left behind (a webhook deployment went back to polling) would make every
    # getUpdates a 409; keel removes it without dropping the updates Telegram held for it.
    await _set_webhook(fake_telegram, "https://old.example/hook")
    bot_env(monkeypatch, fake_telegram, fake_anthropic)
    world = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    world.telegram.inject_text(world.alice_chat, "sent while the webhook was set")
    world.app = await start_bot(world.settings)
    try:
        msg = await fake_telegram.next_bot_message(world.alice_chat.id, timeout=20)
        assert msg["text"] == "echo: sent while the webhook was set"
        [delete] = fake_telegram.calls("deleteWebhook")
        assert delete.params.get("drop_pending_updates") in (None, "False", "false")
    finally:
        await stop_bot(world.app)


async def _set_webhook(fake: FakeTelegram, url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.base_url}{fake.token}/setWebhook", json={"url": url}) as r:
            assert (await r.json())["ok"]
