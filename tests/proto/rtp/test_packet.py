from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.proto.rtp.packet import RtpPacket, RtpParseError, looks_like_rtcp

FRAME = bytes(range(160))
# protocols.md §4.1: V=2, M=1, PT=0, seq 0x4d2e, ts 1000000, SSRC 0x1a2b3c4d
FIRST_HEADER = bytes.fromhex("80804d2e000f42401a2b3c4d")
NEXT_HEADER = bytes.fromhex("80004d2f000f42e01a2b3c4d")


def test_header_bytes_match_the_reference_example() -> None:
    first = RtpPacket(0, 0x4D2E, 1_000_000, 0x1A2B3C4D, FRAME, marker=True)
    following = RtpPacket(0, 0x4D2F, 1_000_160, 0x1A2B3C4D, FRAME)
    assert first.serialize() == FIRST_HEADER + FRAME
    assert following.serialize() == NEXT_HEADER + FRAME
    assert RtpPacket.parse(FIRST_HEADER + FRAME) == first
    assert RtpPacket.parse(NEXT_HEADER + FRAME) == following


def test_csrc_list_is_read_past_and_kept() -> None:
    data = bytes.fromhex("82084d2e000f42401a2b3c4d") + struct.pack("!II", 7, 8) + b"\xd5" * 4
    packet = RtpPacket.parse(data)
    assert packet.payload_type == 8
    assert packet.csrcs == (7, 8)
    assert packet.payload == b"\xd5" * 4
    assert packet.serialize() == data


def test_header_extension_is_skipped_not_dropped() -> None:
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\x10\x01\x02\x03\x04\x05\x06\x07"
    data = bytes.fromhex("90004d2e000f42401a2b3c4d") + extension + FRAME
    packet = RtpPacket.parse(data)
    assert packet.extension == (0xBEDE, b"\x10\x01\x02\x03\x04\x05\x06\x07")
    assert packet.payload == FRAME
    assert packet.serialize() == data


def test_csrcs_and_extension_together() -> None:
    data = (
        bytes.fromhex("91004d2e000f42401a2b3c4d")
        + struct.pack("!I", 99)
        + struct.pack("!HH", 1, 0)
        + b"abc"
    )
    packet = RtpPacket.parse(data)
    assert (packet.csrcs, packet.extension, packet.payload) == ((99,), (1, b""), b"abc")


@pytest.mark.parametrize("padding", [1, 4, 7])
def test_padding_is_stripped(padding: int) -> None:
    data = bytes.fromhex("a0004d2e000f42401a2b3c4d") + FRAME + bytes(padding - 1) + bytes([padding])
    assert RtpPacket.parse(data).payload == FRAME


def test_padding_may_take_the_whole_payload() -> None:
    data = bytes.fromhex("a0004d2e000f42401a2b3c4d") + b"\x00\x00\x03"
    assert RtpPacket.parse(data).payload == b""


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "shorter"),
        (FIRST_HEADER[:11], "shorter"),
        (bytes.fromhex("40004d2e000f42401a2b3c4d") + FRAME, "version 1"),
        (bytes.fromhex("00004d2e000f42401a2b3c4d") + FRAME, "version 0"),
        (bytes.fromhex("c0004d2e000f42401a2b3c4d") + FRAME, "version 3"),
        (bytes.fromhex("83004d2e000f42401a2b3c4d") + bytes(8), "CSRCs"),
        (bytes.fromhex("90004d2e000f42401a2b3c4d") + b"\xbe\xde", "no extension header"),
        (bytes.fromhex("90004d2e000f42401a2b3c4d") + b"\xbe\xde\x00\x02" + bytes(7), "runs past"),
        (bytes.fromhex("a0004d2e000f42401a2b3c4d") + b"\x00\x00\x00", "padding count 0"),
        (bytes.fromhex("a0004d2e000f42401a2b3c4d") + b"\x00\x05", "padding count 5"),
        (bytes.fromhex("a0004d2e000f42401a2b3c4d"), "padding count 77"),
    ],
)
def test_invalid_packets_raise_parse_error(data: bytes, problem: str) -> None:
    with pytest.raises(RtpParseError, match=problem):
        RtpPacket.parse(data)


def test_parse_error_is_a_value_error() -> None:
    assert issubclass(RtpParseError, ValueError)


def test_a_short_packet_is_refused_at_every_length() -> None:
    data = FIRST_HEADER + FRAME
    for size in range(12):
        with pytest.raises(RtpParseError):
            RtpPacket.parse(data[:size])
    # from the header on, every prefix is a valid packet with a shorter payload
    for size in range(12, len(data) + 1):
        assert RtpPacket.parse(data[:size]).payload == FRAME[: size - 12]


def test_trailing_bytes_are_payload() -> None:
    assert RtpPacket.parse(FIRST_HEADER + FRAME + b"junk").payload == FRAME + b"junk"


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(128, 0, 0, 0, b""),
        RtpPacket(0, 65536, 0, 0, b""),
        RtpPacket(0, 0, 1 << 32, 0, b""),
        RtpPacket(0, 0, 0, -1, b""),
        RtpPacket(0, 0, 0, 0, b"", csrcs=tuple(range(16))),
        RtpPacket(0, 0, 0, 0, b"", csrcs=(1 << 32,)),
        RtpPacket(0, 0, 0, 0, b"", extension=(1, b"abc")),
        RtpPacket(0, 0, 0, 0, b"", extension=(1 << 16, b"")),
    ],
)
def test_serialize_refuses_out_of_range_fields(packet: RtpPacket) -> None:
    with pytest.raises(ValueError):
        packet.serialize()


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=400),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=64).map(lambda b: b[: len(b) // 4 * 4])),
)


@given(packets)
def test_parse_serialize_round_trip(packet: RtpPacket) -> None:
    assert RtpPacket.parse(packet.serialize()) == packet


@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_parse_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpParseError:
        return
    assert isinstance(packet.payload, bytes)


@given(st.binary(min_size=12, max_size=300))
def test_parse_of_version_2_headers_never_raises_anything_else(data: bytes) -> None:
    data = bytes([0x80 | data[0] & 0x3F]) + data[1:]
    try:
        RtpPacket.parse(data)
    except RtpParseError:
        pass


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204])
def test_rtcp_packet_types_are_recognised(packet_type: int) -> None:
    assert looks_like_rtcp(bytes([0x81, packet_type, 0, 7]) + bytes(28))


@pytest.mark.parametrize(
    "data",
    [FIRST_HEADER + FRAME, NEXT_HEADER + FRAME, bytes([0x80, 0x65]) + bytes(14), b"", b"\x81"],
)
def test_rtp_is_not_rtcp(data: bytes) -> None:
    assert not looks_like_rtcp(data)
