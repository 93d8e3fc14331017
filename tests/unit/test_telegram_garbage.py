"""A Telegram call leaves nothing for the garbage collector (issue 15).

httpx links a response and its body's stream both ways, so each call through python-telegram-bot
left ~45 objects in a reference cycle. In a 1,000-chat burst the collections that freed 13,000 to
40,000 of them at once stopped the event loop for 87-100 ms. keel's Telegram pools (the one for
calls and the one for getUpdates) unbind each response once its body is read while they are on
httpx; after the first update they go over aiohttp (bot/telegram_http.py), which must leave none
either.
"""

from __future__ import annotations

import gc

from agents.config import load_settings
from bot.app import _upgrade, build_application
from tests.fakes.telegram import FakeTelegram

API_KEY = "sk-ant-test-key-0123456789"


async def _cycles_after_60_calls(fake_telegram: FakeTelegram, *, aiohttp: bool) -> int:
    """Objects the collector finds in cycles after 20 x (sendMessage, sendChatAction,
    getUpdates) through the bot's own pools (over aiohttp: as after its first update)."""
    chat = fake_telegram.private_chat(fake_telegram.user("Alice", id=1001))
    settings = load_settings(_env_file=None, TELEGRAM_BOT_TOKEN=fake_telegram.token,
                             TELEGRAM_API_BASE_URL=fake_telegram.base_url,
                             ANTHROPIC_API_KEY=API_KEY)
    app = build_application(settings)
    bot = app.bot
    await bot.initialize()
    try:
        if aiohttp:
            _upgrade(app.bot_data["telegram_requests"])
            assert all(r.upgraded for r in app.bot_data["telegram_requests"])
        for _ in range(3):  # first calls: connections, lazy imports, caches
            await bot.send_message(chat.id, "warm")
            await bot.get_updates(timeout=0)
        gc.collect()
        gc.disable()
        try:
            for n in range(20):
                await bot.send_message(chat.id, f"message {n}")
                await bot.send_chat_action(chat.id, "typing")
                await bot.get_updates(timeout=0)
            found = gc.collect()
        finally:
            gc.enable()
    finally:
        await bot.shutdown()
    assert len(fake_telegram.sent(chat.id)) == 23
    return found


async def test_telegram_calls_leave_no_reference_cycles(fake_telegram: FakeTelegram) -> None:
    found = await _cycles_after_60_calls(fake_telegram, aiohttp=False)
    # before: ~43 objects a call, 2,500+ for these 60 calls
    assert found < 40, f"{found} objects in reference cycles after 60 Telegram calls"


async def test_telegram_calls_over_aiohttp_leave_none_either(fake_telegram: FakeTelegram) -> None:
    found = await _cycles_after_60_calls(fake_telegram, aiohttp=True)
    assert found < 40, f"{found} objects in reference cycles after 60 Telegram calls"
