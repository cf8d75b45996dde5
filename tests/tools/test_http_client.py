"""post_json against a real HTTP/1.1 server on loopback (tests/support/http_server.py)."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator

import pytest
import trio

from bridge.tools.http_client import USER_AGENT, ToolFailure, open_http_client, post_json
from tests.support.http_server import HttpServer, open_http_server

GUARD_S = 10.0
PAYLOAD = {"tool": "lookup_order", "arguments": {"order_number": "A-42", "note": "café"}}


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    async with open_http_server() as server:
        yield server


async def post(server: HttpServer, path: str, **options: object) -> str:
    options.setdefault("headers", {})
    options.setdefault("timeout_s", 5.0)
    with trio.fail_after(GUARD_S):
        return await post_json(server.url(path), PAYLOAD, **options)  # type: ignore[arg-type]


async def failure(server: HttpServer, path: str, **options: object) -> ToolFailure:
    with pytest.raises(ToolFailure) as caught:
        await post(server, path, **options)
    return caught.value


async def free_port() -> int:
    """A loopback port nobody listens on (it was just bound and released)."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


# ---- what arrives, what comes back -----------------------------------------------------------


async def test_the_json_body_and_the_headers_arrive_and_the_reply_comes_back(
    server: HttpServer,
) -> None:
    server.reply("/lookup", body=b'{"status": "shipped"}')
    headers = {"Authorization": "Bearer s3cret-token", "X-Source": "bridge-test"}
    reply = await post(server, "/lookup", headers=headers)
    assert reply == '{"status": "shipped"}'
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/lookup")
    assert request.json == PAYLOAD
    assert json.loads(request.body.decode("utf-8")) == PAYLOAD
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-length"] == str(len(request.body))
    assert request.headers["user-agent"] == USER_AGENT
    assert USER_AGENT == "bridge/0.1.0"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["authorization"] == "Bearer s3cret-token"
    assert request.headers["x-source"] == "bridge-test"


