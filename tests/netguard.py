"""Any attempt to reach a non-loopback address from a test fails loudly.

Installed from ``tests/conftest.py`` before any test module is imported. It patches the two doors
every Python client goes through — name resolution and ``socket.connect`` — so the real
python-telegram-bot and anthropic clients can talk to the fakes on 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class RealNetworkCallError(RuntimeError):
    """A test tried to reach the internet; tests only talk to the fakes on 127.0.0.1."""


def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    name = str(host).strip("[]").lower()
    if name in _LOOPBACK_NAMES or name == "":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_loopback(host):
        raise RealNetworkCallError(f"test tried to resolve {host!r}; only loopback is allowed")
    return _real_getaddrinfo(host, *args, **kwargs)


def _check_address(address: Any) -> None:
    if isinstance(address, tuple) and address and not _is_loopback(address[0]):
        raise RealNetworkCallError(f"test tried to connect to {address!r}; only loopback is allowed")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(address)
    return _real_connect_ex(self, address)


def install() -> None:
    socket.getaddrinfo = _guarded_getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
