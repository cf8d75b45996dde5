"""CallBridge: the pure control loop of one call (barge-in, truncation, greeting, DTMF, timers).

Theory of operation. Every event from either leg goes through :meth:`CallBridge.handle`, which
returns the commands for the legs; nothing travels around it, so barge-in and truncation are
decided in one place.

* Caller audio is batched into `input_batch_frames` 20 ms frames per :class:`SendAudio`
  (transcoded when the model's G.711 law differs from the call's).
* Model audio arrives in deltas of any length. It is cut into whole 20 ms frames per item and sent
  to the telephony leg as :class:`PlayAudio`; the tail of an item is padded with silence when its
  response is done. Per item the bridge counts the bytes the model sent (`received`), the bytes
  handed to the leg (`sent`) and the bytes the leg confirmed the caller heard (`played`, from
  :class:`AudioPlayed`: marks on media streams, the pacer's wire count on RTP).
* Barge-in (Realtime API guide "Handling interruptions"; realtime-api.md §8): when the model's VAD
  reports the caller speaking while audio is still unheard, the leg is told to clear its queue and
  each interrupted item is truncated at ``min(played, received)`` milliseconds, never more than the
  model sent; an item the caller heard nothing of is left alone. Audio that still arrives for an
  interrupted response is dropped.
* DTMF digits are gathered until '#', or until `dtmf_flush_ms` pass without a digit, then given to
  the model as one user message and a response is requested.
* The call ends on the first end event from either side, or at the maximum duration; the first
  reason wins and the other leg is told to end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from bridge.call.context import CallInfo
from bridge.call.events import (
    AddUserText,
    AgentAudio,
    AgentCommand,
    AgentEnded,
    AgentError,
    AgentEvent,
    AgentReady,
    AgentResponseDone,
    AgentResponseStarted,
    AgentSpeechStarted,
    AgentSpeechStopped,
    AgentTranscript,
    AnswerCall,
    AudioPlayed,
    CallerAudio,
    CallerDtmf,
    ClearAudio,
    CloseAgent,
    Codec,
    EndReason,
    HangUp,
    PlayAudio,
    RequestResponse,
    SendAudio,
    TelephonyCommand,
    TelephonyEnded,
    TelephonyEvent,
    TruncateItem,
)
from bridge.media import g711

Command = TelephonyCommand | AgentCommand


@attrs.frozen(kw_only=True)
class CallBridgeSettings:
    """The per-call knobs, taken from the config when the call starts."""

    model_codec: Codec
    input_batch_frames: int = 1
    dtmf_flush_ms: int = 1500
    max_duration_s: float = 3600.0
    greeting: str = ""
    barge_in: bool = True


@attrs.frozen
class TranscriptEntry:
    """One finished utterance, `at_s` seconds after the call started."""

    at_s: float
    role: str
    item_id: str
    text: str


@attrs.define
class _ItemAudio:
    response_id: str
    received: int = 0
    sent: int = 0
    played: int = 0
    tail: bytes = b""
    truncated_ms: int | None = None


@attrs.frozen
class CallBridgeStatistics:
    caller_bytes: int
    model_bytes: int
    played_bytes: int
    barge_ins: int
    truncations: int
    responses: int
    dropped_model_bytes: int
    dropped_caller_bytes: int
    model_errors: int
    dtmf_digits: int


class CallBridge:
    """The control loop's state for one call; feed it events and `now`, send what it returns."""

    def __init__(self, *, info: CallInfo, settings: CallBridgeSettings, now: float) -> None:
        self.info = info
        self.settings = settings
        self.started_at = now
        self.ended_at: float | None = None
        self.end_reason: EndReason | None = None
        self.end_detail = ""
        self.model_session_id = ""
        self.transcript: list[TranscriptEntry] = []
        self.usage: dict[str, Any] = {}
        self.digits = ""
        self._ready = False
        self._active_response: str | None = None
        self._input = bytearray()
        self._input_batch_bytes = settings.input_batch_frames * g711.FRAME_BYTES
        self._items: dict[str, _ItemAudio] = {}
        self._interrupted_responses: set[str] = set()
        self._pending_digits: list[str] = []
        self._dtmf_deadline = math.inf
        self._max_duration_deadline = now + settings.max_duration_s
        self._caller_bytes = 0
        self._model_bytes = 0
        self._dropped_model_bytes = 0
        self._dropped_caller_bytes = 0
        self._barge_ins = 0
        self._truncations = 0
        self._responses = 0
        self._model_errors = 0

    # ---- queries ---------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    @property
    def model_ready(self) -> bool:
        return self._ready

    def unheard_items(self) -> list[str]:
        """Items with audio handed to the caller's side that the caller has not yet heard."""
        return [item_id for item_id, item in self._items.items() if item.sent > item.played]

    def next_deadline(self) -> float:
        if self.ended:
            return math.inf
        return min(self._dtmf_deadline, self._max_duration_deadline)

    def statistics(self) -> CallBridgeStatistics:
        return CallBridgeStatistics(
            caller_bytes=self._caller_bytes,
            model_bytes=self._model_bytes,
            played_bytes=sum(item.played for item in self._items.values()),
            barge_ins=self._barge_ins,
            truncations=self._truncations,
            responses=self._responses,
            dropped_model_bytes=self._dropped_model_bytes,
            dropped_caller_bytes=self._dropped_caller_bytes,
            model_errors=self._model_errors,
            dtmf_digits=len(self.digits),
        )

    # ---- inputs ----------------------------------------------------------------------------

    def handle(self, event: TelephonyEvent | AgentEvent, now: float) -> list[Command]:
        """Take one event from either leg; return the commands it calls for."""
        if self.ended:
            self._record_late(event, now)
            return []
        match event:
            case CallerAudio(payload=payload):
                return self._caller_audio(payload)
            case AgentAudio():
                return self._model_audio(event)
            case AudioPlayed(item_id=item_id, played_bytes=played):
                item = self._items.get(item_id)
                if item is not None:
                    item.played = max(item.played, min(played, item.sent))
                return []
            case AgentSpeechStarted():
                return self._speech_started()
            case CallerDtmf(digit=digit):
                return self._dtmf(digit, now)
            case AgentReady(session_id=session_id):
                return self._agent_ready(session_id)
            case AgentResponseStarted(response_id=response_id):
                self._responses += 1
                self._active_response = response_id
                return []
            case AgentResponseDone():
                return self._response_done(event)
            case AgentTranscript(role=role, item_id=item_id, text=text):
                self.transcript.append(
                    TranscriptEntry(round(now - self.started_at, 3), role, item_id, text)
                )
                return []
            case AgentError():
                self._model_errors += 1
                return []
            case AgentSpeechStopped():
                return []
            case TelephonyEnded(reason=reason, detail=detail):
                return self._end(reason, detail, now, hang_up=False)
            case AgentEnded(reason=reason, detail=detail):
                return self._end(reason, detail, now, close_agent=False)

    def _record_late(self, event: TelephonyEvent | AgentEvent, now: float) -> None:
        """After the end, usage and transcripts still belong in the record."""
        match event:
            case AgentResponseDone(usage=usage):
                _add_usage(self.usage, usage)
            case AgentTranscript(role=role, item_id=item_id, text=text):
                self.transcript.append(
                    TranscriptEntry(round(now - self.started_at, 3), role, item_id, text)
                )

    def handle_timeout(self, now: float) -> list[Command]:
        """Run the timers that are due at `now`."""
        if self.ended:
            return []
        if now >= self._max_duration_deadline:
            return self._end(EndReason.MAX_DURATION, "maximum call duration reached", now)
        if now >= self._dtmf_deadline:
            return self._flush_digits()
        return []

    def caller_audio_dropped(self, nbytes: int) -> None:
        """The model leg could not take caller audio in time; counted in the record."""
        self._dropped_caller_bytes += nbytes

    def end(self, reason: EndReason, detail: str, now: float) -> list[Command]:
        """End the call from outside the legs (shutdown, an internal error)."""
        if self.ended:
            return []
        return self._end(reason, detail, now)

    # ---- record ----------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The call record: ids, codec, times, end reason, transcript, usage and counters."""
        info = self.info
        ended_at = self.ended_at if self.ended_at is not None else self.started_at
        truncated = {
            item_id: item.truncated_ms
            for item_id, item in self._items.items()
            if item.truncated_ms is not None
        }
        transcript: list[dict[str, Any]] = []
        for entry in self.transcript:
            line: dict[str, Any] = {
                "at_s": entry.at_s,
                "role": entry.role,
                "item_id": entry.item_id,
                "text": entry.text,
            }
            if entry.item_id in truncated:
                line["heard_ms"] = truncated[entry.item_id]
            transcript.append(line)
        return {
            "call_id": info.call_id,
            "ingress": info.ingress,
            "codec": info.codec.value,
            "model_codec": self.settings.model_codec.value,
            "caller": info.caller,
            "called": info.called,
            "external_ids": dict(info.external_ids),
            "variables": dict(info.variables),
            "model_session_id": self.model_session_id,
            "duration_s": round(ended_at - self.started_at, 3),
            "end_reason": self.end_reason.value if self.end_reason else None,
            "end_detail": self.end_detail,
            "transcript": transcript,
            "dtmf": self.digits,
            "usage": self.usage,
            "statistics": attrs.asdict(self.statistics()),
        }

    # ---- internals -------------------------------------------------------------------------

    def _caller_audio(self, payload: bytes) -> list[Command]:
        self._caller_bytes += len(payload)
        self._input += payload
        if len(self._input) < self._input_batch_bytes:
            return []
        batch = g711.transcode(self.info.codec, self.settings.model_codec, bytes(self._input))
        self._input.clear()
        return [SendAudio(batch)]

    def _model_audio(self, event: AgentAudio) -> list[Command]:
        if event.response_id in self._interrupted_responses:
            self._dropped_model_bytes += len(event.payload)
            return []
        item = self._items.get(event.item_id)
        if item is None:
            item = self._items[event.item_id] = _ItemAudio(event.response_id)
        payload = g711.transcode(self.settings.model_codec, self.info.codec, event.payload)
        self._model_bytes += len(payload)
        item.received += len(payload)
        audio = item.tail + payload
        whole = len(audio) - len(audio) % g711.FRAME_BYTES
        item.tail = audio[whole:]
        if not whole:
            return []
        item.sent += whole
        return [PlayAudio(event.item_id, audio[:whole])]

    def _response_done(self, event: AgentResponseDone) -> list[Command]:
        _add_usage(self.usage, event.usage)
        if self._active_response == event.response_id:
            self._active_response = None
        commands: list[Command] = []
        for item_id, item in self._items.items():
            if item.response_id != event.response_id or not item.tail:
                continue
            if event.response_id in self._interrupted_responses:
                item.tail = b""
                continue
            frame = item.tail + g711.silence(self.info.codec, g711.FRAME_BYTES - len(item.tail))
            item.tail = b""
            item.sent += len(frame)
            commands.append(PlayAudio(item_id, frame))
        return commands

    def _speech_started(self) -> list[Command]:
        if not self.settings.barge_in:
            return []
        if self._active_response is not None:
            # The model cancels its response itself (interrupt_response); deltas already in
            # flight must not reach the caller after the cut.
            self._interrupted_responses.add(self._active_response)
        unheard = self.unheard_items()
        if not unheard:
            return []
        self._barge_ins += 1
        commands: list[Command] = [ClearAudio()]
        for item_id in unheard:
            item = self._items[item_id]
            self._interrupted_responses.add(item.response_id)
            item.tail = b""
            heard_ms = g711.duration_ms(min(item.played, item.received))
            item.sent = item.played
            if item.truncated_ms is not None:
                continue
            # Recorded even when nothing was heard; the model is told only when something was.
            item.truncated_ms = heard_ms
            if heard_ms > 0:
                self._truncations += 1
                commands.append(TruncateItem(item_id, heard_ms))
        return commands

    def _dtmf(self, digit: str, now: float) -> list[Command]:
        self.digits += digit
        self._pending_digits.append(digit)
        if digit == "#" or self.settings.dtmf_flush_ms <= 0:
            return self._flush_digits()
        self._dtmf_deadline = now + self.settings.dtmf_flush_ms / 1000
        return []

    def _flush_digits(self) -> list[Command]:
        self._dtmf_deadline = math.inf
        if not self._pending_digits:
            return []
        pressed = ", ".join(self._pending_digits)
        self._pending_digits.clear()
        return [
            AddUserText(f"The caller pressed {pressed} on the phone keypad."),
            RequestResponse(),
        ]

    def _agent_ready(self, session_id: str) -> list[Command]:
        if self._ready:
            return []
        self._ready = True
        self.model_session_id = session_id
        # The phone is answered only now: the caller hears ringing, not dead air, while the model
        # connects, and a model that never gets ready leaves the call unanswered (SIP 503).
        if not self.settings.greeting:
            return [AnswerCall()]
        return [
            AnswerCall(),
            RequestResponse(
                instructions="Greet the caller by saying exactly this, then wait for them: "
                + self.settings.greeting
            ),
        ]

    def _end(
        self,
        reason: EndReason,
        detail: str,
        now: float,
        *,
        hang_up: bool = True,
        close_agent: bool = True,
    ) -> list[Command]:
        self.end_reason = reason
        self.end_detail = detail
        self.ended_at = now
        commands: list[Command] = []
        if hang_up:
            commands.append(HangUp(reason))
        if close_agent:
            commands.append(CloseAgent())
        return commands


def _add_usage(total: dict[str, Any], usage: Mapping[str, Any] | None) -> None:
    """Sum the numbers of a response's usage into the call's, recursing into detail objects."""
    if not usage:
        return
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, Mapping):
            _add_usage(total.setdefault(key, {}), value)
