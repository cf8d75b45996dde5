"""One media stream as a sans-IO message core (protocols.md §1.2, §1.3; DESIGN.md rule 3).

Feed it every websocket text frame with :meth:`MediaStreamSession.receive_message`, read what it
learned with :meth:`~MediaStreamSession.next_event`, give it the call's commands
(:meth:`~MediaStreamSession.play`, :meth:`~MediaStreamSession.clear`) and send what
:meth:`~MediaStreamSession.messages_to_send` returns. It never reads a clock: time comes in as
`now`, and :meth:`~MediaStreamSession.next_deadline` says when to call
:meth:`~MediaStreamSession.handle_timeout`.

Theory of operation, inbound
----------------------------
A stream is ``connected`` → ``start`` → ``media``/``dtmf``/``mark``… → ``stop``.

==================  ===============================================================  ============
state               message                                                          next state
==================  ===============================================================  ============
AWAITING_START      ``connected``                                                    (same)
AWAITING_START      ``start`` → :class:`MediaStreamStarted`                          STREAMING
AWAITING_START      ``media``/``dtmf`` → TelephonyEnded(TELEPHONY_ERROR), close 1002  ENDED
AWAITING_START      a frame that does not decode → TelephonyEnded, close with hint   ENDED
AWAITING_START      no ``start`` by the deadline → TelephonyEnded, close 1002        ENDED
STREAMING           ``media`` of the inbound track → CallerAudio                      (same)
STREAMING           ``dtmf`` → CallerDtmf; ``mark`` → AudioPlayed (see below)         (same)
STREAMING           a second ``start`` → TelephonyEnded(TELEPHONY_ERROR), close 1002 ENDED
STREAMING           a frame that does not decode: counted and dropped                (same)
any but ENDED       ``stop`` → TelephonyEnded(CALLER_HANGUP), close 1000              ENDED
==================  ===============================================================  ============

Before ``start`` we do not know the call, so a frame we cannot read is fatal; once streaming, one
bad frame costs at most a few milliseconds of audio and the call goes on. Unknown events are
counted and ignored everywhere. The close code for the adapter is :attr:`close_code`.

Theory of operation, outbound (confirmed playout)
-------------------------------------------------
Twilio queues the audio we send and plays it in real time; a ``mark`` sent after some audio comes
back once that audio has been played. :meth:`play` only queues audio here. We release it as
chunks of `outbound_chunk_frames` 20 ms frames (never two items in one chunk, so the last chunk of
an item may be shorter, and a chunk may be shorter when less audio is waiting), each chunk a
``media`` message followed by a ``mark`` with a fresh name (``m1``, ``m2``…). A chunk goes out only
while the audio sent but not yet confirmed is below `playout_lead_ms`, so we stay at most that far
ahead of the caller: Twilio advises staying a few seconds ahead at most, and a short lead keeps
``clear`` cheap. Each mark remembers its item and the item's byte position at the end of its
chunk; when it comes back the caller has heard the item up to there, which we report as
:class:`AudioPlayed` — the only basis for truncating a reply after barge-in — and the freed
window releases more audio. Marks come back in order; one echoed out of order confirms the marks
before it too (their audio played first).

:meth:`clear` drops the audio not yet sent and forgets every mark in flight, then sends ``clear``.
Twilio answers a ``clear`` by echoing every pending mark, but that audio was *not* played, so those
echoes must not produce AudioPlayed: their names are no longer known and they are counted and
ignored (mark names are never reused within a stream).

Caller audio is passed on as it arrives; gaps are not filled (the model's VAD needs only what
arrived).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict, deque
from collections.abc import Mapping

import attrs

from bridge.call.events import (
    AudioPlayed,
    CallerAudio,
    CallerDtmf,
    Codec,
    EndReason,
    TelephonyEnded,
    TelephonyEvent,
)
from bridge.errors import LocalProtocolError, RemoteProtocolError
from bridge.media.g711 import BYTES_PER_MS, FRAME_BYTES
from bridge.proto.mediastream.codec import decode, encode, encode_media, media_audio
from bridge.proto.mediastream.messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundClear,
    OutboundMark,
    Start,
    Stop,
    Unknown,
)

# websocket close codes (RFC 6455 §7.4.1)
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002

INBOUND_TRACKS = frozenset({"inbound", "inbound_track"})
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class StreamState(enum.Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    ENDED = "ended"


@attrs.frozen(kw_only=True)
class MediaStreamStarted:
    """The stream's ``start`` message: who is calling, in which codec, with which parameters."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    encoding: str
    codec: Codec
    custom_parameters: Mapping[str, str]


