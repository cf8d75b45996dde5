"""The Realtime websocket leg against a tiny scripted Realtime server on 127.0.0.1."""

from __future__ import annotations

import base64
import functools
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

from bridge.adapters.realtime_ws import handshake_headers, realtime_url, run_realtime_leg
from bridge.agent.errors import AgentLegFailed
from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentAudio,
    AgentCommand,
    AgentEnded,
    AgentEvent,
    AgentReady,
    AgentResponseDone,
    AgentResponseStarted,
    CloseAgent,
    Codec,
    EndReason,
    RequestResponse,
    SendAudio,
)
from bridge.config import Dialect, ModelConfig, Provider, config_from_dict

API_KEY = "sk-test-not-a-real-key-1234567890"
ULAW_CALL = CallInfo(call_id="c-1", ingress="test", codec=Codec.PCMU)
LOG = logging.getLogger("tests.realtime_ws")
GUARD_S = 10.0


@attrs.define
class Seen:
    """What the scripted server saw."""

    path: str = ""
    headers: dict[str, str] = attrs.field(factory=dict)
    received: list[dict[str, Any]] = attrs.field(factory=list)
    close_code: int | None = None
    closed: trio.Event = attrs.field(factory=trio.Event)
    ready_reported_before_updated: bool = False


Script = Callable[[trio_websocket.WebSocketConnection, Seen], Awaitable[None]]


@asynccontextmanager
async def realtime_server(
    script: Script, *, reject_status: int | None = None
) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        seen.path = request.path
        seen.headers = {name.decode().lower(): value.decode() for name, value in request.headers}
        if reject_status is not None:
            await request.reject(reject_status, body=b'{"error":"no"}')
            return
        websocket = await request.accept()
        try:
            await script(websocket, seen)
            # Keep the connection open until the client closes it.
            while True:
                seen.received.append(json.loads(await websocket.get_message()))
        except trio_websocket.ConnectionClosed as closed:
            seen.close_code = closed.reason.code if closed.reason else None
            seen.closed.set()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None
            )
        )
        yield f"ws://127.0.0.1:{server.port}/v1/realtime", seen
        nursery.cancel_scope.cancel()


def session_event(kind: str, fmt_in: str, fmt_out: str, dialect: Dialect = Dialect.GA) -> str:
    if dialect is Dialect.BETA:
        session: dict[str, Any] = {
            "id": "sess_beta",
            "input_audio_format": fmt_in,
            "output_audio_format": fmt_out,
        }
    else:
        session = {
            "type": "realtime",
            "id": "sess_1",
            "audio": {
                "input": {"format": {"type": fmt_in}},
                "output": {"format": {"type": fmt_out}, "voice": "marin"},
            },
        }
    return json.dumps({"type": kind, "event_id": "event_1", "session": session})


async def receive(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await websocket.get_message())
    seen.received.append(event)
    return event


async def configure(
    websocket: trio_websocket.WebSocketConnection,
    seen: Seen,
    formats: tuple[str, str] = ("audio/pcmu", "audio/pcmu"),
    dialect: Dialect = Dialect.GA,
) -> None:
    default = "pcm16" if dialect is Dialect.BETA else "audio/pcm"
    await websocket.send_message(session_event("session.created", default, default, dialect))
    update = await receive(websocket, seen)
    assert update["type"] == "session.update"
    await websocket.send_message(session_event("session.updated", *formats, dialect))


@attrs.define
class Leg:
    events: trio.MemoryReceiveChannel[AgentEvent]
    commands: trio.MemorySendChannel[AgentCommand]
    finished: trio.Event


def model_config(**model: Any) -> ModelConfig:
    section = {"connect_timeout_s": 2.0, "session_timeout_s": 2.0, **model}
    return config_from_dict({"model": section}).model


