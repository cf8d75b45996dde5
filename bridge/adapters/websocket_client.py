"""Client websockets (RFC 6455) whose TCP (or TLS) stream is always closed, whoever ends them.

Two flavours over the same connect step:

* :func:`run_client_websocket` hands trio-websocket's ``WebSocketConnection`` to a callback; the
  test caller uses it.
* :func:`open_client_websocket` yields a :class:`ClientWebSocket`: wsproto driven directly on the
  stream, for the agent leg's per-frame path. There is no reader task and no message channel: the
  owner reads (every frame of one 64 KiB receive at once, RFC 6455 §5) and writes (any number of
  messages as one socket write). trio-websocket puts a reader task and a message channel between
  the socket and every received message, and a lock and wsproto's general frame serializer in
  front of every sent one; on the per-frame path that overhead was most of the leg's cost.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import cast

import attrs
import trio
import trio_websocket
import wsproto
import wsproto.connection
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from bridge.adapters.wsserver import WebSocketClosed

# How long a clean websocket close may take before the socket is simply dropped.
DISCONNECT_TIMEOUT_S = 1.0
# One receive takes whatever the kernel holds up to this; all of it is parsed before the next.
RECEIVE_BYTES = 64 * 1024

# RFC 6455 §7.4.1 close codes.
NORMAL_CLOSURE = 1000
ABNORMAL_CLOSURE = 1006
MESSAGE_TOO_BIG = 1009
# Masking keys are drawn from the system CSPRNG this many bytes (a key is 4) at a time.
MASK_KEY_POOL_BYTES = 4096


@attrs.frozen
class _Target:
    hostname: str
    port: int
    tls: bool
    host_header: str
    resource: str


def _parse_url(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    hostname = parts.hostname
    if parts.scheme not in ("ws", "wss") or not hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {parts.scheme}://{hostname or ''}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    host = f"[{hostname}]" if ":" in hostname else hostname
    return _Target(
        hostname=hostname,
        port=port,
        tls=tls,
        host_header=host if port in (80, 443) else f"{host}:{port}",
        resource=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
    )


async def _open_stream(target: _Target) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if target.tls:
        return await trio.open_ssl_over_tcp_stream(
            target.hostname,
            target.port,
            ssl_context=ssl.create_default_context(),
            https_compatible=True,
        )
    return await trio.open_tcp_stream(target.hostname, target.port)


def _with_stdlib_socket(stream: trio.SocketStream) -> tuple[trio.SocketStream, socket.socket]:
    """The same connection as a SocketStream over a stdlib socket object that we hold too.

    trio's socket gives up its descriptor (``detach``) to a stdlib socket, which a new trio
    socket then wraps (the same object, no second descriptor), so sends can try the kernel
    directly before falling back to the stream. Closing the stream closes it.
    """
    plain = socket.socket(fileno=stream.socket.detach())
    try:
        return trio.SocketStream(trio.socket.from_stdlib_socket(plain)), plain
    except BaseException:
        plain.close()
        raise


async def run_client_websocket(
    url: str,
    *,
    extra_headers: list[tuple[bytes, bytes]],
    message_queue_size: int,
    max_message_size: int,
    connect_timeout: float,
    run: Callable[[trio_websocket.WebSocketConnection], Awaitable[None]],
) -> None:
    """Open a client websocket to `url`, await `run(websocket)`, then close everything.

    This is ``trio_websocket.open_websocket_url`` with the TCP (or TLS) stream kept in our hands.
    trio-websocket 0.12.2 leaves a client's socket open when the server starts the closing
    handshake (its reader stops at end-of-file and ``aclose()`` returns early because the
    connection already counts as closed) and when the opening handshake times out; the descriptor
    then lingers until garbage collection. Owning the stream lets every way out close it.
    `connect_timeout` covers TCP, TLS and the HTTP upgrade together and raises TooSlowError.
    """
    target = _parse_url(url)
    deadline = trio.current_time() + connect_timeout
    with trio.fail_at(deadline):
        stream = await _open_stream(target)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_at(deadline):
                websocket = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    target.host_header,
                    target.resource,
                    extra_headers=extra_headers,
                    message_queue_size=message_queue_size,
                    max_message_size=max_message_size,
                )
            try:
                await run(websocket)
            finally:
                # A clean close (close frame, the server's reply) unless we are being cancelled,
                # in which case the stream is simply closed below.
                with trio.move_on_after(DISCONNECT_TIMEOUT_S):
                    await websocket.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


# ---- the direct wsproto client -----------------------------------------------------------------


def encode_text_frame(text: str, mask_key: bytes) -> bytes:
    """One final, masked text frame from a client (RFC 6455 §5.2, masking §5.3).

    The per-frame path's one frame kind, built here rather than by wsproto (whose general
    serializer costs five times as much): a 2, 4 or 10 byte header, the 4-byte key and the
    payload XORed with the key repeated, done as one big-integer XOR.
    """
    payload = text.encode()
    length = len(payload)
    if length < 126:
        header = bytes((0x81, 0x80 | length))
    elif length < 0x10000:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    key_stream = (mask_key * (length // 4 + 1))[:length]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(key_stream, "little")
    return header + mask_key + masked.to_bytes(length, "little")


class WebSocketHandshakeError(Exception):
    """The HTTP upgrade failed: the server closed, answered garbage, or the stream broke."""


class WebSocketRejected(WebSocketHandshakeError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"the server rejected the websocket handshake with HTTP {status_code}")
        self.status_code = status_code


def _describe(error: BaseException) -> str:
    """trio's BrokenResourceError often says nothing itself; its cause (an SSL error) does."""
    return str(error) or str(error.__cause__ or "") or type(error).__name__


