"""fetch_url reads real pages from a local server, and refuses to be turned against our network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from agents.tools import RetryPolicy, ToolCall, ToolContext, ToolRegistry, fetch_url
from agents.tools import fetch as fetch_module
from agents.tools.fetch import MAX_BYTES, MAX_REDIRECTS, MAX_TEXT_CHARS, is_public_address
from tests.tools.conftest import MakeCtx

PAGE = """<!doctype html><html><head><title>Release notes
 — keel</title><style>body{color:red}</style><script>alert("x")</script></head>
<body><h1>keel 1.2</h1><p>Faster &amp; smaller.</p><ul><li>one</li><li>two</li></ul></body></html>"""


class Site:
    """A small web site on 127.0.0.1 that counts what it is asked."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        routes: dict[str, Callable[[web.Request], web.Response]] = {
            "/page": lambda r: web.Response(text=PAGE, content_type="text/html"),
            "/data.json": lambda r: web.json_response({"version": "1.2"}),
            "/logo.png": lambda r: web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
                                                content_type="image/png"),
            "/gone": lambda r: web.Response(status=404, text="nope"),
            "/busy": lambda r: web.Response(status=503, text="busy"),
            "/throttled": lambda r: web.Response(status=429, text="slow down",
                                                 headers={"Retry-After": "120"}),
            "/moved": lambda r: redirect("/page"),
            "/loop/{n}": lambda r: redirect(f"/loop/{int(r.match_info['n']) + 1}"),
            "/to-metadata": lambda r: redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-file": lambda r: redirect("file:///etc/passwd"),
            "/big": lambda r: web.Response(text="a" * (MAX_BYTES + 500_000),
                                           content_type="text/plain"),
            "/long": lambda r: web.Response(text="word " * MAX_TEXT_CHARS,
                                            content_type="text/plain"),
            "/host": lambda r: web.Response(text=f"host={r.host}"),
        }
        for path, make in routes.items():
            app.router.add_get(path, _handler(make))
        app.router.add_get("/slow", self._slow)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        response: web.StreamResponse = await handler(request)
        return response

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")


def redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


