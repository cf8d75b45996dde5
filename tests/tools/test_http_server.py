"""The scripted test server (tests/support/http_server.py), spoken to in raw HTTP/1.1 bytes."""

from __future__ import annotations

import trio
import trio.testing

from tests.support.http_server import HttpServer, open_http_server

GUARD_S = 10.0


async def connect(server: HttpServer) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", server.port)


async def receive_until_closed(stream: trio.SocketStream) -> bytes:
    received = bytearray()
    while chunk := await stream.receive_some(65536):
        received += chunk
    return bytes(received)


def post_bytes(path: str, body: bytes, *, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n".encode()
        + connection
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def test_several_requests_on_one_connection_are_answered_in_order() -> None:
    with trio.fail_after(GUARD_S):
        async with open_http_server() as server:
            server.reply("/a", body=b'{"n": 1}')
            server.reply("/b", status=201, body=b"second", content_type="text/plain")
            stream = await connect(server)
            # Pipelined: both requests in one write, the last one closing the connection.
            await stream.send_all(
                post_bytes("/a", b'{"x": 1}') + post_bytes("/b", b"!", close=True)
            )
            replies = await receive_until_closed(stream)
            await stream.aclose()
    first, second = replies.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b'\r\n\r\n{"n": 1}')
    assert b"content-type: application/json" in first.lower()
    assert second.startswith(b"201 ") and second.endswith(b"\r\n\r\nsecond")
    assert [(r.method, r.path, r.body, r.json) for r in server.requests] == [
        ("POST", "/a", b'{"x": 1}', {"x": 1}),
        ("POST", "/b", b"!", None),
    ]
    assert [r.connection for r in server.requests] == [1, 1]
    assert server.requests[0].headers["content-type"] == "application/json"
    assert server.requests[0].headers["host"] == "test"


async def test_an_unscripted_path_is_404_and_a_query_string_is_ignored_for_matching() -> None:
    with trio.fail_after(GUARD_S):
        async with open_http_server() as server:
            server.reply("/x", body=b"x")
            stream = await connect(server)
            await stream.send_all(post_bytes("/x?token=1", b"") + post_bytes("/y", b"", close=True))
            replies = await receive_until_closed(stream)
            await stream.aclose()
    first, second = replies.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ")
    assert second.startswith(b"404 ")
    assert [r.path for r in server.requests] == ["/x?token=1", "/y"]


async def test_a_request_that_is_not_http_gets_a_400_and_the_connection_closes() -> None:
    with trio.fail_after(GUARD_S):
        async with open_http_server() as server:
            stream = await connect(server)
            await stream.send_all(b"HELLO THERE\r\n\r\n")
            reply = await receive_until_closed(stream)
            await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert server.requests == []


async def test_leaving_the_block_ends_idle_and_busy_connections_at_once() -> None:
    with trio.fail_after(GUARD_S):
        started = trio.current_time()
        async with open_http_server() as server:
            server.reply("/slow", body=b"late", delay_s=60)
            idle = await connect(server)
            busy = await connect(server)
            await busy.send_all(post_bytes("/slow", b"{}"))
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert len(server.requests) == 1  # the reply is on its way, 60 s from now
        assert await receive_until_closed(idle) == b""
        assert await receive_until_closed(busy) == b""
        assert trio.current_time() - started < 2
        for stream in (idle, busy):
            await stream.aclose()


async def test_each_connection_is_numbered() -> None:
    with trio.fail_after(GUARD_S):
        async with open_http_server() as server:
            for _ in range(2):
                stream = await connect(server)
                await stream.send_all(post_bytes("/", b"", close=True))
                await receive_until_closed(stream)
                await stream.aclose()
    assert [r.connection for r in server.requests] == [1, 2]
