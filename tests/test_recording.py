"""Stereo WAV call recordings (bridge.recording) as a reader sees them, during and after a call."""

from __future__ import annotations

import array
import datetime as dt
import struct
import sys
import wave
from pathlib import Path

from bridge.call.events import Codec
from bridge.media import g711
from bridge.recording import HEADER_SIZE, CallRecording, wav_header
from bridge.records import CallJournal
from bridge.supervisor import AudioTap

CALLER = 0x10
MODEL = 0x20
FRAME = g711.FRAME_BYTES  # 20 ms


def read_wav(path: Path) -> tuple[list[int], list[int]]:
    """The left and right samples of a WAV file, checking its format on the way."""
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        samples = array.array("h", wav.readframes(wav.getnframes()))
    if sys.byteorder != "little":
        samples.byteswap()
    return list(samples[0::2]), list(samples[1::2])


def value(code: int) -> int:
    return array.array("h", g711.decode(Codec.PCMU, bytes([code])))[0]


def test_the_header_is_a_canonical_stereo_pcm_wav_header() -> None:
    header = wav_header(320)
    assert len(header) == HEADER_SIZE
    assert header[:4] == b"RIFF"
    assert struct.unpack("<I", header[4:8]) == (36 + 320,)
    assert header[8:16] == b"WAVEfmt "
    assert struct.unpack("<IHHIIHH", header[16:36]) == (16, 1, 2, 8000, 32000, 4, 16)
    assert header[36:40] == b"data"
    assert struct.unpack("<I", header[40:44]) == (320,)


def test_a_recording_is_a_stereo_wav_with_the_caller_left_and_the_model_right(
    tmp_path: Path,
) -> None:
    recording = CallRecording.open(tmp_path / "c-1.wav", codec=Codec.PCMU)
    tap: AudioTap = recording
    assert read_wav(recording.path) == ([], [])
    for number in range(150):  # 3 s of caller audio; the model answers at 1 s, cut off at 2 s
        if number == 50:
            tap.model(bytes([MODEL]) * FRAME * 100)
        if number == 100:
            tap.cleared()
        tap.caller(bytes([CALLER]) * FRAME)
    recording.close()
    left, right = read_wav(recording.path)
    assert left == [value(CALLER)] * 24000
    assert right == [0] * 8000 + [value(MODEL)] * 8000 + [0] * 8000
    assert recording.data_bytes == 24000 * 4
    assert recording.path.stat().st_size == HEADER_SIZE + 24000 * 4
    recording.close()  # twice: nothing happens
    tap.caller(bytes([CALLER]) * FRAME)  # after the end: ignored
    assert read_wav(recording.path)[0] == [value(CALLER)] * 24000


def test_audio_is_written_as_the_call_goes_about_once_a_second(tmp_path: Path) -> None:
    recording = CallRecording.open(tmp_path / "c-1.wav", codec=Codec.PCMU)
    for _ in range(49):
        recording.caller(bytes([CALLER]) * FRAME)
    assert recording.path.stat().st_size == HEADER_SIZE  # held back: under a second
    recording.caller(bytes([CALLER]) * FRAME)
    assert recording.path.stat().st_size == HEADER_SIZE + 8000 * 4
    recording.close()


def test_after_a_crash_the_file_is_a_valid_wav_of_the_audio_written_so_far(
    tmp_path: Path,
) -> None:
    recording = CallRecording.open(tmp_path / "c-1.wav", codec=Codec.PCMU)
    recording.model(bytes([MODEL]) * 4000)
    for _ in range(130):  # 2.6 s: two whole seconds are on disk, 0.6 s still in memory
        recording.caller(bytes([CALLER]) * FRAME)
    # Read while the writer is still open and never closes it, as after a SIGKILL: what the
    # process wrote is in the page cache, what it buffered is gone.
    left, right = read_wav(recording.path)
    assert left == [value(CALLER)] * 16000
    assert right == [value(MODEL)] * 4000 + [0] * 12000
    recording.close()
    assert len(read_wav(recording.path)[0]) == 20800


def test_a_recording_never_overwrites_a_file(tmp_path: Path) -> None:
    (tmp_path / "c-1.wav").write_bytes(b"another call")
    recording = CallRecording.open(tmp_path / "c-1.wav", codec=Codec.PCMA)
    recording.caller(g711.silence(Codec.PCMA, FRAME))
    recording.close()
    assert recording.path == tmp_path / "c-1.2.wav"
    assert (tmp_path / "c-1.wav").read_bytes() == b"another call"
    assert read_wav(recording.path) == ([8] * FRAME, [0] * FRAME)  # A-law zero decodes to +8


def test_the_recording_goes_next_to_the_calls_journal(tmp_path: Path) -> None:
    journal = CallJournal.open(
        tmp_path,
        call_id="c-7",
        started_at=dt.datetime(2026, 11, 21, 8, 0, tzinfo=dt.UTC),
        header={},
        transcripts=True,
    )
    recording = CallRecording.open(journal.recording_path, codec=Codec.PCMU)
    recording.close()
    journal.close()
    assert recording.path == tmp_path / "journal" / "2026-11-21" / "c-7.wav"
    assert read_wav(recording.path) == ([], [])