async def start_leg(
    nursery: trio.Nursery,
    url: str,
    *,
    model: ModelConfig | None = None,
    events_size: int = 100,
    api_key: str | None = API_KEY,
    log: logging.Logger = LOG,
    early_commands: tuple[AgentCommand, ...] = (),
) -> Leg:
    events_send, events_receive = trio.open_memory_channel[AgentEvent](events_size)
    commands_send, commands_receive = trio.open_memory_channel[AgentCommand](100)
    for command in early_commands:
        commands_send.send_nowait(command)
    finished = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await run_realtime_leg(
            model=model or model_config(),
            session=config_from_dict({}).session,
            call=ULAW_CALL,
            api_key=api_key,
            url=url,
            events=events_send,
            commands=commands_receive,
            log=log,
            task_status=task_status,
        )
        finished.set()

    await nursery.start(run)
    return Leg(events_receive, commands_send, finished)


# ---- pure helpers ------------------------------------------------------------------------------


def test_realtime_url_adds_the_model() -> None:
    assert realtime_url("wss://api.openai.com/v1/realtime", "gpt-realtime") == (
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )
    assert realtime_url("ws://h/v1/realtime", "my deploy/1") == (
        "ws://h/v1/realtime?model=my+deploy%2F1"
    )
    assert realtime_url("ws://h/r?x=1", "m") == "ws://h/r?x=1&model=m"


def test_handshake_headers() -> None:
    assert handshake_headers(Provider.OPENAI, Dialect.GA, "k") == [(b"authorization", b"Bearer k")]
    assert handshake_headers(Provider.AZURE, Dialect.GA, "k") == [(b"api-key", b"k")]
    assert handshake_headers(Provider.COMPATIBLE, Dialect.BETA, "k") == [
        (b"authorization", b"Bearer k"),
        (b"openai-beta", b"realtime=v1"),
    ]
    assert handshake_headers(Provider.LOOPBACK, Dialect.GA, None) == []
    assert handshake_headers(Provider.LOOPBACK, Dialect.GA, "") == []


# ---- against the scripted server ---------------------------------------------------------------


async def test_ga_session_reaches_ready_and_relays_both_ways(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOG.name)
    leg_started = False
    audio = bytes(range(256)) * 4

    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await websocket.send_message(session_event("session.created", "audio/pcm", "audio/pcm"))
        update = await receive(websocket, seen)
        assert update["type"] == "session.update"
        await trio.sleep(0.05)  # a leg that started too early would be visible now
        seen.ready_reported_before_updated = leg_started
        await websocket.send_message(session_event("session.updated", "audio/pcmu", "audio/pcmu"))
        await websocket.send_message(json.dumps({"type": "brand.new.event"}))
        append = await receive(websocket, seen)
        assert append["type"] == "input_audio_buffer.append"
        create = await receive(websocket, seen)
        assert create["type"] == "response.create"
        await websocket.send_message(
            json.dumps({"type": "response.created", "response": {"id": "resp_1"}})
        )
        await websocket.send_message(
            json.dumps(
                {
                    "type": "response.output_audio.delta",
                    "response_id": "resp_1",
                    "item_id": "item_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": base64.b64encode(audio).decode(),
                }
            )
        )
        await websocket.send_message(
            json.dumps(
                {"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}
            )
        )

    with trio.fail_after(GUARD_S):
        async with realtime_server(script) as (url, seen), trio.open_nursery() as nursery:
            leg = await start_leg(nursery, url, model=model_config(provider="openai"))
            leg_started = True
            assert await leg.events.receive() == AgentReady("sess_1")
            await leg.commands.send(SendAudio(b"\xff" * 160))
            await leg.commands.send(RequestResponse())
            assert await leg.events.receive() == AgentResponseStarted("resp_1")
            assert await leg.events.receive() == AgentAudio("resp_1", "item_1", audio)
            assert await leg.events.receive() == AgentResponseDone("resp_1", "completed", None)
            await leg.commands.send(CloseAgent())
            await leg.finished.wait()

    assert not seen.ready_reported_before_updated
    assert seen.path == "/v1/realtime?model=gpt-realtime"
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"
    assert "openai-beta" not in seen.headers
    assert "api-key" not in seen.headers
    assert [event["type"] for event in seen.received] == [
        "session.update",
        "input_audio_buffer.append",
        "response.create",
    ]
    assert seen.received[0]["session"]["type"] == "realtime"
    assert seen.close_code == 1000
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert API_KEY not in logged
    assert "brand.new.event" in logged


async def test_azure_sends_api_key_header_and_deployment_as_model() -> None:
    async with realtime_server(configure) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            model = model_config(provider="azure", url=url, model="my-realtime-deployment")
            leg = await start_leg(nursery, url, model=model)
            await leg.commands.send(CloseAgent())
            await leg.finished.wait()
    assert seen.path == "/v1/realtime?model=my-realtime-deployment"
    assert seen.headers["api-key"] == API_KEY
    assert "authorization" not in seen.headers
    assert "openai-beta" not in seen.headers


async def test_no_key_means_no_auth_header() -> None:
    async with realtime_server(configure) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url, api_key=None)
            await leg.commands.send(CloseAgent())
            await leg.finished.wait()
    assert "authorization" not in seen.headers
    assert "api-key" not in seen.headers


