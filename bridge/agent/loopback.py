"""The loopback model: a built-in, deterministic stand-in for the OpenAI Realtime API server side.

Implements the server half of the Realtime WebSocket protocol as summarised in
``shared/reference/realtime-api.md``: the GA session shape and its ``session.update`` rules (§1.3),
the client events a bridge sends (§1.5), the server events and error shapes it must handle (§1.6)
and ``server_vad`` turn detection (§2.1). With ``dialect="beta"`` it serves the retired beta shape
instead (flat session fields, the event names of §1.4 and §1.7), for clients of "compatible"
servers. Audio is G.711 u-law (``audio/pcmu``), A-law (``audio/pcma``) or 16-bit little-endian
PCM at 24 kHz (``audio/pcm``, the service default, so a client that never sends its formats gets
audibly wrong audio, exactly as with the real service).

Theory of operation
-------------------
One ``LoopbackModel`` serves one websocket connection. It is sans-IO (DESIGN.md rules 1-3): the
adapter feeds each text message to :meth:`LoopbackModel.receive_message` with the current time,
sends whatever :meth:`LoopbackModel.messages_to_send` returns, and calls
:meth:`LoopbackModel.handle_timeout` when :meth:`LoopbackModel.next_deadline` passes.

Two clocks are in play, on purpose:

* **Audio time** drives voice activity detection. Caller audio is cut into 20 ms frames; a frame
  is speech when its RMS level exceeds ``turn_detection.threshold * 1000`` on the 16-bit scale.
  Every position is counted in bytes received (8 bytes a millisecond for G.711), never in wall
  time, so the same audio always yields the same ``audio_start_ms`` / ``audio_end_ms``.

  ::

      LISTENING --loud frame--> SPEAKING   emit speech_started(audio_start_ms = frame start
                                           - prefix_padding_ms); cancel an active response
                                           when interrupt_response
      SPEAKING  --loud frame--> SPEAKING   remember the end of the last loud frame
      SPEAKING  --quiet frames >= silence_duration_ms--> LISTENING
                                           emit speech_stopped(audio_end_ms = end of the last
                                           loud frame), commit the turn [start, end) as a user
                                           item, respond when create_response

* **Wall time** (``now``) paces responses. A response is generated ``generation_speed`` times
  faster than real time (``math.inf`` queues it at once): its 100 ms audio deltas are released
  as they become due and ``response.done`` follows the last one. While a response is active a
  second ``response.create`` fails with ``conversation_already_has_active_response`` and caller
  speech (``interrupt_response``) or ``response.cancel`` ends it as ``cancelled``; deltas not yet
  released are dropped. ``idle_timeout_ms`` also runs on wall time, from the moment a completed
  reply has finished playing.

Replies are deterministic so tests can compare bytes: a caller turn is answered with the caller's
own turn audio (the committed item, transcoded to the output format), transcribed as
"You said [N.NN s of audio]."; a client ``response.create`` is answered with one short beep per
word of its instructions (400-800 Hz; a 1 s tone without instructions), transcribed as the
instructions themselves, or as the last user text item without them.

Function calls (§4) are scripted: each :class:`ScriptedToolCall` names a trigger, a user text item
equal to the keypad message for some digits (``bridge.call.events.dtmf_message``) or containing a
phrase. A response started without instructions (client ``response.create``, or a turn-detection
reply) whose newest user text item since the previous response matches an entry speaks the entry's
``say`` as above and then makes the call: ``response.output_item.added`` (``function_call``,
``in_progress``), ``conversation.item.added`` (beta: ``.created``), the arguments in
``response.function_call_arguments.delta`` pieces and ``.done``, ``response.output_item.done``,
``conversation.item.done`` (GA only) and ``response.done`` listing both items. The call comes after
the last audio delta, when the spoken part is due to end; a response cancelled before then never
makes it. ``tool_choice: "none"`` (of the response, else of the session) suppresses calls. A
``function_call_output`` must answer a function call in the conversation, and the next
``response.create`` without instructions answers the outputs added since the previous response,
"Tool <name> returned: <output>" (one beep per word).

Everything outbound is built here as plain JSON; the daemon's own Realtime codec
(``bridge.proto.realtime``) is the client side and parses these events, so sharing its classes
would let a bug hide on both sides at once.
"""

from __future__ import annotations

import base64
import binascii
import copy
import enum
import functools
import json
import math
import random
import string
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from bridge.call.events import Codec, dtmf_message
from bridge.media import g711

JsonObject = dict[str, Any]
# A field validator: takes a client value and its parameter path, returns the value as the model
# stores and echoes it, or raises _ClientError.
_FieldCheck = Callable[[object, str], Any]

FRAME_MS: Final = 20
DELTA_MS: Final = 100
MAX_APPEND_BYTES: Final = 15 * 1024 * 1024
MIN_COMMIT_MS: Final = 100
SESSION_SECONDS: Final = 3600
DEFAULT_GENERATION_SPEED: Final = 4.0
DEFAULT_INSTRUCTIONS: Final = (
    "You are the loopback model. You repeat what the caller said and read your instructions aloud."
)
FALLBACK_TRANSCRIPT: Final = "Hello from the loopback model."
IDLE_TRANSCRIPT: Final = "Are you still there?"
# One token per 100 ms of audio in and per 50 ms out, as the service bills audio (§0 item 8).
INPUT_AUDIO_MS_PER_TOKEN: Final = 100
OUTPUT_AUDIO_MS_PER_TOKEN: Final = 50
TEXT_CHARS_PER_TOKEN: Final = 4

_ID_ALPHABET: Final = string.ascii_letters + string.digits
_TONE_AMPLITUDE: Final = 8000
_WORD_BEEP_MS: Final = 200
_WORD_GAP_MS: Final = 50
# The service streams function arguments in token-sized pieces; a fixed width keeps replies exact.
_ARGUMENTS_DELTA_CHARS: Final = 16
_PCM_RATE: Final = 24000
_G711_TO_PCM_RATIO: Final = _PCM_RATE // g711.SAMPLE_RATE


class Dialect(enum.Enum):
    """Which shape of the Realtime protocol the model speaks."""

    GA = "ga"
    BETA = "beta"


class AudioFormat(enum.Enum):
    """The audio formats of a Realtime session; the value is the GA ``format.type``."""

    PCMU = "audio/pcmu"
    PCMA = "audio/pcma"
    PCM = "audio/pcm"

    @property
    def bytes_per_ms(self) -> int:
        return 2 * _PCM_RATE // 1000 if self is AudioFormat.PCM else g711.BYTES_PER_MS

    @property
    def codec(self) -> Codec | None:
        return _CODEC_OF_FORMAT.get(self)

    @property
    def beta_name(self) -> str:
        return _BETA_FORMAT_NAMES[self]

    def ga_wire(self) -> JsonObject:
        if self is AudioFormat.PCM:
            return {"type": self.value, "rate": _PCM_RATE}
        return {"type": self.value}


_CODEC_OF_FORMAT: Final = {AudioFormat.PCMU: Codec.PCMU, AudioFormat.PCMA: Codec.PCMA}
_BETA_FORMAT_NAMES: Final = {
    AudioFormat.PCMU: "g711_ulaw",
    AudioFormat.PCMA: "g711_alaw",
    AudioFormat.PCM: "pcm16",
}
_FORMAT_OF_BETA_NAME: Final = {name: fmt for fmt, name in _BETA_FORMAT_NAMES.items()}

# GA server events that the beta dialect names differently (§1.4); the rest share their names.
_BETA_EVENT_NAMES: Final = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}

_GA_SESSION_KEYS: Final = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "instructions",
        "audio",
        "include",
        "tracing",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "truncation",
        "prompt",
        "reasoning",
        "parallel_tool_calls",
    }
)
_BETA_SESSION_KEYS: Final = frozenset(
    {
        "model",
        "modalities",
        "instructions",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "input_audio_transcription",
        "input_audio_noise_reduction",
        "turn_detection",
        "tools",
        "tool_choice",
        "temperature",
        "max_response_output_tokens",
        "speed",
        "tracing",
    }
)
# Echoing session.created back in an update is harmless; these fields are simply not changed.
_READ_ONLY_SESSION_KEYS: Final = frozenset({"id", "object", "expires_at"})
_BETA_ONLY_SESSION_KEYS: Final = _BETA_SESSION_KEYS - _GA_SESSION_KEYS
_GA_ONLY_SESSION_KEYS: Final = _GA_SESSION_KEYS - _BETA_SESSION_KEYS
_GA_INPUT_KEYS: Final = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
_GA_OUTPUT_KEYS: Final = frozenset({"format", "voice", "speed"})
_SERVER_VAD_KEYS: Final = frozenset(
    {
        "type",
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "idle_timeout_ms",
        "create_response",
        "interrupt_response",
    }
)
_SEMANTIC_VAD_KEYS: Final = frozenset(
    {"type", "eagerness", "create_response", "interrupt_response"}
)
# semantic_vad has no energy knobs; its eagerness maps onto how long a pause ends the turn.
_SEMANTIC_SILENCE_MS: Final = {"low": 1000, "medium": 500, "auto": 500, "high": 250}

# The models the beta session schema enumerates (openai-python ``beta.realtime.Session.model``).
_BETA_MODELS: Final = (
    "gpt-realtime",
    "gpt-realtime-2025-08-28",
    "gpt-4o-realtime-preview",
    "gpt-4o-realtime-preview-2024-10-01",
    "gpt-4o-realtime-preview-2024-12-17",
    "gpt-4o-realtime-preview-2025-06-03",
    "gpt-4o-mini-realtime-preview",
    "gpt-4o-mini-realtime-preview-2024-12-17",
)
# reasoning.effort and audio.input.transcription.delay share one scale.
_EFFORT_LEVELS: Final = ("minimal", "low", "medium", "high", "xhigh")

# GA allows ["audio"] or ["text"]; beta clients say ["audio", "text"] for audio with transcript.
_RESPONSE_MODALITIES: Final = (["audio"], ["text"], ["audio", "text"], ["text", "audio"])

