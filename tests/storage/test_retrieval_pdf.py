"""PDF files in the owner's corpus (issue 18): indexed page by page with pypdf, found by the
lexical backend with their page as the position. The PDF is written here, text and all, so the
test needs no binary file and no download."""

from __future__ import annotations

import shutil
from pathlib import Path

from agents.retrieval import LexicalSearch, index_corpus
from storage.db import Database
from storage.docs_index import DocsIndex

SET = Path(__file__).parent.parent / "retrieval_set"

CARE_GUIDE = [
    ["Care guide for leather shoes",
     "Brush off dirt after each wear and let wet shoes dry slowly at room temperature.",
     "Never put leather shoes on a radiator or in a tumble dryer."],
    ["Polishing and waterproofing",
     "Polish the leather once a month with a cream of the same colour.",
     "Spray a waterproofing agent twice a season, from a distance of 20 centimetres."],
]
QUESTIONS = [("How often should I polish leather shoes?", 2),
             ("Can I dry wet shoes on the radiator?", 1),
             ("How far away do I hold the waterproofing spray?", 2)]


def pdf(pages: list[list[str]]) -> bytes:
    """A small valid PDF: one Helvetica text line per entry, each page its own content stream."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        text = "".join(f"BT /F1 11 Tf 50 {760 - 20 * i} Td ({_escaped(line)}) Tj ET\n"
                       for i, line in enumerate(lines)).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R >> >> >>" % len(objects))
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def _escaped(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


async def test_a_pdf_in_the_corpus_is_indexed_by_page_and_found_beside_the_markdown(
        db: Database, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(SET / "corpus", corpus)
    (corpus / "care.pdf").write_bytes(pdf(CARE_GUIDE))
    report = await index_corpus(DocsIndex(db), corpus)
    assert "care.pdf" in report.added and not report.skipped
    search = LexicalSearch(DocsIndex(db))
    for question, page in QUESTIONS:
        hits = await search.search(question, k=5)
        assert ("care.pdf", f"page {page}") in [(h.source, h.location) for h in hits], question
    top = (await search.search("polish leather once a month", k=1))[0]
    assert (top.source, top.location) == ("care.pdf", "page 2")
    assert "cream of the same colour" in top.text
