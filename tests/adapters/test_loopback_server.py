"""The loopback model server, driven by a real trio-websocket client over 127.0.0.1.

These tests use the real clock, not ``autojump_clock``: with real sockets a jumping clock can fire
timeouts while bytes are still in flight. They stay fast because replies are generated at once
(``generation_speed=math.inf``) except in the paced test, whose waits are a few hundred ms.

trio-websocket 0.12.2's client never closes its TCP stream when the server rejects the handshake or
closes the websocket first; where the server does either, the test owns the TCP stream itself so
``filterwarnings = error`` does not turn the library's leak into a ResourceWarning failure.
"""

from __future__ import annotations

import array
import base64
import functools
import json
import logging
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket

from bridge.adapters.loopback_server import (
    MAX_MESSAGE_SIZE,
    LoopbackServer,
    serve_loopback_model,
)
from bridge.call.events import Codec
from bridge.media import g711

GUARD_SECONDS = 10
FORMAT_OF_CODEC = {Codec.PCMU: "audio/pcmu", Codec.PCMA: "audio/pcma"}
# 400 ms quiet, 1 s tone, 700 ms quiet: with the default VAD the turn is [100 ms, 1400 ms).
TURN_START_MS, TURN_END_MS = 100, 1400


def sine(codec: Codec, duration_ms: int, *, frequency: float = 440) -> bytes:
    count = duration_ms * g711.BYTES_PER_MS
    step = 2 * math.pi * frequency / g711.SAMPLE_RATE
    samples = array.array("h", (int(8000 * math.sin(step * n)) for n in range(count)))
    if sys.byteorder == "big":
        samples.byteswap()
    return g711.encode(codec, samples.tobytes())


def caller_turn(codec: Codec) -> bytes:
    quiet = functools.partial(g711.silence, codec)
    return quiet(400 * 8) + sine(codec, 1000) + quiet(700 * 8)


def turn_segment(codec: Codec) -> bytes:
    return caller_turn(codec)[TURN_START_MS * 8 : TURN_END_MS * 8]


@asynccontextmanager
async def running_server(**options: Any) -> AsyncIterator[LoopbackServer]:
    async with trio.open_nursery() as nursery:
        server: LoopbackServer = await nursery.start(
            functools.partial(serve_loopback_model, **options)
        )
        yield server
        nursery.cancel_scope.cancel()


async def receive(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.get_message())
    return event


async def receive_until(
    ws: trio_websocket.WebSocketConnection, event_type: str
) -> list[dict[str, Any]]:
    events = []
    while True:
        events.append(await receive(ws))
        if events[-1]["type"] == event_type:
            return events


async def configure(ws: trio_websocket.WebSocketConnection, codec: Codec) -> dict[str, Any]:
    fmt = {"type": FORMAT_OF_CODEC[codec]}
    update = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {"input": {"format": fmt}, "output": {"format": fmt}},
        },
    }
    await ws.send_message(json.dumps(update))
    return await receive(ws)


async def append(ws: trio_websocket.WebSocketConnection, audio: bytes, *, batch: int = 800) -> None:
    for offset in range(0, len(audio), batch):
        piece = base64.b64encode(audio[offset : offset + batch]).decode()
        await ws.send_message(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))


def reply_audio(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )


async def wait_all_closed(server: LoopbackServer) -> None:
    # The server notices a client's close a moment after the client returns; polling is the
    # honest way to observe a counter from outside.
    while server.registry.open_connections:  # noqa: ASYNC110
        await trio.sleep(0.005)


@asynccontextmanager
async def owned_client(
    server: LoopbackServer, *, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A client whose TCP stream the test closes itself (see the module docstring)."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, server.host, "/v1/realtime", extra_headers=extra_headers
            )
            yield ws
            await ws.aclose()
    finally:
        await stream.aclose()


async def echo_call(
    server: LoopbackServer,
    codec: Codec,
    after_connect: Callable[[], Awaitable[None]] | None = None,
) -> bytes:
    """One client: configure, speak one turn, return the model's reply audio."""
    async with trio_websocket.open_websocket_url(
        server.url + "?model=gpt-realtime-2",
        extra_headers=[(b"authorization", b"Bearer sk-loopback-test-secret")],
        max_message_size=MAX_MESSAGE_SIZE,
    ) as ws:
        created = await receive(ws)
        assert created["type"] == "session.created"
        assert created["session"]["model"] == "gpt-realtime-2"
        if after_connect is not None:
            await after_connect()
        updated = await configure(ws, codec)
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["output"]["format"] == {"type": FORMAT_OF_CODEC[codec]}
        await append(ws, caller_turn(codec))
        events = await receive_until(ws, "response.done")
        assert events[-1]["response"]["status"] == "completed"
        return reply_audio(events)


