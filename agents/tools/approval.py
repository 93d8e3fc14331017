"""The tool side of approvals: which calls must wait for a person, and what they answer meanwhile.

The hook in ``invoke.execute`` asks ``needs_approval`` after a call's arguments are valid and
before it runs; a call that must wait answers ``ask(...)``: a placeholder result carrying an
approval escalation, which parks the run. ``agents/approvals.py`` settles it when the answer
comes (and reads keel.toml for who may approve).
"""

from __future__ import annotations

import json
from typing import Any

from agents.tools.contract import EscalationRequest, ToolContext, ToolOutcome

APPROVE, DENY = "Approve", "Deny"
PENDING = "[not run yet: waiting for a person to approve this call]"
"""The placeholder result of a parked call; settled (run or denied) before the model reads on."""
REQUIRED, EXEMPT, APPROVED = "approval_required", "approval_exempt", "approved_calls"
"""``ToolContext.extras`` keys: tool names that need approval here beyond their declaration,
names whose approval is waived here, and tool_use ids already approved."""
ARGS_SHOWN_CHARS = 1500
"""The most of a call's arguments an approval question shows (the rest is cut, and says so)."""


def needs_approval(name: str, declared: bool, ctx: ToolContext, call_id: str) -> bool:
    """Whether this call must wait for an approver before it runs."""
    required = declared or name in ctx.extras.get(REQUIRED, ())
    return required and name not in ctx.extras.get(EXEMPT, ()) and \
        call_id not in ctx.extras.get(APPROVED, ())


def ask(name: str, arguments: dict[str, Any]) -> ToolOutcome:
    """The placeholder outcome that parks the run and asks for approval of this exact call."""
    return ToolOutcome(content=PENDING, escalation=EscalationRequest(
        reason=name, context=shown_arguments(arguments), options=(APPROVE, DENY),
        kind="approval"))


def shown_arguments(arguments: dict[str, Any]) -> str:
    """The call's arguments as a person reads them: pretty JSON, cut at ARGS_SHOWN_CHARS."""
    text = json.dumps(arguments, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    if len(text) > ARGS_SHOWN_CHARS:
        text = text[:ARGS_SHOWN_CHARS] + f"\n… ({len(text) - ARGS_SHOWN_CHARS} more characters)"
    return text
