"""Webhook ingress: Telegram POSTs each update; keel commits it to the inbox, and only then says 200.

The same promise as long polling (``bot/poller.py``): an update Telegram was told we received is
already stored. Telegram resends an update until it gets a 2xx, so anything short of a commit
answers an error and the update comes again (deduplicated by ``update_id``).

- ``POST <path>`` with ``X-Telegram-Bot-Api-Secret-Token``: a wrong or missing secret gets 401
  and nothing is stored (anyone can find the URL; only Telegram knows the secret). A body that is
  not an update gets 400 (Telegram would resend it forever otherwise, so it is logged and
  dropped); a body over ``MAX_BODY`` gets 413.
- ``GET /healthz`` for load balancers: 200 when the database answers, 503 when it does not.

A plain ASGI application, served by uvicorn inside the bot's own event loop (``serve``): one
process, one loop, the same handlers as polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from telegram import Bot, Update

from bot.poller import Store, inbox_item, scrubbed

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
"""Largest update body accepted (Telegram's updates are a few kB; files come by reference)."""
HEALTH_PATH = "/healthz"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Submit = Callable[[Update], Any]
Health = Callable[[], Awaitable[bool]]


def webhook_path(url: str) -> str:
    path = urlsplit(url).path or "/"
    return path if path.startswith("/") else f"/{path}"


class WebhookIngress:
    """The ASGI application."""

    def __init__(self, bot: Bot, *, path: str, secret: str, store: Store, submit: Submit,
                 healthy: Health, secrets: list[str] | None = None) -> None:
        self.bot = bot
        self.secrets = [s for s in secrets or [] if s]
        self.path = path
        self._secret = secret.encode()
        self.store = store
        self.submit = submit
        self.healthy = healthy
        self.accepted = 0
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            ok = await self._check_health()
            await _answer(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable"})
            return
        if path != self.path:
            await _answer(send, 404, {"error": "not found"})
            return
        if method != "POST":
            await _answer(send, 405, {"error": "POST only"})
            return
        if not hmac.compare_digest(_header(scope, b"x-telegram-bot-api-secret-token"),
                                   self._secret):
            self.rejected += 1
            log.warning("webhook: a request without the right secret token was refused")
            await _answer(send, 401, {"error": "unauthorized"})
            return
        body = await _body(receive, MAX_BODY)
        if body is None:
            await _answer(send, 413, {"error": "too large"})
            return
        try:
            data = json.loads(body)
            update = Update.de_json(data, self.bot) if isinstance(data, dict) else None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("webhook: a body that is not an update was dropped (%s)",
                        type(exc).__name__)
            update = None
        if update is None:
            await _answer(send, 400, {"error": "not an update"})
            return
        update, payload = scrubbed(update, self.secrets, data)
        try:
            fresh = await self.store([inbox_item(update, payload)])
        except Exception:
            # not stored: an error answer, and Telegram sends the update again
            log.exception("webhook: could not store update %s; Telegram will resend it",
                          update.update_id)
            await _answer(send, 500, {"error": "not stored"})
            return
        self.accepted += 1
        await _answer(send, 200, {"ok": True})
        if update.update_id in fresh:
            self.submit(update)

    async def _check_health(self) -> bool:
        try:
            return await asyncio.wait_for(self.healthy(), timeout=5)
        except Exception:
            return False


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return b""


async def _body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Server:
    """uvicorn in the running loop, without its own signal handling (keel's ``run_bot`` owns
    SIGTERM and SIGINT and stops the server as part of its shutdown)."""

    def __init__(self, app: WebhookIngress, host: str, port: int) -> None:
        import uvicorn

        class _Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None,
                                access_log=False, server_header=False)
        self._server = _Quiet(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="keel-webhook")
        while not self._server.started:
            if self._task.done():  # could not bind: say why
                self._task.result()
                raise OSError("the webhook server stopped while starting")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, timeout=5)
        self._task = None