async def _handshake(
    stream: trio.abc.Stream, target: _Target, extra_headers: list[tuple[bytes, bytes]]
) -> wsproto.connection.Connection:
    """The client side of the opening handshake (RFC 6455 §4.1): a Request, then 101 or not."""
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = Request(host=target.host_header, target=target.resource, extra_headers=extra_headers)
    try:
        await stream.send_all(client.send(request))
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise WebSocketHandshakeError("the server closed the connection during the upgrade")
            client.receive_data(cast("bytes", data))
            for event in client.events():
                if isinstance(event, AcceptConnection):
                    assert client.connection is not None
                    # Frames that came with the 101 stay buffered in the connection.
                    return client.connection
                if isinstance(event, RejectConnection):
                    raise WebSocketRejected(event.status_code)
    except wsproto.utilities.RemoteProtocolError as error:
        raise WebSocketHandshakeError(f"bad upgrade response: {error}") from None
    except trio.BrokenResourceError as error:
        raise WebSocketHandshakeError(_describe(error)) from None


@asynccontextmanager
async def open_client_websocket(
    url: str,
    *,
    extra_headers: list[tuple[bytes, bytes]],
    max_message_size: int,
    connect_timeout: float,
) -> AsyncIterator[ClientWebSocket]:
    """Connect to `url` and yield the open websocket; the stream is closed on every way out.

    `connect_timeout` covers TCP, TLS and the HTTP upgrade together and raises TooSlowError.
    A refused upgrade raises :class:`WebSocketRejected`, a failed one
    :class:`WebSocketHandshakeError`, a failed TCP connect OSError. When the body returns, the
    closing handshake (close 1000, the server's reply) gets :data:`DISCONNECT_TIMEOUT_S`; when it
    raises (cancellation included) the connection is dropped without a close frame.
    """
    target = _parse_url(url)
    deadline = trio.current_time() + connect_timeout
    with trio.fail_at(deadline):
        stream = await _open_stream(target)
    plain_socket: socket.socket | None = None
    if isinstance(stream, trio.SocketStream):
        stream, plain_socket = _with_stdlib_socket(stream)
    try:
        with trio.fail_at(deadline):
            connection = await _handshake(stream, target, extra_headers)
        websocket = ClientWebSocket(
            stream, connection, max_message_size=max_message_size, plain_socket=plain_socket
        )
        yield websocket
        with trio.move_on_after(DISCONNECT_TIMEOUT_S):
            await websocket.aclose()
    finally:
        await trio.aclose_forcefully(stream)


