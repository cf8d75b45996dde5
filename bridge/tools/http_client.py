"""POST JSON to an operator's endpoint: the HTTP tools, the transfer hook and the pre-call hook.

HTTP/1.1 semantics per RFC 9110 (status classes §15, field syntax §5.1, redirects §15.4) through
httpx2 on trio. One request is one bounded exchange: ``trio.fail_after`` covers connecting,
sending, waiting for the status line and reading the last byte of the body, so an endpoint that
drips its reply a byte at a time cannot hold a tool past its timeout (httpx's own timeouts bound
each read, not the sum). Redirects are never followed: a tool endpoint that moved is a
configuration problem to report, and following one would send the call's data, and any
credential headers, to a host nobody configured.

Every way the exchange can fail becomes one :class:`ToolFailure` with a short code and a message
that is safe for the model and the log: it never carries request header values (secret values
that a reply body echoes back are blanked out too) nor the URL, which may hold a token.
"""

from __future__ import annotations

import contextlib
import functools
import http.cookiejar
import json
import re
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final

import httpx2
import trio

import bridge

USER_AGENT: Final = f"bridge/{getattr(bridge, '__version__', '0')}"
MAX_REPLY_BYTES: Final = 64 * 1024
# Enough of an error reply to say what went wrong, without reading a whole error page.
_STATUS_DETAIL_CHARS: Final = 200
_STATUS_DETAIL_BYTES: Final = 4 * _STATUS_DETAIL_CHARS
_DETAIL_CHARS: Final = 200
# RFC 9110 §5.6.2 token; field values as h11 accepts them, and ASCII only because httpx encodes
# str header values as ASCII.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(r"(?:[\x21-\x7e](?:[ \t]*[\x21-\x7e])*)?")
# Shorter pieces of a header value are too common in ordinary text to be worth blanking out.
_MIN_REDACTED_CHARS: Final = 6


class ToolFailure(Exception):
    """A tool call that produced no usable answer; the call goes on and the model is told.

    ``code`` is one of ``"timeout"``, ``"connection"``, ``"http_status"``, ``"bad_reply"``
    (the endpoint answered something we cannot pass on) and ``"bad_request"`` (the request could
    not be made from the configuration: an unusable URL or header); callers may add their own
    (the tool runner uses ``"credentials"``). ``status`` is the HTTP status for
    ``"http_status"``, else 0.
    """

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the trust store takes tens of milliseconds: once per process, not once per client.
    return httpx2.create_ssl_context()


def _refuse_all_cookies() -> http.cookiejar.CookieJar:
    # An empty allow-list blocks every domain, for storing and for sending alike.
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


@contextlib.asynccontextmanager
async def open_http_client(*, max_connections: int = 100) -> AsyncIterator[httpx2.AsyncClient]:
    """A client for the daemon's tool and hook requests, to share between calls.

    Sharing keeps connections to the same endpoint alive across tool calls. The client stores no
    cookies: one caller's session cookie must never be sent on behalf of the next caller.
    Proxy settings come from the environment (``HTTPS_PROXY``, ``NO_PROXY``), as for any
    service on the host.
    """
    tls = await trio.to_thread.run_sync(_tls_context)
    async with httpx2.AsyncClient(
        verify=tls,
        follow_redirects=False,
        cookies=_refuse_all_cookies(),
        headers={"User-Agent": USER_AGENT},
        limits=httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections // 5,
            keepalive_expiry=30.0,
        ),
    ) as client:
        yield client


