from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from bridge.call.events import AudioPlayed, CallerAudio, CallerDtmf, Codec
from bridge.proto.rtp.dtmf import DtmfReceiver, TelephoneEvent
from bridge.proto.rtp.packet import RtpPacket
from bridge.proto.rtp.session import UNCHANGED, RtpSession, RtpStatistics
from bridge.proto.sip.sdp import Direction

REMOTE = ("192.0.2.10", 40000)
NAT = ("198.51.100.7", 61000)
OTHER = ("203.0.113.99", 5004)
PEER_SSRC = 0xCAFE
DTMF_PT = 101
ULAW_SILENCE = b"\xff" * 160
ALAW_SILENCE = b"\xd5" * 160
TICK = 0.02


class FixedRandom(random.Random):
    """A random.Random whose getrandbits() hands out chosen values: SSRC, sequence, timestamp."""

    def __init__(self, *values: int) -> None:
        super().__init__(0)
        self.values = list(values)

    def getrandbits(self, k: int, /) -> int:
        return self.values.pop(0)


def new_session(**options: Any) -> RtpSession:
    arguments: dict[str, Any] = {
        "codec": Codec.PCMU,
        "payload_type": 0,
        "dtmf_payload_type": DTMF_PT,
        "remote": REMOTE,
        "direction": Direction.SENDRECV,
        "rng": random.Random(7),
        "now": 0.0,
    }
    arguments.update(options)
    return RtpSession(**arguments)


def frames(tag: int, count: int) -> bytes:
    return b"".join(bytes([tag, n]) + bytes([tag]) * 158 for n in range(count))


def frame(tag: int, n: int) -> bytes:
    return bytes([tag, n]) + bytes([tag]) * 158


def ticks(session: RtpSession, count: int, start: float = 0.0) -> list[RtpPacket]:
    sent = []
    for n in range(count):
        data = session.tick(start + n * TICK)
        assert data is not None
        sent.append(RtpPacket.parse(data))
    return sent


def events(session: RtpSession) -> list[object]:
    out: list[object] = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def audio_datagram(sequence: int, payload: bytes, *, ssrc: int = PEER_SSRC, pt: int = 0) -> bytes:
    return RtpPacket(pt, sequence & 0xFFFF, sequence * 160 & 0xFFFFFFFF, ssrc, payload).serialize()


def assert_continuous(packets: list[RtpPacket]) -> None:
    for before, after in itertools.pairwise(packets):
        assert after.sequence == (before.sequence + 1) & 0xFFFF
        assert after.ssrc == before.ssrc


# ---- outbound ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "silence"), [(Codec.PCMU, ULAW_SILENCE), (Codec.PCMA, ALAW_SILENCE)]
)
def test_fifty_ticks_of_silence(codec: Codec, silence: bytes) -> None:
    session = new_session(codec=codec, payload_type=0 if codec is Codec.PCMU else 8)
    sent = ticks(session, 50)
    expected = random.Random(7)
    ssrc, sequence, timestamp = (
        expected.getrandbits(32),
        expected.getrandbits(16),
        expected.getrandbits(32),
    )
    for n, packet in enumerate(sent):
        assert packet == RtpPacket(
            0 if codec is Codec.PCMU else 8,
            (sequence + n) & 0xFFFF,
            (timestamp + 160 * n) & 0xFFFFFFFF,
            ssrc,
            silence,
            marker=n == 0,
        )
    stats = session.statistics()
    assert (stats.packets_out, stats.silence_frames_out, stats.audio_frames_out) == (50, 50, 0)
    assert events(session) == []


def test_header_is_twelve_bytes_and_payload_follows() -> None:
    session = new_session(rng=FixedRandom(0x1A2B3C4D, 0x4D2E, 1_000_000))
    session.play("a", frames(1, 2))
    first, second = session.tick(0.0), session.tick(TICK)
    assert first == bytes.fromhex("80804d2e000f42401a2b3c4d") + frame(1, 0)
    assert second == bytes.fromhex("80004d2f000f42e01a2b3c4d") + frame(1, 1)


