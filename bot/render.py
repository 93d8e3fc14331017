"""Model Markdown → Telegram text + entities, split into messages Telegram accepts.

mistune (3.x) parses the Markdown into a token tree; this module walks the tree into plain text
plus Telegram MessageEntity spans, then cuts that text into chunks. Entities rather than
``parse_mode="HTML"``: nothing the model writes can make Telegram fail with "can't parse
entities", raw HTML in the answer is just text, and the length Telegram checks is the length of
the text we cut. Offsets and lengths are UTF-16 code units, as Telegram counts them.

Telegram's nesting rules shape the walk: bold/italic/underline/strikethrough/spoiler may wrap
anything except code and pre (so they are cut around those), code and pre hold nothing, a
text_link holds no code, blockquotes do not nest. A message carries at most 100 entities (the
rest are silently dropped) and a bounded total entity size, so those bound a chunk too.
"""

from __future__ import annotations

import bisect
import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Chunk", "Entity", "EntityType", "format_markdown", "plain_chunks", "render"]

EntityType = Literal[
    "bold",
    "italic",
    "underline",
    "strikethrough",
    "spoiler",
    "code",
    "pre",
    "text_link",
    "blockquote",
    "expandable_blockquote",
]

TELEGRAM_TEXT_LIMIT = 4096
"""sendMessage text limit, in UTF-16 code units after entity parsing."""
MAX_ENTITIES = 100
"""Telegram keeps the first 100 entities of a message and drops the rest without an error."""
MAX_ENTITY_BYTES = 8000
"""Budget for the serialized entities (URLs dominate); past ≈9.5 KB Telegram says ENTITIES_TOO_LONG."""
MAX_TABLE_WIDTH = 50
"""A table wider than this (monospace columns) wraps on a phone; it becomes labelled lines."""

BULLET = "• "
RULE = "—" * 10
_STYLES = frozenset({"bold", "italic", "underline", "strikethrough", "spoiler"})
_CODE = frozenset({"code", "pre"})
_INLINE_STYLES: dict[str, EntityType] = {
    "strong": "bold",
    "emphasis": "italic",
    "strikethrough": "strikethrough",
}
_LINK_SCHEMES = ("http://", "https://", "tg://")
_LANGUAGE = re.compile(r"[\w+#.-]{1,32}")
_CHAR_REF = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_GLUE = frozenset({"\u200d", "\ufe0f", "\ufe0e"})  # never cut next to these (emoji sequences)

_parser: Any = None


def load_parser() -> Any:
    """The Markdown parser, built on first use: mistune is not needed until the first reply, and
    importing it is ~10 ms of start-up (issue 15). The bot builds it in a thread when the first
    update arrives (bot/app.py ``_warm_up``)."""
    global _parser
    if _parser is None:
        import mistune

        _parser = mistune.create_markdown(
            renderer=None, plugins=["strikethrough", "table", "url", "task_lists"])
    return _parser


@dataclass(frozen=True, slots=True)
class Entity:
    """One Telegram MessageEntity; offset and length in UTF-16 code units."""

    type: EntityType
    offset: int
    length: int
    url: str | None = None
    language: str | None = None

    def to_api(self) -> dict[str, str | int]:
        """The Bot API JSON form (what sendMessage's ``entities`` takes)."""
        data: dict[str, str | int] = {
            "type": self.type,
            "offset": self.offset,
            "length": self.length,
        }
        if self.url is not None:
            data["url"] = self.url
        if self.language is not None:
            data["language"] = self.language
        return data


@dataclass(frozen=True, slots=True)
class Chunk:
    """One message: send ``text`` with ``entities`` and no parse mode."""

    text: str
    entities: tuple[Entity, ...] = ()

    @property
    def plain(self) -> str:
        """The fallback if Telegram still rejects the entities: the same text, unformatted."""
        return self.text


@dataclass(slots=True)
class _Span:
    type: EntityType
    start: int  # code-point offsets into the whole text
    end: int
    url: str | None = None
    language: str | None = None


def render(markdown: str, *, limit: int = TELEGRAM_TEXT_LIMIT) -> list[Chunk]:
    """Render model Markdown into chunks of at most ``limit`` UTF-16 units; [] for blank input."""
    _check_limit(limit)
    writer = _markdown_to_text(markdown)
    return _split(writer.text(), writer.finished_spans(), writer.boundaries, limit)


def format_markdown(markdown: str) -> Chunk:
    """The whole rendering as one unsplit chunk (may exceed Telegram's limits)."""
    writer = _markdown_to_text(markdown)
    text = writer.text().rstrip()
    u16 = _Utf16(text)
    spans = [s for s in writer.finished_spans() if s.start < len(text)]
    return Chunk(text, tuple(_entity(s, s.start, min(s.end, len(text)), 0, u16) for s in spans))