_KNOWN_CLIENT_EVENTS: Final = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
)


class _ClientError(Exception):
    """The client's event is wrong; answered with an ``error`` event, never fatal."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type


@attrs.frozen
class TurnDetection:
    """The effective VAD settings, read from the session's ``turn_detection`` object."""

    kind: str
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    idle_timeout_ms: int | None
    create_response: bool
    interrupt_response: bool

    @classmethod
    def from_wire(cls, wire: JsonObject) -> TurnDetection:
        if wire["type"] == "semantic_vad":
            return cls(
                kind="semantic_vad",
                threshold=0.5,
                prefix_padding_ms=300,
                silence_duration_ms=_SEMANTIC_SILENCE_MS[wire["eagerness"]],
                idle_timeout_ms=None,
                create_response=wire["create_response"],
                interrupt_response=wire["interrupt_response"],
            )
        return cls(
            kind="server_vad",
            threshold=wire["threshold"],
            prefix_padding_ms=wire["prefix_padding_ms"],
            silence_duration_ms=wire["silence_duration_ms"],
            idle_timeout_ms=wire["idle_timeout_ms"],
            create_response=wire["create_response"],
            interrupt_response=wire["interrupt_response"],
        )

    @property
    def rms_threshold(self) -> float:
        return self.threshold * 1000


@attrs.frozen
class SessionSettings:
    """What the model's behaviour depends on, derived from the effective session document."""

    input_format: AudioFormat
    output_format: AudioFormat
    turn_detection: TurnDetection | None
    transcription: bool
    text_only: bool
    voice: Any
    instructions: str


@attrs.frozen(kw_only=True)
class ScriptedToolCall:
    """A function call the loopback model makes when a user text item triggers it.

    A response started without instructions (a client ``response.create`` or a turn-detection
    reply) looks at the newest user text item added since the previous response: an entry whose
    `dtmf` gives exactly that text through :func:`bridge.call.events.dtmf_message`, or whose
    `user_text` is a substring of it, makes the response say `say` (one beep per word; no
    message when empty) and then call `name` with `arguments`. `arguments` is sent as written,
    so a script may send text that is not JSON to exercise a client's error path.
    """

    name: str
    arguments: str = "{}"
    say: str = ""
    dtmf: str = ""
    user_text: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.name:
            raise ValueError("a scripted tool call needs a function name")
        if not self.dtmf and not self.user_text:
            raise ValueError(f"scripted call of {self.name!r} needs a trigger: dtmf or user_text")

    def triggered_by(self, text: str) -> bool:
        if self.dtmf and text == dtmf_message(self.dtmf):
            return True
        return bool(self.user_text) and self.user_text in text


@attrs.frozen
class FunctionCallMade:
    """A function call the model completed (its ``response.function_call_arguments.done``)."""

    call_id: str
    name: str
    arguments: str


@attrs.frozen
class FunctionOutputReceived:
    """A ``function_call_output`` item the client added for one of the model's calls."""

    call_id: str
    output: str


@attrs.frozen
class LoopbackStatistics:
    """What one connection's model saw and did; tests and the bench read it."""

    session_id: str
    messages_received: int
    messages_sent: int
    audio_bytes_received: int
    audio_ms_received: int
    session_updates: int
    last_session_update: JsonObject | None
    input_format: str
    output_format: str
    turns: int
    responses: int
    responses_completed: int
    cancellations: int
    truncations: list[tuple[str, int]]
    errors_sent: int
    error_codes: list[str]
    user_texts: list[str]
    closed_by_model: bool
    function_calls: list[FunctionCallMade]
    function_outputs: list[FunctionOutputReceived]


@attrs.define
class _Item:
    """One conversation item as the model remembers it (audio bytes kept only where replayed)."""

    id: str
    wire: JsonObject
    role: str | None
    text: str = ""
    audio_ms: int = 0
    assistant_audio: bool = False


@attrs.frozen
class _ResponsePlan:
    """What a response will say and do, fixed when it is triggered.

    `message` false: the response has no assistant message, only the function call.
    """

    transcript: str
    audio: bytes | None
    text_only: bool
    instructions: str | None = None
    metadata: Any = None
    message: bool = True
    tool_call: ScriptedToolCall | None = None


@attrs.define
class _Response:
    id: str
    item: _Item | None
    plan: _ResponsePlan
    started_at: float
    chunks: list[bytes]
    chunk_starts_ms: list[int]
    total_ms: int
    input_usage: tuple[int, int]
    released: int = 0
    released_ms: int = 0


def _pcm_samples(pcm_le: bytes) -> array[int]:
    samples = array("h")
    samples.frombytes(pcm_le[: len(pcm_le) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _pcm_bytes(samples: array[int]) -> bytes:
    if sys.byteorder == "big":
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def frame_rms(audio_format: AudioFormat, frame: bytes) -> int:
    """RMS level of one frame on the 16-bit scale, whatever the format."""
    codec = audio_format.codec
    if codec is not None:
        return g711.rms(codec, frame)
    samples = _pcm_samples(frame)
    if not samples:
        return 0
    return int(math.sqrt(sum(s * s for s in samples) / len(samples)))


def convert_audio(source: AudioFormat, target: AudioFormat, audio: bytes) -> bytes:
    """Re-encode audio between session formats; 8 <-> 24 kHz by sample repetition / decimation.

    The crude resampling is deliberate: the loopback only has to be deterministic and audible,
    and G.711 to G.711 (the phone path) stays an exact table lookup.
    """
    if source is target:
        return audio
    source_codec, target_codec = source.codec, target.codec
    if source_codec is not None and target_codec is not None:
        return g711.transcode(source_codec, target_codec, audio)
    if source_codec is not None:
        narrow = array("h")
        narrow.frombytes(g711.decode(source_codec, audio))
        wide = array("h", (s for s in narrow for _ in range(_G711_TO_PCM_RATIO)))
        return _pcm_bytes(wide)
    assert target_codec is not None
    narrow = _pcm_samples(audio)[::_G711_TO_PCM_RATIO]
    return g711.encode(target_codec, narrow.tobytes())


def tone(audio_format: AudioFormat, *, frequency: float, duration_ms: int) -> bytes:
    """A sine tone in `audio_format`."""
    rate = _PCM_RATE if audio_format is AudioFormat.PCM else g711.SAMPLE_RATE
    count = duration_ms * rate // 1000
    step = 2 * math.pi * frequency / rate
    samples = array("h", (int(_TONE_AMPLITUDE * math.sin(step * n)) for n in range(count)))
    codec = audio_format.codec
    if codec is None:
        return _pcm_bytes(samples)
    return g711.encode(codec, samples.tobytes())


def silence(audio_format: AudioFormat, duration_ms: int) -> bytes:
    """Digital silence in `audio_format`."""
    nbytes = duration_ms * audio_format.bytes_per_ms
    codec = audio_format.codec
    return bytes(nbytes) if codec is None else g711.silence(codec, nbytes)


def word_beeps(audio_format: AudioFormat, text: str | None) -> bytes:
    """One 200 ms beep and 50 ms pause per word; the pitch (400-800 Hz) follows the word length."""
    words = text.split() if text else []
    if not words:
        return tone(audio_format, frequency=440, duration_ms=1000)
    pieces = []
    for word in words:
        frequency = 400 + 50 * (len(word) % 9)
        pieces.append(tone(audio_format, frequency=frequency, duration_ms=_WORD_BEEP_MS))
        pieces.append(silence(audio_format, _WORD_GAP_MS))
    return b"".join(pieces)


def _text_tokens(text: str) -> int:
    return -(-len(text) // TEXT_CHARS_PER_TOKEN)


def _default_turn_detection() -> JsonObject:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def _default_ga_session(session_id: str, model: str, expires_at: int) -> JsonObject:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": AudioFormat.PCM.ga_wire(),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _default_turn_detection(),
            },
            "output": {"format": AudioFormat.PCM.ga_wire(), "voice": "marin", "speed": 1.0},
        },
        "include": None,
    }


def _default_beta_session(session_id: str, model: str, expires_at: int) -> JsonObject:
    return {
        "id": session_id,
        "object": "realtime.session",
        "model": model,
        "expires_at": expires_at,
        "modalities": ["text", "audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "voice": "alloy",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": None,
        "input_audio_noise_reduction": None,
        "turn_detection": _default_turn_detection(),
        "tools": [],
        "tool_choice": "auto",
        "temperature": 0.8,
        "max_response_output_tokens": "inf",
        "speed": 1.0,
        "tracing": None,
    }


def _settings_of(dialect: Dialect, session: JsonObject) -> SessionSettings:
    if dialect is Dialect.GA:
        audio_in, audio_out = session["audio"]["input"], session["audio"]["output"]
        turn_detection = audio_in["turn_detection"]
        return SessionSettings(
            input_format=AudioFormat(audio_in["format"]["type"]),
            output_format=AudioFormat(audio_out["format"]["type"]),
            turn_detection=None
            if turn_detection is None
            else TurnDetection.from_wire(turn_detection),
            transcription=audio_in["transcription"] is not None,
            text_only=session["output_modalities"] == ["text"],
            voice=audio_out["voice"],
            instructions=session["instructions"],
        )
    turn_detection = session["turn_detection"]
    return SessionSettings(
        input_format=_FORMAT_OF_BETA_NAME[session["input_audio_format"]],
        output_format=_FORMAT_OF_BETA_NAME[session["output_audio_format"]],
        turn_detection=None if turn_detection is None else TurnDetection.from_wire(turn_detection),
        transcription=session["input_audio_transcription"] is not None,
        text_only="audio" not in session["modalities"],
        voice=session["voice"],
        instructions=session["instructions"],
    )


# ---- validation of session.update (tolerant of nothing: a test double should be strict) -------


def _unknown_parameter(param: str) -> _ClientError:
    return _ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param=param)


def _invalid_value(param: str, message: str) -> _ClientError:
    return _ClientError("invalid_value", message, param=param)


