"""Telegram calls over aiohttp, once it is loaded; python-telegram-bot's httpx client until then.

Each call through httpx cost 0.8-1.3 ms of the event loop (sendChatAction, sendMessage against a
local server), aiohttp 0.3-0.5 ms: httpx's pool asks every kept connection whether the server
closed it on each request and each response, and its HTTP parsing is Python; aiohttp's loop
notices a closed connection by itself and parses in C. A pinned turn makes three or four calls
and a burst of 1,000 chats more than 3,000 (issue 15).

Importing aiohttp takes ~0.2 s, so start-up does not wait for it: the first calls (getMe, the
command list, recovery) go through httpx, and the first update starts the import in a thread
(``bot.app._warm_up``, beside the model SDK's, which needs aiohttp too); ``upgrade`` then moves
the calls that follow to aiohttp.

What keel's delivery needs from an error (``bot.delivery.never_reached_telegram``) is whether
Telegram may have received the request. Only a connection that was never made proves it did not
(refused, no route, TLS failure, a pool or connect timeout): those errors carry ``RequestNotSent``
as their cause. Everything after the connection was made — a read timeout, a dropped or reset
connection, a broken body — may have reached Telegram, and is reported as such. aiohttp never
retries a POST on its own, so nothing is sent twice underneath keel.

Proxies come from the environment (``HTTPS_PROXY``, ``NO_PROXY``, ...), read once per Telegram
host, as python-telegram-bot's httpx client reads them once when it is made. aiohttp's own
``trust_env`` would read them, and ``~/.netrc`` besides, in a thread on every call: two thread
hops a call (issue 15), and a ~/.netrc login for the host sent along as a password.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import JSONDict, ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, HTTPXRequest, RequestData

if TYPE_CHECKING:
    import aiohttp


log = logging.getLogger(__name__)


class RequestNotSent(Exception):
    """The cause of a Telegram call's error when the request certainly never left: no connection
    was made for it."""


class TelegramRequest(BaseRequest):
    """python-telegram-bot's request interface: httpx (``HTTPXRequest``, as configured by the
    caller) until ``upgrade``, aiohttp after it. Same timeouts, same answers, same errors as
    python-telegram-bot raises for either."""

    def __init__(self, fallback: HTTPXRequest, *, tls: ssl.SSLContext, connections: int) -> None:
        self._httpx = fallback
        self._tls = tls
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._open = False
        self._proxies: dict[str, tuple[Any, Any]] = {}
        """scheme://host → (proxy URL, its headers), or (None, None) for a direct connection."""

    @property
    def read_timeout(self) -> float | None:
        return self._httpx.read_timeout

    @property
    def upgraded(self) -> bool:
        """Whether calls go over aiohttp now."""
        return self._session is not None

    async def initialize(self) -> None:
        await self._httpx.initialize()
        self._open = True

    async def shutdown(self) -> None:
        self._open = False
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await self._httpx.shutdown()

    def upgrade(self) -> None:
        """From now on, calls go over aiohttp (imported here: call it once the import is done,
        or it happens on the event loop). Calls under way finish on httpx."""
        if self._session is not None or not self._open:
            return
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections, ssl=self._tls))
        log.info("Telegram calls go over aiohttp from now on")

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        session = self._session
        if session is None:
            return await self._httpx.do_request(
                url, method, request_data, read_timeout=read_timeout,
                write_timeout=write_timeout, connect_timeout=connect_timeout,
                pool_timeout=pool_timeout)
        defaults = self._httpx._client.timeout
        files = request_data.multipart_data if request_data else None
        read = _given(read_timeout, defaults.read)
        write = _given(write_timeout, defaults.write)
        connect = _given(connect_timeout, defaults.connect)
        pool = _given(pool_timeout, defaults.pool)
        return await _call(session, url, method, request_data, files, read=read, write=write,
                           connect=connect, pool=pool, user_agent=self.USER_AGENT,
                           proxy=self._proxy(url))

    def _proxy(self, url: str) -> tuple[Any, Any]:
        """The environment's proxy for ``url``'s host (and its credentials), looked up once."""
        slash = url.find("/", url.find("//") + 2)
        origin = url if slash < 0 else url[:slash]
        found = self._proxies.get(origin)
        if found is None:
            found = self._proxies[origin] = env_proxy(origin)
        return found