async def test_echo_round_trip_over_a_real_websocket(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(GUARD_SECONDS):
        async with running_server(generation_speed=math.inf) as server:
            assert server.url == f"ws://127.0.0.1:{server.port}/v1/realtime"
            audio = caller_turn(Codec.PCMU)
            assert await echo_call(server, Codec.PCMU) == turn_segment(Codec.PCMU)
            await wait_all_closed(server)
            (model,) = server.models
            stats = model.statistics()
            assert (stats.turns, stats.responses_completed, stats.errors_sent) == (1, 1, 0)
            assert stats.audio_bytes_received == len(audio)
            assert server.registry.connections_total == 1
    assert "sk-loopback-test-secret" not in caplog.text


async def test_two_connections_at_once_are_independent() -> None:
    replies: dict[Codec, bytes] = {}
    connected: list[Codec] = []
    both_connected = trio.Event()
    open_when_both_connected: list[int] = []

    async def call(server: LoopbackServer, codec: Codec) -> None:
        async def rendezvous() -> None:
            # session.created has arrived, so the server has counted this connection.
            connected.append(codec)
            if len(connected) == 2:
                open_when_both_connected.append(server.open_connections)
                both_connected.set()
            await both_connected.wait()

        replies[codec] = await echo_call(server, codec, rendezvous)

    with trio.fail_after(GUARD_SECONDS):
        async with running_server(generation_speed=math.inf) as server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, server, Codec.PCMU)
                nursery.start_soon(call, server, Codec.PCMA)
            await wait_all_closed(server)
            assert server.open_connections == 0
            assert len(server.models) == 2
            assert sorted(m.statistics().output_format for m in server.models) == [
                "audio/pcma",
                "audio/pcmu",
            ]
    assert open_when_both_connected == [2]
    for codec in (Codec.PCMU, Codec.PCMA):
        assert replies[codec] == turn_segment(codec)


async def test_registry_keeps_only_recent_closed_models() -> None:
    with trio.fail_after(GUARD_SECONDS):
        async with running_server() as server:
            server.registry.keep_closed = 1
            for _ in range(3):
                async with trio_websocket.open_websocket_url(server.url) as ws:
                    await receive(ws)
                await wait_all_closed(server)
            assert server.registry.connections_total == 3
            assert [m.session_id for m in server.models] == ["sess_loopback000003"]


async def test_paced_response_and_barge_in_cancel() -> None:
    with trio.fail_after(GUARD_SECONDS):
        # At real-time speed the 15 s reply below is surely still active when the caller speaks.
        async with running_server(generation_speed=1.0) as server:
            async with trio_websocket.open_websocket_url(server.url) as ws:
                await receive(ws)
                await configure(ws, Codec.PCMA)
                await ws.send_message(
                    json.dumps({"type": "response.create", "response": {"instructions": "Hi"}})
                )
                events = await receive_until(ws, "response.done")
                assert events[-1]["response"]["status"] == "completed"
                assert len(reply_audio(events)) == 250 * 8
                long_reply = {"instructions": " ".join(["word"] * 60)}  # 15 s of beeps
                await ws.send_message(
                    json.dumps({"type": "response.create", "response": long_reply})
                )
                await receive_until(ws, "response.output_audio.delta")
                await append(ws, g711.silence(Codec.PCMA, 160) + sine(Codec.PCMA, 200))
                events = await receive_until(ws, "response.done")
                assert "input_audio_buffer.speech_started" in [e["type"] for e in events]
                assert events[-1]["response"]["status_details"]["reason"] == "turn_detected"
            await wait_all_closed(server)
            assert server.models[0].statistics().cancellations == 1


async def test_other_paths_are_refused_with_404() -> None:
    upgrade = (
        b"GET /v1/chat?model=x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(GUARD_SECONDS):
        async with running_server() as server:
            async with await trio.open_tcp_stream(server.host, server.port) as stream:
                await stream.send_all(upgrade)
                response = b""
                while b"\r\n\r\n" not in response:
                    response += await stream.receive_some(4096)
            assert response.startswith(b"HTTP/1.1 404 ")
            assert server.registry.rejected_handshakes == 1
            assert server.models == []
            assert server.open_connections == 0


async def test_beta_header_on_the_ga_server_is_closed_with_4000() -> None:
    with trio.fail_after(GUARD_SECONDS):
        async with running_server() as server:
            async with owned_client(server, extra_headers=[(b"OpenAI-Beta", b"realtime=v1")]) as ws:
                error = await receive(ws)
                assert error["type"] == "error"
                assert error["error"]["code"] == "beta_api_shape_disabled"
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None
                assert closed.value.reason.code == 4000
            await wait_all_closed(server)


async def test_beta_dialect_server_serves_the_beta_shape() -> None:
    with trio.fail_after(GUARD_SECONDS):
        async with (
            running_server(dialect="beta", generation_speed=math.inf) as server,
            trio_websocket.open_websocket_url(
                server.url, extra_headers=[(b"OpenAI-Beta", b"realtime=v1")]
            ) as ws,
        ):
            created = await receive(ws)
            assert created["session"]["input_audio_format"] == "pcm16"
            await ws.send_message(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "input_audio_format": "g711_ulaw",
                            "output_audio_format": "g711_ulaw",
                        },
                    }
                )
            )
            assert (await receive(ws))["type"] == "session.updated"
            await append(ws, caller_turn(Codec.PCMU))
            events = await receive_until(ws, "response.done")
            audio = b"".join(
                base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta"
            )
            assert audio == turn_segment(Codec.PCMU)


async def test_messages_larger_than_the_one_mib_default_are_accepted() -> None:
    big = g711.silence(Codec.PCMU, 2 * 1024 * 1024)  # 2.7 MiB once base64-encoded
    with trio.fail_after(GUARD_SECONDS):
        async with running_server() as server:
            async with trio_websocket.open_websocket_url(
                server.url, max_message_size=MAX_MESSAGE_SIZE
            ) as ws:
                await receive(ws)
                await configure(ws, Codec.PCMU)
                await append(ws, big, batch=len(big))
                await ws.send_message(json.dumps({"type": "input_audio_buffer.clear"}))
                assert (await receive(ws))["type"] == "input_audio_buffer.cleared"
            await wait_all_closed(server)
            assert server.models[0].statistics().audio_bytes_received == len(big)