def test_sequence_and_timestamp_wrap() -> None:
    session = new_session(rng=FixedRandom(5, 0xFFFE, 0xFFFFFE00))
    sent = ticks(session, 4)
    assert [p.sequence for p in sent] == [0xFFFE, 0xFFFF, 0, 1]
    assert [p.timestamp for p in sent] == [0xFFFFFE00, 0xFFFFFEA0, 0xFFFFFF40, 0xFFFFFFE0 + 0]
    session.tick(4 * TICK)
    last = RtpPacket.parse(session.tick(5 * TICK) or b"")
    assert (last.sequence, last.timestamp, last.marker) == (3, 0x120, False)


def test_queued_frames_go_out_in_order_and_played_counts_what_went_out() -> None:
    session = new_session()
    session.play("a", frames(1, 3))
    session.play("b", frames(2, 2))
    assert session.queued_frames == 5
    reported = []
    payloads = []
    for n in range(7):
        payloads.append(ticks(session, 1, n * TICK)[0].payload)
        reported.append(events(session))
    assert payloads == [
        frame(1, 0),
        frame(1, 1),
        frame(1, 2),
        frame(2, 0),
        frame(2, 1),
        ULAW_SILENCE,
        ULAW_SILENCE,
    ]
    assert reported == [
        [AudioPlayed("a", 160)],
        [AudioPlayed("a", 320)],
        [AudioPlayed("a", 480)],
        [AudioPlayed("b", 160)],
        [AudioPlayed("b", 320)],
        [],
        [],
    ]
    stats = session.statistics()
    assert (stats.audio_frames_out, stats.silence_frames_out, stats.packets_out) == (5, 2, 7)
    assert session.queued_frames == 0


def test_item_played_in_several_pieces_counts_on() -> None:
    session = new_session()
    session.play("a", frames(1, 1))
    session.play("a", frames(3, 1))
    ticks(session, 2)
    assert events(session) == [AudioPlayed("a", 160), AudioPlayed("a", 320)]


def test_clear_mid_item_drops_the_rest_uncounted() -> None:
    session = new_session()
    session.play("a", frames(1, 5))
    session.play("b", frames(2, 5))
    sent = ticks(session, 2)
    session.clear()
    assert session.queued_frames == 0
    sent += ticks(session, 2, 2 * TICK)
    assert [p.payload for p in sent] == [frame(1, 0), frame(1, 1), ULAW_SILENCE, ULAW_SILENCE]
    assert events(session) == [AudioPlayed("a", 160), AudioPlayed("a", 320)]
    assert session.statistics().cleared_frames == 8
    assert_continuous(sent)
    # the wire count goes on from what really went out
    session.play("a", frames(4, 1))
    ticks(session, 1, 4 * TICK)
    assert events(session) == [AudioPlayed("a", 480)]


def test_play_refuses_partial_frames() -> None:
    session = new_session()
    with pytest.raises(ValueError, match="whole number"):
        session.play("a", b"\xff" * 100)
    session.play("a", b"")
    assert session.queued_frames == 0


def test_dtmf_send() -> None:
    session = new_session()
    session.play("a", frames(1, 2))
    first = ticks(session, 1)  # audio is flowing
    session.send_dtmf("19", duration_ms=100, gap_ms=60)
    sent = first + ticks(session, 7 + 3 + 7 + 3, TICK)
    assert_continuous(sent)
    base = first[0].timestamp
    one, gap, nine, after = sent[1:8], sent[8:11], sent[11:18], sent[18:]
    for press, code, start_tick in ((one, 1, 1), (nine, 9, 11)):
        assert {p.payload_type for p in press} == {DTMF_PT}
        assert {p.timestamp for p in press} == {base + 160 * start_tick}
        assert [p.marker for p in press] == [True] + [False] * 6
        assert [TelephoneEvent.parse(p.payload) for p in press] == [
            TelephoneEvent(code, False, 10, 160),
            TelephoneEvent(code, False, 10, 320),
            TelephoneEvent(code, False, 10, 480),
            TelephoneEvent(code, False, 10, 640),
            TelephoneEvent(code, True, 10, 800),
            TelephoneEvent(code, True, 10, 800),
            TelephoneEvent(code, True, 10, 800),
        ]
    # silence between the presses; queued audio waits until the digits are done
    assert [(p.payload_type, p.payload, p.marker) for p in gap] == [(0, ULAW_SILENCE, False)] * 3
    assert [p.timestamp for p in gap] == [base + 160 * n for n in (8, 9, 10)]
    assert [p.payload for p in after] == [frame(1, 1), ULAW_SILENCE, ULAW_SILENCE]
    assert [p.timestamp for p in after] == [base + 160 * n for n in (18, 19, 20)]
    assert events(session) == [AudioPlayed("a", 160), AudioPlayed("a", 320)]
    stats = session.statistics()
    assert (stats.dtmf_packets_out, stats.audio_frames_out, stats.packets_out) == (14, 2, 21)
    # a receiver on the other side hears exactly the two digits
    receiver = DtmfReceiver()
    heard = [receiver.receive(p, 0.0) for p in sent if p.payload_type == DTMF_PT]
    assert [digit for digit in heard if digit] == ["1", "9"]


