"""A call's stereo recording as a WAV file (RIFF WAVE, PCM): caller left, model right.

The mix is bridge.media.stereo; this writes it to disk as the call goes. The file is a canonical
44-byte WAV header (``fmt`` chunk: PCM format 1, 2 channels, 8000 samples/s, 16 bits) followed by
one ``data`` chunk. It is created with O_EXCL (next to the call's journal, never over another
file), and audio is written about once a second of the call's audio rather than per frame, to
keep system calls off the per-frame path.

After a crash: every write also brings the header's RIFF and ``data`` sizes up to date (one
44-byte ``pwrite`` at offset 0), so the file on disk is always a valid WAV of the audio written
so far; a crash (even SIGKILL) loses only the audio buffered since the last write (at most
about `flush_every_s`), and any reader (the stdlib ``wave`` module, sox, ffmpeg) opens it
without special cases: no 0 or 0xFFFFFFFF "unknown size" marker is ever left in the file.
:meth:`CallRecording.close` writes the rest and fsyncs.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from bridge.call.events import Codec
from bridge.media import g711
from bridge.media.stereo import CHANNELS, FRAME_WIDTH, SAMPLE_WIDTH, StereoMix
from bridge.records import create_exclusive

HEADER_SIZE = 44
# A RIFF chunk size is 32 bits: stop before the data would overflow it (about 37 hours).
MAX_DATA_BYTES = 0xFFFFFFFF - (HEADER_SIZE - 8)
MAX_DATA_BYTES -= MAX_DATA_BYTES % FRAME_WIDTH


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte header of a stereo 16-bit 8 kHz PCM WAV file with `data_bytes` of audio."""
    rate = g711.SAMPLE_RATE
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        HEADER_SIZE - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        CHANNELS,
        rate,
        rate * FRAME_WIDTH,
        FRAME_WIDTH,
        SAMPLE_WIDTH * 8,
        b"data",
        data_bytes,
    )


class CallRecording:
    """Records a call as it goes; the supervisor's AudioTap (caller / model / cleared).

    The tap methods run on the call's control loop: they buffer, and about once a second write
    what is final (a ~32 KB write and a 44-byte header update). A write error is raised as
    OSError; the supervisor then drops the tap and the call goes on. :meth:`close` (blocking:
    fsync) must be called once the call is over, also after such an error."""

    def __init__(self, fd: int, path: Path, *, codec: Codec, flush_every_s: float) -> None:
        self.path = path
        self.data_bytes = 0
        self._fd: int | None = fd
        # After a failed write the file keeps what it had: later audio would not line up.
        self._failed = False
        self._mix = StereoMix(codec)
        self._flush_samples = max(1, round(flush_every_s * g711.SAMPLE_RATE))

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, codec: Codec, flush_every_s: float = 1.0
    ) -> CallRecording:
        """Create the recording at `path` (``.2``, ``.3``, ... before the extension if the name
        is taken) with an empty WAV's header. Raises OSError."""
        wanted = Path(path)
        fd, created = create_exclusive(wanted.parent, wanted.stem, wanted.suffix)
        try:
            _pwrite_all(fd, wav_header(0), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, created, codec=codec, flush_every_s=flush_every_s)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def caller(self, payload: bytes) -> None:
        """Caller audio in the call's codec (the recording's clock)."""
        if self._fd is None or self._failed:
            return
        self._mix.caller(payload)
        if self._mix.ready_samples >= self._flush_samples:
            self._write(self._mix.take_frames())

    def model(self, payload: bytes) -> None:
        """Model audio in the call's codec, as handed to the caller's side."""
        if self._fd is not None and not self._failed:
            self._mix.model(payload)

    def cleared(self) -> None:
        """The caller's side dropped the model audio it had not played yet."""
        if self._fd is not None:
            self._mix.cleared()

    def close(self) -> None:
        """Write the rest of the call, fix the header, fsync and close. Raises OSError; the file
        is closed anyway. Closing twice does nothing."""
        if self._fd is None:
            return
        try:
            rest = self._mix.finish()
            if not self._failed:
                self._write(rest)
            os.fsync(self._fd)
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _write(self, frames: bytes) -> None:
        assert self._fd is not None
        frames = frames[: MAX_DATA_BYTES - self.data_bytes]
        if not frames:
            return
        # The data goes first, then the sizes that cover it: a crash in between leaves a header
        # that is only behind, never ahead of what the file holds.
        try:
            _pwrite_all(self._fd, frames, HEADER_SIZE + self.data_bytes)
            self.data_bytes += len(frames)
            _pwrite_all(self._fd, wav_header(self.data_bytes), 0)
        except OSError:
            self._failed = True
            raise


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of `data` at `offset` (one call for a regular file unless the disk is full)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
