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

Tool calls (Realtime API guide "Function calling"; realtime-api.md §1.6). Each function call the
model finishes becomes one tool call, keyed by its ``call_id`` and grouped with the others of the
same response:

* Operator tools (http, python) and the media-stream transfer hook are handed to the tool runner
  (:class:`RunTool`); the bridge keeps each one's timeout itself and tells the runner to stop a
  late one (:class:`CancelTool`), whose output becomes a timeout error.
* ``send_dtmf`` goes to the telephony leg at once. ``end_call`` and ``transfer_call`` wait until
  the response that asked for them is done and the caller has heard all of it (the leg's
  :class:`AudioPlayed` reports), capped by the unheard audio's length plus a grace; then the call
  hangs up (``agent_hangup``), or the transfer starts (SIP REFER, or the hook) and its
  :class:`TransferResult` either ends the call (``transferred``) or is the tool's error output.
* When the response is done and every call of it has a result, the results go to the model as
  ``function_call_output`` items followed by exactly one ``response.create`` (the agent leg holds
  it while another response is active). Bad JSON arguments, unknown tools, bad digits or targets
  are error outputs at once; nothing a model sends raises. The calls of a response that was
  cancelled (the caller barged in) are not run to the end (realtime-api.md §8): what
  is still running is cancelled, a pending hang-up or transfer is dropped, and the outputs go
  back without a ``response.create``, since the caller is talking.
* Holding: when a call of the batch has ``holding`` set and results are still missing after its
  ``holding_after_s``, the caller hears either a short phrase the model is asked for (a response
  that may not call tools) or the configured audio, looped until the results are in and then
  cleared. Holding audio is local: barge-in clears it but never truncates anything on the model's
  side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from bridge.call import tools as toolkit
from bridge.call.context import CallInfo
from bridge.call.events import (
    AddFunctionOutput,
    AddUserText,
    AgentAudio,
    AgentCommand,
    AgentEnded,
    AgentError,
    AgentEvent,
    AgentFunctionCall,
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
    CancelTool,
    Capability,
    ClearAudio,
    CloseAgent,
    Codec,
    EndReason,
    HangUp,
    PlayAudio,
    RequestResponse,
    RunTool,
    SendAudio,
    SendDtmf,
    TelephonyCommand,
    TelephonyEnded,
    TelephonyEvent,
    ToolCommand,
    ToolEvent,
    ToolFinished,
    ToolOutcome,
    TransferCall,
    TransferResult,
    TruncateItem,
    dtmf_message,
)
from bridge.call.observations import (
    BargeIn,
    DigitPressed,
    ModelConnected,
    Observation,
    ToolCallEnded,
    TranscriptAdded,
    TurnLatency,
    UsageReported,
    add_usage,
)
from bridge.config import BuiltinTool, Holding, ToolConfig
from bridge.media import g711

Command = TelephonyCommand | AgentCommand | ToolCommand
Event = TelephonyEvent | AgentEvent | ToolEvent

# After end_call or transfer_call, the caller's side may take this much longer than the unheard
# audio lasts to confirm it was played (media-stream marks come back over the network).
PLAYOUT_GRACE_S = 3.0
# How often a holding phrase that could not start (the model was still talking) is retried.
HOLDING_RETRY_S = 0.25
# The record keeps this much of each tool output.
RECORDED_OUTPUT_CHARS = 2000


@attrs.frozen(kw_only=True)
class CallBridgeSettings:
    """The per-call knobs, taken from the config when the call starts."""

    model_codec: Codec
    input_batch_frames: int = 1
    dtmf_flush_ms: int = 1500
    max_duration_s: float = 3600.0
    greeting: str = ""
    barge_in: bool = True
    # The tools this call offers, by name, and each audio-holding tool's audio in the call's codec.
    tools: Mapping[str, ToolConfig] = attrs.field(factory=dict)
    holding_audio: Mapping[str, bytes] = attrs.field(factory=dict)
    # The model's VAD puts speech_started this far before the speech itself (server_vad's
    # prefix_padding_ms); taken off again when measuring barge-in latency.
    vad_prefix_padding_ms: int = 0


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
    # Audio of our own (holding audio): the model knows nothing of it, so it is never truncated.
    local: bool = False


