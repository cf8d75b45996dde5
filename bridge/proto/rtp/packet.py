"""RTP fixed header, CSRC list, header extension and padding (RFC 3550 §5.1, §5.3.1).

:meth:`RtpPacket.parse` accepts what a G.711 peer may send us: version 2 only, the CSRC list and a
header extension (some SBCs add one) are read past and kept, padding is stripped. Anything short or
inconsistent raises :class:`RtpParseError` and nothing else, so the session can count and drop a
bad datagram without guarding against surprises. :func:`looks_like_rtcp` tells RTCP apart on a port
that might carry both (RFC 5761 §4).
"""

from __future__ import annotations

import struct

import attrs

RTP_VERSION = 2
HEADER_BYTES = 12
MAX_PAYLOAD_TYPE = 0x7F
MAX_CSRCS = 0x0F

_FIXED_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
# RTCP packet types SR, RR, SDES, BYE and APP (RFC 3550 §12.1) sit where M + PT would be.
_RTCP_TYPES = range(200, 205)


class RtpParseError(ValueError):
    """The datagram is not a well-formed RTP packet."""


@attrs.frozen
class RtpPacket:
    """One RTP packet; `extension` is the header extension as (profile, data), kept unread."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Read one datagram; raise :class:`RtpParseError` when it is not version-2 RTP."""
        size = len(data)
        if size < HEADER_BYTES:
            raise RtpParseError(f"{size} bytes is shorter than the RTP header")
        first, second, sequence, timestamp, ssrc = _FIXED_HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise RtpParseError(f"RTP version {first >> 6}, expected {RTP_VERSION}")
        csrc_count = first & 0x0F
        offset = HEADER_BYTES + 4 * csrc_count
        if size < offset:
            raise RtpParseError(f"{size} bytes cannot hold {csrc_count} CSRCs")
        csrcs: tuple[int, ...] = ()
        if csrc_count:
            csrcs = struct.unpack_from(f"!{csrc_count}I", data, HEADER_BYTES)
        extension = None
        if first & 0x10:
            if size < offset + 4:
                raise RtpParseError("header extension flag set but no extension header")
            profile, words = _EXTENSION_HEADER.unpack_from(data, offset)
            start = offset + 4
            offset = start + 4 * words
            if size < offset:
                raise RtpParseError(f"header extension of {words} words runs past the packet")
            extension = (profile, bytes(data[start:offset]))
        end = size
        if first & 0x20:
            # The last byte counts the padding, itself included (RFC 3550 §5.1 "padding").
            padding = data[-1]
            if padding == 0 or padding > size - offset:
                raise RtpParseError(f"padding count {padding} does not fit the packet")
            end -= padding
        return cls(
            payload_type=second & MAX_PAYLOAD_TYPE,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & 0x80),
            csrcs=csrcs,
            extension=extension,
        )

    def serialize(self) -> bytes:
        """The packet on the wire, without padding; ValueError if a field is out of range."""
        if not 0 <= self.payload_type <= MAX_PAYLOAD_TYPE:
            raise ValueError(f"payload type {self.payload_type} is not 0..127")
        if len(self.csrcs) > MAX_CSRCS:
            raise ValueError(f"{len(self.csrcs)} CSRCs, at most {MAX_CSRCS} fit")
        first = RTP_VERSION << 6 | len(self.csrcs)
        tail = b""
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4:
                raise ValueError("header extension data must be whole 32-bit words")
            first |= 0x10
            try:
                tail = _EXTENSION_HEADER.pack(profile, len(data) // 4) + data
            except struct.error as error:
                raise ValueError(f"header extension: {error}") from None
        try:
            header = _FIXED_HEADER.pack(
                first,
                self.marker << 7 | self.payload_type,
                self.sequence,
                self.timestamp,
                self.ssrc,
            )
            csrcs = struct.pack(f"!{len(self.csrcs)}I", *self.csrcs)
        except struct.error as error:
            raise ValueError(f"RTP header field out of range: {error}") from None
        return header + csrcs + tail + self.payload


def looks_like_rtcp(data: bytes) -> bool:
    """True when the second byte is an RTCP packet type (RFC 5761 §4), so it is not RTP."""
    return len(data) >= 2 and data[1] in _RTCP_TYPES
