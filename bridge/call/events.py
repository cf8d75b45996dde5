"""The call's internal vocabulary: what legs report to the control loop and what it tells them.

Every telephony leg (media-stream websocket, SIP/RTP; Asterisk later) speaks the ``Telephony*``
half, every agent leg (the Realtime protocol today; GPT-Live later) the ``Agent*`` half, and the
tool runner the ``Tool*`` half, so :class:`bridge.call.bridge.CallBridge` never sees a wire
format. Audio is G.711 bytes at 8 kHz, one byte a sample, so 8 bytes are one millisecond and 160
bytes one 20 ms frame.
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
    AGENT_HANGUP = "agent_hangup"
    TRANSFERRED = "transferred"
    # Rebuilt from the call's journal at the next start: the daemon died mid-call.
    DAEMON_CRASHED = "daemon_crashed"


class Capability(enum.Enum):
    """Call control a telephony leg can carry out beyond playing audio and hanging up."""

    TRANSFER = "transfer"  # blind transfer in-band (SIP REFER)
    SEND_DTMF = "send_dtmf"  # keypad digits to the far end (RFC 4733)


class ToolOutcome(enum.Enum):
    """How one tool call ended, as the call record and the model see it."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    INVALID_ARGUMENTS = "invalid_arguments"
    UNKNOWN_TOOL = "unknown_tool"
    CANCELLED = "cancelled"


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
class TransferResult:
    """The final outcome of a :class:`TransferCall` (SIP: the REFER's answer and NOTIFY sipfrag).

    `status` is the SIP status that decided it (202 then a NOTIFY with 200: success; a 4xx to the
    REFER or a sipfrag 486: failure), 0 when none came (timeout, transport error).
    """

    ok: bool
    status: int = 0
    detail: str = ""


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


@attrs.frozen
class TransferCall:
    """Blind-transfer the caller to `target` (a SIP URI); answered by :class:`TransferResult`.

    Sent only to legs with :attr:`Capability.TRANSFER`. `referred_by` is the URI for the
    Referred-By header (RFC 3892); empty means the leg's own address.
    """

    target: str
    referred_by: str = ""


@attrs.frozen
class SendDtmf:
    """Send keypad digits (0-9, *, #, A-D) to the far end (legs with Capability.SEND_DTMF)."""

    digits: str


# ---- agent leg -> control loop -----------------------------------------------------------------


@attrs.frozen
class AgentReady:
    """The model session is configured and confirmed the call's audio formats.

    `caller_audio_dropped` bytes of caller audio were dropped while it was getting ready (only
    the last seconds are held for it), so they never reached the model."""

    session_id: str
    caller_audio_dropped: int = 0


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
class AgentFunctionCall:
    """The model finished a function call (its arguments are complete); `arguments` is raw JSON."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


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
class AddFunctionOutput:
    """The result of function call `call_id`, as a ``function_call_output`` conversation item."""

    call_id: str
    output: str


@attrs.frozen
class RequestResponse:
    """Ask the model to respond; `instructions` override the session's for this response only.

    `allow_tools=False` asks for a response that may not call tools (``tool_choice: "none"``),
    used for the holding phrase while a tool runs.
    """

    instructions: str | None = None
    allow_tools: bool = True


@attrs.frozen
class CancelResponse:
    """Cancel the model's active response, if any."""


@attrs.frozen
class CloseAgent:
    """End the agent session."""


# ---- control loop -> tool runner -> control loop ------------------------------------------------


@attrs.frozen
class RunTool:
    """Run operator tool `name` (http, python, or a transfer hook) for function call `call_id`.

    `arguments` are the model's arguments, already parsed to a JSON object.
    """

    call_id: str
    name: str
    arguments: Mapping[str, Any]


@attrs.frozen
class CancelTool:
    """Stop the tool run for `call_id` (its timeout passed); no ToolFinished is needed after."""

    call_id: str


@attrs.frozen
class ToolFinished:
    """A tool run ended: `output` is the text for the model (the reply body, or a JSON error)."""

    call_id: str
    outcome: ToolOutcome
    output: str
    detail: str = ""


TelephonyEvent = CallerAudio | CallerDtmf | AudioPlayed | TransferResult | TelephonyEnded
TelephonyCommand = AnswerCall | PlayAudio | ClearAudio | HangUp | TransferCall | SendDtmf
ToolCommand = RunTool | CancelTool
ToolEvent = ToolFinished
AgentEvent = (
    AgentReady
    | AgentSpeechStarted
    | AgentSpeechStopped
    | AgentResponseStarted
    | AgentAudio
    | AgentTranscript
    | AgentResponseDone
    | AgentFunctionCall
    | AgentError
    | AgentEnded
)
AgentCommand = (
    SendAudio
    | TruncateItem
    | AddUserText
    | AddFunctionOutput
    | RequestResponse
    | CancelResponse
    | CloseAgent
)


def dtmf_message(digits: str) -> str:
    """The user message that tells the model which keys the caller pressed."""
    return f"The caller pressed {', '.join(digits)} on the phone keypad."
