"""Attachments by reference (issue 19): their token bounds, reading image and PDF headers, turning
references into bytes on the wire, and which files a run sent."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from agents.attachments import (
    IMAGE_MAX_TOKENS,
    MISSING_NOTE,
    PDF_MAX_PAGES,
    AttachmentError,
    PdfFacts,
    block_bound,
    image_block,
    image_tokens,
    inspect_pdf,
    pdf_block,
    resolve,
    sniff_image,
)
from agents.tokens import BLOCK_FRAMING_TOKENS, bound, estimate
from agents.tools.send_file import files_sent
from storage.files import Blobs

ONE_PAGE = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
            b"3 0 obj<</Type/Page/Parent 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03" + b"\0" * 9
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


# ------------------------------------------------------------------ bounds


def test_an_image_costs_at_most_its_padded_pixels_over_750_and_never_past_the_native_cap() -> None:
    assert image_tokens(1280, 960) == 1288 * 980 // 750 + 1  # padded to 28 px: 1288 × 980
    assert image_tokens(28, 28) == 2
    assert image_tokens(None, None) == IMAGE_MAX_TOKENS == 8848  # 2576² / 750
    assert image_tokens(8000, 8000) == IMAGE_MAX_TOKENS  # the API scales it down first


def test_a_pdf_costs_each_page_as_an_image_plus_its_text_at_one_token_a_byte() -> None:
    block = pdf_block("a" * 64, size=1000, facts=PdfFacts(pages=3, expanded_bytes=5000),
                      title="r.pdf")
    assert block_bound(block) == 3 * IMAGE_MAX_TOKENS + 5000 + len(b"r.pdf")


def test_the_request_bound_counts_a_reference_by_what_it_names_not_by_its_json() -> None:
    image = image_block("b" * 64, media_type="image/png", size=10, width=1092, height=1092)
    assert bound(image) == image_tokens(1092, 1092) + BLOCK_FRAMING_TOKENS
    message = {"role": "user", "content": [image, {"type": "text", "text": "hi"}]}
    assert bound(message) > image_tokens(1092, 1092)
    assert estimate(image) < bound(image) * 2  # a typical size, not the JSON's length
    unknown = image_block("c" * 64, media_type="image/png", size=10)
    assert bound(unknown) == IMAGE_MAX_TOKENS + BLOCK_FRAMING_TOKENS


# ------------------------------------------------------------------ reading files


def test_image_headers_give_type_and_size() -> None:
    assert sniff_image(png(640, 480)) == ("image/png", 640, 480)
    assert sniff_image(jpeg(1280, 960)) == ("image/jpeg", 1280, 960)
    assert sniff_image(b"GIF89a" + struct.pack("<HH", 10, 20)) == ("image/gif", 10, 20)
    assert sniff_image(b"%PDF-1.4") is None
    assert sniff_image(b"\xff\xd8\xff not really") == ("image/jpeg", None, None)


def test_pdf_pages_are_counted_also_inside_compressed_object_streams() -> None:
    assert inspect_pdf(ONE_PAGE) == PdfFacts(pages=1, expanded_bytes=len(ONE_PAGE))
    hidden = zlib.compress(b"<</Type/Page>> <</Type/Page>> <</Type/Pages/Count 2>>" + b" " * 500)
    packed = b"%PDF-1.5\n4 0 obj<</Type/ObjStm/Filter/FlateDecode>>stream\n" + hidden + \
        b"\nendstream\nendobj\n%%EOF\n"
    facts = inspect_pdf(packed)
    assert facts.pages == 2
    assert facts.expanded_bytes > len(packed) + 500  # the inflated stream counts as text


def test_a_pdf_whose_pages_cannot_be_counted_is_bounded_as_the_most_the_api_reads() -> None:
    assert inspect_pdf(b"%PDF-1.7\n%%EOF\n").pages == PDF_MAX_PAGES


def test_what_is_not_a_readable_pdf_is_refused_with_a_reason() -> None:
    with pytest.raises(AttachmentError, match="not a PDF"):
        inspect_pdf(b"PK\x03\x04 a zip")
    many = b"%PDF-1.4\n" + b"<</Type/Page>>\n" * (PDF_MAX_PAGES + 1)
    with pytest.raises(AttachmentError, match="at most 100"):
        inspect_pdf(many)


# ------------------------------------------------------------------ on the wire


def test_references_become_base64_and_a_lost_copy_a_note(tmp_path: Path) -> None:
    blobs = Blobs(tmp_path)
    digest = blobs.put(png(2, 2))
    kept = image_block(digest, media_type="image/png", size=10)
    gone = {**image_block("d" * 64, media_type="image/png", size=10),
            "cache_control": {"type": "ephemeral"}}
    messages = [{"role": "user", "content": [kept, gone, {"type": "text", "text": "see"}]}]
    wire = resolve(messages, blobs)
    image, note, text = wire[0]["content"]
    assert image == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": base64.b64encode(png(2, 2)).decode()}}
    assert note == {"type": "text", "text": MISSING_NOTE, "cache_control": {"type": "ephemeral"}}
    assert text == {"type": "text", "text": "see"}
    assert messages[0]["content"][0] is kept  # the caller's history is not changed


def test_a_blob_is_stored_once_and_read_back_only_when_intact(tmp_path: Path) -> None:
    blobs = Blobs(tmp_path)
    digest = blobs.put(b"data")
    assert blobs.put(b"data") == digest and blobs.read(digest) == b"data"
    blobs.path(digest).write_bytes(b"changed")
    assert blobs.read(digest) is None
    with pytest.raises(ValueError):
        blobs.path("../../etc/passwd")


# ------------------------------------------------------------------ send_file


def _send(id_: str, content: dict[str, Any], *, name: str = "send_file",
          error: bool = False) -> list[dict[str, Any]]:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": id_,
                              "content": json.dumps(content)}
    if error:
        result["is_error"] = True
    return [{"role": "assistant", "content": [{"type": "tool_use", "id": id_, "name": name,
                                               "input": {}}]},
            {"role": "user", "content": [result]}]


def test_only_send_file_results_name_files_to_send() -> None:
    file = {"sha256": "e" * 64, "filename": "a.csv"}
    messages = [*_send("t1", {"keel_file": file}),
                *_send("t2", {"keel_file": {"sha256": "f" * 64}}, name="fetch_url"),
                *_send("t3", {"keel_file": {"sha256": "0" * 64}}, error=True)]
    assert files_sent(messages) == [file]
