"""Twilio Media Streams websocket messages as frozen classes (protocols.md §1.2 and §1.3).

Inbound messages are what the gateway sends (`connected`, `start`, `media`, `dtmf`, `mark`,
`stop`, and anything else as :class:`Unknown`); outbound messages are the three Twilio accepts
(`media`, `mark`, `clear`). The wire shapes and their conversion live in
:mod:`bridge.proto.mediastream.codec`; nothing here knows about JSON or base64.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from bridge.call.events import Codec

# ---- gateway -> bridge -------------------------------------------------------------------------


@attrs.frozen
class Connected:
    """The first frame of a stream: the gateway names its protocol and version."""

    protocol: str
    version: str


@attrs.frozen(kw_only=True)
class Start:
    """Stream metadata, sent once before any media.

    `encoding` is the gateway's own spelling (``audio/x-mulaw``, ``PCMA``...); `codec` is what it
    means for us. The codec refuses encodings and rates we cannot carry, so a `Start` always
    describes 8 kHz mono G.711.
    """

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    encoding: str
    codec: Codec
    sample_rate: int
    channels: int
    custom_parameters: Mapping[str, str] = attrs.field(factory=dict)
    sequence_number: int | None = None


@attrs.frozen(kw_only=True)
class Media:
    """A piece of audio of one track: raw G.711 bytes, any length."""

    track: str
    chunk: int | None
    timestamp: int | None
    payload: bytes


@attrs.frozen
class Dtmf:
    """A keypad digit the caller pressed."""

    track: str
    digit: str


@attrs.frozen
class Mark:
    """The echo of a mark we sent: the audio sent before it was played, or dropped by `clear`."""

    name: str


@attrs.frozen
class Stop:
    """The stream ended (the caller hung up or the stream was stopped)."""

    call_sid: str


@attrs.frozen
class Unknown:
    """A well-formed message with an event we do not handle; `raw` is the message text."""

    event: str
    raw: str


InboundMessage = Connected | Start | Media | Dtmf | Mark | Stop | Unknown

# ---- bridge -> gateway -------------------------------------------------------------------------


@attrs.frozen
class OutboundMedia:
    """Audio for the caller, in the stream's codec; the gateway queues it and plays it in order."""

    stream_sid: str
    payload: bytes


@attrs.frozen
class OutboundMark:
    """Ask the gateway to echo `name` once everything queued before it has been played."""

    stream_sid: str
    name: str


@attrs.frozen
class OutboundClear:
    """Drop the gateway's queue of audio not yet played; it then echoes every pending mark."""

    stream_sid: str


OutboundMessage = OutboundMedia | OutboundMark | OutboundClear
