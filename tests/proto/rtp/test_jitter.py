from __future__ import annotations

import random

import pytest

from bridge.proto.rtp.jitter import JitterBuffer, JitterStatistics
from bridge.proto.rtp.packet import RtpPacket

SSRC = 0x5EED
SILENCE_BYTE = 0xFF
SILENCE = bytes([SILENCE_BYTE]) * 160
FRAME_S = 0.02


def frame(index: int, size: int = 160) -> bytes:
    """A payload that says which packet it came from and is never silence."""
    return (index.to_bytes(4, "big") + b"\x11" * size)[:size]


def packet(sequence: int, payload: bytes | None = None, *, ssrc: int = SSRC) -> RtpPacket:
    return RtpPacket(0, sequence & 0xFFFF, 0, ssrc, frame(sequence) if payload is None else payload)


def new_buffer(**options: int) -> JitterBuffer:
    return JitterBuffer(silence_byte=SILENCE_BYTE, **options)


def push_all(buffer: JitterBuffer, sequences: list[int], now: float = 0.0) -> list[bytes]:
    out: list[bytes] = []
    for sequence in sequences:
        buffer.push(packet(sequence), now)
        out += buffer.pop_ready(now)
    return out


def test_in_order_packets_are_released_at_once() -> None:
    buffer = new_buffer()
    for index in range(65530, 65530 + 20):  # across the wrap
        buffer.push(packet(index), index * FRAME_S)
        assert buffer.pop_ready(index * FRAME_S) == [frame(index)]
    assert buffer.statistics() == JitterStatistics(
        received=20,
        released=20,
        duplicates=0,
        late=0,
        reordered=0,
        lost=0,
        gaps_skipped=0,
        ssrc_changes=0,
        resets=0,
        stray=0,
        buffered=0,
    )
    assert buffer.next_deadline() is None


def test_clean_network_output_equals_input_byte_for_byte() -> None:
    buffer = new_buffer()
    sent = [packet(65000 + n, bytes([n % 251]) * 160) for n in range(3000)]
    out = []
    for n, item in enumerate(sent):
        buffer.push(item, n * FRAME_S)
        out += buffer.pop_ready(n * FRAME_S)
    assert b"".join(out) == b"".join(item.payload for item in sent)


def test_swapped_neighbours_are_put_back_in_order_without_loss() -> None:
    buffer = new_buffer()
    assert push_all(buffer, [1, 3, 2, 4]) == [frame(1), frame(2), frame(3), frame(4)]
    stats = buffer.statistics()
    assert (stats.reordered, stats.lost, stats.buffered) == (1, 0, 0)


def test_missing_packet_is_concealed_after_depth_later_packets() -> None:
    buffer = new_buffer(depth_frames=3)
    assert push_all(buffer, [1, 3, 4]) == [frame(1)]
    assert buffer.statistics().buffered == 2
    assert push_all(buffer, [5]) == [SILENCE, frame(3), frame(4), frame(5)]
    assert buffer.statistics().lost == 1


def test_missing_packet_is_concealed_after_depth_times_20_ms() -> None:
    buffer = new_buffer(depth_frames=3)
    buffer.push(packet(1), 0.0)
    buffer.push(packet(3), 1.0)
    assert buffer.pop_ready(1.0) == [frame(1)]
    assert buffer.next_deadline() == pytest.approx(1.06)
    assert buffer.pop_ready(1.059) == []
    assert buffer.pop_ready(1.06) == [SILENCE, frame(3)]
    assert buffer.next_deadline() is None


def test_wait_counts_from_the_oldest_held_packet() -> None:
    buffer = new_buffer(depth_frames=3)
    buffer.push(packet(1), 0.0)
    buffer.push(packet(3), 0.0)
    buffer.push(packet(5), 0.05)  # 2 and 4 missing
    assert buffer.pop_ready(0.06) == [frame(1), SILENCE, frame(3)]
    assert buffer.pop_ready(0.1) == []
    assert buffer.pop_ready(0.11) == [SILENCE, frame(5)]


def test_late_packet_is_dropped_and_counted() -> None:
    buffer = new_buffer()
    assert push_all(buffer, [1, 3, 4, 5]) == [frame(1), SILENCE, frame(3), frame(4), frame(5)]
    assert push_all(buffer, [2]) == []
    assert push_all(buffer, [6]) == [frame(6)]
    stats = buffer.statistics()
    assert (stats.late, stats.duplicates, stats.lost, stats.released) == (1, 0, 1, 5)


def test_duplicates_of_released_and_of_held_packets_are_dropped() -> None:
    buffer = new_buffer()
    assert push_all(buffer, [1, 2, 2, 1, 4, 4]) == [frame(1), frame(2)]
    assert push_all(buffer, [3]) == [frame(3), frame(4)]
    stats = buffer.statistics()
    assert (stats.duplicates, stats.late, stats.reordered) == (3, 0, 1)


def test_concealment_has_the_length_of_the_last_payload() -> None:
    buffer = new_buffer(depth_frames=1)
    buffer.push(packet(1, frame(1, 80)), 0.0)
    buffer.push(packet(3, frame(3, 80)), 0.0)
    assert buffer.pop_ready(0.0) == [frame(1, 80), b"\xff" * 80, frame(3, 80)]