async def post_json(
    url: str,
    payload: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    max_reply_bytes: int = MAX_REPLY_BYTES,
    client: httpx2.AsyncClient | None = None,
) -> str:
    """POST `payload` as JSON to `url`; the text of a 2xx reply, else :class:`ToolFailure`.

    `headers` are sent as given, after and over the defaults (JSON content type, our
    User-Agent). Without a `client` a one-off one is opened and closed around the request.
    """
    body = _encode_payload(payload)
    request_headers = _request_headers(headers)
    secrets = _redactable_values(headers.values())
    host = _host_of(url)
    try:
        async with contextlib.AsyncExitStack() as stack:
            http = client
            if http is None:
                http = await stack.enter_async_context(open_http_client(max_connections=1))
            with trio.fail_after(timeout_s):
                async with http.stream(
                    "POST",
                    url,
                    content=body,
                    headers=request_headers,
                    follow_redirects=False,
                    timeout=timeout_s,
                ) as response:
                    return await _read_reply(response, max_reply_bytes, secrets)
    except (trio.TooSlowError, httpx2.TimeoutException):
        raise ToolFailure("timeout", f"no reply within {timeout_s:g} s") from None
    except (httpx2.InvalidURL, httpx2.UnsupportedProtocol):
        raise ToolFailure("bad_request", "the URL is not a usable http(s) URL") from None
    except httpx2.LocalProtocolError:
        # h11's message would quote the offending header value, which may be a secret.
        raise ToolFailure("bad_request", "the request is not valid HTTP") from None
    except (httpx2.ConnectError, httpx2.ProxyError) as error:
        raise ToolFailure("connection", f"cannot connect to {host}: {_detail(error)}") from None
    except httpx2.RemoteProtocolError as error:
        raise ToolFailure("bad_reply", f"{host} broke HTTP: {_detail(error)}") from None
    except httpx2.DecodingError:
        raise ToolFailure("bad_reply", f"{host} sent a body that cannot be decoded") from None
    except httpx2.TransportError as error:
        raise ToolFailure(
            "connection", f"the connection to {host} failed: {_detail(error)}"
        ) from None


def _encode_payload(payload: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ToolFailure("bad_request", f"the payload is not JSON: {error}") from None
    return text.encode()


def _request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ToolFailure("bad_request", f"{name!r} is not a valid header name")
        if not _FIELD_VALUE.fullmatch(value):
            raise ToolFailure(
                "bad_request",
                f"header {name}: the value has control or non-ASCII characters, "
                "or leading or trailing spaces",
            )
    defaults = {
        "Content-Type": "application/json",
        "Accept": "application/json, */*;q=0.5",
        # Asking for no compression keeps max_reply_bytes a bound on what arrives, not on what
        # a small compressed body might inflate to.
        "Accept-Encoding": "identity",
        "User-Agent": USER_AGENT,
    }
    overridden = {name.lower() for name in headers}
    return {
        **{name: value for name, value in defaults.items() if name.lower() not in overridden},
        **headers,
    }


def _host_of(url: str) -> str:
    try:
        return httpx2.URL(url).host or "the endpoint"
    except (httpx2.InvalidURL, TypeError, ValueError):
        return "the endpoint"


def _redactable_values(values: Iterable[str]) -> list[str]:
    # A value and its parts, so "Bearer <token>" also blanks a bare "<token>"; longest first so
    # the whole value goes before a part of it.
    pieces = {piece for value in values for piece in (value, *value.split())}
    return sorted((p for p in pieces if len(p) >= _MIN_REDACTED_CHARS), key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def _detail(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:_DETAIL_CHARS]


async def _read_reply(response: httpx2.Response, max_reply_bytes: int, secrets: list[str]) -> str:
    if not response.is_success:
        head = await _read_at_most(response, _STATUS_DETAIL_BYTES)
        detail = " ".join(head.decode("utf-8", errors="replace").split())
        detail = _redact(detail, secrets)[:_STATUS_DETAIL_CHARS]
        status = response.status_code
        message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
        raise ToolFailure("http_status", message, status)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_reply_bytes:
        raise _too_large(max_reply_bytes)
    body = await _read_at_most(response, max_reply_bytes + 1)
    if len(body) > max_reply_bytes:
        raise _too_large(max_reply_bytes)
    return body.decode("utf-8", errors="replace")


def _too_large(max_reply_bytes: int) -> ToolFailure:
    return ToolFailure("bad_reply", f"the reply is larger than {max_reply_bytes} bytes")


async def _read_at_most(response: httpx2.Response, limit: int) -> bytes:
    """Up to `limit` bytes of the body; the rest is left unread (the connection is then closed)."""
    received = bytearray()
    # Leaving the loop early would strand one of httpx2's nested body generators for the garbage
    # collector (trio then warns); cancelling the next read unwinds them all instead.
    with trio.CancelScope() as stop_reading:
        async for chunk in response.aiter_bytes():
            received += chunk
            if len(received) >= limit:
                stop_reading.cancel()
    return bytes(received[:limit])


__all__ = ["MAX_REPLY_BYTES", "USER_AGENT", "ToolFailure", "open_http_client", "post_json"]
