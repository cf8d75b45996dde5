"""Wire codec for the OpenAI Realtime API, GA and beta dialects (realtime-api.md §1.4-§1.7, §4).

Inbound server events are decoded tolerantly into the frozen classes below: unknown types become
:class:`UnknownServerEvent`, missing or mistyped optional fields take defaults, and only a message
that is not a JSON object with a string ``type`` (or carries audio that is not base64) raises
:class:`bridge.errors.RemoteProtocolError` with websocket close hint 1007. The beta dialect's wire
names (``response.audio.delta``, ``response.text.done``, ...) decode to the same classes as the GA
names; a beta codec also accepts GA names, because several "compatible" servers mix the two, while
a GA codec reports beta names as unknown so a mis-configured dialect shows up in the statistics.

Function calls (§4.2, Realtime API guide "Function calling") reach us twice: as
``response.function_call_arguments.done`` and as ``response.output_item.done`` whose item is a
``function_call``. Both decode to :class:`FunctionCallDone`; the session core merges the two into
one call. Beta ``arguments.done`` events carry no ``name``, so ``response.output_item.added`` of a
function_call item decodes to :class:`FunctionCallStarted`, which names the call early. Output items
of other types, and function_call items that did not complete, stay ignored.

Outbound client events (§1.5) are strict and built here, never from foreign dicts. They are the
same in both dialects except for the ``session.update`` payload, which
:mod:`bridge.proto.realtime.session_config` builds. ``input_audio_buffer.append`` is assembled by
string formatting: base64 text never needs JSON escaping, and it is the one per-frame message.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from bridge.config import Dialect
from bridge.errors import RemoteProtocolError

# Websocket close code 1007: "invalid frame payload data" (RFC 6455 §7.4.1).
INVALID_PAYLOAD_HINT = 1007


# ---- server events -----------------------------------------------------------------------------


@attrs.frozen
class SessionCreated:
    """``session.created``: the session's initial effective configuration."""

    session_id: str
    input_format: str
    output_format: str


@attrs.frozen
class SessionUpdated:
    """``session.updated``: the effective configuration after our ``session.update``.

    The formats are wire strings of the dialect: ``audio/pcmu`` (GA) or ``g711_ulaw`` (beta).
    """

    session_id: str
    input_format: str
    output_format: str


@attrs.frozen
class SpeechStarted:
    """``input_audio_buffer.speech_started``."""

    item_id: str
    audio_start_ms: int


@attrs.frozen
class SpeechStopped:
    """``input_audio_buffer.speech_stopped``."""

    item_id: str
    audio_end_ms: int


@attrs.frozen
class InputAudioCommitted:
    """``input_audio_buffer.committed``."""

    item_id: str
    previous_item_id: str


@attrs.frozen
class ResponseCreated:
    """``response.created``: a response became active."""

    response_id: str
    status: str


@attrs.frozen
class ResponseDone:
    """``response.done``: a response ended with `status` (completed, cancelled, failed, ...).

    `usage` is the server's token accounting object, passed on as is for the call record.
    `status_reason` is ``status_details.reason`` (turn_detected, max_output_tokens, ...) and
    `error_code` is ``status_details.error.code`` of a failed response.
    """

    response_id: str
    status: str
    usage: Mapping[str, Any] | None
    status_reason: str = ""
    error_code: str = ""


@attrs.frozen
class OutputAudioDelta:
    """``response.output_audio.delta`` (beta ``response.audio.delta``), base64 already decoded."""

    response_id: str
    item_id: str
    audio: bytes


@attrs.frozen
class OutputAudioTranscriptDone:
    """``response.output_audio_transcript.done`` (beta ``response.audio_transcript.done``)."""

    response_id: str
    item_id: str
    transcript: str


@attrs.frozen
class OutputTextDone:
    """``response.output_text.done`` (beta ``response.text.done``)."""

    response_id: str
    item_id: str
    text: str


