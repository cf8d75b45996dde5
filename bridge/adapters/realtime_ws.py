"""The agent leg over a Realtime API websocket (realtime-api.md §1.2, §6.1): a thin trio shell.

All protocol decisions live in :class:`bridge.proto.realtime.session.RealtimeSession`; this module
connects, then runs four tasks around it (DESIGN.md rules 2-5):

* reader: websocket message -> ``receive_message`` -> events to the control loop;
* commands: control loop command -> ``send``;
* writer: the one task that writes to the websocket, woken whenever the core has output;
* timer: the core's deadline (the wait for ``session.updated``).

Events are forwarded by whichever task produced them, under one FIFO lock so they keep the core's
order. Model audio goes out with ``send_nowait`` and is counted when the control loop is behind
(a websocket reader must never stall on real-time audio); every other event waits for room.
``task_status.started()`` is called only when the core reports ready; a session that fails before
that raises :class:`bridge.agent.errors.AgentLegFailed` instead. After that, the model closing the
socket or a fatal error ends the leg with :class:`AgentEnded`; ``CloseAgent`` or the end of the
command channel closes the websocket cleanly (after flushing what the core still had to send).
The caller owns both channels: the leg never closes them.

The websocket is trio-websocket's, over a TCP/TLS stream this module opens and always closes
itself (see :func:`bridge.adapters.websocket_client.run_client_websocket`).
The API key goes into one handshake header and nowhere else: log lines name the endpoint
(scheme, host, port, path) and the model, never headers or the key.
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from typing import TypeVar

import trio
import trio_websocket

from bridge.adapters.websocket_client import run_client_websocket
from bridge.agent.errors import AgentLegFailed
from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentAudio,
    AgentCommand,
    AgentEnded,
    AgentError,
    AgentEvent,
    AgentReady,
    CloseAgent,
    EndReason,
)
from bridge.config import Dialect, ModelConfig, Provider, SessionConfig
from bridge.proto.realtime.session import RealtimeSession
from bridge.proto.realtime.session_config import build_session_update, expected_formats

# Messages trio-websocket may hold for the reader: the model sends audio faster than real time.
MESSAGE_QUEUE_SIZE = 64


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


_E = TypeVar("_E", bound=BaseException)


def _first(group: BaseExceptionGroup[_E], kind: type[_E]) -> _E:
    """The first leaf of `group` (except* hands over groups even for one exception)."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, kind)
    return leaf


