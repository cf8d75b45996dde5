"""Twilio Media Streams wire format: JSON text frames <-> messages (protocols.md §1.2, §1.3).

Inbound decoding is tolerant, as gateways differ in small ways: extra fields are ignored, counters
and rates may come as strings or numbers (Twilio sends ``"sequenceNumber": "1"`` but
``"sampleRate": 8000``), optional fields default. What makes a message unusable raises
:class:`~bridge.errors.RemoteProtocolError` with a websocket close code as its hint: 1007 for a
frame that is not a JSON object with a string ``event``, bad base64, or a ``start`` without a
``streamSid``; 1003 for a ``start`` announcing audio other than 8 kHz mono G.711.

Outbound encoding is strict: Twilio rejects extra or missing fields (warning 31951), so each
message carries exactly the documented fields and an empty stream id or mark name is our bug
(:class:`~bridge.errors.LocalProtocolError`).

The shapes are small and flat, so they are read and written by hand rather than through a cattrs
converter, and an outbound message is built by string formatting. An inbound ``media`` message
comes 50 times a second per call, so the common layouts of it have a fast path
(:func:`media_audio`): one regular expression that matches only text which is certainly a JSON
object with ``"event": "media"`` first and a flat ``media`` object, so what it reads is what
``json.loads`` would have read. Anything else (escapes, other key orders, nested or float values)
goes the general way, which decides.
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any

from bridge.call.events import Codec
from bridge.errors import LocalProtocolError, RemoteProtocolError
from bridge.proto.mediastream.messages import (
    Connected,
    Dtmf,
    InboundMessage,
    Mark,
    Media,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    OutboundMessage,
    Start,
    Stop,
    Unknown,
)

# websocket close codes (RFC 6455 §7.4.1) used as hints
INVALID_PAYLOAD = 1007
UNSUPPORTED_DATA = 1003

SAMPLE_RATE = 8000
CHANNELS = 1

# Twilio writes MIME types, Telnyx bare RTP encoding names, Plivo adds ";rate=8000".
_ENCODINGS = {
    "audio/x-mulaw": Codec.PCMU,
    "audio/mulaw": Codec.PCMU,
    "audio/pcmu": Codec.PCMU,
    "pcmu": Codec.PCMU,
    "audio/x-alaw": Codec.PCMA,
    "audio/alaw": Codec.PCMA,
    "audio/pcma": Codec.PCMA,
    "pcma": Codec.PCMA,
}


def codec_from_encoding(encoding: str) -> Codec:
    """The G.711 law a ``mediaFormat.encoding`` names; anything else is refused with hint 1003."""
    base = encoding.split(";", 1)[0].strip().lower()
    codec = _ENCODINGS.get(base)
    if codec is None:
        raise RemoteProtocolError(
            f"unsupported media encoding {encoding!r}: the bridge carries 8 kHz G.711 only "
            "(audio/x-mulaw or audio/x-alaw)",
            hint=UNSUPPORTED_DATA,
        )
    return codec


# ---- decoding ----------------------------------------------------------------------------------

# The media fast path. JSON whitespace is these four characters only; a string without `"`, `\`
# and control characters has no escapes, so its text is its value; integers are JSON's grammar
# (or, quoted, anything int() reads the same way the general path would). Other top-level members
# may carry such strings or integers, but never a second "event" or "media" (with duplicate keys
# json.loads keeps the last one). Inside `media`: Twilio's order (track, chunk, timestamp,
# payload), each but the payload optional, nothing else.
_WS = r"[ \t\n\r]*"
_PLAIN_STRING = r'"[^"\\\x00-\x1f]*"'
_INTEGER = r"-?(?:0|[1-9][0-9]*)"
_NUMBER = rf'(?:"-?[0-9]+"|{_INTEGER})'
_OTHER_MEMBER = (
    rf'{_WS},{_WS}"(?!(?:event|media)")[^"\\\x00-\x1f]*"{_WS}:{_WS}(?:{_PLAIN_STRING}|{_INTEGER})'
)
_MEDIA_MESSAGE = re.compile(
    rf'{_WS}\{{{_WS}"event"{_WS}:{_WS}"media"(?:{_OTHER_MEMBER})*'
    rf'{_WS},{_WS}"media"{_WS}:{_WS}\{{{_WS}'
    rf'(?:"track"{_WS}:{_WS}"(?P<track>[^"\\\x00-\x1f]*)"{_WS},{_WS})?'
    rf"(?:\"chunk\"{_WS}:{_WS}(?P<chunk>{_NUMBER}){_WS},{_WS})?"
    rf"(?:\"timestamp\"{_WS}:{_WS}(?P<timestamp>{_NUMBER}){_WS},{_WS})?"
    rf'"payload"{_WS}:{_WS}"(?P<payload>[A-Za-z0-9+/=]*)"{_WS}\}}'
    rf"(?:{_OTHER_MEMBER})*{_WS}\}}{_WS}"
)


def media_audio(text: str | bytes) -> tuple[str, bytes] | None:
    """The track and audio of a ``media`` message in a common layout, or None: then
    :func:`decode` decides. Raises RemoteProtocolError where :func:`decode` would (bad base64)."""
    if not isinstance(text, str):
        return None
    match = _MEDIA_MESSAGE.fullmatch(text)
    if match is None:
        return None
    track = match["track"]
    return ("inbound" if track is None else track), _base64(match["payload"])


def decode(text: str | bytes) -> InboundMessage:
    """One websocket frame to a message; raises RemoteProtocolError for an unusable frame."""
    if isinstance(text, str):
        match = _MEDIA_MESSAGE.fullmatch(text)
        if match is not None:
            track, chunk, timestamp = match["track"], match["chunk"], match["timestamp"]
            return Media(
                track="inbound" if track is None else track,
                chunk=None if chunk is None else int(chunk.strip('"')),
                timestamp=None if timestamp is None else int(timestamp.strip('"')),
                payload=_base64(match["payload"]),
            )
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"message is not JSON: {exc}", hint=INVALID_PAYLOAD) from None
    if not isinstance(data, dict):
        raise RemoteProtocolError("message is not a JSON object", hint=INVALID_PAYLOAD)
    event = data.get("event")
    if not isinstance(event, str):
        raise RemoteProtocolError("message has no string 'event'", hint=INVALID_PAYLOAD)
    # media first: it is nearly every message
    if event == "media":
        return _decode_media(data)
    if event == "mark":
        return Mark(_required_text(_section(data, "mark"), "name", "mark.name"))
    if event == "dtmf":
        dtmf = _section(data, "dtmf")
        return Dtmf(track=_text(dtmf, "track"), digit=_required_text(dtmf, "digit", "dtmf.digit"))
    if event == "start":
        return _decode_start(data)
    if event == "stop":
        return Stop(call_sid=_text(_section(data, "stop", required=False), "callSid"))
    if event == "connected":
        return Connected(protocol=_text(data, "protocol"), version=_text(data, "version"))
    raw = text if isinstance(text, str) else text.decode("utf-8", "replace")
    return Unknown(event=event, raw=raw)


def _decode_media(data: dict[str, Any]) -> Media:
    media = _section(data, "media")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise RemoteProtocolError("media message has no string 'payload'", hint=INVALID_PAYLOAD)
    return Media(
        track=_text(media, "track", "inbound"),
        chunk=_integer(media, "chunk"),
        timestamp=_integer(media, "timestamp"),
        payload=_base64(payload),
    )


def _base64(payload: str) -> bytes:
    try:
        return binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise RemoteProtocolError(
            f"media payload is not base64: {exc}", hint=INVALID_PAYLOAD
        ) from None


def _decode_start(data: dict[str, Any]) -> Start:
    start = _section(data, "start")
    # the stream id is written twice (inside `start` and at top level); either is enough
    stream_sid = _text(start, "streamSid") or _text(data, "streamSid")
    if not stream_sid:
        raise RemoteProtocolError("start message has no streamSid", hint=INVALID_PAYLOAD)
    tracks = start.get("tracks", ())
    if not isinstance(tracks, list | tuple) or not all(isinstance(t, str) for t in tracks):
        raise RemoteProtocolError("start.tracks is not a list of strings", hint=INVALID_PAYLOAD)
    # Twilio documents mediaFormat as always present; if a gateway leaves it out, assume
    # Twilio's one format rather than refusing the call.
    media_format = _section(start, "mediaFormat", required=False)
    encoding = _text(media_format, "encoding", "audio/x-mulaw")
    codec = codec_from_encoding(encoding)
    sample_rate = _integer(media_format, "sampleRate")
    sample_rate = SAMPLE_RATE if sample_rate is None else sample_rate
    channels = _integer(media_format, "channels")
    channels = CHANNELS if channels is None else channels
    if sample_rate != SAMPLE_RATE or channels != CHANNELS:
        raise RemoteProtocolError(
            f"unsupported media format {encoding} at {sample_rate} Hz, {channels} channel(s): "
            "the bridge carries 8000 Hz mono only",
            hint=UNSUPPORTED_DATA,
        )
    return Start(
        stream_sid=stream_sid,
        call_sid=_text(start, "callSid"),
        account_sid=_text(start, "accountSid"),
        tracks=tuple(tracks),
        encoding=encoding,
        codec=codec,
        sample_rate=sample_rate,
        channels=channels,
        custom_parameters=_parameters(_section(start, "customParameters", required=False)),
        sequence_number=_integer(data, "sequenceNumber"),
    )


def _section(data: dict[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if isinstance(value, dict):
        return value
    if value is None and not required:
        return {}
    raise RemoteProtocolError(f"'{key}' is missing or not an object", hint=INVALID_PAYLOAD)


def _text(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    if isinstance(value, str):
        return value
    if value is None:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise RemoteProtocolError(f"'{key}' is not a string", hint=INVALID_PAYLOAD)


def _required_text(data: dict[str, Any], key: str, where: str) -> str:
    value = _text(data, key)
    if not value:
        raise RemoteProtocolError(f"{where} is missing", hint=INVALID_PAYLOAD)
    return value


def _integer(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise RemoteProtocolError(f"'{key}' is not a number", hint=INVALID_PAYLOAD)
    if isinstance(value, int):
        return value
    if isinstance(value, str | float):
        try:
            return int(value)
        except (ValueError, OverflowError):
            pass
    raise RemoteProtocolError(f"'{key}' is not a number", hint=INVALID_PAYLOAD)


def _parameters(data: dict[str, Any]) -> dict[str, str]:
    # <Parameter> values are text; numbers or booleans from another gateway still mean text, and
    # a nested value cannot be one, so it is left out rather than refusing the call.
    parameters: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, str):
            parameters[name] = value
        elif isinstance(value, bool):
            parameters[name] = "true" if value else "false"
        elif isinstance(value, int | float):
            parameters[name] = str(value)
    return parameters


# ---- encoding ----------------------------------------------------------------------------------


def encode(message: OutboundMessage) -> str:
    """One outbound message as the exact JSON text Twilio accepts."""
    match message:
        case OutboundMedia(stream_sid=stream_sid, payload=payload):
            return encode_media(stream_sid, payload)
        case OutboundMark(stream_sid=stream_sid, name=name):
            if not name:
                raise LocalProtocolError("a mark needs a name")
            return (
                f'{{"event":"mark","streamSid":{_stream_sid(stream_sid)},'
                f'"mark":{{"name":{json.dumps(name)}}}}}'
            )
        case OutboundClear(stream_sid=stream_sid):
            return f'{{"event":"clear","streamSid":{_stream_sid(stream_sid)}}}'


def encode_media(stream_sid: str, payload: bytes) -> str:
    """An outbound ``media`` message: `payload` (raw G.711) base64-encoded, nothing else."""
    audio = binascii.b2a_base64(payload, newline=False).decode("ascii")
    return (
        f'{{"event":"media","streamSid":{_stream_sid(stream_sid)},"media":{{"payload":"{audio}"}}}}'
    )


def _stream_sid(stream_sid: str) -> str:
    if not stream_sid:
        raise LocalProtocolError("outbound media-stream messages need the stream's streamSid")
    return json.dumps(stream_sid)
