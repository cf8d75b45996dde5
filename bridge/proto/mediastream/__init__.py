"""Twilio-style media streams over a websocket (protocols.md §1): messages, codec, auth, session."""

from __future__ import annotations

from bridge.proto.mediastream.auth import (
    shared_secret_valid,
    twilio_signature,
    twilio_signature_valid,
)
from bridge.proto.mediastream.codec import codec_from_encoding, decode, encode, encode_media
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
from bridge.proto.mediastream.session import (
    MediaStreamSession,
    MediaStreamStarted,
    MediaStreamStatistics,
    StreamState,
)

__all__ = [
    "Connected",
    "Dtmf",
    "InboundMessage",
    "Mark",
    "Media",
    "MediaStreamSession",
    "MediaStreamStarted",
    "MediaStreamStatistics",
    "OutboundClear",
    "OutboundMark",
    "OutboundMedia",
    "OutboundMessage",
    "Start",
    "Stop",
    "StreamState",
    "Unknown",
    "codec_from_encoding",
    "decode",
    "encode",
    "encode_media",
    "shared_secret_valid",
    "twilio_signature",
    "twilio_signature_valid",
]
