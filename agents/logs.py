"""Logging set-up: one format, secrets scrubbed from every record, noisy HTTP loggers quieted.

httpx logs each request URL at INFO, and python-telegram-bot's URL contains the bot token, so the
scrubbing filter sits on the root handler and catches every logger.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

REDACTED = "[redacted]"


class SecretFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        scrubbed = message
        for secret in self.secrets:
            scrubbed = scrubbed.replace(secret, REDACTED)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, REDACTED)
        return True


class SdkRetriesAtDebug(logging.Filter):
    """The anthropic SDK logs each retry ("Retrying request to /v1/messages in 0.4 seconds") at
    INFO, which lands in the middle of `keel chat` and `keel agent run` output. Retries are
    bounded and traced by keel itself; the SDK's line is kept for DEBUG only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith("Retrying request"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


SDK_RETRY_FILTER = SdkRetriesAtDebug()


def configure_logging(level: str, secrets: Iterable[str]) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secrets))
    root.addHandler(handler)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "apscheduler.executors.default"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sdk = logging.getLogger("anthropic._base_client")
    if SDK_RETRY_FILTER not in sdk.filters:
        sdk.addFilter(SDK_RETRY_FILTER)
