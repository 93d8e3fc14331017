"""The model's Markdown as the user sees it in Telegram: text + entities, split into messages."""

from __future__ import annotations

import random
import time

import pytest

from bot.render import (
    MAX_ENTITIES,
    RULE,
    Chunk,
    Entity,
    format_markdown,
    plain_chunks,
    render,
)

TELEGRAM_ENTITY_TYPES = {
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
}
STYLES = {"bold", "italic", "underline", "strikethrough", "spoiler"}


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def one(markdown: str) -> Chunk:
    chunks = render(markdown)
    assert len(chunks) == 1, chunks
    return chunks[0]


def spans(chunk: Chunk) -> list[tuple[str, str]]:
    """(type, covered text) per entity, for readable assertions on small inputs."""
    units = chunk.text.encode("utf-16-le")
    return [
        (e.type, units[2 * e.offset : 2 * (e.offset + e.length)].decode("utf-16-le"))
        for e in chunk.entities
    ]


def assert_sendable(chunk: Chunk, limit: int = 4096) -> None:
    """What Telegram's sendMessage would accept: length, offsets, types, nesting, entity count."""
    text = chunk.text
    size = utf16_len(text)
    assert 0 < size <= limit
    assert text.strip() and text == text.rstrip()
    assert chunk.plain == text
    assert len(chunk.entities) <= MAX_ENTITIES
    units = text.encode("utf-16-le")
    for e in chunk.entities:
        assert e.type in TELEGRAM_ENTITY_TYPES
        assert e.length > 0 and e.offset >= 0 and e.offset + e.length <= size, e
        for edge in (e.offset, e.offset + e.length):  # never inside a surrogate pair
            if edge < size:
                assert (
                    not 0xDC00 <= int.from_bytes(units[2 * edge : 2 * edge + 2], "little") <= 0xDFFF
                )
        if e.type == "text_link":
            assert e.url is not None and e.url.startswith(("http://", "https://", "tg://"))
        else:
            assert e.url is None
        assert e.language is None or e.type == "pre"
    for i, a in enumerate(chunk.entities):
        for b in chunk.entities[i + 1 :]:
            a_end, b_end = a.offset + a.length, b.offset + b.length
            if a_end <= b.offset or b_end <= a.offset:
                continue
            # Overlapping entities must nest (Telegram's first rule), in a way Telegram allows.
            a_in_b = b.offset <= a.offset and a_end <= b_end
            b_in_a = a.offset <= b.offset and b_end <= a_end
            assert (a_in_b and may_nest(a, b)) or (b_in_a and may_nest(b, a)), (a, b)


def may_nest(inner: Entity, outer: Entity) -> bool:
    """Code/pre hold nothing and sit in nothing but a quote; quotes don't nest; links hold no code."""
    if outer.type in {"code", "pre"}:
        return False
    if inner.type in {"code", "pre"}:
        return outer.type in {"blockquote", "expandable_blockquote"}
    return not (inner.type == outer.type == "blockquote")


def assert_pieces_of(chunks: list[str], whole: str) -> None:
    """The chunks are the whole text in order, only the whitespace at each cut dropped."""
    pos = 0
    for text in chunks:
        while pos < len(whole) and whole[pos].isspace() and not whole.startswith(text, pos):
            pos += 1
        assert whole.startswith(text, pos), (text[:60], whole[pos : pos + 60])
        pos += len(text)
    assert not whole[pos:].strip()


# --- Small inputs, exact output -------------------------------------------------------------


def test_heading_becomes_a_bold_line() -> None:
    chunk = one("# Weekly *report*\n\nAll good.")
    assert chunk.text == "Weekly report\n\nAll good."
    assert chunk.entities == (
        Entity("bold", 0, 13),
        Entity("italic", 7, 6),
    )


def test_inline_styles() -> None:
    chunk = one("**bold** _italic_ ~~gone~~ `x = 1`")
    assert chunk.text == "bold italic gone x = 1"
    assert spans(chunk) == [
        ("bold", "bold"),
        ("italic", "italic"),
        ("strikethrough", "gone"),
        ("code", "x = 1"),
    ]