async def run_realtime_leg(
    *,
    model: ModelConfig,
    session: SessionConfig,
    call: CallInfo,
    api_key: str | None,
    url: str,
    events: trio.MemorySendChannel[AgentEvent],
    commands: trio.MemoryReceiveChannel[AgentCommand],
    log: logging.LoggerAdapter[logging.Logger] | logging.Logger,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the model side of one call until it ends; see the module docstring."""
    dialect = model.dialect
    core = RealtimeSession(
        dialect=dialect,
        session_update=build_session_update(session, call, dialect=dialect, model=model.model),
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
    try:
        await run_client_websocket(
            realtime_url(url, model.model),
            message_queue_size=MESSAGE_QUEUE_SIZE,
            extra_headers=handshake_headers(model.provider, dialect, api_key),
            max_message_size=model.max_message_bytes,
            connect_timeout=model.connect_timeout_s,
            run=leg.run,
        )
    except* trio_websocket.ConnectionRejected as group:
        if leg.started:
            raise
        status = _first(group, trio_websocket.ConnectionRejected).status_code
        raise AgentLegFailed(
            EndReason.MODEL_CONNECT_FAILED,
            f"{endpoint} rejected the websocket handshake with HTTP {status}",
        ) from None
    except* trio.TooSlowError:
        if leg.started:
            raise
        raise AgentLegFailed(
            EndReason.MODEL_CONNECT_FAILED,
            f"timed out after {model.connect_timeout_s:g} s connecting to {endpoint}",
        ) from None
    except* (OSError, ValueError) as group:
        if leg.started:
            raise
        error = _first(group, Exception)
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
            "audio_events_dropped": leg.audio_events_dropped,
        },
    )


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
        self._writer_wakeup = trio.Event()
        self._timer_wakeup = trio.Event()
        self._timer_deadline = math.inf
        self._closing = False
        self._close_seen = False
        self._finished = trio.Event()
        self.started = False
        self.failure: AgentLegFailed | None = None
        self.audio_events_dropped = 0

    async def run(self, websocket: trio_websocket.WebSocketConnection) -> None:
        self._websocket = websocket
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_writer)
            nursery.start_soon(self._run_reader)
            nursery.start_soon(self._run_commands)
            nursery.start_soon(self._run_timer)
            await self._finished.wait()
            nursery.cancel_scope.cancel()

    # ---- tasks ---------------------------------------------------------------------------------

    async def _run_reader(self) -> None:
        try:
            while True:
                message = await self._websocket.get_message()
                self._core.receive_message(message, trio.current_time())
                for event_type in self._core.new_unknown_event_types():
                    self._log.debug("unknown realtime event type", extra={"event_type": event_type})
                await self._after_core_input()
        except trio_websocket.ConnectionClosed as closed:
            await self._on_closed(closed.reason)

    async def _run_commands(self) -> None:
        async for command in self._commands:
            self._core.send(command, trio.current_time())
            if isinstance(command, CloseAgent):
                break
            await self._after_core_input()
        # CloseAgent, or the control loop dropped its end of the channel: close cleanly.
        self._closing = True
        self._writer_wakeup.set()

    async def _run_writer(self) -> None:
        try:
            while True:
                for message in self._core.messages_to_send():
                    await self._websocket.send_message(message)
                if self._closing:
                    self._finished.set()
                    return
                await self._writer_wakeup.wait()
                self._writer_wakeup = trio.Event()
        except trio_websocket.ConnectionClosed as closed:
            await self._on_closed(closed.reason)

    async def _run_timer(self) -> None:
        while True:
            self._timer_deadline = self._core.next_deadline()
            with trio.move_on_at(self._timer_deadline):
                await self._timer_wakeup.wait()
                self._timer_wakeup = trio.Event()
                continue
            self._core.handle_timeout(trio.current_time())
            await self._after_core_input()

    # ---- plumbing ------------------------------------------------------------------------------

    async def _after_core_input(self) -> None:
        self._writer_wakeup.set()
        if self._core.next_deadline() != self._timer_deadline:
            self._timer_wakeup.set()
        await self._forward_events()

    async def _forward_events(self) -> None:
        async with self._events_lock:
            while (event := self._core.next_event()) is not None:
                try:
                    await self._forward(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # Nobody listens any more: the call is over.
                    self._finished.set()
                    return

    async def _forward(self, event: AgentEvent) -> None:
        match event:
            case AgentAudio():
                try:
                    self._events.send_nowait(event)
                except trio.WouldBlock:
                    self.audio_events_dropped += 1
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
            case AgentError(code=code, message=message):
                self._log.warning("realtime model error", extra={"code": code, "detail": message})
                await self._events.send(event)
            case _:
                await self._events.send(event)

    async def _on_closed(self, reason: trio_websocket.CloseReason | None) -> None:
        if self._closing or self._finished.is_set() or self._close_seen:
            return
        # Reader and writer can both see the close; one report is enough.
        self._close_seen = True
        # Whatever arrived before the close frame has been handed to the core already.
        await self._forward_events()
        if self._finished.is_set():
            return
        code = reason.code if reason is not None else 1006
        text = f" {reason.reason}" if reason is not None and reason.reason else ""
        detail = f"the model closed the websocket ({code}{text})"
        if not self.started:
            self.failure = AgentLegFailed(
                EndReason.MODEL_CONNECT_FAILED, detail + " before session.updated"
            )
        else:
            self._log.warning("realtime websocket closed", extra={"code": code})
            try:
                await self._events.send(AgentEnded(EndReason.MODEL_CLOSED, detail))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._finished.set()


__all__ = ["handshake_headers", "realtime_url", "run_realtime_leg"]
