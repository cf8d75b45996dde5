"""session.update building, checked against the OpenAI SDK's own types (the wire contract)."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from openai.types.beta.realtime.realtime_client_event_param import (
    RealtimeClientEventParam as BetaClientEventParam,
)
from openai.types.realtime import RealtimeClientEventParam

from bridge.call.context import CallInfo
from bridge.call.events import Codec
from bridge.config import Dialect, SessionConfig, config_from_dict
from bridge.proto.realtime.codec import RealtimeCodec
from bridge.proto.realtime.session_config import (
    build_session_update,
    expected_formats,
    render_instructions,
)

# extra="forbid" reaches the nested TypedDicts, so a misspelt key fails instead of being ignored.
GA_CLIENT_EVENT = pydantic.TypeAdapter(
    RealtimeClientEventParam, config=pydantic.ConfigDict(extra="forbid")
)
BETA_CLIENT_EVENT = pydantic.TypeAdapter(
    BetaClientEventParam, config=pydantic.ConfigDict(extra="forbid")
)

ULAW_CALL = CallInfo(call_id="c-1", ingress="test", codec=Codec.PCMU, caller="+15550001")
ALAW_CALL = CallInfo(call_id="c-2", ingress="test", codec=Codec.PCMA)


def session_config(**section: Any) -> SessionConfig:
    return config_from_dict({"session": section}).session


def ga_update(session: SessionConfig, call: CallInfo = ULAW_CALL) -> dict[str, Any]:
    return build_session_update(session, call, dialect=Dialect.GA, model="gpt-realtime")


def wire(event: dict[str, Any]) -> dict[str, Any]:
    """The event as it goes on the wire (through the codec) and comes back as JSON."""
    decoded: dict[str, Any] = json.loads(RealtimeCodec(Dialect.GA).session_update(event, "e-1"))
    return decoded


GA_VARIATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "pcmu": {"audio_format": "pcmu"},
    "pcma": {"audio_format": "pcma"},
    "server_vad_all_keys": {
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.6,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "idle_timeout_ms": 10000,
            "create_response": False,
            "interrupt_response": False,
        }
    },
    "semantic_vad": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
    "semantic_vad_no_eagerness": {"turn_detection": {"type": "semantic_vad"}},
    "turn_detection_none": {"turn_detection": {"type": "none"}},
    "transcription_off": {"transcription": {"enabled": False}},
    "transcription_language_prompt": {
        "transcription": {"model": "whisper-1", "language": "de", "prompt": "Namen, Nummern"}
    },
    "noise_reduction_off": {"noise_reduction": {"type": "off"}},
    "noise_reduction_far_field": {"noise_reduction": {"type": "far_field"}},
    "text_modality": {"output_modalities": ["text"]},
    "max_tokens_int": {"max_output_tokens": 512},
    "voice_speed_tool_choice": {"voice": "cedar", "speed": 1.25, "tool_choice": "required"},
}


@pytest.mark.parametrize("variation", GA_VARIATIONS.values(), ids=list(GA_VARIATIONS))
def test_ga_session_update_matches_the_sdk_types(variation: dict[str, Any]) -> None:
    GA_CLIENT_EVENT.validate_python(wire(ga_update(session_config(**variation))))


def test_the_contract_check_can_fail() -> None:
    good = wire(ga_update(session_config()))
    GA_CLIENT_EVENT.validate_python(good)
    beta_shape = wire(
        build_session_update(session_config(), ULAW_CALL, dialect=Dialect.BETA, model="m")
    )
    misspelt = json.loads(json.dumps(good))
    misspelt["session"]["audio"]["input"]["formatt"] = misspelt["session"]["audio"]["input"].pop(
        "format"
    )
    with_rate = json.loads(json.dumps(good))
    with_rate["session"]["audio"]["input"]["format"]["rate"] = 8000
    for bad in (beta_shape, misspelt, with_rate):
        with pytest.raises(pydantic.ValidationError):
            GA_CLIENT_EVENT.validate_python(bad)


def test_ga_default_update_is_the_documented_phone_shape() -> None:
    update = ga_update(session_config())
    assert update == {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "You are a helpful phone assistant. Keep answers short.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                    "turn_detection": {
                        "type": "server_vad",
                        "create_response": True,
                        "interrupt_response": True,
                    },
                    "noise_reduction": {"type": "near_field"},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
        },
    }


def test_ga_update_never_names_the_model() -> None:
    assert "model" not in ga_update(session_config())["session"]


def test_call_format_follows_the_call_codec() -> None:
    update = ga_update(session_config(), ALAW_CALL)
    assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcma"}
    assert update["session"]["audio"]["output"]["format"] == {"type": "audio/pcma"}
    assert expected_formats(session_config(), ALAW_CALL, dialect=Dialect.GA) == (
        "audio/pcma",
        "audio/pcma",
    )


def test_configured_format_overrides_the_call_codec() -> None:
    session = session_config(audio_format="pcmu")
    assert ga_update(session, ALAW_CALL)["session"]["audio"]["output"]["format"] == {
        "type": "audio/pcmu"
    }
    assert expected_formats(session, ALAW_CALL, dialect=Dialect.BETA) == ("g711_ulaw", "g711_ulaw")
    assert expected_formats(
        session_config(audio_format="pcma"), ULAW_CALL, dialect=Dialect.BETA
    ) == (
        "g711_alaw",
        "g711_alaw",
    )


def test_turn_detection_variants() -> None:
    def detection(**turn: Any) -> Any:
        return ga_update(session_config(turn_detection=turn))["session"]["audio"]["input"][
            "turn_detection"
        ]

    assert detection(type="none") is None
    assert detection(type="server_vad", threshold=0.7, idle_timeout_ms=6000) == {
        "type": "server_vad",
        "threshold": 0.7,
        "idle_timeout_ms": 6000,
        "create_response": True,
        "interrupt_response": True,
    }
    assert detection(type="semantic_vad", eagerness="high", interrupt_response=False) == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
        "interrupt_response": False,
    }


def test_disabled_transcription_and_noise_reduction_are_left_out() -> None:
    audio_input = ga_update(
        session_config(transcription={"enabled": False}, noise_reduction={"type": "off"})
    )["session"]["audio"]["input"]
    assert "transcription" not in audio_input
    assert "noise_reduction" not in audio_input


def test_transcription_carries_language_and_prompt_only_when_set() -> None:
    session = session_config(transcription={"language": "fr", "prompt": "noms propres"})
    assert ga_update(session)["session"]["audio"]["input"]["transcription"] == {
        "model": "gpt-4o-mini-transcribe",
        "language": "fr",
        "prompt": "noms propres",
    }


def test_tools_are_passed_through() -> None:
    tool = {"type": "function", "name": "hang_up", "description": "End the call.", "parameters": {}}
    update = build_session_update(
        session_config(), ULAW_CALL, dialect=Dialect.GA, model="x", tools=[tool]
    )
    assert update["session"]["tools"] == [tool]
    GA_CLIENT_EVENT.validate_python(wire(update))


def test_instructions_are_rendered_with_call_values() -> None:
    call = CallInfo(
        call_id="c-9",
        ingress="test",
        codec=Codec.PCMU,
        caller="+4930123",
        called="+4940999",
        variables={"customer": "Ada"},
    )
    session = session_config(
        instructions="Caller {caller} called {called} ({call_id}); greet {customer}; keep {foo}."
    )
    assert ga_update(session, call)["session"]["instructions"] == (
        "Caller +4930123 called +4940999 (c-9); greet Ada; keep {foo}."
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("plain", "plain"),
        ("{caller}", "+1"),
        ("{unknown}", "{unknown}"),
        ("{unknown!r:>5}", "{unknown!r:>5}"),
        ("{caller:>4}", "  +1"),
        ("{{caller}}", "{caller}"),
        ("{caller!r}", "'+1'"),
        ("{caller:d}", "{caller:d}"),
        ("unbalanced {", "unbalanced {"),
    ],
)
def test_render_instructions(template: str, expected: str) -> None:
    assert render_instructions(template, {"caller": "+1"}) == expected


def test_beta_session_update_is_flat() -> None:
    session = config_from_dict(
        {
            "model": {"provider": "compatible", "url": "ws://h/v1/realtime", "dialect": "beta"},
            "session": {"temperature": 0.8, "max_output_tokens": 300},
        }
    ).session
    update = build_session_update(
        session, ALAW_CALL, dialect=Dialect.BETA, model="gpt-4o-realtime-preview"
    )
    assert update == {
        "type": "session.update",
        "session": {
            "model": "gpt-4o-realtime-preview",
            "modalities": ["audio", "text"],
            "instructions": "You are a helpful phone assistant. Keep answers short.",
            "voice": "marin",
            "input_audio_format": "g711_alaw",
            "output_audio_format": "g711_alaw",
            "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"},
            "input_audio_noise_reduction": {"type": "near_field"},
            "turn_detection": {
                "type": "server_vad",
                "create_response": True,
                "interrupt_response": True,
            },
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": 300,
        },
    }
    BETA_CLIENT_EVENT.validate_python(wire(update))


BETA_VARIATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "pcmu": {"audio_format": "pcmu"},
    "text": {"output_modalities": ["text"]},
    "semantic_vad": {"turn_detection": {"type": "semantic_vad", "eagerness": "auto"}},
    "server_vad_idle_timeout": {"turn_detection": {"idle_timeout_ms": 8000, "threshold": 0.4}},
    "off_switches": {"transcription": {"enabled": False}, "noise_reduction": {"type": "off"}},
}


@pytest.mark.parametrize("variation", BETA_VARIATIONS.values(), ids=list(BETA_VARIATIONS))
def test_beta_session_update_matches_the_beta_sdk_types(variation: dict[str, Any]) -> None:
    update = build_session_update(
        session_config(**variation), ULAW_CALL, dialect=Dialect.BETA, model="gpt-realtime"
    )
    BETA_CLIENT_EVENT.validate_python(wire(update))
    assert "idle_timeout_ms" not in (update["session"]["turn_detection"] or {})


def test_beta_modalities_and_no_temperature_when_unset() -> None:
    text = build_session_update(
        session_config(output_modalities=["text"]), ULAW_CALL, dialect=Dialect.BETA, model="m"
    )
    assert text["session"]["modalities"] == ["text"]
    assert "temperature" not in text["session"]


def test_beta_turn_detection_none_is_null() -> None:
    update = build_session_update(
        session_config(turn_detection={"type": "none"}), ULAW_CALL, dialect=Dialect.BETA, model="m"
    )
    # Beta servers default to server VAD too, so "none" must be said out loud.
    assert update["session"]["turn_detection"] is None