@attrs.frozen
class InputTranscriptionCompleted:
    """``conversation.item.input_audio_transcription.completed``: what the caller said."""

    item_id: str
    transcript: str


@attrs.frozen
class InputTranscriptionFailed:
    """``conversation.item.input_audio_transcription.failed``."""

    item_id: str
    code: str
    message: str


@attrs.frozen
class ItemTruncated:
    """``conversation.item.truncated``: the server confirmed a ``conversation.item.truncate``."""

    item_id: str
    content_index: int
    audio_end_ms: int


@attrs.frozen
class FunctionCallStarted:
    """``response.output_item.added`` of a ``function_call`` item: names the call early."""

    response_id: str
    item_id: str
    call_id: str
    name: str


@attrs.frozen
class FunctionCallDone:
    """The model finished function call `call_id`; `arguments` is the raw JSON text it wrote.

    Decoded from ``response.function_call_arguments.done`` and from ``response.output_item.done``
    of a completed ``function_call`` item; the server sends both for one call. `name` is empty when
    the event did not carry it (beta ``arguments.done``).
    """

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@attrs.frozen
class ServerError:
    """``error``; `event_id` names the client event that caused it, when the server knows."""

    type: str
    code: str
    message: str
    param: str
    event_id: str


@attrs.frozen
class RateLimit:
    """One entry of ``rate_limits.updated``."""

    name: str
    limit: int
    remaining: int
    reset_seconds: float


@attrs.frozen
class RateLimitsUpdated:
    """``rate_limits.updated``."""

    rate_limits: tuple[RateLimit, ...]


@attrs.frozen
class IgnoredServerEvent:
    """A documented event of the dialect that the bridge has no use for (deltas, item echoes)."""

    type: str


@attrs.frozen
class UnknownServerEvent:
    """An event type the dialect does not document; `raw` is the message as received."""

    type: str
    raw: str


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | InputAudioCommitted
    | ResponseCreated
    | ResponseDone
    | OutputAudioDelta
    | OutputAudioTranscriptDone
    | OutputTextDone
    | InputTranscriptionCompleted
    | InputTranscriptionFailed
    | ItemTruncated
    | FunctionCallStarted
    | FunctionCallDone
    | ServerError
    | RateLimitsUpdated
    | IgnoredServerEvent
    | UnknownServerEvent
)


# ---- tolerant field readers --------------------------------------------------------------------


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    # bool is an int in Python but never a count on the wire.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0


