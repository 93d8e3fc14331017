"""Telegram calls over aiohttp (bot/telegram_http.py): the same answers as python-telegram-bot's
httpx client, and errors that still tell delivery whether Telegram may have the request.

Delivery resends only what certainly never left (``never_reached_telegram``): an error classed
"not sent" when it may have arrived sends a reply twice; one classed "may have arrived" when it
never left loses it (the chunk is kept as unconfirmed, not resent).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import ssl
from typing import Any

import pytest
from telegram import Bot
from telegram.error import NetworkError, TimedOut
from telegram.request import HTTPXRequest

from agents.config import load_settings
from bot.app import build_application
from bot.delivery import never_reached_telegram
from bot.telegram_http import TelegramRequest
from tests.fakes.telegram import FakeTelegram

API_KEY = "sk-ant-test-key-0123456789"


def _request(connections: int = 8) -> TelegramRequest:
    return TelegramRequest(HTTPXRequest(connection_pool_size=connections),
                           tls=ssl.create_default_context(), connections=connections)


async def _upgraded_bot(fake: FakeTelegram, *, base_url: str | None = None,
                        connections: int = 8) -> tuple[Bot, TelegramRequest]:
    """A bot whose calls go over aiohttp (initialised without getMe: the server may be gone)."""
    request = _request(connections)
    bot = Bot(fake.token, base_url=base_url or fake.base_url, request=request,
              get_updates_request=_request(1))
    await request.initialize()
    request.upgrade()
    assert request.upgraded
    bot._initialized = True  # no getMe: these tests call a server that may not answer it
    return bot, request


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_bot_moves_to_aiohttp_after_its_first_update_and_answers_the_same(
        fake_telegram: FakeTelegram) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user("Alice", id=1001))
    settings = load_settings(_env_file=None, TELEGRAM_BOT_TOKEN=fake_telegram.token,
                             TELEGRAM_API_BASE_URL=fake_telegram.base_url,
                             ANTHROPIC_API_KEY=API_KEY)
    app = build_application(settings)
    calls, updates = app.bot_data["telegram_requests"]
    bot = app.bot
    await bot.initialize()  # getMe over httpx: start-up does not wait for aiohttp's import
    try:
        assert not calls.upgraded and not updates.upgraded
        before = await bot.send_message(chat.id, "before *the* switch")
        from bot.app import _upgrade

        _upgrade([calls, updates])
        assert calls.upgraded and updates.upgraded
        after = await bot.send_message(chat.id, "after *the* switch")
        assert after.message_id == before.message_id + 1
        assert after.text == "after *the* switch"
        # a file: multipart with the caption and the bytes as sent
        sent = await bot.send_document(chat.id, document=b"\x00\x01 report bytes \xff",
                                       filename="résumé \"draft\".bin", caption="the report ✓")
        assert sent.caption == "the report ✓"
        [doc] = fake_telegram.documents(chat.id)
        assert (doc["filename"], doc["data"]) == ('résumé "draft".bin',
                                                  b"\x00\x01 report bytes \xff")
        # a download (GET on the file URL)
        incoming = fake_telegram.inject_document(chat, "notes.txt", b"plain notes")
        updates_seen = await bot.get_updates(timeout=0)
        document = next(u.message.document for u in updates_seen
                        if u.update_id == incoming["update_id"])
        data = await (await document.get_file()).download_as_bytearray()
        assert bytes(data) == b"plain notes"
    finally:
        await bot.shutdown()
    assert not calls.upgraded  # shut down: the aiohttp session is closed


async def test_no_connection_at_all_is_known_not_sent(fake_telegram: FakeTelegram) -> None:
    bot, request = await _upgraded_bot(
        fake_telegram, base_url=f"http://127.0.0.1:{_closed_port()}/bot")
    try:
        with pytest.raises(NetworkError) as caught:
            await bot.send_message(1001, "hello")
    finally:
        await request.shutdown()
    assert never_reached_telegram(caught.value), repr(caught.value.__cause__)


async def test_waiting_for_a_free_connection_too_long_is_known_not_sent(
        fake_telegram: FakeTelegram) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user("Alice", id=1001))
    bot, request = await _upgraded_bot(fake_telegram, connections=1)
    fake_telegram.hang_next("sendMessage")
    held = asyncio.create_task(bot.send_message(chat.id, "first", read_timeout=10))
    try:
        for _ in range(500):
            if fake_telegram.hung:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(TimedOut) as caught:
            await bot.send_message(chat.id, "second", pool_timeout=0.2, connect_timeout=0.2)
        assert never_reached_telegram(caught.value), repr(caught.value.__cause__)
        fake_telegram.release_hung()
        await held
    finally:
        held.cancel()
        await request.shutdown()
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == ["first"]


@pytest.mark.parametrize("fault", ["dropped after processing", "dropped before processing",
                                   "answered too late"])
async def test_a_request_that_reached_telegram_is_never_called_not_sent(
        fake_telegram: FakeTelegram, fault: str) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user("Alice", id=1001))
    bot, request = await _upgraded_bot(fake_telegram)
    if fault == "answered too late":
        fake_telegram.slow_next("sendMessage", 2.0)
    else:
        fake_telegram.fail_next("sendMessage", drop_connection=True,
                                after_processing=fault == "dropped after processing")
    kwargs: dict[str, Any] = {"read_timeout": 0.3} if fault == "answered too late" else {}
    try:
        with pytest.raises(NetworkError) as caught:
            await bot.send_message(chat.id, "hello", **kwargs)
    finally:
        await request.shutdown()
    assert not never_reached_telegram(caught.value), repr(caught.value.__cause__)
    if fault == "answered too late":
        assert isinstance(caught.value, TimedOut)


async def test_when_aiohttp_is_not_imported_yet_a_thread_imports_it_then_calls_move(
        fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import threading

    from bot import app as app_module

    importers: list[str] = []
    real_import = app_module.importlib.import_module

    def recording_import(name: str) -> Any:
        importers.append(threading.current_thread().name)
        return real_import(name)

    monkeypatch.delitem(sys.modules, "aiohttp")  # as in the bot before its first update
    monkeypatch.setattr(app_module.importlib, "import_module", recording_import)
    request = _request()
    await request.initialize()
    try:
        app_module._upgrade([request])
        assert not request.upgraded  # not on the event loop
        for _ in range(500):
            if request.upgraded:
                break
            await asyncio.sleep(0.01)
        assert request.upgraded
        assert importers and importers[0] != threading.current_thread().name
    finally:
        await request.shutdown()


class _CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted.append(getattr(fn, "__qualname__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ws_proxy",
                            "wss_proxy", "netrc"):
            monkeypatch.delenv(name)


async def test_a_call_over_aiohttp_hands_nothing_to_a_thread(
        fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Telegram call used to hop to a thread twice (aiohttp's ``trust_env``: the proxy
    variables and ~/.netrc read again on each call), ~0.1 ms of the loop's CPU a hop."""
    _no_proxy_env(monkeypatch)
    chat = fake_telegram.private_chat(fake_telegram.user("Alice", id=1001))
    counting = _CountingExecutor()
    asyncio.get_running_loop().set_default_executor(counting)
    bot, request = await _upgraded_bot(fake_telegram)
    try:
        await bot.send_message(chat.id, "one")  # the first call looks up the proxy, once
        counting.submitted.clear()
        for n in range(5):
            await bot.send_chat_action(chat.id, "typing")
            await bot.send_message(chat.id, f"reply {n}")
    finally:
        await request.shutdown()
    assert counting.submitted == []
    assert fake_telegram.sent(chat.id)[-1]["text"] == "reply 4"
    assert len(fake_telegram.chat_actions(chat.id)) == 5