def test_dtmf_queued_while_digits_are_sent_gets_a_gap() -> None:
    session = new_session()
    session.send_dtmf("*", duration_ms=20, gap_ms=40)
    session.send_dtmf("#", duration_ms=20, gap_ms=40)
    sent = ticks(session, 3 + 2 + 3 + 1)
    assert [p.payload_type for p in sent] == [DTMF_PT] * 3 + [0, 0] + [DTMF_PT] * 3 + [0]
    assert sent[0].timestamp != sent[5].timestamp
    assert sent[0].marker and sent[5].marker


@pytest.mark.parametrize("digits", ["1x", "E", " ", "12-3"])
def test_send_dtmf_refuses_bad_digits_and_queues_nothing(digits: str) -> None:
    session = new_session()
    with pytest.raises(ValueError, match="DTMF digits"):
        session.send_dtmf(digits)
    assert {p.payload_type for p in ticks(session, 10)} == {0}


def test_send_dtmf_needs_a_telephone_event_payload_type() -> None:
    session = new_session(dtmf_payload_type=None)
    with pytest.raises(ValueError, match="telephone-event"):
        session.send_dtmf("1")


def test_skipped_ticks_advance_the_timestamp_and_set_the_marker() -> None:
    session = new_session()
    session.play("a", frames(1, 3))
    first = ticks(session, 1)[0]
    late = RtpPacket.parse(session.tick(0.1, elapsed_frames=4) or b"")
    following = ticks(session, 1, 0.12)[0]
    assert late.timestamp == first.timestamp + 4 * 160
    assert late.sequence == first.sequence + 1
    assert (late.marker, late.payload) == (True, frame(1, 1))
    assert (following.marker, following.timestamp) == (False, first.timestamp + 5 * 160)
    assert session.statistics().ticks_skipped == 3
    with pytest.raises(ValueError, match="at least 1"):
        session.tick(0.2, elapsed_frames=0)


@pytest.mark.parametrize("paused", [Direction.RECVONLY, Direction.INACTIVE])
def test_hold_and_resume(paused: Direction) -> None:
    session = new_session()
    session.play("a", frames(1, 2))
    before = ticks(session, 3)
    session.update_remote(REMOTE, paused, 3 * TICK)
    assert [session.tick((3 + n) * TICK) for n in range(10)] == [None] * 10
    assert session.queued_frames == 0
    session.update_remote(REMOTE, Direction.SENDRECV, 13 * TICK)
    after = ticks(session, 2, 13 * TICK)
    assert after[0].marker and not after[1].marker
    assert after[0].timestamp == before[-1].timestamp + 11 * 160
    assert after[0].sequence == before[-1].sequence + 1
    assert session.statistics().packets_out == 5


def test_audio_waits_while_on_hold() -> None:
    session = new_session(direction=Direction.RECVONLY)
    session.play("a", frames(1, 1))
    assert session.tick(0.0) is None
    assert events(session) == []
    assert session.queued_frames == 1
    session.update_remote(REMOTE, Direction.SENDONLY, TICK)
    packet = ticks(session, 1, TICK)[0]
    assert (packet.payload, packet.marker) == (frame(1, 0), True)
    assert events(session) == [AudioPlayed("a", 160)]


def test_nothing_is_sent_without_a_destination_until_the_peer_latches() -> None:
    session = new_session(remote=None)
    assert session.tick(0.0) is None
    assert session.statistics().packets_out == 0
    for n in range(3):
        session.receive_datagram(audio_datagram(1 + n, ULAW_SILENCE), NAT, 0.01 + n * TICK)
        assert session.destination == (NAT if n == 2 else None)
    packet = ticks(session, 1, 0.06)[0]
    assert packet.marker


