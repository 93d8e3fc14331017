"""``send_file``: an agent hands the person a file it made (a CSV, a report, a chart).

The tool only checks the file (name, type, size, and that binary types are what they claim) and
stores it (``storage.files.Blobs``, by digest; storing twice is storing once). It is delivered
through the outbox like any reply: the run's outcome commits one document row per file sent,
in the same transaction as its answer and before it (``files_sent``), and the sender delivers it
under the same rules as text — a document in flight when the bot died is not sent again. A run
retried after a crash calls the tool again and commits once, so the person gets each file once.
Files go with the run's final answer (a run waiting for a human sends them when it finishes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from agents.attachments import PDF_MEDIA_TYPE, sniff_image
from agents.tools.contract import ToolContext
from agents.tools.declare import ToolArgs, tool
from agents.tools.errors import ToolError
from agents.tools.policy import NO_RETRY
from storage.files import Blobs

SEND_FILE = "send_file"
FILES_DIR_EXTRA = "files_dir"
"""``ToolContext.extras`` keys set by the runtime: where blobs go, and the size limit."""
FILES_MAX_EXTRA = "files_max_bytes"
TELEGRAM_UPLOAD_MAX_BYTES = 50 * 1024 * 1024
MAX_CAPTION_CHARS = 1000  # Telegram: 1024 characters after formatting
TEXT_TYPES = {
    "csv": "text/csv", "tsv": "text/tab-separated-values", "txt": "text/plain",
    "md": "text/markdown", "json": "application/json", "html": "text/html",
    "xml": "application/xml", "yaml": "application/yaml", "yml": "application/yaml",
    "ics": "text/calendar", "svg": "image/svg+xml", "py": "text/x-python", "sql": "text/plain",
}
BINARY_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
                "gif": "image/gif", "webp": "image/webp", "pdf": PDF_MEDIA_TYPE}
FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()-]{0,99}$")


class SendFileArgs(ToolArgs):
    filename: str = Field(
        min_length=1, max_length=100,
        description="File name with its extension, e.g. 'sales-2026-05.csv'. Text types: "
                    f"{', '.join(sorted(TEXT_TYPES))}; binary types (give content_base64): "
                    f"{', '.join(sorted(BINARY_TYPES))}.")
    content: str | None = Field(
        None, description="The file's text (for text types). Give this or content_base64.")
    content_base64: str | None = Field(
        None, description="The file's bytes in base64 (for images and PDFs).")
    caption: str | None = Field(None, max_length=MAX_CAPTION_CHARS,
                                description="A short line shown under the file (optional).")

    @model_validator(mode="after")
    def _one_content(self) -> SendFileArgs:
        if (self.content is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of content (text) or content_base64 (bytes)")
        return self


@tool(
    name=SEND_FILE,
    description=(
        "Send the person a file you made: a CSV or JSON export, a Markdown or HTML report, an "
        "SVG or PNG chart, a PDF. Use it when a file serves better than a chat message (a table "
        "to open in a spreadsheet, something to keep). The file is delivered with your answer; "
        "do not paste its content into the answer too. Returns JSON with the file's name and "
        "size."
    ),
    timeout_s=10.0,
    retry=NO_RETRY,
)
async def send_file(args: SendFileArgs, ctx: ToolContext) -> dict[str, Any]:
    if ctx.chat_id is None:
        raise ToolError("unsupported", "This task has no chat to send a file to.",
                        "Give the content in your answer instead.")
    files_dir = ctx.extras.get(FILES_DIR_EXTRA)
    if not files_dir:
        raise ToolError("unsupported", "Sending files is not available in this deployment.",
                        "Give the content in your answer instead.")
    name = args.filename.strip()
    if not FILENAME.match(name) or "." not in name:
        raise ToolError("invalid_arguments", f"{name!r} is not a file name I can send.",
                        "Use letters, digits, spaces, '.', '-', '_' and an extension, e.g. "
                        "'report.csv'.")
    ext = name.rsplit(".", 1)[1].lower()
    data, media_type = _bytes(args, ext)
    limit = min(int(ctx.extras.get(FILES_MAX_EXTRA) or TELEGRAM_UPLOAD_MAX_BYTES),
                TELEGRAM_UPLOAD_MAX_BYTES)
    if not data:
        raise ToolError("invalid_arguments", "The file is empty.", "Send a file with content.")
    if len(data) > limit:
        raise ToolError("forbidden", f"The file is {len(data):,} bytes; the limit is {limit:,}.",
                        "Send a smaller file, or split it.")
    sha256 = await asyncio.to_thread(Blobs(Path(files_dir)).put, data)
    return {"sent": name, "bytes": len(data), "media_type": media_type,
            "delivery": "with your answer",
            "keel_file": {"sha256": sha256, "filename": name, "media_type": media_type,
                          "size": len(data), "caption": args.caption or ""}}


def _bytes(args: SendFileArgs, ext: str) -> tuple[bytes, str]:
    if ext in TEXT_TYPES:
        if args.content is None:
            raise ToolError("invalid_arguments", f"A .{ext} file is text: give it as content.",
                            "Put the file's text in content, not content_base64.")
        return args.content.encode("utf-8"), TEXT_TYPES[ext]
    if ext not in BINARY_TYPES:
        raise ToolError("unsupported", f"I can't send .{ext} files.",
                        f"Use one of: {', '.join(sorted({*TEXT_TYPES, *BINARY_TYPES}))}.")
    if args.content_base64 is None:
        raise ToolError("invalid_arguments", f"A .{ext} file is binary: give content_base64.",
                        "Encode the file's bytes in base64.")
    try:
        data = base64.b64decode(args.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise ToolError("invalid_arguments", "content_base64 is not valid base64.",
                        "Encode the bytes with standard base64.") from None
    media_type = BINARY_TYPES[ext]
    if media_type == PDF_MEDIA_TYPE:
        ok = data.startswith(b"%PDF-")
    else:
        sniffed = sniff_image(data)
        ok = sniffed is not None and sniffed[0] == media_type
    if not ok:
        raise ToolError("invalid_arguments", f"These bytes are not a {ext.upper()} file.",
                        f"Send real {ext.upper()} bytes, or a text type such as .svg or .csv.")
    return data, media_type


def files_sent(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The files ``send_file`` accepted in a run's messages, in order (each once). Only results
    of this tool count: another tool's output cannot name a stored file to send."""
    calls = {b.get("id") for m in messages if m.get("role") == "assistant"
             for b in _blocks(m) if b.get("type") == "tool_use" and b.get("name") == SEND_FILE}
    out: list[dict[str, Any]] = []
    for m in messages:
        for block in _blocks(m):
            if block.get("type") != "tool_result" or block.get("tool_use_id") not in calls \
                    or block.get("is_error"):
                continue
            try:
                result = json.loads(block.get("content") or "")
            except (TypeError, ValueError):
                continue
            file = result.get("keel_file") if isinstance(result, dict) else None
            if isinstance(file, dict) and isinstance(file.get("sha256"), str):
                out.append(file)
    return out


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
