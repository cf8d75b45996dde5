"""The media-stream ingress over real loopback sockets, with trio-websocket as the gateway (and
wsproto where a test needs frames written together or broken on purpose)."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from bridge.adapters.mediastream_ws import MediaStreamLeg, serve_mediastream
from bridge.call.events import (
    AudioPlayed,
    CallerAudio,
    CallerDtmf,
    ClearAudio,
    Codec,
    EndReason,
    HangUp,
    PlayAudio,
    TelephonyCommand,
    TelephonyEnded,
    TelephonyEvent,
)
from bridge.config import MediaStreamAuth, MediaStreamIngressConfig
from bridge.proto.mediastream.auth import twilio_signature

TIMEOUT_S = 10
HOST = "127.0.0.1"
PATH = "/media"
PUBLIC_URL = "wss://bridge.example.com/media"
TOKEN = "test-auth-token-0123456789"
SECRET = "shared-secret-abcdef"
SID = "MZ00000000000000000000000000000001"
FRAME = 160
LOGGER = "test.mediastream_ws"


def config(auth: MediaStreamAuth) -> MediaStreamIngressConfig:
    return MediaStreamIngressConfig(
        host=HOST,
        port=0,
        path=PATH,
        auth=auth,
        public_url=PUBLIC_URL,
        outbound_chunk_frames=5,
        playout_lead_ms=300,
    )


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start(**parameters: str) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC1",
                "streamSid": SID,
                "callSid": "CA1",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
                "customParameters": parameters,
            },
            "streamSid": SID,
        }
    )


def media(payload: bytes) -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": SID,
            "media": {"track": "inbound", "payload": base64.b64encode(payload).decode()},
        }
    )


def mark(name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": name}})


STOP = json.dumps({"event": "stop", "streamSid": SID, "stop": {"callSid": "CA1"}})


@attrs.define
class Calls:
    """The app's side: every leg handed over is run with channels the test reads and writes."""

    legs: list[MediaStreamLeg] = attrs.field(factory=list)
    events_send: trio.MemorySendChannel[TelephonyEvent] = attrs.field(init=False)
    events: trio.MemoryReceiveChannel[TelephonyEvent] = attrs.field(init=False)
    commands: trio.MemorySendChannel[TelephonyCommand] = attrs.field(init=False)
    commands_receive: trio.MemoryReceiveChannel[TelephonyCommand] = attrs.field(init=False)
    handed_over: trio.Event = attrs.field(factory=trio.Event)
    finished: trio.Event = attrs.field(factory=trio.Event)
    fail: bool = False

    def __attrs_post_init__(self) -> None:
        self.events_send, self.events = trio.open_memory_channel[TelephonyEvent](1000)
        self.commands, self.commands_receive = trio.open_memory_channel[TelephonyCommand](100)

    async def handle_call(self, leg: MediaStreamLeg) -> None:
        self.legs.append(leg)
        self.handed_over.set()
        try:
            if self.fail:
                raise RuntimeError("the app broke")
            await leg.run(self.events_send, self.commands_receive)
        finally:
            self.finished.set()

    async def next_event(self) -> TelephonyEvent:
        return await self.events.receive()

    async def caller_audio(self, size: int) -> list[bytes]:
        """The payloads of the CallerAudio events carrying the next `size` bytes of audio.

        Media messages that arrive together come as one CallerAudio, so how the bytes are split
        depends on timing; each event still carries whole messages.
        """
        payloads: list[bytes] = []
        while sum(map(len, payloads)) < size:
            event = await self.next_event()
            assert isinstance(event, CallerAudio), event
            payloads.append(event.payload)
        return payloads