async def _a_proxy(seen: list[str]) -> tuple[Any, str]:
    """An HTTP proxy that answers every call itself as Telegram would ("ok"), recording the
    absolute URL and credentials it was asked for."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        seen.append(f"{request.headers.get('Proxy-Authorization', '-')} {request.url}")
        return web.json_response({"ok": True, "result": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_proxies_from_the_environment_are_still_used_and_no_proxy_is_obeyed(
        fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    _no_proxy_env(monkeypatch)
    seen: list[str] = []
    runner, proxy = await _a_proxy(seen)
    monkeypatch.setenv("HTTP_PROXY", proxy.replace("http://", "http://keel:s3cret@"))
    monkeypatch.setenv("NO_PROXY", "direct.invalid")
    behind = "http://api.telegram.invalid/bot"  # only the proxy can reach it
    bot, request = await _upgraded_bot(fake_telegram, base_url=behind)
    direct, direct_request = await _upgraded_bot(fake_telegram, base_url="http://direct.invalid/bot")
    try:
        assert await bot.send_chat_action(1001, "typing")
        assert await bot.send_chat_action(1001, "typing")
        with pytest.raises(NetworkError):  # NO_PROXY: straight to a host that does not exist
            await direct.send_chat_action(1001, "typing")
    finally:
        await request.shutdown()
        await direct_request.shutdown()
        await runner.cleanup()
    auth = "Basic " + base64.b64encode(b"keel:s3cret").decode()
    assert seen == [f"{auth} {behind}{fake_telegram.token}/sendChatAction"] * 2


async def test_an_https_call_goes_through_the_proxys_connect_with_its_credentials(
        fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    """Telegram's real API is https: behind a proxy, aiohttp tunnels with CONNECT, and the
    proxy's credentials must be on that request."""
    import base64

    _no_proxy_env(monkeypatch)
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")  # no tunnel today
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://keel:s3cret@127.0.0.1:{port}")
    bot, request = await _upgraded_bot(fake_telegram, base_url="https://api.telegram.invalid/bot")
    try:
        with pytest.raises(NetworkError):
            await bot.send_chat_action(1001, "typing")
    finally:
        await request.shutdown()
        server.close()
    [head] = seen
    first, *rest = head.decode().split("\r\n")
    assert first.startswith("CONNECT api.telegram.invalid:443 ")
    headers = {name.lower(): value for name, _, value in (h.partition(": ") for h in rest if h)}
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"keel:s3cret").decode()