# ---- latching ------------------------------------------------------------------------------------


def test_the_sdp_address_latches_at_once() -> None:
    session = new_session()
    assert session.destination == REMOTE  # the SDP address until the peer sends
    session.receive_datagram(audio_datagram(1, frame(9, 1)), REMOTE, 0.0)
    assert session.destination == REMOTE
    assert events(session) == [CallerAudio(frame(9, 1))]
    assert session.statistics().wrong_source == 0


def test_another_source_latches_on_its_third_consecutive_packet() -> None:
    # a NATed peer: its SDP names an address we never hear from
    session = new_session()
    session.receive_datagram(audio_datagram(1, frame(9, 1)), NAT, 0.0)
    session.receive_datagram(audio_datagram(2, frame(9, 2)), NAT, 0.02)
    assert session.destination == REMOTE
    assert session.last_received_at is None
    session.receive_datagram(audio_datagram(3, frame(9, 3)), NAT, 0.04)
    assert session.destination == NAT
    # the first two packets are gone; the stream starts at the third, nothing is concealed
    session.tick(0.2)
    assert [e for e in events(session) if isinstance(e, CallerAudio)] == [CallerAudio(frame(9, 3))]
    session.receive_datagram(audio_datagram(4, frame(9, 4)), OTHER, 0.1)
    session.receive_datagram(audio_datagram(5, frame(9, 5)), NAT, 0.12)
    session.receive_datagram(audio_datagram(6, frame(9, 6)), OTHER, 0.14)
    assert session.destination == NAT
    stats = session.statistics()
    assert (stats.wrong_source, stats.packets_in, stats.jitter.lost) == (4, 2, 0)
    assert session.last_received_at == 0.12


def test_injected_packets_between_the_peers_packets_never_latch() -> None:
    session = new_session(latch_window_s=2.0)
    session.receive_datagram(audio_datagram(1, frame(9, 1)), REMOTE, 0.0)
    for n in range(20):  # an attacker sends two packets between each of the peer's
        at = 0.02 + n * TICK
        session.receive_datagram(audio_datagram(900 + 2 * n, frame(6, 0)), OTHER, at)
        session.receive_datagram(audio_datagram(901 + 2 * n, frame(6, 1)), OTHER, at + 0.001)
        session.receive_datagram(audio_datagram(2 + n, frame(9, 2 + n)), REMOTE, at + 0.002)
    assert session.destination == REMOTE
    caller_audio = [e for e in events(session) if isinstance(e, CallerAudio)]
    assert caller_audio == [CallerAudio(frame(9, n)) for n in range(1, 22)]
    assert session.statistics().wrong_source == 40


def test_an_injected_source_that_got_in_first_loses_to_the_sdp_address() -> None:
    session = new_session()
    for n in range(3):
        session.receive_datagram(audio_datagram(500 + n, frame(6, n)), OTHER, n * TICK)
    assert session.destination == OTHER  # three packets before the peer: the probation's limit
    session.receive_datagram(audio_datagram(1, frame(9, 1)), REMOTE, 0.06)
    assert session.destination == REMOTE
    # even after the window, the SDP address wins whenever it sends
    session.receive_datagram(audio_datagram(503, frame(6, 3)), OTHER, 0.07)
    session.receive_datagram(audio_datagram(504, frame(6, 4)), OTHER, 0.08)
    session.receive_datagram(audio_datagram(505, frame(6, 5)), OTHER, 0.09)
    assert session.destination == OTHER  # within the window: three consecutive packets
    session.receive_datagram(audio_datagram(2, frame(9, 2)), REMOTE, 5.0)
    assert session.destination == REMOTE
    for n in range(3):
        session.receive_datagram(audio_datagram(506 + n, frame(6, 6)), OTHER, 5.02 + n * TICK)
    assert session.destination == REMOTE


