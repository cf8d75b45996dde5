"""SDP for a G.711 UAS: parse offers, pick the audio, build answers (RFC 4566/8866, RFC 3264 §5-§8).

:meth:`SessionDescription.parse` is tolerant: unknown lines (``b=``, ``k=``, ``z=``,
``a=candidate``...) are kept or skipped, never fatal; only input that is not SDP at all (no
``v=0`` first, an ``m=`` or ``c=`` line that cannot be read) raises :class:`SdpError`.

:func:`negotiate` chooses one G.711 codec on the first usable RTP/AVP audio stream and maps the
offer's direction to ours (RFC 3264 §6.1); :func:`build_answer` writes the answer with the same
m-lines in the same order, every one but the chosen audio refused with port 0 (§6);
:func:`build_offer` describes the call as it stands, for a re-INVITE that came without an offer
(RFC 3261 §14.2).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs

from bridge.call.events import Codec
from bridge.proto.rtp.packet import MAX_PAYLOAD_TYPE


class SdpError(ValueError):
    """The body is not a session description we can read."""


class Direction(enum.Enum):
    """Media direction attributes (RFC 3264 §5.1, RFC 4566 §6)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    def reversed(self) -> Direction:
        """The answer's direction for an offer in this direction (RFC 3264 §6.1)."""
        return _REVERSED[self]


_REVERSED = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}
_DIRECTIONS = {direction.value: direction for direction in Direction}

Attributes = tuple[tuple[str, str | None], ...]

# Only plain RTP is spoken; SRTP or DTLS-SRTP streams are refused with 488 (protocols.md §5.4).
RTP_PROFILES = frozenset({"RTP/AVP", "RTP/AVPF"})
STATIC_PAYLOAD_TYPES = {0: Codec.PCMU, 8: Codec.PCMA}
TELEPHONE_EVENT = "telephone-event/8000"
HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})


