"""Golden tasks offline: every expectation kind passes when it holds and fails, with a diff, when
it does not; runs go through the real runtime with the task's script as the model."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from agents.config import load_settings
from agents.evals import EvalSession, TaskResult, load_task, render
from agents.evals.expect import Observed, ObservedCall, check
from agents.evals.task import Expectations
from bot.cli import main

TIME_TASK = """
input = "What time is it in Madrid?"

[[responses]]
tool_calls = [{name = "get_current_time", input = {timezone = "Europe/Madrid"}}]

[[responses]]
text = "It is 10:30 in Madrid."

[[fixtures]]
tool = "get_current_time"
input = {timezone = "Europe/Madrid"}
result = {time = "10:30", timezone = "Europe/Madrid"}
"""


def write(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(body), "utf-8")
    return path


async def run_one(tmp_path: Path, body: str, *, agent: str = "assistant") -> TaskResult:
    path = write(tmp_path / "evals" / agent, "task", body)
    async with EvalSession(load_settings()) as session:
        return await session.run(load_task(path))


def failed(result: TaskResult) -> list[str]:
    return [f.expectation for f in result.failures]


# ------------------------------------------------------------------ through the runtime


async def test_a_task_that_holds_passes_with_its_cost_calls_and_tools(tmp_path: Path) -> None:
    result = await run_one(tmp_path, TIME_TASK + """
        [expect]
        status = "completed"
        output = "It is   10:30 in Madrid."
        max_cost_usd = 0.05
        max_model_calls = 2
        max_steps = 1
        [expect.tools]
        mode = "exact"
        calls = [{name = "get_current_time", input = {timezone = "Europe/Madrid"}, is_error = false}]
        must_not = ["fetch_url"]
        """)
    assert result.passed, render([result], mode="offline")
    seen = result.observed
    assert seen is not None and seen.model_calls == 2 and seen.steps == 1
    assert seen.tools == [ObservedCall("get_current_time", {"timezone": "Europe/Madrid"})]
    assert 0 < seen.cost_usd < 0.05


@pytest.mark.parametrize(("expect", "kind", "words"), [
    ('status = "waiting_human"', "status", "status completed, expected waiting_human"),
    ('output = "It is noon in Madrid."', "output", "-It is noon in Madrid."),
    ('output_contains = ["noon"]', "output_contains", "does not contain 'noon'"),
    ("max_cost_usd = 0.0001", "max_cost_usd", "is over the maximum $0.000100"),
    ("max_model_calls = 1", "max_model_calls", "2 model calls, at most 1"),
    ("max_steps = 0", "max_steps", "1 tool calls (steps), at most 0"),
    ('agent = "researcher"', "agent", "answered by 'assistant', expected 'researcher'"),
])
async def test_each_limit_and_answer_expectation_fails_with_what_differs(
        tmp_path: Path, expect: str, kind: str, words: str) -> None:
    result = await run_one(tmp_path, TIME_TASK + f"\n[expect]\n{expect}\n")
    assert failed(result) == [kind]
    shown = render([result], mode="offline")
    assert words in shown and "FAIL" in shown


@pytest.mark.parametrize(("tools", "words"), [
    ('mode = "exact"\ncalls = [{name = "fetch_url"}]',
     "differ from the exact list at call 1: expected fetch_url(…), got get_current_time"),
    ('mode = "exact"\ncalls = [{name = "get_current_time", input = {timezone = "UTC"}}]',
     'expected get_current_time("timezone": "UTC")'),
    ('mode = "subsequence"\ncalls = [{name = "get_current_time"}, {name = "fetch_url"}]',
     "missing from call 2 on: fetch_url(…)"),
    ('mode = "include"\ncalls = [{name = "escalate_to_human"}]',
     "expected call(s) not made: escalate_to_human(…)"),
    ('must_not = ["get_current_time"]', "get_current_time must not be called"),
    ('calls = [{name = "get_current_time", is_error = true}]', "get_current_time(…) (error)"),
])
async def test_each_tool_expectation_fails_with_a_diff(tmp_path: Path, tools: str,
                                                       words: str) -> None:
    result = await run_one(tmp_path, TIME_TASK + f"\n[expect.tools]\n{tools}\n")
    assert failed(result) == ["tools"], result.failures
    shown = render([result], mode="offline")
    assert words in shown
    assert "actual:" in shown or "called:" in shown or "+ get_current_time" in shown


@pytest.mark.parametrize("tools", [
    'mode = "subsequence"\ncalls = [{name = "get_current_time", input = {timezone = "<any>"}}]',
    'mode = "include"\ncalls = [{name = "get_current_time"}]\nmust_not = ["fetch_url"]',
    'mode = "exact"\ncalls = [{name = "get_current_time", input = {timezone = " Europe/Madrid "}}]',
])
async def test_tool_expectations_that_hold_pass(tmp_path: Path, tools: str) -> None:
    result = await run_one(tmp_path, TIME_TASK + f"\n[expect.tools]\n{tools}\n")
    assert result.passed, result.failures


async def test_structured_answer_compared_as_json_with_variable_fields(tmp_path: Path) -> None:
    body = """
        input = "Summarise order 42 as JSON."
        [[responses]]
        text = '''{"order": 42, "id": "ord_8f2k", "items": [{"sku": "A1", "at": "2026-01-05T10:00Z"}], "refund": false}'''
        [expect]
        output = {order = 42, id = "x", refund = false, items = [{sku = "A1", at = "t"}]}
        variable = ["id", "items[*].at"]
        """
    assert (await run_one(tmp_path, body)).passed
    wrong = await run_one(tmp_path, body.replace("refund = false,", "refund = true,"))
    assert failed(wrong) == ["output"]
    shown = render([wrong], mode="offline")
    assert "differs at $.refund: expected true, got false" in shown
    assert '-  "refund": true' in shown and '+  "refund": false' in shown
    missing = await run_one(tmp_path, body.replace('"items[*].at"', '"items[*].at", "created"'))
    assert "variable field(s) missing from the answer: created" in render([missing], mode="offline")


async def test_a_run_that_asks_for_more_than_the_script_fails_clearly(tmp_path: Path) -> None:
    result = await run_one(tmp_path, TIME_TASK.split("[[responses]]\ntext")[0])
    assert failed(result) == ["status"]
    assert "scripts 1 model response(s) and the run asked for one more" in result.failures[0].message


async def test_unused_script_and_missing_fixture_are_reported(tmp_path: Path) -> None:
    body = TIME_TASK.replace('input = {timezone = "Europe/Madrid"}\nresult',
                             'input = {timezone = "Asia/Tokyo"}\nresult')
    body += '\n[[responses]]\ntext = "never asked"\n'
    result = await run_one(tmp_path, body + "\n[expect.tools]\ncalls = "
                           '[{name = "get_current_time", is_error = false}]\n')
    assert failed(result) == ["tools", "responses"]
    seen = result.observed
    assert seen is not None and seen.tools[0].is_error  # no fixture for Madrid: a not_found error


async def test_a_changed_tool_schema_fails_the_golden_task(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool whose argument was renamed: the scripted call (as the model was taught by the old
    description) is refused by the real validation, and the golden task says so."""
    module = textwrap.dedent('''
        from pydantic import Field
        from agents.tools import ToolArgs, tool

        class Args(ToolArgs):
            FIELD: int = Field(description="The order number.")

        @tool(description="An order's shipping status. Returns text.")
        async def order_status(args: Args) -> str:
            return "live result"
        ''')
    keel = tmp_path / "keel.toml"
    keel.write_text('tool_modules = ["shoptools"]\n[agents.shop]\ndescription = "Shop."\n'
                    'system = "You help shoppers."\ntools = ["order_status"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KEEL_CONFIG", str(keel))
    task = """
        input = "Where is order 7?"
        [[responses]]
        tool_calls = [{name = "order_status", input = {order = 7}}]
        [[responses]]
        text = "Order 7 is on its way."
        [[fixtures]]
        tool = "order_status"
        result = "shipped"
        [expect.tools]
        calls = [{name = "order_status", input = {order = 7}, is_error = false}]
        """
    for field, passes in (("order", True), ("order_number", False)):
        (tmp_path / "shoptools.py").write_text(module.replace("FIELD", field))
        sys.modules.pop("shoptools", None)
        result = await run_one(tmp_path, task, agent="shop")
        assert result.passed is passes, result.failures
    shown = render([result], mode="offline")
    assert "order_status(\"order\": 7) (error)" in shown and "expected:" in shown


async def test_cost_ceiling_catches_a_longer_prompt(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Usage is estimated from each request, so a prompt that grows costs more offline too."""
    keel = tmp_path / "keel.toml"
    monkeypatch.setenv("KEEL_CONFIG", str(keel))
    task = 'input = "Hi"\n[[responses]]\ntext = "Hello!"\n[expect]\nmax_cost_usd = 0.001\n'
    costs = []
    for prompt in ("You greet people briefly.", "You greet people briefly. " + "Be warm. " * 400):
        keel.write_text(f'[agents.greeter]\ndescription = "Greets."\nsystem = "{prompt}"\n')
        result = await run_one(tmp_path, task, agent="greeter")
        costs.append((result.passed, result.observed.cost_usd if result.observed else 0.0))
    (short_ok, short_cost), (long_ok, long_cost) = costs
    assert short_ok and not long_ok and long_cost > 0.001 > short_cost
    assert failed(result) == ["max_cost_usd"]


async def test_routed_task_checks_the_agent_the_router_chose(tmp_path: Path) -> None:
    body = """
        input = "Find three sources on tidal power."
        route = true
        route_to = "assistant"
        [[responses]]
        text = "Here are three."
        """
    result = await run_one(tmp_path, body, agent="researcher")
    assert failed(result) == ["agent"]
    assert "answered by 'assistant', expected 'researcher'" in result.failures[0].message
    good = await run_one(tmp_path, body.replace('route_to = "assistant"', ""), agent="researcher")
    assert good.passed and good.observed is not None and good.observed.cost_usd > 0


# ------------------------------------------------------------------ the command


def test_keel_eval_is_deterministic_and_exits_1_on_a_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "evals" / "assistant", "good", TIME_TASK + '\n[expect]\nmax_steps = 1\n')
    write(tmp_path / "evals" / "assistant", "wrong", TIME_TASK + '\n[expect]\noutput = "noon"\n')
    outputs = []
    for _ in range(2):
        code = main(["eval", "--dir", str(tmp_path / "evals")])
        outputs.append(capsys.readouterr().out)
        assert code == 1
    assert outputs[0] == outputs[1]
    assert "assistant/good" in outputs[0] and "2 task(s): 1 passed, 1 failed" in outputs[0]
    assert main(["eval", "assistant", "--dir", str(tmp_path / "evals"), "--json"]) == 1
    json_out = capsys.readouterr().out
    assert main(["eval", "assistant", "--dir", str(tmp_path / "evals"), "--json"]) == 1
    assert capsys.readouterr().out == json_out
    (tmp_path / "evals" / "assistant" / "wrong.toml").unlink()
    assert main(["eval", "--dir", str(tmp_path / "evals")]) == 0


@pytest.mark.parametrize(("body", "words"), [
    ("input = 3", "input: Input should be a valid string"),
    ('input = "x"\n[[responses]]\n', "responses.0: Value error, a response needs text"),
    ('input = "x"\nbogus = 1', "bogus: Extra inputs are not permitted"),
    ('input = "x', "is not valid TOML"),
])
def test_a_bad_golden_task_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       body: str, words: str) -> None:
    write(tmp_path / "evals" / "assistant", "bad", body)
    assert main(["eval", "--dir", str(tmp_path / "evals")]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_no_golden_set_says_where_to_put_one(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "support"]) == 2
    assert "no golden tasks" in capsys.readouterr().err


def test_check_without_a_run() -> None:
    seen = Observed(status="completed", agent="a", output="ok", cost_usd=0.5, model_calls=3,
                    steps=2, tools=[ObservedCall("t", {"x": 1})])
    assert check(Expectations(), seen) == []
    assert [f.expectation for f in check(Expectations(max_cost_usd=0.1, max_model_calls=2,
                                                      max_steps=1), seen)] == [
        "max_cost_usd", "max_model_calls", "max_steps"]


async def test_snapshot_is_written_only_on_request_then_compared(tmp_path: Path) -> None:
    path = write(tmp_path / "evals" / "assistant", "task", TIME_TASK + """
        [expect]
        snapshot = "snapshots/time.txt"
        """)
    task = load_task(path)
    async with EvalSession(load_settings()) as session:
        missing = await session.run(task)
    assert failed(missing) == ["snapshot"] and "does not exist yet" in missing.failures[0].message
    assert not (path.parent / "snapshots" / "time.txt").exists()
    async with EvalSession(load_settings(), update_snapshots=True) as session:
        assert (await session.run(task)).passed
    snap = path.parent / "snapshots" / "time.txt"
    assert snap.read_text() == "It is 10:30 in Madrid.\n"
    async with EvalSession(load_settings()) as session:
        assert (await session.run(task)).passed
        snap.write_text("It is 11:30 in Madrid.\n")
        changed = await session.run(task)
    assert failed(changed) == ["snapshot"]
    assert "+It is 10:30 in Madrid." in render([changed], mode="offline")
