"""The server websocket: its frame layer fed bytes (wsproto's client frames as the reference), and
the websocket on an in-memory stream with a wsproto client at the other end."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from bridge.adapters.wsserver import (
    HandshakeFailed,
    ServerFrames,
    ServerWebSocket,
    WebSocketClosed,
    encode_frame,
)
from bridge.adapters.wsserver import (
    Opcode as ServerOpcode,
)
from bridge.errors import LocalProtocolError

MAX = 4096
KEY = b"\x37\xfa\x21\x3d"
TIMEOUT_S = 5


class ClientFrames:
    """wsproto's client frame layer (masked frames, random keys): our reference peer."""

    def __init__(self) -> None:
        self.protocol = FrameProtocol(client=True, extensions=[])

    def send_data(self, payload: str | bytes, fin: bool = True) -> bytes:
        return bytes(self.protocol.send_data(payload, fin))

    def ping(self, payload: bytes) -> bytes:
        return bytes(self.protocol.ping(payload))

    def close(self, code: int) -> bytes:
        return bytes(self.protocol.close(code))


def client_frames() -> ClientFrames:
    return ClientFrames()


def raw_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: bytes | None = None,
) -> bytes:
    """A client frame built by hand, so it can break the rules."""
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if length is None:
        if len(payload) < 126:
            length = bytes([mask_bit | len(payload)])
        elif len(payload) < 1 << 16:
            length = bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
        else:
            length = bytes([mask_bit | 127]) + struct.pack("!Q", len(payload))
    if not masked:
        return bytes([first]) + length + payload
    masked_payload = bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
    return bytes([first]) + length + KEY + masked_payload


