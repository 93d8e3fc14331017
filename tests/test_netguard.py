import socket

import pytest

from tests.netguard import RealNetworkCallError


def test_resolving_a_public_host_fails_loudly() -> None:
    with pytest.raises(RealNetworkCallError):
        socket.getaddrinfo("api.telegram.org", 443)


def test_connecting_to_a_public_address_fails_loudly() -> None:
    s = socket.socket()
    try:
        with pytest.raises(RealNetworkCallError):
            s.connect(("149.154.167.220", 443))
    finally:
        s.close()


def test_loopback_is_allowed() -> None:
    assert socket.getaddrinfo("127.0.0.1", 80)