def test_bold_is_cut_around_inline_code() -> None:
    # Telegram forbids code inside bold: the bold goes on either side of it.
    chunk = one("**run `make` now**")
    assert chunk.text == "run make now"
    assert spans(chunk) == [("bold", "run "), ("code", "make"), ("bold", " now")]


def test_links_and_images() -> None:
    chunk = one(
        "See [the docs](https://example.com/d?a=1&b=2) and ![chart](https://i.example/c.png)."
    )
    assert chunk.text == "See the docs and chart."
    assert chunk.entities == (
        Entity("text_link", 4, 8, url="https://example.com/d?a=1&b=2"),
        Entity("text_link", 17, 5, url="https://i.example/c.png"),
    )


def test_link_telegram_would_refuse_is_shown_as_text() -> None:
    chunk = one("[notes](notes.md) and [bad](javascript:alert(1))")
    assert chunk.text == "notes (notes.md) and bad (javascript:alert(1))"
    assert chunk.entities == ()


def test_code_inside_a_link_keeps_the_link() -> None:
    chunk = one("[`render()`](https://example.com)")
    assert chunk.text == "render()"
    assert chunk.entities == (Entity("text_link", 0, 8, url="https://example.com"),)


def test_nested_lists() -> None:
    chunk = one("- apples\n- pears\n  1. green\n  2. **red**\n- plums\n\n7. seven\n8. eight")
    assert chunk.text == ("• apples\n• pears\n  1. green\n  2. red\n• plums\n\n7. seven\n8. eight")
    assert spans(chunk) == [("bold", "red")]


def test_task_list() -> None:
    assert one("- [x] tests\n- [ ] docs").text == "☑ tests\n☐ docs"


def test_block_quote_and_nested_quote_flatten() -> None:
    chunk = one("Before\n\n> quoted **line**\n> more\n>> inner\n\nAfter")
    assert chunk.text == "Before\n\nquoted line\nmore\n\ninner\n\nAfter"
    assert spans(chunk) == [
        ("blockquote", "quoted line\nmore\n\ninner"),
        ("bold", "line"),
    ]


def test_fenced_code_keeps_language_and_text() -> None:
    chunk = one("Run:\n\n```python title=x.py\ndef f(a < b):\n    return a & b\n```\n")
    assert chunk.text == "Run:\n\ndef f(a < b):\n    return a & b"
    assert chunk.entities == (Entity("pre", 6, 30, language="python"),)


def test_small_table_is_an_aligned_pre_block() -> None:
    chunk = one("| Name | Qty |\n|:--|--:|\n| apple | 3 |\n| kiwi | **12** |\n")
    assert chunk.text == "Name  | Qty\n------+----\napple |   3\nkiwi  |  12"
    assert chunk.entities == (Entity("pre", 0, len(chunk.text)),)


def test_wide_table_becomes_labelled_lines() -> None:
    md = (
        "| Option | What it does |\n|---|---|\n"
        "| `--dry-run` | Prints every change it would make without writing anything |\n"
        "| `--force` | Overwrites |\n"
    )
    chunk = one(md)
    assert chunk.text == (
        "Option: --dry-run\n"
        "What it does: Prints every change it would make without writing anything\n\n"
        "Option: --force\nWhat it does: Overwrites"
    )
    assert spans(chunk)[:3] == [("bold", "Option"), ("code", "--dry-run"), ("bold", "What it does")]


def test_horizontal_rule() -> None:
    assert one("above\n\n---\n\nbelow").text == f"above\n\n{RULE}\n\nbelow"


def test_comparison_operators_stay_literal() -> None:
    chunk = one("a < b & c > d")
    assert chunk == Chunk("a < b & c > d")


def test_raw_html_is_shown_not_interpreted() -> None:
    chunk = one("Use <b>Vec<T></b> &amp; R&D\n\n<div>\n  <script>x</script>\n</div>")
    assert chunk.text == "Use <b>Vec<T></b> & R&D\n\n<div>\n  <script>x</script>\n</div>"
    assert chunk.entities == ()