def server_frames_seen(data: bytes) -> list[Frame]:
    """Our server's bytes as wsproto's client parses them (which also checks they are valid)."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(data)
    return list(client.received_frames())


def close_code_sent(frames: ServerFrames) -> int:
    (close,) = server_frames_seen(frames.data_to_send())
    assert close.opcode is Opcode.CLOSE
    assert isinstance(close.payload, tuple)
    return close.payload[0]


# ---- the frame layer -----------------------------------------------------------------------------


def test_text_and_binary_messages_whole_in_pieces_and_together() -> None:
    client = client_frames()
    data = (
        client.send_data("hello")
        + client.send_data(b"\x00\x01\x02")
        + client.send_data("x" * 300)
        + client.send_data("héllo ✓")
    )
    expected = ["hello", b"\x00\x01\x02", "x" * 300, "héllo ✓"]

    assert ServerFrames(max_message_size=MAX).receive_data(data) == expected

    frames = ServerFrames(max_message_size=MAX)
    one_by_one = [m for i in range(len(data)) for m in frames.receive_data(data[i : i + 1])]
    assert one_by_one == expected
    assert frames.data_to_send() == b""


def test_fragmented_messages_with_a_ping_between_fragments() -> None:
    client = client_frames()
    data = (
        client.send_data("frag", fin=False)
        + client.send_data("men", fin=False)
        + client.ping(b"are you there")
        + client.send_data("ted", fin=True)
        + client.send_data(b"\x01", fin=False)
        + client.send_data(b"\x02", fin=True)
    )
    frames = ServerFrames(max_message_size=MAX)
    assert frames.receive_data(data) == ["fragmented", b"\x01\x02"]
    (pong,) = server_frames_seen(frames.data_to_send())
    assert (pong.opcode, pong.payload) == (Opcode.PONG, b"are you there")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100_000])
def test_every_length_encoding_both_ways(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frames = ServerFrames(max_message_size=200_000)
    assert frames.receive_data(client_frames().send_data(payload)) == [payload]
    (seen,) = server_frames_seen(encode_frame(ServerOpcode.BINARY, payload))
    assert (seen.opcode, seen.payload, seen.message_finished) == (Opcode.BINARY, payload, True)


def test_sent_text_messages_come_out_in_order() -> None:
    frames = ServerFrames(max_message_size=MAX)
    frames.send_messages(["one"])
    frames.send_messages(["two", "three ✓"])
    seen = server_frames_seen(frames.data_to_send())
    assert [(f.opcode, f.payload) for f in seen] == [
        (Opcode.TEXT, "one"),
        (Opcode.TEXT, "two"),
        (Opcode.TEXT, "three ✓"),
    ]
    assert frames.data_to_send() == b""


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (struct.pack("!H", 1000) + b"bye", 1000, "bye"),
        (struct.pack("!H", 1001), 1001, ""),
        (struct.pack("!H", 1012), 1012, ""),
        (struct.pack("!H", 3000), 3000, ""),
        (struct.pack("!H", 4999) + "✓".encode(), 4999, "✓"),
    ],
)
def test_close_frame_is_echoed_and_ends_receiving(payload: bytes, code: int, reason: str) -> None:
    client = client_frames()
    frames = ServerFrames(max_message_size=MAX)
    data = client.send_data("last") + raw_frame(0x8, payload) + client.send_data("after")
    assert frames.receive_data(data) == ["last"]
    assert frames.close_received is not None
    assert (frames.close_received.code, frames.close_received.reason) == (code, reason)
    assert not frames.receiving
    assert close_code_sent(frames) == code
    assert frames.receive_data(client.send_data("later") + client.ping(b"p")) == []
    assert frames.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        frames.send_messages(["too late"])


def test_close_frame_without_a_code_is_1005_and_echoed_empty() -> None:
    frames = ServerFrames(max_message_size=MAX)
    assert frames.receive_data(raw_frame(0x8, b"")) == []
    assert frames.close_received is not None
    assert frames.close_received.code == 1005
    (echo,) = server_frames_seen(frames.data_to_send())
    assert echo.opcode is Opcode.CLOSE
    assert echo.payload == (1005, "")  # wsproto's reading of an empty close frame


def test_our_close_then_the_clients_reply() -> None:
    frames = ServerFrames(max_message_size=MAX)
    frames.close(1008, "authentication failed")
    assert close_code_sent(frames) == 1008
    client = client_frames()
    # a ping after our close gets no pong; the reply is not answered again
    assert frames.receive_data(client.ping(b"x") + client.close(1008)) == []
    assert frames.close_received is not None
    assert frames.close_received.code == 1008
    assert frames.data_to_send() == b""


def test_a_long_close_reason_is_cut_to_valid_utf8() -> None:
    frames = ServerFrames(max_message_size=MAX)
    frames.close(1000, "✓" * 100)
    (close,) = server_frames_seen(frames.data_to_send())
    assert isinstance(close.payload, tuple)
    code, reason = close.payload
    assert code == 1000
    assert reason == "✓" * 41  # 123 bytes hold 41 three-byte characters


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw_frame(0x1, b"hi", masked=False), 1002),
        (raw_frame(0x1, b"hi", rsv=0x40), 1002),
        (raw_frame(0x3, b"hi"), 1002),
        (raw_frame(0xB, b"hi"), 1002),
        (raw_frame(0x9, b"ping", fin=False), 1002),
        (raw_frame(0x9, b"p" * 126), 1002),
        (raw_frame(0x1, b"hi", length=bytes([0x80 | 126]) + struct.pack("!H", 2)), 1002),
        (raw_frame(0x2, b"x" * 200, length=bytes([0x80 | 127]) + struct.pack("!Q", 200)), 1002),
        (raw_frame(0x0, b"orphan"), 1002),
        (raw_frame(0x1, b"a", fin=False) + raw_frame(0x1, b"b"), 1002),
        (raw_frame(0x8, b"\x03"), 1002),
        (raw_frame(0x8, struct.pack("!H", 999)), 1002),
        (raw_frame(0x8, struct.pack("!H", 1004)), 1002),
        (raw_frame(0x8, struct.pack("!H", 1005)), 1002),
        (raw_frame(0x8, struct.pack("!H", 1006)), 1002),
        (raw_frame(0x8, struct.pack("!H", 1015)), 1002),
        (raw_frame(0x8, struct.pack("!H", 2999)), 1002),
        (raw_frame(0x8, struct.pack("!H", 5000)), 1002),
        (raw_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
        (raw_frame(0x1, b"\xc3\x28"), 1007),
        (raw_frame(0x1, b"\xe2\x9c", fin=False) + raw_frame(0x0, b"\xff"), 1007),
        (raw_frame(0x1, b"x" * (MAX + 1)), 1009),
        (raw_frame(0x2, b"x" * MAX, fin=False) + raw_frame(0x0, b"x"), 1009),
    ],
    ids=[
        "unmasked",
        "reserved-bit",
        "data-opcode-3",
        "control-opcode-b",
        "fragmented-ping",
        "long-ping",
        "16-bit-length-for-2",
        "64-bit-length-for-200",
        "continuation-without-start",
        "text-inside-fragmented",
        "one-byte-close",
        "close-999",
        "close-1004",
        "close-1005",
        "close-1006",
        "close-1015",
        "close-2999",
        "close-5000",
        "close-reason-not-utf8",
        "text-not-utf8",
        "fragmented-text-not-utf8",
        "too-big",
        "too-big-fragmented",
    ],
)
def test_a_broken_frame_fails_the_connection_with_its_close_code(data: bytes, code: int) -> None:
    client = client_frames()
    frames = ServerFrames(max_message_size=MAX)
    # what came before the broken frame is still delivered; what comes after is not
    assert frames.receive_data(client.send_data("before") + data) == ["before"]
    assert frames.failure is not None
    assert frames.failure.hint == code
    assert close_code_sent(frames) == code
    assert frames.receive_data(client.send_data("after")) == []
    assert frames.data_to_send() == b""


def test_an_oversized_message_fails_at_its_header() -> None:
    frames = ServerFrames(max_message_size=MAX)
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + KEY
    assert frames.receive_data(header) == []
    assert frames.failure is not None
    assert frames.failure.hint == 1009


@given(
    messages=st.lists(
        st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=1, max_size=8
    ),
    fragment_size=st.integers(min_value=1, max_value=400),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_any_fragmentation_and_any_split_give_the_same_messages(
    messages: list[str | bytes], fragment_size: int, cuts: list[int]
) -> None:
    client = client_frames()
    data = bytearray()
    for message in messages:
        encoded = message.encode() if isinstance(message, str) else message
        pieces = [encoded[i : i + fragment_size] for i in range(0, len(encoded), fragment_size)]
        pieces = pieces or [encoded]
        for number, piece in enumerate(pieces):
            final = number == len(pieces) - 1
            # wsproto sends a text fragment as text only if it is whole UTF-8; raw frames do not
            opcode = 0x0 if number else (0x1 if isinstance(message, str) else 0x2)
            data += raw_frame(opcode, piece, fin=final)
        data += client.ping(b"between")
    frames = ServerFrames(max_message_size=MAX)
    received: list[str | bytes] = []
    start = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        received += frames.receive_data(bytes(data[start:cut]))
        start = cut
    assert received == messages
    assert frames.failure is None
    pongs = server_frames_seen(frames.data_to_send())
    assert [(f.opcode, f.payload) for f in pongs] == [(Opcode.PONG, b"between")] * len(messages)


# ---- the websocket on a stream -------------------------------------------------------------------


class Client:
    """A wsproto client on one end of an in-memory stream pair."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.connection = WSConnection(ConnectionType.CLIENT)

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.connection.send(e) for e in events))

    async def events(self) -> list[Event]:
        """Read until something arrives (or the end of the stream: then [])."""
        while True:
            data = bytes(await self.stream.receive_some(1 << 20))
            self.connection.receive_data(data or None)
            events = list(self.connection.events())
            if events or not data:
                return events

    async def upgrade(
        self, target: str = "/media", headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self.send(Request(host="bridge.example", target=target, extra_headers=headers or []))


@asynccontextmanager
async def pair(*, max_message_size: int = MAX) -> AsyncIterator[tuple[Client, ServerWebSocket]]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    websocket = ServerWebSocket(server_stream, max_message_size=max_message_size)
    with trio.fail_after(TIMEOUT_S):
        yield Client(client_stream), websocket


@asynccontextmanager
async def opened(*, max_message_size: int = MAX) -> AsyncIterator[tuple[Client, ServerWebSocket]]:
    async with pair(max_message_size=max_message_size) as (client, websocket):
        await client.upgrade("/media?x=1", [(b"X-Twilio-Signature", b"abc")])
        request = await websocket.receive_request()
        assert request.path == "/media"
        assert request.target == "/media?x=1"
        assert request.header(b"x-twilio-signature") == "abc"
        assert request.header(b"x-missing") is None
        await websocket.accept()
        assert [type(e) for e in await client.events()] == [AcceptConnection]
        yield client, websocket


async def test_reject_answers_the_status_and_closes() -> None:
    async with pair() as (client, websocket):
        await client.upgrade("/other")
        request = await websocket.receive_request()
        assert request.path == "/other"
        await websocket.reject(404)
        rejected, *_ = await client.events()
        assert isinstance(rejected, RejectConnection)
        assert rejected.status_code == 404
        assert await client.stream.receive_some(100) == b""


async def test_a_request_that_is_not_an_upgrade_gets_400() -> None:
    async with pair() as (client, websocket):
        await client.stream.send_all(b"GET /media HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(HandshakeFailed):
            await websocket.receive_request()
        response = await client.stream.receive_some(1000)
        assert response.startswith(b"HTTP/1.1 400 ")


async def test_garbage_instead_of_a_request_fails_the_handshake() -> None:
    async with pair() as (client, websocket):
        await client.stream.send_all(b"\x16\x03\x01 this is TLS, not HTTP\r\n\r\n")
        with pytest.raises(HandshakeFailed):
            await websocket.receive_request()


async def test_the_end_of_the_stream_before_a_request_fails_the_handshake() -> None:
    async with pair() as (client, websocket):
        await client.stream.aclose()
        with pytest.raises(HandshakeFailed):
            await websocket.receive_request()


async def test_all_messages_of_one_read_come_together() -> None:
    async with opened() as (client, websocket):
        await client.send(TextMessage("one"), BytesMessage(b"two"), TextMessage("three"))
        assert await websocket.receive_messages() == ["one", b"two", "three"]
        await client.send(TextMessage("four"))
        assert await websocket.receive_messages() == ["four"]


async def test_a_ping_is_answered_while_receiving() -> None:
    async with opened() as (client, websocket):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(websocket.receive_messages)
            await client.send(Ping(b"alone"))
            assert await client.events() == [Pong(b"alone")]
            nursery.cancel_scope.cancel()
        # with messages to return, the answer waits for the next receive (not to lose them if
        # that write were cancelled)
        await client.send(Ping(b"p1"), TextMessage("after the ping"))
        assert await websocket.receive_messages() == ["after the ping"]
        await client.send(TextMessage("next"))
        assert await websocket.receive_messages() == ["next"]
        assert await client.events() == [Pong(b"p1")]


async def test_sent_messages_arrive_in_order() -> None:
    async with opened() as (client, websocket):
        await websocket.send_messages(["a", "b"])
        await websocket.send_messages([])
        await websocket.send_messages(["c"])
        received: list[Event] = []
        while len(received) < 3:
            received += await client.events()
        assert received == [TextMessage("a"), TextMessage("b"), TextMessage("c")]


async def test_a_write_while_another_is_under_way_goes_after_it() -> None:
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    client = Client(client_stream)
    websocket = ServerWebSocket(server_stream, max_message_size=MAX)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.upgrade)
            await websocket.receive_request()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(websocket.accept)
            assert [type(e) for e in await client.events()] == [AcceptConnection]
        async with trio.open_nursery() as nursery:
            # the first write waits for the client to read; the second one does not wait
            nursery.start_soon(websocket.send_messages, ["first"])
            await trio.testing.wait_all_tasks_blocked()
            await websocket.send_messages(["second", "third"])
            received: list[Event] = []
            while len(received) < 3:
                received += await client.events()
        assert received == [TextMessage("first"), TextMessage("second"), TextMessage("third")]


async def test_the_clients_close_is_answered_after_the_messages_before_it() -> None:
    async with opened() as (client, websocket):
        await client.send(TextMessage("last words"), CloseConnection(1001, "going"))
        assert await websocket.receive_messages() == ["last words"]
        with pytest.raises(WebSocketClosed) as closed:
            await websocket.receive_messages()
        assert (closed.value.code, closed.value.reason, closed.value.by_peer) == (
            1001,
            "going",
            True,
        )
        assert websocket.closed is closed.value
        assert await client.events() == [CloseConnection(1001, "")]
        # the server closes the TCP connection first (RFC 6455 §7.1.1)
        assert await client.stream.receive_some(100) == b""
        with pytest.raises(WebSocketClosed):
            await websocket.send_messages(["too late"])
        await websocket.aclose()


async def test_the_end_of_the_stream_is_an_abnormal_close() -> None:
    async with opened() as (client, websocket):
        await client.stream.aclose()
        with pytest.raises(WebSocketClosed) as closed:
            await websocket.receive_messages()
        assert (closed.value.code, closed.value.by_peer) == (1006, True)


async def test_a_protocol_error_closes_with_its_code() -> None:
    async with opened() as (client, websocket):
        await client.stream.send_all(raw_frame(0x1, b"unmasked", masked=False))
        with pytest.raises(WebSocketClosed) as closed:
            await websocket.receive_messages()
        assert (closed.value.code, closed.value.by_peer) == (1002, False)
        (close,) = await client.events()
        assert isinstance(close, CloseConnection)
        assert close.code == 1002
        assert await client.stream.receive_some(100) == b""


async def test_aclose_sends_close_waits_for_the_reply_and_closes_the_stream() -> None:
    async with opened() as (client, websocket):

        async def answer() -> None:
            (close,) = await client.events()
            assert isinstance(close, CloseConnection)
            assert (close.code, close.reason) == (1008, "authentication failed")
            # a message sent before the client saw our close is dropped
            reply = raw_frame(0x8, struct.pack("!H", 1008))
            await client.stream.send_all(raw_frame(0x1, b"dropped") + reply)
            assert await client.stream.receive_some(100) == b""

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            await websocket.aclose(1008, "authentication failed")
        assert websocket.closed is not None
        assert (websocket.closed.code, websocket.closed.by_peer) == (1008, False)
        await websocket.aclose()  # idempotent
        with pytest.raises(WebSocketClosed):
            await websocket.receive_messages()


async def test_aclose_with_a_silent_client_is_bounded_by_the_callers_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with opened() as (client, websocket):
        with trio.move_on_after(2):
            await websocket.aclose()
        (close,) = await client.events()
        assert isinstance(close, CloseConnection)
        assert close.code == 1000
        assert await client.stream.receive_some(100) == b""


async def test_aclose_before_accepting_just_closes_the_stream() -> None:
    async with pair() as (client, websocket):
        await websocket.aclose()
        assert await client.stream.receive_some(100) == b""


async def test_aclose_while_another_task_receives_ends_that_receive() -> None:
    async with opened() as (client, websocket):
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                with pytest.raises(WebSocketClosed) as closed:
                    await websocket.receive_messages()
                assert (closed.value.code, closed.value.by_peer) == (1001, False)

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            await websocket.aclose(1001)
        (close,) = await client.events()
        assert isinstance(close, CloseConnection)
        assert close.code == 1001
        assert await client.stream.receive_some(100) == b""