def test_relatch_within_the_window_after_three_consecutive_packets() -> None:
    session = new_session(latch_window_s=2.0)
    for n in range(3):
        session.receive_datagram(audio_datagram(1 + n, frame(9, 1 + n)), NAT, n * TICK)
    assert session.destination == NAT
    # the NAT gave the peer a new port; the stream (SSRC, sequence numbers) goes on
    moved = (NAT[0], NAT[1] + 2)
    session.receive_datagram(audio_datagram(4, frame(9, 4)), moved, 1.0)
    session.receive_datagram(audio_datagram(5, frame(9, 5)), moved, 1.02)
    assert session.destination == NAT
    session.receive_datagram(audio_datagram(6, frame(9, 6)), moved, 1.04)
    assert session.destination == moved
    session.receive_datagram(audio_datagram(7, frame(9, 7)), NAT, 1.05)  # late, old port
    assert session.destination == moved
    session.tick(1.2)
    # the two packets that only made the new port a candidate were dropped: concealed
    assert events(session) == [
        CallerAudio(frame(9, 3)),
        CallerAudio(ULAW_SILENCE),
        CallerAudio(ULAW_SILENCE),
        CallerAudio(frame(9, 6)),
    ]
    assert session.statistics().wrong_source == 5


def test_other_sources_are_ignored_after_the_window() -> None:
    session = new_session(latch_window_s=2.0)
    session.receive_datagram(audio_datagram(1, frame(9, 1)), REMOTE, 0.0)
    for n in range(5):
        session.receive_datagram(audio_datagram(2 + n, frame(9, 2)), OTHER, 2.0 + n * TICK)
    assert session.destination == REMOTE
    assert session.statistics().wrong_source == 5
    assert session.last_received_at == 0.0


def test_without_an_sdp_address_three_consecutive_packets_latch() -> None:
    session = new_session(remote=None, latch_window_s=2.0)
    session.receive_datagram(audio_datagram(1, frame(9, 1)), NAT, 0.0)
    session.receive_datagram(audio_datagram(500, frame(6, 0)), OTHER, 0.01)
    session.receive_datagram(audio_datagram(501, frame(6, 1)), OTHER, 0.015)
    session.receive_datagram(audio_datagram(2, frame(9, 2)), NAT, 0.02)
    session.receive_datagram(audio_datagram(3, frame(9, 3)), NAT, 0.04)
    unlatched = session.destination
    assert unlatched is None
    assert session.tick(0.04) is None
    session.receive_datagram(audio_datagram(4, frame(9, 4)), NAT, 0.06)
    assert session.destination == NAT
    assert events(session) == [CallerAudio(frame(9, 4))]
    # the window opened at that latch; once it is over nobody else gets in
    for n in range(3):
        session.receive_datagram(audio_datagram(502 + n, frame(6, 2)), OTHER, 2.06 + n * TICK)
    assert session.destination == NAT
    assert session.statistics().wrong_source == 8


def test_the_sdp_address_is_recognised_in_another_spelling() -> None:
    session = new_session(remote=("2001:DB8:0:0::10", 4000))
    session.receive_datagram(audio_datagram(1, frame(9, 1)), ("2001:db8::10", 4000), 0.0)
    assert session.destination == ("2001:db8::10", 4000)
    assert events(session) == [CallerAudio(frame(9, 1))]


def test_the_sdp_host_on_another_port_must_prove_itself() -> None:
    session = new_session()
    other_port = (REMOTE[0], REMOTE[1] + 1)
    session.receive_datagram(audio_datagram(1, frame(9, 1)), other_port, 0.0)
    assert session.destination == REMOTE
    assert session.statistics().wrong_source == 1


def test_update_remote_reopens_latching() -> None:
    session = new_session(latch_window_s=2.0)
    session.receive_datagram(audio_datagram(1, frame(9, 1)), REMOTE, 0.0)
    new_sdp = ("192.0.2.20", 30000)
    session.update_remote(new_sdp, Direction.SENDRECV, 10.0)
    assert session.destination == new_sdp
    for n in range(3):
        session.receive_datagram(audio_datagram(2 + n, frame(9, 2)), OTHER, 10.1 + n * TICK)
    assert session.destination == OTHER  # a new window, opened by this latch
    session.receive_datagram(audio_datagram(5, frame(9, 5)), new_sdp, 10.2)
    assert session.destination == new_sdp
    for n in range(3):
        session.receive_datagram(audio_datagram(6 + n, frame(9, 6)), OTHER, 13.0 + n * TICK)
    assert session.destination == new_sdp
    # the old SDP address is just another source now
    session.receive_datagram(audio_datagram(9, frame(9, 9)), REMOTE, 13.1)
    assert session.destination == new_sdp


# ---- payload types after a re-INVITE -----------------------------------------------------------


