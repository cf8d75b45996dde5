"""Frame stamps: a call number and a frame number written into the first bytes of a u-law frame.

The loopback model answers a caller turn with the caller's own audio, unchanged (same law in and
out), so a stamp written by the simulated gateway is seen again by the model in
``input_audio_buffer.append`` and by the gateway in the reply's ``media`` messages. That is how the
benchmark matches a frame across processes without trusting the daemon's framing.

A stamp is 11 u-law bytes: a 3-byte marker, then eight 5-bit symbols (call 15 bits, frame 20,
check 5). Every byte is a u-law code of segment 0, i.e. a sample within +-124 of zero on the
16-bit scale, so a stamped silence frame stays far below any VAD threshold (RMS < 35) and a
stamped speech frame loses only its first 11 samples. Line silence (0xFF) and tones never contain
the marker, and the check byte rejects chance matches.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

STAMP_BYTES = 11
MAX_CALLS = 1 << 15
MAX_FRAMES = 1 << 20

_MARKER = bytes([0xF3, 0x7A, 0xF5])
_INVALID = 0x80


def _symbol_byte(symbol: int) -> int:
    # Segment-0 u-law codes: 0xF0-0xFF are small positive samples, 0x70-0x7F small negative ones.
    return 0xF0 | symbol if symbol < 16 else 0x70 | (symbol - 16)


_BYTE_OF_SYMBOL = bytes(_symbol_byte(s) for s in range(32))
# bytes.translate table: a symbol byte to its value 0-31, anything else to 0x80 (not ASCII).
_SYMBOL_TABLE = bytearray([_INVALID] * 256)
for _symbol, _byte in enumerate(_BYTE_OF_SYMBOL):
    _SYMBOL_TABLE[_byte] = _symbol
_SYMBOLS_OF = bytes(_SYMBOL_TABLE)
# Two symbols (10 bits) at a time, so a stamp is built from three table lookups.
_PAIRS = [bytes([_BYTE_OF_SYMBOL[v >> 5], _BYTE_OF_SYMBOL[v & 31]]) for v in range(1024)]


def _check(call: int, frame: int) -> int:
    return (call * 11 + frame * 7 + (frame >> 5) * 3 + (frame >> 10) + 13) & 31


def stamp(call: int, frame: int) -> bytes:
    """The 11 bytes that identify frame `frame` of call `call`.

    Layout after the marker: call in 3 symbols (15 bits), frame in 4 (20 bits), 1 check symbol.
    """
    if not 0 <= call < MAX_CALLS or not 0 <= frame < MAX_FRAMES:
        raise ValueError(f"stamp out of range: call {call}, frame {frame}")
    return b"".join(
        (
            _MARKER,
            _BYTE_OF_SYMBOL[call >> 10 : (call >> 10) + 1],
            _PAIRS[call & 1023],
            _PAIRS[frame >> 10],
            _PAIRS[frame & 1023],
            _BYTE_OF_SYMBOL[_check(call, frame) : _check(call, frame) + 1],
        )
    )


def find_stamps(data: bytes) -> Iterator[tuple[int, int]]:
    """Every complete stamp in `data`, as (call, frame), in order."""
    position = data.find(_MARKER)
    limit = len(data) - STAMP_BYTES
    while 0 <= position <= limit:
        s = data[position + 3 : position + STAMP_BYTES].translate(_SYMBOLS_OF)
        if s.isascii():
            call = (s[0] << 10) | (s[1] << 5) | s[2]
            frame = (s[3] << 15) | (s[4] << 10) | (s[5] << 5) | s[6]
            if s[7] == _check(call, frame):
                yield call, frame
                position = data.find(_MARKER, position + STAMP_BYTES)
                continue
        position = data.find(_MARKER, position + 1)


class StampScanner:
    """Finds stamps in a byte stream that arrives in pieces (a stamp may straddle two pieces)."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        joined = self._carry + data if self._carry else data
        found = list(find_stamps(joined))
        # A stamp is only reported once it is complete, and a complete one never fits in the
        # carry (STAMP_BYTES - 1 bytes), so nothing is reported twice.
        self._carry = joined[-(STAMP_BYTES - 1) :]
        return found


class TimeTable:
    """Times indexed by frame number (NaN where a frame was never seen), growing as needed."""

    __slots__ = ("duplicates", "times")

    def __init__(self) -> None:
        self.times = array("d")
        self.duplicates = 0

    def set_first(self, frame: int, at: float) -> None:
        """Record `at` for `frame` unless the frame was seen before (then count a duplicate)."""
        times = self.times
        if frame >= len(times):
            times.extend([float("nan")] * (frame + 1 - len(times) + 256))
        if times[frame] == times[frame]:  # not NaN: seen before
            self.duplicates += 1
        else:
            times[frame] = at

    def get(self, frame: int) -> float:
        return self.times[frame] if frame < len(self.times) else float("nan")

    def to_bytes(self) -> bytes:
        return self.times.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> TimeTable:
        table = cls()
        table.times.frombytes(data)
        return table
