"""Built-in agents. Users add their own (or override these by name) in keel.toml."""

from __future__ import annotations

from importlib import resources

from agents.spec import AgentSpec, Limits


def _read(name: str) -> str:
    return resources.files("agents.catalog").joinpath(f"{name}.md").read_text("utf-8").strip()


def _prompt(name: str) -> str:
    """An agent's own prompt followed by the house rules every built-in agent shares."""
    return f"{_read(name)}\n\n{_read('house_rules')}"


def builtin_agents(defaults: Limits) -> dict[str, AgentSpec]:
    return {
        "assistant": AgentSpec(
            name="assistant",
            description="General help: questions, writing, explanations, the current time, "
            "reading a web page the user names.",
            system=_prompt("assistant"),
            tools=("get_current_time", "fetch_url", "escalate_to_human"),
            limits=defaults,
        ),
        "researcher": AgentSpec(
            name="researcher",
            description="Research that needs reading several web pages and citing sources.",
            system=_prompt("researcher"),
            tools=("fetch_url", "get_current_time", "escalate_to_human"),
            limits=defaults.overridden(max_steps=max(defaults.max_steps, 20)),
        ),
        "briefing": AgentSpec(
            name="briefing",
            description="Scheduled briefings: a short digest of named sources for today.",
            system=_prompt("briefing"),
            tools=("get_current_time", "fetch_url", "escalate_to_human"),
            limits=defaults,
            pattern="plan_execute",
        ),
    }
