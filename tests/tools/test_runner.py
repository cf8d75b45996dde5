"""ToolRunner driven through real trio memory channels: http and python tools, cancellation.

HTTP tools run against the scripted loopback server (tests/support/http_server.py) in real time
under ``fail_after`` guards; Python tools that only sleep run under ``autojump_clock``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from bridge.call.context import CallInfo
from bridge.call.events import (
    CancelTool,
    Codec,
    RunTool,
    ToolCommand,
    ToolEvent,
    ToolFinished,
    ToolOutcome,
)
from bridge.config import ToolConfig, ToolKind
from bridge.tools.python_tool import load_callable
from bridge.tools.runner import ToolRunner
from tests.support.http_server import HttpServer, open_http_server

GUARD_S = 10.0
SECRET = "Bearer tok-9f8e7d6c5b4a"
FILE_SECRET = "key-0123456789abcdef"
OTHER_SECRET = "other-secret-5a4b3c2d"

INFO = CallInfo(
    call_id="c-1",
    ingress="mediastream",
    codec=Codec.PCMU,
    caller="+15550100001",
    called="+15550100002",
    variables={"account": "7", "lang": "de"},
    external_ids={"callSid": "CA123"},
)
CALL_CONTEXT = {
    "call_id": "c-1",
    "ingress": "mediastream",
    "caller": "+15550100001",
    "called": "+15550100002",
    "variables": {"account": "7", "lang": "de"},
    "external_ids": {"callSid": "CA123"},
}


def python_tool(name: str, function: str) -> ToolConfig:
    return ToolConfig(name=name, kind=ToolKind.PYTHON, function=function, timeout_s=30)


LOOKUP_ORDER = python_tool("lookup_order", "tests.tools.sample_tools:lookup_order")
SLOW = python_tool("slow", "tests.tools.sample_tools:slow_tool")
BROKEN = python_tool("broken", "tests.tools.sample_tools:broken_tool")
PYTHON_TOOLS = (LOOKUP_ORDER, SLOW, BROKEN)


def make_runner(
    *tools: ToolConfig,
    environ: Mapping[str, str] | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    log: logging.Logger | None = None,
) -> ToolRunner:
    """A runner as app.py builds it: Python tools imported from their specs."""
    loaded = {tool.name: load_callable(tool.function) for tool in tools if tool.function}
    return ToolRunner(
        tools={tool.name: tool for tool in tools},
        info=INFO,
        log=log or logging.getLogger("tests.runner"),
        environ=environ or {},
        python_functions={**loaded, **(functions or {})},
    )


@attrs.define
class Harness:
    commands: trio.MemorySendChannel[ToolCommand]
    events: trio.MemoryReceiveChannel[ToolEvent]
    returned: trio.Event

    async def run(self, call_id: str, name: str, arguments: Mapping[str, Any]) -> None:
        await self.commands.send(RunTool(call_id, name, arguments))

    async def cancel(self, call_id: str) -> None:
        await self.commands.send(CancelTool(call_id))

    async def finished(self) -> ToolFinished:
        return await self.events.receive()

    def nothing_waiting(self) -> bool:
        try:
            self.events.receive_nowait()
        except trio.WouldBlock:
            return True
        return False


@asynccontextmanager
async def running(runner: ToolRunner) -> AsyncIterator[Harness]:
    """The runner in its own task, fed and read through memory channels as run_call does."""
    commands_send, commands_receive = trio.open_memory_channel[ToolCommand](16)
    events_send, events_receive = trio.open_memory_channel[ToolEvent](16)
    harness = Harness(commands_send, events_receive, trio.Event())

    async def run() -> None:
        await runner(commands_receive, events_send)
        harness.returned.set()

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            async with commands_send:
                yield harness


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    async with open_http_server() as server:
        yield server


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record's message and extra fields, as one text to search for secrets."""
    return "\n".join(f"{record.getMessage()} {record.__dict__!r}" for record in caplog.records)