class ClientWebSocket:
    """An open client websocket: wsproto on a stream, read and written by its owner's tasks.

    One task reads (:meth:`receive_messages`); any task may write (:meth:`send_messages`): writes
    take turns under one lock, which is also how the reader answers pings and close frames.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: wsproto.connection.Connection,
        *,
        max_message_size: int,
        plain_socket: socket.socket | None = None,
    ) -> None:
        self._stream = stream
        # The stream's own socket when it is plain TCP (not TLS): see _write.
        self._plain_socket = plain_socket
        self._connection = connection
        self._max_message_size = max_message_size
        self._send_lock = trio.StrictFIFOLock()
        self._parts: list[str | bytes] = []
        self._message_size = 0
        self._closed: WebSocketClosed | None = None
        self._mask_keys = b""
        self._mask_keys_used = 0
        # A write cut short (cancelled or failed) leaves half a frame on the wire: no more frames.
        self._broken = False
        self._failed = False

    @property
    def closed(self) -> WebSocketClosed | None:
        """How the websocket closed, once it has."""
        return self._closed

    async def receive_messages(self) -> list[str | bytes]:
        """Wait for the next messages: all those complete in the data received (at least one).

        Pings are answered and the peer's close frame is answered before this raises
        :class:`WebSocketClosed`; messages that arrived before a close are returned first.
        """
        while True:
            if self._closed is not None:
                raise self._closed
            messages = await self._process_events()
            if messages:
                return messages
            if self._closed is None:
                await self._receive_data()

    async def _receive_data(self) -> None:
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:
            # Sockets and SSL streams return bytes; the bytearray in the signature never comes.
            self._connection.receive_data(cast("bytes", data))
        else:
            # RFC 6455 §7.1.5: the connection ended without a close frame.
            self._closed = WebSocketClosed(ABNORMAL_CLOSURE, "", by_peer=True)

    async def _process_events(self) -> list[str | bytes]:
        messages: list[str | bytes] = []
        for event in self._connection.events():
            if isinstance(event, TextMessage | BytesMessage):
                data = event.data if isinstance(event.data, str) else bytes(event.data)
                # The common case: one whole message in one frame.
                whole = event.message_finished and not self._parts
                if whole and len(data) <= self._max_message_size:
                    messages.append(data)
                    continue
                self._parts.append(data)
                self._message_size += len(data)
                if self._message_size > self._max_message_size:
                    self._parts = []
                    reason = f"Exceeded maximum message size: {self._max_message_size} bytes"
                    await self._close_locally(MESSAGE_TOO_BIG, reason)
                    return messages
                if event.message_finished:
                    if isinstance(data, str):
                        messages.append("".join(cast("list[str]", self._parts)))
                    else:
                        messages.append(b"".join(cast("list[bytes]", self._parts)))
                    self._parts = []
                    self._message_size = 0
            elif isinstance(event, Ping):
                await self._send_frames(self._connection.send(event.response()))
            elif isinstance(event, CloseConnection):
                await self._on_close_frame(event)
                return messages
            # Pongs answer pings we never send.
        return messages

    async def _on_close_frame(self, event: CloseConnection) -> None:
        state = self._connection.state
        if state is ConnectionState.REMOTE_CLOSING:
            self._closed = WebSocketClosed(event.code, event.reason or "", by_peer=True)
            await self._send_frames(self._connection.send(event.response()))
        elif state is ConnectionState.CLOSED:
            # The reply to our own close frame.
            self._closed = WebSocketClosed(event.code, event.reason or "", by_peer=False)
        else:
            # wsproto reports a frame it could not parse as a close it wants us to send.
            await self._close_locally(event.code, event.reason or "")

    async def _close_locally(self, code: int, reason: str) -> None:
        # RFC 6455 §7.1.7, failing the connection: a close frame, and no wait for the reply (after a
        # frame wsproto could not parse, it would not see one anyway).
        self._failed = True
        self._closed = WebSocketClosed(code, reason, by_peer=False)
        if self._connection.state is ConnectionState.OPEN:
            await self._send_frames(self._connection.send(CloseConnection(code, reason)))

    async def send_messages(self, take: Callable[[], Sequence[str]]) -> None:
        """Write the text messages `take()` returns as one socket write.

        `take` runs once this call holds the write turn, so messages drained from a shared queue
        go out in the order they were drained, whichever task writes them. Raises
        :class:`WebSocketClosed` when the websocket is closed or the stream broke.
        """
        await self._acquire_send_lock()
        try:
            messages = take()
            if not messages:
                return
            connection = self._connection
            if self._closed is not None or connection.state is not ConnectionState.OPEN:
                raise self._closed or WebSocketClosed(ABNORMAL_CLOSURE, "", by_peer=False)
            if len(messages) == 1:
                data = encode_text_frame(messages[0], self._mask_key())
            else:
                data = b"".join([encode_text_frame(text, self._mask_key()) for text in messages])
            await self._write(data)
        finally:
            self._send_lock.release()

    def _mask_key(self) -> bytes:
        offset = self._mask_keys_used
        if offset == len(self._mask_keys):
            self._mask_keys = os.urandom(MASK_KEY_POOL_BYTES)
            offset = 0
        self._mask_keys_used = offset + 4
        return self._mask_keys[offset : offset + 4]

    async def _send_frames(self, data: bytes) -> None:
        await self._acquire_send_lock()
        try:
            await self._write(data)
        finally:
            self._send_lock.release()

    async def _acquire_send_lock(self) -> None:
        # Uncontended (nearly always), take it without a trip through the scheduler; the write
        # that follows is the checkpoint.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()

    async def _write(self, data: bytes) -> None:
        if self._broken:
            raise self._closed or WebSocketClosed(ABNORMAL_CLOSURE, "", by_peer=True)
        if self._plain_socket is not None:
            # Nearly always the kernel takes it all at once: one system call (~2 us), where
            # trio's send_all adds a context manager, a conflict detector and a trip through the
            # scheduler (~18 us in all). Callers still checkpoint: they wait for their input.
            try:
                sent = self._plain_socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._broken = True
                self._closed = self._closed or WebSocketClosed(ABNORMAL_CLOSURE, "", by_peer=True)
                raise self._closed from None
            if sent == len(data):
                return
            data = data[sent:]
        self._broken = True
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self._closed is None:
                self._closed = WebSocketClosed(ABNORMAL_CLOSURE, "", by_peer=True)
            raise self._closed from None
        self._broken = False

    async def aclose(self, code: int = NORMAL_CLOSURE) -> None:
        """The closing handshake (RFC 6455 §7.1.2): our close frame, then read to the peer's.

        Messages still arriving are dropped. Bound it with a timeout; the owner closes the stream.
        """
        if self._broken or self._failed:
            return
        connection = self._connection
        try:
            if connection.state is ConnectionState.OPEN:
                await self._send_frames(connection.send(CloseConnection(code)))
            while connection.state is ConnectionState.LOCAL_CLOSING:
                data = await self._stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return
                connection.receive_data(cast("bytes", data))
                for _ in connection.events():
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, WebSocketClosed):
            return


__all__ = [
    "DISCONNECT_TIMEOUT_S",
    "ClientWebSocket",
    "WebSocketClosed",
    "WebSocketHandshakeError",
    "WebSocketRejected",
    "encode_text_frame",
    "open_client_websocket",
    "run_client_websocket",
]