async def test_configured_headers_take_the_place_of_the_defaults(server: HttpServer) -> None:
    server.reply("/x", body=b"ok")
    headers = {"user-agent": "crm-client/2", "Content-Type": "application/json; charset=utf-8"}
    await post(server, "/x", headers=headers)
    (request,) = server.requests
    assert request.headers["user-agent"] == "crm-client/2"
    assert request.headers["content-type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize("status", [200, 201, 202, 299])
async def test_any_2xx_reply_is_the_answer(server: HttpServer, status: int) -> None:
    server.reply("/x", status=status, body=b"done")
    assert await post(server, "/x") == "done"


async def test_an_empty_reply_is_an_empty_answer(server: HttpServer) -> None:
    server.reply("/x", status=204)
    assert await post(server, "/x") == ""


async def test_the_reply_is_read_as_utf8_with_bad_bytes_replaced(server: HttpServer) -> None:
    server.reply("/x", body="naïve ".encode() + b"\xff\xfe end", content_type="text/plain")
    assert await post(server, "/x") == "naïve \ufffd\ufffd end"


async def test_a_chunked_reply_is_read_whole(server: HttpServer) -> None:
    server.reply("/x", body=b'{"a": 1}' * 100, chunked=True)
    assert await post(server, "/x") == '{"a": 1}' * 100


# ---- error statuses and redirects ------------------------------------------------------------


async def test_a_500_is_an_http_status_failure_with_the_start_of_the_body(
    server: HttpServer,
) -> None:
    server.reply("/x", status=500, body=b"database\n  is down " + b"x" * 500)
    problem = await failure(server, "/x")
    assert (problem.code, problem.status) == ("http_status", 500)
    assert problem.message == "HTTP 500: " + ("database is down " + "x" * 500)[:200]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_long_error_page_is_cut_short_and_the_client_goes_on(
    server: HttpServer, chunked: bool
) -> None:
    page = b"<html><body>" + b"Internal error. " * 4000 + b"</body></html>"
    server.reply("/x", status=500, body=page, content_type="text/html", chunked=chunked)
    server.reply("/y", body=b"fine")
    async with open_http_client() as client:
        problem = await failure(server, "/x", client=client)
        assert await post(server, "/y", client=client) == "fine"
    assert problem.message == "HTTP 500: " + page.decode()[:200]


async def test_an_unscripted_path_is_a_404(server: HttpServer) -> None:
    problem = await failure(server, "/nowhere")
    assert (problem.code, problem.status) == ("http_status", 404)
    assert problem.message == 'HTTP 404: {"error": "not found"}'


async def test_an_error_body_without_text_gives_the_status_alone(server: HttpServer) -> None:
    server.reply("/x", status=503)
    problem = await failure(server, "/x")
    assert (problem.code, problem.status, problem.message) == ("http_status", 503, "HTTP 503")


async def test_header_values_an_error_body_echoes_are_blanked_out(server: HttpServer) -> None:
    server.reply("/x", status=401, body=b"bad token s3cret-token in Bearer s3cret-token")
    headers = {"Authorization": "Bearer s3cret-token"}
    problem = await failure(server, "/x", headers=headers)
    assert problem.message == "HTTP 401: bad token [redacted] in [redacted]"
    assert "s3cret" not in str(problem)


async def test_a_redirect_is_reported_not_followed(server: HttpServer) -> None:
    server.reply("/old", status=307, headers={"Location": server.url("/new")})
    server.reply("/new", body=b"moved here")
    problem = await failure(server, "/old")
    assert (problem.code, problem.status) == ("http_status", 307)
    assert [request.path for request in server.requests] == ["/old"]


# ---- timeouts --------------------------------------------------------------------------------


async def test_a_reply_slower_than_the_timeout_is_a_timeout(server: HttpServer) -> None:
    server.reply("/slow", body=b"late", delay_s=5.0)
    started = trio.current_time()
    problem = await failure(server, "/slow", timeout_s=0.2)
    assert (problem.code, problem.message, problem.status) == (
        "timeout",
        "no reply within 0.2 s",
        0,
    )
    assert trio.current_time() - started < 2.0
    assert len(server.requests) == 1  # the request itself went out


async def test_a_body_dripping_in_under_each_read_timeout_still_times_out(
    server: HttpServer,
) -> None:
    # Each byte comes well within the timeout, the whole body well after it.
    server.reply("/drip", body=b"x" * 40, drip_s=0.05)
    started = trio.current_time()
    problem = await failure(server, "/drip", timeout_s=0.3)
    assert problem.code == "timeout"
    assert trio.current_time() - started < 1.5


async def test_an_endpoint_that_accepts_but_never_reads_is_a_timeout() -> None:
    async def accept_and_ignore(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, accept_and_ignore, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        with trio.fail_after(GUARD_S), pytest.raises(ToolFailure) as caught:
            await post_json(f"http://127.0.0.1:{port}/", PAYLOAD, headers={}, timeout_s=0.2)
        assert caught.value.code == "timeout"
        nursery.cancel_scope.cancel()


async def test_cancelling_the_caller_cancels_the_request(server: HttpServer) -> None:
    server.reply("/slow", body=b"late", delay_s=5.0)
    with trio.move_on_after(0.2) as scope:
        await post(server, "/slow", timeout_s=5.0)
    assert scope.cancelled_caught


# ---- connection failures and what cannot be sent ---------------------------------------------


async def test_a_refused_connection_is_a_connection_failure() -> None:
    port = await free_port()
    with trio.fail_after(GUARD_S), pytest.raises(ToolFailure) as caught:
        await post_json(
            f"http://127.0.0.1:{port}/hook?token=url-secret", PAYLOAD, headers={}, timeout_s=2.0
        )
    assert caught.value.code == "connection"
    assert caught.value.message.startswith("cannot connect to 127.0.0.1: ")
    assert "url-secret" not in caught.value.message


async def test_a_failed_tls_handshake_is_a_connection_failure(server: HttpServer) -> None:
    # The test server speaks plain HTTP, so the TLS ClientHello gets no ServerHello.
    url = server.url("/x").replace("http://", "https://")
    with trio.fail_after(GUARD_S), pytest.raises(ToolFailure) as caught:
        await post_json(url, PAYLOAD, headers={}, timeout_s=2.0)
    assert caught.value.code == "connection"
    assert caught.value.message.startswith("cannot connect to 127.0.0.1: ")
    assert server.requests == []


async def test_a_reply_that_is_not_http_is_a_bad_reply() -> None:
    async def answer_garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, answer_garbage, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        with trio.fail_after(GUARD_S), pytest.raises(ToolFailure) as caught:
            await post_json(f"http://127.0.0.1:{port}/", PAYLOAD, headers={}, timeout_s=2.0)
        assert caught.value.code == "bad_reply"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "http://", "not a url"])