def _invalid_type(param: str, expected: str) -> _ClientError:
    return _ClientError(
        "invalid_type", f"Invalid type for '{param}': expected {expected}.", param=param
    )


def _require_object(value: object, param: str) -> JsonObject:
    if not isinstance(value, dict):
        raise _invalid_type(param, "an object")
    return value


def _reject_unknown_keys(value: JsonObject, allowed: frozenset[str], param: str) -> None:
    for key in value:
        if key not in allowed:
            raise _unknown_parameter(f"{param}.{key}")


def _check_ga_format(value: object, param: str) -> JsonObject:
    wire = _require_object(value, param)
    _reject_unknown_keys(wire, frozenset({"type", "rate"}), param)
    kind = wire.get("type")
    try:
        audio_format = AudioFormat(kind)
    except ValueError:
        raise _invalid_value(
            f"{param}.type",
            f"Invalid value: '{kind}'. Supported values are: "
            "'audio/pcm', 'audio/pcmu', and 'audio/pcma'.",
        ) from None
    rate = wire.get("rate")
    expected_rate = _PCM_RATE if audio_format is AudioFormat.PCM else g711.SAMPLE_RATE
    if rate is not None and rate != expected_rate:
        raise _invalid_value(
            f"{param}.rate", f"Invalid value: {rate!r}. {kind} supports only {expected_rate} Hz."
        )
    return audio_format.ga_wire()


def _check_bool(wire: JsonObject, key: str, param: str) -> None:
    if key in wire and not isinstance(wire[key], bool):
        raise _invalid_type(f"{param}.{key}", "a boolean")


def _check_ms(
    wire: JsonObject, key: str, param: str, *, low: int, high: int, nullable: bool = False
) -> None:
    if key not in wire or (nullable and wire[key] is None):
        return
    value = wire[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid_type(f"{param}.{key}", "an integer")
    if not low <= value <= high:
        raise _invalid_value(
            f"{param}.{key}", f"Invalid value: {value}. Expected a value between {low} and {high}."
        )


def _check_turn_detection(value: object, param: str, *, type_required: bool) -> JsonObject | None:
    """Validate a turn_detection object and fill in the defaults, as session.updated shows them."""
    if value is None:
        return None
    wire = _require_object(value, param)
    kind = wire.get("type", None if type_required else "server_vad")
    if kind == "semantic_vad":
        _reject_unknown_keys(wire, _SEMANTIC_VAD_KEYS, param)
        eagerness = wire.get("eagerness", "auto")
        if not isinstance(eagerness, str) or eagerness not in _SEMANTIC_SILENCE_MS:
            raise _invalid_value(f"{param}.eagerness", f"Invalid value: '{eagerness}'.")
        _check_bool(wire, "create_response", param)
        _check_bool(wire, "interrupt_response", param)
        return {
            "type": "semantic_vad",
            "eagerness": eagerness,
            "create_response": wire.get("create_response", True),
            "interrupt_response": wire.get("interrupt_response", True),
        }
    if kind != "server_vad":
        raise _invalid_value(
            f"{param}.type",
            f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'.",
        )
    _reject_unknown_keys(wire, _SERVER_VAD_KEYS, param)
    threshold = wire.get("threshold", 0.5)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 1
    ):
        raise _invalid_value(
            f"{param}.threshold", f"Invalid value: {threshold!r}. Expected a number in [0, 1]."
        )
    _check_ms(wire, "prefix_padding_ms", param, low=0, high=10_000)
    _check_ms(wire, "silence_duration_ms", param, low=0, high=10_000)
    _check_ms(wire, "idle_timeout_ms", param, low=5_000, high=30_000, nullable=True)
    _check_bool(wire, "create_response", param)
    _check_bool(wire, "interrupt_response", param)
    filled = _default_turn_detection()
    filled.update({key: wire[key] for key in wire if key != "type"})
    filled["threshold"] = float(filled["threshold"])
    return filled


def _check_noise_reduction(value: object, param: str) -> JsonObject | None:
    if value is None:
        return None
    wire = _require_object(value, param)
    _reject_unknown_keys(wire, frozenset({"type"}), param)
    return {"type": _check_enum(wire.get("type"), f"{param}.type", ("near_field", "far_field"))}


def _check_voice(value: object, param: str) -> Any:
    """A GA voice: a built-in name or a custom voice object ``{"id": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        _reject_unknown_keys(value, frozenset({"id"}), param)
        return {"id": value["id"]}
    raise _invalid_type(param, "a string or an object with an 'id'")


def _check_beta_voice(value: object, param: str) -> str:
    # Custom voice objects came with the GA interface; the beta session knows voice names only.
    if not isinstance(value, str):
        raise _invalid_type(param, "a string")
    return value


def _voice_name(voice: Any) -> str:
    """The voice as a response shows it: a response's ``voice`` is a plain string."""
    return voice["id"] if isinstance(voice, dict) else str(voice)


