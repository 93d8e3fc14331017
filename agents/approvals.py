"""Approvals before risky tools: a call that needs one parks its run until an approver answers.

A tool declares ``needs_approval=True``; an agent in keel.toml can require approval for more of
its tools (``approve = [...]``) or waive it (``no_approval = [...]``), and name who may approve
(``approvers = [ids]``; a schedule may name its own). Before such a call runs, the tool hook
(``agents/tools/invoke.py``) answers with an approval escalation instead of running it; the run
parks as ``waiting_human`` like any question, with the call's id as the escalation's tool_use_id.
The answer settles that one call (``settle``): Approve runs it — in the resumed run, with the
same request key, so a side effect is stored and done once however often the resume is retried —
and Deny answers the model with an error result it can reason about. Expiry ends the run.
"""

from __future__ import annotations

from typing import Any

from agents.config import KeelFile
from agents.tools.approval import APPROVE, APPROVED, DENY, EXEMPT, PENDING, REQUIRED
from agents.tools.contract import ToolCall, ToolCatalog, ToolContext, ToolOutcome
from agents.tools.errors import ToolError

__all__ = ["APPROVE", "DENY", "PENDING", "approvers_for", "clear_unasked", "code_block",
           "extras_for", "settle"]


def extras_for(keel_file: KeelFile, agent: str) -> dict[str, Any]:
    """What the tool hook needs to know about one agent's approvals (from keel.toml)."""
    cfg = keel_file.agents.get(agent)
    return {REQUIRED: frozenset(cfg.approve) if cfg else frozenset(),
            EXEMPT: frozenset(cfg.no_approval) if cfg else frozenset()}


def approvers_for(keel_file: KeelFile, agent: str, request_key: str | None) -> list[int] | None:
    """Who may approve a call of this run: the schedule's ``approvers`` for a scheduled run, else
    the agent's; None means the default (the owner and admins)."""
    if request_key and request_key.startswith("fire:"):
        name = request_key.split(":", 2)[1]
        for job in keel_file.schedules:
            if job.name == name and job.approvers is not None:
                return list(job.approvers)
    cfg = keel_file.agents.get(agent)
    return list(cfg.approvers) if cfg is not None and cfg.approvers is not None else None


def code_block(text: str) -> str:
    """``text`` as a Markdown code block that nothing inside it can close: the fence is longer
    than any run of backticks in the text."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def denied(name: str, answered_by: str | None) -> ToolOutcome:
    who = f" ({answered_by})" if answered_by else ""
    return ToolOutcome(is_error=True, content=ToolError(
        "denied", f"The person asked to approve this call{who} denied it: {name} did not run.",
        f"Do not call {name} again with the same arguments. Tell the person what you were "
        "trying to do, or ask what they want instead.").content())


def not_asked(name: str) -> ToolOutcome:
    return ToolOutcome(is_error=True, content=ToolError(
        "not_approved", f"{name} needs a person's approval and was not run: only one call is put to "
        "the approver at a time.", f"Call {name} again if it is still needed.").content())


async def settle(messages: list[dict[str, Any]], tool_use_id: str, *, approved: bool,
                 answered_by: str | None, catalog: ToolCatalog,
                 ctx: ToolContext) -> list[dict[str, Any]]:
    """The parked messages with the approved call's real result (it runs now) or a denial in
    place of its placeholder. Other calls of that turn still waiting for approval are answered
    as not run (the model may call them again, and each will be asked for)."""
    out = [dict(m) for m in messages]
    calls = {b["id"]: b for m in out if m["role"] == "assistant"
             for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use"}
    last = out[-1]
    blocks = []
    for block in last["content"]:
        if block.get("type") == "tool_result" and block.get("content") == PENDING:
            use = calls.get(block["tool_use_id"], {})
            name = str(use.get("name", "the tool"))
            if block["tool_use_id"] != tool_use_id:
                outcome = not_asked(name)
            elif approved:
                ctx.extras[APPROVED] = frozenset({*ctx.extras.get(APPROVED, ()), tool_use_id})
                outcome = await catalog.invoke(
                    ToolCall(id=tool_use_id, name=name, input=dict(use.get("input") or {})), ctx)
            else:
                outcome = denied(name, answered_by)
            block = outcome.to_block(block["tool_use_id"])
        blocks.append(block)
    out[-1] = {**last, "content": blocks}
    return out


def clear_unasked(messages: list[dict[str, Any]], answered_id: str) -> list[dict[str, Any]]:
    """After a question's answer: calls of the same turn still waiting for approval are
    answered as not run (a parked turn asks one thing at a time)."""
    out = [dict(m) for m in messages]
    calls = {b["id"]: b for m in out if m["role"] == "assistant"
             for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use"}
    last = out[-1]
    out[-1] = {**last, "content": [
        not_asked(str(calls.get(b["tool_use_id"], {}).get("name", "the tool"))).to_block(
            b["tool_use_id"])
        if b.get("type") == "tool_result" and b.get("content") == PENDING
        and b["tool_use_id"] != answered_id else b
        for b in last["content"]]}
    return out
