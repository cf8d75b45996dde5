"""One call's RTP media as a sans-IO core (RFC 3550 §5.1, RFC 4733, RFC 3389, RFC 4961;
protocols.md §4).

The trio adapter owns the socket and one shared 20 ms tick for every call. It feeds each datagram
to :meth:`RtpSession.receive_datagram`, calls :meth:`RtpSession.tick` once per 20 ms slot on an
absolute schedule and sends what it returns to :attr:`RtpSession.destination`, and reads
:meth:`RtpSession.next_event` for the call's control loop. The session reads no clock and draws
its SSRC, first sequence number and first timestamp from the injected `rng`.

Theory of operation, outbound (we are the pacer)
------------------------------------------------
Each tick is one 20 ms slot of media time and puts at most one packet on the wire, chosen in this
order:

1. a telephone event while digits are being sent (:meth:`send_dtmf`): each key press is the
   payloads of :func:`~bridge.proto.rtp.dtmf.dtmf_payloads`, one per tick, all stamped with the
   timestamp of the tick it started on, M=1 on its first packet, with `gap_ms` of silence frames
   between two presses; queued audio waits meanwhile;
2. else the next queued 20 ms frame of model audio (:meth:`play`);
3. else a silence frame: RTP never stops while we send, because peers hang up on an RTP timeout
   and NAT pinholes close.

The sequence number grows by one a packet; the timestamp grows by 160 a slot of *media time*, so
it also grows through slots where nothing is sent: while the direction forbids sending (hold:
recvonly or inactive), while no destination is known, and across slots the adapter skipped when
it fell behind (`elapsed_frames` > 1, counted in `ticks_skipped`). The first packet after any such
discontinuity, and the very first packet, carry M=1 (RFC 3551 §4.1). Telephone-event packets
carry M=1 only on an event's first packet (RFC 4733 §2.5.1.2); a pending discontinuity mark
waits for the next audio packet.

What the caller heard is what went on the wire: each tick that sends a frame of item X adds 160
to played[X] and queues ``AudioPlayed(X, played[X])``. :meth:`clear` drops queued frames, which
are never counted. The call truncates an interrupted reply from exactly these counts.

Theory of operation, inbound
----------------------------
A datagram whose second byte is an RTCP packet type is ignored (we do not multiplex RTCP, but a
peer may send it to the RTP port anyway). Unparseable datagrams count as `malformed`.

Latching (symmetric RTP, RFC 4961; protocols.md §4.5): we send to where the peer's media comes
from, which behind NAT is not the SDP address. But the port we receive on is even and from a
known range, so anyone who guesses it can send to it: a source other than the SDP address must
prove itself with LATCH_CONFIRM_PACKETS (3) consecutive valid packets, none from the latched
source or the SDP address in between, and may take over only while the window is open. The
window opens with the first latch and lasts `latch_window_s`. The SDP address (host and port,
from our peer's own signalling) needs no proof. States:

==========  ===============================================  =====================================
state       datagram from                                    effect
==========  ===============================================  =====================================
any         the SDP address                                  accepted; latch to it (if not yet);
                                                             the candidate is forgotten
any         the latched source                               accepted; the candidate is forgotten
UNLATCHED   another source, 1st or 2nd consecutive packet    dropped (`wrong_source`), candidate
UNLATCHED   the candidate, 3rd consecutive packet            latch to it, accepted; window opens
WINDOW      another source, 1st or 2nd consecutive packet    dropped (`wrong_source`), candidate
WINDOW      the candidate, 3rd consecutive packet            re-latch to it, accepted
LATCHED     another source (window of `latch_window_s` over)  dropped (`wrong_source`)
==========  ===============================================  =====================================

A peer without a usable SDP address (``remote=None``: c=0.0.0.0, a host name) is latched the
same way: the first source with three consecutive packets. The price of the proof: the first two
packets of a NATed peer are dropped (40 ms of caller audio at the start of the call, which the
jitter buffer never sees, so nothing is concealed), and a re-latch mid-call drops two packets of
a running stream, which the jitter buffer conceals as two lost frames of silence.

:meth:`update_remote` (a re-INVITE) sets the new SDP address and returns to UNLATCHED, so a peer
that moved (a transfer, a relay, a NAT binding that changed during a hold) is learnt again. Until
a source latches, :attr:`destination` is the SDP address. It may also change the payload types:
a new audio PT resets the jitter buffer (what it held is released first), a new telephone-event
PT resets the DTMF receiver (and drops queued outbound digits when the call has none any more),
and the next packet we send already carries the new audio PT.

Accepted packets are demultiplexed by payload type: the call's audio PT goes through the
:class:`~bridge.proto.rtp.jitter.JitterBuffer` and comes out as :class:`CallerAudio`, one per
released payload; the telephone-event PT through the
:class:`~bridge.proto.rtp.dtmf.DtmfReceiver` as :class:`CallerDtmf`; comfort noise (PT 13,
RFC 3389) starts a silence period in which each tick emits one silence frame (one per slot) as
:class:`CallerAudio`, so the model's voice activity detection hears the pause, until audio
resumes; any other payload type (sipp sends PT 97 "no-op") is counted and ignored. Packets of
these other types still tell the jitter buffer which sequence numbers of the audio stream they
used, so it does not wait for audio that never comes. The jitter buffer's time limits are
applied on every tick. The session accepts inbound media whatever the
direction: a peer that sends while it said it would not still reaches the model.
"""

