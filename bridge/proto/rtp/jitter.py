"""A low-latency reorder buffer for caller audio (protocols.md §4.6; RFC 3550 §A.1).

The consumer is a speech model, not a sound card: it needs the caller's audio in order and with
its time base intact, but as early as possible. So this is a reorder window, not a playout buffer.

Theory of operation
-------------------
Sequence numbers are 16 bits and wrap; each one is turned into an *extended* sequence number (it
keeps counting past 65535) by taking the signed difference modulo 2^16 to the highest one
received so far. The buffer releases payloads strictly in extended order, tracking `next`, the
extended number it releases next:

* the packet numbered `next` is released at once, with every buffered successor that follows
  without a hole, so a network that loses and reorders nothing adds no latency at all;
* a later packet is held while `next` is missing. The missing packet is waited for until
  `depth_frames` later packets are held, or until `depth_frames` * 20 ms of `now` have passed
  since the oldest held packet arrived (:meth:`JitterBuffer.pop_ready` applies the time limit),
  whichever comes first. Then the hole is given up: each missing packet becomes one silence
  payload as long as the last real one, so the model's clock keeps step with the caller's. A hole
  longer than `max_conceal_frames` is an outage rather than loss; it is skipped without fill;
* a packet numbered below `next` arrived after its turn: a `duplicate` if it was released, `late`
  (dropped) if its hole had been given up or it precedes the packet the stream started with;
* a packet already held is a `duplicate`.

Telephone events, comfort noise and other payload types share the audio stream's SSRC and
sequence numbers when the sender sends them in place of audio. :meth:`JitterBuffer.skip` marks
such a number as used, so the buffer neither waits for it nor conceals it (the session itself
turns comfort noise into silence).

Restarts. A packet with another SSRC is a new stream (re-INVITE, transfer, a PBX re-bridging):
what is held is released in order without fill and the sequence state starts again from that
packet; nothing is counted as lost. Within one SSRC, a jump of more than MAX_DROPOUT (3000)
forward or MAX_MISORDER (100) backward is either a stray packet or a sender that restarted its
numbering without telling us. RFC 3550 §A.1 tells them apart by probation: the far-off packet is
held aside; if the very next packet continues it (its number + 1), the sender restarted, so what
is held is released and the sequence starts again from the held packet (a `reset`). Otherwise it
was `stray` and is dropped.
"""

from __future__ import annotations

from collections import deque

import attrs

from bridge.media.g711 import FRAME_BYTES, FRAME_MS
from bridge.proto.rtp.packet import RtpPacket

MAX_DROPOUT = 3000
MAX_MISORDER = 100
SEQUENCE_MODULUS = 1 << 16
_HALF_MODULUS = SEQUENCE_MODULUS >> 1
# `now` is a float sum of 20 ms steps on the adapter's side; a deadline must not miss its tick
# because 0.02 * 3 is 0.06000000000000001.
_DEADLINE_SLACK_S = 1e-6


@attrs.frozen(kw_only=True)
class JitterStatistics:
    """Counters of one jitter buffer; `buffered` is what it holds now.

    `released` counts real payloads handed out, `lost` the silence payloads put in their place;
    `gaps_skipped` counts holes too long to fill; `stray` counts far-off packets no successor
    confirmed.
    """

    received: int
    released: int
    duplicates: int
    late: int
    reordered: int
    lost: int
    gaps_skipped: int
    ssrc_changes: int
    resets: int
    stray: int
    buffered: int


