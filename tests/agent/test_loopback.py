"""The loopback model core: fed real G.711 audio and JSON, checked event by event and byte by byte.

Every server event the model emits is also validated against the openai-python Realtime types
(GA, or beta for the beta dialect), so the shapes stay those the real service sends.
"""

from __future__ import annotations

import array
import base64
import copy
import json
import math
import random
import sys
from collections.abc import Iterable
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pydantic
import pytest
from openai.types.beta.realtime.realtime_server_event import (
    RealtimeServerEvent as BetaServerEvent,
)
from openai.types.realtime.realtime_server_event import RealtimeServerEvent as GaServerEvent

from bridge.agent.loopback import AudioFormat, Dialect, LoopbackModel
from bridge.call.events import Codec
from bridge.media import g711

GA_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(GaServerEvent)
BETA_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(BetaServerEvent)
# Events the beta schema in openai-python never listed; the beta dialect does not emit them.
GA_ONLY_EVENTS = {"input_audio_buffer.timeout_triggered", "conversation.item.added"}

FORMAT_OF_CODEC = {Codec.PCMU: AudioFormat.PCMU, Codec.PCMA: AudioFormat.PCMA}


def sine(codec: Codec, duration_ms: int, *, frequency: float = 440, amplitude: int = 8000) -> bytes:
    count = duration_ms * g711.BYTES_PER_MS
    step = 2 * math.pi * frequency / g711.SAMPLE_RATE
    samples = array.array("h", (int(amplitude * math.sin(step * n)) for n in range(count)))
    if sys.byteorder == "big":
        samples.byteswap()
    return g711.encode(codec, samples.tobytes())


def quiet(codec: Codec, duration_ms: int) -> bytes:
    return g711.silence(codec, duration_ms * g711.BYTES_PER_MS)


class Harness:
    """Drives one LoopbackModel the way the websocket adapter does, and keeps every event."""

    def __init__(self, *, dialect: str = "ga", seed: int = 7, **options: Any) -> None:
        self.model = LoopbackModel(
            session_id="sess_test", rng=random.Random(seed), dialect=dialect, **options
        )
        self.dialect = Dialect(dialect)
        self.now = 0.0
        self.log: list[dict[str, Any]] = []

    def send(self, event: dict[str, Any] | str | bytes) -> list[dict[str, Any]]:
        message = event if isinstance(event, str | bytes) else json.dumps(event)
        self.model.receive_message(message, self.now)
        return self.take()

    def take(self) -> list[dict[str, Any]]:
        events = [json.loads(message) for message in self.model.messages_to_send()]
        for event in events:
            if self.dialect is Dialect.GA:
                GA_EVENTS.validate_python(event)
            else:
                assert event["type"] not in GA_ONLY_EVENTS
                BETA_EVENTS.validate_python(event)
        self.log += events
        return events

    def configure(
        self, codec_in: Codec, codec_out: Codec | None = None, **input_options: Any
    ) -> list[dict[str, Any]]:
        codec_out = codec_in if codec_out is None else codec_out
        audio_in: dict[str, Any] = {"format": {"type": FORMAT_OF_CODEC[codec_in].value}}
        audio_in.update(input_options)
        return self.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": audio_in,
                        "output": {"format": {"type": FORMAT_OF_CODEC[codec_out].value}},
                    },
                },
            }
        )

    def stream(self, audio: bytes, *, chunk: int = 160) -> list[dict[str, Any]]:
        """Append in `chunk`-byte pieces, the clock following the audio as a live caller's does."""
        events = []
        for offset in range(0, len(audio), chunk):
            piece = audio[offset : offset + chunk]
            events += self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}
            )
            self.now += len(piece) / g711.BYTES_PER_MS / 1000
        return events

    def run_until_idle(self, limit: float = 60.0) -> list[dict[str, Any]]:
        """Let wall time pass deadline by deadline until nothing is scheduled."""
        events: list[dict[str, Any]] = []
        for _ in range(10_000):
            deadline = self.model.next_deadline()
            if deadline > limit:
                return events
            self.now = max(self.now, deadline)
            self.model.handle_timeout(self.now)
            events += self.take()
        raise AssertionError(f"the model keeps a timer due at {deadline} after handling it")


