"""Realtime codec: server events from realistic JSON (both dialects), client events to the wire."""

from __future__ import annotations

import base64
import json
from typing import Any

import pydantic
import pytest
from openai.types.beta.realtime.realtime_server_event import (
    RealtimeServerEvent as BetaServerEvent,
)
from openai.types.realtime import RealtimeClientEventParam, RealtimeServerEvent

from bridge.config import Dialect
from bridge.errors import RemoteProtocolError
from bridge.proto.realtime.codec import (
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

GA = RealtimeCodec(Dialect.GA)
BETA = RealtimeCodec(Dialect.BETA)
GA_SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)
BETA_SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(BetaServerEvent)
GA_CLIENT_EVENT = pydantic.TypeAdapter(
    RealtimeClientEventParam, config=pydantic.ConfigDict(extra="forbid")
)

ULAW_TONE = bytes(range(0, 256, 3)) * 7
USAGE = {
    "total_tokens": 253,
    "input_tokens": 132,
    "output_tokens": 121,
    "input_token_details": {
        "text_tokens": 119,
        "audio_tokens": 13,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}


def ga_session(audio_type: str) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_C9G8l3zp50uFv4qgxfJ8o",
        "model": "gpt-realtime-2025-08-28",
        "output_modalities": ["audio"],
        "instructions": "Be brief.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": 1756324832,
        "audio": {
            "input": {
                "format": {"type": audio_type},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": audio_type}, "voice": "marin", "speed": 1.0},
        },
        "include": None,
    }


# (GA wire JSON, what the codec makes of it); every message is also a valid SDK server event.
GA_EVENTS: list[tuple[dict[str, Any], ServerEvent]] = [
    (
        {"type": "session.created", "event_id": "event_1", "session": ga_session("audio/pcm")},
        SessionCreated("sess_C9G8l3zp50uFv4qgxfJ8o", "audio/pcm", "audio/pcm"),
    ),
    (
        {"type": "session.updated", "event_id": "event_2", "session": ga_session("audio/pcmu")},
        SessionUpdated("sess_C9G8l3zp50uFv4qgxfJ8o", "audio/pcmu", "audio/pcmu"),
    ),
    (
        {
            "event_id": "event_1516",
            "type": "input_audio_buffer.speech_started",
            "audio_start_ms": 1000,
            "item_id": "msg_003",
        },
        SpeechStarted("msg_003", 1000),
    ),
    (
        {
            "event_id": "event_1718",
            "type": "input_audio_buffer.speech_stopped",
            "audio_end_ms": 2000,
            "item_id": "msg_003",
        },
        SpeechStopped("msg_003", 2000),
    ),
    (
        {
            "event_id": "event_1121",
            "type": "input_audio_buffer.committed",
            "previous_item_id": "msg_001",
            "item_id": "msg_002",
        },
        InputAudioCommitted("msg_002", "msg_001"),
    ),
    (
        {
            "type": "response.created",
            "event_id": "event_C9G8pqbTEddBSIxbBN6Os",
            "response": {
                "object": "realtime.response",
                "id": "resp_C9G8p7IH2WxLbkgPNouYL",
                "status": "in_progress",
                "status_details": None,
                "output": [],
                "conversation_id": "conv_C9G8mmBkLhQJwCon3hoJN",
                "output_modalities": ["audio"],
                "max_output_tokens": "inf",
                "audio": {"output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}},
                "usage": None,
                "metadata": None,
            },
        },
        ResponseCreated("resp_C9G8p7IH2WxLbkgPNouYL", "in_progress"),
    ),
    (
        {
            "type": "response.done",
            "event_id": "event_CCXHxcMy86rrKhBLDdqCh",
            "response": {
                "object": "realtime.response",
                "id": "resp_CCXHw0UJld10EzIUXQCNh",
                "status": "completed",
                "status_details": None,
                "output": [
                    {
                        "id": "item_CCXHwGjjDUfOXbiySlK7i",
                        "type": "message",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_audio", "transcript": "Loud and clear!"}],
                    }
                ],
                "conversation_id": "conv_CCXHsurMKcaVxIZvaCI5m",
                "output_modalities": ["audio"],
                "max_output_tokens": "inf",
                "usage": USAGE,
                "metadata": None,
            },
        },
        ResponseDone("resp_CCXHw0UJld10EzIUXQCNh", "completed", USAGE),
    ),
    (
        {
            "type": "response.done",
            "event_id": "event_9",
            "response": {
                "object": "realtime.response",
                "id": "resp_2",
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
                "output": [],
                "usage": None,
            },
        },
        ResponseDone("resp_2", "cancelled", None, status_reason="turn_detected"),
    ),
    (
        {
            "type": "response.done",
            "event_id": "event_10",
            "response": {
                "object": "realtime.response",
                "id": "resp_3",
                "status": "failed",
                "status_details": {
                    "type": "failed",
                    "error": {"type": "server_error", "code": "internal_error"},
                },
                "output": [],
            },
        },
        ResponseDone("resp_3", "failed", None, error_code="internal_error"),
    ),
    (
        {
            "event_id": "event_4950",
            "type": "response.output_audio.delta",
            "response_id": "resp_001",
            "item_id": "msg_008",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(ULAW_TONE).decode(),
        },
        OutputAudioDelta("resp_001", "msg_008", ULAW_TONE),
    ),
    (
        {
            "event_id": "event_4748",
            "type": "response.output_audio_transcript.done",
            "response_id": "resp_001",
            "item_id": "msg_008",
            "output_index": 0,
            "content_index": 0,
            "transcript": "Hello, how can I assist you today?",
        },
        OutputAudioTranscriptDone("resp_001", "msg_008", "Hello, how can I assist you today?"),
    ),
    (
        {
            "event_id": "event_4344",
            "type": "response.output_text.done",
            "response_id": "resp_001",
            "item_id": "msg_007",
            "output_index": 0,
            "content_index": 0,
            "text": "Sure, I can help with that.",
        },
        OutputTextDone("resp_001", "msg_007", "Sure, I can help with that."),
    ),
    (
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "event_CCXGRvtUVrax5SJAnNOWZ",
            "item_id": "item_CCXGQ4e1ht4cOraEYcuR2",
            "content_index": 0,
            "transcript": "Hey, can you hear me?",
            "usage": {
                "type": "tokens",
                "total_tokens": 22,
                "input_tokens": 13,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 13},
                "output_tokens": 9,
            },
        },
        InputTranscriptionCompleted("item_CCXGQ4e1ht4cOraEYcuR2", "Hey, can you hear me?"),
    ),
    (
        {
            "event_id": "event_2324",
            "type": "conversation.item.input_audio_transcription.failed",
            "item_id": "msg_003",
            "content_index": 0,
            "error": {
                "type": "transcription_error",
                "code": "audio_unintelligible",
                "message": "The audio could not be transcribed.",
                "param": None,
            },
        },
        InputTranscriptionFailed(
            "msg_003", "audio_unintelligible", "The audio could not be transcribed."
        ),
    ),
    (
        {
            "event_id": "event_2526",
            "type": "conversation.item.truncated",
            "item_id": "msg_004",
            "content_index": 0,
            "audio_end_ms": 1500,
        },
        ItemTruncated("msg_004", 0, 1500),
    ),
    (
        {
            "event_id": "event_890",
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_event",
                "message": "The 'type' field is missing.",
                "param": None,
                "event_id": "event_567",
            },
        },
        ServerError(
            "invalid_request_error",
            "invalid_event",
            "The 'type' field is missing.",
            "",
            "event_567",
        ),
    ),
    (
        {
            "event_id": "event_5758",
            "type": "rate_limits.updated",
            "rate_limits": [
                {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60},
                {"name": "tokens", "limit": 50000, "remaining": 49950, "reset_seconds": 0.5},
            ],
        },
        RateLimitsUpdated(
            (RateLimit("requests", 1000, 999, 60.0), RateLimit("tokens", 50000, 49950, 0.5))
        ),
    ),
    (
        {
            "event_id": "event_6",
            "type": "response.output_audio_transcript.delta",
            "response_id": "resp_001",
            "item_id": "msg_008",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
        },
        IgnoredServerEvent("response.output_audio_transcript.delta"),
    ),
    (
        {
            "event_id": "event_7",
            "type": "conversation.item.done",
            "previous_item_id": None,
            "item": {
                "id": "msg_1",
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_text", "text": "Caller pressed 5"}],
            },
        },
        IgnoredServerEvent("conversation.item.done"),
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    GA_EVENTS,
    ids=[f"{i}-{raw['type']}" for i, (raw, _) in enumerate(GA_EVENTS)],
)
def test_ga_events_decode(raw: dict[str, Any], expected: ServerEvent) -> None:
    GA_SERVER_EVENT.validate_python(raw)  # the fixture itself is a real GA event
    assert GA.decode(json.dumps(raw)) == expected
    assert GA.decode(json.dumps(raw).encode()) == expected


