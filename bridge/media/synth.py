"""Deterministic test signals in G.711: tones and speech-like bursts for test callers."""

from __future__ import annotations

import array
import math

from bridge.call.events import Codec
from bridge.media import g711


def tone(codec: Codec, *, frequency: float, duration_ms: int, amplitude: int = 8000) -> bytes:
    """A sine tone of `duration_ms` milliseconds."""
    count = duration_ms * g711.BYTES_PER_MS
    step = 2 * math.pi * frequency / g711.SAMPLE_RATE
    # Native byte order, which is what audioop (behind g711.encode) expects.
    samples = array.array("h", (int(amplitude * math.sin(step * n)) for n in range(count)))
    return g711.encode(codec, samples.tobytes())


def utterance(codec: Codec, *, duration_ms: int, seed: int = 0) -> bytes:
    """A speech-like signal: tones that change pitch every 100 ms, loud enough for any VAD."""
    pieces = []
    for index in range(0, duration_ms, 100):
        frequency = 220 + ((index // 100 * 7 + seed * 13) % 12) * 40
        pieces.append(tone(codec, frequency=frequency, duration_ms=min(100, duration_ms - index)))
    return b"".join(pieces)
