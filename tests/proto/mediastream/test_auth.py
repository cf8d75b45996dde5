from __future__ import annotations

import pytest

from bridge.proto.mediastream.auth import (
    shared_secret_valid,
    twilio_signature,
    twilio_signature_valid,
)

TOKEN = "12345"
URL = "wss://bridge.example.com/media"
# Derived once by hand: base64(HMAC-SHA1(b"12345", URL)) with the standard library's hmac.
SIGNATURE = "ASGyPT9kdDVOm79OxfQnw7HcSP8="
SIGNATURE_WITH_PORT = (
    "C9S82mGEXw9m712vXhUGYWVNxaI="  # the same for wss://bridge.example.com:443/media
)


def test_known_vector_without_params() -> None:
    assert twilio_signature(TOKEN, URL) == SIGNATURE
    assert twilio_signature(TOKEN, URL, {}) == SIGNATURE


def test_known_vector_with_form_params() -> None:
    # Twilio's webhook-security example: the URL, then each parameter name + value, sorted by name.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "Digits": "1234",
        "To": "+18005551212",
        "From": "+12349013030",
        "Caller": "+12349013030",
        "CallSid": "CA1234567890ABCDE",
    }
    assert twilio_signature(TOKEN, url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_valid_signature_is_accepted() -> None:
    assert twilio_signature_valid(TOKEN, URL, SIGNATURE)
    assert twilio_signature_valid(TOKEN, URL, f" {SIGNATURE} ")


def test_explicit_443_either_side() -> None:
    # Twilio signed the URL with the port, we configured it without, and the other way round
    assert twilio_signature_valid(TOKEN, URL, SIGNATURE_WITH_PORT)
    assert twilio_signature_valid(TOKEN, "wss://bridge.example.com:443/media", SIGNATURE)
    assert twilio_signature_valid(TOKEN, "wss://bridge.example.com:443/media", SIGNATURE_WITH_PORT)


def test_other_ports_are_not_variants() -> None:
    signed_8443 = twilio_signature(TOKEN, "wss://bridge.example.com:8443/media")
    assert not twilio_signature_valid(TOKEN, URL, signed_8443)
    assert twilio_signature_valid(TOKEN, "wss://bridge.example.com:8443/media", signed_8443)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "ASGyPT9kdDVOm79OxfQnw7HcSP9=",  # one character off
        twilio_signature("54321", URL),  # another account's token
        twilio_signature(TOKEN, "https://bridge.example.com/media"),  # https, not wss
        twilio_signature(TOKEN, URL + "/"),
        "not base64 at all \u00e9",
    ],
)
def test_missing_or_wrong_signature_is_refused(header: str | None) -> None:
    assert not twilio_signature_valid(TOKEN, URL, header)


def test_empty_token_or_url_never_validates() -> None:
    assert not twilio_signature_valid("", URL, twilio_signature("", URL))
    assert not twilio_signature_valid(TOKEN, "", twilio_signature(TOKEN, ""))


def test_shared_secret() -> None:
    assert shared_secret_valid("s3cret", "s3cret")
    assert shared_secret_valid("gr\u00fc\u00dfe", "gr\u00fc\u00dfe")
    assert not shared_secret_valid("s3cret", "s3cre")
    assert not shared_secret_valid("s3cret", "S3CRET")
    assert not shared_secret_valid("s3cret", None)
    assert not shared_secret_valid("s3cret", "")
    assert not shared_secret_valid("", "")
    assert not shared_secret_valid("", "anything")
