import logging

import pytest

from agents.logs import REDACTED, configure_logging


def test_secrets_never_reach_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    token = "123456789:AAE-secret-bot-token-value-0123456789"
    configure_logging("INFO", [token, "sk-ant-api-key-secret"])
    logging.getLogger("httpx").warning("POST http://127.0.0.1:9/bot%s/getUpdates", token)
    try:
        raise RuntimeError("failed with key sk-ant-api-key-secret")
    except RuntimeError:
        logging.getLogger("keel").exception("boom")
    err = capsys.readouterr().err
    assert token not in err and "sk-ant-api-key-secret" not in err
    assert err.count(REDACTED) >= 3
    logging.getLogger().handlers.clear()