def _check_speed(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.25 <= value <= 1.5:
        raise _invalid_value(param, f"Invalid value: {value!r}. Expected a number in [0.25, 1.5].")
    return float(value)


def _check_str(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid_type(param, "a string")
    return value


def _check_model(value: object, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid_value(param, "The model must be a non-empty string.")
    return value


def _check_beta_model(value: object, param: str) -> str:
    # The beta session schema enumerates its models; anything else is refused, not echoed.
    _check_model(value, param)
    return _check_enum(value, param, _BETA_MODELS)


def _check_enum(value: object, param: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(f"'{choice}'" for choice in allowed)
        raise _invalid_value(param, f"Invalid value: {value!r}. Supported values are: {choices}.")
    return value


def _check_integer(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(param, "an integer")
    return value


def _check_number(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(param, "a number")
    return value


def _check_any_object(value: object, param: str) -> JsonObject:
    return copy.deepcopy(_require_object(value, param))


def _check_str_list(value: object, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise _invalid_type(param, "an array of strings")
    return list(value)


def _check_str_map(value: object, param: str) -> dict[str, str]:
    wire = _require_object(value, param)
    if not all(isinstance(entry, str) for entry in wire.values()):
        raise _invalid_type(param, "an object of string values")
    return dict(wire)


def _optional(check: _FieldCheck) -> _FieldCheck:
    """`check`, but ``null`` passes as it is."""

    def check_optional(value: object, param: str) -> Any:
        return None if value is None else check(value, param)

    return check_optional


def _check_object(value: object, param: str, fields: Mapping[str, _FieldCheck]) -> JsonObject:
    """A client object echoed back later: every key known, every value checked and normalised.

    Whatever the model echoes must parse with the SDK types, so unknown keys are refused rather
    than passed through (the service refuses them as well).
    """
    wire = _require_object(value, param)
    _reject_unknown_keys(wire, frozenset(fields), param)
    return {key: fields[key](entry, f"{param}.{key}") for key, entry in wire.items()}


def _check_transcription(value: object, param: str, *, dialect: Dialect) -> JsonObject | None:
    if value is None:
        return None
    wire = _require_object(value, param)
    text_keys = ("model", "language", "prompt")
    list_keys = ("languages", "keywords") if dialect is Dialect.GA else ()
    enum_keys = ("delay",) if dialect is Dialect.GA else ()
    _reject_unknown_keys(wire, frozenset(text_keys + list_keys + enum_keys), param)
    for key in text_keys:
        if key in wire:
            _check_str(wire[key], f"{param}.{key}")
    if "delay" in wire:
        _check_enum(wire["delay"], f"{param}.delay", _EFFORT_LEVELS)
    for key in list_keys:
        if key in wire and (
            not isinstance(wire[key], list) or not all(isinstance(v, str) for v in wire[key])
        ):
            raise _invalid_type(f"{param}.{key}", "an array of strings")
    return copy.deepcopy(wire)


def _check_tools(value: object, param: str, *, dialect: Dialect) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid_type(param, "an array")
    # MCP tools came with the GA interface; the beta schema knows function tools only.
    kinds = ("function", "mcp") if dialect is Dialect.GA else ("function",)
    tools = []
    for index, tool in enumerate(value):
        tool_param = f"{param}[{index}]"
        wire = _require_object(tool, tool_param)
        kind = wire.get("type", "function")
        if kind not in kinds:
            raise _invalid_value(f"{tool_param}.type", f"Invalid tool type: {kind!r}.")
        if kind == "function":
            # The name is optional in the schema but a function nobody can call is a client bug.
            _check_str(wire.get("name"), f"{tool_param}.name")
            tools.append(_check_object(wire, tool_param, _FUNCTION_TOOL_FIELDS))
        else:
            _check_str(wire.get("server_label"), f"{tool_param}.server_label")
            tools.append(_check_object(wire, tool_param, _MCP_TOOL_FIELDS))
    return tools


def _check_tool_choice(value: object, param: str, *, dialect: Dialect) -> Any:
    if dialect is Dialect.BETA:
        return _check_str(value, param)
    if isinstance(value, str):
        return _check_enum(value, param, ("auto", "none", "required"))
    wire = _require_object(value, param)
    kind = _check_enum(wire.get("type"), f"{param}.type", ("function", "mcp"))
    if kind == "function":
        _check_str(wire.get("name"), f"{param}.name")
        return _check_object(wire, param, {"type": _check_str, "name": _check_str})
    _check_str(wire.get("server_label"), f"{param}.server_label")
    return _check_object(
        wire,
        param,
        {"type": _check_str, "server_label": _check_str, "name": _optional(_check_str)},
    )


def _check_token_limit(value: object, param: str) -> int | str:
    if value == "inf":
        return "inf"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise _invalid_value(param, f"Invalid value: {value!r}. Expected 1-4096 or 'inf'.")
    return value


def _check_tracing(value: object, param: str) -> Any:
    if value is None or value == "auto":
        return value
    wire = _require_object(value, param)
    _reject_unknown_keys(wire, frozenset({"workflow_name", "group_id", "metadata"}), param)
    for key in ("workflow_name", "group_id"):
        if key in wire:
            _check_str(wire[key], f"{param}.{key}")
    if "metadata" in wire:
        _require_object(wire["metadata"], f"{param}.metadata")
    return copy.deepcopy(wire)


def _check_truncation(value: object, param: str) -> Any:
    if isinstance(value, str):
        return _check_enum(value, param, ("auto", "disabled"))
    wire = _require_object(value, param)
    _check_enum(wire.get("type"), f"{param}.type", ("retention_ratio",))
    ratio = wire.get("retention_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        raise _invalid_value(f"{param}.retention_ratio", f"Invalid value: {ratio!r}.")
    return _check_object(
        wire,
        param,
        {
            "type": _check_str,
            "retention_ratio": _check_number,
            "token_limits": _optional(
                functools.partial(
                    _check_object, fields={"post_instructions": _optional(_check_integer)}
                )
            ),
        },
    )


def _check_include(value: object, param: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid_type(param, "an array")
    for index, entry in enumerate(value):
        _check_enum(entry, f"{param}[{index}]", ("item.input_audio_transcription.logprobs",))
    return list(value)


def _check_prompt(value: object, param: str) -> Any:
    if value is None:
        return None
    wire = _require_object(value, param)
    _check_str(wire.get("id"), f"{param}.id")
    return _check_object(
        wire,
        param,
        {
            "id": _check_str,
            "version": _optional(_check_str),
            "variables": _optional(_check_prompt_variables),
        },
    )


def _check_prompt_variables(value: object, param: str) -> JsonObject:
    variables = _require_object(value, param)
    checked: JsonObject = {}
    for name, variable in variables.items():
        # A variable is plain text or an input object (input_text, input_image, input_file).
        variable_param = f"{param}.{name}"
        if isinstance(variable, str):
            checked[name] = variable
            continue
        wire = _require_object(variable, variable_param)
        kind = _check_enum(wire.get("type"), f"{variable_param}.type", tuple(_PROMPT_INPUTS))
        fields, required = _PROMPT_INPUTS[kind]
        for key in required:
            if key not in wire:
                raise _ClientError(
                    "missing_required_parameter",
                    f"Missing required parameter: '{variable_param}.{key}'.",
                    param=f"{variable_param}.{key}",
                )
        checked[name] = _check_object(wire, variable_param, fields)
    return checked


def _check_reasoning(value: object, param: str) -> Any:
    return _check_object(value, param, {"effort": _optional(_effort)})


def _effort(value: object, param: str) -> str:
    return _check_enum(value, param, _EFFORT_LEVELS)


def _check_boolean(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid_type(param, "a boolean")
    return value


def _check_temperature(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.6 <= value <= 1.2:
        raise _invalid_value(param, f"Invalid value: {value!r}. Expected a number in [0.6, 1.2].")
    return float(value)


def _check_output_modalities(value: object, param: str) -> list[str]:
    if value not in (["audio"], ["text"]):
        raise _invalid_value(
            param, f"Invalid value: {value!r}. Supported values are ['audio'] or ['text']."
        )
    return ["audio"] if value == ["audio"] else ["text"]


def _check_beta_modalities(value: object, param: str) -> list[str]:
    if value not in (["audio", "text"], ["text", "audio"], ["text"]):
        raise _invalid_value(
            param, f"Invalid modalities: {value!r}. Use ['text'] or ['audio', 'text']."
        )
    return ["text"] if value == ["text"] else ["audio", "text"]


_FUNCTION_TOOL_FIELDS: Final[dict[str, _FieldCheck]] = {
    "type": _check_str,
    "name": _check_str,
    "description": _check_str,
    "parameters": _check_any_object,
}
_MCP_TOOL_FIELDS: Final[dict[str, _FieldCheck]] = {
    "type": _check_str,
    "server_label": _check_str,
    "server_url": _check_str,
    "server_description": _check_str,
    "authorization": _check_str,
    "connector_id": functools.partial(
        _check_enum,
        allowed=(
            "connector_dropbox",
            "connector_gmail",
            "connector_googlecalendar",
            "connector_googledrive",
            "connector_microsoftteams",
            "connector_outlookcalendar",
            "connector_outlookemail",
            "connector_sharepoint",
        ),
    ),
    "headers": _optional(_check_str_map),
    "require_approval": _optional(functools.partial(_check_enum, allowed=("always", "never"))),
    "allowed_tools": _optional(_check_str_list),
    "defer_loading": _check_boolean,
}
# Prompt variable objects by type: their fields, and which of those the schema requires.
_PROMPT_INPUTS: Final[dict[str, tuple[dict[str, _FieldCheck], tuple[str, ...]]]] = {
    "input_text": ({"type": _check_str, "text": _check_str}, ("text",)),
    "input_image": (
        {
            "type": _check_str,
            "detail": functools.partial(_check_enum, allowed=("low", "high", "auto", "original")),
            "file_id": _optional(_check_str),
            "image_url": _optional(_check_str),
        },
        ("detail",),
    ),
    "input_file": (
        {
            "type": _check_str,
            "detail": _optional(functools.partial(_check_enum, allowed=("auto", "low", "high"))),
            "file_data": _optional(_check_str),
            "file_id": _optional(_check_str),
            "file_url": _optional(_check_str),
            "filename": _optional(_check_str),
        },
        (),
    ),
}

# Content parts of client-created message items, echoed in conversation.item.added / .created.
_TEXT_PART_FIELDS: Final[dict[str, _FieldCheck]] = {"type": _check_str, "text": _check_str}
_INPUT_AUDIO_PART_FIELDS: Final[dict[str, _FieldCheck]] = {
    "type": _check_str,
    "audio": _optional(_check_str),
    "transcript": _optional(_check_str),
}

# Top-level session fields without nested audio rules: each one's validator and normaliser.
_GA_FIELD_CHECKS: Final[dict[str, Any]] = {
    "type": _check_str,
    "model": _check_model,
    "output_modalities": _check_output_modalities,
    "instructions": _check_str,
    "tools": functools.partial(_check_tools, dialect=Dialect.GA),
    "tool_choice": functools.partial(_check_tool_choice, dialect=Dialect.GA),
    "max_output_tokens": _check_token_limit,
    "tracing": _check_tracing,
    "truncation": _check_truncation,
    "include": _check_include,
    "prompt": _check_prompt,
    "reasoning": _check_reasoning,
    "parallel_tool_calls": _check_boolean,
}
_BETA_FIELD_CHECKS: Final[dict[str, Any]] = {
    "model": _check_beta_model,
    "modalities": _check_beta_modalities,
    "instructions": _check_str,
    "voice": _check_beta_voice,
    "speed": _check_speed,
    "turn_detection": functools.partial(_check_turn_detection, type_required=False),
    "input_audio_transcription": functools.partial(_check_transcription, dialect=Dialect.BETA),
    "input_audio_noise_reduction": _check_noise_reduction,
    "tools": functools.partial(_check_tools, dialect=Dialect.BETA),
    "tool_choice": functools.partial(_check_tool_choice, dialect=Dialect.BETA),
    "temperature": _check_temperature,
    "max_response_output_tokens": _check_token_limit,
    "tracing": _check_tracing,
}


def _check_ga_update(session: JsonObject) -> JsonObject:
    """The update, validated and normalised; raises before anything is applied."""
    beta_fields = sorted(key for key in session if key in _BETA_ONLY_SESSION_KEYS)
    if beta_fields:
        raise _ClientError(
            "beta_api_shape_disabled",
            f"The Realtime Beta API is no longer supported (beta-shaped field "
            f"'session.{beta_fields[0]}'). Please use /v1/realtime for the GA API.",
            param=f"session.{beta_fields[0]}",
        )
    if "type" not in session:
        raise _ClientError(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            param="session.type",
        )
    if session["type"] != "realtime":
        raise _invalid_value(
            "session.type",
            f"Invalid value: '{session['type']}'. The loopback model serves only 'realtime' "
            "sessions.",
        )
    _reject_unknown_keys(session, _GA_SESSION_KEYS | _READ_ONLY_SESSION_KEYS, "session")
    update: JsonObject = {}
    for key, value in session.items():
        if key in _READ_ONLY_SESSION_KEYS or key == "audio":
            continue
        update[key] = _GA_FIELD_CHECKS[key](value, f"session.{key}")
    if "audio" in session:
        audio = _require_object(session["audio"], "session.audio")
        _reject_unknown_keys(audio, frozenset({"input", "output"}), "session.audio")
        update["audio"] = {}
        if "input" in audio:
            param = "session.audio.input"
            audio_in = _require_object(audio["input"], param)
            _reject_unknown_keys(audio_in, _GA_INPUT_KEYS, param)
            checked: JsonObject = {}
            if "format" in audio_in:
                checked["format"] = _check_ga_format(audio_in["format"], f"{param}.format")
            if "turn_detection" in audio_in:
                checked["turn_detection"] = _check_turn_detection(
                    audio_in["turn_detection"], f"{param}.turn_detection", type_required=True
                )
            if "transcription" in audio_in:
                checked["transcription"] = _check_transcription(
                    audio_in["transcription"], f"{param}.transcription", dialect=Dialect.GA
                )
            if "noise_reduction" in audio_in:
                checked["noise_reduction"] = _check_noise_reduction(
                    audio_in["noise_reduction"], f"{param}.noise_reduction"
                )
            update["audio"]["input"] = checked
        if "output" in audio:
            param = "session.audio.output"
            audio_out = _require_object(audio["output"], param)
            _reject_unknown_keys(audio_out, _GA_OUTPUT_KEYS, param)
            checked = {}
            if "format" in audio_out:
                checked["format"] = _check_ga_format(audio_out["format"], f"{param}.format")
            if "voice" in audio_out:
                checked["voice"] = _check_voice(audio_out["voice"], f"{param}.voice")
            if "speed" in audio_out:
                checked["speed"] = _check_speed(audio_out["speed"], f"{param}.speed")
            update["audio"]["output"] = checked
    return update


def _check_beta_update(session: JsonObject) -> JsonObject:
    for key in session:
        if key in _GA_ONLY_SESSION_KEYS or key not in _BETA_SESSION_KEYS | _READ_ONLY_SESSION_KEYS:
            raise _unknown_parameter(f"session.{key}")
    update: JsonObject = {}
    for key, value in session.items():
        if key in _READ_ONLY_SESSION_KEYS:
            continue
        param = f"session.{key}"
        if key in ("input_audio_format", "output_audio_format"):
            update[key] = _check_enum(value, param, tuple(_FORMAT_OF_BETA_NAME))
        else:
            update[key] = _BETA_FIELD_CHECKS[key](value, param)
    return update


def _merge(current: JsonObject, update: JsonObject) -> JsonObject:
    """Fields present in the update replace the current ones; ``audio`` merges per direction."""
    merged = copy.deepcopy(current)
    for key, value in update.items():
        if key == "audio":
            for direction, fields in value.items():
                merged["audio"][direction].update(fields)
        else:
            merged[key] = value
    return merged


class LoopbackModel:
    """One Realtime session served without a network model (see the module docstring)."""

    def __init__(
        self,
        *,
        session_id: str,
        rng: random.Random | None = None,
        dialect: Dialect | str = Dialect.GA,
        model: str = "gpt-realtime",
        expires_at: int = 0,
        generation_speed: float = DEFAULT_GENERATION_SPEED,
        beta_handshake: bool = False,
        script: Sequence[ScriptedToolCall] = (),
    ) -> None:
        if not generation_speed > 0:
            raise ValueError("generation_speed must be positive")
        self._session_id = session_id
        self._script = tuple(script)
        # Seeded from the session id by default: ids stay reproducible without an injected rng.
        self._rng = rng if rng is not None else random.Random(session_id)
        self._dialect = Dialect(dialect)
        self._generation_speed = generation_speed
        self._conversation_id = self._new_id("conv_")
        self._outbox: list[str] = []
        self._close_requested: tuple[int, str] | None = None

        if self._dialect is Dialect.GA:
            self._session = _default_ga_session(session_id, model, expires_at)
        else:
            self._session = _default_beta_session(session_id, model, expires_at)
        self._settings = _settings_of(self._dialect, self._session)

        # Input audio buffer. Positions are byte offsets in the current input format since
        # `_epoch_ms` (a format change starts a new epoch, so milliseconds stay exact).
        self._epoch_ms = 0
        self._buffer = bytearray()
        self._buffer_start = 0
        self._pending = bytearray()
        self._speech_item_id: str | None = None
        self._speech_start = 0
        self._last_loud_end = 0

        self._items: list[_Item] = []
        self._items_by_id: dict[str, _Item] = {}
        self._active: _Response | None = None
        self._queued: list[_ResponsePlan] = []
        # What arrived since the previous response was triggered: the newest user text item (a
        # scripted call's trigger) and the function outputs (answered by the next response).
        self._trigger_item_id: str | None = None
        self._output_item_ids: list[str] = []
        self._idle_deadline = math.inf
        self._assistant_audio_produced = False

        self._messages_received = 0
        self._messages_sent = 0
        self._audio_bytes_received = 0
        self._session_updates = 0
        self._last_session_update: JsonObject | None = None
        self._turns = 0
        self._responses = 0
        self._responses_completed = 0
        self._cancellations = 0
        self._truncations: list[tuple[str, int]] = []
        self._error_codes: list[str] = []
        self._user_texts: list[str] = []
        self._function_calls: list[FunctionCallMade] = []
        self._function_outputs: list[FunctionOutputReceived] = []

        if beta_handshake and self._dialect is Dialect.GA:
            # What api.openai.com does since May 2026 to a client sending OpenAI-Beta (§0 item 1).
            self._send_error(
                _ClientError(
                    "beta_api_shape_disabled",
                    "The Realtime Beta API is no longer supported. Please use /v1/realtime for "
                    "the GA API.",
                ),
                client_event_id=None,
            )
            self._close_requested = (4000, "beta_api_shape_disabled")
        else:
            self._emit("session.created", {"session": copy.deepcopy(self._session)})

    # ---- public interface -----------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    @property
    def settings(self) -> SessionSettings:
        return self._settings

    @property
    def close_requested(self) -> tuple[int, str] | None:
        """``(code, reason)`` once the model wants the websocket closed (after sending)."""
        return self._close_requested

    def receive_message(self, message: str | bytes, now: float) -> None:
        """Handle one client websocket message; problems become ``error`` events, never raise."""
        self._messages_received += 1
        if self._close_requested is not None:
            return
        self._advance(now)
        client_event_id: str | None = None
        try:
            if isinstance(message, bytes):
                raise _ClientError(
                    "invalid_event", "Binary frames are not supported; send JSON text frames."
                )
            event = self._parse(message)
            if isinstance(event.get("event_id"), str):
                client_event_id = event["event_id"]
            self._dispatch(event, now)
        except _ClientError as error:
            self._send_error(error, client_event_id)

    def messages_to_send(self) -> list[str]:
        """Take every queued server event, oldest first."""
        messages, self._outbox = self._outbox, []
        self._messages_sent += len(messages)
        return messages

    def next_deadline(self) -> float:
        """When :meth:`handle_timeout` must run next (``math.inf``: nothing is scheduled)."""
        if self._close_requested is not None:
            return math.inf
        response = self._active
        if response is not None:
            if response.released < len(response.chunks):
                return self._due(response, response.chunk_starts_ms[response.released])
            return self._due(response, response.total_ms)
        return self._idle_deadline if self._idle_timer_may_fire() else math.inf

    def handle_timeout(self, now: float) -> None:
        if self._close_requested is None:
            self._advance(now)

    def statistics(self) -> LoopbackStatistics:
        return LoopbackStatistics(
            session_id=self._session_id,
            messages_received=self._messages_received,
            messages_sent=self._messages_sent,
            audio_bytes_received=self._audio_bytes_received,
            audio_ms_received=self._received_ms(),
            session_updates=self._session_updates,
            last_session_update=copy.deepcopy(self._last_session_update),
            input_format=self._settings.input_format.value,
            output_format=self._settings.output_format.value,
            turns=self._turns,
            responses=self._responses,
            responses_completed=self._responses_completed,
            cancellations=self._cancellations,
            truncations=list(self._truncations),
            errors_sent=len(self._error_codes),
            error_codes=list(self._error_codes),
            user_texts=list(self._user_texts),
            closed_by_model=self._close_requested is not None,
            function_calls=list(self._function_calls),
            function_outputs=list(self._function_outputs),
        )

    # ---- plumbing ---------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return prefix + "".join(self._rng.choices(_ID_ALPHABET, k=21))

    def _emit(self, event_type: str, fields: JsonObject) -> None:
        if self._dialect is Dialect.BETA:
            event_type = _BETA_EVENT_NAMES.get(event_type, event_type)
        event = {"type": event_type, "event_id": self._new_id("event_"), **fields}
        self._outbox.append(json.dumps(event, separators=(",", ":")))

    def _send_error(self, error: _ClientError, client_event_id: str | None) -> None:
        self._error_codes.append(error.code)
        self._emit(
            "error",
            {
                "error": {
                    "type": error.error_type,
                    "code": error.code,
                    "message": error.message,
                    "param": error.param,
                    "event_id": client_event_id,
                }
            },
        )

    @staticmethod
    def _parse(message: str) -> JsonObject:
        try:
            event = json.loads(message)
        except ValueError as exc:
            raise _ClientError("invalid_event", f"The message is not valid JSON: {exc}.") from None
        if not isinstance(event, dict):
            raise _ClientError("invalid_event", "The message must be a JSON object.")
        if "type" not in event:
            raise _ClientError("invalid_event", "The 'type' field is missing.", param="type")
        if not isinstance(event["type"], str):
            raise _ClientError("invalid_event", "The 'type' field must be a string.", param="type")
        return event

    def _dispatch(self, event: JsonObject, now: float) -> None:
        match event["type"]:
            case "session.update":
                self._on_session_update(event)
            case "input_audio_buffer.append":
                self._on_append(event, now)
            case "input_audio_buffer.commit":
                self._on_commit(now)
            case "input_audio_buffer.clear":
                self._on_clear()
            case "conversation.item.create":
                self._on_item_create(event)
            case "conversation.item.truncate":
                self._on_truncate(event)
            case "conversation.item.delete":
                self._on_item_delete(event)
            case "response.create":
                self._on_response_create(event, now)
            case "response.cancel":
                self._on_response_cancel(event, now)
            case "conversation.item.retrieve" | "output_audio_buffer.clear":
                raise _ClientError(
                    "invalid_event",
                    f"'{event['type']}' is not supported by the loopback model.",
                    param="type",
                )
            case other:
                supported = ", ".join(f"'{name}'" for name in _KNOWN_CLIENT_EVENTS)
                raise _ClientError(
                    "invalid_event",
                    f"Invalid value: '{other}'. Supported values are: {supported}.",
                    param="type",
                )

    def _advance(self, now: float) -> None:
        """Catch up with wall time: release due audio, finish responses, fire the idle timer."""
        while True:
            response = self._active
            if response is None:
                break
            self._release_due(response, now)
            if self._active is response:
                break
        if self._idle_timer_may_fire() and now >= self._idle_deadline:
            self._on_idle_timeout(now)

    def _idle_timer_may_fire(self) -> bool:
        """Whether :meth:`_advance` acts on the idle deadline; `next_deadline` must agree.

        A deadline reported but never handled would have the adapter wake up at once, forever.
        """
        return (
            self._active is None
            and self._speech_item_id is None
            and self._settings.turn_detection is not None
            and self._settings.turn_detection.idle_timeout_ms is not None
        )

    # ---- session ----------------------------------------------------------------------------

    def _on_session_update(self, event: JsonObject) -> None:
        self._session_updates += 1
        self._last_session_update = copy.deepcopy(event)
        session = event.get("session")
        if session is None:
            raise _ClientError(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                param="session",
            )
        session = _require_object(session, "session")
        if self._dialect is Dialect.GA:
            update = _check_ga_update(session)
        else:
            update = _check_beta_update(session)
        merged = _merge(self._session, update)
        settings = _settings_of(self._dialect, merged)
        if settings.voice != self._settings.voice and self._assistant_audio_produced:
            param = "session.audio.output.voice" if self._dialect is Dialect.GA else "session.voice"
            raise _invalid_value(
                param, "Cannot update a conversation's voice if assistant audio is present."
            )
        if settings.input_format is not self._settings.input_format:
            self._restart_input_epoch()
        if settings.turn_detection is None or settings.turn_detection.idle_timeout_ms is None:
            self._idle_deadline = math.inf
        self._session = merged
        self._settings = settings
        if settings.turn_detection is None:
            # Without VAD audio goes straight into the buffer, so a partial frame joins it first.
            self._buffer += self._pending
            self._pending.clear()
            self._speech_item_id = None
        self._emit("session.updated", {"session": copy.deepcopy(merged)})

    # ---- input audio and voice activity -----------------------------------------------------

    def _ms(self, position: int) -> int:
        return self._epoch_ms + position // self._settings.input_format.bytes_per_ms

    def _position(self) -> int:
        return self._buffer_start + len(self._buffer)

    def _received_ms(self) -> int:
        return self._ms(self._position() + len(self._pending))

    def _restart_input_epoch(self) -> None:
        """Uncommitted audio in the old format is dropped; the millisecond count carries on.

        Must run before the new settings are stored: it reads the old format's bytes per ms.
        """
        self._epoch_ms = self._received_ms()
        self._buffer.clear()
        self._pending.clear()
        self._buffer_start = 0
        self._speech_item_id = None

    def _on_append(self, event: JsonObject, now: float) -> None:
        encoded = event.get("audio")
        if encoded is None:
            raise _ClientError(
                "missing_required_parameter", "Missing required parameter: 'audio'.", param="audio"
            )
        if not isinstance(encoded, str):
            raise _invalid_type("audio", "a base64 string")
        try:
            audio = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid_value("audio", "Invalid 'audio': not valid base64.") from None
        if len(audio) > MAX_APPEND_BYTES:
            raise _invalid_value(
                "audio", f"Audio too large: {len(audio)} bytes (at most 15 MiB per append)."
            )
        self._audio_bytes_received += len(audio)
        self._consume_audio(audio, now)

    def _consume_audio(self, audio: bytes, now: float) -> None:
        turn_detection = self._settings.turn_detection
        if turn_detection is None:
            self._buffer += audio
            return
        audio_format = self._settings.input_format
        frame_bytes = FRAME_MS * audio_format.bytes_per_ms
        self._pending += audio
        offset = 0
        while len(self._pending) - offset >= frame_bytes:
            frame = bytes(self._pending[offset : offset + frame_bytes])
            offset += frame_bytes
            start = self._position()
            self._buffer += frame
            loud = frame_rms(audio_format, frame) > turn_detection.rms_threshold
            self._on_frame(turn_detection, loud, start, start + frame_bytes, now)
        del self._pending[:offset]
        if self._speech_item_id is None:
            self._trim_to_prefix(turn_detection)

    def _trim_to_prefix(self, turn_detection: TurnDetection) -> None:
        """While nobody speaks keep only the audio a speech start may reach back into."""
        bytes_per_ms = self._settings.input_format.bytes_per_ms
        keep = turn_detection.prefix_padding_ms * bytes_per_ms
        # Trim in steps of a second so the buffer is not shifted on every frame.
        if len(self._buffer) > keep + 1000 * bytes_per_ms:
            excess = len(self._buffer) - keep
            del self._buffer[:excess]
            self._buffer_start += excess

    def _on_frame(
        self, turn_detection: TurnDetection, loud: bool, start: int, end: int, now: float
    ) -> None:
        bytes_per_ms = self._settings.input_format.bytes_per_ms
        if self._speech_item_id is None:
            if not loud:
                return
            speech_start = max(
                self._buffer_start, start - turn_detection.prefix_padding_ms * bytes_per_ms
            )
            item_id = self._new_id("item_")
            self._speech_item_id = item_id
            self._speech_start = speech_start
            self._last_loud_end = end
            self._idle_deadline = math.inf
            self._emit(
                "input_audio_buffer.speech_started",
                {"audio_start_ms": self._ms(speech_start), "item_id": item_id},
            )
            if self._active is not None and turn_detection.interrupt_response:
                self._finish(self._active, status="cancelled", reason="turn_detected", now=now)
            return
        if loud:
            self._last_loud_end = end
            return
        if end - self._last_loud_end >= turn_detection.silence_duration_ms * bytes_per_ms:
            self._end_turn(self._last_loud_end, respond=turn_detection.create_response, now=now)

    def _end_turn(self, audio_end: int, *, respond: bool, now: float) -> None:
        item_id = self._speech_item_id
        assert item_id is not None
        self._speech_item_id = None
        self._emit(
            "input_audio_buffer.speech_stopped",
            {"audio_end_ms": self._ms(audio_end), "item_id": item_id},
        )
        item, audio = self._commit(item_id, self._speech_start, audio_end)
        if respond:
            self._request_response(self._turn_reply(item, audio), now)

    def _commit(self, item_id: str, start: int, end: int) -> tuple[_Item, bytes]:
        """Turn buffer[start:end) into a user audio item; audio before `end` leaves the buffer."""
        audio = bytes(self._buffer[start - self._buffer_start : end - self._buffer_start])
        del self._buffer[: end - self._buffer_start]
        self._buffer_start = end
        previous = self._items[-1].id if self._items else None
        self._emit(
            "input_audio_buffer.committed", {"previous_item_id": previous, "item_id": item_id}
        )
        wire = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        duration_ms = self._ms(end) - self._ms(start)
        item = _Item(id=item_id, wire=wire, role="user", audio_ms=duration_ms)
        self._add_item(item, previous)
        if self._settings.transcription:
            self._emit(
                "conversation.item.input_audio_transcription.completed",
                {
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": f"[caller audio {duration_ms / 1000:.2f} s]",
                    "usage": {"type": "duration", "seconds": duration_ms / 1000},
                },
            )
        self._turns += 1
        return item, audio

    def _on_commit(self, now: float) -> None:
        if self._speech_item_id is not None:
            self._end_turn(self._position(), respond=False, now=now)
            return
        if self._settings.turn_detection is None:
            self._buffer += self._pending
            self._pending.clear()
        buffered_ms = self._ms(self._position()) - self._ms(self._buffer_start)
        if buffered_ms < MIN_COMMIT_MS:
            raise _ClientError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms}ms of audio.",
            )
        self._commit(self._new_id("item_"), self._buffer_start, self._position())

    def _on_clear(self) -> None:
        # The partial frame still counts as received audio, so positions stay in step.
        end = self._position() + len(self._pending)
        self._buffer.clear()
        self._pending.clear()
        self._buffer_start = end
        self._speech_item_id = None
        self._emit("input_audio_buffer.cleared", {})

    def _on_idle_timeout(self, now: float) -> None:
        turn_detection = self._settings.turn_detection
        assert turn_detection is not None and turn_detection.idle_timeout_ms is not None
        self._idle_deadline = math.inf
        item_id = self._new_id("item_")
        end_ms = self._received_ms()
        self._emit(
            "input_audio_buffer.timeout_triggered",
            {
                "audio_start_ms": max(0, end_ms - turn_detection.idle_timeout_ms),
                "audio_end_ms": end_ms,
                "item_id": item_id,
            },
        )
        self._commit(item_id, self._position(), self._position())
        self._take_arrivals()
        output_format = self._settings.output_format
        text_only = self._settings.text_only
        plan = _ResponsePlan(
            transcript=IDLE_TRANSCRIPT,
            audio=None if text_only else word_beeps(output_format, IDLE_TRANSCRIPT),
            text_only=text_only,
        )
        self._request_response(plan, now)

    # ---- conversation items -----------------------------------------------------------------

    def _add_item(
        self, item: _Item, previous_item_id: str | None, *, announce: bool = True
    ) -> None:
        if previous_item_id is None:
            index = len(self._items)
        elif previous_item_id == "root":
            index = 0
        else:
            index = self._items.index(self._items_by_id[previous_item_id]) + 1
        self._items.insert(index, item)
        self._items_by_id[item.id] = item
        if not announce:
            return
        fields = {"previous_item_id": previous_item_id, "item": copy.deepcopy(item.wire)}
        if self._dialect is Dialect.GA:
            self._emit("conversation.item.added", fields)
            self._emit("conversation.item.done", copy.deepcopy(fields))
        else:
            self._emit("conversation.item.created", fields)

    def _on_item_create(self, event: JsonObject) -> None:
        if "item" not in event:
            raise _ClientError(
                "missing_required_parameter", "Missing required parameter: 'item'.", param="item"
            )
        item = _require_object(event["item"], "item")
        previous = event.get("previous_item_id")
        if previous is not None and not isinstance(previous, str):
            raise _invalid_type("previous_item_id", "a string")
        if previous is not None and previous != "root" and previous not in self._items_by_id:
            raise _invalid_value(
                "previous_item_id", f"Previous item with id '{previous}' does not exist."
            )
        item_id = item.get("id")
        if item_id is None:
            item_id = self._new_id("item_")
        elif not isinstance(item_id, str):
            raise _invalid_type("item.id", "a string")
        elif item_id in self._items_by_id:
            raise _invalid_value("item.id", f"Item with id '{item_id}' already exists.")
        kind = item.get("type", "message")
        wire: JsonObject = {"id": item_id, "object": "realtime.item", "type": kind}
        text = ""
        role: str | None = None
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "assistant"):
                raise _invalid_value(
                    "item.role",
                    f"Invalid value: '{role}'. Supported values are 'user', 'system', 'assistant'.",
                )
            content = item.get("content")
            if not isinstance(content, list) or not content:
                raise _invalid_type("item.content", "a non-empty array")
            text, parts = self._message_content(role, content)
            wire.update({"status": "completed", "role": role, "content": parts})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                raise _invalid_type("item", "an object with string 'call_id' and 'output'")
            if self._function_call_item(call_id) is None:
                # The service checks that a function_call item with this call_id is in the
                # conversation (openai-python ConversationItem.call_id); wording as /v1/responses.
                raise _invalid_value(
                    "item.call_id",
                    f"No tool call found for function call output with call_id {call_id}.",
                )
            wire.update({"status": "completed", "call_id": call_id, "output": output})
            text = output
        elif kind == "function_call":
            fields = {key: item.get(key) for key in ("call_id", "name", "arguments")}
            if not all(isinstance(value, str) for value in fields.values()):
                raise _invalid_type("item", "an object with string 'call_id', 'name', 'arguments'")
            wire.update({"status": "completed", **fields})
            text = str(fields["arguments"])
        else:
            raise _invalid_value(
                "item.type",
                f"Invalid value: '{kind}'. Supported values are 'message', 'function_call', "
                "'function_call_output'.",
            )
        if role == "user" and text:
            self._user_texts.append(text)
            self._trigger_item_id = item_id
        if kind == "function_call_output":
            self._function_outputs.append(
                FunctionOutputReceived(call_id=wire["call_id"], output=text)
            )
            self._output_item_ids.append(item_id)
        self._add_item(_Item(id=item_id, wire=wire, role=role, text=text), previous)

    def _function_call_item(self, call_id: str) -> _Item | None:
        """The conversation's function call with `call_id`, whoever created it."""
        for item in self._items:
            if item.wire["type"] == "function_call" and item.wire.get("call_id") == call_id:
                return item
        return None

    def _message_content(self, role: str, content: list[Any]) -> tuple[str, list[JsonObject]]:
        """The message's text and its content parts, checked as the item events will echo them."""
        assistant_text = "output_text" if self._dialect is Dialect.GA else "text"
        allowed = {"user": ("input_text", "input_audio"), "system": ("input_text",)}.get(
            role, (assistant_text,)
        )
        texts = []
        parts = []
        for index, part in enumerate(content):
            param = f"item.content[{index}]"
            part = _require_object(part, param)
            part_type = part.get("type")
            if role == "assistant" and part_type in ("output_audio", "audio"):
                raise _invalid_value(
                    f"{param}.type", "Assistant audio items cannot be created by the client."
                )
            if part_type not in allowed:
                raise _invalid_value(f"{param}.type", f"Invalid content type '{part_type}'.")
            if part_type == "input_audio":
                fields = _INPUT_AUDIO_PART_FIELDS
            else:
                if not isinstance(part.get("text"), str):
                    raise _invalid_type(f"{param}.text", "a string")
                texts.append(part["text"])
                fields = _TEXT_PART_FIELDS
            parts.append(_check_object(part, param, fields))
        return " ".join(texts), parts

    def _on_item_delete(self, event: JsonObject) -> None:
        item_id = event.get("item_id")
        item = self._items_by_id.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise _invalid_value("item_id", f"Item with item_id '{item_id}' not found.")
        if self._active is not None and self._active.item is item:
            raise _invalid_value("item_id", "Cannot delete an item of the active response.")
        self._items.remove(item)
        del self._items_by_id[item.id]
        self._emit("conversation.item.deleted", {"item_id": item.id})

    def _on_truncate(self, event: JsonObject) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise _ClientError(
                "missing_required_parameter",
                "Missing required parameter: 'item_id'.",
                param="item_id",
            )
        content_index = event.get("content_index", 0)
        audio_end_ms = event.get("audio_end_ms")
        if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool) or audio_end_ms < 0:
            raise _invalid_value(
                "audio_end_ms", f"Invalid value for 'audio_end_ms': {audio_end_ms!r}."
            )
        item = self._items_by_id.get(item_id)
        if item is None:
            raise _invalid_value("item_id", f"Item with item_id '{item_id}' not found.")
        if not item.assistant_audio:
            raise _ClientError(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                param="item_id",
            )
        if content_index != 0:
            raise _invalid_value("content_index", f"Invalid content_index: {content_index!r}.")
        if audio_end_ms > item.audio_ms:
            raise _invalid_value(
                "audio_end_ms",
                f"Audio content of {item.audio_ms}ms is already shorter than {audio_end_ms}ms",
            )
        item.audio_ms = audio_end_ms
        self._truncations.append((item_id, audio_end_ms))
        self._emit(
            "conversation.item.truncated",
            {"item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms},
        )

    # ---- responses --------------------------------------------------------------------------

    def _turn_reply(self, item: _Item, audio: bytes) -> _ResponsePlan:
        """The reply to a caller turn: a scripted call, else the turn's own audio."""
        trigger_text, _ = self._take_arrivals()
        text_only = self._settings.text_only
        scripted = self._scripted_call(trigger_text, self._session["tool_choice"])
        if scripted is not None:
            return self._scripted_plan(scripted, text_only=text_only, metadata=None)
        transcript = f"You said [{item.audio_ms / 1000:.2f} s of audio]."
        if text_only:
            return _ResponsePlan(transcript=transcript, audio=None, text_only=True)
        reply = convert_audio(self._settings.input_format, self._settings.output_format, audio)
        return _ResponsePlan(transcript=transcript, audio=reply, text_only=False)

    def _take_arrivals(self) -> tuple[str, list[tuple[str, str]]]:
        """What arrived since the previous response: the newest user text and the function outputs.

        Both are taken, so the next response starts afresh. Items deleted meanwhile are gone.
        ``(name, output)`` per output; the name is that of the function call it answers.
        """
        trigger = self._items_by_id.get(self._trigger_item_id or "")
        output_items = [self._items_by_id.get(item_id) for item_id in self._output_item_ids]
        self._trigger_item_id = None
        self._output_item_ids = []
        outputs = []
        for output_item in output_items:
            if output_item is None:
                continue
            call = self._function_call_item(output_item.wire["call_id"])
            name = "" if call is None else str(call.wire["name"])
            outputs.append((name, output_item.text))
        return ("" if trigger is None else trigger.text), outputs

    def _scripted_call(self, trigger_text: str, tool_choice: Any) -> ScriptedToolCall | None:
        if not trigger_text or tool_choice == "none":
            return None
        return next((entry for entry in self._script if entry.triggered_by(trigger_text)), None)

    def _scripted_plan(
        self, scripted: ScriptedToolCall, *, text_only: bool, metadata: Any
    ) -> _ResponsePlan:
        speaks = bool(scripted.say)
        audio = (
            None
            if text_only or not speaks
            else word_beeps(self._settings.output_format, scripted.say)
        )
        return _ResponsePlan(
            transcript=scripted.say,
            audio=audio,
            text_only=text_only,
            metadata=metadata,
            message=speaks,
            tool_call=scripted,
        )

    def _request_response(self, plan: _ResponsePlan, now: float) -> None:
        if self._active is None:
            self._start(plan, now)
        else:
            self._queued.append(plan)

    def _on_response_create(self, event: JsonObject, now: float) -> None:
        params = event.get("response")
        params = {} if params is None else _require_object(params, "response")
        if self._active is not None:
            raise _ClientError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        instructions = params.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise _invalid_type("response.instructions", "a string")
        modalities = params.get("output_modalities", params.get("modalities"))
        if modalities is not None and modalities not in _RESPONSE_MODALITIES:
            raise _invalid_value(
                "response.output_modalities",
                f"Invalid value: {modalities!r}. Supported values are ['audio'] or ['text'].",
            )
        text_only = self._settings.text_only if modalities is None else "audio" not in modalities
        metadata = params.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or not all(isinstance(value, str) for value in metadata.values())
        ):
            raise _invalid_type("response.metadata", "an object of string values")
        metadata = copy.deepcopy(metadata)
        if "tool_choice" in params:
            tool_choice = _check_tool_choice(
                params["tool_choice"], "response.tool_choice", dialect=self._dialect
            )
        else:
            tool_choice = self._session["tool_choice"]
        trigger_text, outputs = self._take_arrivals()
        scripted = None if instructions else self._scripted_call(trigger_text, tool_choice)
        output_format = self._settings.output_format
        if instructions:
            transcript = instructions
            audio = None if text_only else word_beeps(output_format, instructions)
        elif outputs:
            # A tool's result is answered first: that is what the client asked the model about.
            transcript = " ".join(f"Tool {name} returned: {output}" for name, output in outputs)
            audio = None if text_only else word_beeps(output_format, transcript)
        elif scripted is not None:
            self._start(self._scripted_plan(scripted, text_only=text_only, metadata=metadata), now)
            return
        else:
            user_texts = [item.text for item in self._items if item.role == "user" and item.text]
            transcript = user_texts[-1] if user_texts else FALLBACK_TRANSCRIPT
            audio = None if text_only else word_beeps(output_format, None)
        plan = _ResponsePlan(
            transcript=transcript,
            audio=audio,
            text_only=text_only,
            instructions=instructions,
            metadata=metadata,
        )
        self._start(plan, now)

    def _on_response_cancel(self, event: JsonObject, now: float) -> None:
        response = self._active
        response_id = event.get("response_id")
        if response is None or (response_id is not None and response_id != response.id):
            raise _ClientError(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        self._finish(response, status="cancelled", reason="client_cancelled", now=now)

    def _input_usage(self, instructions: str | None) -> tuple[int, int]:
        text = _text_tokens(self._settings.instructions) + _text_tokens(instructions or "")
        audio = 0
        for item in self._items:
            text += _text_tokens(item.text)
            audio += -(-item.audio_ms // INPUT_AUDIO_MS_PER_TOKEN)
        return text, audio

    def _response_wire(self, response: _Response, status: str) -> JsonObject:
        output_format = self._settings.output_format
        modalities = ["text"] if response.plan.text_only else ["audio"]
        if self._dialect is Dialect.GA:
            return {
                "object": "realtime.response",
                "id": response.id,
                "status": status,
                "status_details": None,
                "output": [],
                "conversation_id": self._conversation_id,
                "output_modalities": modalities,
                "max_output_tokens": "inf",
                "audio": {
                    "output": {
                        "format": output_format.ga_wire(),
                        "voice": _voice_name(self._settings.voice),
                    }
                },
                "usage": None,
                "metadata": response.plan.metadata,
            }
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": self._conversation_id,
            "modalities": ["text"] if response.plan.text_only else ["text", "audio"],
            "output_audio_format": output_format.beta_name,
            "voice": _voice_name(self._settings.voice),
            "temperature": self._session.get("temperature", 0.8),
            "max_output_tokens": "inf",
            "usage": None,
            "metadata": response.plan.metadata,
        }

    def _content_type(self, audio: bool) -> str:
        if self._dialect is Dialect.GA:
            return "output_audio" if audio else "output_text"
        return "audio" if audio else "text"

    def _start(self, plan: _ResponsePlan, now: float) -> None:
        self._idle_deadline = math.inf
        item: _Item | None = None
        wire: JsonObject = {}
        if plan.message:
            wire = {
                "id": self._new_id("item_"),
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            item = _Item(
                id=wire["id"], wire=wire, role="assistant", assistant_audio=plan.audio is not None
            )
        chunks: list[bytes] = []
        starts: list[int] = []
        total_ms = 0
        if plan.audio is not None:
            bytes_per_ms = self._settings.output_format.bytes_per_ms
            step = DELTA_MS * bytes_per_ms
            for offset in range(0, len(plan.audio), step):
                chunks.append(plan.audio[offset : offset + step])
                starts.append(offset // bytes_per_ms)
            total_ms = len(plan.audio) // bytes_per_ms
        response = _Response(
            id=self._new_id("resp_"),
            item=item,
            plan=plan,
            started_at=now,
            chunks=chunks,
            chunk_starts_ms=starts,
            total_ms=total_ms,
            input_usage=self._input_usage(plan.instructions),
        )
        self._active = response
        self._responses += 1
        self._emit("response.created", {"response": self._response_wire(response, "in_progress")})
        self._emit(
            "rate_limits.updated",
            {
                "rate_limits": [
                    {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60},
                    {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 60},
                ]
            },
        )
        if item is None:
            # Nothing to say: the function call is all the response has, and it is ready now.
            self._finish(response, status="completed", reason=None, now=now)
            return
        self._emit(
            "response.output_item.added",
            {"response_id": response.id, "output_index": 0, "item": copy.deepcopy(wire)},
        )
        self._add_generated_item(item)
        part = (
            {"type": "audio", "transcript": ""}
            if plan.audio is not None
            else {"type": "text", "text": ""}
        )
        self._emit("response.content_part.added", {**self._part_ids(response), "part": part})
        if plan.audio is None:
            self._emit(
                "response.output_text.delta", {**self._part_ids(response), "delta": plan.transcript}
            )
            self._finish(response, status="completed", reason=None, now=now)
            return
        self._release_due(response, now)

    def _add_generated_item(self, item: _Item) -> None:
        """A response's output item joins the conversation at its end, announced as it starts."""
        previous = self._items[-1].id if self._items else None
        self._add_item(item, previous, announce=False)
        added = {"previous_item_id": previous, "item": copy.deepcopy(item.wire)}
        if self._dialect is Dialect.GA:
            self._emit("conversation.item.added", added)
        else:
            self._emit("conversation.item.created", added)

    def _announce_item_done(self, response: _Response, item: _Item, output_index: int) -> None:
        self._emit(
            "response.output_item.done",
            {
                "response_id": response.id,
                "output_index": output_index,
                "item": copy.deepcopy(item.wire),
            },
        )
        if self._dialect is Dialect.GA:
            index = self._items.index(item)
            previous = self._items[index - 1].id if index else None
            self._emit(
                "conversation.item.done",
                {"previous_item_id": previous, "item": copy.deepcopy(item.wire)},
            )

    def _part_ids(self, response: _Response) -> JsonObject:
        assert response.item is not None, "only a response with a message has content parts"
        return {
            "response_id": response.id,
            "item_id": response.item.id,
            "output_index": 0,
            "content_index": 0,
        }

    def _due(self, response: _Response, audio_ms: int) -> float:
        return response.started_at + audio_ms / 1000 / self._generation_speed

    def _release_due(self, response: _Response, now: float) -> None:
        while response.released < len(response.chunks) and now >= self._due(
            response, response.chunk_starts_ms[response.released]
        ):
            assert response.item is not None, "only a response with a message has audio"
            chunk = response.chunks[response.released]
            self._emit(
                "response.output_audio.delta",
                {**self._part_ids(response), "delta": base64.b64encode(chunk).decode("ascii")},
            )
            if response.released == 0 and response.plan.transcript:
                self._emit(
                    "response.output_audio_transcript.delta",
                    {**self._part_ids(response), "delta": response.plan.transcript},
                )
            response.released += 1
            chunk_ms = len(chunk) // self._settings.output_format.bytes_per_ms
            response.released_ms += chunk_ms
            response.item.audio_ms += chunk_ms
            self._assistant_audio_produced = True
        if response.released == len(response.chunks) and now >= self._due(
            response, response.total_ms
        ):
            self._finish(response, status="completed", reason=None, now=now)

    def _finish_message(self, response: _Response, item: _Item, status: str) -> str:
        """End the response's message item; returns what it actually said."""
        ids = self._part_ids(response)
        plan = response.plan
        # What was actually said: a cancelled response keeps its transcript only if it spoke.
        spoken = plan.transcript if response.released or plan.audio is None else ""
        if plan.audio is not None:
            self._emit("response.output_audio.done", ids)
            self._emit("response.output_audio_transcript.done", {**ids, "transcript": spoken})
            part: JsonObject = {"type": "audio", "transcript": spoken}
            content: JsonObject = {"type": self._content_type(True), "transcript": spoken}
        else:
            self._emit("response.output_text.done", {**ids, "text": spoken})
            part = {"type": "text", "text": spoken}
            content = {"type": self._content_type(False), "text": spoken}
        self._emit("response.content_part.done", {**ids, "part": part})
        item.text = spoken
        item.wire.update(
            {"status": "completed" if status == "completed" else "incomplete", "content": [content]}
        )
        self._announce_item_done(response, item, 0)
        return spoken

    def _call_function(
        self, response: _Response, scripted: ScriptedToolCall, output_index: int
    ) -> _Item:
        """Stream a complete function call item, as the service does once the model wrote it.

        Only a response that was not cancelled gets here: a call cut short is never made.
        """
        call_id = self._new_id("call_")
        wire: JsonObject = {
            "id": self._new_id("item_"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": scripted.name,
            "call_id": call_id,
            "arguments": "",
        }
        item = _Item(id=wire["id"], wire=wire, role=None)
        ids = {"response_id": response.id, "item_id": item.id, "output_index": output_index}
        self._emit(
            "response.output_item.added",
            {"response_id": response.id, "output_index": output_index, "item": copy.deepcopy(wire)},
        )
        self._add_generated_item(item)
        arguments = scripted.arguments
        # An empty argument string still streams once, so a client always sees a delta.
        for offset in range(0, max(len(arguments), 1), _ARGUMENTS_DELTA_CHARS):
            delta = arguments[offset : offset + _ARGUMENTS_DELTA_CHARS]
            self._emit(
                "response.function_call_arguments.delta",
                {**ids, "call_id": call_id, "delta": delta},
            )
        self._emit(
            "response.function_call_arguments.done",
            {**ids, "call_id": call_id, "name": scripted.name, "arguments": arguments},
        )
        item.text = arguments
        wire.update({"status": "completed", "arguments": arguments})
        self._announce_item_done(response, item, output_index)
        self._function_calls.append(
            FunctionCallMade(call_id=call_id, name=scripted.name, arguments=arguments)
        )
        return item

    def _finish(self, response: _Response, *, status: str, reason: str | None, now: float) -> None:
        plan = response.plan
        output: list[JsonObject] = []
        spoken = ""
        if response.item is not None:
            spoken = self._finish_message(response, response.item, status)
            output.append(copy.deepcopy(response.item.wire))
        arguments = ""
        if status == "completed" and plan.tool_call is not None:
            call = self._call_function(response, plan.tool_call, len(output))
            output.append(copy.deepcopy(call.wire))
            arguments = call.text
        wire = self._response_wire(response, status)
        if reason is not None:
            wire["status_details"] = {"type": status, "reason": reason}
        wire["output"] = output
        wire["usage"] = self._usage(response, spoken, arguments)
        self._emit("response.done", {"response": wire})
        self._active = None
        if status == "completed":
            self._responses_completed += 1
            self._arm_idle_timer(response)
        else:
            self._cancellations += 1
        if self._queued:
            self._start(self._queued.pop(0), now)

    def _usage(self, response: _Response, spoken: str, arguments: str) -> JsonObject:
        input_text, input_audio = response.input_usage
        output_audio = -(-response.released_ms // OUTPUT_AUDIO_MS_PER_TOKEN)
        output_text = _text_tokens(spoken) + _text_tokens(arguments)
        input_tokens = input_text + input_audio
        output_tokens = output_text + output_audio
        return {
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {
                "text_tokens": input_text,
                "audio_tokens": input_audio,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
        }

    def _arm_idle_timer(self, response: _Response) -> None:
        turn_detection = self._settings.turn_detection
        if turn_detection is None or turn_detection.idle_timeout_ms is None:
            return
        if self._speech_item_id is not None:
            # The caller began speaking while the reply played (interrupt_response false): the
            # silence the timer waits for has not begun. It restarts after the next reply.
            return
        # The caller hears the reply in real time from its first delta on.
        played_until = response.started_at + response.total_ms / 1000
        self._idle_deadline = played_until + turn_detection.idle_timeout_ms / 1000


__all__ = [
    "AudioFormat",
    "Dialect",
    "FunctionCallMade",
    "FunctionOutputReceived",
    "LoopbackModel",
    "LoopbackStatistics",
    "ScriptedToolCall",
    "SessionSettings",
    "TurnDetection",
    "convert_audio",
    "frame_rms",
    "silence",
    "tone",
    "word_beeps",
]
