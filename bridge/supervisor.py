"""run_call(): one nursery per call, wiring two legs to the pure CallBridge.

Both legs start at once; the agent leg reports `AgentReady` once the model confirmed the call's
audio formats, and caller audio waits for it in the agent's command channel. Every event from
either leg goes through one inbox to the control loop, which feeds
:class:`bridge.call.bridge.CallBridge` and sends its commands to the legs. The first end event (or
the maximum duration) ends the call: the other leg is told to end, gets a short grace to close its
socket cleanly, and is cancelled after that. A leg that returns without saying why ends the call
too. Exactly one record is written per call, whatever happened, and no exception from one call
escapes this function.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from bridge.adapters.leg import AgentLeg, TelephonyLeg, ToolLeg
from bridge.agent.errors import AgentLegFailed
from bridge.call.bridge import CallBridge, CallBridgeSettings, Command, Event
from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentCommand,
    AgentEnded,
    CallerAudio,
    CancelTool,
    ClearAudio,
    EndReason,
    PlayAudio,
    RunTool,
    SendAudio,
    TelephonyCommand,
    TelephonyEnded,
    ToolCommand,
    ToolOutcome,
)
from bridge.call.observations import Observation
from bridge.call.tools import tool_failure
from bridge.logs import CallLogger

RecordWriter = Callable[[dict[str, Any]], Awaitable[None]]


class CallObserver(Protocol):
    """Told what the control loop observed (metrics, the journal); must not block or raise."""

    def __call__(self, observation: Observation) -> None: ...


class AudioTap(Protocol):
    """Hears the call's audio as it passes the control loop (a call recording).

    Called on the per-frame path: it must only buffer or write to a file, never block."""

    def caller(self, payload: bytes) -> None:
        """Caller audio in the call's codec, as it arrived."""

    def model(self, payload: bytes) -> None:
        """Model audio in the call's codec, as it was handed to the caller's side."""

    def cleared(self) -> None:
        """What the caller's side had queued and not played yet was dropped (barge-in)."""


# Room for bursts: the model sends audio faster than real time, the caller 50 frames a second.
INBOX_SIZE = 1024
LEG_COMMANDS_SIZE = 1024
# Events handled per wake-up of the control loop, at most.
INBOX_BATCH = 64
# How long a leg may take to close its socket after being told to end.
CLOSE_GRACE_S = 2.0