def test_update_remote_keeps_the_payload_types_by_default() -> None:
    session = new_session()
    session.send_dtmf("1")
    session.update_remote(REMOTE, Direction.SENDRECV, 0.0)
    first, second = ticks(session, 2)
    assert (first.payload_type, second.payload_type) == (DTMF_PT, DTMF_PT)
    session.receive_datagram(audio_datagram(1, frame(7, 1)), REMOTE, 0.1)
    assert events(session)[-1] == CallerAudio(frame(7, 1))


def test_a_new_audio_payload_type_resets_the_jitter_buffer() -> None:
    session = new_session()
    session.receive_datagram(audio_datagram(1, frame(7, 1)), REMOTE, 0.0)
    session.receive_datagram(audio_datagram(3, frame(7, 3)), REMOTE, 0.04)  # 2 is missing
    assert events(session) == [CallerAudio(frame(7, 1))]
    session.update_remote(REMOTE, Direction.SENDRECV, 0.05, payload_type=112)
    # what the old buffer held comes out at once, its hole filled
    assert events(session) == [CallerAudio(ULAW_SILENCE), CallerAudio(frame(7, 3))]
    (packet,) = ticks(session, 1, 0.06)
    assert (packet.payload_type, packet.payload) == (112, ULAW_SILENCE)
    # the new PT is the audio now, starting a sequence of its own; the old one is unknown
    session.receive_datagram(audio_datagram(200, frame(7, 200), pt=112), REMOTE, 0.08)
    session.receive_datagram(audio_datagram(4, frame(7, 4)), REMOTE, 0.09)
    session.receive_datagram(audio_datagram(201, frame(7, 201), pt=112), REMOTE, 0.1)
    caller_audio = [e for e in events(session) if isinstance(e, CallerAudio)]
    assert caller_audio == [CallerAudio(frame(7, 200)), CallerAudio(frame(7, 201))]
    stats = session.statistics()
    assert stats.unknown_payload_type == 1
    # the counters add up over both buffers
    jitter = stats.jitter
    assert (jitter.received, jitter.released, jitter.lost, jitter.buffered) == (4, 4, 1, 0)


def test_a_new_telephone_event_payload_type_resets_the_dtmf_receiver() -> None:
    session = new_session()
    for datagram in sipp_dtmf(5):
        session.receive_datagram(datagram, REMOTE, 0.0)
    assert events(session) == [CallerDtmf("5")]
    session.update_remote(REMOTE, Direction.SENDRECV, 0.5, dtmf_payload_type=100)
    # the same event (SSRC, timestamp) under the new PT is a new digit, not a repeat
    for datagram in sipp_dtmf(5, pt=100):
        session.receive_datagram(datagram, REMOTE, 0.6)
    for datagram in sipp_dtmf(7, timestamp=99999):  # the old PT means nothing now
        session.receive_datagram(datagram, REMOTE, 0.7)
    assert events(session) == [CallerDtmf("5")]
    assert session.statistics().unknown_payload_type == 13
    session.send_dtmf("1")
    (packet,) = ticks(session, 1, 0.8)
    assert (packet.payload_type, packet.marker) == (100, True)


def test_no_telephone_event_any_more_drops_queued_digits() -> None:
    session = new_session()
    session.send_dtmf("123")
    ticks(session, 2)
    session.update_remote(REMOTE, Direction.SENDRECV, 0.05, dtmf_payload_type=None)
    packets = ticks(session, 3, 0.06)
    assert [(p.payload_type, p.payload) for p in packets] == [(0, ULAW_SILENCE)] * 3
    with pytest.raises(ValueError, match="telephone-event"):
        session.send_dtmf("4")
    for datagram in sipp_dtmf(5):
        session.receive_datagram(datagram, REMOTE, 0.2)
    assert [e for e in events(session) if isinstance(e, CallerDtmf)] == []