# ---- http tools --------------------------------------------------------------------------------


async def test_an_http_tool_posts_arguments_and_call_with_static_and_secret_headers(
    server: HttpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "api-key").write_text(FILE_SECRET + "\n")
    server.reply("/lookup", body=b'{"status": "shipped", "eta": "Tuesday"}')
    tool = ToolConfig(
        name="lookup",
        kind=ToolKind.HTTP,
        url=server.url("/lookup"),
        headers={"X-Tenant": "acme"},
        headers_env={"Authorization": "LOOKUP_TOKEN"},
        headers_file={"X-Api-Key": str(tmp_path / "api-key")},
        timeout_s=5,
    )
    async with running(make_runner(tool, environ={"LOOKUP_TOKEN": SECRET})) as harness:
        await harness.run("call_1", "lookup", {"order_number": "A-42", "rush": True})
        finished = await harness.finished()
    assert finished == ToolFinished(
        "call_1", ToolOutcome.OK, '{"status": "shipped", "eta": "Tuesday"}'
    )
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/lookup")
    assert request.json == {
        "tool": "lookup",
        "tool_call_id": "call_1",
        "arguments": {"order_number": "A-42", "rush": True},
        "call": CALL_CONTEXT,
    }
    assert request.headers["x-tenant"] == "acme"
    assert request.headers["authorization"] == SECRET
    assert request.headers["x-api-key"] == FILE_SECRET
    assert request.headers["content-type"] == "application/json"
    logged = logged_text(caplog)
    assert "tool finished" in logged
    assert SECRET not in logged and "tok-9f8e7d6c5b4a" not in logged
    assert FILE_SECRET not in logged


async def test_secret_headers_are_read_for_each_request(server: HttpServer) -> None:
    server.reply("/lookup", body=b"{}")
    tool = ToolConfig(
        name="lookup",
        kind=ToolKind.HTTP,
        url=server.url("/lookup"),
        headers_env={"Authorization": "LOOKUP_TOKEN"},
        timeout_s=5,
    )
    environ = {"LOOKUP_TOKEN": "Bearer first-token"}
    async with running(make_runner(tool, environ=environ)) as harness:
        await harness.run("call_1", "lookup", {})
        await harness.finished()
        environ["LOOKUP_TOKEN"] = "Bearer rotated-token"
        await harness.run("call_2", "lookup", {})
        await harness.finished()
    assert [request.headers["authorization"] for request in server.requests] == [
        "Bearer first-token",
        "Bearer rotated-token",
    ]