class JitterBuffer:
    """Reorders one caller's audio packets and conceals what is lost (see the module docstring)."""

    def __init__(
        self, *, depth_frames: int = 3, max_conceal_frames: int = 25, silence_byte: int
    ) -> None:
        if depth_frames < 0 or max_conceal_frames < 0:
            raise ValueError("depth_frames and max_conceal_frames must not be negative")
        self._depth = depth_frames
        self._max_conceal = max_conceal_frames
        self._wait_s = depth_frames * FRAME_MS / 1000 - _DEADLINE_SLACK_S
        self._silence_byte = bytes([silence_byte])
        self._silence: dict[int, bytes] = {}
        self._ssrc: int | None = None
        self._next = 0
        self._highest = 0
        self._held: dict[int, tuple[bytes | None, float]] = {}
        # holes given up on, as [start, stop) extended numbers, to tell late packets from duplicates
        self._given_up: deque[tuple[int, int]] = deque()
        self._probation: RtpPacket | None = None
        self._ready: list[bytes] = []
        self._last_length = FRAME_BYTES
        self._received = 0
        self._released = 0
        self._duplicates = 0
        self._late = 0
        self._reordered = 0
        self._lost = 0
        self._gaps_skipped = 0
        self._ssrc_changes = 0
        self._resets = 0
        self._stray = 0

    def push(self, packet: RtpPacket, now: float) -> None:
        """Take one audio packet that arrived at `now`; what it frees waits for pop_ready()."""
        self._received += 1
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                self._ssrc_changes += 1
                self._release_all_held()
            self._start(packet)
            return
        held_aside = self._probation
        if held_aside is not None:
            self._probation = None
            if packet.sequence == (held_aside.sequence + 1) & 0xFFFF:
                self._restart(held_aside, packet)
                return
            self._stray += 1
        number = self._extended(packet.sequence)
        if number is None:
            self._probation = packet
            return
        self._insert(number, packet.payload, now)

    def skip(self, packet: RtpPacket, now: float) -> None:
        """Note a packet of another payload type (telephone event, comfort noise, no-op).

        When it belongs to the audio stream (same SSRC) it used a sequence number the audio
        never will, so that number is not waited for and not concealed. Anything else about it
        is ignored: it neither starts nor restarts the sequence.
        """
        if self._ssrc is None or packet.ssrc != self._ssrc:
            return
        number = self._extended(packet.sequence)
        if number is not None:
            self._insert(number, None, now)

    def pop_ready(self, now: float) -> list[bytes]:
        """Give up holes waited on long enough by `now`; return every payload released since."""
        held = self._held
        while held and now - min(arrival for _, arrival in held.values()) >= self._wait_s:
            self._give_up_hole()
        ready, self._ready = self._ready, []
        return ready

    def next_deadline(self) -> float | None:
        """When pop_ready() will next give up a hole, or None when nothing is held."""
        if not self._held:
            return None
        return min(arrival for _, arrival in self._held.values()) + self._wait_s

    def statistics(self) -> JitterStatistics:
        return JitterStatistics(
            received=self._received,
            released=self._released,
            duplicates=self._duplicates,
            late=self._late,
            reordered=self._reordered,
            lost=self._lost,
            gaps_skipped=self._gaps_skipped,
            ssrc_changes=self._ssrc_changes,
            resets=self._resets,
            stray=self._stray,
            buffered=len(self._held) + (self._probation is not None),
        )

    # ---- internals ------------------------------------------------------------------------------

    def _start(self, packet: RtpPacket) -> None:
        """Begin a new sequence at `packet`, which is released at once."""
        self._ssrc = packet.ssrc
        self._highest = self._next = packet.sequence
        self._given_up.clear()
        # anything the peer sent before this packet comes after its turn: late, not a duplicate
        self._given_up.append((packet.sequence - MAX_MISORDER, packet.sequence))
        self._probation = None
        self._release(packet.payload)

    def _extended(self, sequence: int) -> int | None:
        """The extended number of `sequence`, or None when it is far off (RFC 3550 §A.1)."""
        delta = ((sequence - self._highest + _HALF_MODULUS) & 0xFFFF) - _HALF_MODULUS
        if delta > MAX_DROPOUT or delta < -MAX_MISORDER:
            return None
        return self._highest + delta

    def _insert(self, number: int, payload: bytes | None, now: float) -> None:
        if number < self._next:
            if self._was_given_up(number):
                self._late += 1
            else:
                self._duplicates += 1
            return
        if number in self._held:
            self._duplicates += 1
            return
        if number > self._highest:
            self._highest = number
        else:
            self._reordered += 1
        if number == self._next:
            self._release(payload)
            self._release_held_run()
        else:
            self._held[number] = (payload, now)
        while len(self._held) >= self._depth and self._held:
            self._give_up_hole()

    def _restart(self, first: RtpPacket, second: RtpPacket) -> None:
        """The sender renumbered: `second` continues `first`, which was far off the sequence."""
        self._resets += 1
        self._release_all_held()
        self._start(first)
        self._highest = self._next
        self._release(second.payload)

    def _release(self, payload: bytes | None) -> None:
        """Hand out the payload numbered `next`; None marks a number another payload type used."""
        self._next += 1
        if payload is None:
            return
        self._ready.append(payload)
        self._released += 1
        if payload:
            self._last_length = len(payload)

    def _release_held_run(self) -> None:
        held = self._held
        while self._next in held:
            self._release(held.pop(self._next)[0])

    def _give_up_hole(self) -> None:
        """Declare the packets before the first held one lost, then release what follows."""
        first = min(self._held)
        missing = first - self._next
        if missing <= self._max_conceal:
            self._ready.extend([self._silence_payload()] * missing)
            self._lost += missing
        else:
            self._gaps_skipped += 1
        given_up = self._given_up
        given_up.append((self._next, first))
        while given_up and given_up[0][1] < self._highest - MAX_MISORDER:
            given_up.popleft()
        self._next = first
        self._release_held_run()

    def _release_all_held(self) -> None:
        """Hand out everything held, in order and without fill (the stream is starting over)."""
        held = self._held
        for number in sorted(held):
            payload = held[number][0]
            if payload is not None:
                self._ready.append(payload)
                self._released += 1
        held.clear()
        if self._probation is not None:
            self._stray += 1
            self._probation = None

    def _was_given_up(self, number: int) -> bool:
        return any(start <= number < stop for start, stop in self._given_up)

    def _silence_payload(self) -> bytes:
        length = self._last_length
        payload = self._silence.get(length)
        if payload is None:
            payload = self._silence[length] = self._silence_byte * length
        return payload
