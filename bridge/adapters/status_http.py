"""The local status port: Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP/1.1.

HTTP/1.1 message syntax is h11's (RFC 9112); this module answers one request per connection and
closes it (``Connection: close``, RFC 9112 §9.6), which every scraper and probe handles, and which
keeps a slow or idle client from holding the port: the whole exchange has a deadline, and the
request head is capped (h11 answers an oversized one with 431, garbage with 400).

- ``GET /metrics``: the Prometheus text exposition format.
- ``GET /healthz``: 200 ``ok`` whenever the event loop answers at all (liveness).
- ``GET /readyz``: 200 ``ready`` while the daemon takes calls, else 503 ``draining`` (it is
  stopping) or ``not ready`` (listeners not up yet).

HEAD works on each; other methods get 405, other paths 404. The port is not authenticated: it
listens on 127.0.0.1 by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import h11
import trio

from bridge.metrics import Metrics

# The request line and headers, at most (a scraper sends a few hundred bytes).
MAX_HEAD_BYTES = 8 * 1024
# The whole exchange, from accepting to the last byte of the reply.
EXCHANGE_TIMEOUT_S = 10.0
# After replying: how long to read and discard what the client still sends, so that closing
# with unread data does not reset the connection under a reply not yet read (RFC 9112 §9.6).
LINGER_S = 1.0
LINGER_MAX_BYTES = 64 * 1024
RECEIVE_SIZE = 4096
SERVER_NAME = b"bridge"
TEXT = "text/plain; charset=utf-8"


async def serve_status(
    host: str,
    port: int,
    *,
    metrics: Metrics,
    ready: Callable[[], bool],
    log: logging.Logger,
    exchange_timeout_s: float = EXCHANGE_TIMEOUT_S,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the status port until cancelled; reports ``started(bound_port)``.

    `ready()` says whether the daemon takes calls now (listeners up and not draining);
    ``metrics.draining`` tells the two reasons for not being ready apart. A connection gets
    `exchange_timeout_s` for its request and the reply.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port: int = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        await _serve_connection(
            stream, metrics=metrics, ready=ready, log=log, timeout_s=exchange_timeout_s
        )

    log.info("status port listening", extra={"host": host, "port": bound_port})
    task_status.started(bound_port)
    await trio.serve_listeners(handle, listeners)


async def _serve_connection(
    stream: trio.SocketStream,
    *,
    metrics: Metrics,
    ready: Callable[[], bool],
    log: logging.Logger,
    timeout_s: float,
) -> None:
    """Answer one request. Nothing a client does (or fails to do) escapes from here."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        with trio.move_on_after(timeout_s):
            try:
                request = await _receive_request(stream, connection)
            except h11.RemoteProtocolError as error:
                log.debug("bad request on the status port", extra={"error": str(error)})
                await _reply(stream, connection, error.error_status_hint, str(error) + "\n")
            else:
                if request is not None:
                    try:
                        status, body, content_type, extra = _answer(request, metrics, ready)
                    except Exception:
                        log.exception("the status port failed to answer a request")
                        status, body, content_type, extra = 500, "internal error\n", TEXT, []
                    await _reply(
                        stream,
                        connection,
                        status,
                        body,
                        content_type,
                        extra,
                        send_body=request.method != b"HEAD",
                    )
            await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception:
        log.exception("the status port failed to answer a request")
    finally:
        await trio.aclose_forcefully(stream)


async def _receive_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> h11.Request | None:
    """The request's head, or None if the client closed without sending one."""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(RECEIVE_SIZE))
            continue
        if isinstance(event, h11.Request):
            return event
        return None


def _answer(
    request: h11.Request, metrics: Metrics, ready: Callable[[], bool]
) -> tuple[int, bytes | str, str, list[tuple[bytes, bytes]]]:
    """Status, body, content type and extra headers for one request."""
    path = request.target.split(b"?", 1)[0]
    if path not in (b"/metrics", b"/healthz", b"/readyz"):
        return 404, "not found\n", TEXT, []
    if request.method not in (b"GET", b"HEAD"):
        return 405, "method not allowed\n", TEXT, [(b"allow", b"GET, HEAD")]
    if path == b"/metrics":
        body, content_type = metrics.render()
        return 200, body, content_type, []
    if path == b"/healthz":
        return 200, "ok\n", TEXT, []
    if ready():
        return 200, "ready\n", TEXT, []
    return 503, "draining\n" if metrics.draining else "not ready\n", TEXT, []


async def _reply(
    stream: trio.SocketStream,
    connection: h11.Connection,
    status: int,
    body: bytes | str,
    content_type: str = TEXT,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    *,
    send_body: bool = True,
) -> None:
    if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    data = body.encode() if isinstance(body, str) else body
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
        (b"connection", b"close"),
        (b"server", SERVER_NAME),
        *(extra_headers or []),
    ]
    out = connection.send(h11.Response(status_code=status, headers=headers)) or b""
    # a reply to HEAD says how long the body would be, without it (RFC 9110 §9.3.2)
    if data and send_body:
        out += connection.send(h11.Data(data=data)) or b""
    out += connection.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then read the client's leftovers until it closes too (bounded)."""
    await stream.send_eof()
    discarded = 0
    with trio.move_on_after(LINGER_S):
        while discarded < LINGER_MAX_BYTES:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            discarded += len(data)


__all__ = ["serve_status"]
