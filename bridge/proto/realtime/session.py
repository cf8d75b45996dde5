"""The agent leg's message core for the OpenAI Realtime API (realtime-api.md §1.5, §1.6, §4, §8).

Sans-IO (DESIGN.md rules 1-3): websocket messages go in through ``receive_message``, commands
of the call's vocabulary (:mod:`bridge.call.events`) through ``send``; JSON text frames come out
of ``messages_to_send`` and agent events out of ``next_event``.
Time is an argument; the only deadline is the wait for ``session.updated``.

Theory of operation
-------------------
Session phase::

    CONFIGURING --session.updated, formats as asked--> READY --CloseAgent--> CLOSED
         |  session.updated with other formats   -> ENDED (MODEL_FORMAT_REJECTED)
         |  error event                          -> ENDED (MODEL_ERROR)
         |  no session.updated in time           -> ENDED (MODEL_CONNECT_FAILED)
    READY --error session_expired--> ENDED (MODEL_CLOSED)

The ``session.update`` is queued at construction so it is the first frame on the wire. A session
is ready only on ``session.updated`` whose input and output formats are exactly the G.711 formats
asked for (``session.created`` carries the server's defaults, PCM 24 kHz, so it proves nothing):
audio in any other format would reach the caller as noise. Commands sent while CONFIGURING are held
in order and replayed on READY; caller audio among them is bounded (two seconds by default) and the
oldest is dropped, because a caller talking into a model that is not listening yet only matters for
the last moment. In ENDED and CLOSED, input is counted and ignored.

Response phase (the server allows one response at a time per conversation, §8)::

    IDLE --send response.create--> REQUESTED --response.created--> ACTIVE --response.done--> IDLE
    IDLE --response.created (server VAD answered on its own)-----> ACTIVE

RequestResponse outside IDLE is queued, never sent, so two ``response.create`` are never in
flight; queued requests coalesce into one and go out on the ``response.done`` that returns the
session to IDLE. Coalescing keeps the last instructions given, except that a request that may call
tools beats one that may not (``allow_tools=False``, sent as ``tool_choice: "none"``): the latter
asks for a holding phrase, which is moot once a normal response (tool results, a greeting) is due,
so the merged request is tool-less only when every request in it was. The ``response.create`` we
sent carries an ``event_id``. If the server rejects it with
``conversation_already_has_active_response`` (its own VAD response started first and we took that
one for ours), the request is queued again, so it is delivered after the active response instead
of being lost; any other rejection while REQUESTED returns the session to IDLE so later requests
are not blocked forever. CancelResponse sends ``response.cancel`` only while a response is
requested or active.

Function calls (§4.2). The server reports one finished call twice, as
``response.function_call_arguments.done`` and as ``response.output_item.done`` of a completed
``function_call`` item, in either order, before the ``response.done`` of its response. The first
of the two that names the call and carries its ``call_id`` becomes the one
:class:`AgentFunctionCall` of that ``call_id``; later reports of a ``call_id`` already given to the
control loop are counted and dropped. Beta ``arguments.done`` events carry no name: the name
comes from the ``response.output_item.added`` of the same item (remembered by item id until its
response is done), or from the ``output_item.done``. A call still unnamed when its response is
done is reported then, before :class:`AgentResponseDone` and with an empty name, so the control
loop can still answer it (as an unknown tool) and the model is not left waiting; one without a
``call_id`` cannot be answered and is dropped and counted. AddFunctionOutput becomes a
``function_call_output`` conversation item; like every command it is held until READY. Adding
outputs never starts a response: the control loop follows them with a RequestResponse.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Mapping
from typing import Any

import attrs

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
    CancelResponse,
    CloseAgent,
    EndReason,
    RequestResponse,
    SendAudio,
    TruncateItem,
)
from bridge.config import Dialect
from bridge.errors import RemoteProtocolError
from bridge.proto.realtime.codec import (
    FunctionCallDone,
    FunctionCallStarted,
    IgnoredServerEvent,
    InputAudioCommitted,
    InputTranscriptionCompleted,
    InputTranscriptionFailed,
    ItemTruncated,
    OutputAudioDelta,
    OutputAudioTranscriptDone,
    OutputTextDone,
    RateLimit,
    RateLimitsUpdated,
    RealtimeCodec,
    ResponseCreated,
    ResponseDone,
    ServerError,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    UnknownServerEvent,
)

# Two seconds of G.711 (8 bytes a millisecond).
DEFAULT_PRE_READY_AUDIO_BYTES = 16_000
# Control commands before ready are a handful (greeting, a DTMF note); this only caps a runaway.
MAX_PRE_READY_COMMANDS = 256
# A hostile server could invent endless type names; remember only this many.
MAX_UNKNOWN_TYPES_KEPT = 64
# Function calls of responses not yet done (a response has a handful); caps a server that never
# sends response.done.
MAX_OPEN_FUNCTION_CALLS = 256
# call_ids already reported, so a late second report of one is not a second call.
MAX_REPORTED_CALL_IDS = 1024

ACTIVE_RESPONSE_CODE = "conversation_already_has_active_response"
SESSION_EXPIRED_CODE = "session_expired"


class SessionPhase(enum.Enum):
    """Where the Realtime session is (see the module docstring)."""

    CONFIGURING = "configuring"
    READY = "ready"
    ENDED = "ended"
    CLOSED = "closed"


class ResponsePhase(enum.Enum):
    """Where the conversation's one response is (see the module docstring)."""

    IDLE = "idle"
    REQUESTED = "requested"
    ACTIVE = "active"


