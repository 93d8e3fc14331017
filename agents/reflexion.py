"""Reflexion where it pays: an agent's answer is graded; a low grade gets one retry with the
grader's feedback; after a second failure a person decides, shown both attempts.

Never the whole agent in a loop: the grader sees one answer, the retry is one more turn of the
same run (same budget, deadline and trace), and there are at most two graded attempts.

Three things can be graded, each with the same rule (one retry with the grader's feedback,
then a person decides, shown both attempts):

  an agent's answer   ``[agents.X.grader]``; for plan runs the last step's answer
  a tool's results    ``[agents.X.graders.TOOL]`` or the tool's own ``grader=`` declaration: a
                      result that fails reaches the model with the feedback appended after it
                      (``RESULT_MARK``), and the model decides whether to call the tool again;
                      the next result of that tool that fails too parks the run for a person,
                      on that tool call (``ToolGraders``). A passing result starts the count over.
  a plan step         ``[agents.X.step_graders.NAME]``: checks the planner may attach to a step
                      (``check`` in its plan); the step's answer is graded like an agent's

Graders (``agents.patterns_config.GraderConfig``):

  parses       the answer is JSON (a ```json fence around it is accepted)
  json_schema  the answer's JSON satisfies a schema (types, required, properties, items, enum,
               bounds: the subset structured extraction uses)
  required     dotted paths (``items[*].price`` reaches into lists) present and non-null
  predicate    ``module:function(answer) -> None | True | False | str`` (a string says why)
  rubric       a cheap model grades against a rubric: one call, reserved in the run's budget and
               held in the daily ledger like any call, traced as model_request/model_response

Each grading is traced as a ``grade`` event (attempt, kind, passed, feedback; ``tool`` and
``tool_use_id`` for a tool's result, ``step`` and ``check`` for a plan step's; replay compares
them). The attempt count lives in the messages themselves — each retry adds a feedback message with ``FEEDBACK_MARK`` —
so a resumed or replayed run counts the same. After the second failure the run parks as
``waiting_human`` on an escalation whose ``tool_use_id`` is ``GRADE_ESCALATION_ID``; the
person's answer (``answer_for_person``) is added as a text block, and the answer that follows
it is not graded again: the person has decided. A tool result a person reviewed keeps its
content, with their answer in place of the review note (``answered``).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agents.budget import BudgetHalt
from agents.executor.call import InputAnchor, OnUsage, call_model
from agents.executor.loop import GRADE_ESCALATION_ID, Hooks
from agents.executor.prepare import Prefix
from agents.model.types import ModelClient
from agents.patterns_config import GraderConfig
from agents.planner import calling_as
from agents.pricing import Price
from agents.run import Run
from agents.tools.contract import EscalationRequest, ToolOutcome

FEEDBACK_MARK = "[keel] Your answer did not pass its check"
PERSON_MARK = "[keel] A person reviewed both attempts"
RESULT_MARK = "\n\n[keel] This result did not pass its check"
"""Starts the note appended to a tool result that failed its grader."""
REVIEW_NOTE = "A person is reviewing both results; wait for their answer."
_RESULT_NOTE = re.compile(re.escape(RESULT_MARK) + r" \(attempt (\d+) of \d+\): ([^\n]*)")
MAX_ATTEMPTS = 2
_SHOWN = 1500
RUBRIC_SYSTEM = (
    "You grade one answer against a rubric. You do not answer the task yourself. Reply with "
    "exactly one line: `PASS` if the answer meets every point of the rubric, otherwise "
    "`FAIL: <what is wrong and how to fix it, in one or two sentences>`."
)
_VERDICT = re.compile(r"^\s*(PASS|FAIL)\b\s*:?\s*(.*)", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class Grade:
    passed: bool
    feedback: str = ""


@dataclass(frozen=True, kw_only=True)
class Grader:
    """A configured grader, ready to grade (the rubric one with its model and price)."""

    config: GraderConfig
    model: str | None = None
    price: Price | None = None
    predicate: Callable[[str], Any] | None = None
    scope: dict[str, Any] = field(default_factory=dict)
    """What is graded besides the answer's own run (``step``/``check`` of a plan step): added
    to the ``grade`` events and named in the feedback and the escalation."""

    @classmethod
    def build(cls, config: GraderConfig, *, default_model: str,
              price_of: Callable[[str], Price]) -> Grader:
        if config.kind == "rubric":
            model = config.model or default_model
            return cls(config=config, model=model, price=price_of(model))
        if config.kind == "predicate":
            assert config.predicate is not None
            return cls(config=config, predicate=load_predicate(config.predicate))
        return cls(config=config)

    async def grade(self, run: Run, client: ModelClient, answer: str, task: str,
                    on_usage: OnUsage | None) -> Grade:
        kind = self.config.kind
        if kind == "rubric":
            return await self._rubric(run, client, answer, task, on_usage)
        if kind == "predicate":
            assert self.predicate is not None
            return from_predicate(self.predicate(answer))
        data, error = parse_json(answer)
        if error is not None:
            return Grade(False, f"the answer is not valid JSON ({error}); answer with the JSON "
                                "object only")
        if kind == "parses":
            return Grade(True)
        if kind == "required":
            missing = [p for p in self.config.fields if not present(data, p)]
            return Grade(not missing, "" if not missing else
                         f"these fields are missing or null: {', '.join(missing)}; find them "
                         "in the input and fill them in")
        assert self.config.json_schema is not None
        problems = schema_problems(data, self.config.json_schema)
        return Grade(not problems, "; ".join(problems[:5]))

    async def review(self, run: Run, client: ModelClient, answer: str,
                     messages: list[dict[str, Any]], new_from: int,
                     on_usage: OnUsage | None) -> Review:
        """Grade ``answer`` (the last of ``messages``): accept, retry, or escalate."""
        return await review(run, client, self, answer, messages, new_from, on_usage)

    async def _rubric(self, run: Run, client: ModelClient, answer: str, task: str,
                      on_usage: OnUsage | None) -> Grade:
        assert self.model is not None and self.price is not None
        assert self.config.rubric is not None
        prefix = Prefix.build(RUBRIC_SYSTEM, [], cache=False)
        run.trace.emit("prefix", sha256=prefix.sha256, model=self.model, system=prefix.system,
                       tools=prefix.tools, tokens_estimate=prefix.tokens)
        message = {"role": "user", "content": [{"type": "text", "text": (
            f"Rubric:\n{self.config.rubric}\n\nTask:\n{clip(task)}\n\nAnswer to grade:\n"
            f"{clip(answer)}")}]}
        saved = run.limits
        run.limits = _with_max_tokens(run.limits, self.config.max_tokens)
        try:
            with calling_as(run, self.model, self.price):
                response = await call_model(run, client, prefix, [message], InputAnchor(),
                                            sent_before=0, on_usage=on_usage)
        finally:
            run.limits = saved
        text = "".join(b.get("text", "") for b in response.content if b.get("type") == "text")
        match = _VERDICT.match(text)
        if match is None:  # an unreadable verdict is not a reason to bother a person
            return Grade(True, f"grader answer not understood: {text[:120]!r}")
        return Grade(match.group(1).upper() == "PASS", match.group(2).strip())


def _with_max_tokens(limits: Any, max_tokens: int) -> Any:
    from dataclasses import replace

    return replace(limits, max_tokens=min(limits.max_tokens, max_tokens))


# ------------------------------------------------------------------ the review of one answer


@dataclass(frozen=True)
class Review:
    """What the loop does with an answer: accept it, retry with ``feedback_message``, or
    escalate with ``escalation``."""

    action: str  # "accept" | "retry" | "escalate"
    feedback_message: dict[str, Any] | None = None
    escalation: EscalationRequest | None = None
    detail: str | None = None
    parked: list[dict[str, Any]] | None = None
    """For "escalate": the messages the run parks with (``escalation_messages``)."""


def attempts_so_far(messages: list[dict[str, Any]], new_from: int) -> tuple[list[str], bool]:
    """The feedback given so far in this run, and whether a person already decided."""
    feedback: list[str] = []
    decided = False
    for message in messages[new_from:]:
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            continue
        for block in message["content"]:
            text = block.get("text", "") if isinstance(block, dict) else ""
            if text.startswith(FEEDBACK_MARK):
                feedback.append(text)
            elif text.startswith(PERSON_MARK):
                decided = True
    return feedback, decided


def previous_answers(messages: list[dict[str, Any]], new_from: int) -> list[str]:
    """The graded answers of this run: each assistant text answer followed by feedback."""
    out = []
    tail = messages[new_from:]
    for i, message in enumerate(tail[:-1]):
        nxt = tail[i + 1]
        if message.get("role") == "assistant" and any(
                isinstance(b, dict) and str(b.get("text", "")).startswith(FEEDBACK_MARK)
                for b in nxt.get("content") or [] if isinstance(nxt.get("content"), list)):
            out.append("".join(b.get("text", "") for b in message["content"]
                               if isinstance(b, dict) and b.get("type") == "text"))
    return out


async def review(run: Run, client: ModelClient, grader: Grader, answer: str,
                 messages: list[dict[str, Any]], new_from: int,
                 on_usage: OnUsage | None) -> Review:
    """Grade ``answer`` (already appended to ``messages``) and say what comes next."""
    feedback, decided = attempts_so_far(messages, new_from)
    if decided:
        run.trace.emit("grade", **grader.scope, attempt=len(feedback) + 1,
                       kind=grader.config.kind, passed=True, skipped="a person decided")
        return Review("accept")
    attempt = len(feedback) + 1
    grade = await grader.grade(run, client, answer, task_text(messages, new_from), on_usage)
    run.trace.emit("grade", **grader.scope, attempt=attempt, kind=grader.config.kind,
                   passed=grade.passed, feedback=grade.feedback or None,
                   spent_usd=round(run.budget.spent_usd, 8))
    if grade.passed:
        return Review("accept")
    if attempt < MAX_ATTEMPTS:
        text = (f"{FEEDBACK_MARK} (attempt {attempt} of {MAX_ATTEMPTS}): {grade.feedback}\n"
                "Fix exactly that and answer again in full, in the same format.")
        return Review("retry", feedback_message={"role": "user", "content": [
            {"type": "text", "text": text}]})
    answers = [*previous_answers(messages, new_from), answer]
    context = "\n\n".join(
        [f"Attempt {i}:\n{clip(a, _SHOWN)}" for i, a in enumerate(answers, start=1)]
        + [f"What the check found:\n{f.removeprefix(FEEDBACK_MARK)}" for f in feedback]
        + [f"Second check: {grade.feedback}"])
    step = grader.scope.get("step")
    what = f"Step {step}'s answer" if step is not None else "The answer"
    request = EscalationRequest(
        reason=f"{what} failed its check twice. Which should be "
               f"{'used' if step is not None else 'sent'}, or what is right?",
        context=clip(context, 1990),
        options=("Use attempt 2", "Use attempt 1") if step is not None
        else ("Send attempt 2", "Send attempt 1"))
    return Review("escalate", escalation=request,
                  detail=f"{what[0].lower()}{what[1:]} failed its {grader.config.kind} check "
                         f"twice: {grade.feedback}", parked=escalation_messages(messages))


def escalation_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The parked messages of a graded-out run: its turns, then the note the person's answer
    joins (``answer_for_person``) — so a resumed run's next request ends with a user turn."""
    note = {"type": "text", "text": "[keel] The answer was sent to a person for review."}
    return [*messages, {"role": "user", "content": [note]}]