from __future__ import annotations

import ipaddress
import math
import random
import struct
from collections import deque

import attrs

from bridge.call.events import AudioPlayed, CallerAudio, CallerDtmf, Codec
from bridge.media.g711 import FRAME_BYTES, FRAME_MS, silence
from bridge.proto.rtp.dtmf import DIGITS, DtmfReceiver, dtmf_payloads
from bridge.proto.rtp.jitter import JitterBuffer, JitterStatistics
from bridge.proto.rtp.packet import (
    MAX_PAYLOAD_TYPE,
    RTP_VERSION,
    RtpPacket,
    RtpParseError,
    looks_like_rtcp,
)
from bridge.proto.sip.sdp import Direction

COMFORT_NOISE_PAYLOAD_TYPE = 13
# Consecutive packets a source other than the SDP address sends before it is latched (RFC 4961
# latching with Asterisk-style strict-RTP probation, protocols.md §4.5).
LATCH_CONFIRM_PACKETS = 3
UNCHANGED = -1
"""update_remote()'s `dtmf_payload_type` default: keep the telephone-event PT (None means the
call has none any more)."""

_HEADER = struct.Struct("!BBHII")
_FIRST_BYTE = RTP_VERSION << 6
_MARKER = 0x80
_TIMESTAMP_MASK = 0xFFFFFFFF
_SEQUENCE_MASK = 0xFFFF

SessionEvent = CallerAudio | CallerDtmf | AudioPlayed


# the direction is our side's, as in our SDP answer
_SENDING = frozenset({Direction.SENDRECV, Direction.SENDONLY})


@attrs.frozen(kw_only=True)
class RtpStatistics:
    """Counters of one call's RTP.

    Inbound: `packets_in` and `bytes_in` (whole datagrams) count packets accepted from the peer;
    `malformed`, `wrong_source`, `rtcp_ignored` and `unknown_payload_type` count what was
    dropped; `comfort_noise` counts CN packets, `dtmf_in` digits reported, `ssrc_changes` new
    SSRCs on the audio stream. Outbound: `packets_out` = `audio_frames_out` +
    `silence_frames_out` + `dtmf_packets_out`; `cleared_frames` were queued and dropped by
    clear(); `ticks_skipped` counts the 20 ms slots the adapter skipped.
    """

    packets_in: int
    bytes_in: int
    malformed: int
    wrong_source: int
    rtcp_ignored: int
    unknown_payload_type: int
    comfort_noise: int
    dtmf_in: int
    ssrc_changes: int
    jitter: JitterStatistics
    packets_out: int
    audio_frames_out: int
    silence_frames_out: int
    dtmf_packets_out: int
    cleared_frames: int
    ticks_skipped: int


class _Segment:
    """Queued audio of one item; `offset` is where its next frame starts in `payload`."""

    __slots__ = ("item_id", "offset", "payload")

    def __init__(self, item_id: str, payload: bytes) -> None:
        self.item_id = item_id
        self.payload = payload
        self.offset = 0