async def run_call(
    leg: TelephonyLeg,
    agent: AgentLeg,
    *,
    settings: CallBridgeSettings,
    log: CallLogger,
    info: CallInfo | None = None,
    tools: ToolLeg | None = None,
    write_record: RecordWriter | None = None,
    observer: CallObserver | None = None,
    audio_tap: AudioTap | None = None,
    wallclock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> dict[str, Any]:
    """Run one call to its end and return its record (also handed to `write_record`).

    `observer` is told what the call's control loop observes as it happens, and `audio_tap`
    hears the caller's and the model's audio; a failing observer or tap is logged and dropped,
    never the call's end."""
    started_wall = wallclock()
    # `info` is the call as its profile saw it (with the pre-call hook's variables).
    info = info or leg.info
    bridge = CallBridge(info=info, settings=settings, now=trio.current_time())
    log.info(
        "call started",
        extra={"ingress": leg.info.ingress, "codec": leg.info.codec.value, **leg.info.external_ids},
    )
    watch = _Watch(bridge, log, observer, audio_tap)
    try:
        await _relay(bridge, leg, agent, tools, log, watch)
    except* Exception as group:
        log.error("call failed", exc_info=group)
        bridge.end(EndReason.INTERNAL_ERROR, repr(group.exceptions[0]), trio.current_time())
    finally:
        if not bridge.ended:
            bridge.end(EndReason.SHUTDOWN, "daemon stopping", trio.current_time())
        watch.observe()
        record = bridge.record()
        record["telephony_statistics"] = {"dropped_caller_bytes": leg.caller_audio_dropped}
        record["started_at"] = started_wall.isoformat()
        log.info(
            "call ended",
            extra={
                "end_reason": record["end_reason"],
                "detail": record["end_detail"],
                "duration_s": record["duration_s"],
            },
        )
        if write_record is not None:
            with trio.CancelScope(shield=True):
                try:
                    await write_record(record)
                except OSError as error:
                    log.error("could not write the call record", extra={"error": str(error)})
    return record


async def _relay(
    bridge: CallBridge,
    leg: TelephonyLeg,
    agent: AgentLeg,
    tools: ToolLeg | None,
    log: CallLogger,
    watch: _Watch,
) -> None:
    inbox_send, inbox = trio.open_memory_channel[Event](INBOX_SIZE)
    to_tel_send, to_tel = trio.open_memory_channel[TelephonyCommand](LEG_COMMANDS_SIZE)
    to_agent_send, to_agent = trio.open_memory_channel[AgentCommand](LEG_COMMANDS_SIZE)
    to_tools_send, to_tools = trio.open_memory_channel[ToolCommand](LEG_COMMANDS_SIZE)

    async def dispatch(commands: list[Command]) -> None:
        watch.observe()
        if watch.audio_tap is not None:
            watch.outbound(commands)
        for command in commands:
            if isinstance(command, SendAudio):
                # Caller audio is real time: never stall the control loop for it.
                try:
                    to_agent_send.send_nowait(command)
                except trio.WouldBlock:
                    bridge.caller_audio_dropped(len(command.payload))
            elif isinstance(command, TelephonyCommand):
                await to_tel_send.send(command)
            elif isinstance(command, RunTool | CancelTool):
                if tools is not None:
                    await to_tools_send.send(command)
                elif isinstance(command, RunTool):
                    message = "no tool runner is available for this call"
                    _report(inbox_send, tool_failure(command.call_id, ToolOutcome.ERROR, message))
            else:
                await to_agent_send.send(command)

    agent_events = inbox_send.clone()
    # Cancelled when the call ends before the model is ready: nothing is left to wait for.
    connecting = trio.CancelScope()

    async def run_agent() -> None:
        async with agent_events:
            with connecting:
                try:
                    await agent(bridge.info, agent_events, to_agent)
                except AgentLegFailed as failure:
                    log.warning(
                        "model session failed",
                        extra={"reason": failure.reason.value, "detail": failure.detail},
                    )
                    _report(agent_events, AgentEnded(failure.reason, failure.detail))
                    return
            _report(agent_events, AgentEnded(EndReason.MODEL_CLOSED, "the model leg ended"))

    async def run_telephony() -> None:
        async with inbox_send:
            await leg.run(inbox_send, to_tel)
            _report(inbox_send, TelephonyEnded(EndReason.TELEPHONY_ERROR, "the phone leg ended"))

    tool_events = inbox_send.clone()

    async def run_tools() -> None:
        async with tool_events:
            if tools is not None:
                await tools(to_tools, tool_events)

    # The per-frame path: the tap's wrapper only when a recording needs it.
    handle = watch.handle if watch.audio_tap is not None else bridge.handle

    async with trio.open_nursery() as nursery:
        # Both legs start at once: a caller who hangs up while the model is still connecting is
        # heard at once, and caller audio waits in the agent's command channel until it is ready.
        nursery.start_soon(run_telephony)
        nursery.start_soon(run_agent)
        nursery.start_soon(run_tools)

        while not bridge.ended:
            commands: list[Command] = []
            with trio.move_on_at(bridge.next_deadline()) as timer:
                try:
                    event = await inbox.receive()
                except trio.EndOfChannel:
                    event = None
            now = trio.current_time()
            if timer.cancelled_caught:
                commands = bridge.handle_timeout(now)
            elif event is None:
                commands = bridge.end(EndReason.INTERNAL_ERROR, "both legs ended silently", now)
            else:
                commands = handle(event, now)
                # Under load several events are waiting: take them all before sleeping again.
                for _ in range(INBOX_BATCH):
                    try:
                        commands += handle(inbox.receive_nowait(), now)
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
            await dispatch(_coalesce_audio(commands))

        # The call is over: let both legs close cleanly, then stop whatever is left. Usage and
        # transcripts still arriving meanwhile go into the record.
        if not bridge.model_ready:
            connecting.cancel()
        to_tel_send.close()
        to_agent_send.close()
        to_tools_send.close()
        nursery.start_soon(_drain_into_record, inbox, watch)
        nursery.cancel_scope.deadline = trio.current_time() + CLOSE_GRACE_S
    if dropped := bridge.statistics().dropped_caller_bytes:
        log.warning("caller audio dropped: the model leg fell behind", extra={"bytes": dropped})


def _coalesce_audio(commands: list[Command]) -> list[Command]:
    """Join adjacent caller-audio sends: one append instead of several when the loop fell behind."""
    if len(commands) < 2:
        return commands
    joined: list[Command] = []
    for command in commands:
        previous = joined[-1] if joined else None
        if isinstance(command, SendAudio) and isinstance(previous, SendAudio):
            joined[-1] = SendAudio(previous.payload + command.payload)
        else:
            joined.append(command)
    return joined


def _report(channel: trio.MemorySendChannel[Any], event: Event) -> None:
    """Tell the control loop a leg is gone; it ignores this when the call has already ended."""
    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        channel.send_nowait(event)


async def _drain_into_record(inbox: trio.MemoryReceiveChannel[Event], watch: _Watch) -> None:
    async for event in inbox:
        watch.handle(event, trio.current_time())
        watch.observe()


class _Watch:
    """Passes the bridge's observations to the observer and the call's audio to the tap."""

    def __init__(
        self,
        bridge: CallBridge,
        log: CallLogger,
        observer: CallObserver | None,
        audio_tap: AudioTap | None,
    ) -> None:
        self.bridge = bridge
        self.log = log
        self.observer = observer
        self.audio_tap = audio_tap

    def handle(self, event: Event, now: float) -> list[Command]:
        if self.audio_tap is not None and isinstance(event, CallerAudio):
            self._tap(self.audio_tap.caller, event.payload)
        return self.bridge.handle(event, now)

    def outbound(self, commands: list[Command]) -> None:
        for command in commands:
            tap = self.audio_tap
            if tap is None:
                # (a failing tap switches itself off)
                return
            if isinstance(command, PlayAudio):
                self._tap(tap.model, command.payload)
            elif isinstance(command, ClearAudio):
                self._tap(tap.cleared)

    def observe(self) -> None:
        observations = self.bridge.pop_observations()
        if self.observer is None:
            return
        for observation in observations:
            try:
                self.observer(observation)
            except Exception:
                self.log.exception("a call observer failed; it is switched off for this call")
                self.observer = None
                return

    def _tap(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception:
            self.log.exception("the call recording failed; it stops here, the call goes on")
            self.audio_tap = None


__all__ = ["AgentLegFailed", "AudioTap", "CallObserver", "RecordWriter", "run_call"]