async def test_beta_dialect_sends_beta_header_and_flat_session() -> None:
    script = functools.partial(configure, formats=("g711_ulaw", "g711_ulaw"), dialect=Dialect.BETA)
    async with realtime_server(script) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            model = model_config(provider="compatible", url=url, dialect="beta", model="qwen-omni")
            leg = await start_leg(nursery, url, model=model)
            assert await leg.events.receive() == AgentReady("sess_beta")
            await leg.commands.send(CloseAgent())
            await leg.finished.wait()
    assert seen.headers["openai-beta"] == "realtime=v1"
    assert seen.path == "/v1/realtime?model=qwen-omni"
    update = seen.received[0]["session"]
    assert update["input_audio_format"] == "g711_ulaw"
    assert update["model"] == "qwen-omni"


async def test_format_mismatch_fails_the_leg_before_start() -> None:
    script = functools.partial(configure, formats=("audio/pcmu", "audio/pcm"))
    async with realtime_server(script) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(nursery, url)
    assert failed.value.reason is EndReason.MODEL_FORMAT_REJECTED
    assert "'audio/pcm'" in failed.value.detail
    assert seen.close_code == 1000


async def test_error_before_ready_fails_the_leg() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await receive(websocket, seen)
        await websocket.send_message(
            json.dumps(
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "code": "beta_api_shape_disabled",
                        "message": "The Realtime Beta API is no longer supported.",
                    },
                }
            )
        )
        await websocket.aclose(4000, "beta_api_shape_disabled")

    async with realtime_server(script) as (url, _), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(nursery, url)
    assert failed.value.reason is EndReason.MODEL_ERROR
    assert failed.value.detail.startswith("beta_api_shape_disabled: ")


async def test_close_before_ready_fails_the_leg() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await receive(websocket, seen)
        await websocket.aclose(1011, "overloaded")

    async with realtime_server(script) as (url, _), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(nursery, url)
    assert failed.value.reason is EndReason.MODEL_CONNECT_FAILED
    assert "1011 overloaded" in failed.value.detail


async def test_no_session_updated_in_time_fails_the_leg() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await websocket.send_message(session_event("session.created", "audio/pcm", "audio/pcm"))

    async with realtime_server(script) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(nursery, url, model=model_config(session_timeout_s=0.3))
    assert failed.value.reason is EndReason.MODEL_CONNECT_FAILED
    assert "timed out" in failed.value.detail
    assert seen.close_code == 1000


async def test_rejected_handshake_fails_the_leg() -> None:
    async with realtime_server(configure, reject_status=401) as (url, _), trio.open_nursery() as n:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(n, url)
    assert failed.value.reason is EndReason.MODEL_CONNECT_FAILED
    assert "HTTP 401" in failed.value.detail


async def test_connection_refused_fails_the_leg() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(nursery, f"ws://127.0.0.1:{port}/v1/realtime")
    assert failed.value.reason is EndReason.MODEL_CONNECT_FAILED
    assert f"127.0.0.1:{port}" in failed.value.detail


async def test_server_closing_after_ready_ends_the_leg() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await configure(websocket, seen)
        await websocket.aclose(1001, "going away")

    async with realtime_server(script) as (url, _), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url)
            assert await leg.events.receive() == AgentReady("sess_1")
            assert await leg.events.receive() == AgentEnded(
                EndReason.MODEL_CLOSED, "the model closed the websocket (1001 going away)"
            )
            await leg.finished.wait()