def types(events: Iterable[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def first(events: Iterable[dict[str, Any]], event_type: str) -> dict[str, Any]:
    return next(event for event in events if event["type"] == event_type)


def reply_audio(
    events: Iterable[dict[str, Any]], delta_type: str = "response.output_audio.delta"
) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == delta_type)


def error_codes(events: Iterable[dict[str, Any]]) -> list[str]:
    return [event["error"]["code"] for event in events if event["type"] == "error"]


# The turn used throughout: 400 ms quiet, 1 s of tone, 700 ms quiet. With the default
# prefix_padding_ms 300 and silence_duration_ms 500 the turn is [100 ms, 1400 ms).
LEAD_MS, TONE_MS, TAIL_MS = 400, 1000, 700
TURN_START_MS, TURN_END_MS = 100, 1400


def caller_turn(codec: Codec) -> bytes:
    return quiet(codec, LEAD_MS) + sine(codec, TONE_MS) + quiet(codec, TAIL_MS)


RESPONSE_EVENTS_GA = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
RESPONSE_END_GA = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


# ---- session ------------------------------------------------------------------------------------


def test_session_created_announces_the_service_defaults_pcm_24k() -> None:
    harness = Harness()
    (created,) = harness.take()
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["id"] == "sess_test"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert harness.model.statistics().input_format == "audio/pcm"


def test_session_update_merges_and_echoes_the_full_effective_session() -> None:
    harness = Harness()
    harness.take()
    update = {
        "type": "session.update",
        "event_id": "cfg-1",
        "session": {
            "type": "realtime",
            "instructions": "Be brief.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                },
                "output": {"format": {"type": "audio/pcma"}, "voice": "cedar"},
            },
        },
    }
    (updated,) = harness.send(update)
    assert updated["type"] == "session.updated"
    session = updated["session"]
    assert session["instructions"] == "Be brief."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcma"},
        "voice": "cedar",
        "speed": 1.0,
    }
    # Missing turn-detection keys come back with their defaults, as the service shows them.
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 300,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["tools"] == [] and session["model"] == "gpt-realtime"
    stats = harness.model.statistics()
    assert stats.session_updates == 1
    assert stats.last_session_update == update
    assert (stats.input_format, stats.output_format) == ("audio/pcmu", "audio/pcma")


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"audio": {}}, "missing_required_parameter", "session.type"),
        ({"type": "transcription"}, "invalid_value", "session.type"),
        (
            {"type": "realtime", "input_audio_format": "g711_ulaw"},
            "beta_api_shape_disabled",
            "session.input_audio_format",
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/opus"}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {"type": "realtime", "audio": {"output": {"format": "g711_ulaw"}}},
            "invalid_type",
            "session.audio.output.format",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}},
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        ({"type": "realtime", "temperature_x": 1}, "unknown_parameter", "session.temperature_x"),
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
            "invalid_value",
            "session.audio.input.turn_detection.type",
        ),
        ({"type": "realtime", "output_modalities": ["audio", "text"]}, "invalid_value", None),
        (
            {
                "type": "realtime",
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": None}}
                },
            },
            "invalid_type",
            "session.audio.input.turn_detection.silence_duration_ms",
        ),
    ],
)
def test_session_update_rejections_leave_the_session_unchanged(
    session: dict[str, Any], code: str, param: str | None
) -> None:
    harness = Harness()
    harness.take()
    events = harness.send({"type": "session.update", "event_id": "bad-1", "session": session})
    assert types(events) == ["error"]
    error = events[0]["error"]
    assert (error["type"], error["code"], error["event_id"]) == (
        "invalid_request_error",
        code,
        "bad-1",
    )
    if param is not None:
        assert error["param"] == param
    stats = harness.model.statistics()
    assert stats.input_format == "audio/pcm" and stats.error_codes == [code]
    # The session still works: a valid update is applied afterwards.
    assert types(harness.configure(Codec.PCMU)) == ["session.updated"]


def test_beta_handshake_on_ga_is_refused_like_the_real_service() -> None:
    harness = Harness(beta_handshake=True)
    (error,) = harness.take()
    assert error["error"]["code"] == "beta_api_shape_disabled"
    assert harness.model.close_requested == (4000, "beta_api_shape_disabled")
    assert harness.send({"type": "response.create"}) == []
    assert harness.model.next_deadline() == math.inf


# ---- voice activity and the echo reply --------------------------------------------------------


@pytest.mark.parametrize("codec", [Codec.PCMU, Codec.PCMA])
def test_caller_turn_is_detected_in_audio_time_and_echoed_byte_for_byte(codec: Codec) -> None:
    harness = Harness()
    harness.take()
    harness.configure(codec, transcription={"model": "gpt-4o-mini-transcribe"})
    audio = caller_turn(codec)

    # Frame by frame, so each event can be tied to the audio position that caused it.
    seen_at: dict[str, int] = {}
    for frame_index in range(len(audio) // g711.FRAME_BYTES):
        frame = audio[frame_index * g711.FRAME_BYTES : (frame_index + 1) * g711.FRAME_BYTES]
        for event in harness.stream(frame):
            seen_at.setdefault(event["type"], (frame_index + 1) * 20)

    # Speech starts with the first tone frame, stops once 500 ms of quiet followed it.
    assert seen_at["input_audio_buffer.speech_started"] == LEAD_MS + 20
    assert seen_at["input_audio_buffer.speech_stopped"] == LEAD_MS + TONE_MS + 500
    started = first(harness.log, "input_audio_buffer.speech_started")
    stopped = first(harness.log, "input_audio_buffer.speech_stopped")
    assert started["audio_start_ms"] == TURN_START_MS
    assert stopped["audio_end_ms"] == TURN_END_MS
    assert started["item_id"] == stopped["item_id"]

    events = harness.log[2:] + harness.run_until_idle()
    assert types(events) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
        *RESPONSE_EVENTS_GA,
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        *["response.output_audio.delta"] * 12,
        *RESPONSE_END_GA,
    ]
    committed = first(events, "input_audio_buffer.committed")
    assert committed["item_id"] == started["item_id"]
    transcription = first(events, "conversation.item.input_audio_transcription.completed")
    assert transcription["transcript"] == "[caller audio 1.30 s]"

    expected = audio[TURN_START_MS * 8 : TURN_END_MS * 8]
    assert reply_audio(events) == expected
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert {len(base64.b64decode(d["delta"])) for d in deltas} == {800}  # 100 ms each
    done = first(events, "response.done")["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [
        {"type": "output_audio", "transcript": "You said [1.30 s of audio]."}
    ]
    usage = done["usage"]
    assert usage["input_token_details"]["audio_tokens"] == 13  # 1300 ms at 100 ms a token
    assert usage["output_token_details"]["audio_tokens"] == 26  # 1300 ms at 50 ms a token
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    stats = harness.model.statistics()
    assert (stats.turns, stats.responses, stats.responses_completed) == (1, 1, 1)
    assert stats.audio_ms_received == LEAD_MS + TONE_MS + TAIL_MS
    assert stats.audio_bytes_received == len(audio)