@attrs.frozen(kw_only=True)
class RealtimeStatistics:
    """Counters of one Realtime session, for logs, the call record and tests."""

    messages_received: int
    messages_sent: int
    malformed_messages: int
    unknown_events: int
    unknown_event_types: tuple[str, ...]
    server_errors: int
    responses_requested: int
    requests_coalesced: int
    requests_requeued: int
    responses_created: int
    responses_done: int
    cancels_sent: int
    truncates_sent: int
    truncations_confirmed: int
    transcription_failures: int
    function_calls: int
    function_call_duplicates: int
    function_calls_dropped: int
    function_outputs_sent: int
    audio_bytes_sent: int
    audio_bytes_received: int
    audio_bytes_dropped_before_ready: int
    commands_dropped: int
    rate_limits: tuple[RateLimit, ...]


class RealtimeSession:
    """One Realtime session seen from the bridge: the message core of the agent leg."""

    def __init__(
        self,
        *,
        dialect: Dialect,
        session_update: Mapping[str, Any],
        expected_formats: tuple[str, str],
        session_timeout_s: float,
        now: float,
        pre_ready_audio_bytes: int = DEFAULT_PRE_READY_AUDIO_BYTES,
    ) -> None:
        self._codec = RealtimeCodec(dialect)
        self._expected_formats = expected_formats
        self._session_timeout_s = session_timeout_s
        self._ready_deadline = now + session_timeout_s
        self._pre_ready_audio_limit = pre_ready_audio_bytes

        self._phase = SessionPhase.CONFIGURING
        self._session_id = ""
        self._outbox: list[str] = []
        self._events: collections.deque[AgentEvent] = collections.deque()
        self._held: collections.deque[AgentCommand] = collections.deque()
        self._held_audio_bytes = 0
        self._next_event_number = 0

        self._response_phase = ResponsePhase.IDLE
        self._active_response_id = ""
        # The response.create we sent and whose response has not finished: (event_id, request).
        self._sent_request: tuple[str, RequestResponse] | None = None
        self._queued_request: RequestResponse | None = None

        # Function calls by item id: named by output_item.added, or finished but not yet named.
        self._started_calls: dict[str, FunctionCallStarted] = {}
        self._unnamed_calls: dict[str, FunctionCallDone] = {}
        self._reported_call_ids: dict[str, None] = {}

        self._messages_received = 0
        self._messages_sent = 0
        self._malformed = 0
        self._unknown = 0
        self._unknown_types: dict[str, None] = {}
        self._new_unknown_types: list[str] = []
        self._server_errors = 0
        self._responses_requested = 0
        self._requests_coalesced = 0
        self._requests_requeued = 0
        self._responses_created = 0
        self._responses_done = 0
        self._cancels_sent = 0
        self._truncates_sent = 0
        self._truncations_confirmed = 0
        self._transcription_failures = 0
        self._function_calls = 0
        self._function_call_duplicates = 0
        self._function_calls_dropped = 0
        self._function_outputs_sent = 0
        self._audio_bytes_sent = 0
        self._audio_bytes_received = 0
        self._audio_dropped = 0
        self._commands_dropped = 0
        self._rate_limits: tuple[RateLimit, ...] = ()

        self._queue(self._codec.session_update(session_update, self._new_event_id()))

    # ---- public API ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once ``session.updated`` confirmed the formats (and until the session ends)."""
        return self._phase is SessionPhase.READY

    @property
    def phase(self) -> SessionPhase:
        return self._phase

    @property
    def response_phase(self) -> ResponsePhase:
        return self._response_phase

    @property
    def session_id(self) -> str:
        return self._session_id

    def receive_message(self, message: str | bytes, now: float) -> None:
        """Feed one websocket message from the server."""
        self._messages_received += 1
        try:
            event = self._codec.decode(message)
        except RemoteProtocolError:
            # A garbled frame is the server's problem; the call goes on (DESIGN.md rule 7).
            self._malformed += 1
            return
        if isinstance(event, UnknownServerEvent):
            self._note_unknown(event.type)
            return
        if self._phase is SessionPhase.CONFIGURING:
            self._receive_configuring(event)
        elif self._phase is SessionPhase.READY:
            self._receive_ready(event)

    def send(self, command: AgentCommand, now: float) -> None:
        """Apply one command from the control loop."""
        if self._phase is SessionPhase.READY:
            self._apply(command)
        elif self._phase is SessionPhase.CONFIGURING:
            self._hold(command)
        else:
            self._commands_dropped += 1

    def messages_to_send(self) -> list[str]:
        """JSON text frames to write to the websocket, in order; each is returned once."""
        messages, self._outbox = self._outbox, []
        return messages

    def has_messages_to_send(self) -> bool:
        """Whether :meth:`messages_to_send` would return anything (a free check for adapters)."""
        return bool(self._outbox)

    def next_event(self) -> AgentEvent | None:
        """The next event for the control loop, or None."""
        return self._events.popleft() if self._events else None

    def has_events(self) -> bool:
        """Whether :meth:`next_event` would return an event (a free check for adapters)."""
        return bool(self._events)

    def next_deadline(self) -> float:
        """When :meth:`handle_timeout` must be called; ``math.inf`` when never."""
        if self._phase is SessionPhase.CONFIGURING:
            return self._ready_deadline
        return math.inf

    def handle_timeout(self, now: float) -> None:
        """Act on a deadline that has passed (early calls are harmless)."""
        if self._phase is SessionPhase.CONFIGURING and now >= self._ready_deadline:
            self._end(
                EndReason.MODEL_CONNECT_FAILED,
                f"timed out after {self._session_timeout_s:g} s waiting for session.updated",
            )

    def new_unknown_event_types(self) -> list[str]:
        """Event types first seen since the last call, so each gets one log line."""
        if not self._new_unknown_types:
            return []
        names, self._new_unknown_types = self._new_unknown_types, []
        return names

    def statistics(self) -> RealtimeStatistics:
        return RealtimeStatistics(
            messages_received=self._messages_received,
            messages_sent=self._messages_sent,
            malformed_messages=self._malformed,
            unknown_events=self._unknown,
            unknown_event_types=tuple(self._unknown_types),
            server_errors=self._server_errors,
            responses_requested=self._responses_requested,
            requests_coalesced=self._requests_coalesced,
            requests_requeued=self._requests_requeued,
            responses_created=self._responses_created,
            responses_done=self._responses_done,
            cancels_sent=self._cancels_sent,
            truncates_sent=self._truncates_sent,
            truncations_confirmed=self._truncations_confirmed,
            transcription_failures=self._transcription_failures,
            function_calls=self._function_calls,
            function_call_duplicates=self._function_call_duplicates,
            function_calls_dropped=self._function_calls_dropped,
            function_outputs_sent=self._function_outputs_sent,
            audio_bytes_sent=self._audio_bytes_sent,
            audio_bytes_received=self._audio_bytes_received,
            audio_bytes_dropped_before_ready=self._audio_dropped,
            commands_dropped=self._commands_dropped,
            rate_limits=self._rate_limits,
        )

    # ---- inbound -------------------------------------------------------------------------------

    def _receive_configuring(self, event: ServerEvent) -> None:
        match event:
            case SessionCreated(session_id=session_id):
                self._session_id = session_id
            case SessionUpdated():
                self._session_id = event.session_id or self._session_id
                if self._formats_confirmed(event):
                    self._become_ready()
            case ServerError():
                self._server_errors += 1
                self._end(EndReason.MODEL_ERROR, _describe_error(event))
            case _:
                # Nothing else can concern us before the formats are settled: we have sent no
                # audio and asked for no response yet.
                pass

    def _receive_ready(self, event: ServerEvent) -> None:
        match event:
            case OutputAudioDelta(response_id=response_id, item_id=item_id, audio=audio):
                self._audio_bytes_received += len(audio)
                self._events.append(AgentAudio(response_id, item_id, audio))
            case SpeechStarted(item_id=item_id, audio_start_ms=start_ms):
                self._events.append(AgentSpeechStarted(item_id, start_ms))
            case SpeechStopped(item_id=item_id, audio_end_ms=end_ms):
                self._events.append(AgentSpeechStopped(item_id, end_ms))
            case ResponseCreated():
                self._on_response_created(event)
            case ResponseDone():
                self._on_response_done(event)
            case FunctionCallStarted():
                self._on_function_call_started(event)
            case FunctionCallDone():
                self._on_function_call_done(event)
            case InputTranscriptionCompleted(item_id=item_id, transcript=transcript):
                self._events.append(AgentTranscript("caller", item_id, transcript))
            case OutputAudioTranscriptDone(item_id=item_id, transcript=transcript):
                self._events.append(AgentTranscript("model", item_id, transcript))
            case OutputTextDone(item_id=item_id, text=text):
                self._events.append(AgentTranscript("model", item_id, text))
            case ServerError():
                self._on_error(event)
            case SessionUpdated():
                # A later update (tools, say) must not have moved the formats; an echo without
                # audio settings tells us nothing either way.
                if (event.input_format or event.output_format) and not self._formats_confirmed(
                    event
                ):
                    return
                self._session_id = event.session_id or self._session_id
            case ItemTruncated():
                self._truncations_confirmed += 1
            case InputTranscriptionFailed():
                self._transcription_failures += 1
            case RateLimitsUpdated(rate_limits=limits):
                self._rate_limits = limits
            case SessionCreated() | InputAudioCommitted() | IgnoredServerEvent():
                pass
            case UnknownServerEvent():  # pragma: no cover - handled in receive_message
                pass

    def _formats_confirmed(self, event: SessionUpdated) -> bool:
        got = (event.input_format, event.output_format)
        if got == self._expected_formats:
            return True
        asked_in, asked_out = self._expected_formats
        self._end(
            EndReason.MODEL_FORMAT_REJECTED,
            f"session.updated confirmed input format {got[0]!r} and output format {got[1]!r}, "
            f"asked for {asked_in!r} and {asked_out!r}",
        )
        return False

    def _become_ready(self) -> None:
        self._phase = SessionPhase.READY
        self._events.append(AgentReady(self._session_id, self._audio_dropped))
        held, self._held = self._held, collections.deque()
        self._held_audio_bytes = 0
        for command in held:
            self._apply(command)

    def _on_response_created(self, event: ResponseCreated) -> None:
        self._responses_created += 1
        self._response_phase = ResponsePhase.ACTIVE
        self._active_response_id = event.response_id
        self._events.append(AgentResponseStarted(event.response_id))

    def _on_response_done(self, event: ResponseDone) -> None:
        self._responses_done += 1
        self._settle_function_calls(event.response_id)
        self._events.append(AgentResponseDone(event.response_id, event.status, event.usage))
        ours = self._response_phase is ResponsePhase.REQUESTED or (
            self._response_phase is ResponsePhase.ACTIVE
            and self._active_response_id in ("", event.response_id)
        )
        if not ours:
            # The end of a response we were not tracking (out-of-band): ours is still running.
            return
        self._response_phase = ResponsePhase.IDLE
        self._active_response_id = ""
        self._sent_request = None
        self._send_queued_request()

    def _on_function_call_started(self, event: FunctionCallStarted) -> None:
        if not event.item_id or len(self._started_calls) >= MAX_OPEN_FUNCTION_CALLS:
            return
        self._started_calls[event.item_id] = event
        unnamed = self._unnamed_calls.pop(event.item_id, None)
        if unnamed is not None:
            self._on_function_call_done(unnamed)

    def _on_function_call_done(self, event: FunctionCallDone) -> None:
        key = event.item_id or event.call_id
        call = _complete_call(
            event, self._unnamed_calls.pop(key, None), self._started_calls.get(event.item_id)
        )
        if call.call_id in self._reported_call_ids:
            self._function_call_duplicates += 1
        elif call.call_id and call.name:
            self._report_function_call(call)
        elif len(self._unnamed_calls) < MAX_OPEN_FUNCTION_CALLS:
            # The other report of this call (output_item.done) may still name it.
            self._unnamed_calls[key] = call
        else:
            self._function_calls_dropped += 1

    def _settle_function_calls(self, response_id: str) -> None:
        """The response is done: no more reports of its calls will come."""

        def of_response(other: str) -> bool:
            return not response_id or other in ("", response_id)

        for key, call in list(self._unnamed_calls.items()):
            if not of_response(call.response_id):
                continue
            del self._unnamed_calls[key]
            if call.call_id and call.call_id not in self._reported_call_ids:
                self._report_function_call(call)
            else:
                self._function_calls_dropped += 1
        for item_id, started in list(self._started_calls.items()):
            if of_response(started.response_id):
                del self._started_calls[item_id]

    def _report_function_call(self, call: FunctionCallDone) -> None:
        self._function_calls += 1
        self._reported_call_ids[call.call_id] = None
        if len(self._reported_call_ids) > MAX_REPORTED_CALL_IDS:
            del self._reported_call_ids[next(iter(self._reported_call_ids))]
        self._events.append(
            AgentFunctionCall(
                response_id=call.response_id,
                item_id=call.item_id,
                call_id=call.call_id,
                name=call.name,
                arguments=call.arguments,
            )
        )

    def _on_error(self, error: ServerError) -> None:
        self._server_errors += 1
        if error.code == SESSION_EXPIRED_CODE:
            self._end(EndReason.MODEL_CLOSED, _describe_error(error))
            return
        sent = self._sent_request
        if sent is not None and error.event_id and error.event_id == sent[0]:
            self._sent_request = None
            if error.code == ACTIVE_RESPONSE_CODE:
                # Another response won the race; ours goes out once that one is done.
                self._requests_requeued += 1
                queued = self._queued_request
                if queued is None:
                    self._queued_request = sent[1]
                else:
                    self._requests_coalesced += 1
                    self._queued_request = _merge_requests(sent[1], queued)
                if self._response_phase is ResponsePhase.REQUESTED:
                    # The winner's response.created has not reached us; any response.done frees us.
                    self._response_phase = ResponsePhase.ACTIVE
                    self._active_response_id = ""
                else:
                    self._send_queued_request()
            elif self._response_phase is ResponsePhase.REQUESTED:
                self._response_phase = ResponsePhase.IDLE
                self._send_queued_request()
        self._events.append(AgentError(error.code or error.type, error.message))

    # ---- outbound ------------------------------------------------------------------------------

    def _hold(self, command: AgentCommand) -> None:
        if isinstance(command, SendAudio):
            self._held.append(command)
            self._held_audio_bytes += len(command.payload)
            while self._held_audio_bytes > self._pre_ready_audio_limit:
                self._drop_oldest_held_audio()
            return
        if isinstance(command, CloseAgent):
            self._apply(command)
            return
        if len(self._held) >= MAX_PRE_READY_COMMANDS:
            self._commands_dropped += 1
            return
        self._held.append(command)

    def _drop_oldest_held_audio(self) -> None:
        for index, held in enumerate(self._held):
            if isinstance(held, SendAudio):
                del self._held[index]
                self._held_audio_bytes -= len(held.payload)
                self._audio_dropped += len(held.payload)
                return

    def _apply(self, command: AgentCommand) -> None:
        match command:
            case SendAudio(payload=payload):
                if payload:
                    self._audio_bytes_sent += len(payload)
                    self._queue(self._codec.input_audio_append(payload))
            case TruncateItem(item_id=item_id, audio_end_ms=end_ms):
                self._truncates_sent += 1
                self._queue(
                    self._codec.item_truncate(item_id, max(0, end_ms), self._new_event_id())
                )
            case AddUserText(text=text):
                self._queue(self._codec.user_text(text, self._new_event_id()))
            case AddFunctionOutput(call_id=call_id, output=output):
                self._function_outputs_sent += 1
                self._queue(self._codec.function_call_output(call_id, output, self._new_event_id()))
            case RequestResponse():
                self._request_response(command)
            case CancelResponse():
                self._cancel_response()
            case CloseAgent():
                self._phase = SessionPhase.CLOSED
                self._held.clear()

    def _request_response(self, request: RequestResponse) -> None:
        if self._response_phase is ResponsePhase.IDLE and self._queued_request is None:
            self._send_request(request)
            return
        if self._queued_request is not None:
            self._requests_coalesced += 1
        self._queued_request = _merge_requests(self._queued_request, request)
        if self._response_phase is ResponsePhase.IDLE:
            self._send_queued_request()

    def _send_queued_request(self) -> None:
        if self._queued_request is None or self._response_phase is not ResponsePhase.IDLE:
            return
        request, self._queued_request = self._queued_request, None
        self._send_request(request)

    def _send_request(self, request: RequestResponse) -> None:
        event_id = self._new_event_id()
        self._responses_requested += 1
        self._response_phase = ResponsePhase.REQUESTED
        self._sent_request = (event_id, request)
        self._queue(
            self._codec.response_create(
                request.instructions, event_id, allow_tools=request.allow_tools
            )
        )

    def _cancel_response(self) -> None:
        if self._response_phase is ResponsePhase.IDLE:
            return
        self._cancels_sent += 1
        response_id = self._active_response_id or None
        self._queue(self._codec.response_cancel(response_id, self._new_event_id()))

    # ---- helpers -------------------------------------------------------------------------------

    def _queue(self, message: str) -> None:
        self._messages_sent += 1
        self._outbox.append(message)

    def _new_event_id(self) -> str:
        self._next_event_number += 1
        return f"bridge_{self._next_event_number}"

    def _end(self, reason: EndReason, detail: str) -> None:
        self._phase = SessionPhase.ENDED
        self._held.clear()
        self._events.append(AgentEnded(reason, detail))

    def _note_unknown(self, event_type: str) -> None:
        self._unknown += 1
        if (
            event_type not in self._unknown_types
            and len(self._unknown_types) < MAX_UNKNOWN_TYPES_KEPT
        ):
            self._unknown_types[event_type] = None
            self._new_unknown_types.append(event_type)


