from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.proto.rtp.dtmf import DIGITS, DtmfReceiver, TelephoneEvent, dtmf_payloads
from bridge.proto.rtp.packet import RtpPacket, RtpParseError

SIPP_SSRC = 0x01020304


def event_packet(
    sequence: int,
    timestamp: int,
    event: int,
    *,
    end: bool,
    duration: int,
    marker: bool = False,
    ssrc: int = SIPP_SSRC,
) -> RtpPacket:
    payload = TelephoneEvent(event, end, 10, duration).serialize()
    return RtpPacket(96, sequence, timestamp, ssrc, payload, marker=marker)


def sipp_capture(
    digit: int = 5, *, first_sequence: int = 1240, timestamp: int = 24400
) -> list[RtpPacket]:
    """protocols.md §4.3: sipp play_dtmf="5", seq 1240..1252, all at ts 24400."""
    packets = [
        event_packet(
            first_sequence + n, timestamp, digit, end=False, duration=160 * n, marker=n == 0
        )
        for n in range(10)
    ]
    packets += [
        event_packet(first_sequence + 10 + n, timestamp, digit, end=True, duration=1600)
        for n in range(3)
    ]
    return packets


def feed(receiver: DtmfReceiver, packets: list[RtpPacket], start: float = 0.0) -> list[str]:
    digits = []
    for n, packet in enumerate(packets):
        digit = receiver.receive(packet, start + 0.02 * n)
        if digit is not None:
            digits.append(digit)
    return digits


def test_event_payload_bytes() -> None:
    # event 5, E=1, volume 10, duration 1600
    assert TelephoneEvent(5, True, 10, 1600).serialize() == bytes.fromhex("058a0640")
    assert TelephoneEvent.parse(bytes.fromhex("058a0640")) == TelephoneEvent(5, True, 10, 1600)
    assert TelephoneEvent.parse(bytes.fromhex("0b000000")) == TelephoneEvent(11, False, 0, 0)


def test_reserved_bit_is_ignored_and_redundant_bytes_skipped() -> None:
    parsed = TelephoneEvent.parse(bytes.fromhex("01ff00a0") + bytes.fromhex("01ff00a0"))
    assert parsed == TelephoneEvent(1, True, 63, 160)


@pytest.mark.parametrize("payload", [b"", b"\x05", b"\x05\x8a\x06"])
def test_short_payload_is_a_parse_error(payload: bytes) -> None:
    with pytest.raises(RtpParseError):
        TelephoneEvent.parse(payload)


@pytest.mark.parametrize(
    "event",
    [
        TelephoneEvent(256, False, 0, 0),
        TelephoneEvent(1, False, 64, 0),
        TelephoneEvent(1, False, 0, 0x10000),
    ],
)
def test_serialize_refuses_out_of_range_fields(event: TelephoneEvent) -> None:
    with pytest.raises(ValueError, match=r"out of range|volume"):
        event.serialize()


@given(
    st.builds(
        TelephoneEvent,
        event=st.integers(0, 255),
        end=st.booleans(),
        volume=st.integers(0, 63),
        duration=st.integers(0, 0xFFFF),
    )
)
def test_event_round_trip(event: TelephoneEvent) -> None:
    assert TelephoneEvent.parse(event.serialize()) == event


def test_digits() -> None:
    assert [TelephoneEvent(code, False, 0, 0).digit for code in range(16)] == list(DIGITS)
    assert TelephoneEvent(10, False, 0, 0).digit == "*"
    assert TelephoneEvent(11, False, 0, 0).digit == "#"
    assert TelephoneEvent(16, False, 0, 0).digit is None  # flash
    assert TelephoneEvent(200, False, 0, 0).digit is None


def test_sipp_capture_gives_the_digit_once_on_its_first_packet() -> None:
    receiver = DtmfReceiver()
    packets = sipp_capture()
    assert receiver.receive(packets[0], 0.0) == "5"
    assert feed(receiver, packets[1:], 0.02) == []


def test_sipp_capture_through_the_wire_format() -> None:
    receiver = DtmfReceiver()
    packets = [RtpPacket.parse(packet.serialize()) for packet in sipp_capture()]
    assert feed(receiver, packets) == ["5"]


def test_three_end_copies_give_one_digit() -> None:
    receiver = DtmfReceiver()
    assert feed(receiver, sipp_capture()[-3:]) == ["5"]


def test_end_only_event_is_reported() -> None:
    receiver = DtmfReceiver()
    end = event_packet(77, 8000, 11, end=True, duration=800)
    assert receiver.receive(end, 1.0) == "#"
    assert receiver.receive(end, 1.01) is None


def test_lost_start_is_survived() -> None:
    assert feed(DtmfReceiver(), sipp_capture()[3:]) == ["5"]