async def test_session_expired_ends_the_leg() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await configure(websocket, seen)
        await websocket.send_message(
            json.dumps(
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "code": "session_expired",
                        "message": "Your session hit the maximum duration of 60 minutes.",
                    },
                }
            )
        )

    async with realtime_server(script) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url)
            assert await leg.events.receive() == AgentReady("sess_1")
            ended = await leg.events.receive()
            assert isinstance(ended, AgentEnded)
            assert ended.reason is EndReason.MODEL_CLOSED
            await leg.finished.wait()
    assert seen.close_code == 1000


async def test_messages_over_one_mebibyte_are_accepted() -> None:
    audio = bytes(range(256)) * 6000  # 1.5 MB of audio, 2 MB of base64

    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await configure(websocket, seen)
        delta = {
            "type": "response.output_audio.delta",
            "response_id": "resp_1",
            "item_id": "item_1",
            "delta": base64.b64encode(audio).decode(),
        }
        await websocket.send_message(json.dumps(delta))

    async with realtime_server(script) as (url, _), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url)
            assert await leg.events.receive() == AgentReady("sess_1")
            assert await leg.events.receive() == AgentAudio("resp_1", "item_1", audio)
            await leg.commands.send(CloseAgent())
            await leg.finished.wait()


async def test_closing_the_command_channel_closes_the_websocket_cleanly() -> None:
    async with realtime_server(configure) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url)
            await leg.commands.send(SendAudio(b"\xff" * 160))
            await leg.commands.aclose()
            await leg.finished.wait()
    # What was queued before the channel closed still went out.
    assert [event["type"] for event in seen.received] == [
        "session.update",
        "input_audio_buffer.append",
    ]
    assert seen.close_code == 1000


async def test_cancellation_drops_the_connection_at_once() -> None:
    async with realtime_server(configure) as (url, seen):
        with trio.fail_after(GUARD_S):
            async with trio.open_nursery() as nursery:
                leg = await start_leg(nursery, url)
                assert await leg.events.receive() == AgentReady("sess_1")
                nursery.cancel_scope.cancel()
            assert not leg.finished.is_set()
            await seen.closed.wait()
    # No close frame under cancellation: the TCP connection just ends (RFC 6455 §7.1.5).
    assert seen.close_code == 1006


async def test_model_audio_waits_for_a_call_that_is_behind_and_none_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)

    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await configure(websocket, seen)
        for number in range(5):
            delta = {
                "type": "response.output_audio.delta",
                "response_id": "resp_1",
                "item_id": "item_1",
                "delta": base64.b64encode(bytes([number]) * 160).decode(),
            }
            await websocket.send_message(json.dumps(delta))
        await websocket.send_message(
            json.dumps(
                {"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}
            )
        )

    async with realtime_server(script) as (url, _), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url, events_size=2)
            assert await leg.events.receive() == AgentReady("sess_1")
            # Let the reader run into the full channel before the call catches up.
            await trio.sleep(0.2)
            received = [await leg.events.receive() for _ in range(6)]
            await leg.commands.send(CloseAgent())
            await leg.finished.wait()
    assert received[-1] == AgentResponseDone("resp_1", "completed", None)
    audio = [event for event in received[:-1] if isinstance(event, AgentAudio)]
    assert [event.payload[0] for event in audio] == [0, 1, 2, 3, 4]
    [finished] = [r for r in caplog.records if r.getMessage() == "realtime session finished"]
    assert finished.__dict__["audio_events_delayed"] >= 1


async def test_commands_sent_while_connecting_go_out_after_ready() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await configure(websocket, seen)

    async with realtime_server(script) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(
                nursery,
                url,
                early_commands=(SendAudio(b"\x01" * 160), RequestResponse("Greet the caller.")),
            )
            assert await leg.events.receive() == AgentReady("sess_1")
            await leg.commands.send(CloseAgent())
            await leg.finished.wait()
    assert [event["type"] for event in seen.received] == [
        "session.update",
        "input_audio_buffer.append",
        "response.create",
    ]
    assert base64.b64decode(seen.received[1]["audio"]) == b"\x01" * 160