class RtpSession:
    """One call's media: pacer, playout queue, DTMF, latching and caller audio (see module doc)."""

    def __init__(
        self,
        *,
        codec: Codec,
        payload_type: int,
        dtmf_payload_type: int | None,
        remote: tuple[str, int] | None,
        direction: Direction,
        rng: random.Random,
        now: float,
        latch_window_s: float = 2.0,
        jitter_depth_frames: int = 3,
    ) -> None:
        _check_payload_types(payload_type, dtmf_payload_type)
        self._codec = codec
        self._payload_type = payload_type
        self._dtmf_payload_type = dtmf_payload_type
        self._remote = remote
        self._sdp_source = _comparable(remote)
        self._direction = direction
        self._created_at = now
        self._latch_window_s = latch_window_s
        self._silence_frame = silence(codec, FRAME_BYTES)
        self._events: deque[SessionEvent] = deque()
        # inbound
        self._jitter_depth_frames = jitter_depth_frames
        self._jitter = self._new_jitter_buffer()
        # counters of the jitter buffers an audio payload type change retired
        self._retired_jitter: JitterStatistics | None = None
        self._dtmf_receiver = DtmfReceiver()
        self._latched: tuple[str, int] | None = None
        self._latch_window_ends = now
        self._candidate: tuple[str, int] | None = None
        self._candidate_packets = 0
        self._last_received_at: float | None = None
        self._in_comfort_noise = False
        # outbound
        self._ssrc = rng.getrandbits(32)
        self._sequence = rng.getrandbits(16)
        # advanced by one slot before each tick's packet, so the first packet carries rng's value
        self._timestamp = (rng.getrandbits(32) - FRAME_BYTES) & _TIMESTAMP_MASK
        self._discontinuity = True
        self._queue: deque[_Segment] = deque()
        self._queued_frames = 0
        self._played: dict[str, int] = {}
        # one entry a tick: a telephone-event payload (True if it starts an event) or None for a
        # silence frame between two presses
        self._dtmf_steps: deque[tuple[bytes | None, bool]] = deque()
        self._event_timestamp = 0
        # counters
        self._packets_in = 0
        self._bytes_in = 0
        self._malformed = 0
        self._wrong_source = 0
        self._rtcp_ignored = 0
        self._unknown_payload_type = 0
        self._comfort_noise = 0
        self._dtmf_in = 0
        self._packets_out = 0
        self._audio_frames_out = 0
        self._silence_frames_out = 0
        self._dtmf_packets_out = 0
        self._cleared_frames = 0
        self._ticks_skipped = 0

    # ---- inbound --------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> None:
        """Take one datagram that arrived on the call's RTP port from `source` at `now`."""
        if looks_like_rtcp(data):
            self._rtcp_ignored += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpParseError:
            self._malformed += 1
            return
        if not self._accept_source(source, now):
            self._wrong_source += 1
            return
        self._packets_in += 1
        self._bytes_in += len(data)
        self._last_received_at = now
        payload_type = packet.payload_type
        if payload_type == self._payload_type:
            self._in_comfort_noise = False
            self._jitter.push(packet, now)
            self._emit_caller_audio(now)
            return
        # Whatever else it carries, it may have taken a sequence number of the audio stream.
        self._jitter.skip(packet, now)
        self._emit_caller_audio(now)
        if payload_type == self._dtmf_payload_type:
            try:
                digit = self._dtmf_receiver.receive(packet, now)
            except RtpParseError:
                self._malformed += 1
                return
            if digit is not None:
                self._dtmf_in += 1
                self._events.append(CallerDtmf(digit))
        elif payload_type == COMFORT_NOISE_PAYLOAD_TYPE:
            self._comfort_noise += 1
            self._in_comfort_noise = True
        else:
            self._unknown_payload_type += 1

    def next_event(self) -> CallerAudio | CallerDtmf | AudioPlayed | None:
        """The oldest event for the call's control loop, or None."""
        return self._events.popleft() if self._events else None

    @property
    def last_received_at(self) -> float | None:
        """`now` of the last valid packet accepted from the peer (for an RTP timeout)."""
        return self._last_received_at

    # ---- outbound -------------------------------------------------------------------------------

    def play(self, item_id: str, payload: bytes) -> None:
        """Queue model audio of item `item_id`: whole 160-byte frames (ValueError otherwise)."""
        if len(payload) % FRAME_BYTES:
            raise ValueError(f"{len(payload)} bytes is not a whole number of 20 ms frames")
        if payload:
            self._queue.append(_Segment(item_id, bytes(payload)))
            self._queued_frames += len(payload) // FRAME_BYTES

    def clear(self) -> None:
        """Drop everything queued at once (barge-in); none of it counts as played."""
        self._cleared_frames += self._queued_frames
        self._queue.clear()
        self._queued_frames = 0

    def send_dtmf(self, digits: str, *, duration_ms: int = 100, gap_ms: int = 60) -> None:
        """Queue key presses (0-9 * # A-D) to send as telephone events ahead of queued audio.

        Raises ValueError for any other digit, a bad duration or gap, or when the call
        negotiated no telephone-event payload type; then nothing is queued.
        """
        if self._dtmf_payload_type is None:
            raise ValueError("the call negotiated no telephone-event payload type")
        if gap_ms < 0:
            raise ValueError(f"gap of {gap_ms} ms is negative")
        bad = [digit for digit in digits if digit not in DIGITS]
        if bad:
            raise ValueError(f"{''.join(bad)!r}: DTMF digits are {DIGITS}")
        presses = [dtmf_payloads(digit, duration_ms=duration_ms) for digit in digits]
        gap: list[tuple[bytes | None, bool]] = [(None, False)] * math.ceil(gap_ms / FRAME_MS)
        steps = self._dtmf_steps
        for payloads in presses:
            if steps:
                steps.extend(gap)
            steps.append((payloads[0], True))
            steps.extend((payload, False) for payload in payloads[1:])

    def tick(self, now: float, *, elapsed_frames: int = 1) -> bytes | None:
        """One 20 ms slot (or `elapsed_frames` slots, when the adapter fell behind) at `now`.

        Applies the inbound time limits, then returns the one packet to send now, or None when
        we must not send (hold, no destination).
        """
        if elapsed_frames < 1:
            raise ValueError(f"elapsed_frames {elapsed_frames} must be at least 1")
        self._emit_caller_audio(now)
        if self._in_comfort_noise:
            # one frame a slot, skipped slots included, so the model's time base stays whole
            self._events.append(CallerAudio(self._silence_frame * elapsed_frames))
        timestamp = self._timestamp = (
            self._timestamp + FRAME_BYTES * elapsed_frames
        ) & _TIMESTAMP_MASK
        if elapsed_frames > 1:
            self._ticks_skipped += elapsed_frames - 1
            self._discontinuity = True
        if self._direction not in _SENDING or self.destination is None:
            self._discontinuity = True
            return None
        steps = self._dtmf_steps
        if steps:
            event_payload, starts_event = steps.popleft()
            if event_payload is not None:
                event_payload_type = self._dtmf_payload_type
                assert event_payload_type is not None  # send_dtmf() refuses without one
                if starts_event:
                    self._event_timestamp = timestamp
                self._dtmf_packets_out += 1
                return self._packet(
                    event_payload_type,
                    starts_event,
                    self._event_timestamp,
                    event_payload,
                )
        elif self._queue:
            return self._audio_packet(timestamp)
        self._silence_frames_out += 1
        return self._media_packet(timestamp, self._silence_frame)

    @property
    def destination(self) -> tuple[str, int] | None:
        """Where our packets go: the latched source, else the SDP address, else None."""
        return self._latched if self._latched is not None else self._remote

    @property
    def queued_frames(self) -> int:
        """20 ms frames of model audio waiting to be sent."""
        return self._queued_frames

    def update_remote(
        self,
        remote: tuple[str, int] | None,
        direction: Direction,
        now: float,
        *,
        payload_type: int | None = None,
        dtmf_payload_type: int | None = UNCHANGED,
    ) -> None:
        """A re-INVITE's new SDP address, direction and payload types; latching starts afresh.

        `payload_type` None keeps the audio PT; `dtmf_payload_type` UNCHANGED keeps the
        telephone-event PT and None removes it. ValueError (and nothing changes) for a PT out of
        0..127 or audio and telephone-event on the same PT.
        """
        new_payload_type = self._payload_type if payload_type is None else payload_type
        new_dtmf_payload_type = (
            self._dtmf_payload_type if dtmf_payload_type == UNCHANGED else dtmf_payload_type
        )
        _check_payload_types(new_payload_type, new_dtmf_payload_type)
        self._remote = remote
        self._sdp_source = _comparable(remote)
        self._direction = direction
        self._latched = None
        self._forget_candidate()
        if new_payload_type != self._payload_type:
            self._payload_type = new_payload_type
            self._retire_jitter_buffer()
        if new_dtmf_payload_type != self._dtmf_payload_type:
            self._dtmf_payload_type = new_dtmf_payload_type
            # a digit already reported under the old PT must not be swallowed as a repeat
            self._dtmf_receiver = DtmfReceiver()
            if new_dtmf_payload_type is None:
                self._dtmf_steps.clear()  # nothing to send them with any more

    def statistics(self) -> RtpStatistics:
        jitter = self._jitter.statistics()
        if self._retired_jitter is not None:
            jitter = _add_jitter_statistics(self._retired_jitter, jitter)
        return RtpStatistics(
            packets_in=self._packets_in,
            bytes_in=self._bytes_in,
            malformed=self._malformed,
            wrong_source=self._wrong_source,
            rtcp_ignored=self._rtcp_ignored,
            unknown_payload_type=self._unknown_payload_type,
            comfort_noise=self._comfort_noise,
            dtmf_in=self._dtmf_in,
            ssrc_changes=jitter.ssrc_changes,
            jitter=jitter,
            packets_out=self._packets_out,
            audio_frames_out=self._audio_frames_out,
            silence_frames_out=self._silence_frames_out,
            dtmf_packets_out=self._dtmf_packets_out,
            cleared_frames=self._cleared_frames,
            ticks_skipped=self._ticks_skipped,
        )

    # ---- internals ------------------------------------------------------------------------------

    def _accept_source(self, source: tuple[str, int], now: float) -> bool:
        """Latching (RFC 4961): see the table in the module docstring."""
        latched = self._latched
        if source == latched:
            self._forget_candidate()
            return True
        if source == self._sdp_source:
            # what the peer's own signalling named: no proof needed, at any time
            self._latch(source, now)
            return True
        if latched is not None and now >= self._latch_window_ends:
            return False
        if source == self._candidate:
            self._candidate_packets += 1
        else:
            self._candidate = source
            self._candidate_packets = 1
        if self._candidate_packets < LATCH_CONFIRM_PACKETS:
            # Dropped, not buffered: an injected packet must never reach the model. A NATed peer
            # loses its first LATCH_CONFIRM_PACKETS - 1 packets (40 ms) to this.
            return False
        self._latch(source, now)
        return True

    def _latch(self, source: tuple[str, int], now: float) -> None:
        if self._latched is None:
            self._latch_window_ends = now + self._latch_window_s
        self._latched = source
        self._forget_candidate()

    def _forget_candidate(self) -> None:
        self._candidate = None
        self._candidate_packets = 0

    def _new_jitter_buffer(self) -> JitterBuffer:
        return JitterBuffer(
            depth_frames=self._jitter_depth_frames, silence_byte=self._silence_frame[0]
        )

    def _retire_jitter_buffer(self) -> None:
        """Start a new jitter buffer for the new audio PT; what the old one holds comes out
        first (its holes given up at once), and its counters live on in statistics()."""
        old = self._jitter
        for payload in old.pop_ready(math.inf):
            if payload:
                self._events.append(CallerAudio(payload))
        retired = old.statistics()
        if self._retired_jitter is not None:
            retired = _add_jitter_statistics(self._retired_jitter, retired)
        self._retired_jitter = attrs.evolve(retired, buffered=0)
        self._jitter = self._new_jitter_buffer()

    def _emit_caller_audio(self, now: float) -> None:
        events = self._events
        for payload in self._jitter.pop_ready(now):
            if payload:
                events.append(CallerAudio(payload))

    def _audio_packet(self, timestamp: int) -> bytes:
        segment = self._queue[0]
        start = segment.offset
        end = segment.offset = start + FRAME_BYTES
        if end >= len(segment.payload):
            self._queue.popleft()
        self._queued_frames -= 1
        self._audio_frames_out += 1
        item_id = segment.item_id
        played = self._played[item_id] = self._played.get(item_id, 0) + FRAME_BYTES
        self._events.append(AudioPlayed(item_id, played))
        return self._media_packet(timestamp, segment.payload[start:end])

    def _media_packet(self, timestamp: int, payload: bytes) -> bytes:
        marker = self._discontinuity
        self._discontinuity = False
        return self._packet(self._payload_type, marker, timestamp, payload)

    def _packet(self, payload_type: int, marker: bool, timestamp: int, payload: bytes) -> bytes:
        sequence = self._sequence
        self._sequence = (sequence + 1) & _SEQUENCE_MASK
        self._packets_out += 1
        second = _MARKER | payload_type if marker else payload_type
        return _HEADER.pack(_FIRST_BYTE, second, sequence, timestamp, self._ssrc) + payload


def _check_payload_types(payload_type: int, dtmf_payload_type: int | None) -> None:
    for value in (payload_type, dtmf_payload_type):
        if value is not None and not 0 <= value <= MAX_PAYLOAD_TYPE:
            raise ValueError(f"payload type {value} is not 0..{MAX_PAYLOAD_TYPE}")
    if dtmf_payload_type == payload_type:
        raise ValueError("audio and telephone-event need different payload types")


def _comparable(address: tuple[str, int] | None) -> tuple[str, int] | None:
    """`address` with its host in the form recvfrom() reports, so a packet's source can be
    compared with it as is (an SDP may write an IPv6 address in capitals or uncompressed)."""
    if address is None:
        return None
    host, port = address
    try:
        return (str(ipaddress.ip_address(host)), port)
    except ValueError:
        return address


def _add_jitter_statistics(first: JitterStatistics, second: JitterStatistics) -> JitterStatistics:
    totals = {
        field.name: getattr(first, field.name) + getattr(second, field.name)
        for field in attrs.fields(JitterStatistics)
    }
    totals["buffered"] = second.buffered
    return JitterStatistics(**totals)