def test_decode_is_tolerant_of_missing_and_mistyped_optional_fields() -> None:
    assert GA.decode('{"type":"input_audio_buffer.speech_started"}') == SpeechStarted("", 0)
    assert GA.decode(
        '{"type":"input_audio_buffer.speech_stopped","audio_end_ms":"soon","item_id":7}'
    ) == SpeechStopped("", 0)
    assert GA.decode('{"type":"input_audio_buffer.speech_stopped","audio_end_ms":12.0}') == (
        SpeechStopped("", 12)
    )
    assert GA.decode('{"type":"response.done","response":null}') == ResponseDone("", "", None)
    assert GA.decode('{"type":"error","error":{"message":"boom","code":null}}') == ServerError(
        "", "", "boom", "", ""
    )
    assert GA.decode('{"type":"session.updated","session":{"audio":{"input":{}}}}') == (
        SessionUpdated("", "", "")
    )
    assert GA.decode('{"type":"rate_limits.updated","rate_limits":[1,{"name":"x"}]}') == (
        RateLimitsUpdated((RateLimit("x", 0, 0, 0.0),))
    )
    assert GA.decode('{"type":"rate_limits.updated","extra":{"deep":[1,2]}}') == (
        RateLimitsUpdated(())
    )


BETA_EVENTS: list[tuple[dict[str, Any], ServerEvent]] = [
    (
        {
            "event_id": "event_1",
            "type": "session.updated",
            "session": {
                "id": "sess_001",
                "object": "realtime.session",
                "model": "gpt-4o-realtime-preview",
                "modalities": ["audio", "text"],
                "instructions": "Be brief.",
                "voice": "alloy",
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_alaw",
                "input_audio_transcription": None,
                "turn_detection": None,
                "tools": [],
                "tool_choice": "auto",
                "temperature": 0.8,
                "max_response_output_tokens": "inf",
            },
        },
        SessionUpdated("sess_001", "g711_ulaw", "g711_alaw"),
    ),
    (
        {
            "event_id": "event_2",
            "type": "response.audio.delta",
            "response_id": "resp_001",
            "item_id": "msg_008",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(b"\xff" * 160).decode(),
        },
        OutputAudioDelta("resp_001", "msg_008", b"\xff" * 160),
    ),
    (
        {
            "event_id": "event_3",
            "type": "response.audio_transcript.done",
            "response_id": "resp_001",
            "item_id": "msg_008",
            "output_index": 0,
            "content_index": 0,
            "transcript": "Hello!",
        },
        OutputAudioTranscriptDone("resp_001", "msg_008", "Hello!"),
    ),
    (
        {
            "event_id": "event_4",
            "type": "response.text.done",
            "response_id": "resp_001",
            "item_id": "msg_007",
            "output_index": 0,
            "content_index": 0,
            "text": "Sure.",
        },
        OutputTextDone("resp_001", "msg_007", "Sure."),
    ),
    (
        {
            "event_id": "event_5",
            "type": "conversation.item.created",
            "previous_item_id": None,
            "item": {"id": "msg_1", "object": "realtime.item", "type": "message", "role": "user"},
        },
        IgnoredServerEvent("conversation.item.created"),
    ),
    (
        {
            "event_id": "event_6",
            "type": "response.audio.done",
            "response_id": "resp_001",
            "item_id": "msg_008",
            "output_index": 0,
            "content_index": 0,
        },
        IgnoredServerEvent("response.audio.done"),
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), BETA_EVENTS, ids=[raw["type"] for raw, _ in BETA_EVENTS]
)
def test_beta_events_decode_to_the_same_classes(raw: dict[str, Any], expected: ServerEvent) -> None:
    BETA_SERVER_EVENT.validate_python(raw)
    assert BETA.decode(json.dumps(raw)) == expected