@pytest.mark.parametrize(
    ("payload_type", "dtmf_payload_type"),
    [(128, UNCHANGED), (None, 128), (DTMF_PT, UNCHANGED), (None, 0), (8, 8), (-2, UNCHANGED)],
)
def test_update_remote_refuses_bad_payload_types_and_changes_nothing(
    payload_type: int | None, dtmf_payload_type: int | None
) -> None:
    session = new_session()
    with pytest.raises(ValueError, match="payload type"):
        session.update_remote(
            ("192.0.2.20", 30000),
            Direction.INACTIVE,
            0.0,
            payload_type=payload_type,
            dtmf_payload_type=dtmf_payload_type,
        )
    assert session.destination == REMOTE
    session.send_dtmf("1")
    assert ticks(session, 1)[0].payload_type == DTMF_PT
    session.receive_datagram(audio_datagram(1, frame(7, 1)), REMOTE, 0.0)
    assert events(session) == [CallerAudio(frame(7, 1))]


# ---- inbound -------------------------------------------------------------------------------------


def test_caller_audio_comes_out_in_order() -> None:
    session = new_session()
    for sequence, at in ((65534, 0.0), (65535, 0.02), (1, 0.04), (0, 0.05), (2, 0.06)):
        session.receive_datagram(audio_datagram(sequence, frame(7, sequence & 0xFF)), REMOTE, at)
    assert events(session) == [CallerAudio(frame(7, n & 0xFF)) for n in (65534, 65535, 0, 1, 2)]
    stats = session.statistics()
    assert (stats.packets_in, stats.bytes_in) == (5, 5 * 172)
    assert (stats.jitter.reordered, stats.jitter.lost) == (1, 0)


def test_lost_caller_audio_is_concealed_on_the_tick() -> None:
    session = new_session()
    session.receive_datagram(audio_datagram(10, frame(7, 10)), REMOTE, 0.0)
    session.receive_datagram(audio_datagram(12, frame(7, 12)), REMOTE, 0.04)
    assert events(session) == [CallerAudio(frame(7, 10))]
    session.tick(0.08)
    assert [e for e in events(session) if isinstance(e, CallerAudio)] == []
    session.tick(0.1)
    assert [e for e in events(session) if isinstance(e, CallerAudio)] == [
        CallerAudio(ULAW_SILENCE),
        CallerAudio(frame(7, 12)),
    ]
    assert session.statistics().jitter.lost == 1


def test_ssrc_change_is_counted_not_lost() -> None:
    session = new_session()
    session.receive_datagram(audio_datagram(10, frame(7, 1)), REMOTE, 0.0)
    session.receive_datagram(audio_datagram(5000, frame(7, 2), ssrc=0xD00D), REMOTE, 0.02)
    assert events(session) == [CallerAudio(frame(7, 1)), CallerAudio(frame(7, 2))]
    stats = session.statistics()
    assert (stats.ssrc_changes, stats.jitter.lost) == (1, 0)


def sipp_dtmf(
    digit: int, *, ssrc: int = 0x5151, timestamp: int = 24400, pt: int = DTMF_PT
) -> list[bytes]:
    updates = [
        RtpPacket(
            pt,
            1240 + n,
            timestamp,
            ssrc,
            TelephoneEvent(digit, False, 10, 160 * n).serialize(),
            marker=n == 0,
        ).serialize()
        for n in range(10)
    ]
    ends = [
        RtpPacket(
            pt, 1250 + n, timestamp, ssrc, TelephoneEvent(digit, True, 10, 1600).serialize()
        ).serialize()
        for n in range(3)
    ]
    return updates + ends


def test_dtmf_in_through_the_session() -> None:
    session = new_session()
    session.receive_datagram(audio_datagram(1, frame(7, 1)), REMOTE, 0.0)
    for n, datagram in enumerate(sipp_dtmf(11)):  # another SSRC, as sipp's play_dtmf does
        session.receive_datagram(datagram, REMOTE, 0.02 + n * TICK)
    session.receive_datagram(audio_datagram(2, frame(7, 2)), REMOTE, 0.3)
    assert events(session) == [
        CallerAudio(frame(7, 1)),
        CallerDtmf("#"),
        CallerAudio(frame(7, 2)),
    ]
    stats = session.statistics()
    assert (stats.dtmf_in, stats.ssrc_changes, stats.packets_in) == (1, 0, 15)


