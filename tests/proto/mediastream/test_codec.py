from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.call.events import Codec
from bridge.errors import LocalProtocolError, RemoteProtocolError
from bridge.proto.mediastream.codec import codec_from_encoding, decode, encode, encode_media
from bridge.proto.mediastream.messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    Unknown,
)

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"

# The examples of protocols.md §1.2, as Twilio documents them.
CONNECTED = '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'
START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC123",
            "streamSid": SID,
            "callSid": "CA123",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"tenant": "acme", "from": "+15551230000"},
        },
        "streamSid": SID,
    }
)
MEDIA = json.dumps(
    {
        "event": "media",
        "sequenceNumber": "4",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "fv7+/n5+fn5+"},
        "streamSid": SID,
    }
)
DTMF = json.dumps(
    {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "1"},
    }
)
MARK = json.dumps(
    {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "r-17"}}
)
STOP = json.dumps(
    {
        "event": "stop",
        "sequenceNumber": "5",
        "streamSid": SID,
        "stop": {"accountSid": "AC123", "callSid": "CA123"},
    }
)

EXPECTED_START = Start(
    stream_sid=SID,
    call_sid="CA123",
    account_sid="AC123",
    tracks=("inbound",),
    encoding="audio/x-mulaw",
    codec=Codec.PCMU,
    sample_rate=8000,
    channels=1,
    custom_parameters={"tenant": "acme", "from": "+15551230000"},
    sequence_number=1,
)

EXAMPLES = [
    (CONNECTED, Connected(protocol="Call", version="1.0.0")),
    (START, EXPECTED_START),
    (
        MEDIA,
        Media(track="inbound", chunk=2, timestamp=5, payload=base64.b64decode("fv7+/n5+fn5+")),
    ),
    (DTMF, Dtmf(track="inbound_track", digit="1")),
    (MARK, Mark("r-17")),
    (STOP, Stop(call_sid="CA123")),
]


def with_extra_fields(text: str) -> str:
    """The same message with unknown fields at every level of nesting."""

    def add(value: Any) -> Any:
        if isinstance(value, dict):
            return {**{k: add(v) for k, v in value.items()}, "futureField": {"x": [1, 2]}}
        return value

    return json.dumps(add(json.loads(text)))


@pytest.mark.parametrize(("text", "expected"), EXAMPLES)
def test_documented_messages_decode(text: str, expected: object) -> None:
    assert decode(text) == expected


@pytest.mark.parametrize(("text", "expected"), EXAMPLES)
def test_extra_fields_are_ignored(text: str, expected: object) -> None:
    assert decode(with_extra_fields(text)) == expected


@pytest.mark.parametrize(("text", "expected"), EXAMPLES)
def test_binary_frames_decode_like_text(text: str, expected: object) -> None:
    assert decode(text.encode()) == expected


def test_numbers_and_strings_are_both_accepted() -> None:
    message = json.loads(START)
    message["sequenceNumber"] = 1
    message["start"]["mediaFormat"] = {
        "encoding": "audio/x-mulaw",
        "sampleRate": "8000",
        "channels": "1",
    }
    assert decode(json.dumps(message)) == EXPECTED_START
    media = decode(
        '{"event":"media","media":{"track":"inbound","chunk":2,"timestamp":5.0,"payload":""}}'
    )
    assert media == Media(track="inbound", chunk=2, timestamp=5, payload=b"")


def test_start_defaults() -> None:
    # only the stream id at top level, no mediaFormat: Twilio's one documented format is assumed
    start = decode(json.dumps({"event": "start", "streamSid": SID, "start": {}}))
    assert start == Start(
        stream_sid=SID,
        call_sid="",
        account_sid="",
        tracks=(),
        encoding="audio/x-mulaw",
        codec=Codec.PCMU,
        sample_rate=8000,
        channels=1,
    )


def test_custom_parameter_values_become_text() -> None:
    message = json.loads(START)
    message["start"]["customParameters"] = {"n": 5, "ok": True, "s": "x", "nested": [1], "no": None}
    start = decode(json.dumps(message))
    assert isinstance(start, Start)
    assert start.custom_parameters == {"n": "5", "ok": "true", "s": "x"}


def test_media_without_track_is_the_callers() -> None:
    assert decode('{"event":"media","media":{"payload":"AQI="}}') == Media(
        track="inbound", chunk=None, timestamp=None, payload=b"\x01\x02"
    )


def test_unknown_event_keeps_its_text() -> None:
    text = '{"event":"error","error":{"code":1}}'
    assert decode(text) == Unknown(event="error", raw=text)


