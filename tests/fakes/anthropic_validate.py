"""Request validation of the fake Anthropic Messages API (400s worded like the real ones)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

from tests.fakes.anthropic_cache import (
    BlockTokens,
    Turn,
    estimate_block_tokens,
    merge_turns,
    normalize_content,
    prefix_items,
)

JSON = dict[str, Any]

_SIGNING_KEY = b"keel-fake-anthropic-thinking-signature"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_EFFORTS = ("low", "medium", "high", "xhigh", "max")
_THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"

CREATE_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "stream", "system", "tools", "tool_choice", "thinking",
        "metadata", "stop_sequences", "cache_control", "container", "diagnostics",
        "inference_geo", "output_config", "service_tier", "speed", "user_profile_id",
        # beta fields (sent with an anthropic-beta header)
        "context_management", "mcp_servers", "compaction", "thread", "betas", "billing_policy",
        "fallbacks", "fallback_credit_token",
    }
)  # fmt: skip
COUNT_FIELDS = CREATE_FIELDS - {"max_tokens", "stream", "stop_sequences", "metadata"}
_GONE_SAMPLING = ("temperature", "top_p", "top_k")


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request_error", message)


def sign_thinking(thinking: str) -> str:
    """The signature the fake gives a thinking block (verifiable, opaque-looking, stable)."""
    mac = hmac.new(_SIGNING_KEY, thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"\x12\x0cfake-thinking" + mac[:24]).decode()


def signature_ok(block: JSON) -> bool:
    sig = block.get("signature")
    return isinstance(sig, str) and hmac.compare_digest(
        sig, sign_thinking(str(block.get("thinking", "")))
    )


@dataclass(frozen=True)
class ModelRules:
    """What validation needs to know about a model."""

    id: str
    max_tokens: int
    context_window: int
    thinking_enabled: bool
    thinking_adaptive: bool
    prefill: bool


def validate(
    body: object,
    model: ModelRules,
    *,
    count_only: bool,
    require_first_user: bool,
    tokens: BlockTokens = estimate_block_tokens,
) -> None:
    if not isinstance(body, dict):
        raise invalid("Input should be a valid dictionary or object to extract fields from")
    for name in _GONE_SAMPLING:
        if name in body:
            raise invalid(f"`{name}` is deprecated for this model.")
    allowed = COUNT_FIELDS if count_only else CREATE_FIELDS
    for name in body:
        if name not in allowed:
            raise invalid(f"{name}: Extra inputs are not permitted")
    if not count_only:
        _check_max_tokens(body, model)
    _check_system(body.get("system"))
    tool_names = _check_tools(body.get("tools"))
    _check_tool_choice(body, tool_names)
    thinking = _check_thinking(body, model, count_only)
    _check_output_config(body.get("output_config"))
    turns = _check_messages(body, require_first_user)
    _check_tool_pairing(turns)
    if thinking == "enabled" or thinking == "adaptive":
        _check_thinking_history(turns, strict_start=thinking == "enabled")
    if turns and turns[-1].role == "assistant" and not model.prefill:
        raise invalid(
            "This model does not support assistant message prefill. "
            "The conversation must end with a user message."
        )
    _check_cache_control(body)
    total = sum(item.tokens for item in prefix_items(body, tokens))
    if total > model.context_window:
        raise invalid(f"prompt is too long: {total} tokens > {model.context_window} maximum")


def thinking_type(body: JSON) -> str | None:
    thinking = body.get("thinking")
    return str(thinking.get("type")) if isinstance(thinking, dict) else None


def _check_max_tokens(body: JSON, model: ModelRules) -> None:
    if "max_tokens" not in body:
        raise invalid("max_tokens: Field required")
    value = body["max_tokens"]
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid("max_tokens: Input should be a valid integer")
    if value < 0:
        raise invalid("max_tokens: Input should be greater than or equal to 0")
    if value > model.max_tokens:
        raise invalid(
            f"max_tokens: {value} > {model.max_tokens}, which is the maximum allowed number of "
            f"output tokens for {model.id}"
        )


def _check_system(system: object) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise invalid("system: Input should be a valid string")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid(f"system.{i}.type: Input should be 'text'")
        if not isinstance(block.get("text"), str):
            raise invalid(f"system.{i}.text: Field required")
        if not block["text"]:
            raise invalid("system: text content blocks must be non-empty")


def _check_tools(tools: object) -> set[str]:
    names: set[str] = set()
    if tools is None:
        return names
    if not isinstance(tools, list):
        raise invalid("tools: Input should be a valid list")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid(f"tools.{i}: Input should be a valid dictionary")
        name = tool.get("name")
        custom = tool.get("type") in (None, "custom")
        if not isinstance(name, str):
            raise invalid(f"tools.{i}.custom.name: Field required")
        if custom and not _TOOL_NAME.match(name):
            raise invalid(
                f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            )
        if custom and not isinstance(tool.get("input_schema"), dict):
            raise invalid(f"tools.{i}.custom.input_schema: Field required")
        if name in names:
            raise invalid("tools: Tool names must be unique.")
        names.add(name)
    return names


def _check_tool_choice(body: JSON, tool_names: set[str]) -> None:
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise invalid(
            "tool_choice: Input tag found using 'type' does not match any of the expected tags: "
            "'auto', 'any', 'tool', 'none'"
        )
    if not tool_names and choice.get("type") != "none":
        raise invalid("tool_choice may only be specified while providing tools.")
    if choice.get("type") == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise invalid("tool_choice.tool.name: Field required")
        if name not in tool_names:
            raise invalid(f"Tool '{name}' not found in provided tools")


def _check_thinking(body: JSON, model: ModelRules, count_only: bool) -> str | None:
    thinking = body.get("thinking")
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive", "between_tools"):
        raise invalid(
            "thinking: Input tag found using 'type' does not match any of the expected tags: "
            "'adaptive', 'between_tools', 'disabled', 'enabled'"
        )
    assert isinstance(thinking, dict)
    if kind == "enabled":
        if not model.thinking_enabled:
            raise invalid(
                '"thinking.type.enabled" is not supported for this model. Use '
                '"thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'
            )
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise invalid("thinking.enabled.budget_tokens: Field required")
        if budget < 1024:
            raise invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if not count_only and budget >= int(body.get("max_tokens", 0)):
            raise invalid(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                f"documentation at {_THINKING_DOCS}#max-tokens-and-context-window-size"
            )
    if kind in ("adaptive", "between_tools") and not model.thinking_adaptive:
        raise invalid(f"{kind} thinking is not supported on this model")
    choice = body.get("tool_choice")
    forced = isinstance(choice, dict) and choice.get("type") in ("any", "tool")
    if kind in ("enabled", "adaptive") and forced:
        raise invalid("Thinking may not be enabled when tool_choice forces tool use.")
    return str(kind)


def _check_output_config(config: object) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise invalid("output_config: Input should be a valid dictionary")
    effort = config.get("effort")
    if effort is not None and effort not in _EFFORTS:
        raise invalid(
            "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
        )


_USER_TYPES = {"text", "image", "document", "tool_result", "search_result", "container_upload"}
_ASSISTANT_TYPES = {
    "text", "tool_use", "thinking", "redacted_thinking", "server_tool_use",
    "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
    "mcp_tool_use", "mcp_tool_result", "container_upload", "compaction",
}  # fmt: skip


def _check_messages(body: JSON, require_first_user: bool) -> list[Turn]:
    if "messages" not in body:
        raise invalid("messages: Field required")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise invalid("messages: Input should be a valid list")
    if not messages:
        raise invalid("messages: at least one message is required")
    last = len(messages) - 1
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise invalid(f"messages.{i}.content: Field required")
        content = message["content"]
        if not isinstance(content, (str, list)):
            raise invalid(f"messages.{i}.content: Input should be a valid string or list")
        if not content and not (i == last and role == "assistant"):
            raise invalid(
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        allowed = _USER_TYPES if role == "user" else _ASSISTANT_TYPES
        for j, block in enumerate(normalize_content(content)):
            kind = block.get("type")
            if kind not in allowed:
                raise invalid(
                    f"messages.{i}.content.{j}.type: Input tag '{kind}' found using 'type' does "
                    f"not match any of the expected tags: {', '.join(sorted(allowed))}"
                )
            if kind == "text" and not block.get("text"):
                raise invalid("messages: text content blocks must be non-empty")
            if kind in ("image", "document"):
                _check_media_block(block, f"messages.{i}.content.{j}")
        if i == last and role == "assistant":
            blocks = normalize_content(content)
            if blocks and blocks[-1].get("type") == "text":
                text = str(blocks[-1].get("text", ""))
                if text != text.rstrip():
                    raise invalid(
                        "messages: final assistant content cannot end with trailing whitespace"
                    )
    if require_first_user and messages[0].get("role") != "user":
        raise invalid('messages: first message must use the "user" role')
    return merge_turns(messages)


_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_IMAGE_MAGIC = {
    "image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"), "image/webp": (b"RIFF",),
}
MAX_IMAGE_BASE64_BYTES = 5 * 1024 * 1024


def _check_media_block(block: JSON, where: str) -> None:
    """An image or document block: its source, media type and bytes (base64 sources are
    decoded and checked against their media type, as the real API does)."""
    kind = block["type"]
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalid(f"{where}.{kind}.source: Field required")
    tags = ("base64", "file", "url") if kind == "image" else (
        "base64", "content", "file", "text", "url")
    stype = source.get("type")
    if stype not in tags:
        raise invalid(
            f"{where}.{kind}.source: Input tag '{stype}' found using 'type' does not match any "
            f"of the expected tags: {', '.join(repr(t) for t in tags)}"
        )
    if stype != "base64":
        return
    media_type = source.get("media_type")
    allowed = _IMAGE_TYPES if kind == "image" else ("application/pdf",)
    if media_type not in allowed:
        raise invalid(
            f"{where}.{kind}.source.base64.media_type: Input should be "
            + " or ".join(", ".join(repr(t) for t in allowed).rsplit(", ", 1))
        )
    data = source.get("data")
    if not isinstance(data, str):
        raise invalid(f"{where}.{kind}.source.base64.data: Field required")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise invalid(f"{where}.{kind}.source.base64.data: Invalid base64 data") from None
    if kind == "image":
        if len(data) > MAX_IMAGE_BASE64_BYTES:
            raise invalid(f"{where}.image.source.base64.data: image exceeds 5 MB maximum: "
                          f"{len(data)} bytes > {MAX_IMAGE_BASE64_BYTES} bytes")
        if not raw.startswith(_IMAGE_MAGIC[media_type]):
            raise invalid(f"{where}.image.source.base64.data: Image does not match the provided "
                          "media type " + media_type)
    elif not raw.startswith(b"%PDF-"):
        raise invalid(f"{where}.document.source.base64.data: The PDF specified was not valid.")


def _check_tool_pairing(turns: list[Turn]) -> None:
    seen_ids: set[str] = set()
    previous_tool_ids: list[str] = []
    for t, turn in enumerate(turns):
        if turn.role == "assistant":
            ids: list[str] = []
            for block, (m, j) in zip(turn.blocks, turn.origins, strict=True):
                if block.get("type") == "tool_use":
                    tool_id = str(block.get("id"))
                    if tool_id in seen_ids:
                        raise invalid(f"messages.{m}.content.{j}: `tool_use` ids must be unique")
                    seen_ids.add(tool_id)
                    ids.append(tool_id)
            nxt = turns[t + 1] if t + 1 < len(turns) else None
            if ids:
                answered = set()
                if nxt is not None:
                    answered = {
                        str(b.get("tool_use_id"))
                        for b in nxt.blocks
                        if b.get("type") == "tool_result"
                    }
                missing = [i for i in ids if i not in answered]
                if missing:
                    raise invalid(
                        f"messages.{_last_origin(turn)}: `tool_use` ids were found without "
                        f"`tool_result` blocks immediately after: {', '.join(missing)}. Each "
                        "`tool_use` block must have a corresponding `tool_result` block in the "
                        "next message."
                    )
            previous_tool_ids = ids
            continue
        leading = True
        for k, (block, (m, j)) in enumerate(zip(turn.blocks, turn.origins, strict=True)):
            if block.get("type") != "tool_result":
                leading = False
                continue
            tool_use_id = str(block.get("tool_use_id"))
            if tool_use_id not in previous_tool_ids:
                raise invalid(
                    f"messages.{m}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {tool_use_id}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )
            if not leading or k >= len(previous_tool_ids):
                raise invalid(
                    f"messages.{turn.first_message}: Did not find {len(previous_tool_ids)} "
                    "`tool_result` block(s) at the beginning of this message. Messages following "
                    "`tool_use` blocks must begin with a matching number of `tool_result` blocks."
                )
        previous_tool_ids = []


def _last_origin(turn: Turn) -> int:
    return turn.origins[-1][0] if turn.origins else turn.first_message


def _check_thinking_history(turns: list[Turn], *, strict_start: bool) -> None:
    for turn in turns:
        if turn.role != "assistant":
            continue
        kinds = [b.get("type") for b in turn.blocks]
        has_thinking = any(k in ("thinking", "redacted_thinking") for k in kinds)
        if has_thinking and kinds[0] not in ("thinking", "redacted_thinking"):
            m, j = turn.origins[0]
            raise invalid(
                f"messages.{m}.content.{j}: If an assistant message contains any thinking blocks, "
                f"the first block must be thinking or redacted_thinking. Found {kinds[0]}."
            )
        for block, (m, j) in zip(turn.blocks, turn.origins, strict=True):
            if block.get("type") != "thinking":
                continue
            if "signature" not in block:
                raise invalid(f"messages.{m}.content.{j}.thinking.signature: Field required")
            if not signature_ok(block):
                raise invalid(f"messages.{m}.content.{j}: Invalid `signature` in `thinking` block")
    # In a tool-use loop, the last assistant turn must start with its thinking block.
    if strict_start and len(turns) >= 2 and turns[-1].role == "user":
        last_user, assistant = turns[-1], turns[-2]
        in_loop = bool(last_user.blocks) and last_user.blocks[0].get("type") == "tool_result"
        first = assistant.blocks[0].get("type") if assistant.blocks else None
        if in_loop and first not in ("thinking", "redacted_thinking"):
            m, j = assistant.origins[0]
            raise invalid(
                f"messages.{m}.content.{j}.type: Expected `thinking` or `redacted_thinking`, but "
                f"found `{first}`. When `thinking` is enabled, a final `assistant` message must "
                "start with a thinking block (preceeding the lastmost set of `tool_use` and "
                "`tool_result` blocks). We recommend you include thinking blocks from previous "
                "turns. To avoid this requirement, disable `thinking`. Please consult our "
                f"documentation at {_THINKING_DOCS}"
            )


def _check_cache_control(body: JSON) -> None:
    found: list[tuple[str, JSON]] = []
    for item in prefix_items(body):
        if item.cache_control is not None:
            found.append((item.location, item.cache_control))
    for location, cc in found:
        if cc.get("type") != "ephemeral":
            raise invalid(f"{location}.cache_control.type: Input should be 'ephemeral'")
        if cc.get("ttl", "5m") not in ("5m", "1h"):
            raise invalid(f"{location}.cache_control.ephemeral.ttl: Input should be '5m' or '1h'")
    if len(found) > 4:
        raise invalid(
            f"A maximum of 4 blocks with cache_control may be provided. Found {len(found)}."
        )
    seen_5m = False
    for location, cc in found:
        ttl = cc.get("ttl", "5m")
        if ttl == "1h" and seen_5m:
            raise invalid(
                f"{location}: a cache_control block with ttl='1h' cannot come after a "
                "cache_control block with ttl='5m'."
            )
        seen_5m = seen_5m or ttl == "5m"


def impossible_reply(content: list[JSON], stop_reason: str | None, body: JSON) -> str | None:
    """Why a scripted reply is one the real model could not give to this request (a test bug)."""
    names = {str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict)}
    calls = [b.get("name") for b in content if b.get("type") == "tool_use"]
    for name in calls:
        if name not in names:
            return f"scripted tool_use {name!r} is not among the request's tools {sorted(names)}"
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "none" and calls:
        return "scripted tool_use, but the request has tool_choice none"
    if choice.get("type") in ("any", "tool") and not calls and stop_reason != "refusal":
        return f"the request forces tool use ({choice}) but the scripted reply calls no tool"
    if choice.get("type") == "tool" and any(n != choice.get("name") for n in calls):
        return f"the request forces tool {choice.get('name')!r}, the script calls {calls}"
    return None
