"""The loopback model's websocket server: a local Realtime endpoint, so the daemon runs keyless.

A thin trio shell (DESIGN.md rule 1) around :class:`bridge.agent.loopback.LoopbackModel`: it serves
``ws://host:port/<anything>/realtime`` like ``wss://api.openai.com/v1/realtime`` (realtime-api.md
§1.2), answers other paths with HTTP 404, and runs one model core per connection. Authorization is
accepted whatever it is (the server is local) and never logged. In the GA dialect a handshake that
carries ``OpenAI-Beta`` gets what the real service sends since May 2026: an ``error`` event
``beta_api_shape_disabled`` and close code 4000. A script of :class:`ScriptedToolCall` entries
makes every session it serves call functions (realtime-api.md §4.2).
"""

from __future__ import annotations

import collections
import functools
import logging
import time
import urllib.parse
from collections.abc import Sequence

import attrs
import trio
import trio_websocket

from bridge.agent.loopback import (
    DEFAULT_GENERATION_SPEED,
    SESSION_SECONDS,
    Dialect,
    LoopbackModel,
    LoopbackStatistics,
    ScriptedToolCall,
)

log = logging.getLogger("bridge.loopback")

MAX_MESSAGE_SIZE = 16 * 1024 * 1024
REALTIME_PATH_SUFFIX = "/realtime"
CLOSE_TIMEOUT_S = 5.0
KEEP_CLOSED_MODELS = 1000


@attrs.define
class LoopbackRegistry:
    """The model cores the server created, and how many websockets are open right now.

    `models` holds every open connection's core plus the most recent `keep_closed` finished ones,
    so a daemon that runs the loopback for weeks does not keep every call it ever served.
    """

    models: list[LoopbackModel] = attrs.field(factory=list)
    open_connections: int = 0
    connections_total: int = 0
    rejected_handshakes: int = 0
    keep_closed: int = KEEP_CLOSED_MODELS
    _closed: collections.deque[LoopbackModel] = attrs.field(factory=collections.deque)

    def statistics(self) -> list[LoopbackStatistics]:
        return [model.statistics() for model in self.models]

    def connection_opened(self, model: LoopbackModel) -> None:
        self.models.append(model)
        self.open_connections += 1

    def connection_closed(self, model: LoopbackModel) -> None:
        self.open_connections -= 1
        self._closed.append(model)
        while len(self._closed) > self.keep_closed:
            self.models.remove(self._closed.popleft())


@attrs.frozen
class LoopbackServer:
    """Where a started loopback model listens, and its registry of connections."""

    host: str
    port: int
    registry: LoopbackRegistry

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    @property
    def models(self) -> list[LoopbackModel]:
        return self.registry.models

    @property
    def open_connections(self) -> int:
        return self.registry.open_connections


async def serve_loopback_model(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    dialect: str = "ga",
    generation_speed: float = DEFAULT_GENERATION_SPEED,
    script: Sequence[ScriptedToolCall] = (),
    task_status: trio.TaskStatus[LoopbackServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the loopback model until cancelled; `started()` reports the bound port.

    Every session follows `script` (see :class:`ScriptedToolCall`)."""
    model_dialect = Dialect(dialect)
    registry = LoopbackRegistry()
    handler = functools.partial(
        _handle_request,
        registry=registry,
        dialect=model_dialect,
        generation_speed=generation_speed,
        script=tuple(script),
    )
    async with trio.open_nursery() as nursery:
        websocket_server = await nursery.start(
            functools.partial(
                trio_websocket.serve_websocket,
                handler,
                host,
                port,
                None,
                max_message_size=MAX_MESSAGE_SIZE,
            )
        )
        server = LoopbackServer(host=host, port=websocket_server.port, registry=registry)
        log.info(
            "loopback model listening",
            extra={"url": server.url, "dialect": dialect, "scripted_calls": len(script)},
        )
        task_status.started(server)


async def _handle_request(
    request: trio_websocket.WebSocketRequest,
    *,
    registry: LoopbackRegistry,
    dialect: Dialect,
    generation_speed: float,
    script: tuple[ScriptedToolCall, ...],
) -> None:
    target = urllib.parse.urlsplit(request.path)
    if not target.path.endswith(REALTIME_PATH_SUFFIX):
        registry.rejected_handshakes += 1
        await request.reject(404, body=b"not found: the loopback model serves .../realtime\n")
        return
    query = urllib.parse.parse_qs(target.query)
    model_name = query.get("model", ["gpt-realtime"])[0]
    beta_handshake = any(name.lower() == b"openai-beta" for name, _ in request.headers)
    registry.connections_total += 1
    model = LoopbackModel(
        session_id=f"sess_loopback{registry.connections_total:06d}",
        dialect=dialect,
        model=model_name,
        # expires_at is a Unix timestamp on the wire, so this one value comes from the wall clock.
        expires_at=int(time.time()) + SESSION_SECONDS,
        generation_speed=generation_speed,
        beta_handshake=beta_handshake,
        script=script,
    )
    websocket = await request.accept()
    registry.connection_opened(model)
    log.debug("loopback connection opened", extra={"session": model.session_id})
    try:
        await _run_connection(websocket, model)
    except trio_websocket.ConnectionClosed:
        pass
    finally:
        registry.connection_closed(model)
        log.debug("loopback connection closed", extra={"session": model.session_id})


async def _run_connection(
    websocket: trio_websocket.WebSocketConnection, model: LoopbackModel
) -> None:
    """One task reads, feeds the core, honours its deadline and writes what it queued."""
    while True:
        for message in model.messages_to_send():
            await websocket.send_message(message)
        if model.close_requested is not None:
            code, reason = model.close_requested
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await websocket.aclose(code=code, reason=reason)
            return
        received: str | bytes | None = None
        with trio.move_on_at(model.next_deadline()):
            received = await websocket.get_message()
        now = trio.current_time()
        if received is None:
            model.handle_timeout(now)
        else:
            model.receive_message(received, now)


__all__ = ["MAX_MESSAGE_SIZE", "LoopbackRegistry", "LoopbackServer", "serve_loopback_model"]