class UpdatesRequest(TelegramRequest):
    """The ``getUpdates`` connection: it also keeps the last batch's updates as Telegram sent
    them (``batch``), so the poller stores each as it came. Rebuilding the JSON from the parsed
    object (``Update.to_dict``) cost 47 µs an update on the event loop (issue 15) and stored
    more than Telegram sent (every false default written out). python-telegram-bot parses the
    same dicts without changing them (``TelegramObject._parse_data`` copies before it reads)."""

    def __init__(self, fallback: HTTPXRequest, *, tls: ssl.SSLContext, connections: int) -> None:
        super().__init__(fallback, tls=tls, connections=connections)
        self.batch: list[Any] = []
        """The ``result`` of the last answer with one (a list: getUpdates'), else empty."""

    def parse_json_payload(self, payload: bytes) -> JSONDict:  # type: ignore[override]
        data = BaseRequest.parse_json_payload(payload)
        result = data.get("result") if isinstance(data, dict) else None
        self.batch = result if isinstance(result, list) else []
        return data


def env_proxy(origin: str) -> tuple[Any, Any]:
    """(proxy URL, its headers) that the environment names for ``origin`` (``NO_PROXY``
    counted), or (None, None)."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        proxy, auth = get_env_proxy_for_url(URL(origin))
    except LookupError:  # no proxy for this scheme, or NO_PROXY names the host
        return None, None
    return proxy, None if auth is None else {"Proxy-Authorization": auth.encode()}


def _given(value: ODVInput[float], default: float | None) -> float | None:
    return default if isinstance(value, DefaultValue) else value


def _sum(*parts: float | None) -> float | None:
    """A limit made of several (None: one of them is unlimited, so the sum is too)."""
    return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


async def _call(session: aiohttp.ClientSession, url: str, method: str,
                request_data: RequestData | None, files: dict[str, Any] | None, *,
                read: float | None, write: float | None, connect: float | None,
                pool: float | None, user_agent: str,
                proxy: tuple[Any, Any] = (None, None)) -> tuple[int, bytes]:
    import aiohttp

    fields = request_data.json_parameters if request_data else None
    headers = {"User-Agent": user_agent}
    body: Any = None
    if fields and not files:
        # the form aiohttp would make of the dict, made here: aiohttp builds a multipart
        # writer (and a random boundary) for every dict before it finds no file in it
        body = urlencode(fields).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif files:
        form = aiohttp.FormData(quote_fields=False)
        for name, value in (fields or {}).items():
            form.add_field(name, value)
        for name, (filename, content, mimetype) in files.items():
            form.add_field(name, content, filename=filename, content_type=mimetype)
        body = form
    # connect: waiting for a free connection and making one (httpx: pool + connect); sock_read:
    # the longest silence while the answer comes; total: a bound on the whole call, as httpx's
    # four timeouts together (aiohttp has no write timeout of its own)
    timeout = aiohttp.ClientTimeout(total=_sum(pool, connect, write, read),
                                    connect=_sum(pool, connect), sock_connect=connect,
                                    sock_read=read)
    try:
        if proxy[1] is not None and url.startswith("http:"):
            headers.update(proxy[1])  # a plain-HTTP proxy reads them on the request itself
        async with session.request(method, url, data=body, headers=headers,
                                   timeout=timeout, allow_redirects=False,
                                   proxy=proxy[0], proxy_headers=proxy[1]) as response:
            return response.status, await response.read()
    except aiohttp.ConnectionTimeoutError as exc:
        raise TimedOut(
            "Pool or connect timeout: no connection to Telegram in time. Request was *not* "
            "sent to Telegram.") from _not_sent(exc)
    except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
        raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from _not_sent(exc)
    except TimeoutError as exc:  # no (complete) answer in time: it may have been sent
        raise TimedOut from exc
    except aiohttp.ClientError as exc:
        raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from exc


def _not_sent(exc: BaseException) -> RequestNotSent:
    marker = RequestNotSent(f"{type(exc).__name__}: {exc}")
    marker.__cause__ = exc
    return marker

