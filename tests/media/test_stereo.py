from __future__ import annotations

import array
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.call.events import Codec
from bridge.media import g711
from bridge.media.stereo import FRAME_WIDTH, StereoMix, interleave

CALLER = 0x10  # u-law codes with distinct, non-zero values
MODEL = 0x20
OTHER_MODEL = 0x30


def channels(stereo: bytes) -> tuple[list[int], list[int]]:
    samples = array.array("h", stereo)
    if sys.byteorder != "little":
        samples.byteswap()
    return list(samples[0::2]), list(samples[1::2])


def value(code: int) -> int:
    return array.array("h", g711.decode(Codec.PCMU, bytes([code])))[0]


def test_caller_audio_is_the_left_channel_and_the_right_is_silent_without_model_audio() -> None:
    mix = StereoMix(Codec.PCMU)
    mix.caller(bytes([CALLER]) * 160)
    frames = mix.take_frames()
    assert len(frames) == 160 * FRAME_WIDTH
    assert channels(frames) == ([value(CALLER)] * 160, [0] * 160)
    assert mix.take_frames() == b""
    assert mix.caller_samples == 160


def test_model_audio_is_laid_on_the_caller_timeline_as_the_callers_side_plays_it() -> None:
    mix = StereoMix(Codec.PCMU)
    mix.caller(bytes([CALLER]) * 100)
    # Arrives at once, faster than real time: two chunks back to back from now (100).
    mix.model(bytes([MODEL]) * 50)
    mix.model(bytes([OTHER_MODEL]) * 50)
    assert mix.model_end == 200
    mix.caller(bytes([CALLER]) * 300)
    # The model was quiet after 200: the next chunk starts now (400), not at 200.
    mix.model(bytes([MODEL]) * 20)
    mix.caller(bytes([CALLER]) * 100)
    left, right = channels(mix.take_frames())
    assert left == [value(CALLER)] * 500
    assert (
        right
        == ([0] * 100 + [value(MODEL)] * 50 + [value(OTHER_MODEL)] * 50 + [0] * 200)
        + [value(MODEL)] * 20
        + [0] * 80
    )


def test_only_what_the_caller_position_reached_is_final() -> None:
    mix = StereoMix(Codec.PCMU)
    mix.model(bytes([MODEL]) * 300)
    mix.caller(bytes([CALLER]) * 100)
    assert mix.ready_samples == 100
    assert channels(mix.take_frames())[1] == [value(MODEL)] * 100
    mix.caller(bytes([CALLER]) * 100)
    assert channels(mix.take_frames())[1] == [value(MODEL)] * 100
    assert mix.model_end == 300


def test_a_clear_drops_the_model_audio_beyond_now_and_the_next_reply_starts_now() -> None:
    mix = StereoMix(Codec.PCMU)
    mix.model(bytes([MODEL]) * 400)
    mix.caller(bytes([CALLER]) * 100)
    first = mix.take_frames()
    mix.caller(bytes([CALLER]) * 50)
    mix.cleared()  # barge-in at 150: 150..400 was never played
    assert mix.model_end == 150
    mix.caller(bytes([CALLER]) * 50)
    mix.model(bytes([OTHER_MODEL]) * 30)  # the next reply starts now (200)
    mix.caller(bytes([CALLER]) * 100)
    left, right = channels(first + mix.take_frames())
    assert left == [value(CALLER)] * 300
    assert right == [value(MODEL)] * 150 + [0] * 50 + [value(OTHER_MODEL)] * 30 + [0] * 70


def test_a_clear_with_nothing_queued_changes_nothing() -> None:
    mix = StereoMix(Codec.PCMA)
    mix.caller(g711.silence(Codec.PCMA, 80))
    mix.model(g711.silence(Codec.PCMA, 40))
    mix.cleared()
    assert mix.model_end == 80
    assert len(mix.take_frames()) == 80 * FRAME_WIDTH


def test_finish_returns_the_rest_and_drops_model_audio_the_caller_never_heard() -> None:
    mix = StereoMix(Codec.PCMU)
    mix.model(bytes([MODEL]) * 500)
    mix.caller(bytes([CALLER]) * 100)
    left, right = channels(mix.finish())
    assert left == [value(CALLER)] * 100
    assert right == [value(MODEL)] * 100
    assert mix.finish() == b""
    mix.cleared()
    with pytest.raises(RuntimeError):
        mix.caller(bytes([CALLER]))
    with pytest.raises(RuntimeError):
        mix.model(bytes([MODEL]))


def test_a_law_is_decoded_too() -> None:
    mix = StereoMix(Codec.PCMA)
    mix.model(b"\xd5" * 4)
    mix.caller(b"\x55" * 4)
    left, right = channels(mix.take_frames())
    expected = array.array("h", g711.decode(Codec.PCMA, b"\x55"))[0]
    assert left == [expected] * 4
    assert right == [array.array("h", g711.decode(Codec.PCMA, b"\xd5"))[0]] * 4


def test_interleave_puts_left_then_right_for_each_sample() -> None:
    assert (
        interleave(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08") == b"\x01\x02\x05\x06\x03\x04\x07\x08"
    )
    assert interleave(b"", b"") == b""
    with pytest.raises(ValueError):
        interleave(b"\x01\x02", b"")
    with pytest.raises(ValueError):
        interleave(b"\x01", b"\x02")


Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("caller"), st.integers(1, 400)),
        st.tuples(st.just("model"), st.integers(1, 400)),
        st.tuples(st.just("cleared"), st.just(0)),
        st.tuples(st.just("take"), st.just(0)),
    ),
    max_size=40,
)


def run(plan: list[Step], *, take: bool) -> tuple[bytes, StereoMix]:
    mix = StereoMix(Codec.PCMU)
    out = b""
    for number, (kind, count) in enumerate(plan):
        code = 1 + number % 120
        if kind == "caller":
            mix.caller(bytes([code]) * count)
        elif kind == "model":
            mix.model(bytes([code]) * count)
        elif kind == "cleared":
            mix.cleared()
        elif take:
            out += mix.take_frames()
    return out + mix.finish(), mix


@given(steps)
def test_taking_frames_as_the_call_goes_gives_the_same_file_as_taking_them_at_the_end(
    plan: list[Step],
) -> None:
    incremental, mix = run(plan, take=True)
    at_once, _ = run(plan, take=False)
    assert incremental == at_once
    assert len(incremental) == mix.caller_samples * FRAME_WIDTH
