"""Resolve a turn: what the model's answer means for the run, and the final output's validation."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from agents.model.types import ModelResponse

TurnKind = Literal["tools", "final", "truncated", "refused", "empty"]

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True)
class Turn:
    kind: TurnKind
    text: str
    tool_uses: list[dict[str, Any]]


def classify(response: ModelResponse) -> Turn:
    tool_uses = response.tool_uses
    text = response.text.strip()
    if response.stop_reason == "refusal":
        return Turn("refused", text, [])
    if tool_uses and response.stop_reason != "max_tokens":
        return Turn("tools", text, tool_uses)
    if response.stop_reason == "max_tokens":
        # A tool call cut mid-arguments cannot be run; cut text is still worth showing.
        return Turn("truncated", text, [])
    if not text:
        return Turn("empty", "", [])
    return Turn("final", text, [])


@dataclass(frozen=True)
class OutputCheck:
    data: BaseModel | None
    error: str | None


def validate_output(text: str, output_type: type[BaseModel] | None) -> OutputCheck:
    """Plain text passes as is; a declared output type must parse from the answer's JSON."""
    if output_type is None:
        return OutputCheck(None, None)
    raw = text.strip()
    fenced = _FENCE.match(raw)
    if fenced:
        raw = fenced.group(1)
    try:
        return OutputCheck(output_type.model_validate(json.loads(raw)), None)
    except json.JSONDecodeError as exc:
        return OutputCheck(None, f"the answer is not JSON ({exc.msg} at position {exc.pos})")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        return OutputCheck(None, f"the answer does not match the required shape: {problems}")


def repair_request(error: str, output_type: type[BaseModel]) -> dict[str, Any]:
    schema = json.dumps(output_type.model_json_schema(), separators=(",", ":"))
    return {
        "role": "user",
        "content": [{"type": "text", "text": (
            f"[keel] Your final answer could not be used: {error}. Reply with only a JSON object "
            f"matching this JSON schema, nothing else: {schema}"
        )}],
    }


def close_transcript(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """History that stays valid after a run stopped early: every tool_use answered, ending with
    an assistant message that says what happened."""
    out = list(messages)
    if out and out[-1]["role"] == "assistant":
        pending = [b for b in out[-1]["content"] if b.get("type") == "tool_use"]
        if pending:
            out.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": b["id"], "is_error": True,
                 "content": json.dumps({"error": "not_run", "message": note})}
                for b in pending
            ]})
    if not out or out[-1]["role"] == "user":
        out.append({"role": "assistant", "content": [{"type": "text", "text": f"({note})"}]})
    return out