def plain_chunks(text: str, *, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    """Split text that must be sent as-is into pieces of at most ``limit`` UTF-16 units."""
    _check_limit(limit)
    boundaries = [m.end() for m in _BLANK_LINE.finditer(text)]
    return [chunk.text for chunk in _split(text, [], boundaries, limit)]


def _check_limit(limit: int) -> None:
    if limit < 2:  # one astral character is two units: a smaller limit cannot make progress
        raise ValueError(f"limit must be at least 2 UTF-16 units, got {limit!r}")


# ---------------------------------------------------------------------------------------------
# Markdown tree → text + spans


class _Writer:
    """Appends text, tracking spans, indentation and the block gaps owed before the next text."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.pos = 0
        self.spans: list[_Span] = []
        self.boundaries: list[int] = []  # offsets where a block starts after a blank line
        self.indent = ""
        self._line_start = True
        self._gap = 0  # newlines owed before the next text; emitted lazily, never trailing
        self.quote_depth = 0
        self.link_depth = 0
        self._opened_at = -1

    def gap(self, newlines: int) -> None:
        # No gap at the very start, nor right inside a span just opened (a quote's first block).
        if self.pos and self.pos != self._opened_at:
            self._gap = max(self._gap, newlines)

    def write(self, text: str) -> None:
        for i, line in enumerate(text.split("\n")):
            if i:
                self._flush()
                self._raw("\n")
                self._line_start = True
            if line:
                self._begin_text()
                self._raw(line)

    def open(self, type_: EntityType, url: str | None = None, language: str | None = None) -> _Span:
        self._begin_text()
        span = _Span(type_, self.pos, self.pos, url, language)
        self._opened_at = self.pos
        self.spans.append(span)
        return span

    def close(self, span: _Span) -> None:
        span.end = self.pos
        self._opened_at = -1

    def text(self) -> str:
        return "".join(self._parts)

    def finished_spans(self) -> list[_Span]:
        return _legalize([s for s in self.spans if s.end > s.start])

    def _begin_text(self) -> None:
        self._flush()
        if self._line_start:
            self._raw(self.indent)
            self._line_start = False

    def _flush(self) -> None:
        if self._gap:
            self._raw("\n" * self._gap)
            if self._gap > 1:
                self.boundaries.append(self.pos)
            self._gap = 0
            self._line_start = True

    def _raw(self, text: str) -> None:
        self._parts.append(text)
        self.pos += len(text)


def _markdown_to_text(markdown: str) -> _Writer:
    writer = _Writer()
    if markdown.strip():
        tokens = load_parser()(markdown)
        assert isinstance(tokens, list)  # renderer=None gives the token list
        _blocks(writer, tokens, 2)
    return writer


def _blocks(w: _Writer, tokens: list[dict[str, Any]], gap: int) -> None:
    for token in tokens:
        if token["type"] != "blank_line":
            w.gap(gap)
            _block(w, token)


def _block(w: _Writer, token: dict[str, Any]) -> None:
    kind = token["type"]
    if kind in ("paragraph", "block_text"):
        _inlines(w, token["children"])
    elif kind == "heading":
        span = w.open("bold")
        _inlines(w, token["children"])
        w.close(span)
    elif kind == "block_code":
        _code_block(w, token)
    elif kind == "block_quote":
        _quote(w, token)
    elif kind == "list":
        _list(w, token)
    elif kind == "table":
        _table(w, token)
    elif kind == "thematic_break":
        w.write(RULE)
    elif kind == "block_html":
        w.write(token["raw"].strip("\n"))  # shown as the model wrote it, never interpreted
    elif "children" in token:  # an unknown container from a future mistune: keep its text
        _blocks(w, token["children"], 2)
    elif "raw" in token:
        w.write(token["raw"])


def _code_block(w: _Writer, token: dict[str, Any]) -> None:
    code = token["raw"].removesuffix("\n")
    if not code.strip():
        return
    info = (token.get("attrs") or {}).get("info", "").split()
    language = info[0] if info and _LANGUAGE.fullmatch(info[0]) else None
    span = w.open("pre", language=language)
    w.write(code)
    w.close(span)


def _quote(w: _Writer, token: dict[str, Any]) -> None:
    # Telegram blockquotes do not nest: an inner quote is part of the outer one.
    span = w.open("blockquote") if not w.quote_depth else None
    w.quote_depth += 1
    _blocks(w, token["children"], 2)
    w.quote_depth -= 1
    if span is not None:
        w.close(span)


def _list(w: _Writer, token: dict[str, Any]) -> None:
    attrs = token.get("attrs") or {}
    number = attrs.get("start", 1) if attrs.get("ordered") else None
    gap = 1 if token.get("tight", True) else 2
    outer = w.indent
    for i, item in enumerate(token["children"]):
        if i:
            w.gap(gap)
        marker = BULLET if number is None else f"{number + i}. "
        if item["type"] == "task_list_item":
            box = "☑ " if (item.get("attrs") or {}).get("checked") else "☐ "
            marker = box if number is None else marker + box
        w.write(marker)
        w.indent = outer + " " * len(marker)  # continuation lines align with the item's text
        children = [c for c in item.get("children", []) if c["type"] != "blank_line"]
        for j, child in enumerate(children):
            if j:
                w.gap(gap)
            _block(w, child)
        w.indent = outer


def _table(w: _Writer, token: dict[str, Any]) -> None:
    rows: list[list[dict[str, Any]]] = []
    for part in token["children"]:
        if part["type"] == "table_head":
            rows.append(part["children"])
        else:
            rows.extend(row["children"] for row in part["children"])
    if not rows:
        return
    texts = [[_plain_inline(cell["children"]) for cell in row] for row in rows]
    columns = max(len(row) for row in texts)
    widths = [max((_width(r[c]) for r in texts if c < len(r)), default=0) for c in range(columns)]
    if sum(widths) + 3 * (columns - 1) <= MAX_TABLE_WIDTH:
        lines = []
        for r, row in enumerate(rows):
            cells = []
            for c in range(columns):
                text = texts[r][c] if c < len(texts[r]) else ""
                align = (row[c].get("attrs") or {}).get("align") if c < len(row) else None
                cells.append(_pad(text, widths[c], align))
            lines.append(" | ".join(cells).rstrip())
            if r == 0 and len(rows) > 1:
                lines.append("-+-".join("-" * width for width in widths))
        span = w.open("pre")
        w.write("\n".join(lines))
        w.close(span)
        return
    # Too wide for a phone: one record per row, "Header: value" lines, header in bold.
    header, body = rows[0], rows[1:]
    labelled = bool(body)
    for r, row in enumerate(body or [header]):
        if r:
            w.gap(2)
        for c, cell in enumerate(row):
            if c:
                w.gap(1)
            if labelled and c < len(header):
                span = w.open("bold")
                _inlines(w, header[c]["children"])
                w.close(span)
                w.write(": ")
            _inlines(w, cell["children"])


def _inlines(w: _Writer, tokens: list[dict[str, Any]]) -> None:
    for token in tokens:
        kind = token["type"]
        if kind == "text":
            w.write(_decode_refs(token["raw"]))
        elif kind == "codespan":
            if w.link_depth:  # a text_link cannot hold code: keep the link, drop the code look
                w.write(token["raw"])
            else:
                span = w.open("code")
                w.write(token["raw"])
                w.close(span)
        elif kind in _INLINE_STYLES:
            span = w.open(_INLINE_STYLES[kind])
            _inlines(w, token["children"])
            w.close(span)
        elif kind in ("link", "image"):
            _link(w, token)
        elif kind in ("softbreak", "linebreak"):
            w.write("\n")  # a model's line break is meant: keep it
        elif kind == "inline_html":
            w.write(token["raw"])  # literal text, never interpreted
        elif "children" in token:
            _inlines(w, token["children"])
        elif "raw" in token:
            w.write(token["raw"])


def _link(w: _Writer, token: dict[str, Any]) -> None:
    url = (token.get("attrs") or {}).get("url", "")
    label = _plain_inline(token.get("children", []))
    if not url.startswith(_LINK_SCHEMES) or any(c.isspace() for c in url) or w.link_depth:
        # Telegram refuses relative, javascript: and similar URLs: show them instead.
        _inlines(w, token.get("children", []))
        if url and url != label and not url.startswith("#"):
            w.write(f" ({url})")
        return
    span = w.open("text_link", url=url)
    w.link_depth += 1
    if label.strip():
        _inlines(w, token.get("children", []))
    else:
        w.write(url)
    w.link_depth -= 1
    w.close(span)


def _plain_inline(tokens: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for token in tokens:
        if "children" in token:
            out.append(_plain_inline(token["children"]))
        elif token["type"] in ("softbreak", "linebreak"):
            out.append(" ")
        elif "raw" in token:
            out.append(_decode_refs(token["raw"]) if token["type"] == "text" else token["raw"])
    return "".join(out)


def _decode_refs(text: str) -> str:
    """Decode ``&amp;``-style references as CommonMark does; leave ``R&D`` and ``a && b`` alone."""
    if "&" not in text:
        return text
    return _CHAR_REF.sub(lambda m: html.unescape(m.group()), text)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int, align: str | None) -> str:
    room = width - _width(text)
    if align == "right":
        return " " * room + text
    if align == "center":
        return " " * (room // 2) + text + " " * (room - room // 2)
    return text + " " * room


def _legalize(spans: list[_Span]) -> list[_Span]:
    """Cut style spans around code/pre (Telegram forbids either inside the other)."""
    codes = sorted((s.start, s.end) for s in spans if s.type in _CODE)
    out: list[_Span] = []
    for span in spans:
        if span.type not in _STYLES or not codes:
            out.append(span)
            continue
        start = span.start
        for c_start, c_end in codes[bisect.bisect_left(codes, (span.start, span.start)) :]:
            if c_start >= span.end:
                break
            if c_start > start:
                out.append(_Span(span.type, start, c_start))
            start = max(start, c_end)
        if start < span.end:
            out.append(_Span(span.type, start, span.end))
    out.sort(key=lambda s: (s.start, -s.end))
    return out


# ---------------------------------------------------------------------------------------------
# Splitting


class _Utf16:
    """Code-point offset → UTF-16 offset, for text whose astral characters count twice."""

    def __init__(self, text: str) -> None:
        self.size = len(text)
        self._astral = [m.start() for m in _ASTRAL.finditer(text)]

    def at(self, index: int) -> int:
        return index + bisect.bisect_left(self._astral, index)

    def reach(self, start: int, limit: int) -> int:
        """The furthest end such that text[start:end] is at most ``limit`` UTF-16 units."""
        target = self.at(start) + limit
        lo, hi = start, min(self.size, start + limit)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.at(mid) <= target:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _split(text: str, spans: list[_Span], boundaries: list[int], limit: int) -> list[Chunk]:
    u16 = _Utf16(text)
    pres = [s for s in spans if s.type == "pre"]
    starts = [s.start for s in spans]
    chunks: list[Chunk] = []
    live: list[_Span] = []  # spans that began at or before `start` and are still open there
    ahead = 0  # spans[ahead:] all begin after `start`
    start = 0
    while True:
        while start < len(text) and text[start] == "\n":
            start += 1
        for _ in range(2):
            while ahead < len(spans) and spans[ahead].start <= start:
                live.append(spans[ahead])
                ahead += 1
            live = [s for s in live if s.end > start]
            if any(s.type in _CODE for s in live):
                break
            # Outside code, leading spaces are list indentation, and Telegram trims them anyway.
            while start < len(text) and text[start] == " ":
                start += 1
        if start >= len(text):
            return chunks
        end = min(u16.reach(start, limit), _entity_budget_end(live, spans, ahead))
        end = max(end, start + 1)  # always progress, whatever the budgets say
        cut, resume = (
            (end, end)
            if end >= len(text)
            else _choose_cut(text, start, end, boundaries, pres, u16, limit)
        )
        stop = len(text[start:cut].rstrip()) + start
        if stop > start:
            members = live + spans[ahead : bisect.bisect_left(starts, stop, lo=ahead)]
            entities = tuple(
                _entity(s, max(s.start, start), min(s.end, stop), start, u16) for s in members
            )
            chunks.append(Chunk(text[start:stop], entities))
        start = resume


def _entity_budget_end(live: list[_Span], spans: list[_Span], ahead: int) -> int:
    """First offset at which the chunk would carry too many entities (or entity bytes)."""
    count = size = 0
    for i in range(-len(live), len(spans) - ahead):
        span = live[i] if i < 0 else spans[ahead + i]
        count += 1
        size += 16 + len((span.url or "").encode()) + len((span.language or "").encode())
        if count > MAX_ENTITIES or size > MAX_ENTITY_BYTES:
            return span.start
    return 1 << 62


def _choose_cut(
    text: str,
    start: int,
    end: int,
    boundaries: list[int],
    pres: list[_Span],
    u16: _Utf16,
    limit: int,
) -> tuple[int, int]:
    """Where the chunk from ``start`` ends (``cut``) and where the next one begins (``resume``).

    Paragraph break, then line break, then space, in the second half of the window first; then
    anywhere in it; then a hard cut. Before that: if a code block that would fit in one message
    straddles the window's end, the chunk ends before the code block instead of cutting it.
    """
    for pre in pres:
        if pre.start < end < pre.end and pre.start > start and text[start : pre.start].strip():
            if u16.at(pre.end) - u16.at(pre.start) <= limit:
                return pre.start, pre.start
    for low in (max(start + 1, (start + end) // 2), start + 1):
        i = bisect.bisect_right(boundaries, end) - 1
        if i >= 0 and boundaries[i] >= low:
            return boundaries[i], boundaries[i]
        for sep in ("\n", " "):
            at = text.rfind(sep, low, end)
            if at >= low:
                return at, at + 1
    cut = end
    while cut > start + 1 and (
        text[cut] in _GLUE or text[cut - 1] in _GLUE or unicodedata.combining(text[cut])
    ):
        cut -= 1
    return cut, cut


def _entity(span: _Span, start: int, end: int, base: int, u16: _Utf16) -> Entity:
    offset = u16.at(start) - u16.at(base)
    return Entity(span.type, offset, u16.at(end) - u16.at(start), span.url, span.language)
