"""Reading caller audio from WAV or raw G.711 files, and writing what was heard to WAV."""

from __future__ import annotations

import os
import wave
from pathlib import Path

from bridge.call.events import Codec
from bridge.media import g711

_RAW_SUFFIXES = {
    ".ulaw": Codec.PCMU,
    ".mulaw": Codec.PCMU,
    ".pcmu": Codec.PCMU,
    ".alaw": Codec.PCMA,
    ".pcma": Codec.PCMA,
}


def read_audio(path: str | os.PathLike[str], codec: Codec) -> bytes:
    """A PCM WAV file (any rate, mono or stereo) or a raw .ulaw/.alaw file as 8 kHz G.711."""
    suffix = Path(path).suffix.lower()
    if suffix in _RAW_SUFFIXES:
        return g711.transcode(_RAW_SUFFIXES[suffix], codec, Path(path).read_bytes())
    with wave.open(os.fspath(path), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
        return g711.from_linear(
            codec,
            pcm,
            width=wav.getsampwidth(),
            rate=wav.getframerate(),
            channels=wav.getnchannels(),
        )


def write_wav(path: str | os.PathLike[str], codec: Codec, audio: bytes) -> None:
    """Write G.711 audio as a 16-bit 8 kHz mono PCM WAV file any player opens."""
    with wave.open(os.fspath(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(g711.SAMPLE_RATE)
        wav.writeframes(g711.to_little_endian_pcm(codec, audio))
