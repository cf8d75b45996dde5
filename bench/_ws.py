"""A minimal websocket (RFC 6455) for the benchmark's own peers, on non-blocking stdlib sockets.

Why not trio-websocket, as the daemon uses: measured on this machine a trio-websocket message
costs ~30 us of CPU on each side, so 400 simulated calls (20,000 caller frames a second, and as
many appends arriving at the model) would need more than the one spare core the harness has, and
the figures would measure the harness. Here a message is a header plus one non-blocking
``send()``, and every ``recv()`` of up to 256 kB is parsed into all the frames it holds.

Only what the two peers need: text, close, ping/pong, fragmented messages; no extensions. The
client masks with a zero key (RFC 6455 §5.3 asks for an unpredictable key to protect proxies'
caches; there is no proxy on loopback, and the daemon still unmasks every byte, so its cost is
unchanged).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

import trio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

RECV_BYTES = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024
_ZERO_MASK = b"\x00\x00\x00\x00"


class WebSocketError(Exception):
    """The peer broke the protocol or the connection."""


def accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def encode_frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One final frame; client frames are masked (with the zero key: payload unchanged)."""
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = bytes((0x80 | opcode, mask_bit | length))
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, length)
    if masked:
        return header + _ZERO_MASK + payload
    return header + payload


def client_text(message: str) -> bytes:
    return encode_frame(OP_TEXT, message.encode(), masked=True)


def server_text(message: str) -> bytes:
    return encode_frame(OP_TEXT, message.encode(), masked=False)


def _unmask(payload: bytes, key: bytes) -> bytes:
    if key == _ZERO_MASK:
        return payload
    length = len(payload)
    repeated = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        length, "little"
    )


class FrameParser:
    """Bytes in, whole messages out: (opcode, payload); continuation frames are joined."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        messages: list[tuple[int, bytes]] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            position = offset + 2
            if length == 126:
                if end - position < 2:
                    break
                length = int.from_bytes(buffer[position : position + 2], "big")
                position += 2
            elif length == 127:
                if end - position < 8:
                    break
                length = int.from_bytes(buffer[position : position + 8], "big")
                position += 8
            key = b""
            if second & 0x80:
                if end - position < 4:
                    break
                key = bytes(buffer[position : position + 4])
                position += 4
            if end - position < length:
                break
            payload = bytes(buffer[position : position + length])
            if key:
                payload = _unmask(payload, key)
            offset = position + length
            opcode = first & 0x0F
            final = bool(first & 0x80)
            if opcode >= OP_CLOSE:
                messages.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                self._fragments.append(payload)
                if final:
                    messages.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments = []
            elif final:
                messages.append((opcode, payload))
            else:
                self._fragment_opcode = opcode
                self._fragments = [payload]
        del buffer[:offset]
        return messages


class Connection:
    """A non-blocking socket with a send buffer: `send_nowait` never waits, `flush` drains."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.pending = bytearray()
        self.closed = False
        self.backlogged_sends = 0
        self._backlog = trio.Event()

    def send_nowait(self, data: bytes) -> None:
        """Send now if the socket takes it; keep the rest for :meth:`flush`."""
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.closed = True
            return
        if sent < len(data):
            self.backlogged_sends += 1
            self.pending += data[sent:]
            self._backlog.set()

    async def flush(self) -> None:
        """Wait until everything handed to :meth:`send_nowait` went to the kernel."""
        while self.pending and not self.closed:
            await trio.lowlevel.wait_writable(self.sock)
            try:
                sent = self.sock.send(self.pending)
            except BlockingIOError:
                continue
            except OSError:
                self.closed = True
                break
            del self.pending[:sent]

    async def run_writer(self) -> None:
        """Drain the send buffer whenever the kernel did not take everything (run as a task)."""
        while not self.closed:
            await self._backlog.wait()
            self._backlog = trio.Event()
            await self.flush()

    @property
    def backlogged(self) -> bool:
        return bool(self.pending)

    async def recv(self) -> bytes:
        """Up to RECV_BYTES; b"" at end of stream."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
        self.closed = True


async def read_http_head(connection: Connection) -> tuple[bytes, bytes]:
    """The HTTP head up to the blank line, and whatever bytes followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await connection.recv()
        if not chunk:
            raise WebSocketError("connection closed during the handshake")
        data += chunk
        if len(data) > MAX_HEADER_BYTES:
            raise WebSocketError("handshake too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _headers(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def connect_client(host: str, port: int, path: str) -> tuple[Connection, bytes]:
    """Open a websocket to ws://host:port/path; returns the connection and bytes already read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection = Connection(sock)
    try:
        sock.connect((host, port))
    except BlockingIOError:
        pass
    await trio.lowlevel.wait_writable(sock)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        connection.close()
        raise WebSocketError(f"connect to {host}:{port} failed: {os.strerror(error)}")
    key = base64.b64encode(os.urandom(16))
    request = (
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        ).encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )
    connection.send_nowait(request)
    await connection.flush()
    head, rest = await read_http_head(connection)
    status, headers = _headers(head)
    if b" 101 " not in status + b" ":
        connection.close()
        raise WebSocketError(f"handshake refused: {status.decode(errors='replace')}")
    if headers.get(b"sec-websocket-accept") != accept_token(key):
        connection.close()
        raise WebSocketError("handshake: wrong Sec-WebSocket-Accept")
    return connection, rest


async def accept_server(connection: Connection) -> tuple[str, dict[bytes, bytes], bytes]:
    """Answer a client's upgrade with 101; returns the request path, headers and extra bytes."""
    head, rest = await read_http_head(connection)
    request_line, headers = _headers(head)
    parts = request_line.split()
    if len(parts) != 3 or parts[0] != b"GET" or b"sec-websocket-key" not in headers:
        connection.send_nowait(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await connection.flush()
        raise WebSocketError("not a websocket upgrade")
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_token(headers[b"sec-websocket-key"]) + b"\r\n\r\n"
    )
    connection.send_nowait(response)
    await connection.flush()
    return parts[1].decode("latin-1"), headers, rest


def close_payload(code: int) -> bytes:
    return struct.pack("!H", code)


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
