"""The agent leg over a Realtime API websocket (realtime-api.md §1.2, §6.1): a thin trio shell.

All protocol decisions live in :class:`bridge.proto.realtime.session.RealtimeSession`; this module
connects, then runs three tasks around it (DESIGN.md rules 2-5):

* reader: websocket messages -> ``receive_message`` -> events to the control loop;
* commands: control loop commands -> ``send`` -> the core's output straight to the socket;
* timer: the core's deadline (the wait for ``session.updated``).

The per-frame path is the commands task: it takes a command and every other one already queued,
feeds them all to the core and writes what the core produced as one socket write, with no task in
between (DESIGN.md "the per-frame path is the hot path"). Writes from other tasks (the core's
output after a server event, pongs, close replies) take turns with it under the websocket's one
write lock, and take the core's output only once they hold it, so messages keep the core's order.

Events are forwarded by whichever task produced them, under one FIFO lock so they keep the core's
order. Every event waits for room in the control loop's inbox; model audio that has to wait is
counted (it comes faster than real time, so the model's socket simply waits to be read).
``task_status.started()`` is called only when the core reports ready; a session that fails before
that raises :class:`bridge.agent.errors.AgentLegFailed` instead. After that, the model closing the
socket or a fatal error ends the leg with :class:`AgentEnded`; ``CloseAgent`` or the end of the
command channel closes the websocket cleanly (after flushing what the core still had to send).
The caller owns both channels: the leg never closes them.

The websocket is wsproto driven directly on a TCP/TLS stream that is always closed
(:func:`bridge.adapters.websocket_client.open_client_websocket`).
The API key goes into one handshake header and nowhere else: log lines name the endpoint
(scheme, host, port, path) and the model, never headers or the key.
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from bridge.adapters.websocket_client import (
    ClientWebSocket,
    WebSocketClosed,
    WebSocketHandshakeError,
    WebSocketRejected,
    open_client_websocket,
)
from bridge.agent.errors import AgentLegFailed
from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentAudio,
    AgentCommand,
    AgentEnded,
    AgentError,
    AgentEvent,
    AgentFunctionCall,
    AgentReady,
    CloseAgent,
    EndReason,
)
from bridge.config import Dialect, ModelConfig, Provider, SessionConfig
from bridge.proto.realtime.session import RealtimeSession
from bridge.proto.realtime.session_config import build_session_update, expected_formats


def realtime_url(url: str, model: str) -> str:
    """`url` with ``model=<model>`` added to its query (the Azure deployment name on Azure)."""
    separator = "&" if "?" in url else "?"
    return url + separator + urllib.parse.urlencode({"model": model})


def handshake_headers(
    provider: Provider, dialect: Dialect, api_key: str | None
) -> list[tuple[bytes, bytes]]:
    """HTTP headers for the upgrade: the key as Azure or OpenAI expect it, and the beta marker."""
    headers: list[tuple[bytes, bytes]] = []
    if api_key:
        if provider is Provider.AZURE:
            headers.append((b"api-key", api_key.encode()))
        else:
            headers.append((b"authorization", b"Bearer " + api_key.encode()))
    if dialect is Dialect.BETA:
        headers.append((b"openai-beta", b"realtime=v1"))
    return headers


def _describe_endpoint(url: str) -> str:
    """scheme://host[:port]/path, for log lines and end details: no query, no credentials."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


