"""A recording websocket proxy in front of a loopback model, for byte-level end-to-end checks.

The loopback model counts what it receives but does not keep the audio; the SIP end-to-end tests
compare bytes, so the daemon's model URL points at this tap instead. The tap forwards every
websocket message unchanged in both directions and keeps each one, parsed, in arrival order:
client events (daemon -> model) and server events (model -> daemon) per connection. Closing
either side closes the other with the same code.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_websocket

from bridge.adapters.loopback_server import LoopbackServer, serve_loopback_model
from bridge.agent.loopback import ScriptedToolCall

MAX_MESSAGE_SIZE = 16 * 1024 * 1024
# Handshake headers that belong to one hop and are made afresh by the tap's own client.
_HOP_HEADERS = frozenset(
    {
        b"host",
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
    }
)


@attrs.define
class TappedConnection:
    """The events of one model websocket, as JSON objects, in the order they passed."""

    client_events: list[dict[str, Any]] = attrs.field(factory=list)
    server_events: list[dict[str, Any]] = attrs.field(factory=list)

    def client(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.client_events if event.get("type") == event_type]

    def server(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.server_events if event.get("type") == event_type]

    def input_audio(self) -> bytes:
        """Every byte of caller audio the daemon appended to the model's input buffer."""
        return b"".join(
            base64.b64decode(event["audio"]) for event in self.client("input_audio_buffer.append")
        )

    def output_audio(self, item_id: str | None = None) -> bytes:
        """The model's audio deltas (GA ``response.output_audio.delta``), of one item or all."""
        return b"".join(
            base64.b64decode(event["delta"])
            for event in self.server("response.output_audio.delta")
            if item_id is None or event.get("item_id") == item_id
        )

    def output_items(self) -> list[str]:
        """Item ids of the model's audio replies, in the order their first delta passed."""
        items: list[str] = []
        for event in self.server("response.output_audio.delta"):
            if event.get("item_id") not in items:
                items.append(event["item_id"])
        return items


@attrs.frozen
class ModelTap:
    """Where the daemon should connect (`url`), the loopback model behind it, what passed."""

    url: str
    model: LoopbackServer
    connections: list[TappedConnection]


def _parsed(message: str | bytes) -> dict[str, Any]:
    try:
        event = json.loads(message)
    except ValueError:
        return {"type": "(not json)", "raw": message}
    return event if isinstance(event, dict) else {"type": "(not an object)", "raw": event}


async def _pump(
    source: trio_websocket.WebSocketConnection,
    sink: trio_websocket.WebSocketConnection,
    record: list[dict[str, Any]],
    cancel_scope: trio.CancelScope,
) -> None:
    try:
        while True:
            message = await source.get_message()
            record.append(_parsed(message))
            await sink.send_message(message)
    except trio_websocket.ConnectionClosed as closed:
        reason = closed.reason
        code = reason.code if reason is not None and reason.code is not None else 1000
        if code in (1005, 1006):
            code = 1000
        await sink.aclose(code=code, reason=(reason.reason if reason else None) or "")
    finally:
        cancel_scope.cancel()


async def _relay(
    request: trio_websocket.WebSocketRequest,
    *,
    model: LoopbackServer,
    connections: list[TappedConnection],
) -> None:
    headers = [(name, value) for name, value in request.headers if name.lower() not in _HOP_HEADERS]
    target = f"ws://{model.host}:{model.port}{request.path}"
    try:
        async with trio_websocket.open_websocket_url(
            target, extra_headers=headers, max_message_size=MAX_MESSAGE_SIZE
        ) as upstream:
            downstream = await request.accept()
            connection = TappedConnection()
            connections.append(connection)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    _pump, downstream, upstream, connection.client_events, nursery.cancel_scope
                )
                nursery.start_soon(
                    _pump, upstream, downstream, connection.server_events, nursery.cancel_scope
                )
    except trio_websocket.HandshakeError:
        await request.reject(502, body=b"the loopback model refused the tap's handshake\n")


@asynccontextmanager
async def open_model_tap(
    *, generation_speed: float = 4.0, script: Sequence[ScriptedToolCall] = ()
) -> AsyncIterator[ModelTap]:
    """A loopback model with a recording proxy in front; give the daemon ``tap.url``.

    `script` makes the loopback model call functions (see ScriptedToolCall)."""
    async with trio.open_nursery() as nursery:
        model = await nursery.start(
            functools.partial(
                serve_loopback_model, generation_speed=generation_speed, script=script
            )
        )
        connections: list[TappedConnection] = []
        server = await nursery.start(
            functools.partial(
                trio_websocket.serve_websocket,
                functools.partial(_relay, model=model, connections=connections),
                "127.0.0.1",
                0,
                None,
                max_message_size=MAX_MESSAGE_SIZE,
            )
        )
        yield ModelTap(
            url=f"ws://127.0.0.1:{server.port}/v1/realtime", model=model, connections=connections
        )
        nursery.cancel_scope.cancel()