@asynccontextmanager
async def ingress(
    cfg: MediaStreamIngressConfig,
    handle_call: Callable[[MediaStreamLeg], Awaitable[None]],
    *,
    auth_token: str | None = None,
    shared_secret: str | None = None,
    start_timeout_s: float = 5.0,
) -> AsyncIterator[int]:
    ids = (f"call-{n}" for n in itertools.count(1))
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_mediastream(
                    cfg,
                    handle_call=handle_call,
                    auth_token=auth_token,
                    shared_secret=shared_secret,
                    log=logging.getLogger(LOGGER),
                    new_call_id=lambda: next(ids),
                    start_timeout_s=start_timeout_s,
                    task_status=task_status,
                )
            )
            assert isinstance(port, int) and port > 0
            yield port
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def gateway(
    port: int, *, path: str = PATH, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A client websocket on a TCP stream we own: trio-websocket's own client leaves its socket
    open when the server rejects the upgrade or closes first."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        try:
            async with trio.open_nursery() as nursery:
                websocket = await trio_websocket.wrap_client_stream(
                    nursery, stream, f"{HOST}:{port}", path, extra_headers=headers or []
                )
                try:
                    yield websocket
                finally:
                    with trio.move_on_after(2, shield=True):
                        await websocket.aclose()
                    nursery.cancel_scope.cancel()
        except ExceptionGroup as group:
            # the rejection surfaces in the client's reader task
            rejected = [e for e in group.exceptions if isinstance(e, ConnectionRejected)]
            if rejected:
                raise rejected[0] from None
            raise


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Messages and extras of every record."""
    return " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)


async def close_code(websocket: WebSocketConnection) -> int:
    """Read until the server closes; the close code it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await websocket.get_message()
    assert closed.value.reason is not None
    return closed.value.reason.code


async def start_call(
    websocket: WebSocketConnection, calls: Calls, **parameters: str
) -> MediaStreamLeg:
    await websocket.send_message(connected())
    await websocket.send_message(start(**parameters))
    await calls.handed_over.wait()
    return calls.legs[0]


# ---- upgrade checks ------------------------------------------------------------------------------


async def test_valid_twilio_signature_is_accepted() -> None:
    calls = Calls()
    signature = twilio_signature(TOKEN, PUBLIC_URL)
    async with (
        ingress(
            config(MediaStreamAuth.TWILIO_SIGNATURE), calls.handle_call, auth_token=TOKEN
        ) as port,
        gateway(port, headers=[(b"X-Twilio-Signature", signature.encode())]) as websocket,
    ):
        leg = await start_call(
            websocket, calls, **{"from": "+15551230000", "to": "+15559870000", "tenant": "acme"}
        )
    assert leg.info.call_id == "call-1"
    assert leg.info.ingress == "mediastream"
    assert leg.info.codec is Codec.PCMA
    assert (leg.info.caller, leg.info.called) == ("+15551230000", "+15559870000")
    assert leg.info.variables == {"from": "+15551230000", "to": "+15559870000", "tenant": "acme"}
    assert leg.info.external_ids == {"stream_sid": SID, "call_sid": "CA1", "account_sid": "AC1"}


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"X-Twilio-Signature", b"")],
        [(b"X-Twilio-Signature", twilio_signature("another-token", PUBLIC_URL).encode())],
        [(b"X-Twilio-Signature", twilio_signature(TOKEN, "wss://evil.example.com/media").encode())],
    ],
    ids=["missing", "empty", "wrong-token", "wrong-url"],
)
async def test_missing_or_wrong_signature_is_refused_with_403(
    headers: list[tuple[bytes, bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    async with ingress(
        config(MediaStreamAuth.TWILIO_SIGNATURE), calls.handle_call, auth_token=TOKEN
    ) as port:
        with pytest.raises(ConnectionRejected) as rejected:
            async with gateway(port, headers=headers):
                pass
    assert rejected.value.status_code == 403
    assert calls.legs == []
    assert "X-Twilio-Signature" in caplog.text
    assert TOKEN not in everything_logged(caplog)


async def test_signature_mode_without_a_token_refuses_with_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()
    signature = twilio_signature(TOKEN, PUBLIC_URL)
    async with ingress(
        config(MediaStreamAuth.TWILIO_SIGNATURE), calls.handle_call, auth_token=None
    ) as port:
        with pytest.raises(ConnectionRejected) as rejected:
            async with gateway(port, headers=[(b"X-Twilio-Signature", signature.encode())]):
                pass
    assert rejected.value.status_code == 503
    assert "auth token is not set" in caplog.text


async def test_wrong_path_is_refused_with_404() -> None:
    calls = Calls()
    async with ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port:
        with pytest.raises(ConnectionRejected) as rejected:
            async with gateway(port, path="/other"):
                pass
    assert rejected.value.status_code == 404


async def test_shared_secret_accepted_and_kept_from_the_call() -> None:
    calls = Calls()
    async with (
        ingress(
            config(MediaStreamAuth.SHARED_SECRET), calls.handle_call, shared_secret=SECRET
        ) as port,
        gateway(port) as websocket,
    ):
        leg = await start_call(websocket, calls, secret=SECRET, caller="alice", called="bob")
    assert leg.info.variables == {"caller": "alice", "called": "bob"}
    assert (leg.info.caller, leg.info.called) == ("alice", "bob")


@pytest.mark.parametrize("parameters", [{"secret": "bad-guess-123"}, {}, {"secret": ""}])
async def test_wrong_or_missing_shared_secret_closes_with_1008(
    parameters: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    async with (
        ingress(
            config(MediaStreamAuth.SHARED_SECRET), calls.handle_call, shared_secret=SECRET
        ) as port,
        gateway(port) as websocket,
    ):
        await websocket.send_message(connected())
        await websocket.send_message(start(**parameters))
        assert await close_code(websocket) == 1008
    assert calls.legs == []
    assert "shared secret" in caplog.text
    assert SECRET not in everything_logged(caplog)
    assert "bad-guess-123" not in everything_logged(caplog)


async def test_auth_none_accepts_everything() -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        gateway(port) as websocket,
    ):
        leg = await start_call(websocket, calls, secret="kept")
    assert leg.info.variables == {"secret": "kept"}


# ---- before start --------------------------------------------------------------------------------


async def test_media_before_start_closes_with_1002() -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        gateway(port) as websocket,
    ):
        await websocket.send_message(connected())
        await websocket.send_message(media(b"\xd5" * FRAME))
        assert await close_code(websocket) == 1002
    assert calls.legs == []


async def test_no_start_in_time_closes_with_1002() -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call, start_timeout_s=0.2) as port,
        gateway(port) as websocket,
    ):
        await websocket.send_message(connected())
        assert await close_code(websocket) == 1002
    assert calls.legs == []


