"""A scripted HTTP/1.1 server on loopback for tests of HTTP tools and hooks (trio + h11).

``async with open_http_server() as server:`` listens on 127.0.0.1 on a free port. Script replies
per path with ``server.reply(path, status=..., body=..., delay_s=...)``; a path without a script
answers 404. Every complete request is kept, in arrival order, in ``server.requests`` (before any
delay, so a client that gave up waiting still left its request). Connections are kept alive for
as many requests as the client sends; leaving the block closes the listener and every connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

MAX_REQUEST_BYTES = 1024 * 1024


@attrs.frozen
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str  # the request target as sent, query string included
    headers: Mapping[str, str]  # names lower-cased; repeated fields joined with ", "
    body: bytes
    json: Any  # the body parsed as JSON, None when it is not JSON
    connection: int  # which TCP connection carried it, counted from 1 in accept order


@attrs.frozen
class ScriptedReply:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0  # before the status line
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    drip_s: float = 0.0  # between the body's bytes, sent one at a time when > 0
    chunked: bool = False  # no Content-Length: chunked transfer coding (RFC 9112 §7.1)


NOT_FOUND = ScriptedReply(status=404, body=b'{"error": "not found"}')


class HttpServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[RecordedRequest] = []
        self._replies: dict[str, ScriptedReply] = {}
        self._connections = 0

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reply(
        self,
        path: str,
        *,
        status: int = 200,
        body: bytes | str = b"",
        delay_s: float = 0.0,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        drip_s: float = 0.0,
        chunked: bool = False,
    ) -> None:
        """Answer every later request for `path` (query string ignored) like this."""
        self._replies[path] = ScriptedReply(
            status=status,
            body=body.encode() if isinstance(body, str) else body,
            delay_s=delay_s,
            content_type=content_type,
            headers=tuple((headers or {}).items()),
            drip_s=drip_s,
            chunked=chunked,
        )

    def scripted(self, target: str) -> ScriptedReply:
        path = target.split("?", 1)[0]
        return self._replies.get(target) or self._replies.get(path) or NOT_FOUND

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self._connections += 1
        number = self._connections
        try:
            async with stream:
                while await self._one_exchange(stream, connection, number):
                    connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; that is its right

    async def _one_exchange(
        self, stream: trio.SocketStream, connection: h11.Connection, number: int
    ) -> bool:
        """Serve one request; whether the connection stays open for another."""
        try:
            request = await self._receive_request(stream, connection, number)
        except h11.RemoteProtocolError as error:
            if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                reply = ScriptedReply(status=error.error_status_hint, content_type="text/plain")
                await self._send_reply(stream, connection, reply)
            return False
        if request is None:
            return False
        self.requests.append(request)
        reply = self.scripted(request.path)
        await self._send_reply(stream, connection, reply)
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE

    async def _receive_request(
        self, stream: trio.SocketStream, connection: h11.Connection, number: int
    ) -> RecordedRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
                continue
            match event:
                case h11.Request():
                    head = event
                case h11.Data():
                    body += event.data
                    if len(body) > MAX_REQUEST_BYTES:
                        raise h11.RemoteProtocolError("request too large", 413)
                case h11.EndOfMessage():
                    assert head is not None
                    return _recorded(head, bytes(body), number)
                case h11.ConnectionClosed():
                    return None
                case _:
                    pass

    async def _send_reply(
        self, stream: trio.SocketStream, connection: h11.Connection, reply: ScriptedReply
    ) -> None:
        if reply.delay_s > 0:
            await trio.sleep(reply.delay_s)
        length = [] if reply.chunked else [("Content-Length", str(len(reply.body)))]
        headers = [("Content-Type", reply.content_type), *length, *reply.headers]
        await stream.send_all(
            connection.send(h11.Response(status_code=reply.status, headers=headers))
        )
        if reply.drip_s > 0:
            for index in range(len(reply.body)):
                await stream.send_all(connection.send(h11.Data(data=reply.body[index : index + 1])))
                await trio.sleep(reply.drip_s)
        elif reply.body:
            await stream.send_all(connection.send(h11.Data(data=reply.body)))
        await stream.send_all(connection.send(h11.EndOfMessage()))


def _recorded(head: h11.Request, body: bytes, connection: int) -> RecordedRequest:
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    return RecordedRequest(
        method=head.method.decode("ascii"),
        path=head.target.decode("latin-1"),
        headers=headers,
        body=body,
        json=parsed,
        connection=connection,
    )


@asynccontextmanager
async def open_http_server() -> AsyncIterator[HttpServer]:
    """A scripted server on 127.0.0.1 and a free port, serving until the block ends."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server = HttpServer(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.serve_connection, listeners)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