def test_silence_byte_is_the_one_given() -> None:
    buffer = JitterBuffer(silence_byte=0xD5, depth_frames=0)
    buffer.push(packet(1), 0.0)
    buffer.push(packet(3), 0.0)
    assert buffer.pop_ready(0.0) == [frame(1), b"\xd5" * 160, frame(3)]


def test_zero_depth_never_waits() -> None:
    buffer = new_buffer(depth_frames=0)
    assert push_all(buffer, [1, 3, 2]) == [frame(1), SILENCE, frame(3)]
    assert buffer.statistics().late == 1


def test_concealment_cap() -> None:
    buffer = new_buffer(max_conceal_frames=25)
    out = push_all(buffer, [0, 26, 27, 28])  # 25 missing: filled
    assert out == [frame(0)] + [SILENCE] * 25 + [frame(26), frame(27), frame(28)]
    out = push_all(buffer, [55, 56, 57])  # 26 missing: an outage, resumed without fill
    assert out == [frame(55), frame(56), frame(57)]
    stats = buffer.statistics()
    assert (stats.lost, stats.gaps_skipped) == (25, 1)
    assert push_all(buffer, [40]) == []  # inside the skipped gap: late
    assert buffer.statistics().late == 1


def test_ssrc_change_releases_what_is_held_and_restarts() -> None:
    buffer = new_buffer()
    assert push_all(buffer, [10, 11, 13, 14]) == [frame(10), frame(11)]
    buffer.push(RtpPacket(0, 40000, 0, 0xBEEF, b"new0"), 1.0)
    assert buffer.pop_ready(1.0) == [frame(13), frame(14), b"new0"]
    buffer.push(RtpPacket(0, 40001, 160, 0xBEEF, b"new1"), 1.02)
    assert buffer.pop_ready(1.02) == [b"new1"]
    stats = buffer.statistics()
    assert (stats.ssrc_changes, stats.lost, stats.gaps_skipped, stats.resets) == (1, 0, 0, 0)
    # an old packet of the old stream is now another SSRC change, not sequence chaos
    buffer.push(packet(12), 1.03)
    assert buffer.pop_ready(1.03) == [frame(12)]
    assert buffer.statistics().ssrc_changes == 2


def test_jump_of_more_than_max_dropout_restarts_after_two_packets() -> None:
    buffer = new_buffer()
    assert push_all(buffer, [100, 101, 103]) == [frame(100), frame(101)]
    assert push_all(buffer, [3105]) == []  # held aside: a stray or a restart?
    assert buffer.statistics().buffered == 2
    assert push_all(buffer, [3106, 3107]) == [frame(103), frame(3105), frame(3106), frame(3107)]
    stats = buffer.statistics()
    assert (stats.resets, stats.lost, stats.stray, stats.buffered) == (1, 0, 0, 0)


def test_jump_of_max_dropout_is_ordinary_loss() -> None:
    buffer = new_buffer(max_conceal_frames=25)
    assert push_all(buffer, [100, 3100, 3101, 3102]) == [frame(n) for n in (100, 3100, 3101, 3102)]
    stats = buffer.statistics()
    assert (stats.resets, stats.gaps_skipped) == (0, 1)


def test_single_far_off_packet_is_stray() -> None:
    buffer = new_buffer()
    assert push_all(buffer, [100, 101, 9000, 102, 103]) == [frame(n) for n in (100, 101, 102, 103)]
    assert push_all(buffer, [20000, 30000, 104]) == [frame(104)]
    stats = buffer.statistics()
    assert (stats.stray, stats.resets, stats.received, stats.released) == (3, 0, 8, 5)


def test_more_than_max_misorder_backwards_restarts() -> None:
    buffer = new_buffer()
    push_all(buffer, list(range(1000, 1200)))
    assert push_all(buffer, [1099]) == []  # 100 back: an ordinary duplicate
    assert buffer.statistics().duplicates == 1
    assert push_all(buffer, [1098]) == []  # 101 back: held aside
    assert push_all(buffer, [1099]) == [frame(1098), frame(1099)]  # confirmed: restart
    assert push_all(buffer, [1100]) == [frame(1100)]
    stats = buffer.statistics()
    assert (stats.resets, stats.stray, stats.duplicates) == (1, 0, 1)


def test_restart_across_the_wrap() -> None:
    buffer = new_buffer()
    push_all(buffer, [30000, 30001])
    assert push_all(buffer, [65535, 65536, 65537]) == [frame(65535), frame(65536), frame(65537)]
    assert buffer.statistics().resets == 1