def answer_for_person(answer: str, answered_by: str | None) -> dict[str, Any]:
    who = f" ({answered_by})" if answered_by else ""
    return {"type": "text", "text": f"{PERSON_MARK}{who} and answered: {answer}\nGive the "
                                    "final answer accordingly, in the required format."}


def task_text(messages: list[dict[str, Any]], new_from: int) -> str:
    for message in messages[new_from:]:
        if message.get("role") != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content
        return "\n".join(b.get("text", "") for b in content
                         if isinstance(b, dict) and b.get("type") == "text")
    return ""


# ------------------------------------------------------------------ deterministic checks


def clip(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_json(answer: str) -> tuple[Any, str | None]:
    body = answer.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        return json.loads(body), None
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def present(data: Any, path: str) -> bool:
    """Whether the dotted ``path`` is present and non-null (``[*]``: in every list item)."""
    values = [data]
    for part in path.split("."):
        many = part.endswith("[*]")
        key = part.removesuffix("[*]")
        nxt = []
        for value in values:
            if not isinstance(value, dict) or value.get(key) is None:
                return False
            item = value[key]
            if many:
                if not isinstance(item, list) or not item:
                    return False
                nxt.extend(item)
            else:
                nxt.append(item)
        values = nxt
    return all(v is not None for v in values)


_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,),
                                       "integer": (int,), "number": (int, float),
                                       "boolean": (bool,), "null": (type(None),)}


