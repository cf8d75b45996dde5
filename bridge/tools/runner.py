"""The tool runner of one call: runs operator tools (http, python) and transfer hooks.

A thin trio shell (DESIGN.md rule 4) around the decisions :class:`bridge.call.bridge.CallBridge`
makes: it receives :class:`RunTool` and :class:`CancelTool`, runs each tool in its own task of
the call's nursery, several at once, and answers each run with one :class:`ToolFinished`. The
bridge keeps the timeouts; the runner only obeys CancelTool, and everything still running when the
call ends (the command channel closes) is cancelled with it.

A tool's failure never escapes: HTTP errors (:class:`ToolFailure`) and any exception a Python
tool raises become an error output for the model and a log line with the call id; the call goes
on. Secret header values are read when each request is made, so a rotated credential file is used
at once, and they are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import httpx2
import trio

from bridge.call.context import CallInfo
from bridge.call.events import (
    CancelTool,
    RunTool,
    ToolCommand,
    ToolEvent,
    ToolFinished,
    ToolOutcome,
)
from bridge.call.tools import tool_failure
from bridge.config import ToolConfig, ToolKind
from bridge.credentials import SecretSource, read_secret
from bridge.errors import SecretError
from bridge.tools.http_client import ToolFailure, post_json
from bridge.tools.python_tool import call_python

Log = logging.LoggerAdapter[logging.Logger] | logging.Logger


def call_context(info: CallInfo) -> dict[str, Any]:
    """What a tool is told about the call it serves (the `call` object of an HTTP tool's body)."""
    return {
        "call_id": info.call_id,
        "ingress": info.ingress,
        "caller": info.caller,
        "called": info.called,
        "variables": dict(info.variables),
        "external_ids": dict(info.external_ids),
    }


def request_headers(
    static: Mapping[str, str], secrets: Mapping[str, SecretSource], environ: Mapping[str, str]
) -> dict[str, str]:
    """The configured headers with the secret ones read now; ToolFailure names a missing one."""
    headers = dict(static)
    for name, source in secrets.items():
        try:
            value = read_secret(source, environ)
        except SecretError as error:
            raise ToolFailure("credentials", f"header {name}: {error}") from None
        if value is None:
            raise ToolFailure("credentials", f"header {name}: not set in {source.describe()}")
        headers[name] = value
    return headers


@attrs.frozen(kw_only=True)
class ToolRunner:
    """Runs the tools of one call; ``await runner(commands, events)`` for the call's lifetime."""

    tools: Mapping[str, ToolConfig]
    info: CallInfo
    log: Log
    environ: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    python_functions: Mapping[str, Callable[..., Any]] = attrs.field(factory=dict)
    client: httpx2.AsyncClient | None = None

    async def __call__(
        self,
        commands: trio.MemoryReceiveChannel[ToolCommand],
        events: trio.MemorySendChannel[ToolEvent],
    ) -> None:
        running: dict[str, trio.CancelScope] = {}
        async with trio.open_nursery() as nursery:
            async for command in commands:
                match command:
                    case RunTool():
                        scope = running[command.call_id] = trio.CancelScope()
                        nursery.start_soon(self._run, command, scope, events, running)
                    case CancelTool(call_id=call_id):
                        if call_id in running:
                            running.pop(call_id).cancel()
            # The call is over: nothing still running has anyone to answer.
            nursery.cancel_scope.cancel()

    async def _run(
        self,
        command: RunTool,
        scope: trio.CancelScope,
        events: trio.MemorySendChannel[ToolEvent],
        running: dict[str, trio.CancelScope],
    ) -> None:
        started = trio.current_time()
        extra = {"tool": command.name, "tool_call_id": command.call_id}
        finished: ToolFinished | None = None
        with scope:
            finished = await self._invoke(command, extra)
        running.pop(command.call_id, None)
        if scope.cancelled_caught or finished is None:
            self.log.warning("tool cancelled", extra=extra)
            return
        level = logging.INFO if finished.outcome is ToolOutcome.OK else logging.WARNING
        self.log.log(
            level,
            "tool finished",
            extra={
                **extra,
                "outcome": finished.outcome.value,
                "duration_s": round(trio.current_time() - started, 3),
                **({"detail": finished.detail} if finished.detail else {}),
            },
        )
        try:
            await events.send(finished)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _invoke(self, command: RunTool, extra: Mapping[str, str]) -> ToolFinished:
        tool = self.tools.get(command.name)
        call_id = command.call_id
        if tool is None:
            return tool_failure(
                call_id, ToolOutcome.UNKNOWN_TOOL, f"there is no tool named {command.name!r}"
            )
        self.log.info("tool started", extra=dict(extra))
        try:
            output = await self._dispatch(tool, command)
        except ToolFailure as failure:
            return tool_failure(
                call_id,
                ToolOutcome.ERROR,
                f"{tool.name} failed: {failure.message}",
                f"{failure.code}: {failure.message}",
            )
        except (Exception, SystemExit) as error:
            # An operator's Python tool may raise anything; the call goes on.
            self.log.warning("tool raised", extra=dict(extra), exc_info=error)
            message = f"{tool.name} failed: {type(error).__name__}: {error}"
            return tool_failure(call_id, ToolOutcome.ERROR, message)
        return ToolFinished(call_id, ToolOutcome.OK, output)

    async def _dispatch(self, tool: ToolConfig, command: RunTool) -> str:
        context = call_context(self.info)
        if tool.kind is ToolKind.PYTHON:
            function = self.python_functions[tool.name]
            return await call_python(
                function, command.arguments, {**context, "tool_call_id": command.call_id}
            )
        url = tool.url if tool.kind is ToolKind.HTTP else tool.hook_url
        headers = request_headers(tool.headers, tool.secret_headers(), self.environ)
        payload = {
            "tool": tool.name,
            "tool_call_id": command.call_id,
            "arguments": dict(command.arguments),
            "call": context,
        }
        return await post_json(
            url,
            payload,
            headers=headers,
            timeout_s=tool.effective_timeout_s,
            client=self.client,
        )


__all__ = ["ToolRunner", "call_context", "request_headers"]