def test_numbers_used_by_other_payload_types_are_not_waited_for() -> None:
    buffer = new_buffer()
    buffer.push(packet(1), 0.0)
    buffer.skip(RtpPacket(13, 2, 0, SSRC, b"\x40"), 0.02)  # comfort noise
    buffer.push(packet(3), 0.04)
    assert buffer.pop_ready(0.04) == [frame(1), frame(3)]
    # skipped numbers that arrive out of order fill their hole too
    buffer.push(packet(6), 0.06)
    buffer.skip(RtpPacket(101, 5, 0, SSRC, b"\x01\x00\x00\xa0"), 0.07)
    buffer.skip(RtpPacket(101, 4, 0, SSRC, b"\x01\x00\x00\xa0"), 0.08)
    assert buffer.pop_ready(0.08) == [frame(6)]
    stats = buffer.statistics()
    assert (stats.received, stats.released, stats.lost, stats.buffered) == (3, 3, 0, 0)


def test_skip_of_another_stream_changes_nothing() -> None:
    buffer = new_buffer()
    buffer.skip(RtpPacket(101, 2, 0, SSRC, b"\x01\x00\x00\xa0"), 0.0)  # before any audio
    buffer.push(packet(1), 0.0)
    buffer.skip(RtpPacket(101, 2, 0, 0x0DD, b"\x01\x00\x00\xa0"), 0.02)  # another SSRC
    buffer.skip(RtpPacket(101, 9000, 0, SSRC, b"\x01\x00\x00\xa0"), 0.02)  # far off
    buffer.push(packet(3), 0.04)
    assert buffer.pop_ready(0.04) == [frame(1)]
    assert buffer.pop_ready(0.1) == [SILENCE, frame(3)]
    stats = buffer.statistics()
    assert (stats.ssrc_changes, stats.stray, stats.resets, stats.lost) == (0, 0, 0, 1)


def test_negative_options_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        new_buffer(depth_frames=-1)


def simulate_network(
    count: int,
    *,
    seed: int,
    first_sequence: int,
    loss: float = 0.05,
    swap: float = 0.10,
    duplicate: float = 0.03,
    max_delay_frames: float = 2.0,
) -> list[tuple[float, int]]:
    """(arrival time, packet index) of `count` packets sent every 20 ms over a bad network."""
    rng = random.Random(seed)
    order = list(range(count))
    slot = 0
    while slot < count - 1:
        if rng.random() < swap:
            order[slot], order[slot + 1] = order[slot + 1], order[slot]
            slot += 2
        else:
            slot += 1
    arrivals = []
    for slot, index in enumerate(order):
        if rng.random() < loss:
            continue
        for _ in range(2 if rng.random() < duplicate else 1):
            delay = rng.uniform(0, max_delay_frames * FRAME_S)
            arrivals.append((slot * FRAME_S + delay, index))
    arrivals.sort()
    return arrivals


@pytest.mark.parametrize(
    ("seed", "max_delay_frames"), [(1, 2.0), (2, 2.0), (3, 2.0), (4, 2.0), (5, 5.0), (6, 5.0)]
)
def test_lossy_reordering_duplicating_network_across_the_wrap(
    seed: int, max_delay_frames: float
) -> None:
    count = 3200
    first_sequence = 65535 - 1000
    arrivals = simulate_network(
        count, seed=seed, first_sequence=first_sequence, max_delay_frames=max_delay_frames
    )
    buffer = new_buffer(depth_frames=3, max_conceal_frames=25)
    out: list[bytes] = []
    pending = iter(arrivals)
    upcoming = next(pending, None)
    for tick in range(count + 10):  # the adapter's 20 ms tick
        now = tick * FRAME_S
        while upcoming is not None and upcoming[0] <= now:
            buffer.push(packet(first_sequence + upcoming[1]), upcoming[0])
            out += buffer.pop_ready(upcoming[0])
            upcoming = next(pending, None)
        out += buffer.pop_ready(now)

    indices = [int.from_bytes(payload[:4], "big") - first_sequence for payload in out]
    real_indices = [
        index for payload, index in zip(out, indices, strict=True) if payload != SILENCE
    ]
    # in order, no duplicates, and the wrap at 65535 -> 0 was crossed
    assert real_indices == sorted(set(real_indices))
    assert real_indices[0] < 1000 < real_indices[-1]
    # every position holds its own packet or silence: the model's time base is intact
    start = real_indices[0]
    assert len(out) == real_indices[-1] - start + 1
    for position, payload in enumerate(out):
        assert payload in (frame(first_sequence + start + position), SILENCE)

    stats = buffer.statistics()
    concealed = len(out) - len(real_indices)
    sent = set(range(start, real_indices[-1] + 1))
    unrecoverable = len(sent - set(real_indices))
    assert len(out) == len(sent) - unrecoverable + concealed
    assert unrecoverable == concealed == stats.lost
    assert stats.released == len(real_indices)
    assert stats.received == len(arrivals)
    assert stats.received == stats.released + stats.duplicates + stats.late
    assert stats.buffered == stats.stray == stats.resets == stats.gaps_skipped == 0
    # the network really did lose, reorder and duplicate
    assert stats.lost > 100
    assert stats.reordered > 100
    assert stats.duplicates > 50
    arrived = {index for _, index in arrivals}
    if max_delay_frames <= 2.0:
        # no packet is held up longer than the buffer waits: only the network's losses are lost
        assert set(real_indices) == {index for index in arrived if index >= start}
    else:
        assert stats.late > 10
        assert len(arrived - set(real_indices)) <= stats.late