def _merge_requests(older: RequestResponse | None, newer: RequestResponse) -> RequestResponse:
    """One request standing for both (see the module docstring).

    A request that may call tools wins over one that may not, whole: its instructions are for the
    real response, the other's were for a holding phrase. Otherwise the newer instructions win
    when it has any.
    """
    if older is None:
        return newer
    if older.allow_tools != newer.allow_tools:
        return newer if newer.allow_tools else older
    return newer if newer.instructions is not None else older


def _complete_call(
    event: FunctionCallDone, unnamed: FunctionCallDone | None, started: FunctionCallStarted | None
) -> FunctionCallDone:
    """`event` with what it lacks filled in from the earlier reports of the same item."""
    if unnamed is not None:
        event = FunctionCallDone(
            response_id=event.response_id or unnamed.response_id,
            item_id=event.item_id or unnamed.item_id,
            call_id=event.call_id or unnamed.call_id,
            name=event.name or unnamed.name,
            arguments=event.arguments or unnamed.arguments,
        )
    if started is not None:
        event = FunctionCallDone(
            response_id=event.response_id or started.response_id,
            item_id=event.item_id or started.item_id,
            call_id=event.call_id or started.call_id,
            name=event.name or started.name,
            arguments=event.arguments,
        )
    return event


def _describe_error(error: ServerError) -> str:
    code = error.code or error.type or "error"
    return f"{code}: {error.message}" if error.message else code


__all__ = [
    "DEFAULT_PRE_READY_AUDIO_BYTES",
    "RealtimeSession",
    "RealtimeStatistics",
    "ResponsePhase",
    "SessionPhase",
]