def test_reply_is_transcoded_when_output_law_differs() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMU, Codec.PCMA)
    audio = caller_turn(Codec.PCMU)
    events = harness.stream(audio) + harness.run_until_idle()
    expected = g711.transcode(Codec.PCMU, Codec.PCMA, audio[TURN_START_MS * 8 : TURN_END_MS * 8])
    assert reply_audio(events) == expected


def test_chunking_of_appends_does_not_change_the_outcome() -> None:
    outcomes = []
    for chunk in (160, 37, 4000):
        harness = Harness()
        harness.take()
        harness.configure(Codec.PCMU)
        events = harness.stream(caller_turn(Codec.PCMU), chunk=chunk) + harness.run_until_idle()
        outcomes.append(
            (
                first(events, "input_audio_buffer.speech_started")["audio_start_ms"],
                first(events, "input_audio_buffer.speech_stopped")["audio_end_ms"],
                reply_audio(events),
            )
        )
    assert outcomes[0][:2] == (TURN_START_MS, TURN_END_MS)
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_threshold_and_silence_duration_follow_turn_detection() -> None:
    harness = Harness()
    harness.take()
    # 0.95 -> RMS 950: a quiet tone (RMS about 700) is not speech, a loud one (5600) is.
    harness.configure(
        Codec.PCMU,
        turn_detection={"type": "server_vad", "threshold": 0.95, "silence_duration_ms": 200},
    )
    events = harness.stream(sine(Codec.PCMU, 500, amplitude=1000) + quiet(Codec.PCMU, 500))
    assert "input_audio_buffer.speech_started" not in types(events)
    events = harness.stream(sine(Codec.PCMU, 300) + quiet(Codec.PCMU, 260))
    assert first(events, "input_audio_buffer.speech_started")["audio_start_ms"] == 700
    assert first(events, "input_audio_buffer.speech_stopped")["audio_end_ms"] == 1300


def test_no_response_when_create_response_is_false() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMU, turn_detection={"type": "server_vad", "create_response": False})
    events = harness.stream(caller_turn(Codec.PCMU))
    assert "input_audio_buffer.committed" in types(events)
    assert "response.created" not in types(events)
    assert harness.model.next_deadline() == math.inf


def test_manual_commit_without_turn_detection() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMA, turn_detection=None)
    events = harness.stream(sine(Codec.PCMA, 60))
    assert events == []
    (error,) = harness.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "c1"
    harness.stream(sine(Codec.PCMA, 240))
    events = harness.send({"type": "input_audio_buffer.commit"})
    assert types(events) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert harness.model.statistics().turns == 1
    harness.stream(sine(Codec.PCMA, 200))
    assert types(harness.send({"type": "input_audio_buffer.clear"})) == [
        "input_audio_buffer.cleared"
    ]
    (error,) = harness.send({"type": "input_audio_buffer.commit"})
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"


def test_turning_vad_off_keeps_the_partial_frame() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMU, transcription={"model": "whisper-1"})
    harness.stream(quiet(Codec.PCMU, 30))  # one 20 ms frame analysed, 10 ms still pending
    harness.configure(Codec.PCMU, turn_detection=None)
    harness.stream(sine(Codec.PCMU, 100))
    events = harness.send({"type": "input_audio_buffer.commit"})
    transcript = first(events, "conversation.item.input_audio_transcription.completed")
    assert transcript["transcript"] == "[caller audio 0.13 s]"


# ---- client-requested responses ----------------------------------------------------------------