def test_two_presses_of_the_same_digit_give_two() -> None:
    receiver = DtmfReceiver()
    first = sipp_capture(timestamp=24400)
    second = sipp_capture(first_sequence=1253, timestamp=24400 + 2400)
    assert feed(receiver, first + second) == ["5", "5"]


def test_same_timestamp_from_another_ssrc_is_another_event() -> None:
    receiver = DtmfReceiver()
    assert receiver.receive(event_packet(1, 100, 1, end=False, duration=0), 0.0) == "1"
    assert receiver.receive(event_packet(1, 100, 1, end=False, duration=0, ssrc=9), 0.0) == "1"


def test_sequence_numbers_never_deduplicate() -> None:
    receiver = DtmfReceiver()
    # a different event reusing a sequence number (another stream, a restart) still counts
    assert receiver.receive(event_packet(5, 100, 1, end=True, duration=800), 0.0) == "1"
    assert receiver.receive(event_packet(5, 900, 2, end=True, duration=800), 0.1) == "2"


def test_late_retransmission_within_memory_is_absorbed() -> None:
    receiver = DtmfReceiver(memory_s=5.0)
    packets = sipp_capture()
    assert feed(receiver, packets) == ["5"]
    assert receiver.receive(packets[-1], 0.24 + 4.9) is None


def test_keys_expire_after_memory_s() -> None:
    receiver = DtmfReceiver(memory_s=5.0)
    packets = sipp_capture()
    assert feed(receiver, packets) == ["5"]
    last_seen = 0.02 * 12
    assert receiver.remembered == 1
    # a key is remembered memory_s after its event's latest packet, then forgotten
    assert receiver.receive(packets[-1], last_seen + 4.9) is None
    assert receiver.receive(packets[-1], last_seen + 4.9 + 5.5) == "5"
    other = event_packet(2000, 99_999, 3, end=True, duration=800)
    assert receiver.receive(other, last_seen + 4.9 + 11.0) == "3"
    assert receiver.remembered == 1


def test_updates_keep_a_long_press_remembered() -> None:
    receiver = DtmfReceiver(memory_s=1.0)
    updates = [event_packet(n, 500, 0, end=False, duration=160 * n) for n in range(1, 150)]
    digits = [receiver.receive(packet, 0.05 * n) for n, packet in enumerate(updates)]
    assert [digit for digit in digits if digit] == ["0"]


def test_flash_and_unknown_events_give_no_digit() -> None:
    receiver = DtmfReceiver()
    assert receiver.receive(event_packet(1, 100, 16, end=False, duration=0), 0.0) is None
    assert receiver.receive(event_packet(2, 200, 40, end=True, duration=0), 0.0) is None


def test_short_payload_raises_from_receive() -> None:
    with pytest.raises(RtpParseError):
        DtmfReceiver().receive(RtpPacket(96, 1, 1, 1, b"\x05"), 0.0)


def test_memory_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        DtmfReceiver(memory_s=0)


def test_payloads_for_a_100_ms_press() -> None:
    events = [TelephoneEvent.parse(payload) for payload in dtmf_payloads("5")]
    assert [(e.event, e.end, e.volume, e.duration) for e in events] == [
        (5, False, 10, 160),
        (5, False, 10, 320),
        (5, False, 10, 480),
        (5, False, 10, 640),
        (5, True, 10, 800),
        (5, True, 10, 800),
        (5, True, 10, 800),
    ]


def test_payloads_for_an_odd_duration_and_volume() -> None:
    events = [TelephoneEvent.parse(p) for p in dtmf_payloads("#", duration_ms=50, volume=0)]
    assert [(e.event, e.end, e.duration) for e in events] == [
        (11, False, 160),
        (11, False, 320),
        (11, True, 400),
        (11, True, 400),
        (11, True, 400),
    ]
    assert {e.volume for e in events} == {0}


def test_shortest_press_is_three_end_packets() -> None:
    assert dtmf_payloads("D", duration_ms=20) == [bytes.fromhex("0f8a00a0")] * 3


@pytest.mark.parametrize("digit", DIGITS)
def test_payloads_round_trip_through_the_receiver(digit: str) -> None:
    receiver = DtmfReceiver()
    packets = [
        RtpPacket(101, n, 4000, 7, payload, marker=n == 0)
        for n, payload in enumerate(dtmf_payloads(digit))
    ]
    assert feed(receiver, packets) == [digit]


@pytest.mark.parametrize(
    ("digit", "duration_ms", "volume"),
    [("E", 100, 10), ("", 100, 10), ("12", 100, 10), ("1", 0, 10), ("1", 8200, 10), ("1", 100, 64)],
)
def test_payloads_refuse_bad_arguments(digit: str, duration_ms: int, volume: int) -> None:
    with pytest.raises(ValueError):
        dtmf_payloads(digit, duration_ms=duration_ms, volume=volume)
