"""Attachments in a person's message: images and PDFs as content blocks, stored by reference.

History, traces and budgets see a *reference* block — the API's own ``image``/``document`` block
whose source is ``{"type": "keel_file", "sha256": ..., ...}`` — never the bytes. The reference is
turned into the API's base64 source only on the wire (``AttachmentClient``, around the real model
client), from the local copy (``storage.files.Blobs``). So a long conversation about a photo does
not carry megabytes through the database, a replay compares references and reads no file, and a
reference that ever reached the API unresolved would be refused loudly rather than sent as text.

Token bounds (``block_bound``; budgets reserve it before the call, ``agents/tokens.py``):

- **Image.** The API never shows the model more than its native resolution — the long edge at most
  ``MAX_NATIVE_EDGE_PX`` (2576 px on the models that see most, 1568 px on earlier ones); larger
  images are scaled down first — and bills about ``w×h/750`` tokens for what it shows, after
  padding each side to a multiple of 28 px. So an image costs at most
  ``ceil(w/28)·28 × ceil(h/28)·28 / 750`` tokens for the size it has (read from the file's own
  header, else from Telegram's photo size), and never more than ``IMAGE_MAX_TOKENS`` (that formula
  at 2576×2576) whatever its size.
- **PDF.** The API reads each page twice: as an image (at most ``IMAGE_MAX_TOKENS``) and as its
  extracted text. The text of a PDF is drawn by its content streams, one or more bytes of a stream
  per glyph, so it has no more characters than the file has bytes once its streams are inflated
  (``expanded_bytes``), and at one token per byte at most (the bound ``agents/tokens.py`` uses for
  any text). Bound: ``pages × IMAGE_MAX_TOKENS + expanded_bytes``. It is loose (a scanned page's
  image stream counts as text), and the executor tightens it with the count endpoint whenever it
  would refuse or shrink a call, as for any request.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from agents.errors import KeelError
from agents.model.types import ModelRequest, ModelResponse, OnText
from storage.files import Blobs

PATCH_PX = 28
PIXELS_PER_TOKEN = 750
MAX_NATIVE_EDGE_PX = 2576
IMAGE_MAX_TOKENS = math.ceil(MAX_NATIVE_EDGE_PX ** 2 / PIXELS_PER_TOKEN)  # 8848
IMAGE_TYPICAL_TOKENS = 1600
"""What a photo usually costs (the 1568 px models' cap), for estimates, not for budgets."""
PDF_MAX_PAGES = 100
"""The API reads at most this many pages of a PDF in one request."""
PDF_TYPICAL_PAGE_TOKENS = 3000
PDF_MAX_EXPANDED_BYTES = 64 * 1024 * 1024
"""A PDF whose streams inflate past this is refused (and never held in memory whole)."""
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
PDF_MEDIA_TYPE = "application/pdf"
SOURCE_TYPE = "keel_file"
MISSING_NOTE = "[An attachment that was here is no longer stored, so it cannot be shown again.]"


class AttachmentError(KeelError):
    """A file keel cannot pass to the model; the message says why in one line."""


# ------------------------------------------------------------------ reading files


def sniff_image(data: bytes) -> tuple[str, int | None, int | None] | None:
    """(media type, width, height) of a JPEG, PNG, GIF or WebP from its own bytes; None when
    the bytes are none of those. Sizes are None when the header does not say them plainly."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return "image/png", width, height
        return "image/png", None, None
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) >= 10:
            width, height = struct.unpack("<HH", data[6:10])
            return "image/gif", width, height
        return "image/gif", None, None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("image/webp", *_webp_size(data))
    if data[:3] == b"\xff\xd8\xff":
        return ("image/jpeg", *_jpeg_size(data))
    return None


def _webp_size(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None, None


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None, None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None, None


@dataclass(frozen=True, kw_only=True)
class PdfFacts:
    pages: int
    """Pages found in the page tree (``PDF_MAX_PAGES`` when they cannot be counted)."""
    expanded_bytes: int
    """The file's size with every stream inflated: no more text can be drawn from it."""


_STREAM = re.compile(rb"stream\r?\n")
_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


def inspect_pdf(data: bytes) -> PdfFacts:
    """Pages and inflated size of a PDF; AttachmentError when it is not one or is too big."""
    if not data.startswith(b"%PDF-"):
        raise AttachmentError("this file is not a PDF (it does not start with %PDF-)")
    expanded = len(data)
    pages = len(_PAGE.findall(data))
    for match in _STREAM.finditer(data):
        end = data.find(b"endstream", match.end())
        if end < 0:
            break
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(data[match.end():end],
                                       PDF_MAX_EXPANDED_BYTES - expanded + 1)
        except zlib.error:
            continue  # not a Flate stream (an image, say): its raw bytes are already counted
        expanded += len(body)
        if expanded > PDF_MAX_EXPANDED_BYTES:
            raise AttachmentError(f"this PDF expands past {PDF_MAX_EXPANDED_BYTES // 2**20} MB "
                                  "once decompressed; send a smaller one")
        pages += len(_PAGE.findall(body))
    if pages > PDF_MAX_PAGES:
        raise AttachmentError(f"this PDF has {pages} pages; the model reads at most "
                              f"{PDF_MAX_PAGES} at once — send the pages that matter")
    return PdfFacts(pages=pages or PDF_MAX_PAGES, expanded_bytes=expanded)


# ------------------------------------------------------------------ reference blocks


def image_block(sha256: str, *, media_type: str, size: int, width: int | None = None,
                height: int | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"type": SOURCE_TYPE, "sha256": sha256, "media_type": media_type,
                              "size": size}
    if width and height:
        source.update(width=width, height=height)
    return {"type": "image", "source": source}


def pdf_block(sha256: str, *, size: int, facts: PdfFacts, title: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "document", "source": {
        "type": SOURCE_TYPE, "sha256": sha256, "media_type": PDF_MEDIA_TYPE, "size": size,
        "pages": facts.pages, "expanded_bytes": facts.expanded_bytes}}
    if title:
        block["title"] = title[:200]
    return block


def is_reference(block: Any) -> bool:
    return (isinstance(block, dict) and block.get("type") in ("image", "document")
            and isinstance(block.get("source"), dict)
            and block["source"].get("type") == SOURCE_TYPE)


def image_tokens(width: int | None, height: int | None) -> int:
    """The most an image of this size can cost (``IMAGE_MAX_TOKENS`` when unknown)."""
    if not width or not height:
        return IMAGE_MAX_TOKENS
    padded = math.ceil(width / PATCH_PX) * PATCH_PX * math.ceil(height / PATCH_PX) * PATCH_PX
    return min(math.ceil(padded / PIXELS_PER_TOKEN), IMAGE_MAX_TOKENS)


def block_bound(block: dict[str, Any]) -> int | None:
    """Tokens an image or document block cannot exceed (see the module's docstring); None for
    any other block."""
    if block.get("type") not in ("image", "document"):
        return None
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if block["type"] == "image":
        return image_tokens(_int(source.get("width")), _int(source.get("height")))
    if source.get("type") == SOURCE_TYPE and source.get("media_type") == PDF_MEDIA_TYPE:
        pages = _int(source.get("pages")) or PDF_MAX_PAGES
        return pages * IMAGE_MAX_TOKENS + (_int(source.get("expanded_bytes")) or 0) + \
            len(str(block.get("title") or "").encode())
    return None


def block_estimate(block: dict[str, Any]) -> int | None:
    """A typical size of an image or PDF block (compaction thresholds, traces); None otherwise."""
    bound = block_bound(block)
    if bound is None:
        return None
    if block["type"] == "image":
        return min(bound, IMAGE_TYPICAL_TOKENS)
    pages = _int(block["source"].get("pages")) or 1
    return min(bound, pages * PDF_TYPICAL_PAGE_TOKENS)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ------------------------------------------------------------------ on the wire


def has_references(messages: list[dict[str, Any]]) -> bool:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(is_reference(b) for b in content):
            return True
    return False


def resolve(messages: list[dict[str, Any]], blobs: Blobs) -> list[dict[str, Any]]:
    """``messages`` with every reference replaced by the API's base64 source (a copy; the input
    is not changed). A copy that is gone becomes a one-line note, so the conversation goes on."""
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list) or not any(is_reference(b) for b in content):
            out.append(message)
            continue
        out.append({**message, "content": [_resolved(b, blobs) if is_reference(b) else b
                                           for b in content]})
    return out