def test_beta_codec_also_accepts_ga_names() -> None:
    delta = {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": ""}
    assert BETA.decode(json.dumps(delta)) == OutputAudioDelta("r", "i", b"")


def test_ga_codec_reports_beta_names_as_unknown() -> None:
    message = json.dumps(BETA_EVENTS[1][0])
    assert GA.decode(message) == UnknownServerEvent("response.audio.delta", message)


def test_unknown_type_keeps_the_raw_message() -> None:
    message = '{"type":"response.brand_new_thing","x":1}'
    assert GA.decode(message) == UnknownServerEvent("response.brand_new_thing", message)
    assert GA.decode(message.encode()) == UnknownServerEvent("response.brand_new_thing", message)


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "{",
        b"\xff\xfe\x00garbage",
        "[1, 2]",
        '"session.updated"',
        "null",
        "42",
        "{}",
        '{"type": 5}',
        '{"type": null}',
        '{"type":"response.output_audio.delta","delta":"***not base64***"}',
    ],
)
def test_malformed_messages_raise_remote_protocol_error(message: str | bytes) -> None:
    with pytest.raises(RemoteProtocolError) as raised:
        GA.decode(message)
    assert raised.value.hint == 1007


# ---- outbound ----------------------------------------------------------------------------------


def test_append_is_exact_and_valid() -> None:
    message = GA.input_audio_append(b"\xff\x7f\x00")
    assert message == '{"type":"input_audio_buffer.append","audio":"/38A"}'
    assert json.loads(message) == {"type": "input_audio_buffer.append", "audio": "/38A"}
    GA_CLIENT_EVENT.validate_python(json.loads(message))


