"""The two leg interfaces every ingress and every model provider implement.

A telephony leg (media-stream websocket today; SIP/RTP and Asterisk later) is an object that knows
its call and runs until the call's telephony side is gone. An agent leg (the Realtime protocol
today; GPT-Live later) is a function that connects, reports `started()` once the model confirmed
the call's audio formats, and then runs until the model side is gone. Both report with
:mod:`bridge.call.events` and obey its commands; neither sees the other. The tool leg (the
call's tool runner) is the third party of a call, spoken to in the same way.
"""

from __future__ import annotations

from typing import Protocol

import trio

from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentCommand,
    AgentEvent,
    TelephonyCommand,
    TelephonyEvent,
    ToolCommand,
    ToolEvent,
)


class TelephonyLeg(Protocol):
    @property
    def info(self) -> CallInfo: ...

    @property
    def caller_audio_dropped(self) -> int:
        """Bytes of caller audio dropped because the call's control loop fell behind."""
        ...

    async def run(
        self,
        events: trio.MemorySendChannel[TelephonyEvent],
        commands: trio.MemoryReceiveChannel[TelephonyCommand],
    ) -> None:
        """Relay until the caller's side ends (sending TelephonyEnded) or commands close."""


class AgentLeg(Protocol):
    async def __call__(
        self,
        info: CallInfo,
        events: trio.MemorySendChannel[AgentEvent],
        commands: trio.MemoryReceiveChannel[AgentCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect; `started()` once ready; raise AgentLegFailed if it never gets ready."""


class ToolLeg(Protocol):
    async def __call__(
        self,
        commands: trio.MemoryReceiveChannel[ToolCommand],
        events: trio.MemorySendChannel[ToolEvent],
    ) -> None:
        """Run tools as commanded until the commands end; answer each RunTool with ToolFinished."""
