"""Who may open a media stream: Twilio's request signature and a shared secret (protocols.md §1.4).

Twilio signs the websocket upgrade like its webhooks (https://www.twilio.com/docs/usage/webhooks/
webhooks-security): ``X-Twilio-Signature = base64(HMAC-SHA1(auth token, url + sorted params))``.
The upgrade has no body, so the params are empty and the URL is the ``wss://`` URL exactly as the
TwiML wrote it. We check it against the configured public URL, never the Host header, because a
TLS proxy in front of the daemon changes scheme, host and port. Twilio's own validators accept the
URL both with and without the scheme's default port, and so do we.

Other gateways (and Twilio without a signature) can prove themselves with a shared secret carried
as a ``<Parameter>``; the adapter checks it on ``start``.

Every comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"wss": 443, "https": 443, "ws": 80, "http": 80}


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The ``X-Twilio-Signature`` Twilio sends for a request to `url` with form `params`."""
    fields = params or {}
    data = url + "".join(name + fields[name] for name in sorted(fields))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def twilio_signature_valid(auth_token: str, public_url: str, header: str | None) -> bool:
    """Whether `header` is Twilio's signature of the upgrade to `public_url`; empty never is."""
    if not header or not auth_token or not public_url:
        return False
    given = header.strip().encode()
    # every candidate is checked, so the time taken does not tell which one matched
    matches = [
        hmac.compare_digest(twilio_signature(auth_token, url).encode(), given)
        for url in _url_variants(public_url)
    ]
    return any(matches)


def _url_variants(url: str) -> list[str]:
    """`url` as written, plus the same URL with its default port added or removed."""
    variants = [url]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return variants
    default_port = _DEFAULT_PORTS.get(parts.scheme.lower())
    if default_port is None or not parts.hostname:
        return variants
    host = parts.netloc.rpartition("@")[2]
    userinfo = parts.netloc[: len(parts.netloc) - len(host)]
    if port is None:
        variants.append(parts._replace(netloc=f"{userinfo}{host}:{default_port}").geturl())
    elif port == default_port:
        bare_host = host[: host.rindex(":")]
        variants.append(parts._replace(netloc=f"{userinfo}{bare_host}").geturl())
    return variants


def shared_secret_valid(expected: str, given: str | None) -> bool:
    """Whether `given` is the shared secret; an empty secret (on either side) is never valid."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
