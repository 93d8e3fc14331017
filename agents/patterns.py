"""What the playbook patterns add to a run, assembled once per runtime.

- memory: the person's facts (``remember``/``recall``/``forget``, agents/tools/memory.py)
- retrieval: the corpus for ``search_docs``, and documents injected into a narrow agent's
  system prompt (``inject_docs``), so they sit inside the cached prefix
- reflexion: the agent's graders (agents/reflexion.py) — of its answer, of its tools' results
  (keel.toml's ``graders`` over each tool's own declaration) and the checks its planner may
  attach to plan steps (``step_graders``) — handed to the executor's loop
- research: the ``research`` tool's fan-out of child runs (agents/research.py)

The runtime calls ``prepare`` for the agent of every run (new or resumed), ``extras`` for its
tool context, ``graders`` for its loop's hooks and ``replay_inputs`` for its trace.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agents.patterns_config import GraderConfig
from agents.reflexion import Grader, ToolGraders, graders_for_replay
from agents.research import RESEARCH_EXTRA, FanOut
from agents.retrieval import Corpus, inject_block
from agents.spec import AgentSpec
from agents.tools.docs import DOCS_EXTRA
from agents.tools.memory import MEMORY_EXTRA
from storage.docs_index import DocsIndex
from storage.memory import MemoryRepository

if TYPE_CHECKING:
    from agents.run import Run
    from agents.runtime import Runtime


class Patterns:
    def __init__(self, runtime: Runtime, *, request_type: Any) -> None:
        self.runtime = runtime
        self.request_type = request_type
        self.memory = MemoryRepository(runtime.db)

    @functools.cached_property
    def corpus(self) -> Corpus | None:
        config = self.runtime.keel_file.retrieval
        if config is None:
            return None
        return Corpus(DocsIndex(self.runtime.db), config.corpus, chunk_chars=config.chunk_chars)

    async def prepare(self, spec: AgentSpec) -> AgentSpec:
        """The agent as this run sees it: with its injected documents, if it has any."""
        config = self.runtime.keel_file.agents.get(spec.name)
        inject = config.inject_docs if config is not None else None
        if inject is None or self.corpus is None:
            return spec
        # the same query over the same index: the same bytes, so the prefix stays cached
        block = await inject_block(self.corpus, inject.query, k=inject.top_k)
        if not block:
            return spec
        return replace(spec, system=f"{spec.system}\n\n{block}")

    def grader(self, spec: AgentSpec) -> Grader | None:
        config = self.runtime.keel_file.agents.get(spec.name)
        if config is None or config.grader is None:
            return None
        return self._build(config.grader)

    def tool_graders(self, spec: AgentSpec) -> dict[str, Grader]:
        """The agent's tools' graders: keel.toml's ``graders`` over each tool's declaration."""
        registry = self.runtime.registry
        configs: dict[str, GraderConfig] = {}
        for name in spec.tools:
            declared = registry.current(name).grader if name in registry else None
            if declared is not None:
                configs[name] = declared
        config = self.runtime.keel_file.agents.get(spec.name)
        if config is not None:
            configs.update({k: v for k, v in config.graders.items() if k in spec.tools})
        return {name: self._build(c) for name, c in configs.items()}

    def step_graders(self, spec: AgentSpec) -> dict[str, Grader]:
        config = self.runtime.keel_file.agents.get(spec.name)
        if config is None or spec.pattern != "plan_execute":
            return {}
        return {name: self._build(c) for name, c in config.step_graders.items()}

    def graders(self, spec: AgentSpec) -> dict[str, Any]:
        """The loop's grading hooks for this agent (``Hooks(**graders)``)."""
        tools = self.tool_graders(spec)
        return {"grader": self.grader(spec), "step_graders": self.step_graders(spec),
                "tool_graders": ToolGraders(tools) if tools else None}

    def _build(self, config: GraderConfig) -> Grader:
        return Grader.build(config, default_model=self.runtime.settings.router_model,
                            price_of=self.runtime.prices.require)

    def extras(self, run: Run) -> dict[str, Any]:
        """What this run's tools may use: the memory, the corpus, the fan-out."""
        out: dict[str, Any] = {MEMORY_EXTRA: self.memory, "trace_id": run.trace_id}
        if self.corpus is not None:
            out[DOCS_EXTRA] = self.corpus
        if "research" in run.agent.tools:
            config = self.runtime.keel_file.agents.get(run.agent.name)
            out[RESEARCH_EXTRA] = FanOut(self.runtime, run,
                                         config.research if config is not None else None,
                                         request_type=self.request_type)
        return out

    def replay_inputs(self, spec: AgentSpec) -> dict[str, Any]:
        """What replay needs to grade as the run did: the graders and their models' prices."""
        out: dict[str, Any] = {}
        grader = self.grader(spec)
        if grader is not None:
            out["grader"] = grader.config.model_dump(by_alias=True)
            if grader.model is not None and grader.price is not None:
                out.update(grader_model=grader.model, grader_price=grader.price.model_dump())
        tools, steps = self.tool_graders(spec), self.step_graders(spec)
        if tools or steps:
            out["graders"] = graders_for_replay(tools, steps)
        return out
