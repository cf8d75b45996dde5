"""A client websocket whose TCP (or TLS) stream is always closed, whoever ends the connection."""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Awaitable, Callable

import trio
import trio_websocket

# How long a clean websocket close may take before the socket is simply dropped.
DISCONNECT_TIMEOUT_S = 1.0


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
    parts = urllib.parse.urlsplit(url)
    hostname = parts.hostname
    if parts.scheme not in ("ws", "wss") or not hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {parts.scheme}://{hostname or ''}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    host = f"[{hostname}]" if ":" in hostname else hostname
    host_header = host if port in (80, 443) else f"{host}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = trio.current_time() + connect_timeout

    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    with trio.fail_at(deadline):
        if tls:
            stream = await trio.open_ssl_over_tcp_stream(
                hostname, port, ssl_context=ssl.create_default_context(), https_compatible=True
            )
        else:
            stream = await trio.open_tcp_stream(hostname, port)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_at(deadline):
                websocket = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    host_header,
                    resource,
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
