"""The gateway's side of a Twilio-style media stream, simulated: what Twilio does for a call.

Used by the test caller (`bridge call`, `bridge demo`), the tests and the benchmark, so the daemon
is exercised by a peer that behaves as Twilio Media Streams documents (protocols.md §1.2-1.3):
`connected` and `start` first, one `media` message per 20 ms of caller audio, `dtmf`, `stop`; audio
we receive is queued and played out in real time; a `mark` is echoed once the audio queued before
it has played; `clear` empties the queue and echoes every pending mark at once.

Time is an argument: :meth:`SimulatedGateway.advance` plays out up to `now`.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
from collections.abc import Mapping

import attrs

from bridge.call.events import Codec
from bridge.media import g711

_ENCODING = {Codec.PCMU: "audio/x-mulaw", Codec.PCMA: "audio/x-alaw"}


@attrs.frozen
class HeardChunk:
    """Audio the caller heard, starting `at` seconds on the gateway's clock."""

    at: float
    audio: bytes


@attrs.frozen
class GatewayStatistics:
    media_sent: int
    media_received: int
    marks_received: int
    marks_echoed: int
    clears: int
    bytes_cleared: int
    bytes_heard: int
    malformed: int


class SimulatedGateway:
    """One media stream as the gateway (caller's) side sees it."""

    def __init__(
        self,
        *,
        codec: Codec,
        stream_sid: str = "MZ00000000000000000000000000000000",
        call_sid: str = "CA00000000000000000000000000000000",
        account_sid: str = "AC00000000000000000000000000000000",
        custom_parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.codec = codec
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.custom_parameters = dict(custom_parameters or {})
        self.heard: list[HeardChunk] = []
        self.first_audio_at: float | None = None
        # Bytes heard when the last mark was confirmed as played, and that figure at each clear:
        # what the other side can know the caller heard.
        self.confirmed_bytes = 0
        self.confirmed_at_clears: list[int] = []
        self._heard_total = 0
        self._sequence = 0
        self._chunk = 0
        self._queue: collections.deque[bytes | str] = collections.deque()
        self._clock = 0.0
        self._outbox: list[str] = []
        self._media_sent = 0
        self._media_received = 0
        self._marks_received = 0
        self._marks_echoed = 0
        self._clears = 0
        self._bytes_cleared = 0
        self._malformed = 0

    # ---- what the gateway sends ------------------------------------------------------------

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    def start_messages(self) -> list[str]:
        """`connected` and `start`, the first two messages of every stream."""
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        start = {
            "event": "start",
            "sequenceNumber": self._next_sequence(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {
                    "encoding": _ENCODING[self.codec],
                    "sampleRate": 8000,
                    "channels": 1,
                },
                "customParameters": self.custom_parameters,
            },
            "streamSid": self.stream_sid,
        }
        return [json.dumps(connected), json.dumps(start)]

    def media_message(self, payload: bytes, *, timestamp_ms: int) -> str:
        """One `media` message of caller audio."""
        self._chunk += 1
        self._media_sent += 1
        audio = base64.b64encode(payload).decode()
        return (
            f'{{"event":"media","sequenceNumber":"{self._next_sequence()}",'
            f'"media":{{"track":"inbound","chunk":"{self._chunk}",'
            f'"timestamp":"{timestamp_ms}","payload":"{audio}"}},'
            f'"streamSid":"{self.stream_sid}"}}'
        )

    def dtmf_message(self, digit: str) -> str:
        return json.dumps(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_sequence(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    def stop_message(self) -> str:
        return json.dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next_sequence(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )

    def messages_to_send(self) -> list[str]:
        """Mark echoes produced by playout and clears."""
        out, self._outbox = self._outbox, []
        return out

    # ---- what the gateway receives ---------------------------------------------------------

    def receive_message(self, message: str | bytes, now: float) -> None:
        self.advance(now)
        try:
            data = json.loads(message)
            event = data["event"]
            if event == "media":
                audio = base64.b64decode(data["media"]["payload"], validate=True)
                self._media_received += 1
                if not self._queue:
                    self._clock = now
                self._queue.append(audio)
                if self.first_audio_at is None:
                    self.first_audio_at = now
            elif event == "mark":
                self._marks_received += 1
                self._queue.append(data["mark"]["name"])
            elif event == "clear":
                self._clear()
            else:
                self._malformed += 1
        except (ValueError, KeyError, TypeError, binascii.Error):
            self._malformed += 1
        self.advance(now)

    def _clear(self) -> None:
        self._clears += 1
        self.confirmed_at_clears.append(self.confirmed_bytes)
        while self._queue:
            entry = self._queue.popleft()
            if isinstance(entry, str):
                self._echo(entry)
            else:
                self._bytes_cleared += len(entry)

    def _echo(self, name: str) -> None:
        self._marks_echoed += 1
        self._outbox.append(
            json.dumps(
                {
                    "event": "mark",
                    "sequenceNumber": self._next_sequence(),
                    "streamSid": self.stream_sid,
                    "mark": {"name": name},
                }
            )
        )

    def advance(self, now: float) -> None:
        """Play queued audio in real time up to `now`, echoing marks as they are reached."""
        while self._queue:
            head = self._queue[0]
            if isinstance(head, str):
                self._queue.popleft()
                self.confirmed_bytes = self._heard_total
                self._echo(head)
                continue
            playable = int((now - self._clock) * g711.SAMPLE_RATE + 1e-6)
            if playable <= 0:
                return
            played = head[:playable]
            self.heard.append(HeardChunk(self._clock, played))
            self._heard_total += len(played)
            self._clock += len(played) / g711.SAMPLE_RATE
            if len(played) < len(head):
                self._queue[0] = head[len(played) :]
                return
            self._queue.popleft()

    def next_deadline(self) -> float:
        """When the audio now at the head of the queue will have finished playing."""
        for entry in self._queue:
            if isinstance(entry, str):
                return self._clock
            return self._clock + len(entry) / g711.SAMPLE_RATE
        return float("inf")

    # ---- results ---------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        return bool(self._queue)

    def heard_audio(self) -> bytes:
        """Every byte of model audio the caller heard, in order."""
        return b"".join(chunk.audio for chunk in self.heard)

    def heard_timeline(self, start: float, end: float) -> bytes:
        """What the caller heard from `start` to `end`, silence where nothing played."""
        total = max(0, int((end - start) * g711.SAMPLE_RATE))
        timeline = bytearray(g711.silence(self.codec, total))
        for chunk in self.heard:
            offset = round((chunk.at - start) * g711.SAMPLE_RATE)
            if 0 <= offset < total:
                piece = chunk.audio[: total - offset]
                timeline[offset : offset + len(piece)] = piece
        return bytes(timeline)

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(
            media_sent=self._media_sent,
            media_received=self._media_received,
            marks_received=self._marks_received,
            marks_echoed=self._marks_echoed,
            clears=self._clears,
            bytes_cleared=self._bytes_cleared,
            bytes_heard=sum(len(chunk.audio) for chunk in self.heard),
            malformed=self._malformed,
        )
