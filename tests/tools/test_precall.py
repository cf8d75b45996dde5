"""run_precall_hook against the scripted loopback HTTP server: answers, and every way it fails.

Whatever the hook does, the call goes on: a failure is a ``PrecallResult`` with ``problem`` set
and the defaults (no variables, no route), never an exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import trio

from bridge.call.context import CallInfo
from bridge.call.events import Codec
from bridge.config import PrecallHookConfig
from bridge.tools.http_client import open_http_client
from bridge.tools.precall import PrecallResult, parse_precall_reply, run_precall_hook
from tests.support.http_server import HttpServer, open_http_server

GUARD_S = 10.0
SECRET = "Bearer crm-7a6b5c4d3e2f"
LOG = logging.getLogger("tests.precall")

INFO = CallInfo(
    call_id="c-1",
    ingress="sip",
    codec=Codec.PCMA,
    caller="+15550100001",
    called="+15550100002",
    variables={"x_account": "7"},
    external_ids={"sip_call_id": "abc@192.0.2.1"},
)


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    async with open_http_server() as server:
        yield server


def hook(server: HttpServer, **options: Any) -> PrecallHookConfig:
    options.setdefault("timeout_s", 2.0)
    return PrecallHookConfig(url=server.url("/precall"), **options)


async def ask(config: PrecallHookConfig, environ: Mapping[str, str] | None = None) -> PrecallResult:
    with trio.fail_after(GUARD_S):
        return await run_precall_hook(config, INFO, environ=environ or {}, log=LOG)


# ---- answers -----------------------------------------------------------------------------------


async def test_the_hook_gets_the_call_and_its_variables_and_route_come_back(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reply = {
        "variables": {
            "customer": "Ann Lee",
            "balance": 12.5,
            "vip": True,
            "orders": 3,
            "tags": ["a", "b"],
            "address": {"city": "Köln"},
            "nothing": None,
        },
        "route": "vip",
    }
    server.reply("/precall", body=json.dumps(reply))
    config = hook(server, headers={"X-Tenant": "acme"}, headers_env={"Authorization": "CRM_TOKEN"})
    result = await ask(config, environ={"CRM_TOKEN": SECRET})
    assert result == PrecallResult(
        variables={
            "customer": "Ann Lee",
            "balance": "12.5",
            "vip": "true",
            "orders": "3",
            "tags": '["a", "b"]',
            "address": '{"city": "K\\u00f6ln"}',
            "nothing": "null",
        },
        route="vip",
        problem="",
    )
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/precall")
    assert request.json == {
        "call": {
            "call_id": "c-1",
            "ingress": "sip",
            "caller": "+15550100001",
            "called": "+15550100002",
            "variables": {"x_account": "7"},
            "external_ids": {"sip_call_id": "abc@192.0.2.1"},
        }
    }
    assert request.headers["authorization"] == SECRET
    assert request.headers["x-tenant"] == "acme"
    assert all(SECRET not in f"{record.__dict__!r}" for record in caplog.records)


async def test_a_shared_client_can_carry_the_request(server: HttpServer) -> None:
    server.reply("/precall", body=b'{"variables": {"tier": "gold"}}')
    with trio.fail_after(GUARD_S):
        async with open_http_client() as client:
            result = await run_precall_hook(hook(server), INFO, environ={}, log=LOG, client=client)
    assert result == PrecallResult(variables={"tier": "gold"})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", PrecallResult()),
        (b"{}", PrecallResult()),
        (b'{"route": "sales"}', PrecallResult(route="sales")),
        (b'{"variables": {}, "other": 1}', PrecallResult()),
    ],
)
async def test_an_empty_or_partial_answer_keeps_the_defaults_without_a_problem(
    server: HttpServer, body: bytes, expected: PrecallResult
) -> None:
    server.reply("/precall", body=body)
    assert await ask(hook(server)) == expected


# ---- failures: the call goes on with the defaults ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"variables": ', "the reply is not JSON"),
        (b"<html>oops</html>", "the reply is not JSON"),
        (b"[1, 2]", "the reply is not a JSON object"),
        (b'"text"', "the reply is not a JSON object"),
        (b'{"variables": ["a"]}', '"variables" is not an object'),
        (b'{"route": 7}', '"route" is not a string'),
    ],
)
async def test_a_reply_that_is_not_the_expected_object_is_a_problem_not_an_exception(
    server: HttpServer, caplog: pytest.LogCaptureFixture, body: bytes, problem: str
) -> None:
    server.reply("/precall", body=body)
    result = await ask(hook(server))
    assert result.variables == {}
    assert result.route == ""
    assert result.problem.startswith(problem)
    assert any(
        record.levelno == logging.WARNING and getattr(record, "detail", "") == result.problem
        for record in caplog.records
    )


async def test_a_deeply_nested_reply_is_a_problem_not_an_exception(server: HttpServer) -> None:
    # Within the 64 KiB reply limit, but deeper than json's recursion limit: RecursionError.
    server.reply("/precall", body=b'{"variables": ' + b"[" * 50_000)
    result = await ask(hook(server))
    assert result.variables == {}
    assert result.problem != ""


async def test_an_error_status_is_a_problem(server: HttpServer) -> None:
    # No script for the path: the server answers 404.
    result = await ask(hook(server))
    assert result == PrecallResult(problem='http_status: HTTP 404: {"error": "not found"}')


async def test_a_hook_slower_than_its_timeout_is_a_problem(server: HttpServer) -> None:
    server.reply("/precall", body=b'{"variables": {"late": "yes"}}', delay_s=5.0)
    started = trio.current_time()
    result = await ask(hook(server, timeout_s=0.2))
    assert result == PrecallResult(problem="timeout: no reply within 0.2 s")
    assert trio.current_time() - started < 2.0


async def test_a_hook_nobody_listens_on_is_a_problem() -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    config = PrecallHookConfig(url=f"http://127.0.0.1:{port}/precall", timeout_s=2.0)
    result = await ask(config)
    assert result.variables == {}
    assert result.problem.startswith("connection: cannot connect to 127.0.0.1")


async def test_a_missing_secret_is_a_problem_and_no_request_is_made(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.reply("/precall", body=b'{"variables": {"tier": "gold"}}')
    config = hook(server, headers_env={"X-Set": "SET_TOKEN", "Authorization": "CRM_TOKEN"})
    result = await ask(config, environ={"SET_TOKEN": SECRET})
    assert result.variables == {}
    assert result.problem.startswith("credentials: header Authorization")
    assert SECRET not in result.problem
    assert server.requests == []
    assert all(SECRET not in f"{record.__dict__!r}" for record in caplog.records)


def test_parse_precall_reply_says_what_is_wrong() -> None:
    assert parse_precall_reply('{"variables": {"n": 1}}') == PrecallResult(variables={"n": "1"})
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_precall_reply("null")