async def test_a_missing_secret_is_an_error_output_naming_the_header_and_nothing_is_sent(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.reply("/lookup", body=b"{}")
    tool = ToolConfig(
        name="lookup",
        kind=ToolKind.HTTP,
        url=server.url("/lookup"),
        # The first header's secret is set; the second one's is missing.
        headers_env={"X-Other": "OTHER_TOKEN", "Authorization": "LOOKUP_TOKEN"},
        timeout_s=5,
    )
    async with running(make_runner(tool, environ={"OTHER_TOKEN": OTHER_SECRET})) as harness:
        await harness.run("call_1", "lookup", {"order_number": "A-42"})
        finished = await harness.finished()
    assert finished.call_id == "call_1"
    assert finished.outcome is ToolOutcome.ERROR
    output = json.loads(finished.output)
    assert output["error"] == "error"
    assert "header Authorization" in output["message"]
    assert "LOOKUP_TOKEN" in output["message"]
    assert finished.detail.startswith("credentials: header Authorization")
    assert server.requests == []
    for text in (finished.output, finished.detail, logged_text(caplog)):
        assert OTHER_SECRET not in text


async def test_an_error_status_is_an_error_output_and_the_runner_goes_on(
    server: HttpServer,
) -> None:
    server.reply("/ok", body=b'"fine"')
    tools = [
        ToolConfig(name=name, kind=ToolKind.HTTP, url=server.url(f"/{path}"), timeout_s=5)
        for name, path in (("missing", "nowhere"), ("fine", "ok"))
    ]
    async with running(make_runner(*tools)) as harness:
        await harness.run("call_1", "missing", {})
        failed = await harness.finished()
        await harness.run("call_2", "fine", {})
        fine = await harness.finished()
    assert failed.call_id == "call_1"
    assert failed.outcome is ToolOutcome.ERROR
    assert failed.detail.startswith("http_status: HTTP 404")
    assert json.loads(failed.output) == {
        "error": "error",
        "message": 'missing failed: HTTP 404: {"error": "not found"}',
    }
    assert fine == ToolFinished("call_2", ToolOutcome.OK, '"fine"')


async def test_an_http_tool_that_does_not_answer_in_time_is_an_error_output(
    server: HttpServer,
) -> None:
    server.reply("/slow", body=b"{}", delay_s=5.0)
    tool = ToolConfig(name="slow_http", kind=ToolKind.HTTP, url=server.url("/slow"), timeout_s=0.3)
    async with running(make_runner(tool)) as harness:
        started = trio.current_time()
        await harness.run("call_1", "slow_http", {})
        finished = await harness.finished()
        waited = trio.current_time() - started
    assert finished.outcome is ToolOutcome.ERROR
    assert finished.detail == "timeout: no reply within 0.3 s"
    assert waited < 3.0


# ---- python tools ------------------------------------------------------------------------------


async def test_a_python_tool_gets_the_arguments_and_the_call() -> None:
    async with running(make_runner(*PYTHON_TOOLS)) as harness:
        await harness.run("call_1", "lookup_order", {"order_number": "A-42"})
        finished = await harness.finished()
    assert finished.call_id == "call_1"
    assert finished.outcome is ToolOutcome.OK
    assert json.loads(finished.output) == {
        "order_number": "A-42",
        "status": "shipped",
        "eta": "Tuesday",
        "caller": "+15550100001",
    }


async def test_a_python_tool_is_told_the_call_context_and_its_tool_call_id() -> None:
    def context_of(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
        return {"arguments": dict(arguments), "context": dict(context)}

    tool = ToolConfig(
        name="context_of", kind=ToolKind.PYTHON, function="tests.tools.sample_tools:echo"
    )
    runner = make_runner(tool, functions={"context_of": context_of})
    async with running(runner) as harness:
        await harness.run("call_9", "context_of", {"x": 1})
        finished = await harness.finished()
    assert json.loads(finished.output) == {
        "arguments": {"x": 1},
        "context": {**CALL_CONTEXT, "tool_call_id": "call_9"},
    }


async def test_a_python_tool_that_raises_is_an_error_output_with_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(make_runner(*PYTHON_TOOLS)) as harness:
        await harness.run("call_1", "broken", {})
        failed = await harness.finished()
        # The runner is still there for the next call.
        await harness.run("call_2", "lookup_order", {"order_number": "A-42"})
        fine = await harness.finished()
    message = "broken failed: RuntimeError: database down"
    assert failed == ToolFinished(
        "call_1",
        ToolOutcome.ERROR,
        json.dumps({"error": "error", "message": message}),
        message,
    )
    assert fine.outcome is ToolOutcome.OK
    assert any(record.getMessage() == "tool raised" for record in caplog.records)


async def test_a_python_tool_calling_sys_exit_is_an_error_output_not_the_end_of_the_daemon() -> (
    None
):
    # A tool's failure must never escape the runner (it would end every call in the process).
    def exits(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        raise SystemExit(3)

    tool = ToolConfig(name="exits", kind=ToolKind.PYTHON, function="tests.tools.sample_tools:echo")
    async with running(make_runner(tool, functions={"exits": exits})) as harness:
        await harness.run("call_1", "exits", {})
        finished = await harness.finished()
    assert finished.call_id == "call_1"
    assert finished.outcome is ToolOutcome.ERROR


async def test_an_unknown_tool_name_is_an_unknown_tool_output() -> None:
    async with running(make_runner(*PYTHON_TOOLS)) as harness:
        await harness.run("call_1", "no_such_tool", {})
        finished = await harness.finished()
    message = "there is no tool named 'no_such_tool'"
    assert finished == ToolFinished(
        "call_1",
        ToolOutcome.UNKNOWN_TOOL,
        json.dumps({"error": "unknown_tool", "message": message}),
        message,
    )


# ---- cancellation and concurrency --------------------------------------------------------------


async def test_several_tools_run_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with running(make_runner(*PYTHON_TOOLS)) as harness:
        started = trio.current_time()
        for call_id, seconds in (("a", 3.0), ("b", 1.0), ("c", 2.0)):
            await harness.run(call_id, "slow", {"seconds": seconds})
        finished = []
        for _ in range(3):
            event = await harness.finished()
            finished.append((event.call_id, round(trio.current_time() - started, 3)))
            assert event.outcome is ToolOutcome.OK
    # Each finished after its own time, not after the sum of those before it.
    assert finished == [("b", 1.0), ("c", 2.0), ("a", 3.0)]


async def test_cancel_tool_stops_a_slow_tool_and_no_result_follows(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(make_runner(*PYTHON_TOOLS)) as harness:
        await harness.run("slow_1", "slow", {"seconds": 5.0})
        await harness.run("slow_2", "slow", {"seconds": 2.0})
        await trio.sleep(1.0)
        await harness.cancel("slow_1")
        # The other one is left alone...
        assert await harness.finished() == ToolFinished(
            "slow_2", ToolOutcome.OK, '{"slept_s": 2.0}'
        )
        # ...and the cancelled one never answers, not even after it would have finished.
        await trio.sleep(5.0)
        assert harness.nothing_waiting()
    assert any(record.getMessage() == "tool cancelled" for record in caplog.records)


async def test_cancel_tool_abandons_a_sync_tool_blocked_in_its_thread() -> None:
    entered = threading.Event()
    release = threading.Event()

    def blocks(arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        entered.set()
        release.wait(timeout=GUARD_S)
        return "too late"

    tool = ToolConfig(name="blocks", kind=ToolKind.PYTHON, function="tests.tools.sample_tools:echo")
    try:
        async with running(make_runner(tool, functions={"blocks": blocks})) as harness:
            await harness.run("call_1", "blocks", {})
            assert await trio.to_thread.run_sync(entered.wait, GUARD_S)
            await harness.cancel("call_1")
            await trio.sleep(0.05)
            release.set()
            await trio.sleep(0.1)
            assert harness.nothing_waiting()
    finally:
        release.set()


async def test_cancel_tool_for_a_call_that_is_not_running_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(make_runner(*PYTHON_TOOLS)) as harness:
        await harness.cancel("never_started")
        await harness.run("call_1", "slow", {"seconds": 1.0})
        first = await harness.finished()
        # Too late: it already answered.
        await harness.cancel("call_1")
        await harness.run("call_2", "slow", {"seconds": 1.0})
        second = await harness.finished()
    assert [(first.call_id, first.outcome), (second.call_id, second.outcome)] == [
        ("call_1", ToolOutcome.OK),
        ("call_2", ToolOutcome.OK),
    ]


async def test_closing_the_command_channel_cancels_everything_still_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(make_runner(*PYTHON_TOOLS)) as harness:
        started = trio.current_time()
        await harness.run("a", "slow", {"seconds": 100.0})
        await harness.run("b", "slow", {"seconds": 200.0})
        await trio.sleep(1.0)
        await harness.commands.aclose()
        await harness.returned.wait()
        assert trio.current_time() - started < 2.0
        assert harness.nothing_waiting()
