from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.call.events import Codec
from bridge.errors import LocalProtocolError, RemoteProtocolError
from bridge.proto.mediastream.codec import (
    codec_from_encoding,
    decode,
    encode,
    encode_media,
    media_audio,
)
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


# ---- the media fast path -----------------------------------------------------------------------

PAYLOAD = base64.b64encode(bytes(range(160))).decode()
TWILIO_MEDIA = (
    '{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1",'
    f'"timestamp":"5","payload":"{PAYLOAD}"}},"streamSid":"{SID}"}}'
)
# Layouts the fast path reads itself.
FAST_LAYOUTS = [
    TWILIO_MEDIA,
    json.dumps(json.loads(TWILIO_MEDIA)),
    json.dumps(json.loads(TWILIO_MEDIA), indent=2),
    f' {{ "event" : "media" , "media" : {{ "payload" : "{PAYLOAD}" }} }} ',
    f'{{"event":"media","streamSid":"{SID}","media":{{"track":"outbound","payload":"{PAYLOAD}"}}}}',
    '{"event":"media","sequenceNumber":3,"media":{"chunk":-1,"timestamp":0,"payload":""}}',
    f'{{"event":"media","media":{{"track":"","chunk":"007","payload":"{PAYLOAD}"}},"n":-0}}',
]
# Layouts it leaves to the general way, which still reads them.
SLOW_LAYOUTS = [
    f'{{"event":"media","media":{{"payload":"{PAYLOAD}","track":"inbound"}}}}',  # key order
    '{"event":"media","media":{"payload":"AQI\\u003d"}}',  # an escape in the payload
    '{"event":"media","media":{"track":"in\\u0062ound","payload":"AQI="}}',
    '{"event":"media","media":{"timestamp":5.0,"payload":"AQI="}}',
    '{"event":"media","media":{"chunk":null,"payload":"AQI="}}',
    '{"event":"media","media":{"payload":"AQI="},"futureField":{"x":[1,2]}}',
    '{"event":"media","media":{"payload":"AQI="},"flag":true}',
    '{"media":{"payload":"AQI="},"event":"media"}',  # event not first
    '{"event":"media","media":{"payload":"AQI="},"media":{"payload":"AQID"}}',  # last one wins
    '{"event":"media","media":{"payload":"AQI="},"event":"mark","mark":{"name":"m1"}}',
]


@pytest.mark.parametrize("text", FAST_LAYOUTS + SLOW_LAYOUTS)
def test_the_fast_path_reads_what_json_reads(text: str) -> None:
    # bytes never take the fast path: they are the reference
    expected = decode(text.encode())
    assert decode(text) == expected
    fast = media_audio(text)
    if text in FAST_LAYOUTS:
        assert isinstance(expected, Media)
        assert fast == (expected.track, expected.payload)
    else:
        assert fast is None


def test_the_fast_path_reads_twilios_media_message() -> None:
    assert decode(TWILIO_MEDIA) == Media(
        track="inbound", chunk=1, timestamp=5, payload=bytes(range(160))
    )
    assert media_audio(TWILIO_MEDIA) == ("inbound", bytes(range(160)))


@pytest.mark.parametrize("payload", ["AQI", "AQI=AQI=", "A===", "AQ=I"])
def test_the_fast_path_refuses_bad_base64_like_the_general_way(payload: str) -> None:
    text = f'{{"event":"media","media":{{"track":"inbound","payload":"{payload}"}}}}'
    with pytest.raises(RemoteProtocolError) as general:
        decode(text.encode())
    for fast in (decode, media_audio):
        with pytest.raises(RemoteProtocolError) as caught:
            fast(text)
        assert (caught.value.hint, str(caught.value)) == (general.value.hint, str(general.value))


def test_the_fast_path_leaves_other_events_and_binary_frames_alone() -> None:
    for text in (MARK, START, STOP, CONNECTED, DTMF, "not json", ""):
        assert media_audio(text) is None
    assert media_audio(TWILIO_MEDIA.encode()) is None


_SIMPLE_VALUES = st.one_of(
    st.text(max_size=8),
    st.integers(-(10**20), 10**20),
    st.integers(0, 999).map(str),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.booleans(),
)


@given(
    track=st.one_of(st.none(), st.sampled_from(["inbound", "outbound", ""]), st.text(max_size=5)),
    chunk=_SIMPLE_VALUES,
    timestamp=_SIMPLE_VALUES,
    payload=st.one_of(
        st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
        st.text(alphabet="AQI=+/x", max_size=12),
    ),
    extra=st.dictionaries(st.sampled_from(["sequenceNumber", "streamSid", "x"]), _SIMPLE_VALUES),
    media_first=st.booleans(),
    reverse_media=st.booleans(),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
    escape=st.booleans(),
)
def test_any_media_message_decodes_the_same_either_way(
    track: str | None,
    chunk: object,
    timestamp: object,
    payload: str,
    extra: dict[str, object],
    media_first: bool,
    reverse_media: bool,
    separators: tuple[str, str],
    escape: bool,
) -> None:
    media: dict[str, object] = {"track": track, "chunk": chunk, "timestamp": timestamp}
    media = {k: v for k, v in media.items() if v is not None or k == "chunk"}
    media["payload"] = payload
    if reverse_media:
        media = dict(reversed(media.items()))
    message: dict[str, object] = {"event": "media"}
    if media_first:
        message["media"] = media
    message.update(extra)
    message["media"] = media
    text = json.dumps(message, separators=separators, ensure_ascii=escape)
    try:
        expected: object = decode(text.encode())
    except RemoteProtocolError as error:
        expected = (error.hint, str(error))
    try:
        got: object = decode(text)
    except RemoteProtocolError as error:
        got = (error.hint, str(error))
    assert got == expected
    try:
        fast = media_audio(text)
    except RemoteProtocolError as error:
        assert (error.hint, str(error)) == expected
    else:
        if fast is not None:
            assert isinstance(expected, Media)
            assert fast == (expected.track, expected.payload)