def _float(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _obj(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _path(obj: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    for key in keys:
        obj = _obj(obj, key)
    return obj


# ---- per-event decoders ------------------------------------------------------------------------


def _ga_formats(session: Mapping[str, Any]) -> tuple[str, str]:
    audio = _obj(session, "audio")
    return (
        _str(_path(audio, "input", "format"), "type"),
        _str(_path(audio, "output", "format"), "type"),
    )


def _beta_formats(session: Mapping[str, Any]) -> tuple[str, str]:
    return _str(session, "input_audio_format"), _str(session, "output_audio_format")


def _decode_error(event: Mapping[str, Any]) -> ServerError:
    error = _obj(event, "error")
    return ServerError(
        type=_str(error, "type"),
        code=_str(error, "code"),
        message=_str(error, "message"),
        param=_str(error, "param"),
        event_id=_str(error, "event_id"),
    )


def _decode_speech_started(event: Mapping[str, Any]) -> SpeechStarted:
    return SpeechStarted(
        item_id=_str(event, "item_id"), audio_start_ms=_int(event, "audio_start_ms")
    )


def _decode_speech_stopped(event: Mapping[str, Any]) -> SpeechStopped:
    return SpeechStopped(item_id=_str(event, "item_id"), audio_end_ms=_int(event, "audio_end_ms"))


def _decode_committed(event: Mapping[str, Any]) -> InputAudioCommitted:
    return InputAudioCommitted(
        item_id=_str(event, "item_id"), previous_item_id=_str(event, "previous_item_id")
    )


def _decode_response_created(event: Mapping[str, Any]) -> ResponseCreated:
    response = _obj(event, "response")
    return ResponseCreated(response_id=_str(response, "id"), status=_str(response, "status"))


def _decode_response_done(event: Mapping[str, Any]) -> ResponseDone:
    response = _obj(event, "response")
    usage = response.get("usage")
    details = _obj(response, "status_details")
    return ResponseDone(
        response_id=_str(response, "id"),
        status=_str(response, "status"),
        usage=usage if isinstance(usage, dict) else None,
        status_reason=_str(details, "reason"),
        error_code=_str(_obj(details, "error"), "code"),
    )


def _decode_audio_delta(event: Mapping[str, Any]) -> OutputAudioDelta:
    try:
        audio = base64.b64decode(_str(event, "delta"), validate=True)
    except binascii.Error as error:
        raise RemoteProtocolError(
            f"audio delta is not base64: {error}", hint=INVALID_PAYLOAD_HINT
        ) from None
    return OutputAudioDelta(
        response_id=_str(event, "response_id"), item_id=_str(event, "item_id"), audio=audio
    )


def _decode_transcript_done(event: Mapping[str, Any]) -> OutputAudioTranscriptDone:
    return OutputAudioTranscriptDone(
        response_id=_str(event, "response_id"),
        item_id=_str(event, "item_id"),
        transcript=_str(event, "transcript"),
    )


def _decode_text_done(event: Mapping[str, Any]) -> OutputTextDone:
    return OutputTextDone(
        response_id=_str(event, "response_id"),
        item_id=_str(event, "item_id"),
        text=_str(event, "text"),
    )


def _decode_transcription_completed(event: Mapping[str, Any]) -> InputTranscriptionCompleted:
    return InputTranscriptionCompleted(
        item_id=_str(event, "item_id"), transcript=_str(event, "transcript")
    )


def _decode_transcription_failed(event: Mapping[str, Any]) -> InputTranscriptionFailed:
    error = _obj(event, "error")
    return InputTranscriptionFailed(
        item_id=_str(event, "item_id"), code=_str(error, "code"), message=_str(error, "message")
    )


def _decode_truncated(event: Mapping[str, Any]) -> ItemTruncated:
    return ItemTruncated(
        item_id=_str(event, "item_id"),
        content_index=_int(event, "content_index"),
        audio_end_ms=_int(event, "audio_end_ms"),
    )


def _decode_arguments_done(event: Mapping[str, Any]) -> FunctionCallDone:
    return FunctionCallDone(
        response_id=_str(event, "response_id"),
        item_id=_str(event, "item_id"),
        call_id=_str(event, "call_id"),
        name=_str(event, "name"),
        arguments=_str(event, "arguments"),
    )


def _decode_output_item_added(event: Mapping[str, Any]) -> FunctionCallStarted | IgnoredServerEvent:
    item = _obj(event, "item")
    if _str(item, "type") != "function_call":
        return IgnoredServerEvent("response.output_item.added")
    return FunctionCallStarted(
        response_id=_str(event, "response_id"),
        item_id=_str(item, "id"),
        call_id=_str(item, "call_id"),
        name=_str(item, "name"),
    )


def _decode_output_item_done(event: Mapping[str, Any]) -> FunctionCallDone | IgnoredServerEvent:
    item = _obj(event, "item")
    # An incomplete call (its response was cut short) has arguments the model never finished.
    if _str(item, "type") != "function_call" or _str(item, "status") != "completed":
        return IgnoredServerEvent("response.output_item.done")
    return FunctionCallDone(
        response_id=_str(event, "response_id"),
        item_id=_str(item, "id"),
        call_id=_str(item, "call_id"),
        name=_str(item, "name"),
        arguments=_str(item, "arguments"),
    )


def _decode_rate_limits(event: Mapping[str, Any]) -> RateLimitsUpdated:
    entries = event.get("rate_limits")
    limits = tuple(
        RateLimit(
            name=_str(entry, "name"),
            limit=_int(entry, "limit"),
            remaining=_int(entry, "remaining"),
            reset_seconds=_float(entry, "reset_seconds"),
        )
        for entry in (entries if isinstance(entries, list) else ())
        if isinstance(entry, dict)
    )
    return RateLimitsUpdated(rate_limits=limits)


_Decoder = Callable[[Mapping[str, Any]], ServerEvent]


def _session_decoders(dialect: Dialect) -> dict[str, _Decoder]:
    formats = _ga_formats if dialect is Dialect.GA else _beta_formats

    def created(event: Mapping[str, Any]) -> SessionCreated:
        session = _obj(event, "session")
        return SessionCreated(_str(session, "id"), *formats(session))

    def updated(event: Mapping[str, Any]) -> SessionUpdated:
        session = _obj(event, "session")
        return SessionUpdated(_str(session, "id"), *formats(session))

    return {"session.created": created, "session.updated": updated}


# Names shared by both dialects.
_COMMON_DECODERS: dict[str, _Decoder] = {
    "error": _decode_error,
    "input_audio_buffer.speech_started": _decode_speech_started,
    "input_audio_buffer.speech_stopped": _decode_speech_stopped,
    "input_audio_buffer.committed": _decode_committed,
    "response.created": _decode_response_created,
    "response.done": _decode_response_done,
    "conversation.item.input_audio_transcription.completed": _decode_transcription_completed,
    "conversation.item.input_audio_transcription.failed": _decode_transcription_failed,
    "conversation.item.truncated": _decode_truncated,
    "rate_limits.updated": _decode_rate_limits,
    "response.output_item.added": _decode_output_item_added,
    "response.output_item.done": _decode_output_item_done,
    "response.function_call_arguments.done": _decode_arguments_done,
}

_GA_RENAMED: dict[str, _Decoder] = {
    "response.output_audio.delta": _decode_audio_delta,
    "response.output_audio_transcript.done": _decode_transcript_done,
    "response.output_text.done": _decode_text_done,
}

_BETA_RENAMED: dict[str, _Decoder] = {
    "response.audio.delta": _decode_audio_delta,
    "response.audio_transcript.done": _decode_transcript_done,
    "response.text.done": _decode_text_done,
}

# Documented events the bridge does not act on (openai-python types.realtime / types.beta.realtime).
_COMMON_IGNORED = frozenset(
    {
        "conversation.created",
        "conversation.item.created",
        "conversation.item.deleted",
        "conversation.item.retrieved",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.cleared",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
        "response.content_part.added",
        "response.content_part.done",
        "response.function_call_arguments.delta",
    }
)
_GA_IGNORED = _COMMON_IGNORED | {
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.timeout_triggered",
    "input_audio_buffer.dtmf_event_received",
    "mcp_list_tools.in_progress",
    "mcp_list_tools.completed",
    "mcp_list_tools.failed",
    "response.mcp_call_arguments.delta",
    "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress",
    "response.mcp_call.completed",
    "response.mcp_call.failed",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_text.delta",
}
_BETA_IGNORED = _COMMON_IGNORED | {
    "transcription_session.updated",
    "response.audio.done",
    "response.audio_transcript.delta",
    "response.text.delta",
}


# ---- the codec ---------------------------------------------------------------------------------


class RealtimeCodec:
    """Decodes server events and encodes client events for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        decoders = {**_COMMON_DECODERS, **_GA_RENAMED, **_session_decoders(dialect)}
        ignored: frozenset[str] = _GA_IGNORED
        if dialect is Dialect.BETA:
            decoders |= _BETA_RENAMED
            ignored = _GA_IGNORED | _BETA_IGNORED
        self._decoders = decoders
        self._ignored = ignored

    # -- inbound --

    def decode(self, message: str | bytes) -> ServerEvent:
        """Decode one websocket message; raises RemoteProtocolError(hint=1007) when malformed."""
        try:
            event = json.loads(message)
        except (ValueError, UnicodeDecodeError) as error:
            raise RemoteProtocolError(
                f"server message is not JSON: {error}", hint=INVALID_PAYLOAD_HINT
            ) from None
        if not isinstance(event, dict):
            raise RemoteProtocolError(
                f"server message is a JSON {type(event).__name__}, not an object",
                hint=INVALID_PAYLOAD_HINT,
            )
        event_type = event.get("type")
        if not isinstance(event_type, str):
            raise RemoteProtocolError(
                "server message has no string 'type'", hint=INVALID_PAYLOAD_HINT
            )
        decoder = self._decoders.get(event_type)
        if decoder is not None:
            return decoder(event)
        if event_type in self._ignored:
            return IgnoredServerEvent(event_type)
        raw = message if isinstance(message, str) else message.decode("utf-8", "replace")
        return UnknownServerEvent(type=event_type, raw=raw)

    # -- outbound --

    @staticmethod
    def input_audio_append(audio: bytes) -> str:
        """``input_audio_buffer.append`` with `audio` in the session's input format."""
        encoded = base64.b64encode(audio).decode("ascii")
        return '{"type":"input_audio_buffer.append","audio":"' + encoded + '"}'

    @staticmethod
    def session_update(session_update: Mapping[str, Any], event_id: str) -> str:
        """The ``session.update`` event built by session_config, tagged with `event_id`."""
        if session_update.get("type") != "session.update":
            raise ValueError("session_update must be a 'session.update' client event")
        return _dumps({**session_update, "event_id": event_id})

    @staticmethod
    def item_truncate(item_id: str, audio_end_ms: int, event_id: str) -> str:
        """``conversation.item.truncate`` of the audio content (index 0) of `item_id`."""
        return _dumps(
            {
                "type": "conversation.item.truncate",
                "event_id": event_id,
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    @staticmethod
    def user_text(text: str, event_id: str) -> str:
        """``conversation.item.create`` of a user message with one input_text part."""
        return _dumps(
            {
                "type": "conversation.item.create",
                "event_id": event_id,
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )

    @staticmethod
    def function_call_output(call_id: str, output: str, event_id: str) -> str:
        """``conversation.item.create`` of the ``function_call_output`` item for `call_id`."""
        return _dumps(
            {
                "type": "conversation.item.create",
                "event_id": event_id,
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
        )

    @staticmethod
    def response_create(
        instructions: str | None, event_id: str, *, allow_tools: bool = True
    ) -> str:
        """``response.create``, overriding the session's instructions for this response only.

        With `allow_tools` False the response may not call tools (``tool_choice: "none"``).
        """
        event: dict[str, Any] = {"type": "response.create", "event_id": event_id}
        response: dict[str, Any] = {}
        if instructions is not None:
            response["instructions"] = instructions
        if not allow_tools:
            response["tool_choice"] = "none"
        if response:
            event["response"] = response
        return _dumps(event)

    @staticmethod
    def response_cancel(response_id: str | None, event_id: str) -> str:
        """``response.cancel`` of `response_id`, or of the active response when None."""
        event: dict[str, Any] = {"type": "response.cancel", "event_id": event_id}
        if response_id:
            event["response_id"] = response_id
        return _dumps(event)


def _dumps(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


__all__ = [
    "INVALID_PAYLOAD_HINT",
    "FunctionCallDone",
    "FunctionCallStarted",
    "IgnoredServerEvent",
    "InputAudioCommitted",
    "InputTranscriptionCompleted",
    "InputTranscriptionFailed",
    "ItemTruncated",
    "OutputAudioDelta",
    "OutputAudioTranscriptDone",
    "OutputTextDone",
    "RateLimit",
    "RateLimitsUpdated",
    "RealtimeCodec",
    "ResponseCreated",
    "ResponseDone",
    "ServerError",
    "ServerEvent",
    "SessionCreated",
    "SessionUpdated",
    "SpeechStarted",
    "SpeechStopped",
    "UnknownServerEvent",
]
