"""G.711 u-law and A-law (ITU-T G.711): silence, decode, encode, transcode and energy.

This is the one module that imports ``audioop``: the standard library's up to Python 3.12 and the
``audioop-lts`` package from 3.13 on (PEP 594 removed it). Transcoding between the two laws uses
256-byte tables with ``bytes.translate``, as G.711 itself tabulates it.
"""

from __future__ import annotations

import sys
import warnings

from bridge.call.events import Codec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE = 8000
BYTES_PER_MS = 8
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS

# encode(0): 0xFF in u-law and 0xD5 in A-law; 0x00 is full scale in both and must never be silence.
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5

_SILENCE_BYTE = {Codec.PCMU: ULAW_SILENCE, Codec.PCMA: ALAW_SILENCE}
_ALL_CODES = bytes(range(256))
_ULAW_TO_ALAW = audioop.lin2alaw(audioop.ulaw2lin(_ALL_CODES, 2), 2)
_ALAW_TO_ULAW = audioop.lin2ulaw(audioop.alaw2lin(_ALL_CODES, 2), 2)


def silence(codec: Codec, nbytes: int) -> bytes:
    """`nbytes` samples of digital silence in `codec`."""
    return bytes([_SILENCE_BYTE[codec]]) * nbytes


def decode(codec: Codec, payload: bytes) -> bytes:
    """G.711 bytes to 16-bit linear PCM in native byte order."""
    if codec is Codec.PCMU:
        return bytes(audioop.ulaw2lin(payload, 2))
    return bytes(audioop.alaw2lin(payload, 2))


def encode(codec: Codec, pcm: bytes) -> bytes:
    """16-bit linear PCM in native byte order to G.711 bytes."""
    if codec is Codec.PCMU:
        return bytes(audioop.lin2ulaw(pcm, 2))
    return bytes(audioop.lin2alaw(pcm, 2))


def transcode(source: Codec, target: Codec, payload: bytes) -> bytes:
    """Convert between the two laws sample by sample (identity when they are the same)."""
    if source is target:
        return payload
    table = _ULAW_TO_ALAW if source is Codec.PCMU else _ALAW_TO_ULAW
    return payload.translate(table)


def rms(codec: Codec, payload: bytes) -> int:
    """Root-mean-square level of the decoded samples, on the 16-bit scale (0..32767)."""
    if not payload:
        return 0
    return int(audioop.rms(decode(codec, payload), 2))


def duration_ms(nbytes: int) -> int:
    """Whole milliseconds that `nbytes` of G.711 last."""
    return nbytes // BYTES_PER_MS


def from_linear(
    codec: Codec, pcm: bytes, *, width: int, rate: int, channels: int, little_endian: bool = True
) -> bytes:
    """Linear PCM as WAV stores it (little-endian; 8-bit unsigned) to 8 kHz mono G.711."""
    if width == 1:
        pcm = audioop.bias(pcm, 1, -128)
    elif little_endian != (sys.byteorder == "little"):
        pcm = audioop.byteswap(pcm, width)
    if channels == 2:
        pcm = audioop.tomono(pcm, width, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{channels} channels: only mono and stereo are supported")
    if width != 2:
        pcm = audioop.lin2lin(pcm, width, 2)
    if rate != SAMPLE_RATE:
        pcm, _ = audioop.ratecv(pcm, 2, 1, rate, SAMPLE_RATE, None)
    return encode(codec, bytes(pcm))


def to_little_endian_pcm(codec: Codec, payload: bytes) -> bytes:
    """G.711 to 16-bit PCM in the byte order WAV files use."""
    pcm = decode(codec, payload)
    if sys.byteorder != "little":
        pcm = bytes(audioop.byteswap(pcm, 2))
    return pcm
