"""A side effect happens once per run, whatever the model or a crash makes us repeat."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from agents.tools import Tool, ToolArgs, ToolCall, ToolContext, ToolError, ToolRegistry
from storage.idempotency import IdempotencyStore
from tests.tools.conftest import MakeCtx, Trace


class SendArgs(ToolArgs):
    to: str = Field(description="Recipient.")
    text: str = Field(description="Message.")
    urgent: bool = False


class Outbox:
    """A side-effecting tool whose effects are counted."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail_next = False
        self.gate: asyncio.Event | None = None

    def tool(self, **options: Any) -> Tool:
        async def send_message(args: SendArgs) -> str:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_next:
                self.fail_next = False
                raise ToolError("upstream_error", "mail server down")
            self.sent.append((args.to, args.text))
            return f"sent #{len(self.sent)} to {args.to}"

        return Tool(fn=send_message, name="send_message", description="Send a message.",
                    args_model=SendArgs, side_effects=True, **options)


def send(call_id: str = "toolu_1", **args: Any) -> ToolCall:
    return ToolCall(id=call_id, name="send_message",
                    input=args or {"to": "ana", "text": "hi"})


async def test_the_same_call_twice_in_a_run_sends_once(ctx: ToolContext, trace: Trace) -> None:
    outbox = Outbox()
    catalog = ToolRegistry([outbox.tool()]).catalog(["send_message"])
    first = await catalog.invoke(send("toolu_1"), ctx)
    again = await catalog.invoke(send("toolu_2"), ctx)
    assert outbox.sent == [("ana", "hi")]
    assert first.content == again.content == "sent #1 to ana"
    assert (first.replayed, again.replayed) == (False, True)
    assert again.attempts == 0
    assert [e["replayed"] for e in trace.of("tool_result")] == [False, True]


async def test_arguments_are_compared_canonically(ctx: ToolContext) -> None:
    outbox = Outbox()
    catalog = ToolRegistry([outbox.tool()]).catalog(["send_message"])
    await catalog.invoke(send(to="ana", text="hi"), ctx)
    # Another key order and an explicit default are the same call.
    await catalog.invoke(ToolCall(id="t2", name="send_message",
                                  input={"urgent": False, "text": "hi", "to": "ana"}), ctx)
    assert len(outbox.sent) == 1


async def test_other_arguments_or_another_run_do_the_effect_again(make_ctx: MakeCtx) -> None:
    outbox = Outbox()
    catalog = ToolRegistry([outbox.tool()]).catalog(["send_message"])
    await catalog.invoke(send(), make_ctx(run_id="run-1"))
    await catalog.invoke(send(to="ana", text="bye"), make_ctx(run_id="run-1"))
    await catalog.invoke(send(), make_ctx(run_id="run-2"))
    assert outbox.sent == [("ana", "hi"), ("ana", "bye"), ("ana", "hi")]


async def test_a_failed_effect_is_not_stored_so_it_can_be_tried_again(ctx: ToolContext) -> None:
    outbox = Outbox()
    outbox.fail_next = True
    catalog = ToolRegistry([outbox.tool()]).catalog(["send_message"])
    failed = await catalog.invoke(send(), ctx)
    retried = await catalog.invoke(send(), ctx)
    assert failed.is_error and not retried.is_error and not retried.replayed
    assert len(outbox.sent) == 1


async def test_the_same_call_twice_in_one_turn_sends_once(ctx: ToolContext) -> None:
    outbox = Outbox()
    outbox.gate = asyncio.Event()
    catalog = ToolRegistry([outbox.tool()]).catalog(["send_message"])
    both = asyncio.gather(catalog.invoke(send("a"), ctx), catalog.invoke(send("b"), ctx))
    await asyncio.sleep(0)
    outbox.gate.set()
    first, second = await both
    assert len(outbox.sent) == 1
    assert sorted([first.replayed, second.replayed]) == [False, True]


async def test_after_a_crash_the_resumed_run_finds_the_stored_result(
    make_ctx: MakeCtx, sqlite_store: IdempotencyStore
) -> None:
    outbox = Outbox()
    ctx = make_ctx(idempotency=sqlite_store)
    await ToolRegistry([outbox.tool()]).catalog(["send_message"]).invoke(send(), ctx)
    # A new process: a new registry and catalog, the same database and run id.
    resumed = await ToolRegistry([outbox.tool()]).catalog(["send_message"]).invoke(send(), ctx)
    assert resumed.replayed and resumed.content == "sent #1 to ana"
    assert len(outbox.sent) == 1


async def test_a_tool_that_cannot_be_idempotent_says_so_and_repeats(ctx: ToolContext) -> None:
    outbox = Outbox()
    tool = outbox.tool(idempotent=False)
    catalog = ToolRegistry([tool]).catalog(["send_message"])
    await catalog.invoke(send(), ctx)
    await catalog.invoke(send(), ctx)
    assert len(outbox.sent) == 2
    assert "Not idempotent" in catalog.schemas()[0]["description"]


async def test_a_store_that_fails_after_the_effect_still_reports_it(
    make_ctx: MakeCtx, trace: Trace
) -> None:
    class BrokenPut:
        async def get(self, run_id: str, tool: str, args: Any) -> str | None:
            return None

        async def put(self, run_id: str, tool: str, args: Any, result: str) -> None:
            raise OSError("disk full")

    outbox = Outbox()
    catalog = ToolRegistry([outbox.tool()]).catalog(["send_message"])
    outcome = await catalog.invoke(send(), make_ctx(idempotency=BrokenPut()))
    assert outcome.content == "sent #1 to ana" and not outcome.is_error
    assert trace.of("error")[0]["where"] == "idempotency"
