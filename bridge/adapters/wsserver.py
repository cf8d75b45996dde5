"""A server websocket (RFC 6455) on one trio stream, with no task of its own.

Implements RFC 6455 §4.2 (the server's opening handshake, parsed and answered by wsproto's
``H11Handshake``), §5.1-§5.7 (framing: masking, fragmentation, control frames, ping/pong) and
§7 (the closing handshake, failing the connection, close codes of §7.4).

Why not trio-websocket or wsproto's frame layer: for the media-stream ingress every caller's
20 ms frame is one websocket message. trio-websocket parses it in a reader task and hands it to
the task that wants it through a memory channel (two task wake-ups per frame; its reader task was
~30% of the daemon's CPU in the benchmark's profile), and wsproto's frame layer alone costs
~14 us per 400-byte frame where :class:`ServerFrames` takes ~2 us. Here the task that wants the
messages reads the stream itself, up to :data:`RECEIVE_BYTES` at once, and gets every message
that read completed in one list, so under load one wake-up handles many frames.

:class:`ServerFrames` is the sans-IO part (bytes in, messages and bytes to send out);
:class:`ServerWebSocket` drives it and the handshake on a stream. Only what a server of text and
binary messages needs: no extensions (so every RSV bit must be zero), no subprotocols.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Sequence
from typing import cast

import attrs
import trio
import wsproto.utilities
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.handshake import H11Handshake

from bridge.errors import LocalProtocolError, RemoteProtocolError

# One receive takes whatever the kernel holds, up to this; all of it is parsed before the next.
RECEIVE_BYTES = 64 * 1024

# RFC 6455 §7.4.1 close codes
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009

CLOSE_NAMES = {
    1000: "NORMAL_CLOSURE",
    1001: "GOING_AWAY",
    1002: "PROTOCOL_ERROR",
    1003: "UNSUPPORTED_DATA",
    1005: "NO_STATUS_RCVD",
    1006: "ABNORMAL_CLOSURE",
    1007: "INVALID_FRAME_PAYLOAD_DATA",
    1008: "POLICY_VIOLATION",
    1009: "MESSAGE_TOO_BIG",
    1010: "MANDATORY_EXT",
    1011: "INTERNAL_ERROR",
    1012: "SERVICE_RESTART",
    1013: "TRY_AGAIN_LATER",
}
# §7.4.2: what a peer may put in a close frame (1004-1006 and 1015 are never sent; 1014 and the
# rest below 3000 are reserved for future RFCs). 1012 and 1013 are IANA-registered and in use.
_SENDABLE_CLOSE_CODES = frozenset(CLOSE_NAMES) - {1005, 1006}
_FIRST_APPLICATION_CODE = 3000
_LAST_CLOSE_CODE = 4999

_FIN = 0x80
_RSV = 0x70
_OPCODE = 0x0F
_MASK = 0x80
_LENGTH = 0x7F
_LENGTH_16 = 126
_LENGTH_64 = 127
_MAX_CONTROL_PAYLOAD = 125


class Opcode(enum.IntEnum):
    """RFC 6455 §5.2 frame opcodes."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


def close_name(code: int) -> str:
    """The RFC 6455 name of a close code, for logs."""
    return CLOSE_NAMES.get(code, "APPLICATION" if code >= _FIRST_APPLICATION_CODE else "UNKNOWN")


