from __future__ import annotations

import array
import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.call.events import Codec
from bridge.media import g711, synth


def test_silence_is_the_code_for_zero_not_full_scale() -> None:
    assert g711.silence(Codec.PCMU, 3) == b"\xff\xff\xff"
    assert g711.silence(Codec.PCMA, 2) == b"\xd5\xd5"
    assert g711.rms(Codec.PCMU, g711.silence(Codec.PCMU, 160)) == 0
    assert g711.rms(Codec.PCMA, g711.silence(Codec.PCMA, 160)) == 8  # A-law zero decodes to +8
    assert g711.rms(Codec.PCMU, b"\x00" * 160) > 30000


@given(st.binary(max_size=400))
def test_ulaw_decode_encode_round_trip_is_exact(payload: bytes) -> None:
    # u-law 0x7F and 0xFF both mean zero; encode picks 0xFF.
    expected = payload.replace(b"\x7f", b"\xff")
    assert g711.encode(Codec.PCMU, g711.decode(Codec.PCMU, payload)) == expected


@given(st.binary(max_size=400))
def test_transcode_matches_decoding_and_encoding(payload: bytes) -> None:
    via_linear = g711.encode(Codec.PCMA, g711.decode(Codec.PCMU, payload))
    assert g711.transcode(Codec.PCMU, Codec.PCMA, payload) == via_linear
    assert g711.transcode(Codec.PCMA, Codec.PCMA, payload) == payload


def test_duration() -> None:
    assert g711.duration_ms(g711.FRAME_BYTES) == 20
    assert g711.duration_ms(7) == 0


def wav_pcm(samples: list[int], width: int = 2) -> bytes:
    data = array.array({1: "b", 2: "h"}[width], samples)
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def test_from_linear_handles_rate_channels_and_width() -> None:
    tone = [int(8000 * math.sin(2 * math.pi * 440 * n / 16000)) for n in range(16000)]
    mono_16k = g711.from_linear(Codec.PCMU, wav_pcm(tone), width=2, rate=16000, channels=1)
    assert len(mono_16k) == pytest.approx(8000, abs=2)
    stereo = wav_pcm([s for sample in tone[:8000] for s in (sample, sample)])
    assert g711.from_linear(Codec.PCMU, stereo, width=2, rate=8000, channels=2) == g711.encode(
        Codec.PCMU, wav_pcm(tone[:8000])
    )
    unsigned_silence = bytes([128]) * 80
    silent = g711.from_linear(Codec.PCMU, unsigned_silence, width=1, rate=8000, channels=1)
    assert silent == g711.silence(Codec.PCMU, 80)


def test_synthetic_speech_is_loud_and_deterministic() -> None:
    first = synth.utterance(Codec.PCMA, duration_ms=300)
    assert len(first) == 2400
    assert first == synth.utterance(Codec.PCMA, duration_ms=300)
    assert g711.rms(Codec.PCMA, first) > 3000