async def run_realtime_leg(
    *,
    model: ModelConfig,
    session: SessionConfig,
    call: CallInfo,
    api_key: str | None,
    url: str,
    tools: Sequence[Mapping[str, Any]] = (),
    events: trio.MemorySendChannel[AgentEvent],
    commands: trio.MemoryReceiveChannel[AgentCommand],
    log: logging.LoggerAdapter[logging.Logger] | logging.Logger,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the model side of one call until it ends; see the module docstring."""
    dialect = model.dialect
    core = RealtimeSession(
        dialect=dialect,
        session_update=build_session_update(
            session, call, dialect=dialect, model=model.model, tools=tools
        ),
        expected_formats=expected_formats(session, call, dialect=dialect),
        session_timeout_s=model.session_timeout_s,
        now=trio.current_time(),
    )
    endpoint = _describe_endpoint(url)
    log.info(
        "connecting to the realtime model",
        extra={"endpoint": endpoint, "model": model.model, "dialect": dialect.value},
    )
    leg = _RealtimeLeg(
        core=core, events=events, commands=commands, log=log, task_status=task_status
    )
    # Only connecting raises these; whatever the running leg meets ends it through `leg.failure`
    # or an AgentEnded event instead.
    try:
        async with open_client_websocket(
            realtime_url(url, model.model),
            extra_headers=handshake_headers(model.provider, dialect, api_key),
            max_message_size=model.max_message_bytes,
            connect_timeout=model.connect_timeout_s,
        ) as websocket:
            await leg.run(websocket)
    except WebSocketRejected as rejected:
        raise AgentLegFailed(
            EndReason.MODEL_CONNECT_FAILED,
            f"{endpoint} rejected the websocket handshake with HTTP {rejected.status_code}",
        ) from None
    except trio.TooSlowError:
        raise AgentLegFailed(
            EndReason.MODEL_CONNECT_FAILED,
            f"timed out after {model.connect_timeout_s:g} s connecting to {endpoint}",
        ) from None
    except (OSError, ValueError, WebSocketHandshakeError) as error:
        raise AgentLegFailed(
            EndReason.MODEL_CONNECT_FAILED, f"could not connect to {endpoint}: {error}"
        ) from None
    if leg.failure is not None:
        raise leg.failure
    if not leg.started:
        # The bridge closed the leg (CloseAgent, commands or events channel gone) while connecting.
        raise AgentLegFailed(EndReason.MODEL_CLOSED, "closed before the session was ready")
    statistics = core.statistics()
    log.info(
        "realtime session finished",
        extra={
            "messages_in": statistics.messages_received,
            "messages_out": statistics.messages_sent,
            "malformed": statistics.malformed_messages,
            "unknown_events": statistics.unknown_events,
            "server_errors": statistics.server_errors,
            "responses": statistics.responses_done,
            "audio_events_delayed": leg.audio_events_delayed,
        },
    )


async def _acquire(lock: trio.StrictFIFOLock) -> None:
    """Take `lock` without a trip through the scheduler when it is free (nearly always)."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class _RealtimeLeg:
    """The tasks around one RealtimeSession on one open websocket."""

    def __init__(
        self,
        *,
        core: RealtimeSession,
        events: trio.MemorySendChannel[AgentEvent],
        commands: trio.MemoryReceiveChannel[AgentCommand],
        log: logging.LoggerAdapter[logging.Logger] | logging.Logger,
        task_status: trio.TaskStatus[None],
    ) -> None:
        self._core = core
        self._events = events
        self._commands = commands
        self._log = log
        self._task_status = task_status
        self._events_lock = trio.StrictFIFOLock()
        self._timer_wakeup = trio.Event()
        self._timer_deadline = math.inf
        self._closing = False
        self._close_seen = False
        self._finished = trio.Event()
        self.started = False
        self.failure: AgentLegFailed | None = None
        self.audio_events_delayed = 0

    async def run(self, websocket: ClientWebSocket) -> None:
        self._websocket = websocket
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_reader)
            nursery.start_soon(self._run_commands)
            nursery.start_soon(self._run_timer)
            await self._finished.wait()
            nursery.cancel_scope.cancel()

    # ---- tasks ---------------------------------------------------------------------------------

    async def _run_reader(self) -> None:
        core = self._core
        try:
            while True:
                messages = await self._websocket.receive_messages()
                now = trio.current_time()
                for message in messages:
                    core.receive_message(message, now)
                for event_type in core.new_unknown_event_types():
                    self._log.debug("unknown realtime event type", extra={"event_type": event_type})
                await self._after_core_input()
        except WebSocketClosed as closed:
            await self._on_closed(closed)

    async def _run_commands(self) -> None:
        core = self._core
        commands = self._commands
        try:
            # The core queued session.update when it was made: the first frame on the wire.
            await self._flush()
            while True:
                try:
                    command = await commands.receive()
                except trio.EndOfChannel:
                    break
                now = trio.current_time()
                # Everything already queued goes to the core now and out in one socket write.
                closing = False
                while True:
                    core.send(command, now)
                    if isinstance(command, CloseAgent):
                        closing = True
                        break
                    try:
                        command = commands.receive_nowait()
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        closing = True
                        break
                if closing:
                    break
                await self._after_core_input()
        except WebSocketClosed as closed:
            await self._on_closed(closed)
            return
        # CloseAgent, or the control loop dropped its end of the channel: flush what the core
        # still had to send; the close frame follows once the leg's tasks are gone.
        self._closing = True
        try:
            await self._flush()
        except WebSocketClosed:
            pass
        self._finished.set()

    async def _run_timer(self) -> None:
        try:
            while True:
                self._timer_deadline = self._core.next_deadline()
                with trio.move_on_at(self._timer_deadline):
                    await self._timer_wakeup.wait()
                    self._timer_wakeup = trio.Event()
                    continue
                self._core.handle_timeout(trio.current_time())
                await self._after_core_input()
        except WebSocketClosed as closed:
            await self._on_closed(closed)

    # ---- plumbing ------------------------------------------------------------------------------

    async def _after_core_input(self) -> None:
        """Write what the core produced, rearm the timer, forward its events."""
        if self._core.has_messages_to_send():
            await self._flush()
        if self._core.next_deadline() != self._timer_deadline:
            self._timer_wakeup.set()
        if self._core.has_events():
            await self._forward_events()

    async def _flush(self) -> None:
        # The core's outbox is taken under the write lock, so two tasks flushing at once cannot
        # swap the order of its messages.
        await self._websocket.send_messages(self._core.messages_to_send)

    async def _forward_events(self) -> None:
        await _acquire(self._events_lock)
        try:
            while (event := self._core.next_event()) is not None:
                try:
                    await self._forward(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # Nobody listens any more: the call is over.
                    self._finished.set()
                    return
        finally:
            self._events_lock.release()

    async def _forward(self, event: AgentEvent) -> None:
        match event:
            case AgentAudio():
                # Model audio waits for room rather than being dropped: a lost delta would be an
                # audible gap and would shift every later truncation point. It comes in bounded
                # bursts (one response), so waiting only slows reading the model's socket.
                try:
                    self._events.send_nowait(event)
                except trio.WouldBlock:
                    self.audio_events_delayed += 1
                    await self._events.send(event)
            case AgentReady(session_id=session_id):
                self._log.info("realtime session ready", extra={"session_id": session_id})
                self.started = True
                self._task_status.started()
                await self._events.send(event)
            case AgentEnded(reason=reason, detail=detail):
                if not self.started:
                    self.failure = AgentLegFailed(reason, detail)
                else:
                    self._log.warning(
                        "realtime session ended", extra={"reason": reason.value, "detail": detail}
                    )
                    await self._events.send(event)
                self._finished.set()
            case AgentFunctionCall(name=name, call_id=call_id):
                # The arguments may hold what the caller said (PII): the record keeps them.
                self._log.info(
                    "model called a function", extra={"tool": name, "tool_call_id": call_id}
                )
                await self._events.send(event)
            case AgentError(code=code, message=message):
                self._log.warning("realtime model error", extra={"code": code, "detail": message})
                await self._events.send(event)
            case _:
                await self._events.send(event)

    async def _on_closed(self, closed: WebSocketClosed) -> None:
        if self._closing or self._finished.is_set() or self._close_seen:
            return
        # Reader and writers can all see the close; one report is enough.
        self._close_seen = True
        # Whatever arrived before the close frame has been handed to the core already.
        await self._forward_events()
        if self._finished.is_set():
            return
        text = f" {closed.reason}" if closed.reason else ""
        if closed.by_peer:
            detail = f"the model closed the websocket ({closed.code}{text})"
        else:
            detail = f"closed the model's websocket ({closed.code}{text})"
        if not self.started:
            self.failure = AgentLegFailed(
                EndReason.MODEL_CONNECT_FAILED, detail + " before session.updated"
            )
        else:
            self._log.warning("realtime websocket closed", extra={"code": closed.code})
            try:
                await self._events.send(AgentEnded(EndReason.MODEL_CLOSED, detail))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._finished.set()


__all__ = ["handshake_headers", "realtime_url", "run_realtime_leg"]
