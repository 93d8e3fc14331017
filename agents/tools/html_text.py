"""Readable text from HTML, with the standard library's parser: the title and the visible text,
laid out in lines and paragraphs, without scripts, styles or markup."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Content that is never visible text.
_HIDDEN = {"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas",
           "head", "select", "button"}
# Tags that start a new line or paragraph.
_BLOCK = {"address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption",
          "figure", "footer", "form", "header", "hr", "main", "nav", "ol", "p", "section",
          "table", "tbody", "thead", "tfoot", "tr", "ul", "pre", "details", "summary"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
         "source", "track", "wbr"}


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._hidden = 0
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _HIDDEN:
            self._hidden += 1
        elif self._hidden:
            return
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" | ")
        elif tag in _HEADINGS:
            self.parts.append("\n\n" + "#" * _HEADINGS[tag] + " ")
        elif tag in _BLOCK:
            self.parts.append("\n\n" if tag == "p" else "\n")
            if tag == "pre":
                self._pre += 1
                self.parts.append("\x00PRE\x00")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID or tag not in _HIDDEN:
            self.handle_starttag(tag, attrs)
            if tag not in _VOID:
                self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _HIDDEN:
            self._hidden = max(self._hidden - 1, 0)
        elif self._hidden:
            return
        elif tag in _HEADINGS or tag == "p":
            self.parts.append("\n\n")
        elif tag in _BLOCK:
            if tag == "pre" and self._pre:
                self._pre -= 1
                self.parts.append("\x00/PRE\x00")
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._hidden:
            # Source line breaks are not visible; only tags make lines (except inside <pre>).
            self.parts.append(data if self._pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> tuple[str, str]:
    """``(title, text)`` of an HTML document."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    title = " ".join("".join(parser.title_parts).split())
    return title, _layout("".join(parser.parts))


_PRE = re.compile(r"\x00PRE\x00(.*?)\x00/PRE\x00", re.S)


def _layout(raw: str) -> str:
    # Preformatted blocks keep their whitespace; everything else collapses like a browser would.
    chunks: list[str] = []
    last = 0
    for match in _PRE.finditer(raw):
        chunks.append(_collapse(raw[last:match.start()]))
        chunks.append("\n" + match.group(1).strip("\n") + "\n")
        last = match.end()
    chunks.append(_collapse(raw[last:].replace("\x00PRE\x00", "").replace("\x00/PRE\x00", "")))
    text = "".join(chunks)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _collapse(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.split("\n")]
    out = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", out)
