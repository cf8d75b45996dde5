"""The direct wsproto client websocket against a server driven by hand (wsproto) on 127.0.0.1."""

from __future__ import annotations

import functools
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import cast

import pytest
import trio
import trio.testing
import wsproto
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from bridge.adapters.websocket_client import (
    ClientWebSocket,
    WebSocketClosed,
    WebSocketHandshakeError,
    WebSocketRejected,
    encode_text_frame,
    open_client_websocket,
)

GUARD_S = 10.0
MAX_MESSAGE = 1 << 20


class Peer:
    """The server end of one connection: wsproto by hand, every byte and event recorded."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(ConnectionType.SERVER)
        self.request: Request | None = None
        self.frame_bytes = b""  # what arrived after the opening handshake
        self.events: list[Event] = []
        self.eof = False
        self.closed = trio.Event()  # the client closed the TCP connection
        self.messages: list[str | bytes] = []
        self._parts: list[str | bytes] = []
        self.answer_close = True  # as servers do (RFC 6455 §5.5.1)

    async def receive(self) -> list[Event]:
        data = await self.stream.receive_some(1 << 16)
        if not data:
            self.eof = True
            self.closed.set()
            return []
        if self.request is not None:
            self.frame_bytes += data
        self.ws.receive_data(data)
        events = list(self.ws.events())
        self.events += events
        for event in events:
            if isinstance(event, TextMessage | BytesMessage):
                self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                if event.message_finished:
                    if isinstance(self._parts[0], str):
                        self.messages.append("".join(cast("list[str]", self._parts)))
                    else:
                        self.messages.append(b"".join(cast("list[bytes]", self._parts)))
                    self._parts = []
            elif isinstance(event, CloseConnection) and self.answer_close:
                await self.answer(event)
        return events

    async def answer(self, close: CloseConnection) -> None:
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            await self.send(close.response())

    async def read_request(self) -> Request:
        while self.request is None:
            for event in await self.receive():
                if isinstance(event, Request):
                    self.request = event
        return self.request

    async def accept(self, *then: Event) -> None:
        """Accept the upgrade; `then` goes out in the same write as the 101."""
        await self.read_request()
        await self.send(AcceptConnection(), *then)

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.ws.send(event) for event in events))

    async def wait_messages(self, count: int) -> list[str | bytes]:
        """Read until `count` whole messages arrived (fragments joined)."""
        while len(self.messages) < count and not self.eof:
            await self.receive()
        return self.messages

    async def read_to_eof(self) -> None:
        """Read until the client closes TCP, answering its close frame unless told not to."""
        while not self.eof:
            await self.receive()

    @property
    def close_codes(self) -> list[int]:
        return [event.code for event in self.events if isinstance(event, CloseConnection)]


Script = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[tuple[str, list[Peer]]]:
    peers: list[Peer] = []

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        peers.append(peer)
        await script(peer)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime?model=m", peers
        nursery.cancel_scope.cancel()


def connect(
    url: str, *, timeout: float = 2.0, max_message_size: int = MAX_MESSAGE
) -> AbstractAsyncContextManager[ClientWebSocket]:
    return open_client_websocket(
        url,
        extra_headers=[(b"authorization", b"Bearer k")],
        max_message_size=max_message_size,
        connect_timeout=timeout,
    )


# ---- frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_encoded_text_frames_decode_as_the_same_text(length: int) -> None:
    text = ("aé€" * length)[:length]
    server_side = Connection(ConnectionType.SERVER)
    server_side.receive_data(encode_text_frame(text, b"\x9a\x01\xfe\x37"))
    events = list(server_side.events())
    assert "".join(e.data for e in events if isinstance(e, TextMessage)) == text
    assert isinstance(events[-1], TextMessage)
    assert events[-1].message_finished


def test_encoded_frames_are_masked_final_text_frames() -> None:
    frame = encode_text_frame("hello", b"\x01\x02\x03\x04")
    assert frame[0] == 0x81  # FIN, text
    assert frame[1] == 0x80 | 5  # masked, length 5
    assert frame[2:6] == b"\x01\x02\x03\x04"
    assert frame[6:] == bytes(b ^ k for b, k in zip(b"hello", b"\x01\x02\x03\x04\x01", strict=True))


# ---- against a hand-driven server --------------------------------------------------------------


async def test_handshake_sends_the_target_host_and_extra_headers() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S):
            async with connect(url):
                pass
    [peer] = peers
    assert peer.request is not None
    assert peer.request.target == "/v1/realtime?model=m"
    assert peer.request.host == url.split("/")[2]
    assert (b"authorization", b"Bearer k") in peer.request.extra_headers
    # The body returned: a clean close, 1000, answered, then the TCP connection closed.
    assert peer.close_codes == [1000]
    assert peer.eof


async def test_messages_go_out_in_order_with_a_fresh_mask_each() -> None:
    texts = [f'{{"n":{n}}}' for n in range(5)]

    async def script(peer: Peer) -> None:
        await peer.accept()
        assert await peer.wait_messages(5) == texts
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws:
                await ws.send_messages(lambda: texts[:3])
                await ws.send_messages(lambda: texts[3:])
                await ws.send_messages(list)  # nothing to send: nothing sent
    [peer] = peers
    keys = []
    data = peer.frame_bytes
    for _ in texts:
        length = data[1] & 0x7F
        keys.append(data[2:6])
        data = data[6 + length :]
    assert len(set(keys)) == len(texts)


async def test_frames_that_came_with_the_101_are_not_lost() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept(TextMessage("first"), TextMessage("second"))
        await peer.read_to_eof()

    async with server(script) as (url, _):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws:
                received: list[str | bytes] = []
                while len(received) < 2:
                    received += await ws.receive_messages()
    assert received == ["first", "second"]


async def test_fragmented_and_binary_messages_are_joined() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.send(
            TextMessage("a", message_finished=False),
            TextMessage("b", message_finished=False),
            TextMessage("c"),
        )
        await peer.send(BytesMessage(b"\x00\x01", message_finished=False), BytesMessage(b"\x02"))
        await peer.read_to_eof()

    async with server(script) as (url, _):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws:
                received: list[str | bytes] = []
                while len(received) < 2:
                    received += await ws.receive_messages()
    assert received == ["abc", b"\x00\x01\x02"]


async def test_pings_are_answered() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept(Ping(b"are you there"), TextMessage("after the ping"))
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws:
                assert await ws.receive_messages() == ["after the ping"]
    [pong] = [event for event in peers[0].events if isinstance(event, Pong)]
    assert pong.payload == b"are you there"


async def test_the_servers_close_is_answered_after_the_messages_before_it() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept(TextMessage("last words"), CloseConnection(1001, "going away"))
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws:
                assert await ws.receive_messages() == ["last words"]
                with pytest.raises(WebSocketClosed) as closed:
                    await ws.receive_messages()
                with pytest.raises(WebSocketClosed):
                    await ws.send_messages(lambda: ["too late"])
    assert (closed.value.code, closed.value.reason, closed.value.by_peer) == (
        1001,
        "going away",
        True,
    )
    # Our reply echoes the code (RFC 6455 §5.5.1); nothing more was sent after it.
    assert peers[0].close_codes == [1001]
    assert peers[0].eof


async def test_end_of_stream_without_a_close_frame_is_1006() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept()

    async with server(script) as (url, _):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws:
                with pytest.raises(WebSocketClosed) as closed:
                    await ws.receive_messages()
    assert (closed.value.code, closed.value.by_peer) == (1006, True)


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept(TextMessage("small"))
        await peer.send(TextMessage("x" * 600, message_finished=False))
        await peer.send(TextMessage("x" * 600))
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S):
            async with connect(url, max_message_size=1000) as ws:
                received: list[str | bytes] = []
                with pytest.raises(WebSocketClosed) as closed:
                    while True:
                        received += await ws.receive_messages()
    assert received == ["small"]
    assert (closed.value.code, closed.value.by_peer) == (1009, False)
    assert "1000 bytes" in closed.value.reason
    assert peers[0].close_codes == [1009]


async def test_invalid_utf8_closes_with_1007() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept()
        # A final unmasked text frame of 2 bytes that are not UTF-8.
        await peer.stream.send_all(b"\x81\x02\xff\xfe")
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws:
                with pytest.raises(WebSocketClosed) as closed:
                    await ws.receive_messages()
    assert (closed.value.code, closed.value.by_peer) == (1007, False)
    assert peers[0].close_codes == [1007]


async def test_a_write_the_kernel_cannot_take_at_once_keeps_the_order() -> None:
    big = "b" * (8 << 20)  # more than loopback's socket buffers hold: the write must wait
    go = trio.Event()
    taken: list[str] = []

    async def script(peer: Peer) -> None:
        await peer.accept()
        await go.wait()
        messages = await peer.wait_messages(2)
        assert [len(message) for message in messages] == [len(big), len("small")]
        await peer.read_to_eof()

    def take(text: str) -> Callable[[], list[str]]:
        def take_now() -> list[str]:
            taken.append(text[:5])
            return [text]

        return take_now

    async with server(script) as (url, _):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws, trio.open_nursery() as nursery:
                nursery.start_soon(ws.send_messages, take(big))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ws.send_messages, take("small"))
                await trio.testing.wait_all_tasks_blocked()
                # The second writer waits for its turn before taking its messages.
                assert taken == ["bbbbb"]
                go.set()
    assert taken == ["bbbbb", "small"]


async def test_a_raising_body_drops_the_connection_without_a_close_frame() -> None:
    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S), pytest.raises(KeyError):
            async with connect(url):
                raise KeyError("boom")
        with trio.fail_after(GUARD_S):
            await peers[0].closed.wait()
    assert peers[0].close_codes == []


async def test_an_unanswered_close_gives_up_and_closes_the_stream() -> None:
    async def script(peer: Peer) -> None:
        peer.answer_close = False
        await peer.accept()
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S):
            async with connect(url):
                pass
            await peers[0].closed.wait()
    assert peers[0].close_codes == [1000]


# ---- the opening handshake failing -------------------------------------------------------------


async def test_a_rejected_upgrade_reports_the_status() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            RejectConnection(status_code=403, headers=[(b"content-length", b"2")], has_body=True),
            RejectData(b"no"),
        )

    async with server(script) as (url, _):
        with trio.fail_after(GUARD_S), pytest.raises(WebSocketRejected) as rejected:
            async with connect(url):
                pass
    assert rejected.value.status_code == 403


async def test_a_wrong_accept_token_is_a_handshake_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCB0b2tlbg==\r\n\r\n"
        )
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S), pytest.raises(WebSocketHandshakeError, match="accept"):
            async with connect(url):
                pass
        with trio.fail_after(GUARD_S):
            await peers[0].closed.wait()


async def test_the_server_hanging_up_during_the_upgrade_is_a_handshake_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()

    async with server(script) as (url, _):
        with trio.fail_after(GUARD_S), pytest.raises(WebSocketHandshakeError, match="closed"):
            async with connect(url):
                pass


async def test_an_upgrade_that_never_comes_times_out_and_closes_the_stream() -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S), pytest.raises(trio.TooSlowError):
            async with connect(url, timeout=0.2):
                pass
        with trio.fail_after(GUARD_S):
            await peers[0].closed.wait()


async def test_only_websocket_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="not a ws:// or wss:// URL"):
        async with connect("http://127.0.0.1:9/"):
            pass


async def test_frames_with_each_size_of_length_field_reach_the_server() -> None:
    texts = ["s" * 100, "m" * 1000, "l" * 70_000]

    async def script(peer: Peer) -> None:
        await peer.accept()
        assert await peer.wait_messages(3) == texts
        await peer.read_to_eof()

    async with server(script) as (url, peers):
        with trio.fail_after(GUARD_S):
            async with connect(url) as ws:
                await ws.send_messages(lambda: texts)
    # 7-bit, 16-bit and 64-bit payload lengths (RFC 6455 §5.2).
    data = peers[0].frame_bytes
    assert data[1] == 0x80 | 100
    second = data[2 + 4 + 100 :]
    assert second[1] == 0x80 | 126
    assert struct.unpack("!H", second[2:4]) == (1000,)
    third = second[4 + 4 + 1000 :]
    assert third[1] == 0x80 | 127
    assert struct.unpack("!Q", third[2:10]) == (70_000,)