@attrs.frozen
class MediaDescription:
    """One ``m=`` section. `rtpmap` and `fmtp` are keyed by payload type; `attributes` holds
    every ``a=`` line of the section in order as (name, value or None for a flag)."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None
    rtpmap: Mapping[int, str] = attrs.field(factory=dict, hash=False)
    fmtp: Mapping[int, str] = attrs.field(factory=dict, hash=False)
    direction: Direction | None = None
    ptime: int | None = None
    attributes: Attributes = ()

    def attribute(self, name: str) -> str | None:
        """The first ``a=name[:value]`` of this section: "" for a flag, None when absent."""
        return _find_attribute(self.attributes, name)


@attrs.frozen
class SessionDescription:
    """A parsed session description; `attributes` are the session-level ``a=`` lines."""

    origin: str
    connection: str | None
    direction: Direction | None
    media: tuple[MediaDescription, ...]
    attributes: Attributes = ()

    @classmethod
    def parse(cls, body: bytes) -> SessionDescription:
        """Parse an SDP body; SdpError when it is hopeless."""
        return _parse(body)

    def media_direction(self, index: int) -> Direction:
        """The direction of m-line `index`: media level, else session level, else sendrecv."""
        return self.media[index].direction or self.direction or Direction.SENDRECV

    @property
    def origin_version(self) -> int | None:
        """The ``o=`` session version: unchanged in a re-offer means the SDP did not change
        (RFC 3264 §8)."""
        parts = self.origin.split()
        if len(parts) >= 3 and parts[2].isdigit() and parts[2].isascii():
            return int(parts[2])
        return None

    def attribute(self, name: str) -> str | None:
        """The first session-level ``a=name[:value]``: "" for a flag, None when absent."""
        return _find_attribute(self.attributes, name)


def _find_attribute(attributes: Attributes, name: str) -> str | None:
    for attribute_name, value in attributes:
        if attribute_name == name:
            return "" if value is None else value
    return None


@attrs.define
class _MediaBuilder:
    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: str | None = None
    rtpmap: dict[int, str] = attrs.Factory(dict)
    fmtp: dict[int, str] = attrs.Factory(dict)
    direction: Direction | None = None
    ptime: int | None = None
    attributes: list[tuple[str, str | None]] = attrs.Factory(list)

    def build(self) -> MediaDescription:
        return MediaDescription(
            self.media,
            self.port,
            self.proto,
            self.formats,
            self.connection,
            self.rtpmap,
            self.fmtp,
            self.direction,
            self.ptime,
            tuple(self.attributes),
        )


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN":
        raise SdpError(f"malformed c= line: {value!r}")
    # Multicast addresses carry /ttl[/count]; the address is what comes before.
    return parts[2].split("/")[0]


def _media_line(value: str) -> _MediaBuilder:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"malformed m= line: {value!r}")
    port_text = parts[1].split("/")[0]  # "49170/2" is a port and a count of ports
    if not (port_text.isdigit() and port_text.isascii() and len(port_text) <= 5):
        raise SdpError(f"malformed m= port: {value!r}")
    port = int(port_text)
    if port > 65535:
        raise SdpError(f"malformed m= port: {value!r}")
    return _MediaBuilder(parts[0], port, parts[2], tuple(parts[3:]))


def _payload_type_value(value: str) -> tuple[int, str] | None:
    """``"96 telephone-event/8000"`` as (96, "telephone-event/8000"), None when malformed."""
    number, _, rest = value.strip().partition(" ")
    if not (number.isdigit() and number.isascii() and len(number) <= 3):
        return None
    return int(number), rest.strip()


def _ptime(value: str) -> int | None:
    try:
        milliseconds = float(value.strip())
    except ValueError:
        return None
    if not 0 < milliseconds <= 1000:
        return None
    return round(milliseconds)


def _parse(body: bytes) -> SessionDescription:
    text = body.decode("utf-8", "replace")
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines or lines[0] != "v=0":
        raise SdpError("not a session description (no v=0 first)")
    origin = ""
    connection: str | None = None
    direction: Direction | None = None
    session_attributes: list[tuple[str, str | None]] = []
    media: list[_MediaBuilder] = []
    current: _MediaBuilder | None = None
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=":
            continue  # not an SDP line; tolerated
        kind, value = line[0], line[2:]
        if kind == "m":
            current = _media_line(value)
            media.append(current)
        elif kind == "c":
            address = _connection_address(value)
            if current is None:
                connection = address
            else:
                current.connection = address
        elif kind == "o" and current is None:
            origin = value
        elif kind == "a":
            name, colon, attribute_value = value.partition(":")
            attribute = (name, attribute_value if colon else None)
            line_direction = _DIRECTIONS.get(name) if not colon else None
            if current is None:
                session_attributes.append(attribute)
                if line_direction is not None:
                    direction = line_direction
                continue
            current.attributes.append(attribute)
            if line_direction is not None:
                current.direction = line_direction
            elif name == "rtpmap":
                mapped = _payload_type_value(attribute_value)
                if mapped is not None:
                    current.rtpmap[mapped[0]] = mapped[1]
            elif name == "fmtp":
                mapped = _payload_type_value(attribute_value)
                if mapped is not None:
                    current.fmtp[mapped[0]] = mapped[1]
            elif name == "ptime":
                current.ptime = _ptime(attribute_value)
        # Other lines (s=, t=, b=, k=, z=, i=, u=, e=, p=, r=...) do not change what we answer.
    return SessionDescription(
        origin,
        connection,
        direction,
        tuple(builder.build() for builder in media),
        tuple(session_attributes),
    )


# ---- offer/answer ------------------------------------------------------------------------------


class OfferRejected(Exception):
    """No acceptable audio in the offer; `status` is 488 (no common codec / SRTP only / no
    audio) and `reason` says which."""

    def __init__(self, reason: str, *, status: int = 488) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@attrs.frozen
class NegotiatedAudio:
    """What we agreed for the call's audio (RFC 3264 §6.1)."""

    codec: Codec
    payload_type: int
    dtmf_payload_type: int | None
    remote_host: str
    remote_port: int
    direction: Direction
    ptime: int = 20
    audio_index: int = 0


def _codec_of(payload_type: int, media: MediaDescription) -> Codec | None:
    encoding = media.rtpmap.get(payload_type)
    if encoding is None:
        return STATIC_PAYLOAD_TYPES.get(payload_type)
    name, _, rest = encoding.partition("/")
    clock, _, channels = rest.partition("/")
    if clock != "8000" or channels not in ("", "1"):
        return None
    for codec in Codec:
        if name.upper() == codec.value:
            return codec
    return None


def _payload_types(media: MediaDescription) -> list[int]:
    """The formats of an RTP m-line that can be RTP payload types: 0..127 (the header's PT
    field has 7 bits, RFC 3550 §5.1); anything else could never be sent, so it is not offered."""
    return [
        int(f)
        for f in media.formats
        if f.isdigit() and f.isascii() and len(f) <= 3 and int(f) <= MAX_PAYLOAD_TYPE
    ]


def _dtmf_payload_type(media: MediaDescription) -> int | None:
    for payload_type in _payload_types(media):
        encoding = media.rtpmap.get(payload_type, "")
        if encoding.lower() == TELEPHONE_EVENT:
            return payload_type
    return None