async def test_close_agent_while_connecting_fails_the_leg_cleanly() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await websocket.send_message(session_event("session.created", "audio/pcm", "audio/pcm"))

    async with realtime_server(script) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(nursery, url, early_commands=(CloseAgent(),))
        await seen.closed.wait()
    assert failed.value.reason is EndReason.MODEL_CLOSED
    assert [event["type"] for event in seen.received] == ["session.update"]
    assert seen.close_code == 1000


async def test_commands_queued_together_all_go_out_in_order() -> None:
    async with realtime_server(configure) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url)
            assert await leg.events.receive() == AgentReady("sess_1")
            # Queued without a checkpoint in between: the leg finds them all waiting at once.
            for number in range(40):
                leg.commands.send_nowait(SendAudio(bytes([number]) * 160))
            leg.commands.send_nowait(RequestResponse("Say hello."))
            leg.commands.send_nowait(SendAudio(b"\x7f" * 160))
            leg.commands.send_nowait(CloseAgent())
            await leg.finished.wait()
            await seen.closed.wait()
    types = [event["type"] for event in seen.received]
    assert types == ["session.update"] + ["input_audio_buffer.append"] * 40 + [
        "response.create",
        "input_audio_buffer.append",
    ]
    audio = [base64.b64decode(event["audio"]) for event in seen.received[1:41]]
    assert audio == [bytes([number]) * 160 for number in range(40)]
    assert seen.received[41]["response"] == {"instructions": "Say hello."}
    assert base64.b64decode(seen.received[42]["audio"]) == b"\x7f" * 160
    assert seen.close_code == 1000


async def test_a_message_over_the_size_limit_ends_the_leg_with_1009() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await configure(websocket, seen)
        delta = {
            "type": "response.output_audio.delta",
            "response_id": "resp_1",
            "item_id": "item_1",
            "delta": "A" * (1 << 20),
        }
        await websocket.send_message(json.dumps(delta))

    async with realtime_server(script) as (url, seen), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url, model=model_config(max_message_bytes=1 << 20))
            assert await leg.events.receive() == AgentReady("sess_1")
            ended = await leg.events.receive()
            await leg.finished.wait()
            await seen.closed.wait()
    assert isinstance(ended, AgentEnded)
    assert ended.reason is EndReason.MODEL_CLOSED
    assert ended.detail == (
        "closed the model's websocket (1009 Exceeded maximum message size: 1048576 bytes)"
    )
    assert seen.close_code == 1009


async def test_pings_are_answered_while_the_leg_runs() -> None:
    async def script(websocket: trio_websocket.WebSocketConnection, seen: Seen) -> None:
        await configure(websocket, seen)
        # trio-websocket's ping returns once the pong came back.
        await websocket.ping(b"still there?")
        await websocket.send_message(
            json.dumps({"type": "response.created", "response": {"id": "resp_after_pong"}})
        )

    async with realtime_server(script) as (url, _), trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S):
            leg = await start_leg(nursery, url)
            assert await leg.events.receive() == AgentReady("sess_1")
            assert await leg.events.receive() == AgentResponseStarted("resp_after_pong")
            await leg.commands.send(CloseAgent())
            await leg.finished.wait()


@asynccontextmanager
async def tcp_server(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        yield f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1/realtime"
        nursery.cancel_scope.cancel()


async def test_a_garbled_upgrade_response_fails_the_leg() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await stream.receive_some()

    async with tcp_server(handler) as url, trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(nursery, url)
    assert failed.value.reason is EndReason.MODEL_CONNECT_FAILED
    assert failed.value.detail.startswith(f"could not connect to {url}: bad upgrade response")


async def test_an_upgrade_that_never_comes_fails_the_leg_at_the_connect_timeout() -> None:
    closed = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        while await stream.receive_some():
            pass
        closed.set()

    async with tcp_server(handler) as url, trio.open_nursery() as nursery:
        with trio.fail_after(GUARD_S), pytest.raises(AgentLegFailed) as failed:
            await start_leg(nursery, url, model=model_config(connect_timeout_s=0.2))
        with trio.fail_after(GUARD_S):
            await closed.wait()
    assert failed.value.reason is EndReason.MODEL_CONNECT_FAILED
    assert failed.value.detail == f"timed out after 0.2 s connecting to {url}"