@attrs.frozen(kw_only=True)
class MediaStreamStatistics:
    """Counters of one stream; `pending_bytes` and `unconfirmed_bytes` are what it buffers now."""

    media_messages_in: int
    bytes_in: int
    other_track_messages: int
    dtmf_in: int
    media_messages_out: int
    bytes_out: int
    marks_sent: int
    marks_confirmed: int
    stale_marks: int
    clears_sent: int
    malformed: int
    unknown: int
    cleared_pending_bytes: int
    cleared_unconfirmed_bytes: int
    pending_bytes: int
    unconfirmed_bytes: int

    @property
    def frames_in(self) -> int:
        """Caller audio received, in 20 ms frames."""
        return self.bytes_in // FRAME_BYTES

    @property
    def frames_out(self) -> int:
        """Audio sent to the caller, in 20 ms frames."""
        return self.bytes_out // FRAME_BYTES


class _Segment:
    """Audio of one item waiting to be sent; `start` is the position of `data[0]` in the item."""

    __slots__ = ("data", "item_id", "offset", "start")

    def __init__(self, item_id: str, data: bytes, start: int) -> None:
        self.item_id = item_id
        self.data = data
        self.start = start
        self.offset = 0


@attrs.frozen
class _InFlightMark:
    item_id: str
    item_position: int
    chunk_bytes: int


