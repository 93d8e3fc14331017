"""send_file: what it accepts, where it keeps the file, what it refuses (issue 19)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from agents.tools import ToolCall, builtin_registry
from agents.tools.send_file import FILES_DIR_EXTRA, FILES_MAX_EXTRA
from storage.files import Blobs
from tests.tools.conftest import MakeCtx

CATALOG = builtin_registry().catalog(["send_file"])


async def _call(ctx: Any, **args: Any) -> tuple[dict[str, Any], bool]:
    outcome = await CATALOG.invoke(ToolCall(id="t", name="send_file", input=args), ctx)
    return json.loads(outcome.content), outcome.is_error


async def test_send_file_checks_size_type_and_chat(make_ctx: MakeCtx, tmp_path: Path) -> None:
    ctx = make_ctx(chat_id=5, extras={FILES_DIR_EXTRA: str(tmp_path), FILES_MAX_EXTRA: 10})
    body, is_error = await _call(ctx, filename="a.csv", content="x,y\n1,2\n")
    assert not is_error and Blobs(tmp_path).read(body["keel_file"]["sha256"]) == b"x,y\n1,2\n"
    body, is_error = await _call(ctx, filename="big.csv", content="x" * 11)
    assert is_error and body["error"] == "forbidden"
    body, is_error = await _call(ctx, filename="run.exe", content_base64="AAAA")
    assert is_error and body["error"] == "unsupported"
    body, is_error = await _call(ctx, filename="../x.csv", content="x")
    assert is_error and body["error"] == "invalid_arguments"
    body, is_error = await _call(make_ctx(extras={FILES_DIR_EXTRA: str(tmp_path)}),
                                 filename="a.csv", content="x")
    assert is_error and body["message"] == "This task has no chat to send a file to."


async def test_send_file_takes_images_only_as_the_bytes_they_claim(make_ctx: MakeCtx,
                                                                   tmp_path: Path) -> None:
    ctx = make_ctx(chat_id=5, extras={FILES_DIR_EXTRA: str(tmp_path)})
    gif = base64.b64encode(b"GIF89a\x01\x00\x01\x00").decode()
    body, is_error = await _call(ctx, filename="dot.gif", content_base64=gif)
    assert not is_error and body["media_type"] == "image/gif"
    body, is_error = await _call(ctx, filename="dot.png", content_base64=gif)
    assert is_error and body["message"] == "These bytes are not a PNG file."
    body, is_error = await _call(ctx, filename="a.png", content="not base64")
    assert is_error and body["error"] == "invalid_arguments"