def schema_problems(data: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """What in ``data`` breaks ``schema`` (the JSON Schema subset extraction uses)."""
    out: list[str] = []
    wanted = schema.get("type")
    if wanted is not None:
        kinds = wanted if isinstance(wanted, list) else [wanted]
        ok = any(isinstance(data, _TYPES.get(k, ())) and not (
            k in ("integer", "number") and isinstance(data, bool)) for k in kinds)
        if not ok:
            return [f"{path} must be {' or '.join(kinds)}, not {type(data).__name__}"]
    if "enum" in schema and data not in schema["enum"]:
        out.append(f"{path} must be one of {schema['enum']}")
    if isinstance(data, str):
        if len(data) < int(schema.get("minLength", 0)):
            out.append(f"{path} is shorter than {schema['minLength']} characters")
    if isinstance(data, int | float) and not isinstance(data, bool):
        if "minimum" in schema and data < schema["minimum"]:
            out.append(f"{path} must be ≥ {schema['minimum']}")
        if "maximum" in schema and data > schema["maximum"]:
            out.append(f"{path} must be ≤ {schema['maximum']}")
    if isinstance(data, dict):
        for key in schema.get("required", []):
            if key not in data or data[key] is None:
                out.append(f"{path}.{key} is required")
        for key, sub in (schema.get("properties") or {}).items():
            if key in data and data[key] is not None:
                out += schema_problems(data[key], sub, f"{path}.{key}")
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(data):
            out += schema_problems(item, schema["items"], f"{path}[{i}]")
    return out


def load_predicate(ref: str) -> Callable[[str], Any]:
    module, _, name = ref.partition(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"grader predicate {ref!r} is not a function")
    return fn


def from_predicate(result: Any) -> Grade:
    if result is None or result is True:
        return Grade(True)
    if result is False:
        return Grade(False, "the answer did not pass the check")
    return Grade(False, str(result))


def answered(messages: list[dict[str, Any]], tool_use_id: str, answer: str,
             answered_by: str | None) -> list[dict[str, Any]] | None:
    """The parked messages of a graded-out run with the person's answer added; None when the
    escalation is another kind (a tool's question, answered in its tool_result)."""
    if tool_use_id != GRADE_ESCALATION_ID:
        return _answered_result(messages, tool_use_id, answer, answered_by)
    out = [dict(m) for m in messages]
    last = out[-1]
    out[-1] = {**last, "content": [*last["content"], answer_for_person(answer, answered_by)]}
    return out


def _answered_result(messages: list[dict[str, Any]], tool_use_id: str, answer: str,
                     answered_by: str | None) -> list[dict[str, Any]] | None:
    """A tool result that failed its grader twice, with the person's answer in place of the
    review note (the result itself stays, so the model can use it if the person says so)."""
    if not messages or not isinstance(messages[-1].get("content"), list):
        return None
    last = messages[-1]
    blocks = list(last["content"])
    for i, block in enumerate(blocks):
        content = block.get("content") if isinstance(block, dict) else None
        if (block.get("type") == "tool_result" and block.get("tool_use_id") == tool_use_id
                and isinstance(content, str) and content.endswith(REVIEW_NOTE)):
            who = f" ({answered_by})" if answered_by else ""
            text = (f"{content.removesuffix(REVIEW_NOTE)}{PERSON_MARK}{who} and answered: "
                    f"{answer}\nGo on accordingly.")
            blocks[i] = {**block, "content": text}
            return [*messages[:-1], {**last, "content": blocks}]
    return None


# ------------------------------------------------------------------ tool results


def raw_result(content: str) -> str:
    """A tool result without the grader's note (what the tool itself returned)."""
    return content.split(RESULT_MARK, 1)[0]


def failed_results(messages: list[dict[str, Any]], new_from: int,
                   names: set[str]) -> dict[str, list[tuple[str, str]]]:
    """For each graded tool, its results in this run that failed their check since its last
    result that passed (or that a person reviewed): (result, feedback), oldest first."""
    called: dict[str, str] = {}
    failed: dict[str, list[tuple[str, str]]] = {}
    for message in messages[new_from:]:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                called[str(block.get("id"))] = str(block.get("name"))
                continue
            name = called.get(str(block.get("tool_use_id")))
            if block.get("type") != "tool_result" or name not in names or block.get("is_error"):
                continue
            assert name is not None
            text = block.get("content")
            text = text if isinstance(text, str) else ""
            note = _RESULT_NOTE.search(text)
            if note is None or PERSON_MARK in text:
                failed[name] = []
            else:
                failed.setdefault(name, []).append((raw_result(text), note.group(2)))
    return failed


@dataclass(frozen=True)
class ToolGraders:
    """An agent's graders of tool results, by tool name (``Hooks.tool_graders``)."""

    graders: dict[str, Grader]

    async def review(self, run: Run, client: ModelClient, tool_uses: list[dict[str, Any]],
                     outcomes: list[ToolOutcome], messages: list[dict[str, Any]], new_from: int,
                     on_usage: OnUsage | None) -> list[ToolOutcome]:
        """Grade this turn's results (``messages`` ends with the turn that asked for them): a
        failing one gets the feedback appended, the second failure in a row an escalation."""
        failed = failed_results(messages, new_from, set(self.graders))
        out = []
        for block, outcome in zip(tool_uses, outcomes, strict=True):
            name = str(block["name"])
            grader = self.graders.get(name)
            if grader is None or outcome.is_error or outcome.escalation is not None:
                out.append(outcome)  # an error is the model's to read; a question waits
                continue
            out.append(await self._one(run, client, grader, block, outcome,
                                       failed.setdefault(name, []), on_usage))
        return out

    async def _one(self, run: Run, client: ModelClient, grader: Grader, block: dict[str, Any],
                   outcome: ToolOutcome, earlier: list[tuple[str, str]],
                   on_usage: OnUsage | None) -> ToolOutcome:
        name, args = str(block["name"]), json.dumps(block.get("input") or {}, ensure_ascii=False,
                                                    sort_keys=True)
        attempt = len(earlier) + 1
        where = {"tool": name, "tool_use_id": block.get("id")}
        task = f"The tool `{name}` was called with {args}. Grade the result it returned."
        try:
            grade = await grader.grade(run, client, outcome.content, task, on_usage)
        except BudgetHalt:  # the next model call halts the run; the result goes as it is
            run.trace.emit("grade", **where, attempt=attempt, kind=grader.config.kind,
                           passed=None, skipped="no budget left for the grader")
            return outcome
        feedback = " ".join(grade.feedback.split()) or "the result did not pass the check"
        run.trace.emit("grade", **where, attempt=attempt, kind=grader.config.kind,
                       passed=grade.passed, feedback=None if grade.passed else feedback,
                       spent_usd=round(run.budget.spent_usd, 8))
        if grade.passed:
            earlier.clear()
            return outcome
        note = f"{RESULT_MARK} (attempt {attempt} of {MAX_ATTEMPTS}): {feedback}\n"
        if attempt < MAX_ATTEMPTS:
            earlier.append((outcome.content, feedback))
            return replace(outcome, content=(
                f"{outcome.content}{note}If you need this result, call {name} again so that "
                "it fixes exactly that."))
        results = [*(r for r, _ in earlier), outcome.content]
        per = max(200, (1500 - len(args)) // len(results))
        context = "\n\n".join(
            [f"{name} was called with {clip(args, 300)}"]
            + [f"Result {i}:\n{clip(r, per)}" for i, r in enumerate(results, start=1)]
            + [f"What the check found:\n{f}" for _, f in earlier]
            + [f"Second check: {feedback}"])
        request = EscalationRequest(
            reason=f"The result of {name} failed its check twice. Which should the agent use, "
                   "or what is right?",
            context=clip(context, 1990), options=("Use result 2", "Use result 1"))
        earlier.clear()
        return replace(outcome, content=f"{outcome.content}{note}{REVIEW_NOTE}",
                       escalation=request)


# ------------------------------------------------------------------ replay


def graders_for_replay(tools: dict[str, Grader], steps: dict[str, Grader]) -> dict[str, Any]:
    """What a run's ``run_start`` records so its replay grades its tool results and plan steps
    alike: each grader's settings (a rubric's with the model it used) and each rubric model's
    price (its replayed calls reserve what the run's did)."""
    configs: dict[str, dict[str, Any]] = {"tools": {}, "steps": {}}
    prices: dict[str, Any] = {}
    for key, graders in (("tools", tools), ("steps", steps)):
        for name, grader in graders.items():
            config = grader.config
            if grader.model is not None and grader.price is not None:
                config = config.model_copy(update={"model": grader.model})
                prices[grader.model] = grader.price.model_dump()
            configs[key][name] = config.model_dump(by_alias=True, exclude_none=True)
    return {"configs": configs, "prices": prices}


def replay_hooks(inputs: dict[str, Any], prices: dict[str, Price]) -> Hooks:
    """The graders a traced run used, from its ``run_start`` replay inputs (``prices`` gains the
    rubric models' recorded prices, so their replayed calls reserve what the run's did)."""
    grader = replay_grader(inputs, prices)
    recorded = inputs.get("graders") or {}
    for model, price in (recorded.get("prices") or {}).items():
        prices[str(model)] = Price.model_validate(price)

    def built(key: str) -> dict[str, Grader]:
        return {name: Grader.build(GraderConfig.model_validate(config), default_model="",
                                   price_of=prices.__getitem__)
                for name, config in (recorded.get("configs", {}).get(key) or {}).items()}

    tools = built("tools")
    return Hooks(grader=grader, tool_graders=ToolGraders(tools) if tools else None,
                 step_graders=built("steps"))


def replay_grader(inputs: dict[str, Any], prices: dict[str, Price]) -> Grader | None:
    """The grader a traced run used, from its ``run_start`` replay inputs (``prices`` gains the
    rubric model's recorded price, so its replayed call reserves what the run did)."""
    recorded = inputs.get("grader")
    if not recorded:
        return None
    config = GraderConfig.model_validate(recorded)
    model = inputs.get("grader_model")
    if model is not None and inputs.get("grader_price") is not None:
        prices[str(model)] = Price.model_validate(inputs["grader_price"])
    return Grader.build(config, default_model=str(model or ""), price_of=lambda m: prices[m])