class MediaStreamSession:
    """The media-stream protocol of one call, without I/O (see the module docstring)."""

    def __init__(
        self,
        *,
        outbound_chunk_frames: int,
        playout_lead_ms: int,
        start_timeout_s: float,
        now: float,
    ) -> None:
        if outbound_chunk_frames < 1:
            raise ValueError("outbound_chunk_frames must be at least 1")
        if playout_lead_ms < 1:
            raise ValueError("playout_lead_ms must be positive")
        self._chunk_bytes = outbound_chunk_frames * FRAME_BYTES
        self._lead_bytes = playout_lead_ms * BYTES_PER_MS
        self._start_deadline = now + start_timeout_s
        self._state = StreamState.AWAITING_START
        self._close_code: int | None = None
        self.last_problem = ""
        self._started: MediaStreamStarted | None = None
        self._events: deque[MediaStreamStarted | TelephonyEvent] = deque()
        self._outbox: list[str] = []
        self._pending: deque[_Segment] = deque()
        self._pending_bytes = 0
        self._item_positions: dict[str, int] = {}
        self._in_flight: OrderedDict[str, _InFlightMark] = OrderedDict()
        self._unconfirmed_bytes = 0
        self._next_mark_number = 1
        # counters
        self._media_messages_in = 0
        self._bytes_in = 0
        self._other_track_messages = 0
        self._dtmf_in = 0
        self._media_messages_out = 0
        self._bytes_out = 0
        self._marks_confirmed = 0
        self._stale_marks = 0
        self._clears_sent = 0
        self._malformed = 0
        self._unknown = 0
        self._cleared_pending_bytes = 0
        self._cleared_unconfirmed_bytes = 0

    # ---- what we know about the stream ---------------------------------------------------------

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def started(self) -> MediaStreamStarted | None:
        """The ``start`` message once it arrived."""
        return self._started

    @property
    def codec(self) -> Codec | None:
        return self._started.codec if self._started else None

    @property
    def stream_sid(self) -> str | None:
        return self._started.stream_sid if self._started else None

    @property
    def call_sid(self) -> str | None:
        return self._started.call_sid if self._started else None

    @property
    def wants_to_send(self) -> bool:
        """Whether :meth:`messages_to_send` has something (cheap; asked after every message)."""
        return bool(self._outbox)

    @property
    def malformed_count(self) -> int:
        """Frames that could not be decoded so far; `last_problem` says what was wrong last."""
        return self._malformed

    @property
    def close_code(self) -> int | None:
        """The websocket close code the stream ended with, once it ended; None while it runs."""
        return self._close_code

    # ---- inbound -------------------------------------------------------------------------------

    def receive_message(self, message: str | bytes, now: float) -> None:
        """Handle one websocket frame from the gateway."""
        if self._state is StreamState.ENDED:
            return
        try:
            # nearly every message is media: its fast path skips building a Media message
            audio = media_audio(message)
            if audio is not None:
                self._receive_media(*audio)
                return
            decoded = decode(message)
        except RemoteProtocolError as exc:
            self._malformed += 1
            self.last_problem = str(exc)
            if self._state is StreamState.AWAITING_START:
                self._end(
                    EndReason.TELEPHONY_ERROR, f"unreadable message before start: {exc}", exc.hint
                )
            return
        match decoded:
            case Media(track=track, payload=payload):
                self._receive_media(track, payload)
            case Mark(name=name):
                self._receive_mark(name)
            case Dtmf(digit=digit):
                self._receive_dtmf(digit)
            case Start():
                self._receive_start(decoded)
            case Stop():
                self._end(EndReason.CALLER_HANGUP, "stop", CLOSE_NORMAL)
            case Connected():
                pass
            case Unknown():
                self._unknown += 1

    def _receive_media(self, track: str, payload: bytes) -> None:
        if self._state is StreamState.AWAITING_START:
            self._end(EndReason.TELEPHONY_ERROR, "media before start", CLOSE_PROTOCOL_ERROR)
            return
        if track not in INBOUND_TRACKS:
            self._other_track_messages += 1
            return
        self._media_messages_in += 1
        self._bytes_in += len(payload)
        if payload:
            self._events.append(CallerAudio(payload))

    def _receive_dtmf(self, digit: str) -> None:
        if self._state is StreamState.AWAITING_START:
            self._end(EndReason.TELEPHONY_ERROR, "dtmf before start", CLOSE_PROTOCOL_ERROR)
            return
        digit = digit.strip().upper()
        if digit not in DTMF_DIGITS:
            self._malformed += 1
            self.last_problem = f"dtmf digit {digit[:10]!r} is not a keypad digit"
            return
        self._dtmf_in += 1
        self._events.append(CallerDtmf(digit))

    def _receive_start(self, start: Start) -> None:
        if self._state is not StreamState.AWAITING_START:
            self._end(EndReason.TELEPHONY_ERROR, "second start", CLOSE_PROTOCOL_ERROR)
            return
        self._started = MediaStreamStarted(
            stream_sid=start.stream_sid,
            call_sid=start.call_sid,
            account_sid=start.account_sid,
            tracks=start.tracks,
            encoding=start.encoding,
            codec=start.codec,
            custom_parameters=dict(start.custom_parameters),
        )
        self._state = StreamState.STREAMING
        self._events.append(self._started)

    def _receive_mark(self, name: str) -> None:
        if name not in self._in_flight:
            # an echo of a mark forgotten by clear(), or not ours
            self._stale_marks += 1
            return
        while self._in_flight:
            mark_name, mark = self._in_flight.popitem(last=False)
            self._unconfirmed_bytes -= mark.chunk_bytes
            self._marks_confirmed += 1
            self._events.append(AudioPlayed(mark.item_id, mark.item_position))
            if mark_name == name:
                break
        self._release()

    def next_event(self) -> MediaStreamStarted | TelephonyEvent | None:
        """The next thing the stream told us, or None when there is nothing new."""
        return self._events.popleft() if self._events else None

    # ---- timers --------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`handle_timeout` must next be called (``math.inf``: never)."""
        if self._state is StreamState.AWAITING_START:
            return self._start_deadline
        return math.inf

    def handle_timeout(self, now: float) -> None:
        """Act on deadlines that passed by `now`."""
        if self._state is StreamState.AWAITING_START and now >= self._start_deadline:
            self._end(EndReason.TELEPHONY_ERROR, "no start message in time", CLOSE_PROTOCOL_ERROR)

    # ---- commands ------------------------------------------------------------------------------

    def play(self, item_id: str, payload: bytes) -> None:
        """Queue audio of item `item_id` for the caller (PlayAudio).

        AudioPlayed reports positions in the item: every byte given for an item counts, so audio
        of the same item played after a :meth:`clear` keeps its place behind the dropped audio.
        """
        if self._state is StreamState.ENDED or not payload:
            return
        self._require_started("play")
        start = self._item_positions.get(item_id, 0)
        self._item_positions[item_id] = start + len(payload)
        self._pending.append(_Segment(item_id, bytes(payload), start))
        self._pending_bytes += len(payload)
        self._release()

    def clear(self) -> None:
        """Drop all audio not yet played by the caller (ClearAudio, on barge-in)."""
        if self._state is StreamState.ENDED:
            return
        stream_sid = self._require_started("clear")
        self._cleared_pending_bytes += self._pending_bytes
        self._pending.clear()
        self._pending_bytes = 0
        # With nothing in flight the gateway's queue is already empty: nothing to clear there.
        if self._in_flight:
            self._cleared_unconfirmed_bytes += self._unconfirmed_bytes
            self._in_flight.clear()
            self._unconfirmed_bytes = 0
            self._outbox.append(encode(OutboundClear(stream_sid)))
            self._clears_sent += 1

    def messages_to_send(self) -> list[str]:
        """The websocket text frames to send now, in order."""
        messages, self._outbox = self._outbox, []
        return messages

    def _release(self) -> None:
        stream_sid = self.stream_sid
        if stream_sid is None:
            return
        while self._pending and self._unconfirmed_bytes < self._lead_bytes:
            item_id, payload, item_position = self._take_chunk()
            name = f"m{self._next_mark_number}"
            self._next_mark_number += 1
            self._outbox.append(encode_media(stream_sid, payload))
            self._outbox.append(encode(OutboundMark(stream_sid, name)))
            self._in_flight[name] = _InFlightMark(item_id, item_position, len(payload))
            self._unconfirmed_bytes += len(payload)
            self._media_messages_out += 1
            self._bytes_out += len(payload)

    def _take_chunk(self) -> tuple[str, bytes, int]:
        """Up to one chunk of the first item waiting: (item id, audio, item position at its end)."""
        item_id = self._pending[0].item_id
        parts: list[bytes] = []
        wanted = self._chunk_bytes
        item_position = 0
        while wanted and self._pending and self._pending[0].item_id == item_id:
            segment = self._pending[0]
            part = segment.data[segment.offset : segment.offset + wanted]
            segment.offset += len(part)
            wanted -= len(part)
            parts.append(part)
            item_position = segment.start + segment.offset
            if segment.offset == len(segment.data):
                self._pending.popleft()
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pending_bytes -= len(payload)
        return item_id, payload, item_position

    # ---- helpers -------------------------------------------------------------------------------

    def _require_started(self, operation: str) -> str:
        if self._started is None:
            raise LocalProtocolError(f"{operation}() before the stream's start message")
        return self._started.stream_sid

    def _end(self, reason: EndReason, detail: str, close_code: int) -> None:
        self._state = StreamState.ENDED
        self._close_code = close_code
        self._pending.clear()
        self._pending_bytes = 0
        self._events.append(TelephonyEnded(reason, detail))

    def statistics(self) -> MediaStreamStatistics:
        return MediaStreamStatistics(
            media_messages_in=self._media_messages_in,
            bytes_in=self._bytes_in,
            other_track_messages=self._other_track_messages,
            dtmf_in=self._dtmf_in,
            media_messages_out=self._media_messages_out,
            bytes_out=self._bytes_out,
            marks_sent=self._next_mark_number - 1,
            marks_confirmed=self._marks_confirmed,
            stale_marks=self._stale_marks,
            clears_sent=self._clears_sent,
            malformed=self._malformed,
            unknown=self._unknown,
            cleared_pending_bytes=self._cleared_pending_bytes,
            cleared_unconfirmed_bytes=self._cleared_unconfirmed_bytes,
            pending_bytes=self._pending_bytes,
            unconfirmed_bytes=self._unconfirmed_bytes,
        )
