"""The call's internal vocabulary: what legs report to the control loop and what it tells them.

Every telephony leg (media-stream websocket today; SIP/RTP and Asterisk later) speaks the
``Telephony*`` half, every agent leg (the Realtime protocol today; GPT-Live later) the ``Agent*``
half, so :class:`bridge.call.bridge.CallBridge` never sees a wire format. Audio is G.711 bytes at
8 kHz, one byte a sample, so 8 bytes are one millisecond and 160 bytes one 20 ms frame.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs


class EndReason(enum.Enum):
    """Why a call ended; each call ends with exactly one."""

    CALLER_HANGUP = "caller_hangup"
    TELEPHONY_ERROR = "telephony_error"
    MODEL_CLOSED = "model_closed"
    MODEL_ERROR = "model_error"
    MODEL_CONNECT_FAILED = "model_connect_failed"
    MODEL_FORMAT_REJECTED = "model_format_rejected"
    MAX_DURATION = "max_duration"
    SHUTDOWN = "shutdown"
    AT_CAPACITY = "at_capacity"
    INTERNAL_ERROR = "internal_error"


class Codec(enum.Enum):
    """The G.711 laws a call can carry; the value is the RTP/SDP encoding name."""

    PCMU = "PCMU"
    PCMA = "PCMA"


# ---- telephony leg -> control loop -------------------------------------------------------------


@attrs.frozen
class CallerAudio:
    """Caller audio in the call's codec, any whole number of samples."""

    payload: bytes


@attrs.frozen
class CallerDtmf:
    """One keypad digit pressed by the caller (0-9, *, #, A-D)."""

    digit: str


@attrs.frozen
class AudioPlayed:
    """The leg confirms the caller has heard `played_bytes` of item `item_id` (cumulative)."""

    item_id: str
    played_bytes: int


@attrs.frozen
class TelephonyEnded:
    """The telephony side is gone (hang-up, stop, socket closed, protocol error)."""

    reason: EndReason
    detail: str = ""


# ---- control loop -> telephony leg -------------------------------------------------------------


@attrs.frozen
class AnswerCall:
    """The model is ready: answer the call (SIP 200 OK); legs that are already up ignore it."""


@attrs.frozen
class PlayAudio:
    """Play whole 20 ms frames of model audio belonging to item `item_id` to the caller."""

    item_id: str
    payload: bytes


@attrs.frozen
class ClearAudio:
    """Drop everything queued for the caller at once (barge-in)."""


@attrs.frozen
class HangUp:
    """End the telephony side of the call."""

    reason: EndReason


# ---- agent leg -> control loop -----------------------------------------------------------------


@attrs.frozen
class AgentReady:
    """The model session is configured and confirmed the call's audio formats."""

    session_id: str


@attrs.frozen
class AgentSpeechStarted:
    """The model's voice activity detection heard the caller start speaking."""

    item_id: str
    audio_start_ms: int


@attrs.frozen
class AgentSpeechStopped:
    """The model's voice activity detection heard the caller stop speaking."""

    item_id: str
    audio_end_ms: int


@attrs.frozen
class AgentResponseStarted:
    """The model started a response."""

    response_id: str


@attrs.frozen
class AgentAudio:
    """Model audio for item `item_id`, in the call's codec, any length."""

    response_id: str
    item_id: str
    payload: bytes


@attrs.frozen
class AgentTranscript:
    """Final text of what the caller said (`role="caller"`) or the model said (`role="model"`)."""

    role: str
    item_id: str
    text: str


@attrs.frozen
class AgentResponseDone:
    """A response ended; `status` is completed, cancelled, failed or incomplete."""

    response_id: str
    status: str
    usage: Mapping[str, Any] | None = None


@attrs.frozen
class AgentError:
    """The model reported an error that does not end the session."""

    code: str
    message: str


@attrs.frozen
class AgentEnded:
    """The agent side is gone (closed, fatal error, formats not confirmed)."""

    reason: EndReason
    detail: str = ""


# ---- control loop -> agent leg -----------------------------------------------------------------


@attrs.frozen
class SendAudio:
    """Caller audio for the model's input buffer, in the session's input format."""

    payload: bytes


@attrs.frozen
class TruncateItem:
    """Cut a model audio item at what the caller actually heard."""

    item_id: str
    audio_end_ms: int


@attrs.frozen
class AddUserText:
    """Add a user text message to the conversation (DTMF, notes)."""

    text: str


@attrs.frozen
class RequestResponse:
    """Ask the model to respond; `instructions` override the session's for this response only."""

    instructions: str | None = None


@attrs.frozen
class CancelResponse:
    """Cancel the model's active response, if any."""


@attrs.frozen
class CloseAgent:
    """End the agent session."""


TelephonyEvent = CallerAudio | CallerDtmf | AudioPlayed | TelephonyEnded
TelephonyCommand = AnswerCall | PlayAudio | ClearAudio | HangUp
AgentEvent = (
    AgentReady
    | AgentSpeechStarted
    | AgentSpeechStopped
    | AgentResponseStarted
    | AgentAudio
    | AgentTranscript
    | AgentResponseDone
    | AgentError
    | AgentEnded
)
AgentCommand = (
    SendAudio | TruncateItem | AddUserText | RequestResponse | CancelResponse | CloseAgent
)
