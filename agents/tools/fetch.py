"""``fetch_url``: read a web page as text, without letting the bot be turned against its own network.

* http and https only; every hop of a redirect chain (at most ``MAX_REDIRECTS``) is checked again;
* the host is resolved here and every address it resolves to must be public (not private,
  loopback, link-local, multicast, reserved..., nor an IPv6 form carrying such an IPv4 address:
  IPv4-compatible, -mapped or -translated, NAT64, 6to4, Teredo; nor site-local) unless ``ctx.extras["fetch_allow_private"]`` is
  true; the connection then goes to the address that was checked, never to a second lookup, so a
  DNS answer that changes between check and connect (DNS rebinding) cannot slip through. For https
  the certificate is still verified against the host name (SNI);
* at most ``MAX_BYTES`` are read and ``MAX_TEXT_CHARS`` returned; the run's tool timeout bounds
  the time, and each network step has its own shorter timeout;
* HTML becomes title + readable text; other text types come back as they are; anything else is
  refused before its body is downloaded;
* the page's text reaches the model inside an ``<external … trust="untrusted">`` block
  (``agents.tools.external``): data to read, never instructions to follow.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from pydantic import Field

from agents.tools.contract import ToolContext
from agents.tools.declare import ToolArgs, tool
from agents.tools.errors import ToolError
from agents.tools.external import mark_external
from agents.tools.html_text import html_to_text

MAX_REDIRECTS = 5
MAX_BYTES = 1_000_000
MAX_TEXT_CHARS = 20_000
NETWORK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
USER_AGENT = "keel-fetch/0.1 (a chat assistant reading a page for a person)"

_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_TEXT_TYPES = {"application/json", "application/xml", "application/javascript",
               "application/yaml", "application/x-yaml", "application/toml"}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_.:-]+)""", re.I)


class FetchArgs(ToolArgs):
    url: str = Field(min_length=1, max_length=2048,
                     description="Absolute http:// or https:// URL of the page to read.")


@tool(
    name="fetch_url",
    description=(
        "Download one web page and return its readable text. Use it to read a page the person "
        "names or a source you need to quote; do not fetch pages speculatively. Returns the final "
        f"URL, the page title and up to {MAX_TEXT_CHARS} characters of text (HTML is turned "
        "into plain text; JSON and other text formats come back as they are), with a note when "
        "the text was cut. Only public http and https addresses can be read; binary files such "
        "as images or PDFs are refused."
    ),
)
async def fetch_url(args: FetchArgs, ctx: ToolContext) -> str:
    allow_private = bool(ctx.extras.get("fetch_allow_private"))
    url = args.url.strip()
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                 timeout=NETWORK_TIMEOUT,
                                 headers={"User-Agent": USER_AGENT,
                                          "Accept": "text/html,text/plain;q=0.9,*/*;q=0.5"}
                                 ) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            target = await checked_target(url, allow_private=allow_private)
            try:
                async with client.stream("GET", target.pinned, headers={"Host": target.host_header},
                                         extensions=target.extensions) as response:
                    if response.has_redirect_location:
                        url = str(httpx.URL(url).join(response.headers["Location"]))
                        continue
                    _check_status(response, url)
                    kind, sniffed = _content_kind(response, url)
                    body, cut = await _read_capped(response, sniffed)
                    return _render(url, kind, body, cut, response.charset_encoding)
            except httpx.TimeoutException:
                raise ToolError("timeout", f"{target.host} did not answer in time.",
                                "Try again later, or another source.", retryable=True) from None
            except httpx.TransportError as exc:
                raise ToolError("upstream_error",
                                f"could not read {url}: {type(exc).__name__}.",
                                "Check the address, or try another source.",
                                retryable=True) from None
    raise ToolError("upstream_error", f"{args.url} redirects more than {MAX_REDIRECTS} times.",
                    "Fetch the final address directly, or try another source.")


@dataclass(frozen=True)
class Target:
    """Where to connect (the checked address) and who we say we are talking to (the host)."""

    host: str
    pinned: httpx.URL
    host_header: str
    extensions: dict[str, str]


async def checked_target(url: str, *, allow_private: bool) -> Target:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ToolError("invalid_arguments", f"{url!r} is not a valid URL.",
                        "Give an absolute URL such as https://example.org/page.") from None
    if parsed.scheme not in ("http", "https"):
        shown = f"{parsed.scheme}:" if parsed.scheme else "a relative URL"
        raise ToolError("forbidden", f"only http and https URLs can be fetched, not {shown}",
                        "Give an absolute http:// or https:// URL.")
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, as DNS, Host and SNI want it
    if not host:
        raise ToolError("invalid_arguments", f"{url!r} has no host name.",
                        "Give an absolute URL such as https://example.org/page.")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await _resolve(host, port)
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise ToolError(
                    "forbidden",
                    f"{host} is a private, local or reserved address ({address}); "
                    "fetch_url only reads public addresses.",
                    "Use a public URL; local and internal services cannot be fetched.")
    host_header = host if "]" in host or ":" not in host else f"[{host}]"
    if parsed.port is not None:
        host_header = f"{host_header}:{parsed.port}"
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return Target(host=host, pinned=parsed.copy_with(host=addresses[0]),
                  host_header=host_header, extensions=extensions)