def _resolved(block: dict[str, Any], blobs: Blobs) -> dict[str, Any]:
    source = block["source"]
    data = blobs.read(str(source.get("sha256", "")))
    if data is None:
        note: dict[str, Any] = {"type": "text", "text": MISSING_NOTE}
        if "cache_control" in block:
            note["cache_control"] = block["cache_control"]
        return note
    out = {k: v for k, v in block.items() if k != "source"}
    out["source"] = {"type": "base64", "media_type": source["media_type"],
                     "data": base64.b64encode(data).decode("ascii")}
    return out


class AttachmentClient:
    """A model client that sends references as the bytes they name (and counts them so)."""

    def __init__(self, inner: Any, blobs: Blobs) -> None:
        self.inner = inner
        self.blobs = blobs

    async def _wire(self, request: ModelRequest) -> ModelRequest:
        if not has_references(request.messages):
            return request
        # reading megabytes of copies is file work: off the event loop
        messages = await asyncio.to_thread(resolve, request.messages, self.blobs)
        return dataclasses.replace(request, messages=messages)

    async def create(self, request: ModelRequest, *, on_text: OnText | None = None) -> ModelResponse:
        response: ModelResponse = await self.inner.create(await self._wire(request),
                                                          on_text=on_text)
        return response

    async def count_tokens(self, request: ModelRequest) -> int:
        return int(await self.inner.count_tokens(await self._wire(request)))

    async def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            await close()