async def test_an_unusable_url_is_a_bad_request(url: str) -> None:
    with trio.fail_after(GUARD_S), pytest.raises(ToolFailure) as caught:
        await post_json(url, PAYLOAD, headers={}, timeout_s=1.0)
    assert caught.value.code == "bad_request"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer tok\r\nX-Injected: 1"},
        {"Authorization": "Bearer tok\n"},
        {"Authorization": " Bearer tok"},
        {"Authorization": "Bearer tök"},
        {"Bad Name": "value"},
    ],
)
async def test_a_header_that_cannot_be_sent_is_a_bad_request_without_its_value(
    server: HttpServer, headers: dict[str, str]
) -> None:
    problem = await failure(server, "/x", headers=headers)
    assert problem.code == "bad_request"
    assert "tok" not in problem.message
    assert server.requests == []


async def test_a_payload_that_is_not_json_is_a_bad_request(server: HttpServer) -> None:
    with pytest.raises(ToolFailure) as caught:
        await post_json(server.url("/x"), {"value": float("nan")}, headers={}, timeout_s=1.0)
    assert caught.value.code == "bad_request"
    assert server.requests == []


# ---- reply size ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_reply_larger_than_the_limit_is_a_bad_reply(
    server: HttpServer, chunked: bool
) -> None:
    server.reply("/big", body=b"x" * 1001, chunked=chunked)
    problem = await failure(server, "/big", max_reply_bytes=1000)
    assert (problem.code, problem.message) == ("bad_reply", "the reply is larger than 1000 bytes")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_reply_of_exactly_the_limit_is_the_answer(
    server: HttpServer, chunked: bool
) -> None:
    server.reply("/big", body=b"x" * 1000, chunked=chunked)
    assert await post(server, "/big", max_reply_bytes=1000) == "x" * 1000


async def test_the_default_limit_is_64_kib(server: HttpServer) -> None:
    server.reply("/big", body=b"x" * (64 * 1024 + 1))
    assert (await failure(server, "/big")).code == "bad_reply"


# ---- a shared client -------------------------------------------------------------------------


async def test_a_shared_client_keeps_the_connection_and_stores_no_cookies(
    server: HttpServer,
) -> None:
    server.reply("/x", body=b"ok", headers={"Set-Cookie": "session=caller-one; Path=/"})
    async with open_http_client() as client:
        for _ in range(3):
            assert await post(server, "/x", client=client) == "ok"
    assert [request.connection for request in server.requests] == [1, 1, 1]
    assert all("cookie" not in request.headers for request in server.requests)


async def test_a_shared_client_survives_a_timed_out_request(server: HttpServer) -> None:
    server.reply("/slow", body=b"late", delay_s=5.0)
    server.reply("/fast", body=b"ok")
    async with open_http_client() as client:
        problem = await failure(server, "/slow", client=client, timeout_s=0.2)
        assert problem.code == "timeout"
        assert await post(server, "/fast", client=client) == "ok"


async def test_several_requests_run_at_once_on_a_shared_client(server: HttpServer) -> None:
    server.reply("/x", body=b"ok", delay_s=0.2)
    answers: list[str] = []

    async def one() -> None:
        answers.append(await post(server, "/x", client=client))

    started = trio.current_time()
    async with open_http_client() as client, trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert answers == ["ok"] * 5
    assert trio.current_time() - started < 0.9  # together, not one after another
