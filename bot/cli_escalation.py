"""`keel escalation list|answer`: questions runs asked a human, answered from the command line.

An answer goes through the same stored transitions as a button press: pending → answered (the
first answer wins, none after expiry), then answered → resumed, which is the claim: the process
that wins it — here, this command — resumes the run to its end. A bot running meanwhile never
resumes it too. A run asked from Telegram has its answer (or its next question) put in the outbox,
which the running bot delivers; a run asked from `keel agent run` or `keel chat` prints it here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.config import Settings
from agents.errors import KeelError
from agents.escalation_flow import EscalationFlow, ago_in_words, in_words, reply_target
from agents.run import RunResult
from agents.tools.approval import APPROVE, DENY
from storage.escalations import Escalation

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CLI_ANSWERER = "command line"
"""The name an answer from the command line is recorded under (what the model is told)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    esc = sub.add_parser(
        "escalation", help="list the questions runs are waiting on, and answer them",
        description="Runs that need a human park as waiting_human with a stored question (from "
        "Telegram, a schedule, `keel agent run` or `keel chat`). List them, and answer one: the "
        "run then goes on in this process, to its end. Unanswered questions expire "
        "(KEEL_ESCALATION_TTL_S) and their runs end cancelled; both commands expire due ones "
        "first.").add_subparsers(dest="escalation_command", metavar="SUBCOMMAND", required=True)
    p = esc.add_parser("list", help="pending questions: id, run, agent, question, choices, age",
                       description="Pending questions, oldest first: id, run, agent, question, "
                       "choices, age and when each expires.")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(handler=_list)
    p = esc.add_parser(
        "answer", help="answer a question and resume its run here",
        description="Answer question ID (or a unique prefix of it) with CHOICE — one of its "
        "choices, by text or number (1 = the first) — or, for a question that takes free text, "
        "any text. Approvals take Approve or Deny. The run resumes in this process and its result "
        "is printed; the exit status is the run's, as for `keel agent run`.",
        epilog="Example: keel escalation answer Xa3kQ Approve")
    p.add_argument("id", metavar="ID", help="escalation id or a unique prefix (see `list`)")
    p.add_argument("choice", metavar="CHOICE", help="a choice's text or number, or free text")
    p.add_argument("--json", action="store_true", help="print the resumed run's result as JSON")
    p.set_defaults(handler=_answer)


async def _open(settings: Settings) -> tuple[Any, EscalationFlow]:
    from agents.runtime import Runtime

    runtime = await Runtime.open(settings)
    return runtime, EscalationFlow(runtime, ttl=timedelta(seconds=settings.escalation_ttl_s))


# ------------------------------------------------------------------ list


def _list(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_list_async(args, settings))


async def _list_async(args: argparse.Namespace, settings: Settings) -> int:
    runtime, flow = await _open(settings)
    try:
        expired = await flow.expire_due()
        rows = []
        for e in await flow.repo.pending():
            record = await runtime.runs.get(e.run_id)
            rows.append(_row(e, record.agent if record else None))
    finally:
        await runtime.close()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return EXIT_OK
    for one in expired:
        print(f"expired now: {one.escalation.id} (run {one.escalation.run_id[:8]} cancelled)",
              file=sys.stderr)
    if not rows:
        print("no pending questions")
        return EXIT_OK
    for r in rows:
        choices = " | ".join(f"{i}) {c}" for i, c in enumerate(r["choices"], 1)) or "free text"
        print(f"{r['id']}  run {r['run_id'][:8]}  {r['agent'] or '?'}  {r['kind']}  asked "
              f"{r['age']}, expires {r['expires']}")
        print(f"    {r['question']}")
        if r["context"]:
            print(f"    {r['context']}")
        print(f"    choices: {choices}")
    print("\nanswer with: keel escalation answer ID CHOICE", file=sys.stderr)
    return EXIT_OK


