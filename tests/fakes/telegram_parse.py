"""Message text formatting as the Telegram Bot API server does it.

The official Bot API server hands text to TDLib, which parses ``parse_mode`` markup
(``parse_html``, ``parse_markdown_v2``, ``parse_markdown``), cleans the text, fixes the entities
(``fix_formatted_text``) and detects mentions, commands, hashtags, URLs and e-mails
(``find_entities``). This module ports those steps so the fake answers what Telegram answers:
the same plain text, the same entities (offsets and lengths in UTF-16 code units, sorted as
TDLib sorts them) and the same error wording, byte offsets included.

Parsers work on the UTF-8 bytes of the text, as TDLib does, so ``byte offset N`` in an error is
the offset Telegram reports. Known simplifications are listed in ``tests/fakes/README.md``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class FormatError(Exception):
    """Text Telegram refuses; ``message`` is TDLib's wording (capitalised, without a prefix)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Entity:
    type: str  # Bot API MessageEntity type
    offset: int  # UTF-16 code units
    length: int
    url: str | None = None
    language: str | None = None
    custom_emoji_id: str | None = None
    user: dict[str, Any] | None = None
    unix_time: int | None = None
    date_time_format: str | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"offset": self.offset, "length": self.length, "type": self.type}
        for key in ("url", "language", "custom_emoji_id", "user", "unix_time", "date_time_format"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def utf16_slice(text: str, offset: int, length: int) -> str:
    raw = text.encode("utf-16-le")
    return raw[2 * offset : 2 * (offset + length)].decode("utf-16-le", "replace")


# --- entity classes, priorities and sorting (MessageEntity.cpp) --------------------------------

SPLITTABLE = ("bold", "italic", "underline", "strikethrough", "spoiler")
BLOCKQUOTE = ("blockquote", "expandable_blockquote")
CONTINUOUS = tuple(
    """mention hashtag bot_command url email text_link text_mention cashtag phone_number
    bank_card_number custom_emoji""".split()
)
PRE = ("pre", "code", "date_time")
USER_TYPES = (*SPLITTABLE, *BLOCKQUOTE, "text_link", "text_mention", "custom_emoji", *PRE)
ALL_TYPES = (*SPLITTABLE, *BLOCKQUOTE, *CONTINUOUS, *PRE)

# TDLib's MessageEntity::get_type_priority: the tie-breaker when entities share offset and length.
_PRIORITY = dict.fromkeys(CONTINUOUS, 50) | {
    "text_link": 49, "text_mention": 49, "custom_emoji": 99, "bold": 90, "italic": 91,
    "underline": 92, "strikethrough": 93, "spoiler": 94, "code": 20, "pre": 11, "date_time": 50,
    "blockquote": 0, "expandable_blockquote": 0,
}  # fmt: skip


def _priority(entity: Entity) -> int:
    if entity.type == "pre" and entity.language:
        return 10  # PreCode
    return _PRIORITY[entity.type]


def _sort_key(entity: Entity) -> tuple[int, int, int]:
    return (entity.offset, -entity.length, _priority(entity))


def sort_entities(entities: list[Entity]) -> None:
    entities.sort(key=_sort_key)


def _is_pre(entity: Entity) -> bool:
    return entity.type in PRE


def remove_empty_entities(entities: list[Entity]) -> list[Entity]:
    def keep(e: Entity) -> bool:
        if e.length <= 0:
            return False
        if e.type == "text_link":
            return bool(e.url)
        if e.type == "text_mention":
            return e.user is not None
        if e.type == "custom_emoji":
            return bool(e.custom_emoji_id)
        if e.type == "date_time":
            return (e.unix_time or 0) > 0
        return True

    return [e for e in entities if keep(e)]


def _are_entities_valid(entities: list[Entity]) -> bool:
    end_pos = dict.fromkeys(SPLITTABLE, -1)
    stack: list[Entity] = []
    for entity in entities:
        while stack and entity.offset >= stack[-1].end:
            stack.pop()
        if stack:
            parent = stack[-1]
            nested_types = {e.type for e in stack}
            if entity.end > parent.end or entity.type in nested_types or _is_pre(parent):
                return False
            if _is_pre(entity) and nested_types - set(BLOCKQUOTE):
                return False
            if (entity.type in CONTINUOUS or entity.type in BLOCKQUOTE) and nested_types & set(
                CONTINUOUS
            ):
                return False
            if entity.type in BLOCKQUOTE and nested_types & set(BLOCKQUOTE):
                return False
            if nested_types & set(SPLITTABLE):
                return False
        if entity.type in SPLITTABLE:
            if end_pos[entity.type] >= entity.offset:
                return False
            end_pos[entity.type] = entity.end
        stack.append(entity)
    return True


def _remove_intersecting(entities: list[Entity]) -> list[Entity]:
    """Keeps an entity only if it begins after every kept one ends (drops nested ones too)."""
    kept: list[Entity] = []
    last_end = 0
    for entity in entities:
        if entity.offset >= last_end:
            last_end = entity.end
            kept.append(entity)
    return kept


def _remove_intersecting_blockquote(entities: list[Entity], quotes: list[Entity]) -> list[Entity]:
    if not quotes:
        return entities
    kept = []
    q = 0
    for entity in entities:
        while q < len(quotes) and quotes[q].end <= entity.offset:
            q += 1
        if q < len(quotes) and (
            quotes[q].end < entity.end or entity.offset < quotes[q].offset < entity.end
        ):
            continue
        kept.append(entity)
    return kept


def _split_entities(splittable: list[Entity], others: list[Entity]) -> list[Entity]:
    """TDLib's split_entities: merges touching same-type entities, splits them at the
    boundaries of other entities and drops their parts inside pre/code."""
    begin = dict.fromkeys(SPLITTABLE, 0)
    end = dict.fromkeys(SPLITTABLE, 0)
    result: list[Entity] = []
    index = 0

    def flush(offset: int) -> None:
        for kind in SPLITTABLE:
            if end[kind] != 0 and begin[kind] < offset:
                if end[kind] <= offset:
                    result.append(Entity(kind, begin[kind], end[kind] - begin[kind]))
                    begin[kind] = end[kind] = 0
                else:
                    result.append(Entity(kind, begin[kind], offset - begin[kind]))
                    begin[kind] = offset

    def add_entities(end_offset: int) -> None:
        nonlocal index
        while index < len(splittable) and splittable[index].offset < end_offset:
            entity = splittable[index]
            kind = entity.type
            if entity.offset <= end[kind] and end[kind] != 0:
                end[kind] = max(end[kind], entity.end)
            else:
                flush(entity.offset)
                begin[kind] = entity.offset
                end[kind] = entity.end
            index += 1
        flush(end_offset)

    stack: list[Entity] = []

    def add_offset(offset: int) -> None:
        while stack and offset >= stack[-1].end:
            old_size = len(result)
            add_entities(stack[-1].end)
            if _is_pre(stack[-1]):
                del result[old_size:]
            stack.pop()
        add_entities(offset)

    for other in others:
        add_offset(other.offset)
        stack.append(other)
    add_offset(1 << 31)
    sort_entities(result)
    return result


def _resplit(splittable: list[Entity], entities: list[Entity]) -> list[Entity]:
    if not splittable:
        return entities
    split = _split_entities(splittable, entities)
    if not entities:
        return split
    combined = entities + split
    sort_entities(combined)
    return combined


def fix_entities(entities: list[Entity]) -> list[Entity]:
    sort_entities(entities)
    if _are_entities_valid(entities):
        return entities
    continuous = [e for e in entities if e.type not in SPLITTABLE and e.type not in BLOCKQUOTE]
    quotes = [e for e in entities if e.type in BLOCKQUOTE]
    splittable = [e for e in entities if e.type in SPLITTABLE]
    continuous = _remove_intersecting(continuous)
    if quotes:
        quotes = _remove_intersecting(quotes)
        continuous = _remove_intersecting_blockquote(continuous, quotes)
        continuous = continuous + quotes
        sort_entities(continuous)
    return _resplit(splittable, continuous)


def _merge_new_entities(entities: list[Entity], new: list[Entity]) -> list[Entity]:
    if not new:
        return entities
    continuous = [e for e in entities if e.type not in SPLITTABLE and e.type not in BLOCKQUOTE]
    quotes = [e for e in entities if e.type in BLOCKQUOTE]
    splittable = [e for e in entities if e.type in SPLITTABLE]
    new = _remove_intersecting_blockquote(new, quotes)
    merged: list[Entity] = []
    it = 0
    for old in continuous:
        while it < len(new) and new[it].end <= old.offset:
            merged.append(new[it])
            it += 1
        merged.append(old)
        while it < len(new) and new[it].offset < old.end:
            it += 1
    merged.extend(new[it:])
    if quotes:
        merged += quotes
        sort_entities(merged)
    return _resplit(splittable, merged)


# --- links (LinkManager::get_checked_link, simplified) -----------------------------------------

_TG_USER_LINK = re.compile(r"^tg:(?://)?user\?id=(\d+)$", re.IGNORECASE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def link_user_id(url: str) -> int | None:
    match = _TG_USER_LINK.match(url)
    return int(match.group(1)) if match else None


def check_link(url: str) -> str | None:
    """The normalised link Telegram stores for a text_link, or None when it drops the link."""
    link = url
    if not link or any(ch.isspace() for ch in link):
        return None
    lower = link.lower()
    for scheme in ("tonsite", "tg", "ton"):
        if lower.startswith(scheme + ":"):
            rest = link[len(scheme) + 1 :]
            rest = rest[2:] if rest.startswith("//") else rest
            match = re.match(r"^([A-Za-z0-9_\-.]+)([/?#].*)?$", rest)
            if not match:
                return None
            return f"{scheme}://{match.group(1).lower()}{match.group(2) or ''}"
    scheme_match = _SCHEME.match(link)
    protocol = "http"
    rest = link
    if scheme_match:
        protocol = scheme_match.group(1).lower()
        if protocol not in ("http", "https"):
            return None
        rest = link[scheme_match.end() :]
    cut = min((rest.find(ch) for ch in "/?#" if ch in rest), default=len(rest))
    authority, query = rest[:cut], rest[cut:]
    userinfo = ""
    if "@" in authority:
        userinfo, authority = authority.rsplit("@", 1)
        userinfo += "@"
    host, port = authority, ""
    if ":" in authority and not authority.startswith("["):
        host, port = authority.rsplit(":", 1)
        if not port.isdigit() or not 0 < int(port) < 65536:
            return None
        port = ":" + port
    host = host.lower()
    if not host or any(ch.isspace() for ch in host):
        return None
    if "." not in host and not host.startswith("["):
        return None
    if not query or query[0] != "/":
        query = "/" + query
    return f"{protocol}://{userinfo}{host}{port}{query}"


# --- HTML (parse_html) -------------------------------------------------------------------------

_HTML_TAGS = frozenset(
    "a b strong i em s strike del u ins tg-spoiler tg-emoji tg-time span pre code blockquote".split()
)


def _is_space(c: int) -> bool:  # td::is_space also treats the terminating NUL as a space
    return c in (32, 9, 13, 10, 0, 11)


def _is_first_code_unit(c: int) -> bool:
    return (c & 0xC0) != 0x80


def _utf16_units(c: int) -> int:
    return (1 + (c >= 0xF0)) if _is_first_code_unit(c) else 0


def _decode_html_entity(src: bytes, pos: int) -> tuple[int, int]:
    """(code point, position after the entity); code point 0 when it is not one Telegram knows."""

    def at(k: int) -> int:
        return src[k] if k < len(src) else 0

    end = pos + 1
    code = 0
    if at(pos + 1) == ord("#"):
        end += 1
        if at(pos + 2) == ord("x"):
            end += 1
            while chr(at(end)) in "0123456789abcdefABCDEF" and at(end):
                code = code * 16 + int(chr(at(end)), 16)
                end += 1
        else:
            while ord("0") <= at(end) <= ord("9"):
                code = code * 10 + at(end) - ord("0")
                end += 1
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return 0, pos
    else:
        while chr(at(end)).isascii() and chr(at(end)).isalpha():
            end += 1
        code = {b"lt": 60, b"gt": 62, b"amp": 38, b"quot": 34}.get(src[pos + 1 : end], 0)
        if code == 0:
            return 0, pos
    return code, end + 1 if at(end) == ord(";") else end


def _tag_text(raw: bytes) -> str:
    return raw.lower().decode("utf-8", "replace")


def parse_html(text: str) -> tuple[str, list[Entity]]:
    if "\0" in text:
        raise FormatError("Text must not contain null bytes")
    src = text.encode("utf-8")
    size = len(src)

    def at(k: int) -> int:
        return src[k] if k < size else 0

    out = bytearray()
    entities: list[Entity] = []
    utf16 = 0
    # (tag name, argument, unix time, UTF-16 offset, byte position in the output)
    stack: list[tuple[str, str, int, int, int]] = []
    i = 0
    while i < size:
        c = src[i]
        if c == ord("&"):
            code, after = _decode_html_entity(src, i)
            if code:
                utf16 += 1 + (code > 0xFFFF)
                out += chr(code).encode("utf-8", "surrogatepass")
                i = after
                continue
        if c != ord("<"):
            utf16 += _utf16_units(c)
            out.append(c)
            i += 1
            continue

        begin = i
        i += 1
        if at(i) != ord("/"):
            while not _is_space(at(i)) and at(i) != ord(">"):
                i += 1
            if at(i) == 0:
                raise FormatError(f"Unclosed start tag at byte offset {begin}")
            tag = _tag_text(src[begin + 1 : i])
            if tag not in _HTML_TAGS:
                raise FormatError(f'Unsupported start tag "{tag}" at byte offset {begin}')
            argument = ""
            unix_time = 0
            while at(i) != ord(">"):
                while at(i) != 0 and _is_space(at(i)):
                    i += 1
                if at(i) == ord(">"):
                    break
                name_begin = i
                while not _is_space(at(i)) and at(i) not in b"=>/\"'":
                    i += 1
                name = src[name_begin:i]
                if not name:
                    raise FormatError(
                        f'Empty attribute name in the tag "{tag}" at byte offset {begin}'
                    )
                while at(i) != 0 and _is_space(at(i)):
                    i += 1
                if at(i) != ord("="):
                    if at(i) == 0:
                        raise FormatError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                    if tag == "blockquote" and name == b"expandable":
                        argument = "1"
                    continue
                i += 1
                while at(i) != 0 and _is_space(at(i)):
                    i += 1
                if at(i) == 0:
                    raise FormatError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                if at(i) not in (ord("'"), ord('"')):
                    token_begin = i
                    while (
                        at(i) and chr(at(i)).isascii() and (chr(at(i)).isalnum() or at(i) in b".-")
                    ):
                        i += 1
                    value = _tag_text(src[token_begin:i])
                    if not _is_space(at(i)) and at(i) != ord(">"):
                        raise FormatError(
                            f"Unexpected end of name token at byte offset {token_begin}"
                        )
                else:
                    quote = at(i)
                    i += 1
                    raw = bytearray()
                    while at(i) != quote and at(i) != 0:
                        if at(i) == ord("&"):
                            code, after = _decode_html_entity(src, i)
                            if code:
                                raw += chr(code).encode("utf-8", "surrogatepass")
                                i = after
                                continue
                        raw.append(src[i])
                        i += 1
                    if at(i) == quote:
                        i += 1
                    value = raw.decode("utf-8", "replace")
                if at(i) == 0:
                    raise FormatError(f"Unclosed start tag at byte offset {begin}")
                if tag == "a" and name == b"href":
                    argument = value
                elif tag == "code" and name == b"class" and value.startswith("language-"):
                    argument = value[9:]
                elif tag == "span" and name == b"class" and value.startswith("tg-"):
                    argument = value[3:]
                elif tag == "tg-emoji" and name == b"emoji-id":
                    argument = value
                elif tag == "blockquote" and name == b"expandable":
                    argument = "1"
                elif tag == "tg-time" and name == b"unix":
                    unix_time = int(value) if value.lstrip("-").isdigit() else 0
                elif tag == "tg-time" and name == b"format":
                    argument = value
            if tag == "span" and argument != "spoiler":
                raise FormatError(f'Tag "span" must have class "tg-spoiler" at byte offset {begin}')
            stack.append((tag, argument, unix_time, utf16, len(out)))
        else:
            if not stack:
                raise FormatError(f"Unexpected end tag at byte offset {begin}")
            while not _is_space(at(i)) and at(i) != ord(">"):
                i += 1
            end_tag = _tag_text(src[begin + 2 : i])
            while _is_space(at(i)) and at(i) != 0:
                i += 1
            if at(i) != ord(">"):
                raise FormatError(f"Unclosed end tag at byte offset {begin}")
            tag, argument, unix_time, offset, out_pos = stack[-1]
            if end_tag and end_tag != tag:
                raise FormatError(
                    f'Unmatched end tag at byte offset {begin}, expected "</{tag}>", '
                    f'found "</{end_tag}>"'
                )
            if utf16 > offset:
                _close_html_entity(
                    entities, tag, argument, unix_time, offset, utf16 - offset, bytes(out[out_pos:])
                )
            stack.pop()
        i += 1  # past '>'
    if stack:
        raise FormatError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    for entity in entities:
        if entity.type == "code":
            entity.language = None
    try:
        plain = out.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(
            "Text contains invalid Unicode characters after decoding HTML entities, check for "
            "unmatched surrogate code units"
        ) from None
    sort_entities(entities)
    return plain, entities


def _close_html_entity(
    entities: list[Entity],
    tag: str,
    argument: str,
    unix_time: int,
    offset: int,
    length: int,
    inner: bytes,
) -> None:
    simple = {
        "i": "italic",
        "em": "italic",
        "b": "bold",
        "strong": "bold",
        "s": "strikethrough",
        "strike": "strikethrough",
        "del": "strikethrough",
        "u": "underline",
        "ins": "underline",
        "tg-spoiler": "spoiler",
        "span": "spoiler",
    }
    last = entities[-1] if entities else None
    same_span = last is not None and last.offset == offset and last.length == length
    if tag in simple:
        entities.append(Entity(simple[tag], offset, length))
    elif tag == "tg-emoji":
        if not argument.isdigit() or int(argument) == 0:
            raise FormatError("Invalid custom emoji identifier specified")
        entities.append(Entity("custom_emoji", offset, length, custom_emoji_id=argument))
    elif tag == "tg-time":
        if unix_time > 0:
            entities.append(
                Entity(
                    "date_time",
                    offset,
                    length,
                    unix_time=unix_time,
                    date_time_format=argument or None,
                )
            )
    elif tag == "a":
        url = argument or inner.decode("utf-8", "replace")
        user_id = link_user_id(url)
        if user_id is not None:
            entities.append(Entity("text_mention", offset, length, user={"id": user_id}))
        else:
            checked = check_link(url)
            if checked:
                entities.append(Entity("text_link", offset, length, url=checked))
    elif tag == "pre":
        if same_span and last is not None and last.type == "code" and last.language:
            last.type = "pre"
        else:
            entities.append(Entity("pre", offset, length))
    elif tag == "code":
        if same_span and last is not None and last.type == "pre" and argument:
            last.language = argument
        else:
            entities.append(Entity("code", offset, length, language=argument or None))
    elif tag == "blockquote":
        kind = "expandable_blockquote" if argument else "blockquote"
        entities.append(Entity(kind, offset, length))


# --- MarkdownV2 (parse_markdown_v2) and legacy Markdown (parse_markdown) ------------------------

_MDV2_TYPE_NAMES = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "text_link": "TextUrl",
    "code": "Code",
    "pre": "Pre",
    "pre_code": "PreCode",
    "custom_emoji": "CustomEmoji",
    "blockquote": "BlockQuote",
}


def _reserved(ch: int) -> FormatError:
    return FormatError(
        f"Character '{chr(ch)}' is reserved and must be escaped with the preceding '\\'"
    )


def parse_markdown_v2(text: str) -> tuple[str, list[Entity]]:
    src = text.encode("utf-8")
    size = len(src)

    def at(k: int) -> int:
        return src[k] if k < size else 0

    out = bytearray()
    entities: list[Entity] = []
    utf16 = 0
    # [kind, argument, UTF-16 offset, byte offset in the source, byte position in the output]
    stack: list[list[Any]] = []
    have_quote = False
    can_start_quote = True

    def end_error() -> FormatError:
        kind, _arg, _off, byte_offset, _pos = stack[-1]
        return FormatError(
            f"Can't find end of {_MDV2_TYPE_NAMES[kind]} entity at byte offset {byte_offset}"
        )

    i = 0
    while i < size:
        c = src[i]
        if c == ord("\\") and 0 < at(i + 1) <= 126:
            i += 1
            utf16 += 1
            out.append(src[i])
            if src[i] != ord("\r"):
                can_start_quote = src[i] == ord("\n")
            i += 1
            continue
        reserved = b"_*[]()~`>#+-=|{}.!\n"
        if stack and stack[-1][0] in ("code", "pre", "pre_code"):
            reserved = b"`"
        if c not in reserved:
            if _is_first_code_unit(c):
                utf16 += 1 + (c >= 0xF0)
                if c != ord("\r"):
                    can_start_quote = False
            out.append(c)
            i += 1
            continue

        is_end = False
        if stack:
            top = stack[-1][0]
            if have_quote and c == ord("\n") and (i + 1 == size or at(i + 1) != ord(">")):
                is_end = True
            elif top == "bold":
                is_end = c == ord("*")
            elif top == "italic":
                is_end = c == ord("_") and at(i + 1) != ord("_")
            elif top == "code":
                is_end = c == ord("`")
            elif top in ("pre", "pre_code"):
                is_end = c == ord("`") and at(i + 1) == ord("`") and at(i + 2) == ord("`")
            elif top in ("text_link", "custom_emoji"):
                is_end = c == ord("]")
            elif top == "underline":
                is_end = c == ord("_") and at(i + 1) == ord("_")
            elif top == "strikethrough":
                is_end = c == ord("~")
            elif top == "spoiler":
                is_end = c == ord("|") and at(i + 1) == ord("|")
        if not is_end:
            kind: str | None
            argument = ""
            byte_offset = i
            if c == ord("_"):
                kind = "italic"
                if at(i + 1) == ord("_"):
                    kind = "underline"
                    i += 1
            elif c == ord("*"):
                kind = "bold"
            elif c == ord("~"):
                kind = "strikethrough"
            elif c == ord("|"):
                if at(i + 1) != ord("|"):
                    raise _reserved(c)
                i += 1
                kind = "spoiler"
            elif c == ord("["):
                kind = "text_link"
            elif c == ord("`"):
                if at(i + 1) == ord("`") and at(i + 2) == ord("`"):
                    i += 3
                    kind = "pre"
                    lang_end = i
                    while not _is_space(at(lang_end)) and at(lang_end) != ord("`"):
                        lang_end += 1
                    if i != lang_end and lang_end < size and at(lang_end) != ord("`"):
                        kind = "pre_code"
                        argument = src[i:lang_end].decode("utf-8", "replace")
                        i = lang_end
                    if at(i) in (ord("\n"), ord("\r")):
                        if at(i + 1) in (ord("\n"), ord("\r")) and at(i) != at(i + 1):
                            i += 2
                        else:
                            i += 1
                    i -= 1
                else:
                    kind = "code"
            elif c == ord("!"):
                if at(i + 1) != ord("["):
                    raise _reserved(c)
                i += 1
                kind = "custom_emoji"
            elif c == ord("\n"):
                utf16 += 1
                out.append(c)
                can_start_quote = True
                kind = None
            elif c == ord(">"):
                if not can_start_quote:
                    raise _reserved(c)
                if have_quote:
                    kind = None
                else:
                    kind = "blockquote"
                    have_quote = True
            else:
                raise _reserved(c)
            if kind is not None:
                stack.append([kind, argument, utf16, byte_offset, len(out)])
            i += 1
            continue

        # end of an entity
        kind = stack[-1][0]
        if c == ord("\n") and kind != "blockquote":
            prev_offset = stack[-1][3]
            if kind != "spoiler" or not (
                prev_offset == i - 2 or (prev_offset == i - 3 and out and out[-1] == ord("\r"))
            ):
                raise end_error()
            stack.pop()
            kind = stack[-1][0]
            if kind != "blockquote":
                raise end_error()
            kind = "expandable_blockquote"
        argument = stack[-1][1]
        skip = utf16 == stack[-1][2]
        new: Entity | None = None
        entity_offset = stack[-1][2]
        if kind in ("underline", "spoiler"):
            i += 1
        elif kind in ("pre", "pre_code"):
            i += 2
        elif kind == "text_link":
            if at(i + 1) != ord("("):
                url = out[stack[-1][4] :].decode("utf-8", "replace")
            else:
                i += 2
                url_begin = i
                raw = bytearray()
                while i < size and src[i] != ord(")"):
                    if src[i] == ord("\\") and 0 < at(i + 1) <= 126:
                        raw.append(src[i + 1])
                        i += 2
                        continue
                    raw.append(src[i])
                    i += 1
                if at(i) != ord(")"):
                    raise FormatError(f"Can't find end of a URL at byte offset {url_begin}")
                url = raw.decode("utf-8", "replace")
            user_id = link_user_id(url)
            if user_id is not None:
                new = Entity("text_mention", 0, 0, user={"id": user_id})
            else:
                checked = check_link(url)
                if not checked:
                    skip = True
                new = Entity("text_link", 0, 0, url=checked)
        elif kind == "custom_emoji":
            if at(i + 1) != ord("("):
                raise FormatError("The entity must contain a tg://emoji or tg://time URL")
            i += 2
            url_begin = i
            raw = bytearray()
            while i < size and src[i] != ord(")"):
                if src[i] == ord("\\") and 0 < at(i + 1) <= 126:
                    raw.append(src[i + 1])
                    i += 2
                    continue
                raw.append(src[i])
                i += 1
            if at(i) != ord(")"):
                raise FormatError(f"Can't find end of a URL at byte offset {url_begin}")
            match = re.match(r"^tg://emoji\?id=(\d+)$", raw.decode("utf-8", "replace"))
            if not match or int(match.group(1)) == 0:
                raise FormatError("Invalid tg://emoji or tg://time URL specified")
            new = Entity("custom_emoji", 0, 0, custom_emoji_id=match.group(1))
        elif kind in ("blockquote", "expandable_blockquote"):
            have_quote = False
            out.append(src[i])
            can_start_quote = True
            utf16 += 1
            skip = False
            new = Entity(kind, 0, 0)
        if new is None:
            if kind == "pre_code":
                new = Entity("pre", 0, 0, language=argument)
            else:
                new = Entity(kind, 0, 0)
        if not skip:
            new.offset = entity_offset
            new.length = utf16 - entity_offset
            entities.append(new)
        stack.pop()
        i += 1
    if have_quote:
        kind = "blockquote"
        if stack and stack[-1][0] == "spoiler" and stack[-1][3] == size - 2:
            stack.pop()
            kind = "expandable_blockquote"
        if stack and stack[-1][0] == "blockquote":
            length = utf16 - stack[-1][2]
            if length:
                entities.append(Entity(kind, stack[-1][2], length))
            stack.pop()
    if stack:
        raise end_error()
    sort_entities(entities)
    return out.decode("utf-8", "replace"), entities


def parse_markdown(text: str) -> tuple[str, list[Entity]]:
    """Legacy ``Markdown`` parse mode."""
    src = text.encode("utf-8")
    size = len(src)

    def at(k: int) -> int:
        return src[k] if k < size else 0

    out = bytearray()
    entities: list[Entity] = []
    utf16 = 0
    i = 0
    while i < size:
        c = src[i]
        if c == ord("\\") and at(i + 1) in b"_*`[" and at(i + 1):
            out.append(src[i + 1])
            utf16 += 1
            i += 2
            continue
        if c not in b"_*`[":
            utf16 += _utf16_units(c)
            out.append(c)
            i += 1
            continue
        begin = i
        end_char = ord("]") if c == ord("[") else c
        is_pre = False
        language = ""
        i += 1
        if c == ord("`") and at(i) == ord("`") and at(i + 1) == ord("`"):
            i += 2
            is_pre = True
            lang_end = i
            while not _is_space(at(lang_end)) and at(lang_end) != ord("`"):
                lang_end += 1
            if i != lang_end and lang_end < size and at(lang_end) != ord("`"):
                language = src[i:lang_end].decode("utf-8", "replace")
                i = lang_end
            if at(i) in (ord("\n"), ord("\r")):
                i += 2 if at(i + 1) in (ord("\n"), ord("\r")) and at(i) != at(i + 1) else 1
        offset = utf16
        while i < size and (
            src[i] != end_char or (is_pre and not (at(i + 1) == ord("`") and at(i + 2) == ord("`")))
        ):
            utf16 += _utf16_units(src[i])
            out.append(src[i])
            i += 1
        if i == size:
            raise FormatError(f"Can't find end of the entity starting at byte offset {begin}")
        if utf16 != offset:
            length = utf16 - offset
            if c == ord("_"):
                entities.append(Entity("italic", offset, length))
            elif c == ord("*"):
                entities.append(Entity("bold", offset, length))
            elif c == ord("["):
                if at(i + 1) != ord("("):
                    url = src[begin + 1 : i].decode("utf-8", "replace")
                else:
                    i += 2
                    raw = bytearray()
                    while i < size and src[i] != ord(")"):
                        raw.append(src[i])
                        i += 1
                    url = raw.decode("utf-8", "replace")
                user_id = link_user_id(url)
                checked = check_link(url)
                if user_id is not None:
                    entities.append(Entity("text_mention", offset, length, user={"id": user_id}))
                elif checked:
                    entities.append(Entity("text_link", offset, length, url=checked))
            elif is_pre:
                entities.append(Entity("pre", offset, length, language=language or None))
            else:
                entities.append(Entity("code", offset, length))
        if is_pre:
            i += 2
        i += 1
    sort_entities(entities)
    return out.decode("utf-8", "replace"), entities


# --- entities passed explicitly (Bot API get_text_entity) ---------------------------------------


def entities_from_json(value: Any) -> list[Entity]:
    """MessageEntity objects sent by a bot. Raises FormatError with the Bot API wording."""
    if not isinstance(value, list):
        raise FormatError("Expected an Array of MessageEntity")
    result = []
    for item in value:
        if not isinstance(item, dict):
            raise FormatError("Can't parse MessageEntity: expected an Object")
        kind = item.get("type")
        if not isinstance(kind, str):
            raise FormatError('Can\'t parse MessageEntity: Field "type" must be of type String')
        offset, length = item.get("offset"), item.get("length")
        if not isinstance(offset, int) or not isinstance(length, int):
            raise FormatError('Can\'t parse MessageEntity: Field "offset" must be a valid Number')
        if kind not in ALL_TYPES:
            raise FormatError("Can't parse MessageEntity: Unsupported type specified")
        entity = Entity(kind, offset, length)
        if kind == "pre":
            entity.language = item.get("language") or None
        elif kind == "text_link":
            url = item.get("url")
            if not isinstance(url, str):
                raise FormatError('Can\'t parse MessageEntity: Field "url" must be of type String')
            checked = check_link(url)
            if checked is None:
                raise FormatError("Entity Wrong HTTP URL")
            entity.url = checked
        elif kind == "text_mention":
            user = item.get("user")
            if not isinstance(user, dict) or not isinstance(user.get("id"), int):
                raise FormatError('Can\'t parse MessageEntity: Field "user" must be of type Object')
            entity.user = user
        elif kind == "custom_emoji":
            entity.custom_emoji_id = str(item.get("custom_emoji_id") or "")
        elif kind == "date_time":
            entity.unix_time = item.get("unix_time")
            entity.date_time_format = item.get("date_time_format")
        if kind in USER_TYPES:  # TDLib drops other entities a bot sends; it finds them itself
            result.append(entity)
    return result


# --- fix_formatted_text ------------------------------------------------------------------------

_REMOVED = {"\r", "\u0333", "\u033f", "\u030a", *(chr(c) for c in range(0x2028, 0x202F))}


def _clean(text: str, entities: list[Entity]) -> str:
    """clean_input_string_with_entities: control characters become spaces, '\\r' and a few
    invisible characters go; entity offsets follow."""
    units = [0]
    out = []
    new_units = [0]  # new UTF-16 offset at each old character boundary
    for ch in text:
        width = 2 if ord(ch) > 0xFFFF else 1
        units.append(units[-1] + width)
        if ch in _REMOVED:
            new_units.append(new_units[-1])
            continue
        if ord(ch) < 32 and ch != "\n":
            ch = " "
        out.append(ch)
        new_units.append(new_units[-1] + width)
    boundary = {u: n for u, n in zip(units, new_units, strict=True)}
    total = units[-1]
    for entity in entities:
        if entity.offset > total:
            raise FormatError(
                f"Entity begins after the end of the text at UTF-16 offset {entity.offset}"
            )
        if entity.end > total:
            raise FormatError(
                f"Entity beginning at UTF-16 offset {entity.offset} ends after the end of the "
                f"text at UTF-16 offset {entity.end}"
            )
        if entity.offset not in boundary or entity.end not in boundary:
            raise FormatError("Entity begins in a middle of a UTF-16 symbol")
        start = boundary[entity.offset]
        entity.length = boundary[entity.end] - start
        entity.offset = start
    return "".join(out)


def find_entities(text: str, *, skip_bot_commands: bool = False) -> list[Entity]:
    """Mentions, bot commands, hashtags, cashtags, URLs and e-mails Telegram finds by itself."""
    found: list[tuple[int, int, str]] = []  # (char start, char end, type)
    found += [(s, e, "mention") for s, e in _find_mentions(text)]
    if not skip_bot_commands:
        found += [(s, e, "bot_command") for s, e in _find_bot_commands(text)]
    found += [(s, e, "hashtag") for s, e in _find_tags(text, "#")]
    found += [(s, e, "cashtag") for s, e in _find_tags(text, "$")]
    found += _find_urls(text)
    prefix = [0]
    for ch in text:
        prefix.append(prefix[-1] + (2 if ord(ch) > 0xFFFF else 1))
    entities = [Entity(kind, prefix[s], prefix[e] - prefix[s]) for s, e, kind in found]
    sort_entities(entities)
    return _remove_intersecting(entities)


def _is_word(ch: str) -> bool:
    return ch == "_" or unicodedata.category(ch)[0] in ("L", "N")


def _is_ascii_word(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _scan(text: str, start: int, pred: Callable[[str], bool]) -> int:
    while start < len(text) and pred(text[start]):
        start += 1
    return start


def _find_mentions(text: str) -> list[tuple[int, int]]:
    result = []
    for match in re.finditer("@", text):
        at = match.start()
        if at and _is_word(text[at - 1]):
            continue
        end = _scan(text, at + 1, _is_ascii_word)
        name = text[at + 1 : end]
        if not 2 <= len(name) <= 32 or (end < len(text) and _is_word(text[end])):
            continue
        if len(name) < 4 and name.lower() not in ("gif", "nft", "pic", "ufc", "vid"):
            continue
        result.append((at, end))
    return result


def _find_bot_commands(text: str) -> list[tuple[int, int]]:
    result = []
    for match in re.finditer("/", text):
        at = match.start()
        if at and (_is_word(text[at - 1]) or text[at - 1] in "/<>"):
            continue
        end = _scan(text, at + 1, _is_ascii_word)
        if not 1 <= end - at - 1 <= 64:
            continue
        if end < len(text) and text[end] == "@":
            mention_end = _scan(text, end + 1, _is_ascii_word)
            if not 3 <= mention_end - end - 1 <= 32:
                continue
            end = mention_end
        if end < len(text) and (_is_word(text[end]) or text[end] in "/<>"):
            continue
        result.append((at, end))
    return result


def _is_hashtag_letter(ch: str) -> bool:
    if ch in "_\u200c\u00b7" or 0xD80 <= ord(ch) <= 0xDFF:
        return True
    return unicodedata.category(ch) in ("Lu", "Ll", "Lt", "Lm", "Lo", "Nd")


def _find_tags(text: str, sign: str) -> list[tuple[int, int]]:
    result = []
    for match in re.finditer(re.escape(sign), text):
        at = match.start()
        if at and (_is_hashtag_letter(text[at - 1]) or (sign == "$" and text[at - 1] == "$")):
            continue
        if sign == "#":
            end = _scan(text, at + 1, _is_hashtag_letter)
            body = text[at + 1 : end]
            if not body or (end < len(text) and text[end] == "#"):
                continue
            if not any(unicodedata.category(ch)[0] == "L" for ch in body[:256]):
                continue
            result.append((at, min(end, at + 1 + 256)))
        else:
            end = at + 6 if text.startswith("1INCH", at + 1) else _scan(text, at + 1, str.isupper)
            if not 1 <= end - at - 1 <= 8 or not text[at + 1 : end].isascii():
                continue
            if end < len(text) and (_is_hashtag_letter(text[end]) or text[end] == "$"):
                continue
            result.append((at, end))
    return result


# A subset of TDLib's list of top-level domains it links without a scheme ("common TLDs").
_COMMON_TLDS = set(
    "com org net edu gov mil int info biz name pro aero coop museum mobi asia tel travel jobs cat "
    "io ai app dev page cloud online site store tech xyz me co tv cc ly to sh gg fm am is it py md "
    "rs so la ws nu su ru ua by kz uk de fr es pt nl be ch at se no fi dk pl cz sk hu ro bg gr tr "
    "il ir in cn jp kr tw hk sg my id th vn ph au nz ca us mx br ar cl pe ve za ng eg ma ke eu "
    "blog news shop live space website fun club top link click email today world run".split()
)

_URL_CANDIDATE = re.compile(  # starts only where a word starts: linear on long words
    r"(?<![\w@/.$#])(?:(?:https?|ftp|tonsite)://)?(?:[^\s/?#@<>\"']+@)?"
    r"(?:[\w\-]+\.)+[\w\-]+(?::\d{1,5})?(?:[/?#][^\s<>\"]*)?",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"^[a-zA-Z0-9_.+\-]+@[a-zA-Z0-9\-]+(?:\.[a-zA-Z0-9\-]+)*\.([a-zA-Z]{2,})$")


def _find_urls(text: str) -> list[tuple[int, int, str]]:
    result: list[tuple[int, int, str]] = []
    if "." not in text:
        return result
    for match in _URL_CANDIDATE.finditer(text):
        start, candidate = match.start(), match.group(0)
        if start and (_is_word(text[start - 1]) or text[start - 1] in "@/.$#"):
            continue
        email = _EMAIL.match(candidate.rstrip(".,;:!?"))
        if email and email.group(1).lower() in _COMMON_TLDS:
            result.append((start, start + len(candidate.rstrip(".,;:!?")), "email"))
            continue
        fixed = _fix_url(candidate)
        if fixed:
            result.append((start, start + len(fixed), "url"))
    return result


def _fix_url(url: str) -> str:
    rest = url
    has_protocol = False
    scheme = re.match(r"^(https?|ftp|tonsite)://", url, re.IGNORECASE)
    if scheme:
        rest = url[scheme.end() :]
        has_protocol = True
    cut = min((rest.find(ch) for ch in "/?#" if ch in rest), default=len(rest))
    domain, path = rest[:cut], rest[cut:]
    domain = domain.rsplit("@", 1)[-1].split(":", 1)[0]
    balance = [0, 0, 0]
    keep = 0
    for keep, ch in enumerate(path + "\0"):  # noqa: B007
        if ch in "([{":
            balance["([{".index(ch)] += 1
        elif ch in ")]}":
            balance[")]}".index(ch)] -= 1
        if ch == "\0" or min(balance) < 0:
            break
    while keep > 0 and path[keep - 1] in ".:;,('?!`":
        keep -= 1
    url = url[: len(url) - (len(path) - keep)]
    parts = domain.split(".")
    if len(parts) < 2 or any(not p or len(p) >= 64 or p.endswith("-") for p in parts):
        return ""
    if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts):
        return url
    tld = parts[-1]
    if all(p.isdigit() for p in parts) or len(tld) <= 1 or "_" in tld or "-" in tld:
        return ""
    if not has_protocol and tld.lower() not in _COMMON_TLDS:
        return ""
    if "_" in parts[-2]:
        return ""
    return url


def fix_formatted_text(
    text: str,
    entities: list[Entity],
    *,
    allow_empty: bool,
    skip_new_entities: bool = False,
    skip_bot_commands: bool = False,
) -> tuple[str, list[Entity]]:
    """Cleans the text, fixes entities, trims whitespace and adds the entities Telegram finds."""
    for entity in entities:
        if not 0 <= entity.offset <= 1_000_000:
            raise FormatError(f"Receive an entity with incorrect offset {entity.offset}")
        if not 0 <= entity.length <= 1_000_000:
            raise FormatError(f"Receive an entity with incorrect length {entity.length}")
    entities = fix_entities(remove_empty_entities(entities))
    text = _clean(text, entities)
    entities = remove_empty_entities(entities)
    stripped = text.rstrip(" \n")
    if not stripped:
        if allow_empty:
            return "", []
        raise FormatError("Text must be non-empty")
    entities = fix_entities(entities)
    last = utf16_len(stripped)
    text = stripped
    kept = []
    for entity in entities:
        if entity.offset >= last:
            continue
        entity.length = min(entity.length, last - entity.offset)
        kept.append(entity)
    entities = kept
    sort_entities(entities)
    first_entity = entities[0].offset if entities else len(text)
    lead = 0
    while lead < first_entity and lead < len(text) and text[lead] in " \n":
        lead += 1
    if lead:
        text = text[lead:]
        for entity in entities:
            entity.offset -= lead
    if not skip_new_entities:
        entities = _merge_new_entities(
            entities, find_entities(text, skip_bot_commands=skip_bot_commands)
        )
    return text, entities


def parse_text(
    text: str, parse_mode: str | None, entities_json: Any, *, allow_empty: bool
) -> tuple[str, list[Entity]]:
    """Bot API get_formatted_text + TDLib fix_formatted_text.

    Raises FormatError with the complete description after ``Bad Request: ``-less wording, e.g.
    ``Can't parse entities: Unsupported start tag "br" at byte offset 3``.
    """
    mode = (parse_mode or "").lower()
    if text and mode and mode != "none":
        parsers = {"html": parse_html, "markdownv2": parse_markdown_v2, "markdown": parse_markdown}
        if mode not in parsers:
            raise FormatError("Unsupported parse_mode")
        try:
            plain, entities = parsers[mode](text)
        except FormatError as exc:
            raise FormatError(f"Can't parse entities: {exc.message}") from None
    else:
        plain = text
        entities = entities_from_json(entities_json) if entities_json is not None else []
    return fix_formatted_text(plain, entities, allow_empty=allow_empty)