async def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a literal address resolves to itself)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ToolError("not_found", f"the host {host!r} does not exist (no DNS answer).",
                        "Check the spelling of the address.") from None
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).split("%")[0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ToolError("not_found", f"the host {host!r} has no address.",
                        "Check the spelling of the address.")
    return addresses


# IPv6 ranges that are never a public destination, though Python's ``is_global`` says they are.
# The deprecated forms have no public use, and some stacks and NAT64 gateways deliver them to the
# IPv4 address in their last 32 bits, so they are refused whatever that address is.
_NEVER_PUBLIC_V6 = (
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated, RFC 4291): ::7f00:1
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765): ::ffff:0:7f00:1
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # NAT64 local use (RFC 8215): an operator's network
    ipaddress.IPv6Network("fec0::/10"),  # site-local (deprecated, RFC 3879)
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)


def is_public_address(address: str) -> bool:
    """Whether a connection to ``address`` reaches the public internet, looking through every
    IPv6 form that carries an IPv4 address (mapped, NAT64, 6to4, Teredo)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.is_global and not ip.is_multicast
    if ip.ipv4_mapped is not None:  # the IPv4 stack carries it: judge the IPv4 address
        return is_public_address(str(ip.ipv4_mapped))
    if any(ip in network for network in _NEVER_PUBLIC_V6):
        return False
    embedded: list[ipaddress.IPv4Address] = []
    if ip in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF))
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.extend(ip.teredo)  # (server, client)
    return (all(is_public_address(str(v4)) for v4 in embedded)
            and ip.is_global and not ip.is_multicast)


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status < 300:
        return
    if status in (404, 410):
        raise ToolError("not_found", f"{url} does not exist (HTTP {status}).",
                        "Check the address, or search for the page elsewhere.")
    if status in (401, 403, 451):
        raise ToolError("forbidden", f"{url} refused access (HTTP {status}).",
                        "The page needs a login or is blocked; try another source.")
    if status == 429:
        wait = _retry_after_s(response.headers.get("Retry-After"))
        message = "the site is rate limiting requests" + (
            f", retry in {max(1, round(wait))}s" if wait is not None else "")
        raise ToolError("rate_limited", message + ".", "Try another source or come back later.",
                        retryable=True, retry_after_s=wait)
    retryable = status >= 500
    raise ToolError("upstream_error", f"{url} answered HTTP {status}.",
                    "Try again later, or another source." if retryable
                    else "Check the address, or try another source.", retryable=retryable)


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _content_kind(response: httpx.Response, url: str) -> tuple[str, bool]:
    """``("html" | "text", sniff_needed)``; a binary type is refused before its body is read."""
    header = response.headers.get("Content-Type", "")
    media = header.split(";")[0].strip().lower()
    if not media:
        return "text", True
    if media in _HTML_TYPES:
        return "html", False
    if media.startswith("text/") or media in _TEXT_TYPES or media.endswith(("+json", "+xml")):
        return "text", False
    raise ToolError("unsupported", f"{url} is {media}, which fetch_url cannot read as text.",
                    "Look for an HTML or plain-text version of the document.")


async def _read_capped(response: httpx.Response, sniff: bool) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BYTES:
            return b"".join(chunks)[:MAX_BYTES], True
    body = b"".join(chunks)
    if sniff and b"\x00" in body[:1024]:
        raise ToolError("unsupported", "the response is binary, not text.",
                        "Look for an HTML or plain-text version of the document.")
    return body, False


def _render(url: str, kind: str, body: bytes, cut: bool, charset: str | None) -> str:
    if kind == "text" and body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        kind = "html"
    if charset is None and kind == "html":
        meta = _META_CHARSET.search(body[:4096])
        charset = meta.group(1).decode("ascii") if meta else None
    try:
        text = body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    title = ""
    if kind == "html":
        title, text = html_to_text(text)
    total = len(text)
    if total > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS]
    # the page's words (title included) go inside the untrusted block; keel's notes outside it
    page = (f"Title: {title}\n\n" if title else "") + (text or "(the page has no readable text)")
    lines = [f"URL: {url}", mark_external(url, page)]
    if total > MAX_TEXT_CHARS:
        lines += ["", f"[cut: showing the first {MAX_TEXT_CHARS} of {total} characters]"]
    if cut:
        lines += ["", f"[cut: the page is larger than {MAX_BYTES // 1_000_000} MB; only its "
                      "beginning was read]"]
    return "\n".join(lines)
