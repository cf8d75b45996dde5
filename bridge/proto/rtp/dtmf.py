"""RFC 4733 telephone events: the payload (§2.3), receiving (§2.5.2) and sending (§2.5.1).

Theory of operation, receiving
------------------------------
One key press is one *event*: a first packet (M=1), updates every 20-50 ms whose duration grows,
and an end packet (E=1) sent three times, every one of them carrying the same RTP timestamp, the
event's start (protocols.md §4.3 shows sipp's). Sequence numbers go up packet by packet, so they
cannot tell a retransmission from a new press; the pair (SSRC, RTP timestamp) can. The
:class:`DtmfReceiver` reports a digit on the first packet of an event it sees, whichever that is
(start, update, or an end packet when everything before it was lost), which is the lowest latency
and survives any loss but total loss. It then remembers the key for `memory_s` after the event's
latest packet, so the end copies and late retransmissions are absorbed, and forgets it afterwards
so memory stays bounded. Two presses of the same digit have different timestamps and give two
digits.

Sending
-------
:func:`dtmf_payloads` gives the payloads of one key press, one per 20 ms packet: the duration grows
by 160 timestamp units (20 ms at 8 kHz) a packet; the packet that reaches the full duration has
E=1 and is sent three times (§2.5.1.4). The caller (the RTP session) stamps them all with the
event's start timestamp and sets M=1 on the first.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict

import attrs

from bridge.proto.rtp.packet import RtpPacket, RtpParseError

DIGITS = "0123456789*#ABCD"
FLASH = 16
MAX_VOLUME = 63
MAX_DURATION = 0xFFFF
UNITS_PER_FRAME = 160  # 20 ms at the 8 kHz telephone-event clock of G.711 calls
END_COPIES = 3

_EVENT = struct.Struct("!BBH")
_END_BIT = 0x80
_VOLUME_MASK = 0x3F


@attrs.frozen
class TelephoneEvent:
    """One telephone-event payload; `volume` is 0..63 meaning -0..-63 dBm0, `duration` in 1/8 ms."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Read the first 4 bytes (later ones are redundant copies, RFC 4733 §2.3)."""
        if len(payload) < _EVENT.size:
            raise RtpParseError(f"telephone-event payload of {len(payload)} bytes, need 4")
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(
            event=event,
            end=bool(flags & _END_BIT),
            volume=flags & _VOLUME_MASK,
            duration=duration,
        )

    def serialize(self) -> bytes:
        """The 4-byte payload, the reserved bit clear; ValueError if a field is out of range."""
        if not 0 <= self.volume <= MAX_VOLUME:
            raise ValueError(f"volume {self.volume} is not 0..{MAX_VOLUME}")
        try:
            return _EVENT.pack(self.event, _END_BIT * self.end | self.volume, self.duration)
        except struct.error as error:
            raise ValueError(f"telephone event field out of range: {error}") from None

    @property
    def digit(self) -> str | None:
        """The keypad digit, or None for flash (16) and codes that are no digit."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None


class DtmfReceiver:
    """Emits each event once, keyed by (SSRC, RTP timestamp), on the FIRST packet of it seen
    (start, update or end); remembers keys for `memory_s` (default 5 s of `now`) so the three end
    copies and late retransmissions are absorbed. Never de-duplicates by sequence number."""

    def __init__(self, *, memory_s: float = 5.0) -> None:
        if memory_s <= 0:
            raise ValueError("memory_s must be positive")
        self._memory_s = memory_s
        # key -> `now` of its latest packet, oldest first, so expiry only looks at the front
        self._seen: OrderedDict[tuple[int, int], float] = OrderedDict()

    def receive(self, packet: RtpPacket, now: float) -> str | None:
        """The digit this packet starts, or None (already reported, flash, unknown code).

        Raises :class:`RtpParseError` when the payload is shorter than a telephone event.
        """
        event = TelephoneEvent.parse(packet.payload)
        self._forget_before(now - self._memory_s)
        key = (packet.ssrc, packet.timestamp)
        if key in self._seen:
            self._seen[key] = now
            self._seen.move_to_end(key)
            return None
        self._seen[key] = now
        return event.digit

    @property
    def remembered(self) -> int:
        """How many event keys are remembered now."""
        return len(self._seen)

    def _forget_before(self, horizon: float) -> None:
        seen = self._seen
        while seen:
            key, last = next(iter(seen.items()))
            if last > horizon:
                return
            del seen[key]


def dtmf_payloads(digit: str, *, duration_ms: int = 100, volume: int = 10) -> list[bytes]:
    """The event payloads to send one per 20 ms for one key press: durations 160, 320, ... up to
    duration_ms*8, then the end payload three times (RFC 4733 §2.5.1.4).

    The packet that reaches duration_ms*8 is the first of the three end copies, so a 100 ms press
    is 160, 320, 480, 640 and then 800 with E=1, three times: seven packets.
    """
    if len(digit) != 1 or digit not in DIGITS:
        raise ValueError(f"{digit!r} is not a DTMF digit (one of {DIGITS})")
    total = duration_ms * 8
    if not 0 < total <= MAX_DURATION:
        raise ValueError(f"duration {duration_ms} ms is not 1..{MAX_DURATION // 8} ms")
    event = DIGITS.index(digit)
    frames = math.ceil(total / UNITS_PER_FRAME)
    payloads = [
        TelephoneEvent(event, False, volume, n * UNITS_PER_FRAME).serialize()
        for n in range(1, frames)
    ]
    payloads += [TelephoneEvent(event, True, volume, total).serialize()] * END_COPIES
    return payloads