async def test_unsupported_encoding_closes_with_1003() -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        gateway(port) as websocket,
    ):
        message = json.loads(start())
        message["start"]["mediaFormat"]["encoding"] = "audio/x-l16"
        await websocket.send_message(json.dumps(message))
        assert await close_code(websocket) == 1003


# ---- a call --------------------------------------------------------------------------------------


async def test_caller_media_reaches_the_call_in_order() -> None:
    calls = Calls()
    frames = [bytes([n]) * FRAME for n in range(40)]
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        gateway(port) as websocket,
    ):
        await start_call(websocket, calls)
        for frame in frames:
            await websocket.send_message(media(frame))
        await websocket.send_message(json.dumps({"event": "dtmf", "dtmf": {"digit": "7"}}))
        received = await calls.caller_audio(len(frames) * FRAME)
        assert b"".join(received) == b"".join(frames)
        assert all(len(payload) % FRAME == 0 for payload in received)
        assert await calls.next_event() == CallerDtmf("7")
        await websocket.send_message(STOP)
        assert await calls.next_event() == TelephonyEnded(EndReason.CALLER_HANGUP, "stop")
        await calls.finished.wait()
        assert await close_code(websocket) == 1000


async def test_media_sent_before_the_call_runs_is_not_lost() -> None:
    calls = Calls()
    may_run = trio.Event()

    async def slow_handle_call(leg: MediaStreamLeg) -> None:
        # like the supervisor waiting for the model session before running the leg
        await may_run.wait()
        await calls.handle_call(leg)

    frames = [bytes([n]) * FRAME for n in range(50)]
    async with (
        ingress(config(MediaStreamAuth.NONE), slow_handle_call) as port,
        gateway(port) as websocket,
    ):
        await websocket.send_message(connected())
        await websocket.send_message(start())
        for frame in frames:
            await websocket.send_message(media(frame))
        await trio.sleep(0.05)
        may_run.set()
        received = await calls.caller_audio(len(frames) * FRAME)
        assert b"".join(received) == b"".join(frames)
        # read in one go once the leg runs: far fewer events than messages
        assert len(received) < len(frames)


async def test_play_audio_goes_out_as_media_and_marks_and_marks_confirm_playout() -> None:
    calls = Calls()
    audio = bytes(range(200)) * 40  # 8000 bytes = 1 s
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        gateway(port) as websocket,
    ):
        await start_call(websocket, calls)
        await calls.commands.send(PlayAudio("item-1", audio))
        received = [json.loads(await websocket.get_message()) for _ in range(6)]
        assert [m["event"] for m in received] == ["media", "mark"] * 3
        assert all(m["streamSid"] == SID for m in received)
        assert set(received[0]) == {"event", "streamSid", "media"}
        assert set(received[0]["media"]) == {"payload"}
        assert base64.b64decode(received[0]["media"]["payload"]) == audio[:800]
        assert [m["mark"]["name"] for m in received[1::2]] == ["m1", "m2", "m3"]
        await websocket.send_message(mark("m1"))
        assert await calls.next_event() == AudioPlayed("item-1", 800)
        following = [json.loads(await websocket.get_message()) for _ in range(2)]
        assert base64.b64decode(following[0]["media"]["payload"]) == audio[2400:3200]
        assert following[1]["mark"] == {"name": "m4"}

        await calls.commands.send(ClearAudio())
        assert json.loads(await websocket.get_message()) == {"event": "clear", "streamSid": SID}
        await websocket.send_message(mark("m2"))  # echoed by the clear: not played
        await websocket.send_message(media(b"\x01" * FRAME))
        assert await calls.next_event() == CallerAudio(b"\x01" * FRAME)