@pytest.mark.parametrize(
    ("encoding", "codec"),
    [
        ("audio/x-mulaw", Codec.PCMU),
        ("AUDIO/X-MULAW", Codec.PCMU),
        ("audio/x-mulaw;rate=8000", Codec.PCMU),
        ("PCMU", Codec.PCMU),
        ("pcmu", Codec.PCMU),
        ("audio/x-alaw", Codec.PCMA),
        ("Audio/X-Alaw", Codec.PCMA),
        ("PCMA", Codec.PCMA),
    ],
)
def test_g711_encodings(encoding: str, codec: Codec) -> None:
    assert codec_from_encoding(encoding) is codec
    message = json.loads(START)
    message["start"]["mediaFormat"]["encoding"] = encoding
    start = decode(json.dumps(message))
    assert isinstance(start, Start)
    assert (start.codec, start.encoding) == (codec, encoding)


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1},
        {"encoding": "L16", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
    ],
)
def test_formats_other_than_8k_mono_g711_are_refused_with_1003(media_format: object) -> None:
    message = json.loads(START)
    message["start"]["mediaFormat"] = media_format
    with pytest.raises(RemoteProtocolError) as caught:
        decode(json.dumps(message))
    assert caught.value.hint == 1003
    assert "8000" in str(caught.value) or "G.711" in str(caught.value)


def test_l16_error_message_says_what_is_supported() -> None:
    with pytest.raises(RemoteProtocolError, match=r"'audio/x-l16'.*G\.711 only"):
        codec_from_encoding("audio/x-l16")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        '{"event": "media"',  # cut short
        "[1, 2]",
        '"media"',
        "{}",
        '{"event": 5}',
        '{"event": "media"}',
        '{"event": "media", "media": "x"}',
        '{"event": "media", "media": {"payload": 5}}',
        '{"event": "media", "media": {"payload": "AQI"}}',  # bad padding
        '{"event": "media", "media": {"payload": "AQ!="}}',  # not the alphabet
        '{"event": "media", "media": {"payload": "AQI=AQI="}}',  # data after padding
        '{"event": "media", "media": {"payload": "AQI=", "chunk": "two"}}',
        '{"event": "media", "media": {"payload": "AQI=", "chunk": true}}',
        '{"event": "start", "start": {"callSid": "CA1"}}',  # no streamSid anywhere
        '{"event": "start", "streamSid": "MZ1"}',  # no start object
        '{"event": "start", "streamSid": "MZ1", "start": {"tracks": "inbound"}}',
        '{"event": "start", "streamSid": "MZ1", "start": {"mediaFormat": "mulaw"}}',
        '{"event": "mark", "mark": {}}',
        '{"event": "mark"}',
        '{"event": "dtmf", "dtmf": {"track": "inbound_track"}}',
        '{"event": "connected", "protocol": {"a": 1}}',
    ],
)
def test_malformed_messages_raise_1007(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(text)
    assert caught.value.hint == 1007


def test_trailing_garbage_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(MEDIA + "x")


@given(st.binary(max_size=2000))
def test_media_payload_survives_base64(payload: bytes) -> None:
    text = json.dumps(
        {
            "event": "media",
            "media": {"track": "inbound", "payload": base64.b64encode(payload).decode()},
        }
    )
    decoded = decode(text)
    assert isinstance(decoded, Media)
    assert decoded.payload == payload


# ---- outbound ----------------------------------------------------------------------------------


def test_encode_exact_strings() -> None:
    assert encode(OutboundMedia(SID, b"\x01\x02\xff")) == (
        '{"event":"media","streamSid":"' + SID + '","media":{"payload":"AQL/"}}'
    )
    assert encode(OutboundMark(SID, "m1")) == (
        '{"event":"mark","streamSid":"' + SID + '","mark":{"name":"m1"}}'
    )
    assert encode(OutboundClear(SID)) == '{"event":"clear","streamSid":"' + SID + '"}'
    assert encode_media(SID, b"") == (
        '{"event":"media","streamSid":"' + SID + '","media":{"payload":""}}'
    )


def test_encode_escapes_json_strings() -> None:
    text = encode(OutboundMark('M"Z', 'a"b\\c'))
    assert json.loads(text) == {"event": "mark", "streamSid": 'M"Z', "mark": {"name": 'a"b\\c'}}


@given(st.binary(max_size=4000), st.text(min_size=1, max_size=40))
def test_outbound_media_is_exactly_the_documented_fields(payload: bytes, stream_sid: str) -> None:
    message = json.loads(encode(OutboundMedia(stream_sid, payload)))
    assert message == {
        "event": "media",
        "streamSid": stream_sid,
        "media": {"payload": base64.b64encode(payload).decode()},
    }


@pytest.mark.parametrize(
    "message",
    [OutboundMedia("", b"\x00"), OutboundMark("", "m1"), OutboundMark(SID, ""), OutboundClear("")],
)
def test_encode_is_strict(message: OutboundMedia | OutboundMark | OutboundClear) -> None:
    with pytest.raises(LocalProtocolError):
        encode(message)