@attrs.define
class _ToolCall:
    """One function call of the model, from the call to its result."""

    call_id: str
    name: str
    response_id: str
    arguments_text: str
    arguments: dict[str, Any] | None
    started_at: float
    deadline: float = math.inf
    finished_at: float | None = None
    outcome: ToolOutcome | None = None
    output: str = ""
    detail: str = ""

    @property
    def finished(self) -> bool:
        return self.outcome is not None


@attrs.define
class _Batch:
    """The function calls of one response: their results go back together."""

    response_id: str
    call_ids: list[str] = attrs.Factory(list)
    delivered: bool = False
    holding: ToolConfig | None = None
    holding_at: float = math.inf
    holding_item: str | None = None
    # Its response was cancelled or failed: results are recorded, no new response is asked for.
    abandoned: bool = False


@attrs.define
class _Handover:
    """An end_call or transfer_call waiting for the caller to hear the rest of the reply."""

    call: _ToolCall
    builtin: BuiltinTool
    target: str = ""
    # When to go ahead even if the leg never confirms playout; set once the response is done.
    deadline: float = math.inf
    started: bool = False


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
    # Caller audio from before the model was ready that it had no room to hold.
    dropped_caller_bytes_connecting: int
    model_errors: int
    dtmf_digits: int
    tool_calls: int


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
        self._dropped_connecting_bytes = 0
        self._barge_ins = 0
        self._truncations = 0
        self._responses = 0
        self._model_errors = 0
        self._tool_calls: dict[str, _ToolCall] = {}
        self._batches: dict[str, _Batch] = {}
        self._done_responses: set[str] = set()
        self._handover: _Handover | None = None
        self._hold_items = 0
        self._observations: list[Observation] = []
        # Tool calls whose end has not been observed yet (usually none).
        self._unobserved_tools: list[_ToolCall] = []
        # A caller's turn ended (seconds of caller time since then, and when): the first audio
        # of a reply that started after it measures the turn latency.
        self._turn_ended: tuple[float, float] | None = None
        self._response_at_turn_end: str | None = None
        # For the record: what the observations measured, in milliseconds.
        self._model_connect_ms: int | None = None
        self._turns_ms: list[int] = []
        self._barge_ins_ms: list[int] = []

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
        deadlines = [self._dtmf_deadline, self._max_duration_deadline]
        deadlines += [call.deadline for call in self._tool_calls.values() if not call.finished]
        deadlines += [batch.holding_at for batch in self._batches.values() if not batch.delivered]
        if self._handover is not None and not self._handover.started:
            deadlines.append(self._handover.deadline)
        return min(deadlines)

    def statistics(self) -> CallBridgeStatistics:
        return CallBridgeStatistics(
            caller_bytes=self._caller_bytes,
            model_bytes=self._model_bytes,
            played_bytes=sum(item.played for item in self._items.values() if not item.local),
            barge_ins=self._barge_ins,
            truncations=self._truncations,
            responses=self._responses,
            dropped_model_bytes=self._dropped_model_bytes,
            dropped_caller_bytes=self._dropped_caller_bytes,
            dropped_caller_bytes_connecting=self._dropped_connecting_bytes,
            model_errors=self._model_errors,
            dtmf_digits=len(self.digits),
            tool_calls=len(self._tool_calls),
        )

    def pop_observations(self) -> list[Observation]:
        """What was observed since the last call (metrics, the journal); usually nothing."""
        if self._unobserved_tools:
            still_running = []
            for call in self._unobserved_tools:
                if call.finished or self.ended:
                    outcome = call.outcome.value if call.outcome else ToolOutcome.CANCELLED.value
                    self._observations.append(
                        ToolCallEnded(call.name, outcome, self._tool_record(call))
                    )
                else:
                    still_running.append(call)
            self._unobserved_tools = still_running
        if not self._observations:
            return []
        observations, self._observations = self._observations, []
        return observations

    # ---- inputs ----------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Command]:
        """Take one event from either leg or the tool runner; return the commands it calls for."""
        if self.ended:
            self._record_late(event, now)
            return []
        match event:
            case CallerAudio(payload=payload):
                return self._caller_audio(payload)
            case AgentAudio():
                return self._model_audio(event, now)
            case AudioPlayed(item_id=item_id, played_bytes=played):
                item = self._items.get(item_id)
                if item is not None:
                    item.played = max(item.played, min(played, item.sent))
                return self._after_playout(now)
            case AgentFunctionCall():
                return self._function_call(event, now)
            case ToolFinished(call_id=call_id, outcome=outcome, output=output, detail=detail):
                return self._tool_finished(call_id, outcome, output, detail, now)
            case TransferResult():
                return self._transfer_result(event, now)
            case AgentSpeechStarted(audio_start_ms=audio_start_ms):
                self._turn_ended = None
                return self._speech_started(audio_start_ms, now)
            case CallerDtmf(digit=digit):
                return self._dtmf(digit, now)
            case AgentReady(session_id=session_id, caller_audio_dropped=dropped):
                # The model's input timeline starts after what it dropped while connecting.
                self._dropped_connecting_bytes += dropped
                return self._agent_ready(session_id, now)
            case AgentResponseStarted(response_id=response_id):
                self._responses += 1
                self._active_response = response_id
                return []
            case AgentResponseDone():
                return self._response_done(event, now)
            case AgentTranscript(role=role, item_id=item_id, text=text):
                self._transcribed(role, item_id, text, now)
                return []
            case AgentError():
                self._model_errors += 1
                return []
            case AgentSpeechStopped(audio_end_ms=audio_end_ms):
                self._turn_ended = (self._caller_seconds_since(audio_end_ms), now)
                # Without barge-in a reply may still be playing: it is not the answer.
                self._response_at_turn_end = self._active_response
                return []
            case TelephonyEnded(reason=reason, detail=detail):
                return self._end(reason, detail, now, hang_up=False)
            case AgentEnded(reason=reason, detail=detail):
                return self._end(reason, detail, now, close_agent=False)

    def _record_late(self, event: Event, now: float) -> None:
        """After the end, usage and transcripts still belong in the record."""
        match event:
            case AgentResponseDone(usage=usage):
                self._add_usage(usage)
            case AgentTranscript(role=role, item_id=item_id, text=text):
                self._transcribed(role, item_id, text, now)

    def handle_timeout(self, now: float) -> list[Command]:
        """Run the timers that are due at `now`."""
        if self.ended:
            return []
        if now >= self._max_duration_deadline:
            return self._end(EndReason.MAX_DURATION, "maximum call duration reached", now)
        commands: list[Command] = []
        if now >= self._dtmf_deadline:
            commands += self._flush_digits()
        for call in list(self._tool_calls.values()):
            if not call.finished and now >= call.deadline:
                commands += self._tool_timed_out(call, now)
        for batch in list(self._batches.values()):
            if not batch.delivered and now >= batch.holding_at:
                commands += self._hold(batch, now)
        handover = self._handover
        if handover is not None and not handover.started and now >= handover.deadline:
            commands += self._hand_over(now)
        return commands

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
            "tool_calls": [self._tool_record(call) for call in self._tool_calls.values()],
            "latency": {
                "model_connect_ms": self._model_connect_ms,
                "turns_ms": list(self._turns_ms),
                "barge_ins_ms": list(self._barge_ins_ms),
            },
            "statistics": attrs.asdict(self.statistics()),
        }

    def _tool_record(self, call: _ToolCall) -> dict[str, Any]:
        ended_at = call.finished_at
        if ended_at is None:
            ended_at = self.ended_at if self.ended_at is not None else call.started_at
        outcome = call.outcome or ToolOutcome.CANCELLED
        entry: dict[str, Any] = {
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments if call.arguments is not None else call.arguments_text,
            "at_s": round(call.started_at - self.started_at, 3),
            "duration_s": round(ended_at - call.started_at, 3),
            "outcome": outcome.value,
        }
        if call.output:
            entry["output"] = call.output[:RECORDED_OUTPUT_CHARS]
        if call.detail or call.outcome is None:
            entry["detail"] = call.detail or "the call ended first"
        return entry

    # ---- internals -------------------------------------------------------------------------

    def _caller_audio(self, payload: bytes) -> list[Command]:
        self._caller_bytes += len(payload)
        self._input += payload
        if len(self._input) < self._input_batch_bytes:
            return []
        batch = g711.transcode(self.info.codec, self.settings.model_codec, bytes(self._input))
        self._input.clear()
        return [SendAudio(batch)]

    def _model_audio(self, event: AgentAudio, now: float) -> list[Command]:
        if event.response_id in self._interrupted_responses:
            self._dropped_model_bytes += len(event.payload)
            return []
        commands: list[Command] = []
        for batch in self._batches.values():
            if batch.holding_item is not None and not batch.delivered:
                commands += self._stop_holding_audio(batch.holding_item)
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
            return commands
        item.sent += whole
        if self._turn_ended is not None and event.response_id != self._response_at_turn_end:
            self._observe_turn_latency(now)
        return [*commands, PlayAudio(event.item_id, audio[:whole])]

    def _response_done(self, event: AgentResponseDone, now: float) -> list[Command]:
        self._add_usage(event.usage)
        if self._active_response == event.response_id:
            self._active_response = None
        commands = self._pad_tails(event)
        self._done_responses.add(event.response_id)
        batch = self._batches.get(event.response_id)
        if batch is not None:
            if event.status == "cancelled":
                commands += self._abandon(batch, event.status, now)
            commands += self._deliver(batch)
        handover = self._handover
        if handover is not None and handover.call.response_id == event.response_id:
            handover.deadline = now + self._unheard_seconds() + PLAYOUT_GRACE_S
        return commands + self._after_playout(now)

    def _pad_tails(self, event: AgentResponseDone) -> list[Command]:
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

    def _speech_started(self, audio_start_ms: int, now: float) -> list[Command]:
        if not self.settings.barge_in:
            return []
        if self._active_response is not None:
            # The model cancels its response itself (interrupt_response); deltas already in
            # flight must not reach the caller after the cut.
            self._interrupted_responses.add(self._active_response)
        unheard = self.unheard_items()
        if not unheard:
            return self._drop_interrupted_handover(now)
        self._barge_ins += 1
        commands: list[Command] = [ClearAudio()]
        heard: dict[str, int] = {}
        for item_id in unheard:
            item = self._items[item_id]
            if item.local:
                item.sent = item.played
                self._stop_holding_audio(item_id)
                continue
            self._interrupted_responses.add(item.response_id)
            item.tail = b""
            heard_ms = g711.duration_ms(min(item.played, item.received))
            item.sent = item.played
            if item.truncated_ms is not None:
                continue
            # Recorded even when nothing was heard; the model is told only when something was.
            item.truncated_ms = heard_ms
            heard[item_id] = heard_ms
            if heard_ms > 0:
                self._truncations += 1
                commands.append(TruncateItem(item_id, heard_ms))
        speech_start_ms = audio_start_ms + self.settings.vad_prefix_padding_ms
        seconds = self._caller_seconds_since(speech_start_ms)
        self._barge_ins_ms.append(round(seconds * 1000))
        self._observations.append(BargeIn(seconds, heard))
        return commands + self._drop_interrupted_handover(now)

    def _drop_interrupted_handover(self, now: float) -> list[Command]:
        """The caller cut into the reply that announced a hang-up or transfer: it is off."""
        handover = self._handover
        if handover is None or handover.started:
            return []
        if handover.call.response_id not in self._interrupted_responses:
            return []
        self._handover = None
        # The caller is talking: the output goes back without asking for a response.
        self._batches[handover.call.response_id].abandoned = True
        return self._finish(
            handover.call,
            ToolOutcome.CANCELLED,
            "the caller interrupted before hearing the end of the reply",
            now,
        )

    def _dtmf(self, digit: str, now: float) -> list[Command]:
        self.digits += digit
        self._observations.append(DigitPressed(round(now - self.started_at, 3), digit))
        self._pending_digits.append(digit)
        if digit == "#" or self.settings.dtmf_flush_ms <= 0:
            return self._flush_digits()
        self._dtmf_deadline = now + self.settings.dtmf_flush_ms / 1000
        return []

    def _flush_digits(self) -> list[Command]:
        self._dtmf_deadline = math.inf
        if not self._pending_digits:
            return []
        pressed = "".join(self._pending_digits)
        self._pending_digits.clear()
        return [
            AddUserText(dtmf_message(pressed)),
            RequestResponse(),
        ]

    def _agent_ready(self, session_id: str, now: float) -> list[Command]:
        if self._ready:
            return []
        self._ready = True
        self.model_session_id = session_id
        self._model_connect_ms = round((now - self.started_at) * 1000)
        self._observations.append(ModelConnected(now - self.started_at, session_id))
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

    # ---- tool calls --------------------------------------------------------------------------

    def _function_call(self, event: AgentFunctionCall, now: float) -> list[Command]:
        if event.call_id in self._tool_calls:
            return []
        if not event.response_id and self._active_response is not None:
            event = attrs.evolve(event, response_id=self._active_response)
        try:
            arguments: dict[str, Any] | None = toolkit.parse_arguments(event.arguments)
            problem = ""
        except ValueError as error:
            arguments, problem = None, str(error)
        call = _ToolCall(
            call_id=event.call_id,
            name=event.name,
            response_id=event.response_id,
            arguments_text=event.arguments,
            arguments=arguments,
            started_at=now,
        )
        self._tool_calls[call.call_id] = call
        self._unobserved_tools.append(call)
        batch = self._batches.get(event.response_id)
        if batch is None:
            batch = self._batches[event.response_id] = _Batch(event.response_id)
        batch.call_ids.append(call.call_id)
        tool = self.settings.tools.get(call.name)
        if tool is None:
            return self._finish(
                call, ToolOutcome.UNKNOWN_TOOL, f"there is no tool named {call.name!r}", now
            )
        if arguments is None:
            return self._finish(call, ToolOutcome.INVALID_ARGUMENTS, problem, now)
        if tool.holding is not Holding.NONE and batch.holding is None:
            batch.holding = tool
            batch.holding_at = now + tool.holding_after_s
        builtin = tool.builtin
        if builtin is None:
            call.deadline = now + tool.effective_timeout_s
            return [RunTool(call.call_id, call.name, arguments)]
        return self._builtin(call, tool, builtin, arguments, now)

    def _builtin(
        self,
        call: _ToolCall,
        tool: ToolConfig,
        builtin: BuiltinTool,
        arguments: dict[str, Any],
        now: float,
    ) -> list[Command]:
        capabilities = self.info.capabilities
        match builtin:
            case BuiltinTool.SEND_DTMF:
                if Capability.SEND_DTMF not in capabilities:
                    return self._finish(
                        call,
                        ToolOutcome.ERROR,
                        f"this call ({self.info.ingress}) cannot send keypad tones",
                        now,
                    )
                try:
                    digits = toolkit.dtmf_digits(arguments)
                except ValueError as error:
                    return self._finish(call, ToolOutcome.INVALID_ARGUMENTS, str(error), now)
                return [SendDtmf(digits), *self._finish(call, ToolOutcome.OK, "", now, sent=digits)]
            case BuiltinTool.END_CALL:
                if self._handover is not None:
                    return self._finish(
                        call, ToolOutcome.ERROR, "the call is already being ended", now
                    )
                reason = arguments.get("reason")
                call.detail = reason if isinstance(reason, str) else ""
                self._handover = _Handover(call, builtin)
                self._set_handover_deadline(now)
                return self._after_playout(now)
            case BuiltinTool.TRANSFER_CALL:
                if self._handover is not None:
                    return self._finish(
                        call, ToolOutcome.ERROR, "a transfer or hang-up is already under way", now
                    )
                if Capability.TRANSFER not in capabilities and not tool.hook_url:
                    return self._finish(
                        call,
                        ToolOutcome.ERROR,
                        f"this call ({self.info.ingress}) cannot be transferred",
                        now,
                    )
                try:
                    _, target = toolkit.transfer_target(tool, arguments)
                except ValueError as error:
                    return self._finish(call, ToolOutcome.INVALID_ARGUMENTS, str(error), now)
                self._handover = _Handover(call, builtin, target=target)
                self._set_handover_deadline(now)
                return self._after_playout(now)

    def _set_handover_deadline(self, now: float) -> None:
        handover = self._handover
        if handover is not None and handover.call.response_id in self._done_responses:
            handover.deadline = now + self._unheard_seconds() + PLAYOUT_GRACE_S

    def _unheard_seconds(self) -> float:
        unheard = sum(item.sent - item.played for item in self._items.values() if not item.local)
        return g711.duration_ms(unheard) / 1000

    def _after_playout(self, now: float) -> list[Command]:
        """What the caller having heard audio allows: a handover, another loop of holding audio."""
        commands: list[Command] = []
        for batch in self._batches.values():
            item_id = batch.holding_item
            if batch.delivered or item_id is None:
                continue
            item = self._items[item_id]
            if item.played >= item.sent and batch.holding is not None:
                commands += self._play_holding_audio(batch, batch.holding)
        handover = self._handover
        if handover is None or handover.started:
            return commands
        if handover.call.response_id not in self._done_responses:
            return commands
        if self._unheard_seconds() > 0:
            return commands
        return commands + self._hand_over(now)

    def _hand_over(self, now: float) -> list[Command]:
        """The caller heard the reply: hang up, or start the transfer."""
        handover = self._handover
        assert handover is not None
        handover.started = True
        call = handover.call
        if handover.builtin is BuiltinTool.END_CALL:
            self._finish(call, ToolOutcome.OK, call.detail, now)
            detail = call.detail or "the model ended the call"
            return self._end(EndReason.AGENT_HANGUP, detail, now)
        tool = self.settings.tools[call.name]
        call.deadline = now + tool.effective_timeout_s
        if Capability.TRANSFER in self.info.capabilities:
            return [TransferCall(handover.target)]
        assert call.arguments is not None
        return [RunTool(call.call_id, call.name, {**call.arguments, "target": handover.target})]

    def _transfer_result(self, result: TransferResult, now: float) -> list[Command]:
        handover = self._handover
        if (
            handover is None
            or handover.builtin is not BuiltinTool.TRANSFER_CALL
            or not handover.started
        ):
            return []
        return self._transfer_outcome(handover, result.ok, result.status, result.detail, now)

    def _transfer_outcome(
        self, handover: _Handover, ok: bool, status: int, detail: str, now: float
    ) -> list[Command]:
        call = handover.call
        if call.finished:
            return []
        if ok:
            # The caller is gone to the target: the result is recorded, the model is not asked.
            self._finish(call, ToolOutcome.OK, detail, now, target=handover.target)
            return self._end(EndReason.TRANSFERRED, f"transferred to {handover.target}", now)
        self._handover = None
        message = f"the transfer to {handover.target} failed"
        if status:
            message += f" (SIP {status})"
        if detail:
            message += f": {detail}"
        return self._finish(call, ToolOutcome.ERROR, message, now)

    def _tool_finished(
        self, call_id: str, outcome: ToolOutcome, output: str, detail: str, now: float
    ) -> list[Command]:
        call = self._tool_calls.get(call_id)
        if call is None or call.finished:
            # Late: the call already timed out (its output told the model so).
            return []
        handover = self._handover
        if handover is not None and handover.call is call:
            # The media-stream transfer hook answered.
            return self._transfer_outcome(
                handover, outcome is ToolOutcome.OK, 0, detail or _error_message(output), now
            )
        call.outcome = outcome
        call.output = output
        call.detail = detail
        call.finished_at = now
        return self._deliver(self._batches[call.response_id])

    def _tool_timed_out(self, call: _ToolCall, now: float) -> list[Command]:
        tool = self.settings.tools.get(call.name)
        seconds = tool.effective_timeout_s if tool is not None else 0.0
        message = f"{call.name} did not finish within {seconds:g} s"
        commands: list[Command] = []
        handover = self._handover
        if handover is not None and handover.call is call:
            self._handover = None
            if Capability.TRANSFER not in self.info.capabilities:
                commands.append(CancelTool(call.call_id))
        else:
            commands.append(CancelTool(call.call_id))
        return commands + self._finish(call, ToolOutcome.TIMEOUT, message, now)

    def _finish(
        self, call: _ToolCall, outcome: ToolOutcome, message: str, now: float, **fields: Any
    ) -> list[Command]:
        """Give `call` its result; the batch goes back to the model once it is complete."""
        call.outcome = outcome
        call.finished_at = now
        call.detail = message
        if outcome is ToolOutcome.OK:
            call.output = toolkit.ok_output(**fields)
        else:
            call.output = toolkit.error_output(outcome, message)
        return self._deliver(self._batches[call.response_id])

    def _abandon(self, batch: _Batch, status: str, now: float) -> list[Command]:
        """The response that made these calls was cut off (barge-in, an error): stop its tools.

        Calls already carried out keep their results; the others are cancelled, and the model
        is told so with the results but not asked to respond: the caller is talking.
        """
        batch.abandoned = True
        commands: list[Command] = []
        handover = self._handover
        if (
            handover is not None
            and handover.call.call_id in batch.call_ids
            and not handover.started
        ):
            self._handover = None
        for call_id in batch.call_ids:
            call = self._tool_calls[call_id]
            if call.finished or (self._handover is not None and self._handover.call is call):
                continue
            if call.deadline < math.inf:
                commands.append(CancelTool(call_id))
            call.outcome = ToolOutcome.CANCELLED
            call.finished_at = now
            call.detail = f"the response was {status}"
            call.output = toolkit.error_output(ToolOutcome.CANCELLED, call.detail)
        return commands

    def _deliver(self, batch: _Batch) -> list[Command]:
        if batch.delivered or batch.response_id not in self._done_responses:
            return []
        calls = [self._tool_calls[call_id] for call_id in batch.call_ids]
        if not all(call.finished for call in calls):
            return []
        batch.delivered = True
        handover = self._handover
        if handover is not None and handover.call.call_id in batch.call_ids:
            # The call is about to hang up or be transferred; the model is not asked again.
            return []
        commands: list[Command] = []
        if batch.holding_item is not None:
            commands += self._stop_holding_audio(batch.holding_item)
        commands += [AddFunctionOutput(call.call_id, call.output) for call in calls]
        if not batch.abandoned:
            commands.append(RequestResponse())
        return commands

    # ---- observations --------------------------------------------------------------------------

    def _caller_seconds_since(self, position_ms: int) -> float:
        """How long ago, in caller audio, the model's input position `position_ms` was."""
        dropped = self._dropped_caller_bytes + self._dropped_connecting_bytes
        passed = self._caller_bytes - len(self._input) - dropped
        return max(0.0, (g711.duration_ms(passed) - position_ms) / 1000)

    def _observe_turn_latency(self, now: float) -> None:
        assert self._turn_ended is not None
        since_end, reported_at = self._turn_ended
        self._turn_ended = None
        seconds = since_end + (now - reported_at)
        self._turns_ms.append(round(seconds * 1000))
        self._observations.append(TurnLatency(seconds))

    def _transcribed(self, role: str, item_id: str, text: str, now: float) -> None:
        entry = TranscriptEntry(round(now - self.started_at, 3), role, item_id, text)
        self.transcript.append(entry)
        self._observations.append(TranscriptAdded(entry.at_s, role, item_id, text))

    def _add_usage(self, usage: Mapping[str, Any] | None) -> None:
        if usage:
            add_usage(self.usage, usage)
            self._observations.append(UsageReported(usage))

    # ---- holding -----------------------------------------------------------------------------

    def _hold(self, batch: _Batch, now: float) -> list[Command]:
        """A tool is slow: give the caller something to hear, once, when the model is quiet."""
        tool = batch.holding
        assert tool is not None
        if self._active_response is not None or self.unheard_items():
            batch.holding_at = now + HOLDING_RETRY_S
            return []
        batch.holding_at = math.inf
        if tool.holding is Holding.PHRASE:
            return [RequestResponse(instructions=tool.holding_phrase, allow_tools=False)]
        return self._play_holding_audio(batch, tool)

    def _play_holding_audio(self, batch: _Batch, tool: ToolConfig) -> list[Command]:
        audio = self.settings.holding_audio.get(tool.name, b"")
        whole = len(audio) - len(audio) % g711.FRAME_BYTES
        if not whole:
            return []
        item_id = batch.holding_item
        if item_id is None:
            self._hold_items += 1
            item_id = batch.holding_item = f"hold_{self._hold_items}"
            self._items[item_id] = _ItemAudio(response_id="", local=True)
        item = self._items[item_id]
        item.received += whole
        item.sent += whole
        return [PlayAudio(item_id, audio[:whole])]

    def _stop_holding_audio(self, item_id: str) -> list[Command]:
        """End a holding loop; clear what the caller has not heard of it yet."""
        for batch in self._batches.values():
            if batch.holding_item == item_id:
                batch.holding_item = None
                batch.holding = None
        item = self._items[item_id]
        if item.sent <= item.played:
            return []
        item.sent = item.played
        return [ClearAudio()]

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


def _error_message(output: str) -> str:
    """The message of an error output, for a transfer hook's failure detail."""
    try:
        decoded = json.loads(output)
    except ValueError:
        return output[:200]
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return str(decoded["message"])
    return output[:200]