def _handler(make: Callable[[web.Request], web.Response]
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return make(request)

    return handle


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    site = Site()
    runner = web.AppRunner(site.app(), shutdown_timeout=0.1)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    host, port = runner.addresses[0][:2]
    site.base = f"http://{host}:{port}"
    yield site
    await runner.cleanup()


@pytest.fixture
def local_ctx(make_ctx: MakeCtx) -> ToolContext:
    """The local test server is on loopback, which only an explicit setting allows."""
    return make_ctx(extras={"fetch_allow_private": True})


CATALOG = ToolRegistry([fetch_url.replace(
    retry=RetryPolicy(base_delay_s=0.001, max_delay_s=0.002))]).catalog(["fetch_url"])


async def fetch(url: str, ctx: ToolContext) -> tuple[str, bool]:
    outcome = await CATALOG.invoke(ToolCall(id="t", name="fetch_url", input={"url": url}), ctx)
    return outcome.content, outcome.is_error


def error(content: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(content)
    return body


async def test_html_comes_back_as_title_and_readable_text(site: Site, local_ctx: ToolContext) -> None:
    content, is_error = await fetch(f"{site.base}/page", local_ctx)
    assert not is_error
    assert content == (f"URL: {site.base}/page\n"
                       f'<external source="{site.base}/page" trust="untrusted">\n'
                       "Title: Release notes — keel\n\n"
                       "# keel 1.2\n\nFaster & smaller.\n\n- one\n- two\n</external>")


async def test_json_comes_back_as_it_is(site: Site, local_ctx: ToolContext) -> None:
    content, _ = await fetch(f"{site.base}/data.json", local_ctx)
    assert content.endswith('{"version": "1.2"}\n</external>')


async def test_binary_content_is_refused_clearly(site: Site, local_ctx: ToolContext) -> None:
    content, is_error = await fetch(f"{site.base}/logo.png", local_ctx)
    assert is_error and error(content)["error"] == "unsupported"
    assert "image/png" in error(content)["message"]


async def test_http_errors_become_error_codes(site: Site, local_ctx: ToolContext) -> None:
    assert error((await fetch(f"{site.base}/gone", local_ctx))[0])["error"] == "not_found"
    busy = error((await fetch(f"{site.base}/busy", local_ctx))[0])
    assert busy["error"] == "upstream_error" and "gave up after 3 attempts" in busy["message"]
    assert site.hits["/busy"] == 3


async def test_a_429_reaches_the_model_as_rate_limited_data(site: Site, local_ctx: ToolContext) -> None:
    content, is_error = await fetch(f"{site.base}/throttled", local_ctx)
    body = error(content)
    assert is_error and body["error"] == "rate_limited"
    assert "retry in 120s" in body["message"] and "429" not in content
    assert site.hits["/throttled"] == 1  # a 2-minute Retry-After is not waited out inside the call


async def test_redirects_are_followed_up_to_a_limit(site: Site, local_ctx: ToolContext) -> None:
    content, _ = await fetch(f"{site.base}/moved", local_ctx)
    assert content.startswith(f'URL: {site.base}/page\n<external source="{site.base}/page" '
                              'trust="untrusted">\nTitle: Release notes')
    looped = error((await fetch(f"{site.base}/loop/0", local_ctx))[0])
    assert looped["error"] == "upstream_error" and "redirects more than 5 times" in looped["message"]
    assert sum(site.hits[f"/loop/{n}"] for n in range(MAX_REDIRECTS + 1)) == MAX_REDIRECTS + 1


async def test_size_and_length_are_bounded(site: Site, local_ctx: ToolContext) -> None:
    big, _ = await fetch(f"{site.base}/big", local_ctx)
    assert big.endswith("[cut: the page is larger than 1 MB; only its beginning was read]")
    long, _ = await fetch(f"{site.base}/long", local_ctx)
    assert f"[cut: showing the first {MAX_TEXT_CHARS} of {5 * MAX_TEXT_CHARS} characters]" in long
    assert len(long) < MAX_TEXT_CHARS + 500


async def test_a_slow_page_becomes_a_timeout_result(site: Site, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(default_timeout_s=0.2, extras={"fetch_allow_private": True})
    content, is_error = await fetch(f"{site.base}/slow", ctx)
    assert is_error and error(content)["error"] == "timeout"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost:8080/admin", "http://10.0.0.1/", "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0/", "http://100.64.0.1/", "http://224.0.0.1/", "https://[fe80::1]/",
])
async def test_private_and_local_addresses_are_refused(url: str, ctx: ToolContext) -> None:
    content, is_error = await fetch(url, ctx)
    body = error(content)
    assert is_error and body["error"] == "forbidden", body
    assert "only reads public addresses" in body["message"]


# Every IPv6 form that carries a non-public IPv4 address, or is itself never public (issue 14).
IPV6_FORMS = {
    "IPv4-compatible ::127.0.0.1": "::7f00:1",
    "IPv4-compatible, public inside": "::808:808",
    "IPv4-mapped ::ffff:127.0.0.1": "::ffff:7f00:1",
    "IPv4-translated ::ffff:0:127.0.0.1": "::ffff:0:7f00:1",
    "NAT64 well-known, metadata 169.254.169.254": "64:ff9b::a9fe:a9fe",
    "NAT64 well-known, 10.0.0.1": "64:ff9b::a00:1",
    "NAT64 well-known, 127.0.0.1": "64:ff9b::7f00:1",
    "NAT64 local-use 10.0.0.1": "64:ff9b:1::a00:1",
    "NAT64 local-use, public inside": "64:ff9b:1::808:808",
    "6to4 of 127.0.0.1": "2002:7f00:1::1",
    "6to4 of 192.168.1.1": "2002:c0a8:101::1",
    "Teredo, client 10.0.0.1": "2001:0:808:808:0:0:f5ff:fffe",
    "Teredo, server 127.0.0.1": "2001:0:7f00:1:0:0:f7f7:f7f7",
    "site-local": "fec0::1",
    "site-local, last of range": "feff:ffff::1",
}


@pytest.mark.parametrize("address", IPV6_FORMS.values(), ids=IPV6_FORMS.keys())
async def test_ipv6_forms_of_private_addresses_are_refused_before_connecting(
    address: str, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[object] = []

    def connect(self: object, target: object) -> None:
        attempts.append(target)
        raise ConnectionRefusedError("the test allows no connection")

    monkeypatch.setattr("socket.socket.connect", connect)
    monkeypatch.setattr("socket.socket.connect_ex", connect)
    for url in (f"http://[{address}]/latest/meta-data/", f"https://[{address}]:8443/"):
        content, is_error = await fetch(url, ctx)
        body = error(content)
        assert is_error and body["error"] == "forbidden", body
        assert "only reads public addresses" in body["message"]

    async def resolve(host: str, port: int) -> list[str]:  # a DNS name with an AAAA of the form
        return [address]

    monkeypatch.setattr(fetch_module, "_resolve", resolve)
    assert error((await fetch("http://aaaa.example/", ctx))[0])["error"] == "forbidden"
    assert attempts == []


def test_ipv6_forms_of_public_addresses_stay_public() -> None:
    # NAT64, 6to4 and IPv4-mapped forms of a public IPv4 address reach that public address.
    for address in ("64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8",
                    "2a00:1450:4001:81c::200e"):
        assert is_public_address(address), address


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "gopher://x/",
                                 "javascript:alert(1)", "example.org/no-scheme"])