def _row(e: Escalation, agent: str | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    created = _parse(e.created_at)
    expires = _parse(e.expires_at)
    return {"id": e.id, "run_id": e.run_id, "agent": agent, "kind": e.kind,
            "question": e.reason, "context": e.context, "choices": list(e.options),
            "created_at": e.created_at, "expires_at": e.expires_at,
            "age": ago_in_words((now - created).total_seconds()),
            "expires": in_words((expires - now).total_seconds()),
            "chat_id": e.chat_id}


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# ------------------------------------------------------------------ answer


def _answer(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_answer_async(args, settings))


async def _answer_async(args: argparse.Namespace, settings: Settings) -> int:
    from bot.cli_runtime import _print_result

    runtime, flow = await _open(settings)
    try:
        found = await flow.repo.find(args.id.strip())
        if len(found) != 1:
            print(f"keel: {'more than one' if found else 'no'} question "
                  f"{'starts with' if found else 'with id'} {args.id!r}; `keel escalation list` "
                  "shows the pending ones", file=sys.stderr)
            return EXIT_USAGE if found else EXIT_FAILED
        e = found[0]
        if e.due:
            await flow.expire_one(e)
            print(f"keel: question {e.id} expired before it was answered; its run was "
                  "cancelled", file=sys.stderr)
            return EXIT_FAILED
        choice = pick(e, args.choice)
        if choice is None:
            print(f"keel: {args.choice!r} is not a choice of question {e.id}; choose "
                  + " or ".join(repr(o) for o in e.options) + " (or its number)", file=sys.stderr)
            return EXIT_USAGE
        result = await answer_and_resume(flow, e, choice, user_id=settings.owner_id or 0)
    except KeelError as exc:
        print(f"keel: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await runtime.close()
    if isinstance(result, str):
        print(f"keel: {result}", file=sys.stderr)
        return EXIT_FAILED if result.startswith(("This question", "Already")) else EXIT_OK
    _print_result(result, as_json=args.json)
    return result.exit_code


def pick(e: Escalation, text: str) -> str | None:
    """The answer ``text`` stands for: a choice by its text (any case) or its number; free text
    for a question (not for an approval or a budget, which take only their choices)."""
    wanted = text.strip()
    for option in e.options:
        if option.casefold() == wanted.casefold():
            return option
    if wanted.isdigit() and 1 <= int(wanted) <= len(e.options):
        return e.options[int(wanted) - 1]
    if e.kind == "approval":
        aliases = {"y": APPROVE, "yes": APPROVE, "n": DENY, "no": DENY}
        return aliases.get(wanted.casefold())
    if e.kind == "question" and wanted:
        return wanted
    return None


async def answer_and_resume(flow: EscalationFlow, e: Escalation, choice: str, *,
                            user_id: int) -> RunResult | str:
    """Commit the answer (first answer wins), then claim and resume the run here. Returns the
    run's result, or a sentence saying why nothing ran."""
    from bot.escalations import closed_text

    if not await flow.repo.answer(e.id, answer=choice, user_id=user_id, user_name=CLI_ANSWERER):
        return closed_text(await flow.repo.get(e.id))
    answered = await flow.repo.get(e.id)
    assert answered is not None
    record = await flow.runtime.runs.get(e.run_id)
    chat_id, thread_id = reply_target(e, record)
    commit = _outbox_commit(flow, chat_id, thread_id) if chat_id is not None else None
    result = await flow.resume(answered, on_commit=commit)
    if result is None:
        now = await flow.repo.get(e.id)
        if now is not None and now.stage == "done":
            return "answered; the run stays stopped"
        return "answered; another keel process is resuming the run"
    return result


def _outbox_commit(flow: EscalationFlow, chat_id: int, thread_id: int | None) -> Any:
    """A run asked from Telegram and resumed here: its answer, or its next question with its
    buttons, goes to the outbox in the run's transaction; the running bot delivers it."""
    from agents.notify import Button
    from bot.escalations import callback_data
    from bot.service import answer_text
    from storage.outbox import OutboxButton

    async def commit(conn: Any, result: RunResult) -> None:
        if result.status == "waiting_human" and result.escalation is not None:
            asked = await flow.park_in(conn, result, chat_id=chat_id, thread_id=thread_id)
            buttons: list[list[Button]] = [[Button(label=o, key=callback_data(asked.id, i))]
                                           for i, o in enumerate(asked.options)]
            await flow.outbox.put(
                conn, chat_id=chat_id, thread_id=thread_id, reply_to=None, run_id=result.run_id,
                markdown=f"❓ **Decision needed** — `{result.agent}` is waiting for you\n\n"
                f"**Why:** {asked.reason}", escalation_id=asked.id,
                buttons=[[OutboxButton(label=b.label, key=b.key) for b in row]
                         for row in buttons] or None)
            return
        await flow.outbox.put(conn, chat_id=chat_id, thread_id=thread_id, reply_to=None,
                              markdown=answer_text(result), run_id=result.run_id)

    return commit


def print_question(e: Escalation, *, file: Any = None, how: str | None = None) -> None:
    """The question as a person at a terminal reads it."""
    out = file or sys.stdout
    label = "Approval needed" if e.kind == "approval" else "Decision needed"
    print(f"❓ {label}: {e.reason}", file=out)
    if e.context:
        print(f"   {e.context}", file=out)
    for i, option in enumerate(e.options, 1):
        print(f"   {i}) {option}", file=out)
    expires = in_words((_parse(e.expires_at) - datetime.now(UTC)).total_seconds())
    print(f"   (question {e.id}, expires {expires}"
          + (f"; {how}" if how else "") + ")", file=out, flush=True)