def test_dtmf_in_the_audio_stream_is_not_waited_for_as_lost_audio() -> None:
    session = new_session()
    session.receive_datagram(audio_datagram(1239, frame(7, 1)), REMOTE, 0.0)
    for n, datagram in enumerate(sipp_dtmf(5, ssrc=PEER_SSRC)):  # seq 1240..1252
        session.receive_datagram(datagram, REMOTE, 0.02 + n * TICK)
    session.receive_datagram(audio_datagram(1253, frame(7, 2)), REMOTE, 0.28)
    assert events(session) == [
        CallerAudio(frame(7, 1)),
        CallerDtmf("5"),
        CallerAudio(frame(7, 2)),
    ]
    stats = session.statistics()
    assert (stats.jitter.lost, stats.jitter.buffered, stats.ssrc_changes) == (0, 0, 0)


def test_short_dtmf_payload_is_malformed() -> None:
    session = new_session()
    session.receive_datagram(RtpPacket(DTMF_PT, 1, 1, 1, b"\x01").serialize(), REMOTE, 0.0)
    assert events(session) == []
    assert session.statistics().malformed == 1


def test_dtmf_payload_type_is_unknown_when_not_negotiated() -> None:
    session = new_session(dtmf_payload_type=None)
    for datagram in sipp_dtmf(1):
        session.receive_datagram(datagram, REMOTE, 0.0)
    assert events(session) == []
    assert session.statistics().unknown_payload_type == 13


def test_comfort_noise_becomes_silence_frames_until_audio_resumes() -> None:
    session = new_session()
    session.receive_datagram(audio_datagram(1, frame(7, 1)), REMOTE, 0.0)
    session.receive_datagram(RtpPacket(13, 2, 320, PEER_SSRC, b"\x40").serialize(), REMOTE, 0.02)
    for n in range(3):
        session.tick(0.04 + n * TICK)
    session.receive_datagram(audio_datagram(3, frame(7, 3)), REMOTE, 0.1)
    session.tick(0.1)
    session.tick(0.12)
    assert events(session) == [CallerAudio(frame(7, 1))] + [CallerAudio(ULAW_SILENCE)] * 3 + [
        CallerAudio(frame(7, 3))
    ]
    assert session.statistics().comfort_noise == 1


def test_comfort_noise_silence_is_in_the_calls_codec() -> None:
    session = new_session(codec=Codec.PCMA, payload_type=8)
    session.receive_datagram(RtpPacket(13, 2, 320, PEER_SSRC, b"\x40").serialize(), REMOTE, 0.0)
    session.tick(0.02)
    session.tick(0.08, elapsed_frames=3)
    assert events(session) == [CallerAudio(ALAW_SILENCE), CallerAudio(ALAW_SILENCE * 3)]


def test_unknown_payload_type_is_ignored() -> None:
    session = new_session()
    session.receive_datagram(audio_datagram(1, b"\x00" * 4, pt=97), REMOTE, 0.0)  # sipp's no-op
    assert events(session) == []
    stats = session.statistics()
    assert (stats.unknown_payload_type, stats.packets_in, stats.jitter.received) == (1, 1, 0)
    assert session.last_received_at == 0.0


def test_rtcp_and_garbage_are_dropped() -> None:
    session = new_session()
    receiver_report = bytes.fromhex("80c90001") + (1234).to_bytes(4, "big")
    session.receive_datagram(receiver_report, REMOTE, 0.0)
    session.receive_datagram(b"\x00" * 20, REMOTE, 0.0)
    session.receive_datagram(b"\x80", REMOTE, 0.0)
    assert events(session) == []
    assert session.destination == REMOTE
    assert session.last_received_at is None
    stats = session.statistics()
    assert (stats.rtcp_ignored, stats.malformed, stats.packets_in) == (1, 2, 0)


def test_inbound_is_processed_on_hold() -> None:
    session = new_session(direction=Direction.INACTIVE)
    session.receive_datagram(audio_datagram(1, frame(7, 1)), REMOTE, 0.0)
    assert session.tick(0.02) is None
    assert events(session) == [CallerAudio(frame(7, 1))]


def test_statistics_start_at_zero() -> None:
    stats = new_session().statistics()
    assert isinstance(stats, RtpStatistics)
    assert stats.packets_in == stats.packets_out == stats.jitter.received == 0


@pytest.mark.parametrize(
    ("payload_type", "dtmf_payload_type"), [(0, 0), (128, 101), (0, 128), (-1, None)]
)
def test_bad_payload_types_are_refused(payload_type: int, dtmf_payload_type: int | None) -> None:
    with pytest.raises(ValueError, match="payload type"):
        new_session(payload_type=payload_type, dtmf_payload_type=dtmf_payload_type)