async def test_only_http_and_https_are_fetched(url: str, local_ctx: ToolContext) -> None:
    body = error((await fetch(url, local_ctx))[0])
    assert body["error"] == "forbidden" and "only http and https" in body["message"]


async def test_a_name_resolving_to_a_private_address_is_refused(
    ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return {"intranet.example": ["10.1.2.3"],
                "mixed.example": ["93.184.216.34", "127.0.0.1"]}[host]

    monkeypatch.setattr(fetch_module, "_resolve", resolve)
    for host in ("intranet.example", "mixed.example"):
        assert error((await fetch(f"http://{host}/", ctx))[0])["error"] == "forbidden"


async def test_every_redirect_hop_is_checked_again(
    site: Site, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the test server is a public site; its redirect to the metadata address is not.
    monkeypatch.setattr(fetch_module, "is_public_address",
                        lambda a: a == "127.0.0.1" or is_public_address(a))
    assert error((await fetch(f"{site.base}/to-metadata", ctx))[0])["error"] == "forbidden"
    assert error((await fetch(f"{site.base}/to-file", ctx))[0])["error"] == "forbidden"


async def test_the_connection_goes_to_the_checked_address(
    site: Site, local_ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name is resolved once, by the check; the request reaches the checked address and still
    # names the host. (A second lookup of docs.example would trip the network guard.)
    async def resolve(host: str, port: int) -> list[str]:
        assert host == "docs.example"
        return ["127.0.0.1"]

    monkeypatch.setattr(fetch_module, "_resolve", resolve)
    port = site.base.rsplit(":", 1)[1]
    content, is_error = await fetch(f"http://docs.example:{port}/host", local_ctx)
    assert not is_error and content.endswith(f"host=docs.example:{port}\n</external>")


def test_address_classification() -> None:
    assert is_public_address("93.184.216.34") and is_public_address("2606:2800:220:1::1")
    for address in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "169.254.1.1", "::1", "fe80::1",
                    "fc00::1", "::ffff:10.0.0.1", "2002:7f00:1::", "100.64.0.1", "240.0.0.1",
                    "ff02::1"):
        assert not is_public_address(address), address
