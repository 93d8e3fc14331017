"""keel: bot layer."""

import ssl
import sys
from concurrent.futures import Future, ThreadPoolExecutor

# httpx imports its command line (and with it click, ~1.5 MB resident) whenever click is
# installed, and falls back quietly when that import fails. keel never runs httpx's command line;
# a None entry makes the import fail at once (issue 15: idle memory).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def import_telegram() -> None:
    """Import python-telegram-bot without ``cryptography`` (issue 15: start-up and idle memory).

    PTB imports ``cryptography`` whenever it is installed, only to decrypt Telegram Passport data,
    which keel never requests; the mcp SDK's dependencies install it. That import is ~30 ms of
    start-up and a few MB resident. A None entry makes PTB's guarded import fail at once (PTB then
    treats Passport decryption as unavailable); the entry is removed afterwards, so anything that
    needs ``cryptography`` later (the mcp SDK's OAuth) imports it as usual.
    """
    if "telegram" in sys.modules or "cryptography" in sys.modules:
        return
    sys.modules["cryptography"] = None  # type: ignore[assignment]
    try:
        import telegram  # noqa: F401
    finally:
        del sys.modules["cryptography"]


_tls: Future[ssl.SSLContext] | None = None


def preload_tls() -> None:
    """Start building the TLS context for Telegram in a thread. Reading the CA store is ~20 ms
    and lets go of the GIL, so at start-up it runs beside the imports (issue 15)."""
    global _tls
    if _tls is None:
        pool = ThreadPoolExecutor(1, thread_name_prefix="keel-tls")
        _tls = pool.submit(_ssl_context)
        pool.shutdown(wait=False)


def tls_context() -> ssl.SSLContext:
    """The context ``preload_tls`` started, or a new one."""
    return _tls.result() if _tls is not None else _ssl_context()


def _ssl_context() -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()