def test_greeting_is_transcribed_as_its_instructions_with_one_beep_per_word() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMU)
    events = (
        harness.send({"type": "response.create", "response": {"instructions": "Say: Hello"}})
        + harness.run_until_idle()
    )
    assert first(events, "response.output_audio_transcript.delta")["delta"] == "Say: Hello"
    done = first(events, "response.output_audio_transcript.done")
    assert done["transcript"] == "Say: Hello"
    audio = reply_audio(events)
    assert len(audio) == 2 * 250 * 8  # two words: 200 ms beep + 50 ms pause each
    for word in range(2):
        beep = audio[word * 2000 : word * 2000 + 1600]
        pause = audio[word * 2000 + 1600 : (word + 1) * 2000]
        assert g711.rms(Codec.PCMU, beep) > 5000
        assert pause == quiet(Codec.PCMU, 50)
    assert first(events, "response.done")["response"]["status"] == "completed"


def test_response_without_instructions_speaks_the_last_user_text_for_one_second() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMA)
    events = harness.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Caller pressed 5"}],
            },
        }
    )
    assert types(events) == ["conversation.item.added", "conversation.item.done"]
    assert events[1]["item"]["content"] == [{"type": "input_text", "text": "Caller pressed 5"}]
    events = harness.send({"type": "response.create"}) + harness.run_until_idle()
    assert (
        first(events, "response.output_audio_transcript.done")["transcript"] == "Caller pressed 5"
    )
    assert len(reply_audio(events)) == 1000 * 8
    assert harness.model.statistics().user_texts == ["Caller pressed 5"]


def test_second_response_create_while_one_is_active_is_refused() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMU)
    created = harness.send({"type": "response.create", "response": {"instructions": "One two"}})
    response_id = first(created, "response.created")["response"]["id"]
    events = harness.send({"type": "response.create", "event_id": "again"})
    assert types(events) == ["error"]
    assert events[0]["error"]["code"] == "conversation_already_has_active_response"
    assert events[0]["error"]["event_id"] == "again"
    assert response_id in events[0]["error"]["message"]
    # Once the first response is done a new one is accepted.
    assert first(harness.run_until_idle(), "response.done")["response"]["status"] == "completed"
    assert "response.created" in types(harness.send({"type": "response.create"}))


def test_client_cancel_ends_the_response_and_drops_unsent_audio() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMU)
    events = harness.send({"type": "response.create", "response": {"instructions": "a b c d e f"}})
    assert len(reply_audio(events)) == 800  # only the first 100 ms is due at once
    harness.now += 0.05  # two more deltas become due at 4x real time
    events = harness.send({"type": "response.cancel"})
    assert types(events) == [
        "response.output_audio.delta",
        "response.output_audio.delta",
        *RESPONSE_END_GA,
    ]
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    assert done["usage"]["output_token_details"]["audio_tokens"] == 6  # 300 ms sent
    assert harness.run_until_idle() == []
    (error,) = harness.send({"type": "response.cancel"})
    assert error["error"]["code"] == "response_cancel_not_active"
    stats = harness.model.statistics()
    assert (stats.responses, stats.responses_completed, stats.cancellations) == (1, 0, 1)


@pytest.mark.parametrize("interrupt", [True, False])
def test_caller_speech_interrupts_an_active_response(interrupt: bool) -> None:
    harness = Harness()
    harness.take()
    harness.configure(
        Codec.PCMU, turn_detection={"type": "server_vad", "interrupt_response": interrupt}
    )
    harness.send({"type": "response.create", "response": {"instructions": "one two three four"}})
    events = harness.stream(sine(Codec.PCMU, 40))
    if interrupt:
        assert types(events)[0] == "input_audio_buffer.speech_started"
        done = first(events, "response.done")["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "turn_detected"
        assert types(events)[-1] == "response.done"
    else:
        assert "response.done" not in types(events)
        assert "input_audio_buffer.speech_started" in types(events)


def test_turn_ending_during_an_active_response_is_answered_after_it() -> None:
    harness = Harness()
    harness.take()
    harness.configure(
        Codec.PCMU, turn_detection={"type": "server_vad", "interrupt_response": False}
    )
    harness.send({"type": "response.create", "response": {"instructions": " ".join("w" * 40)}})
    harness.stream(caller_turn(Codec.PCMU))
    events = harness.run_until_idle()
    responses = [e["response"] for e in events if e["type"] == "response.done"]
    assert [r["status"] for r in responses] == ["completed", "completed"]
    assert responses[1]["output"][0]["content"][0]["transcript"] == "You said [1.30 s of audio]."


# ---- truncation -------------------------------------------------------------------------------


def _answered_turn(harness: Harness) -> tuple[str, str]:
    harness.take()
    harness.configure(Codec.PCMU)
    events = harness.stream(caller_turn(Codec.PCMU)) + harness.run_until_idle()
    user_item = first(events, "input_audio_buffer.committed")["item_id"]
    assistant_item = first(events, "response.output_item.done")["item"]["id"]
    return user_item, assistant_item


def test_truncate_within_the_heard_audio_is_confirmed_and_recorded() -> None:
    harness = Harness()
    _, item_id = _answered_turn(harness)
    events = harness.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 500,
        }
    )
    assert events == [
        {
            "type": "conversation.item.truncated",
            "event_id": events[0]["event_id"],
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 500,
        }
    ]
    assert harness.model.statistics().truncations == [(item_id, 500)]
    # After a truncation the item is that much shorter.
    (error,) = harness.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 600,
        }
    )
    assert error["error"]["message"] == "Audio content of 500ms is already shorter than 600ms"