def encode_frame(opcode: Opcode, payload: bytes) -> bytes:
    """One final, unmasked frame (§5.2: a server never masks)."""
    length = len(payload)
    if length < _LENGTH_16:
        return bytes((_FIN | opcode, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", _FIN | opcode, _LENGTH_16, length) + payload
    return struct.pack("!BBQ", _FIN | opcode, _LENGTH_64, length) + payload


def _unmask(payload: bytes, key: bytes) -> bytes:
    # One XOR over the whole payload as a big integer: no Python-level loop over the bytes.
    length = len(payload)
    mask = (key * ((length + 3) // 4))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        length, "little"
    )


def _utf8(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(
            f"text message is not UTF-8: {exc}", hint=CLOSE_INVALID_PAYLOAD
        ) from None


@attrs.frozen
class CloseFrame:
    """A close frame's status code (1005 when it had none) and reason."""

    code: int
    reason: str


class ServerFrames:
    """The frame layer of a server websocket, without I/O (RFC 6455 §5, §7).

    :meth:`receive_data` takes bytes from the client and returns the data messages they complete
    (``str`` for text, ``bytes`` for binary). Pings are answered and a close frame is answered
    with its echo; a frame that breaks the protocol or a message over `max_message_size` fails
    the connection with our own close frame (1002, 1007 or 1009), recorded in :attr:`failure`.
    What to write to the client is in :meth:`data_to_send`. Once a close frame arrived
    (:attr:`close_received`) or the connection failed, further bytes are ignored.
    """

    def __init__(self, *, max_message_size: int) -> None:
        self._max_message_size = max_message_size
        # bytes received but not yet parsed, and how many must be buffered before the frame at
        # their start is complete (so a large frame is joined once, not once per receive)
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._wanted = 2
        # a fragmented message being received (§5.4)
        self._fragment_opcode: Opcode | None = None
        # one buffer, not a list of pieces: a peer sending 1-byte fragments must not make us
        # hold an object per byte
        self._fragments = bytearray()
        self._to_send: list[bytes] = []
        self.close_sent = False
        self.close_received: CloseFrame | None = None
        self.failure: RemoteProtocolError | None = None

    @property
    def wants_to_send(self) -> bool:
        """Whether :meth:`data_to_send` has something (a pong, a close frame)."""
        return bool(self._to_send)

    @property
    def receiving(self) -> bool:
        """Whether bytes from the client still mean something."""
        return self.close_received is None and self.failure is None

    def receive_data(self, data: bytes) -> list[str | bytes]:
        """The data messages completed by `data`, in order."""
        if not self.receiving:
            return []
        if self._chunks:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered < self._wanted:
                return []
            buffer = b"".join(self._chunks)
        else:
            if len(data) < self._wanted:
                self._chunks.append(data)
                self._buffered = len(data)
                return []
            buffer = data
        messages: list[str | bytes] = []
        try:
            consumed = self._parse(buffer, messages)
        except RemoteProtocolError as error:
            self._fail(error)
            consumed = len(buffer)
        if consumed < len(buffer):
            rest = buffer[consumed:]
            self._chunks = [rest]
            self._buffered = len(rest)
        else:
            self._chunks = []
            self._buffered = 0
        return messages

    def _parse(self, buffer: bytes, messages: list[str | bytes]) -> int:
        """Parse whole frames from `buffer` into `messages`; how many bytes were consumed."""
        offset = 0
        end = len(buffer)
        while self.close_received is None:
            available = end - offset
            if available < 2:
                self._wanted = 2
                break
            first = buffer[offset]
            second = buffer[offset + 1]
            if first & _RSV:
                raise RemoteProtocolError(
                    "reserved bits set without an extension", hint=CLOSE_PROTOCOL_ERROR
                )
            if not second & _MASK:
                # §5.1: a server must close the connection on an unmasked client frame
                raise RemoteProtocolError("client frame not masked", hint=CLOSE_PROTOCOL_ERROR)
            opcode = first & _OPCODE
            final = first & _FIN
            length = second & _LENGTH
            header = 6
            if length == _LENGTH_16:
                header = 8
                if available < header:
                    self._wanted = header
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
                if length < _LENGTH_16:
                    raise RemoteProtocolError(
                        "frame length not minimally encoded", hint=CLOSE_PROTOCOL_ERROR
                    )
            elif length == _LENGTH_64:
                header = 14
                if available < header:
                    self._wanted = header
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
                if length < 1 << 16 or length >> 63:
                    raise RemoteProtocolError(
                        "frame length not minimally encoded or over 2**63",
                        hint=CLOSE_PROTOCOL_ERROR,
                    )
            self._check_frame(opcode, final, length)
            if available < header + length:
                self._wanted = header + length
                break
            start = offset + header
            offset = start + length
            payload = buffer[start:offset]
            if length:
                payload = _unmask(payload, buffer[start - 4 : start])
            if opcode == Opcode.TEXT and final:
                messages.append(_utf8(payload))
            elif opcode < Opcode.CLOSE:
                self._receive_fragment(opcode, final, payload, messages)
            elif opcode == Opcode.PING:
                if not self.close_sent:
                    self._to_send.append(encode_frame(Opcode.PONG, payload))
            elif opcode == Opcode.CLOSE:
                self._receive_close(payload)
            # a pong answers a ping we never send: nothing to do (§5.5.3)
        return offset

    def _check_frame(self, opcode: int, final: int, length: int) -> None:
        """Refuse a frame from its header, before waiting for a payload we would not accept."""
        if opcode >= Opcode.CLOSE:
            if opcode > Opcode.PONG:
                raise RemoteProtocolError(
                    f"unknown control opcode {opcode:#x}", hint=CLOSE_PROTOCOL_ERROR
                )
            if not final or length > _MAX_CONTROL_PAYLOAD:
                raise RemoteProtocolError(
                    "control frame fragmented or longer than 125 bytes", hint=CLOSE_PROTOCOL_ERROR
                )
            return
        if opcode > Opcode.BINARY:
            raise RemoteProtocolError(f"unknown data opcode {opcode:#x}", hint=CLOSE_PROTOCOL_ERROR)
        if opcode == Opcode.CONTINUATION:
            if self._fragment_opcode is None:
                raise RemoteProtocolError(
                    "continuation frame without a message", hint=CLOSE_PROTOCOL_ERROR
                )
        elif self._fragment_opcode is not None:
            raise RemoteProtocolError(
                "new message inside a fragmented message", hint=CLOSE_PROTOCOL_ERROR
            )
        if len(self._fragments) + length > self._max_message_size:
            raise RemoteProtocolError(
                f"message over {self._max_message_size} bytes", hint=CLOSE_TOO_BIG
            )

    def _receive_fragment(
        self, opcode: int, final: int, payload: bytes, messages: list[str | bytes]
    ) -> None:
        if opcode == Opcode.BINARY and final:
            messages.append(payload)
            return
        if opcode != Opcode.CONTINUATION:
            self._fragment_opcode = Opcode(opcode)
        self._fragments += payload
        if not final:
            return
        whole = bytes(self._fragments)
        messages.append(_utf8(whole) if self._fragment_opcode is Opcode.TEXT else whole)
        self._fragment_opcode = None
        self._fragments = bytearray()

    def _receive_close(self, payload: bytes) -> None:
        if not payload:
            self.close_received = CloseFrame(CLOSE_NO_STATUS, "")
        elif len(payload) == 1:
            raise RemoteProtocolError("close frame of one byte", hint=CLOSE_PROTOCOL_ERROR)
        else:
            code = int.from_bytes(payload[:2], "big")
            if code not in _SENDABLE_CLOSE_CODES and not (
                _FIRST_APPLICATION_CODE <= code <= _LAST_CLOSE_CODE
            ):
                raise RemoteProtocolError(
                    f"close frame with invalid code {code}", hint=CLOSE_PROTOCOL_ERROR
                )
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteProtocolError(
                    "close reason is not UTF-8", hint=CLOSE_INVALID_PAYLOAD
                ) from None
            self.close_received = CloseFrame(code, reason)
        if not self.close_sent:
            # §5.5.1: echo the status code (none if there was none)
            echo = b"" if len(payload) < 2 else payload[:2]
            self._to_send.append(encode_frame(Opcode.CLOSE, echo))
            self.close_sent = True
        self._chunks = []
        self._buffered = 0

    def _fail(self, error: RemoteProtocolError) -> None:
        # §7.1.7: send a close frame with the reason, then drop the connection.
        self.failure = error
        self.close(error.hint, str(error))

    # ---- sending -------------------------------------------------------------------------------

    def send_messages(self, messages: Sequence[str]) -> None:
        """Queue text messages; LocalProtocolError after our close frame (§5.5.1)."""
        if self.close_sent:
            raise LocalProtocolError("websocket message after the close frame")
        if len(messages) == 1:
            self._to_send.append(encode_frame(Opcode.TEXT, messages[0].encode()))
        else:
            self._to_send.extend([encode_frame(Opcode.TEXT, text.encode()) for text in messages])

    def close(self, code: int, reason: str = "") -> None:
        """Queue our close frame (nothing if one was sent already)."""
        if self.close_sent:
            return
        encoded = reason.encode()[: _MAX_CONTROL_PAYLOAD - 2]
        # a reason cut inside a character would not be UTF-8 any more (§5.5.1)
        encoded = encoded.decode("utf-8", "ignore").encode()
        self._to_send.append(encode_frame(Opcode.CLOSE, code.to_bytes(2, "big") + encoded))
        self.close_sent = True

    def data_to_send(self) -> bytes:
        """Everything queued for the client, in order; empties the queue."""
        if not self._to_send:
            return b""
        data = self._to_send[0] if len(self._to_send) == 1 else b"".join(self._to_send)
        self._to_send = []
        return data


# ---- the websocket on a stream -----------------------------------------------------------------


class HandshakeFailed(Exception):
    """The client went away or sent something other than a websocket upgrade."""


class WebSocketClosed(Exception):
    """The websocket is closed: `code` and `reason` of the close frame (1006 when there was none).

    Both ends use it (this server and :mod:`bridge.adapters.websocket_client`). `by_peer` is False
    when we closed it: on purpose (`aclose`), or because the peer broke the protocol (1002, 1007)
    or sent a message over the limit (1009); then `code` and `reason` are the ones we sent.
    """

    def __init__(self, code: int, reason: str, *, by_peer: bool) -> None:
        super().__init__(f"{code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        self.by_peer = by_peer


@attrs.frozen
class UpgradeRequest:
    """The client's upgrade request: its target and headers (names in lower case)."""

    target: str
    headers: tuple[tuple[bytes, bytes], ...]

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


class ServerWebSocket:
    """A websocket a client opened on `stream`, driven by its owner's tasks.

    Call :meth:`receive_request`, then :meth:`accept` or :meth:`reject`. After accepting, one task
    reads (:meth:`receive_messages`), which also answers pings and the client's close; any task
    may write (:meth:`send_messages`). Writes take turns: a task that finds another one writing
    leaves its bytes to that one, so nothing waits on a lock and the order is kept.
    :meth:`aclose` closes the stream on every way out.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_size: int,
        receive_bytes: int = RECEIVE_BYTES,
    ) -> None:
        self._stream = stream
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._receive_bytes = receive_bytes
        self._handshake = H11Handshake(ConnectionType.SERVER)
        self._frames = ServerFrames(max_message_size=max_message_size)
        self._open = False
        self._closed: WebSocketClosed | None = None
        self._stream_closed = False
        self._receiving = False
        self._outgoing: list[bytes] = []
        self._writing = False
        # A write cut short (cancelled or failed) leaves half a frame on the wire: no more frames.
        self._broken = False

    @property
    def closed(self) -> WebSocketClosed | None:
        """How the websocket closed, once it has."""
        return self._closed

    # ---- opening handshake (RFC 6455 §4.2) -----------------------------------------------------

    async def receive_request(self) -> UpgradeRequest:
        """Read the client's upgrade request; HandshakeFailed (after a 400) if it is not one."""
        handshake = self._handshake
        while True:
            data = await self._receive_some()
            if not data:
                raise HandshakeFailed("connection closed before the upgrade request")
            try:
                handshake.receive_data(data)
                events = list(handshake.events())
            except wsproto.utilities.RemoteProtocolError as error:
                hint = error.event_hint
                if isinstance(hint, RejectConnection):
                    await self._send_handshake_reply(hint)
                raise HandshakeFailed(f"bad upgrade request: {error}") from None
            for event in events:
                if isinstance(event, Request):
                    return UpgradeRequest(target=event.target, headers=tuple(event.extra_headers))

    async def accept(self) -> None:
        """Answer 101: the websocket is open."""
        await self._send_handshake_reply(AcceptConnection())
        self._open = True

    async def reject(self, status_code: int) -> None:
        """Answer with an HTTP status other than 101 and close the connection."""
        try:
            await self._send_handshake_reply(RejectConnection(status_code=status_code))
        finally:
            self._closed = WebSocketClosed(CLOSE_ABNORMAL, "upgrade rejected", by_peer=False)
            await self._close_stream()

    async def _send_handshake_reply(self, event: AcceptConnection | RejectConnection) -> None:
        try:
            data = self._handshake.send(event)
        except wsproto.utilities.LocalProtocolError:
            # the request was too broken for h11 to answer it
            return
        await self._write(data)

    # ---- messages ------------------------------------------------------------------------------

    async def receive_messages(self) -> list[str | bytes]:
        """Wait for the next messages: all those complete in the data received (at least one).

        Pings and the client's close frame are answered here: at once when the data brought no
        message, else at the start of the next call. After the client's close (answered) or a
        protocol error (our close frame sent) this raises :class:`WebSocketClosed`; messages that
        arrived before either come first.
        """
        if not self._open:
            raise LocalProtocolError("receive_messages() before accept()")
        frames = self._frames
        while True:
            # Answers (pongs, the echo of the client's close) go out before the next read, never
            # between parsing messages and returning them: cancelled there, they would be lost.
            if frames.wants_to_send:
                await self._flush_control()
            if self._closed is not None:
                # §7.1.1: after the closing handshake the server drops the TCP connection first
                await self._close_stream()
                raise self._closed
            data = await self._receive_some()
            if not data:
                # §7.1.5: the connection ended without a close frame (or aclose() ended it)
                self._closed = self._closed or WebSocketClosed(CLOSE_ABNORMAL, "", by_peer=True)
                continue
            messages = frames.receive_data(data)
            if frames.failure is not None:
                # §7.1.7: our close frame with the code is queued; then the connection is dropped
                error = frames.failure
                self._closed = self._closed or WebSocketClosed(
                    error.hint, str(error), by_peer=False
                )
            elif frames.close_received is not None:
                received = frames.close_received
                self._closed = self._closed or WebSocketClosed(
                    received.code, received.reason, by_peer=True
                )
            if messages:
                return messages

    async def _flush_control(self) -> None:
        try:
            await self._write(self._frames.data_to_send())
        except WebSocketClosed:
            # the reader learns it from its next receive
            pass

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Write text messages as one socket write; WebSocketClosed once it is closed.

        If another task is writing, the messages are left for it to write after its own bytes
        and this returns at once.
        """
        if not messages:
            return
        if self._closed is not None:
            raise self._closed
        frames = self._frames
        if frames.close_sent:
            raise WebSocketClosed(CLOSE_ABNORMAL, "closing", by_peer=False)
        frames.send_messages(messages)
        await self._write(frames.data_to_send())

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        if self._writing:
            # the task writing now takes these bytes too, after its own
            self._outgoing.append(data)
            return
        if self._broken or self._stream_closed:
            raise self._closed or WebSocketClosed(CLOSE_ABNORMAL, "", by_peer=False)
        self._outgoing.append(data)
        self._writing = True
        try:
            while self._outgoing:
                chunks = self._outgoing
                self._outgoing = []
                try:
                    await self._stream.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                except BaseException:
                    # cut short (cancelled, or the stream broke): maybe half a frame went out
                    self._broken = True
                    raise
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self._closed is None:
                self._closed = WebSocketClosed(CLOSE_ABNORMAL, "", by_peer=True)
            raise self._closed from None
        finally:
            self._writing = False
            if self._broken:
                self._outgoing = []

    async def _receive_some(self) -> bytes:
        """Up to `receive_bytes` from the stream; b"" at its end, when it broke or was closed."""
        if self._stream_closed:
            return b""
        self._receiving = True
        try:
            if self._socket is not None:
                return await self._receive_from_socket(self._socket)
            data = await self._stream.receive_some(self._receive_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        finally:
            self._receiving = False
        # other streams return bytes too; the bytearray in the signature never comes
        return cast("bytes", data)

    async def _receive_from_socket(self, sock: trio.socket.SocketType) -> bytes:
        # trio's recv first tries to read and, the next frame being 20 ms away, fails with EAGAIN
        # nearly every time (a syscall and an exception) before it waits; and after reading it
        # yields once more. Waiting first and then reading the descriptor takes one syscall and
        # one task switch per wake-up. The socket is non-blocking (trio made it so).
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return os.read(sock.fileno(), self._receive_bytes)
            except BlockingIOError:
                # woken without data after all
                continue
            except OSError:
                # reset by the peer: the end of the stream
                return b""

    # ---- closing (RFC 6455 §7.1.2) -------------------------------------------------------------

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send our close frame, wait for the client's, then close the stream.

        Idempotent. Bound it with a timeout: the stream is closed however this ends. Messages
        still arriving are dropped.
        """
        if self._stream_closed:
            return
        frames = self._frames
        try:
            if self._open and not self._broken:
                # nothing new if a close frame went out already (or its echo is queued)
                frames.close(code, reason)
                self._closed = self._closed or WebSocketClosed(code, reason, by_peer=False)
                await self._write(frames.data_to_send())
                # Another task reading sees the client's close itself; the stream closes below.
                while frames.receiving and not self._receiving:
                    data = await self._receive_some()
                    if not data:
                        break
                    frames.receive_data(data)
        except WebSocketClosed:
            pass
        finally:
            if self._closed is None:
                self._closed = WebSocketClosed(code, reason, by_peer=False)
            await self._close_stream()

    async def _close_stream(self) -> None:
        if not self._stream_closed:
            self._stream_closed = True
            await trio.aclose_forcefully(self._stream)


__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "RECEIVE_BYTES",
    "CloseFrame",
    "HandshakeFailed",
    "Opcode",
    "ServerFrames",
    "ServerWebSocket",
    "UpgradeRequest",
    "WebSocketClosed",
    "close_name",
    "encode_frame",
]
