"""The status port over real loopback sockets: /metrics, /healthz, /readyz and bad requests."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx2
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bridge.adapters.status_http import serve_status
from bridge.call.observations import TurnLatency
from bridge.metrics import Metrics

log = logging.getLogger("test.status_http")


class Daemon:
    """What the status port asks: the metrics, and whether the daemon is ready."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.is_ready = True
        self.port = 0

    def ready(self) -> bool:
        return self.is_ready

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def status_server(timeout_s: float = 5.0) -> AsyncIterator[Daemon]:
    daemon = Daemon()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            daemon.port = await nursery.start(
                lambda task_status: serve_status(
                    "127.0.0.1",
                    0,
                    metrics=daemon.metrics,
                    ready=lambda: daemon.ready(),
                    log=log,
                    exchange_timeout_s=timeout_s,
                    task_status=task_status,
                )
            )
            yield daemon
            nursery.cancel_scope.cancel()


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with status_server() as daemon:
        yield daemon


async def request(method: str, url: str) -> httpx2.Response:
    async with httpx2.AsyncClient() as client:
        return await client.request(method, url)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` and close our side, read the reply until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        await stream.send_eof()
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    return reply


async def test_metrics_in_the_prometheus_text_format(daemon: Daemon) -> None:
    daemon.metrics.call_started("sip")
    daemon.metrics.observe(TurnLatency(0.9))
    response = await request("GET", daemon.url("/metrics"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert response.headers["connection"] == "close"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    (active,) = families["bridge_active_calls"].samples
    assert active.labels == {"ingress": "sip"}
    assert active.value == 1
    turn = {s.name: s.value for s in families["bridge_turn_latency_seconds"].samples}
    assert turn["bridge_turn_latency_seconds_count"] == 1


async def test_healthz_and_readyz_while_ready(daemon: Daemon) -> None:
    health = await request("GET", daemon.url("/healthz"))
    assert (health.status_code, health.text) == (200, "ok\n")
    ready = await request("GET", daemon.url("/readyz"))
    assert (ready.status_code, ready.text) == (200, "ready\n")


async def test_readyz_not_ready_and_draining(daemon: Daemon) -> None:
    daemon.is_ready = False
    response = await request("GET", daemon.url("/readyz"))
    assert (response.status_code, response.text) == (503, "not ready\n")
    daemon.metrics.set_draining()
    response = await request("GET", daemon.url("/readyz"))
    assert (response.status_code, response.text) == (503, "draining\n")
    # alive all the same
    assert (await request("GET", daemon.url("/healthz"))).status_code == 200


async def test_head_answers_without_a_body(daemon: Daemon) -> None:
    response = await request("HEAD", daemon.url("/healthz"))
    assert response.status_code == 200
    assert response.headers["content-length"] == "3"
    assert response.content == b""


async def test_query_strings_are_ignored(daemon: Daemon) -> None:
    response = await request("GET", daemon.url("/readyz?verbose=1"))
    assert response.status_code == 200


async def test_unknown_path_404_and_other_methods_405(daemon: Daemon) -> None:
    assert (await request("GET", daemon.url("/"))).status_code == 404
    assert (await request("GET", daemon.url("/metrics/x"))).status_code == 404
    response = await request("POST", daemon.url("/metrics"))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert (await request("DELETE", daemon.url("/readyz"))).status_code == 405


async def test_garbage_gets_400_and_the_server_goes_on(daemon: Daemon) -> None:
    reply = await raw_exchange(daemon.port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert (await request("GET", daemon.url("/healthz"))).status_code == 200


async def test_an_oversized_head_gets_431_and_the_server_goes_on(daemon: Daemon) -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n"
    reply = await raw_exchange(daemon.port, head)
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert (await request("GET", daemon.url("/healthz"))).status_code == 200


async def test_a_client_closing_early_or_sending_nothing_does_no_harm(daemon: Daemon) -> None:
    assert await raw_exchange(daemon.port, b"") == b""
    stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
    await stream.send_all(b"GET /metr")
    await stream.aclose()
    assert (await request("GET", daemon.url("/healthz"))).status_code == 200


async def test_a_silent_client_is_dropped_after_the_timeout() -> None:
    async with status_server(timeout_s=0.2) as daemon:
        stream = await trio.open_tcp_stream("127.0.0.1", daemon.port)
        async with stream:
            # meanwhile the port answers others
            assert (await request("GET", daemon.url("/healthz"))).status_code == 200
            with trio.fail_after(5):
                assert await stream.receive_some(100) == b""


async def test_a_failing_ready_check_fails_one_request_not_the_server(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    daemon.ready = broken  # type: ignore[method-assign]
    assert (await request("GET", daemon.url("/readyz"))).status_code == 500
    assert "failed to answer" in caplog.text
    assert (await request("GET", daemon.url("/healthz"))).status_code == 200