def test_truncate_errors_match_the_service() -> None:
    harness = Harness()
    user_item, item_id = _answered_turn(harness)
    (too_long,) = harness.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 1400,
        }
    )
    assert too_long["error"]["code"] == "invalid_value"
    assert too_long["error"]["message"] == "Audio content of 1300ms is already shorter than 1400ms"
    (unknown,) = harness.send(
        {
            "type": "conversation.item.truncate",
            "item_id": "item_nope",
            "content_index": 0,
            "audio_end_ms": 0,
        }
    )
    assert "not found" in unknown["error"]["message"]
    (user,) = harness.send(
        {
            "type": "conversation.item.truncate",
            "item_id": user_item,
            "content_index": 0,
            "audio_end_ms": 0,
        }
    )
    assert user["error"]["code"] == "unsupported_content_type"
    assert harness.model.statistics().truncations == []


# ---- robustness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "invalid_event"),
        ("[1, 2]", "invalid_event"),
        ('{"event_id": "x"}', "invalid_event"),
        ('{"type": "response.fly"}', "invalid_event"),
        (b'{"type": "response.create"}', "invalid_event"),
        ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_value"),
        ('{"type": "input_audio_buffer.append"}', "missing_required_parameter"),
        ('{"type": "session.update", "session": 3}', "invalid_type"),
        (
            '{"type": "conversation.item.create", "item": {"type": "message", "role": "bot"}}',
            "invalid_value",
        ),
        ('{"type": "response.create", "response": {"instructions": 5}}', "invalid_type"),
        ('{"type": "conversation.item.create", "item": {"type": "function_call"}}', "invalid_type"),
    ],
)
def test_malformed_messages_become_error_events(message: str | bytes, code: str) -> None:
    harness = Harness()
    harness.take()
    events = harness.send(message)
    assert types(events) == ["error"]
    assert events[0]["error"]["code"] == code
    assert events[0]["error"]["type"] == "invalid_request_error"
    assert harness.model.statistics().errors_sent == 1
    assert types(harness.configure(Codec.PCMU)) == ["session.updated"]


@hypothesis.given(st.text(max_size=200) | st.binary(max_size=200))
@hypothesis.settings(max_examples=200, deadline=None)
def test_arbitrary_input_never_raises(message: str | bytes) -> None:
    model = LoopbackModel(session_id="sess_fuzz", rng=random.Random(1))
    model.messages_to_send()
    model.receive_message(message, 0.0)
    for event in model.messages_to_send():
        GA_EVENTS.validate_python(json.loads(event))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 70_000)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
# Valid events of every kind the model handles; the fuzzer breaks one field of one of them.
VALID_EVENTS: list[dict[str, Any]] = [
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "x",
            "model": "gpt-realtime",
            "tools": [
                {
                    "type": "function",
                    "name": "f",
                    "description": "d",
                    "parameters": {"type": "object"},
                }
            ],
            "tool_choice": {"type": "function", "name": "f"},
            "max_output_tokens": 100,
            "tracing": {"workflow_name": "w", "metadata": {}},
            "truncation": {"type": "retention_ratio", "retention_ratio": 0.5},
            "include": ["item.input_audio_transcription.logprobs"],
            "prompt": {"id": "p", "version": "1", "variables": {}},
            "reasoning": {"effort": "low"},
            "parallel_tool_calls": True,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "whisper-1", "language": "en", "keywords": ["k"]},
                    "noise_reduction": {"type": "near_field"},
                    "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
            },
        },
    },
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "idle_timeout_ms": 5000,
                        "create_response": True,
                        "interrupt_response": True,
                    }
                }
            },
        },
    },
    {
        "type": "session.update",
        "session": {
            "modalities": ["audio", "text"],
            "voice": "alloy",
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_alaw",
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "input_audio_noise_reduction": {"type": "far_field"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5},
            "speed": 1.0,
            "instructions": "x",
            "model": "gpt-4o-realtime-preview",
            "tools": [{"type": "function", "name": "f", "parameters": {}}],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
            "tracing": "auto",
        },
    },
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(320)).decode()},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {
        "type": "conversation.item.create",
        "previous_item_id": "root",
        "item": {
            "id": "item_a",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "c", "output": "{}"},
    },
    {
        "type": "conversation.item.truncate",
        "item_id": "item_a",
        "content_index": 0,
        "audio_end_ms": 0,
    },
    {"type": "conversation.item.delete", "item_id": "item_a"},
    {
        "type": "response.create",
        "response": {"instructions": "one two", "output_modalities": ["audio"], "metadata": {}},
    },
    {"type": "response.cancel", "response_id": "resp_x"},
    # Appended, so the indices above stay put: the rarer GA shapes the model also echoes.
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "tools": [
                {
                    "type": "mcp",
                    "server_label": "crm",
                    "server_url": "https://mcp.example/",
                    "headers": {"x-key": "v"},
                    "require_approval": "never",
                    "allowed_tools": ["lookup"],
                }
            ],
            "tool_choice": {"type": "mcp", "server_label": "crm", "name": "lookup"},
            "truncation": {
                "type": "retention_ratio",
                "retention_ratio": 0.5,
                "token_limits": {"post_instructions": 1000},
            },
            "prompt": {
                "id": "p",
                "variables": {
                    "name": "Ada",
                    "note": {"type": "input_text", "text": "hi"},
                    "photo": {"type": "input_image", "detail": "auto", "image_url": "u"},
                    "doc": {"type": "input_file", "file_id": "f", "detail": "low"},
                },
            },
            "audio": {
                "input": {"transcription": {"model": "whisper-1", "delay": "low"}},
                "output": {"voice": {"id": "voice_1"}},
            },
        },
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_audio", "audio": "AAAA", "transcript": "hi"},
                {"type": "input_text", "text": "there"},
            ],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hello"}],
        },
    },
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += _paths(child, (*prefix, index))
    return paths