def test_client_events_match_the_sdk_types() -> None:
    messages = [
        GA.input_audio_append(ULAW_TONE),
        GA.item_truncate("item_1", 1234, "bridge_2"),
        GA.user_text('Caller pressed "5" — ünïcode', "bridge_3"),
        GA.response_create(None, "bridge_4"),
        GA.response_create("Say: Hello, how can I help?", "bridge_5"),
        GA.response_cancel(None, "bridge_6"),
        GA.response_cancel("resp_1", "bridge_7"),
    ]
    for message in messages:
        GA_CLIENT_EVENT.validate_python(json.loads(message))
    assert json.loads(messages[1]) == {
        "type": "conversation.item.truncate",
        "event_id": "bridge_2",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1234,
    }
    assert json.loads(messages[2])["item"] == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": 'Caller pressed "5" — ünïcode'}],
    }
    assert json.loads(messages[3]) == {"type": "response.create", "event_id": "bridge_4"}
    assert json.loads(messages[4])["response"] == {"instructions": "Say: Hello, how can I help?"}
    assert "response_id" not in json.loads(messages[5])
    assert json.loads(messages[6])["response_id"] == "resp_1"


def test_session_update_requires_a_session_update_event() -> None:
    assert json.loads(GA.session_update({"type": "session.update", "session": {}}, "e")) == {
        "type": "session.update",
        "session": {},
        "event_id": "e",
    }
    with pytest.raises(ValueError, match=r"session\.update"):
        GA.session_update({"type": "response.create"}, "e")
