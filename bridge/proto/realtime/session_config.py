"""The ``session.update`` a phone call opens with, GA or beta shape (realtime-api.md §1.3, §2).

GA nests audio settings under ``session.audio.input`` / ``session.audio.output`` and names G.711 by
format objects (``{"type": "audio/pcmu"}``); beta keeps flat fields and format strings
(``"g711_ulaw"``). The model is chosen by the URL in GA, so a GA update never names it.

Transcription and noise reduction that are switched off are left out rather than sent as
``null``: a new session starts with both off (``RealtimeSessionCreateRequestGA``: transcription
"defaults to off", noise_reduction "default: null"), and neither the OpenAPI schema nor the SDK's
types declare them nullable, so an explicit ``null`` is the one form that strict validators reject.
Turn detection is the other way round: it defaults to server VAD, so "none" is sent as ``null``,
which the schema allows.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.call.context import CallInfo
from bridge.call.events import Codec
from bridge.config import AudioFormat, Dialect, NoiseReductionType, SessionConfig, TurnDetectionType

_GA_FORMATS = {Codec.PCMU: "audio/pcmu", Codec.PCMA: "audio/pcma"}
_BETA_FORMATS = {Codec.PCMU: "g711_ulaw", Codec.PCMA: "g711_alaw"}


def session_codec(session: SessionConfig, call: CallInfo) -> Codec:
    """The G.711 law the model hears and speaks: the configured one, or the call's own."""
    if session.audio_format is AudioFormat.PCMU:
        return Codec.PCMU
    if session.audio_format is AudioFormat.PCMA:
        return Codec.PCMA
    return call.codec


def expected_formats(
    session: SessionConfig, call: CallInfo, *, dialect: Dialect
) -> tuple[str, str]:
    """(input, output) format wire strings that ``session.updated`` must confirm."""
    table = _GA_FORMATS if dialect is Dialect.GA else _BETA_FORMATS
    wire = table[session_codec(session, call)]
    return wire, wire


def render_instructions(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{name}`` fields from `values`; a field with an unknown name stays as written.

    ``str.format`` would raise on an unknown name, and a prompt author's stray ``{example}`` must
    not end a call, so the template is walked field by field instead.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        # Config validation rejects malformed templates; if one slips through, say it verbatim.
        return template
    parts: list[str] = []
    for literal, field, spec, conversion in parsed:
        parts.append(literal)
        if field is None:
            continue
        written = (
            "{"
            + field
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
        if field not in values:
            parts.append(written)
            continue
        value: object = values[field]
        if conversion == "r":
            value = repr(value)
        elif conversion == "a":
            value = ascii(value)
        try:
            parts.append(format(value, spec or ""))
        except (ValueError, TypeError):
            parts.append(written)
    return "".join(parts)


def _wire(value: object) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _turn_detection(session: SessionConfig) -> dict[str, Any] | None:
    config = session.turn_detection
    if config.type is TurnDetectionType.NONE:
        return None
    detection: dict[str, Any] = {"type": _wire(config.type)}
    if config.type is TurnDetectionType.SERVER_VAD:
        optional = {
            "threshold": config.threshold,
            "prefix_padding_ms": config.prefix_padding_ms,
            "silence_duration_ms": config.silence_duration_ms,
            "idle_timeout_ms": config.idle_timeout_ms,
        }
    else:
        optional = {"eagerness": _wire(config.eagerness)}
    detection.update({key: value for key, value in optional.items() if value is not None})
    detection["create_response"] = config.create_response
    detection["interrupt_response"] = config.interrupt_response
    return detection


def _transcription(session: SessionConfig) -> dict[str, Any] | None:
    config = session.transcription
    if not config.enabled:
        return None
    transcription: dict[str, Any] = {"model": _wire(config.model)}
    if config.language:
        transcription["language"] = config.language
    if config.prompt:
        transcription["prompt"] = config.prompt
    return transcription


def _noise_reduction(session: SessionConfig) -> dict[str, Any] | None:
    if session.noise_reduction.type is NoiseReductionType.OFF:
        return None
    return {"type": _wire(session.noise_reduction.type)}


def build_session_update(
    session: SessionConfig,
    call: CallInfo,
    *,
    dialect: Dialect,
    model: str,
    tools: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The complete ``session.update`` client event for `call` in `dialect`."""
    if dialect is Dialect.GA:
        return {"type": "session.update", "session": _ga_session(session, call, tools)}
    return {"type": "session.update", "session": _beta_session(session, call, model, tools)}


def _ga_session(
    session: SessionConfig, call: CallInfo, tools: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    audio_format = {"type": _GA_FORMATS[session_codec(session, call)]}
    audio_input: dict[str, Any] = {"format": audio_format}
    transcription = _transcription(session)
    if transcription is not None:
        audio_input["transcription"] = transcription
    audio_input["turn_detection"] = _turn_detection(session)
    noise_reduction = _noise_reduction(session)
    if noise_reduction is not None:
        audio_input["noise_reduction"] = noise_reduction
    return {
        "type": "realtime",
        "output_modalities": [_wire(modality) for modality in session.output_modalities],
        "instructions": render_instructions(session.instructions, call.template_values()),
        "audio": {
            "input": audio_input,
            "output": {
                "format": dict(audio_format),
                "voice": _wire(session.voice),
                "speed": session.speed,
            },
        },
        "tools": [dict(tool) for tool in tools],
        "tool_choice": _wire(session.tool_choice),
        "max_output_tokens": session.max_output_tokens,
    }


def _beta_session(
    session: SessionConfig, call: CallInfo, model: str, tools: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    audio_format = _BETA_FORMATS[session_codec(session, call)]
    # Beta modalities are ["text"] or ["audio", "text"]: audio always came with its transcript.
    text_only = [_wire(modality) for modality in session.output_modalities] == ["text"]
    beta: dict[str, Any] = {
        "model": model,
        "modalities": ["text"] if text_only else ["audio", "text"],
        "instructions": render_instructions(session.instructions, call.template_values()),
        "voice": _wire(session.voice),
        "input_audio_format": audio_format,
        "output_audio_format": audio_format,
    }
    transcription = _transcription(session)
    if transcription is not None:
        beta["input_audio_transcription"] = transcription
    noise_reduction = _noise_reduction(session)
    if noise_reduction is not None:
        beta["input_audio_noise_reduction"] = noise_reduction
    turn_detection = _turn_detection(session)
    if turn_detection is not None:
        # Beta servers predate idle_timeout_ms; the beta schema has no such key.
        turn_detection.pop("idle_timeout_ms", None)
    beta["turn_detection"] = turn_detection
    beta["tools"] = [dict(tool) for tool in tools]
    beta["tool_choice"] = _wire(session.tool_choice)
    if session.temperature is not None:
        beta["temperature"] = session.temperature
    beta["max_response_output_tokens"] = session.max_output_tokens
    return beta


__all__ = [
    "build_session_update",
    "expected_formats",
    "render_instructions",
    "session_codec",
]