def test_emoji_offsets_count_utf16_units() -> None:
    chunk = one("🚀🚀 **go** 👍🏽 `ok`")
    assert chunk.text == "🚀🚀 go 👍🏽 ok"
    assert chunk.entities == (Entity("bold", 5, 2), Entity("code", 13, 2))


@pytest.mark.parametrize("markdown", ["", "   ", "\n\n\t\n"])
def test_blank_input_gives_no_chunks(markdown: str) -> None:
    assert render(markdown) == []
    assert plain_chunks(markdown) == []


def test_entity_api_form() -> None:
    assert Entity("pre", 0, 3, language="py").to_api() == {
        "type": "pre",
        "offset": 0,
        "length": 3,
        "language": "py",
    }
    assert Entity("text_link", 1, 2, url="https://x.y").to_api() == {
        "type": "text_link",
        "offset": 1,
        "length": 2,
        "url": "https://x.y",
    }


def test_limit_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        render("hi", limit=1)


# --- Splitting --------------------------------------------------------------------------------


def test_split_prefers_paragraphs_then_lines_then_words() -> None:
    text = "first para here\n\nsecond para that is longer\nwith a second line"
    assert plain_chunks(text, limit=30) == [
        "first para here",
        "second para that is longer",
        "with a second line",
    ]
    assert plain_chunks("alpha beta gamma delta", limit=12) == ["alpha beta", "gamma delta"]


def test_code_block_that_fits_moves_whole_to_the_next_message() -> None:
    code = "\n".join(f"line {i}" for i in range(5))
    chunks = render(f"Intro text.\n\n```sh\n{code}\n```", limit=40)
    assert [c.text for c in chunks] == ["Intro text.", code]
    assert chunks[1].entities == (Entity("pre", 0, len(code), language="sh"),)


def test_long_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"    value_{i} = compute({i})" for i in range(400))
    chunks = render(f"Here:\n\n```python\n{code}\n```\n\nDone.", limit=1000)
    assert len(chunks) > 5
    pre_parts = []
    for chunk in chunks:
        assert_sendable(chunk, 1000)
        for e in chunk.entities:
            assert e.type == "pre" and e.language == "python"
            pre_parts.append(chunk.text[e.offset : e.offset + e.length])
    # Cut at line ends only, indentation kept: the lines joined back are the original code.
    assert "\n".join(pre_parts) == code
    assert chunks[-1].text.endswith("Done.")


def test_formatting_across_a_cut_is_closed_and_reopened() -> None:
    chunks = render("**" + " ".join(["bold"] * 30) + "**", limit=40)
    assert len(chunks) > 2
    for chunk in chunks:
        assert_sendable(chunk, 40)
        assert chunk.entities == (Entity("bold", 0, len(chunk.text)),)


def test_a_chunk_carries_at_most_100_entities() -> None:
    chunks = render(" ".join(f"**w{i}**" for i in range(350)))
    assert len(chunks) == 4
    for chunk in chunks:
        assert_sendable(chunk)
    assert sum(len(c.entities) for c in chunks) == 350


def test_single_10000_char_line_without_spaces_still_splits() -> None:
    line = "".join(chr(ord("a") + i % 26) for i in range(10_000))
    assert plain_chunks(line) == [line[:4096], line[4096:8192], line[8192:]]
    chunks = render(line)
    assert [c.text for c in chunks] == [line[:4096], line[4096:8192], line[8192:]]
    long_code = render(f"```\n{line}\n```")
    assert "".join(c.text for c in long_code) == line
    for chunk in long_code:
        assert_sendable(chunk)
        assert chunk.entities == (Entity("pre", 0, len(chunk.text)),)