async def test_hang_up_closes_the_websocket_with_1000() -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        gateway(port) as websocket,
    ):
        await start_call(websocket, calls)
        await calls.commands.send(HangUp(EndReason.MAX_DURATION))
        assert await close_code(websocket) == 1000
        await calls.finished.wait()


async def test_closed_commands_end_the_leg() -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        gateway(port) as websocket,
    ):
        await start_call(websocket, calls)
        await calls.commands.aclose()
        assert await close_code(websocket) == 1000
        await calls.finished.wait()


async def test_malformed_json_does_not_end_the_call(caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        gateway(port) as websocket,
    ):
        leg = await start_call(websocket, calls)
        await websocket.send_message("{this is not json")
        await websocket.send_message(media(b"\x02" * FRAME))
        assert await calls.next_event() == CallerAudio(b"\x02" * FRAME)
        assert leg.statistics().stream.malformed == 1
    record = next(r for r in caplog.records if "malformed" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert getattr(record, "call_id", None) == "call-1"


async def test_gateway_closing_without_stop_ends_the_call() -> None:
    calls = Calls()
    async with ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port:
        async with gateway(port) as websocket:
            await start_call(websocket, calls)
        # open_websocket closed it with 1000 on leaving
        ended = await calls.next_event()
        assert isinstance(ended, TelephonyEnded)
        assert ended.reason is EndReason.CALLER_HANGUP
        await calls.finished.wait()


async def test_a_failing_call_does_not_stop_the_server(caplog: pytest.LogCaptureFixture) -> None:
    failing = Calls(fail=True)
    healthy = Calls()
    handlers = iter([failing.handle_call, healthy.handle_call])

    async def handle_call(leg: MediaStreamLeg) -> None:
        await next(handlers)(leg)

    async with ingress(config(MediaStreamAuth.NONE), handle_call) as port:
        async with gateway(port) as websocket:
            await start_call(websocket, failing)
            assert await close_code(websocket) == 1000
        record = next(r for r in caplog.records if "call failed" in r.getMessage())
        assert getattr(record, "call_id", None) == "call-1"
        async with gateway(port) as websocket:
            leg = await start_call(websocket, healthy)
            assert leg.info.call_id == "call-2"
            await websocket.send_message(media(b"\x03" * FRAME))
            assert await healthy.next_event() == CallerAudio(b"\x03" * FRAME)


# ---- the websocket itself ------------------------------------------------------------------------


@attrs.define
class RawGateway:
    """A gateway writing whole batches of frames at once (wsproto on a TCP stream)."""

    stream: trio.SocketStream
    connection: WSConnection

    async def send(self, *messages: str) -> None:
        """All `messages` in one socket write, so they arrive together."""
        await self.stream.send_all(b"".join(self.connection.send(TextMessage(m)) for m in messages))

    async def events(self) -> list[Event]:
        """Read until something arrives; [] at the end of the stream."""
        while True:
            data = await self.stream.receive_some(1 << 16)
            self.connection.receive_data(data or None)
            events = list(self.connection.events())
            if events or not data:
                return events

    async def close_frame(self) -> CloseConnection:
        """Read (dropping messages) until the server's close frame."""
        while True:
            for event in await self.events():
                if isinstance(event, CloseConnection):
                    return event


@asynccontextmanager
async def raw_gateway(port: int, calls: Calls) -> AsyncIterator[RawGateway]:
    """A gateway whose call was handed over (connected and start sent)."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        gateway = RawGateway(stream, WSConnection(ConnectionType.CLIENT))
        await stream.send_all(gateway.connection.send(Request(host=HOST, target=PATH)))
        assert [type(e) for e in await gateway.events()] == [AcceptConnection]
        await gateway.send(connected(), start())
        await calls.handed_over.wait()
        yield gateway


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 (a leg counter: there is no event to wait for)
        await trio.sleep(0.005)


async def test_media_arriving_together_goes_on_as_one_caller_audio() -> None:
    calls = Calls()
    frames = [bytes([n]) * FRAME for n in range(10)]
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        raw_gateway(port, calls) as gateway,
    ):
        await gateway.send(*[media(frame) for frame in frames])
        assert await calls.next_event() == CallerAudio(b"".join(frames))
        # another event between media messages keeps its place
        await gateway.send(
            media(frames[0]),
            json.dumps({"event": "dtmf", "dtmf": {"digit": "1"}}),
            media(frames[1]),
            media(frames[2]),
        )
        assert await calls.next_event() == CallerAudio(frames[0])
        assert await calls.next_event() == CallerDtmf("1")
        assert await calls.next_event() == CallerAudio(frames[1] + frames[2])
        assert calls.legs[0].statistics().stream.media_messages_in == 13


async def test_caller_audio_the_call_has_no_room_for_is_dropped_and_counted() -> None:
    events_send, events = trio.open_memory_channel[TelephonyEvent](1)
    commands_send, commands = trio.open_memory_channel[TelephonyCommand](1)
    calls = Calls()

    async def handle_call(leg: MediaStreamLeg) -> None:
        calls.legs.append(leg)
        calls.handed_over.set()
        await leg.run(events_send, commands)

    async with (
        ingress(config(MediaStreamAuth.NONE), handle_call) as port,
        raw_gateway(port, calls) as gateway,
    ):
        leg = calls.legs[0]
        await gateway.send(*[media(b"\x01" * FRAME)] * 3)
        await wait_for(lambda: leg.statistics().stream.media_messages_in == 3)
        await gateway.send(*[media(b"\x02" * FRAME)] * 4)
        await wait_for(lambda: leg.statistics().stream.media_messages_in == 7)
        # counted in media messages, not in events
        assert leg.statistics().caller_audio_dropped == 4
        assert events.receive_nowait() == CallerAudio(b"\x01" * FRAME * 3)
        await gateway.send(STOP)
        assert await events.receive() == TelephonyEnded(EndReason.CALLER_HANGUP, "stop")
    commands_send.close()


async def test_a_ping_is_answered_during_a_call() -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        raw_gateway(port, calls) as gateway,
    ):
        await gateway.stream.send_all(gateway.connection.send(Ping(b"still there?")))
        assert await gateway.events() == [Pong(b"still there?")]
        await gateway.send(media(b"\x05" * FRAME))
        assert await calls.next_event() == CallerAudio(b"\x05" * FRAME)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        # a message over the 1 MiB limit, refused from its header
        (bytes([0x81, 0xFF]) + (1 << 21).to_bytes(8, "big") + b"mask", 1009),
        # an unmasked client frame (RFC 6455 §5.1)
        (bytes([0x81, 0x02]) + b"{}", 1002),
        # text that is not UTF-8
        (bytes([0x81, 0x82]) + b"\x00\x00\x00\x00" + b"\xc3\x28", 1007),
    ],
    ids=["too-big", "unmasked", "not-utf8"],
)
async def test_a_broken_websocket_ends_the_call_with_its_close_code(data: bytes, code: int) -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        raw_gateway(port, calls) as gateway,
    ):
        await gateway.stream.send_all(data)
        ended = await calls.next_event()
        assert isinstance(ended, TelephonyEnded)
        assert ended.reason is EndReason.TELEPHONY_ERROR
        assert ended.detail.startswith(f"websocket closed: {code} ")
        assert (await gateway.close_frame()).code == code
        await calls.finished.wait()


async def test_a_request_that_is_not_an_upgrade_gets_400_and_the_server_goes_on() -> None:
    calls = Calls()
    async with ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port:
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(b"GET /media HTTP/1.1\r\nHost: x\r\n\r\n")
            response = await stream.receive_some(1000)
            assert response.startswith(b"HTTP/1.1 400 ")
        async with gateway(port) as websocket:
            await start_call(websocket, calls)
            await websocket.send_message(media(b"\x03" * FRAME))
            assert await calls.next_event() == CallerAudio(b"\x03" * FRAME)


async def test_a_reset_connection_ends_the_call() -> None:
    calls = Calls()
    async with (
        ingress(config(MediaStreamAuth.NONE), calls.handle_call) as port,
        raw_gateway(port, calls) as gateway,
    ):
        # SO_LINGER with a zero timeout: closing sends a TCP reset, not a FIN
        gateway.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await gateway.stream.aclose()
        ended = await calls.next_event()
        assert ended == TelephonyEnded(
            EndReason.TELEPHONY_ERROR, "websocket closed: 1006 ABNORMAL_CLOSURE"
        )
        await calls.finished.wait()