def negotiate(offer: SessionDescription, preference: Sequence[Codec]) -> NegotiatedAudio:
    """Pick the first codec of `preference` that the offer's first usable RTP/AVP (or RTP/AVPF)
    audio m-line lists (static PT 0/8 count even without rtpmap; dynamic PTs via rtpmap name
    PCMU/PCMA at 8000). The offer's PT for it is used, as is its telephone-event/8000 PT.
    Formats outside 0..127 are not RTP payload types and are ignored: a telephone-event only
    there means no DTMF, a codec only there is no common codec. SRTP-only (RTP/SAVP,
    RTP/SAVPF, UDP/TLS/RTP/SAVPF), no common codec or no audio -> OfferRejected(488).

    An audio m-line with port 0 is a stream the offerer disabled and is passed over; one without
    a common codec is passed over too, so a later audio m-line can still be chosen.
    """
    saw_rtp_audio = saw_secure_audio = False
    for index, media in enumerate(offer.media):
        if media.media.lower() != "audio" or media.port == 0:
            continue
        if media.proto.upper() not in RTP_PROFILES:
            saw_secure_audio = saw_secure_audio or "SAVP" in media.proto.upper()
            continue
        saw_rtp_audio = True
        offered = [(pt, _codec_of(pt, media)) for pt in _payload_types(media)]
        chosen = next(
            (
                (codec, pt)
                for codec in preference
                for pt, offered_codec in offered
                if offered_codec is codec
            ),
            None,
        )
        if chosen is None:
            continue
        codec, payload_type = chosen
        remote_host = media.connection or offer.connection
        if remote_host is None:
            raise OfferRejected("No connection address in the offer")
        direction = offer.media_direction(index).reversed()
        if remote_host in HOLD_ADDRESSES:
            # RFC 3264 §8.4: the old way of putting a call on hold (RFC 2543).
            direction = Direction.INACTIVE
        ptime = media.ptime or _ptime(offer.attribute("ptime") or "") or 20
        return NegotiatedAudio(
            codec=codec,
            payload_type=payload_type,
            dtmf_payload_type=_dtmf_payload_type(media),
            remote_host=remote_host,
            remote_port=media.port,
            direction=direction,
            ptime=ptime,
            audio_index=index,
        )
    if saw_rtp_audio:
        raise OfferRejected("No common codec")
    if saw_secure_audio:
        raise OfferRejected("SRTP is not supported")
    raise OfferRejected("No audio stream in the offer")


def _address_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _session_lines(*, user: str, session_id: int, version: int, address: str) -> list[str]:
    address_type = _address_type(address)
    return [
        "v=0",
        f"o={user} {session_id} {version} IN {address_type} {address}",
        "s=-",
        f"c=IN {address_type} {address}",
        "t=0 0",
    ]


def _audio_lines(
    negotiated: NegotiatedAudio, *, port: int, proto: str, direction: Direction
) -> list[str]:
    formats = [str(negotiated.payload_type)]
    dtmf = negotiated.dtmf_payload_type
    if dtmf is not None:
        formats.append(str(dtmf))
    lines = [
        f"m=audio {port} {proto} {' '.join(formats)}",
        f"a=rtpmap:{negotiated.payload_type} {negotiated.codec.value}/8000",
    ]
    if dtmf is not None:
        lines += [f"a=rtpmap:{dtmf} {TELEPHONE_EVENT}", f"a=fmtp:{dtmf} 0-16"]
    lines += ["a=ptime:20", f"a={direction.value}"]
    return lines


def _encode(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def build_answer(
    offer: SessionDescription,
    negotiated: NegotiatedAudio,
    *,
    address: str,
    port: int,
    session_id: int,
    version: int,
    direction: Direction | None = None,
    user: str = "bridge",
) -> bytes:
    """RFC 3264 §6: same number and order of m-lines; the audio m-line gets our port and only the
    chosen PT plus the offer's telephone-event PT (``a=fmtp:<pt> 0-16``), a=rtpmap lines,
    a=ptime:20 and the direction (negotiated.direction unless overridden); every other m-line is
    refused with port 0 and its own formats. IPv6 addresses give IP6. CRLF line ends."""
    lines = _session_lines(user=user, session_id=session_id, version=version, address=address)
    for index, media in enumerate(offer.media):
        if index == negotiated.audio_index:
            lines += _audio_lines(
                negotiated,
                port=port,
                proto=media.proto,
                direction=direction or negotiated.direction,
            )
        else:
            formats = "".join(f" {f}" for f in media.formats)
            lines.append(f"m={media.media} 0 {media.proto}{formats}")
    return _encode(lines)


def build_offer(
    negotiated: NegotiatedAudio,
    *,
    address: str,
    port: int,
    session_id: int,
    version: int,
    user: str = "bridge",
) -> bytes:
    """Our current description as an offer (a re-INVITE without SDP, RFC 3261 §14.2): one audio
    m-line with the call's codec, and telephone-event when the call has it."""
    lines = _session_lines(user=user, session_id=session_id, version=version, address=address)
    lines += _audio_lines(negotiated, port=port, proto="RTP/AVP", direction=negotiated.direction)
    return _encode(lines)