def test_emoji_heavy_text_respects_utf16_counting() -> None:
    text = "Status: " + "🚀✅👍🏽🇺🇦 ok " * 700  # ~5,600 characters but ~9,800 UTF-16 units
    chunks = render(text)
    assert len(chunks) == 3
    for chunk in chunks:
        assert_sendable(chunk)
    assert_pieces_of([c.text for c in chunks], format_markdown(text).text)

    wall = "😀" * 5000  # nowhere to cut but between emoji
    pieces = plain_chunks(wall)
    assert [utf16_len(p) for p in pieces] == [4096, 4096, 1808]
    assert "".join(pieces) == wall


# --- A long, Markdown-heavy answer --------------------------------------------------------------


def long_answer() -> str:
    parts = ["# Migration plan 🚀\n\nThis answer walks through **every step**, with _care_.\n"]
    for n in range(1, 7):
        parts.append(
            f"## Step {n}: change the `module_{n}` layer\n\n"
            f"We keep a < b && c > d true, see [issue {n}](https://example.com/issues/{n}). "
            "The **old path** stays until the _new one_ is proven; ~~never~~ rarely both. 🙂\n\n"
            "- check the inputs\n- run the **tests**\n  1. unit\n  2. end to end\n\n"
            "> Note: rollbacks are cheap, outages are not.\n\n"
            "| Env | Status |\n|---|---:|\n| dev | ok |\n| prod | pending |\n\n"
        )
        lines = n * 12 + 20  # code blocks of roughly 1.7 to 5 KB: the longest must be cut
        code = "\n".join(
            f"    result_{i} = transform(batch[{i}], mode='safe')  # {i}" for i in range(lines)
        )
        parts.append(f"```python\ndef step_{n}(batch):\n{code}\n    return batch\n```\n\n")
    return "".join(parts)


def test_long_answer_splits_into_sendable_chunks() -> None:
    markdown = long_answer()
    assert len(markdown) > 20_000
    chunks = render(markdown)
    whole = format_markdown(markdown)
    assert len(chunks) >= 5

    for chunk in chunks:
        assert_sendable(chunk)
        for e in chunk.entities:
            if e.type == "pre" and e.language is not None:
                assert e.language == "python"
    # Nothing lost, nothing duplicated: the chunks are consecutive pieces of the whole text.
    assert_pieces_of([c.plain for c in chunks], whole.plain)
    # Every code block is still all there, as the sum of its pieces across messages.
    pre_text = sum(e.length for c in chunks for e in c.entities if e.type == "pre")
    whole_pre = sum(e.length for e in whole.entities if e.type == "pre")
    assert 0 <= whole_pre - pre_text <= len(chunks) - 1  # only the newline at a cut is dropped
    assert render(markdown) == chunks  # deterministic


def test_fifty_kb_answer_renders_fast() -> None:
    markdown = (long_answer() * 3)[:50_000]
    best = min(_timed(markdown) for _ in range(3))
    assert best < 0.1, f"{best * 1000:.0f} ms"


def _timed(markdown: str) -> float:
    started = time.perf_counter()
    render(markdown)
    return time.perf_counter() - started


FUZZ_ATOMS = [
    "**", "*", "_", "~~", "`", "```", "```py\n", "\n", "\n\n", " ", "- ", "1. ", "> ", "# ",
    "| a | b |\n|---|---|\n| c | d |\n", "[x](https://e.com)", "![i](http://i)", "<b>", "</b>",
    "&amp;", "&", "<", ">", "word", "longerword", "🚀", "👍🏽", "é", "\u0301", "    ", "\t",
    "---\n", "\\", "[", "]", "(", ")", "http://a.b/c_d_",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_scrambled_markdown_always_gives_sendable_pieces_of_the_whole(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        markdown = "".join(rng.choice(FUZZ_ATOMS) for _ in range(rng.randint(0, 200)))
        limit = rng.choice([2, 3, 5, 13, 40, 100, 4096])
        chunks = render(markdown, limit=limit)
        for chunk in chunks:
            assert_sendable(chunk, limit)
        assert_pieces_of([c.text for c in chunks], format_markdown(markdown).text)
        pieces = plain_chunks(markdown, limit=limit)
        assert all(0 < utf16_len(p) <= limit for p in pieces)
        assert_pieces_of(pieces, markdown)