@st.composite
def broken_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(VALID_EVENTS)))
    path = draw(st.sampled_from([p for p in _paths(event) if p != ("type",)] or [("extra",)]))
    target: Any = event
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = draw(JSON_VALUES)
    return event


# Found by Hypothesis: the caller starts speaking while a reply plays (interrupt_response false),
# the reply completes and armed the idle timer, which never fired while the caller spoke, yet
# next_deadline() kept reporting it: the adapter would have spun on handle_timeout forever.
IDLE_TIMER_ARMED_DURING_SPEECH = [
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {
                        "type": "server_vad",
                        "idle_timeout_ms": 5000,
                        "interrupt_response": False,
                    },
                }
            },
        },
    },
    {"type": "response.create", "response": {"instructions": "one two"}},
    # Zero bytes are full scale in u-law: speech starts while the reply is still being sent.
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(320)).decode()},
]
# Found by Hypothesis: the beta session echoed model '0', which the beta schema's enum rejects.
BETA_UPDATE_WITH_UNLISTED_MODEL = [
    {
        "type": "session.update",
        "session": {**VALID_EVENTS[2]["session"], "model": "0"},
    }
]


@hypothesis.given(
    st.lists(st.sampled_from(VALID_EVENTS) | broken_events(), min_size=1, max_size=6),
    st.sampled_from(["ga", "beta"]),
)
@hypothesis.example(events=IDLE_TIMER_ARMED_DURING_SPEECH, dialect="ga")
@hypothesis.example(events=BETA_UPDATE_WITH_UNLISTED_MODEL, dialect="beta")
@hypothesis.settings(max_examples=500, deadline=None)
def test_broken_events_never_raise_and_replies_stay_well_formed(
    events: list[dict[str, Any]], dialect: str
) -> None:
    harness = Harness(dialect=dialect)
    harness.take()
    for event in events:
        harness.send(event)
        harness.now += 0.1
    harness.run_until_idle()


def test_same_seed_and_input_give_identical_messages() -> None:
    runs = []
    for _ in range(2):
        harness = Harness(seed=3)
        harness.take()
        harness.configure(Codec.PCMA)
        harness.stream(caller_turn(Codec.PCMA))
        harness.run_until_idle()
        runs.append(harness.log)
    assert runs[0] == runs[1]


# ---- defaults, dialects, idle timeout, text ------------------------------------------------------


