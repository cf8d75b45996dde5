"""The stereo mix of a call for its recording: the caller on the left, the model on the right.

Both channels are 16-bit linear PCM at 8000 samples/s (G.711 decoded, ITU-T G.711), interleaved
left/right and little-endian, as a WAV file's ``data`` chunk holds them (RIFF WAVE, PCM format 1).

The call's clock is the caller's audio: it arrives at 8000 samples/s in 20 ms frames whatever the
network does, so the left channel is simply every caller sample in order, and "now" on the
recording's timeline is the number of caller samples so far. Model audio is not real time (the
model sends it faster than it is played), so it is laid on that timeline the way the caller's
side plays it: each chunk starts when the previous one ends, or now if that has passed (the
caller's side was quiet meanwhile, which is silence on the right). ``cleared()`` (barge-in) drops
the model audio beyond now: it was queued on the caller's side and never played.

Everything up to now is final and is handed out by ``take_frames()``, so a recording is written
as the call goes. Model audio still beyond now when the call ends was never heard and is dropped
by ``finish()``. A gap in the caller's audio (lost packets that no one filled) shortens the
timeline instead of being silence; the two channels stay aligned with each other.
"""

from __future__ import annotations

from bridge.call.events import Codec
from bridge.media import g711

CHANNELS = 2
SAMPLE_WIDTH = 2
FRAME_WIDTH = CHANNELS * SAMPLE_WIDTH
"""Bytes per stereo sample frame (left and right, 16 bits each)."""


class StereoMix:
    """Builds the interleaved stereo PCM of one call from its caller and model audio."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        # Samples handed out by take_frames(); both buffers start at this position.
        self._taken = 0
        self._caller_samples = 0
        # Caller PCM not yet taken: exactly caller_samples - taken samples.
        self._left = bytearray()
        # Model PCM from `taken` on, silence included; may reach beyond the caller's position.
        self._right = bytearray()
        self._finished = False

    @property
    def caller_samples(self) -> int:
        """Samples of caller audio so far: the recording's "now"."""
        return self._caller_samples

    @property
    def ready_samples(self) -> int:
        """Samples that are final and not taken yet (what `take_frames()` would return)."""
        return self._caller_samples - self._taken

    @property
    def model_end(self) -> int:
        """Where on the timeline the model audio queued so far ends (samples)."""
        return self._taken + len(self._right) // SAMPLE_WIDTH

    def caller(self, payload: bytes) -> None:
        """Caller audio in the call's codec, as it arrived; advances the timeline."""
        self._check_open()
        self._left += g711.to_little_endian_pcm(self.codec, payload)
        self._caller_samples += len(payload)

    def model(self, payload: bytes) -> None:
        """Model audio in the call's codec, as it was handed to the caller's side."""
        self._check_open()
        end = self.model_end
        start = max(self._caller_samples, end)
        if start > end:
            self._right += bytes((start - end) * SAMPLE_WIDTH)
        self._right += g711.to_little_endian_pcm(self.codec, payload)

    def cleared(self) -> None:
        """The caller's side dropped what it had not played: forget model audio beyond now."""
        played = (self._caller_samples - self._taken) * SAMPLE_WIDTH
        del self._right[played:]

    def take_frames(self) -> bytes:
        """The interleaved stereo PCM of everything final (up to now) not taken before."""
        count = self._caller_samples - self._taken
        if count <= 0:
            return b""
        size = count * SAMPLE_WIDTH
        left = bytes(self._left[:size])
        right = bytes(self._right[:size])
        del self._left[:size]
        del self._right[:size]
        self._taken += count
        if len(right) < size:
            right += bytes(size - len(right))
        return interleave(left, right)

    def finish(self) -> bytes:
        """The rest of the call's stereo PCM; model audio beyond now was never heard and is
        dropped. Nothing can be added afterwards."""
        rest = self.take_frames()
        self._right.clear()
        self._finished = True
        return rest

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the stereo mix is finished")


def interleave(left: bytes, right: bytes) -> bytes:
    """Two 16-bit mono channels of the same length to one interleaved stereo buffer."""
    if len(left) != len(right) or len(left) % SAMPLE_WIDTH:
        raise ValueError("both channels need the same whole number of 16-bit samples")
    stereo = bytearray(2 * len(left))
    # Byte-wise strided copies run in C: no per-sample Python loop on the per-frame path.
    stereo[0::4] = left[0::2]
    stereo[1::4] = left[1::2]
    stereo[2::4] = right[0::2]
    stereo[3::4] = right[1::2]
    return bytes(stereo)