def test_client_that_never_sets_formats_gets_pcm_24k_audio() -> None:
    harness = Harness()
    harness.take()
    events = harness.send({"type": "response.create"}) + harness.run_until_idle()
    audio = reply_audio(events)
    assert len(audio) == 48_000  # 1 s of 16-bit samples at 24 kHz, not 8000 G.711 bytes
    response = first(events, "response.created")["response"]
    assert response["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}


def test_beta_dialect_speaks_the_beta_shape() -> None:
    harness = Harness(dialect="beta")
    (created,) = harness.take()
    assert created["session"]["input_audio_format"] == "pcm16"
    (error,) = harness.send({"type": "session.update", "session": {"type": "realtime"}})
    assert error["error"]["code"] == "unknown_parameter"
    (updated,) = harness.send(
        {
            "type": "session.update",
            "session": {
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_alaw",
                "input_audio_transcription": {"model": "whisper-1"},
            },
        }
    )
    assert updated["session"]["output_audio_format"] == "g711_alaw"
    audio = caller_turn(Codec.PCMU)
    events = harness.stream(audio) + harness.run_until_idle()
    assert types(events)[:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert "conversation.item.added" not in types(events)
    assert "response.output_audio.delta" not in types(events)
    expected = g711.transcode(Codec.PCMU, Codec.PCMA, audio[TURN_START_MS * 8 : TURN_END_MS * 8])
    assert reply_audio(events, "response.audio.delta") == expected
    transcript = first(events, "response.audio_transcript.done")["transcript"]
    assert transcript == "You said [1.30 s of audio]."
    done = first(events, "response.done")["response"]
    assert done["output"][0]["content"] == [{"type": "audio", "transcript": transcript}]


def test_idle_timeout_prompts_the_caller_after_the_reply_has_played() -> None:
    harness = Harness()
    harness.take()
    harness.configure(Codec.PCMU, turn_detection={"type": "server_vad", "idle_timeout_ms": 5000})
    start = harness.now
    events = harness.send({"type": "response.create", "response": {"instructions": "Hi"}})
    events += harness.run_until_idle(limit=start + 0.3)
    assert types(events)[-1] == "response.done"
    # The 250 ms reply has played by start + 0.25 s; five seconds later the model asks.
    assert harness.model.next_deadline() == pytest.approx(start + 0.25 + 5.0)
    events = harness.run_until_idle(limit=start + 6.0)
    assert types(events)[:4] == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert first(events, "response.output_audio_transcript.done")["transcript"] == (
        "Are you still there?"
    )


def test_text_only_session_answers_in_text() -> None:
    harness = Harness()
    harness.take()
    harness.send(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
    )
    events = harness.send({"type": "response.create", "response": {"instructions": "Hello"}})
    assert "response.output_audio.delta" not in types(events)
    assert first(events, "response.output_text.done")["text"] == "Hello"
    assert first(events, "response.done")["response"]["output_modalities"] == ["text"]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_an_empty_model_name_is_refused(dialect: str) -> None:
    # Found by Hypothesis: the beta session echoed model "" which the SDK types reject.
    harness = Harness(dialect=dialect)
    harness.take()
    session: dict[str, Any] = {"model": ""}
    if dialect == "ga":
        session["type"] = "realtime"
    events = harness.send({"type": "session.update", "session": session})
    assert error_codes(events) == ["invalid_value"]


def test_the_beta_session_refuses_a_model_its_schema_does_not_list() -> None:
    harness = Harness(dialect="beta")
    harness.take()
    (error,) = harness.send(BETA_UPDATE_WITH_UNLISTED_MODEL[0])
    assert error["error"]["code"] == "invalid_value"
    assert error["error"]["param"] == "session.model"
    assert harness.model.statistics().input_format == "audio/pcm"
    (updated,) = harness.send(
        {"type": "session.update", "session": {"model": "gpt-4o-realtime-preview-2024-12-17"}}
    )
    assert updated["session"]["model"] == "gpt-4o-realtime-preview-2024-12-17"


def test_idle_timer_waits_while_the_caller_speaks_over_the_reply() -> None:
    harness = Harness()
    harness.take()
    harness.configure(
        Codec.PCMU,
        turn_detection={"type": "server_vad", "idle_timeout_ms": 5000, "interrupt_response": False},
    )
    harness.send({"type": "response.create", "response": {"instructions": "Hi"}})
    # The caller talks over the whole 250 ms reply, which is not interrupted and completes.
    events = harness.stream(sine(Codec.PCMU, 400))
    assert types(events)[0] == "input_audio_buffer.speech_started"
    assert first(events, "response.done")["response"]["status"] == "completed"
    # Nobody is silent yet, so no idle deadline is due (one that is never handled would spin).
    assert harness.model.next_deadline() == math.inf
    assert harness.run_until_idle(limit=harness.now + 30) == []
    # Once the caller's turn has been answered and that reply has played, the timer runs again.
    events = harness.stream(quiet(Codec.PCMU, 600)) + harness.run_until_idle(limit=harness.now + 3)
    turn_reply = first(events, "response.created")["response"]["id"]
    assert first(events, "response.done")["response"]["id"] == turn_reply
    assert math.isfinite(harness.model.next_deadline())
    events = harness.run_until_idle(limit=harness.now + 30)
    assert types(events)[0] == "input_audio_buffer.timeout_triggered"


def _session(dialect: str, **fields: Any) -> dict[str, Any]:
    if dialect == "ga":
        fields = {"type": "realtime", **fields}
    return {"type": "session.update", "session": fields}


def _message(role: str, *content: dict[str, Any]) -> dict[str, Any]:
    item = {"type": "message", "role": role, "content": list(content)}
    return {"type": "conversation.item.create", "item": item}


# Client objects the model echoes (in session.updated or the conversation.item events) are
# checked field by field: these passed a shallow check before and came back in a shape the SDK
# types reject. Now each is refused with the error the service gives.
@pytest.mark.parametrize(
    ("dialect", "event", "code", "param"),
    [
        ("beta", _session("beta", voice={"id": "voice_1"}), "invalid_type", "session.voice"),
        (
            "beta",
            _session("beta", tools=[{"type": "mcp", "server_label": "s"}]),
            "invalid_value",
            "session.tools[0].type",
        ),
        (
            "ga",
            _session("ga", audio={"input": {"transcription": {"delay": "soon"}}}),
            "invalid_value",
            "session.audio.input.transcription.delay",
        ),
        (
            "ga",
            _session(
                "ga",
                truncation={"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": 5},
            ),
            "invalid_type",
            "session.truncation.token_limits",
        ),
        (
            "ga",
            _session(
                "ga",
                truncation={
                    "type": "retention_ratio",
                    "retention_ratio": 0.5,
                    "token_limits": {"post_instructions": "many"},
                },
            ),
            "invalid_type",
            "session.truncation.token_limits.post_instructions",
        ),
        (
            "ga",
            _session("ga", tools=[{"type": "mcp", "server_label": "s", "headers": 5}]),
            "invalid_type",
            "session.tools[0].headers",
        ),
        (
            "ga",
            _session("ga", tools=[{"type": "function", "name": "f", "strict": True}]),
            "unknown_parameter",
            "session.tools[0].strict",
        ),
        (
            "ga",
            _session("ga", tool_choice={"type": "mcp", "server_label": "s", "name": 5}),
            "invalid_type",
            "session.tool_choice.name",
        ),
        (
            "ga",
            _session("ga", reasoning={"effort": "low", "summary": "auto"}),
            "unknown_parameter",
            "session.reasoning.summary",
        ),
        (
            "ga",
            _session("ga", prompt={"id": "p", "variables": {"a": {"type": "input_text"}}}),
            "missing_required_parameter",
            "session.prompt.variables.a.text",
        ),
        (
            "ga",
            _session("ga", prompt={"id": "p", "variables": {"a": {"type": "input_image"}}}),
            "missing_required_parameter",
            "session.prompt.variables.a.detail",
        ),
        (
            "ga",
            _session("ga", prompt={"id": "p", "label": "x"}),
            "unknown_parameter",
            "session.prompt.label",
        ),
        (
            "ga",
            _message("user", {"type": "input_audio", "audio": 5}),
            "invalid_type",
            "item.content[0].audio",
        ),
        (
            "ga",
            _message("user", {"type": "input_text", "text": "a", "transcript": 5}),
            "unknown_parameter",
            "item.content[0].transcript",
        ),
        (
            "ga",
            _message("assistant", {"type": "text", "text": "a"}),
            "invalid_value",
            "item.content[0].type",
        ),
        (
            "beta",
            _message("assistant", {"type": "output_text", "text": "a"}),
            "invalid_value",
            "item.content[0].type",
        ),
    ],
)
def test_echoed_client_objects_are_checked_field_by_field(
    dialect: str, event: dict[str, Any], code: str, param: str
) -> None:
    harness = Harness(dialect=dialect)
    harness.take()
    (error,) = harness.send(event)
    assert (error["type"], error["error"]["code"], error["error"]["param"]) == (
        "error",
        code,
        param,
    )


@pytest.mark.parametrize(
    ("dialect", "event"),
    [
        ("ga", _session("ga", audio={"input": {"transcription": {"delay": "low"}}})),
        (
            "ga",
            _session(
                "ga",
                truncation={
                    "type": "retention_ratio",
                    "retention_ratio": 0.5,
                    "token_limits": {"post_instructions": 1000},
                },
            ),
        ),
        (
            "ga",
            _session(
                "ga",
                tools=[
                    {
                        "type": "mcp",
                        "server_label": "crm",
                        "server_url": "https://mcp.example/",
                        "headers": {"x-key": "v"},
                        "require_approval": "never",
                        "allowed_tools": ["lookup"],
                    }
                ],
                tool_choice={"type": "mcp", "server_label": "crm", "name": "lookup"},
            ),
        ),
        (
            "ga",
            _session(
                "ga",
                prompt={
                    "id": "p",
                    "version": None,
                    "variables": {
                        "name": "Ada",
                        "note": {"type": "input_text", "text": "hi"},
                        "photo": {"type": "input_image", "detail": "auto", "image_url": "u"},
                        "doc": {"type": "input_file", "file_id": "f"},
                    },
                },
            ),
        ),
        ("ga", _message("user", {"type": "input_audio", "transcript": "hello"})),
        ("ga", _message("assistant", {"type": "output_text", "text": "hello"})),
        ("beta", _message("assistant", {"type": "text", "text": "hello"})),
        ("beta", _session("beta", tools=[{"name": "f", "parameters": {"type": "object"}}])),
    ],
)
def test_well_formed_client_objects_are_accepted_and_echo_in_the_sdk_shape(
    dialect: str, event: dict[str, Any]
) -> None:
    harness = Harness(dialect=dialect)
    harness.take()
    events = harness.send(event)  # The harness validates every event against the SDK types.
    assert error_codes(events) == []


def test_a_custom_voice_is_named_by_its_id_in_responses() -> None:
    # The session shows the voice object; a response's voice field is a plain string.
    harness = Harness()
    harness.take()
    (updated,) = harness.send(_session("ga", audio={"output": {"voice": {"id": "voice_1234"}}}))
    assert updated["session"]["audio"]["output"]["voice"] == {"id": "voice_1234"}
    events = harness.send({"type": "response.create"})
    response = first(events, "response.created")["response"]
    assert response["audio"]["output"]["voice"] == "voice_1234"
