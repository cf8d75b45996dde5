"""RealtimeSession: readiness, one response at a time, buffering, events, statistics."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeClientEventParam

from bridge.call.events import (
    AddUserText,
    AgentAudio,
    AgentEnded,
    AgentError,
    AgentEvent,
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
from bridge.proto.realtime.session import RealtimeSession, ResponsePhase, SessionPhase

GA_CLIENT_EVENT = pydantic.TypeAdapter(
    RealtimeClientEventParam, config=pydantic.ConfigDict(extra="forbid")
)
SESSION_UPDATE = {
    "type": "session.update",
    "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
}
PCMU = ("audio/pcmu", "audio/pcmu")
FRAME = b"\xff" * 160  # 20 ms of u-law silence


def new_session(
    *, dialect: Dialect = Dialect.GA, formats: tuple[str, str] = PCMU, now: float = 100.0
) -> RealtimeSession:
    return RealtimeSession(
        dialect=dialect,
        session_update=SESSION_UPDATE,
        expected_formats=formats,
        session_timeout_s=10.0,
        now=now,
    )


def message(**fields: Any) -> str:
    return json.dumps(fields)


def ga_session_event(kind: str, fmt_in: str, fmt_out: str, session_id: str = "sess_1") -> str:
    return message(
        type=kind,
        event_id="event_1",
        session={
            "type": "realtime",
            "id": session_id,
            "audio": {
                "input": {"format": {"type": fmt_in}},
                "output": {"format": {"type": fmt_out}, "voice": "marin"},
            },
        },
    )


def created(response_id: str) -> str:
    return message(type="response.created", response={"id": response_id, "status": "in_progress"})


def done(response_id: str, status: str = "completed", usage: Any = None) -> str:
    return message(
        type="response.done", response={"id": response_id, "status": status, "usage": usage}
    )


def error(code: str, text: str = "", event_id: str | None = None) -> str:
    return message(
        type="error",
        event_id="event_err",
        error={
            "type": "invalid_request_error",
            "code": code,
            "message": text,
            "event_id": event_id,
        },
    )


def events(session: RealtimeSession) -> list[AgentEvent]:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def sent(session: RealtimeSession) -> list[dict[str, Any]]:
    messages = session.messages_to_send()
    for text in messages:
        GA_CLIENT_EVENT.validate_python(json.loads(text))
    return [json.loads(text) for text in messages]


def ready_session() -> RealtimeSession:
    session = new_session()
    session.receive_message(ga_session_event("session.created", "audio/pcm", "audio/pcm"), 100.1)
    session.receive_message(ga_session_event("session.updated", *PCMU), 100.2)
    assert events(session) == [AgentReady("sess_1")]
    sent(session)
    return session


def sent_types(session: RealtimeSession) -> list[str]:
    return [event["type"] for event in sent(session)]


# ---- readiness -----------------------------------------------------------------------------------


def test_session_update_is_queued_first_and_once() -> None:
    session = new_session()
    first = session.messages_to_send()
    assert len(first) == 1
    assert json.loads(first[0]) == {**SESSION_UPDATE, "event_id": "bridge_1"}
    assert session.messages_to_send() == []
    assert not session.ready
    assert session.phase is SessionPhase.CONFIGURING


def test_pending_output_and_events_can_be_checked_without_taking_them() -> None:
    session = new_session()
    assert session.has_messages_to_send()
    assert not session.has_events()
    session.messages_to_send()
    assert not session.has_messages_to_send()
    session.receive_message(ga_session_event("session.updated", *PCMU), 100.2)
    assert session.has_events()
    assert not session.has_messages_to_send()
    assert events(session) == [AgentReady("sess_1")]
    assert not session.has_events()
    session.send(SendAudio(FRAME), 100.3)
    assert session.has_messages_to_send()
    assert sent_types(session) == ["input_audio_buffer.append"]
    assert not session.has_messages_to_send()


def test_session_created_alone_is_not_ready_updated_with_formats_is() -> None:
    session = new_session()
    session.receive_message(ga_session_event("session.created", "audio/pcm", "audio/pcm"), 101)
    assert events(session) == []
    assert session.phase is SessionPhase.CONFIGURING
    session.receive_message(ga_session_event("session.updated", *PCMU, session_id="sess_9"), 102)
    assert events(session) == [AgentReady("sess_9")]
    assert session.ready
    assert session.session_id == "sess_9"
    assert session.next_deadline() == math.inf


def test_format_mismatch_ends_with_format_rejected() -> None:
    session = new_session()
    sent(session)
    session.receive_message(ga_session_event("session.updated", "audio/pcmu", "audio/pcm"), 101)
    [ended] = events(session)
    assert isinstance(ended, AgentEnded)
    assert ended.reason is EndReason.MODEL_FORMAT_REJECTED
    assert "'audio/pcm'" in ended.detail
    assert "'audio/pcmu'" in ended.detail
    assert not session.ready
    assert session.phase is SessionPhase.ENDED
    session.send(SendAudio(FRAME), 102)
    session.receive_message(ga_session_event("session.updated", *PCMU), 102)
    assert events(session) == []
    assert session.messages_to_send() == []
    assert session.statistics().commands_dropped == 1


def test_error_before_ready_ends_with_model_error() -> None:
    session = new_session()
    session.receive_message(
        error(
            "beta_api_shape_disabled",
            "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
        ),
        101,
    )
    assert events(session) == [
        AgentEnded(
            EndReason.MODEL_ERROR,
            "beta_api_shape_disabled: The Realtime Beta API is no longer supported. "
            "Please use /v1/realtime for the GA API.",
        )
    ]
    assert session.statistics().server_errors == 1


def test_no_session_updated_in_time_ends_with_connect_failed() -> None:
    session = new_session(now=100.0)
    assert session.next_deadline() == 110.0
    session.handle_timeout(109.9)
    assert events(session) == []
    session.receive_message(ga_session_event("session.created", "audio/pcm", "audio/pcm"), 105)
    session.handle_timeout(110.0)
    assert events(session) == [
        AgentEnded(
            EndReason.MODEL_CONNECT_FAILED, "timed out after 10 s waiting for session.updated"
        )
    ]
    assert session.next_deadline() == math.inf
    session.handle_timeout(200.0)
    assert events(session) == []


def test_commands_before_ready_are_held_in_order_and_audio_is_bounded() -> None:
    session = new_session()
    sent(session)
    chunks = [bytes([i]) * 1600 for i in range(12)]  # 12 x 200 ms = 2.4 s of audio
    session.send(SendAudio(chunks[0]), 100.0)
    session.send(AddUserText("Caller pressed 1"), 100.0)
    for chunk in chunks[1:]:
        session.send(SendAudio(chunk), 100.1)
    session.send(RequestResponse("Greet the caller."), 100.2)
    assert session.messages_to_send() == []
    session.receive_message(ga_session_event("session.updated", *PCMU), 100.3)
    assert events(session) == [AgentReady("sess_1", caller_audio_dropped=3200)]
    out = sent(session)
    assert [event["type"] for event in out] == (
        ["conversation.item.create"] + ["input_audio_buffer.append"] * 10 + ["response.create"]
    )
    # The two oldest chunks went: only the last two seconds are replayed.
    assert [base64.b64decode(event["audio"]) for event in out[1:11]] == chunks[2:]
    assert out[-1]["response"] == {"instructions": "Greet the caller."}
    statistics = session.statistics()
    assert statistics.audio_bytes_dropped_before_ready == 3200
    assert statistics.audio_bytes_sent == 16000


def test_close_before_ready_drops_what_was_held() -> None:
    session = new_session()
    sent(session)
    session.send(SendAudio(FRAME), 100)
    session.send(CloseAgent(), 100)
    assert session.phase is SessionPhase.CLOSED
    session.receive_message(ga_session_event("session.updated", *PCMU), 101)
    assert events(session) == []
    assert session.messages_to_send() == []


# ---- commands --------------------------------------------------------------------------------


def test_commands_become_client_events() -> None:
    session = ready_session()
    session.send(SendAudio(FRAME), 101)
    session.send(SendAudio(b""), 101)
    session.send(TruncateItem("item_7", 1340), 101)
    session.send(TruncateItem("item_8", -5), 101)
    session.send(AddUserText("Caller pressed 5"), 101)
    out = sent(session)
    assert out[0] == {
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(FRAME).decode(),
    }
    assert out[1] == {
        "type": "conversation.item.truncate",
        "event_id": out[1]["event_id"],
        "item_id": "item_7",
        "content_index": 0,
        "audio_end_ms": 1340,
    }
    assert out[2]["audio_end_ms"] == 0
    assert out[3]["item"] == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Caller pressed 5"}],
    }
    assert len(out) == 4
    event_ids = [event["event_id"] for event in out[1:]]
    assert len(set(event_ids)) == 3
    statistics = session.statistics()
    assert statistics.audio_bytes_sent == 160
    assert statistics.truncates_sent == 2


def test_close_agent_sends_nothing_and_later_commands_are_dropped() -> None:
    session = ready_session()
    session.send(CloseAgent(), 101)
    assert session.messages_to_send() == []
    assert session.phase is SessionPhase.CLOSED
    assert not session.ready
    session.send(SendAudio(FRAME), 102)
    session.receive_message(created("resp_1"), 102)
    assert session.messages_to_send() == []
    assert events(session) == []
    assert session.statistics().commands_dropped == 1


# ---- one response at a time ----------------------------------------------------------------------


def test_requests_while_active_are_queued_coalesced_and_sent_after_done() -> None:
    session = ready_session()
    session.send(RequestResponse(), 101)
    [first] = sent(session)
    assert first == {"type": "response.create", "event_id": first["event_id"]}
    assert session.response_phase is ResponsePhase.REQUESTED

    session.send(RequestResponse("First."), 101)
    session.send(RequestResponse(None), 101)
    session.send(RequestResponse("Second."), 101)
    session.send(RequestResponse(None), 101)
    assert sent(session) == []

    session.receive_message(created("resp_1"), 102)
    assert events(session) == [AgentResponseStarted("resp_1")]
    assert sent(session) == []
    session.send(RequestResponse(), 102)
    assert sent(session) == []

    usage = {"total_tokens": 10, "input_tokens": 4, "output_tokens": 6}
    session.receive_message(done("resp_1", usage=usage), 103)
    assert events(session) == [AgentResponseDone("resp_1", "completed", usage)]
    [second] = sent(session)
    assert second["type"] == "response.create"
    assert second["response"] == {"instructions": "Second."}
    assert session.response_phase is ResponsePhase.REQUESTED

    statistics = session.statistics()
    assert statistics.responses_requested == 2
    assert statistics.requests_coalesced == 4


def test_queued_request_keeps_instructions_given_before_a_bare_request() -> None:
    session = ready_session()
    session.send(RequestResponse(), 101)
    session.send(RequestResponse("Say goodbye."), 101)
    session.send(RequestResponse(), 101)
    sent(session)
    session.receive_message(created("resp_1"), 102)
    session.receive_message(done("resp_1"), 103)
    [create] = sent(session)
    assert create["response"] == {"instructions": "Say goodbye."}


def test_unasked_response_blocks_requests_until_done() -> None:
    session = ready_session()
    session.receive_message(created("resp_vad"), 101)  # server VAD answered the caller itself
    assert events(session) == [AgentResponseStarted("resp_vad")]
    assert session.response_phase is ResponsePhase.ACTIVE
    session.send(RequestResponse(), 101)
    assert sent(session) == []
    session.receive_message(done("resp_vad", "cancelled"), 102)
    assert events(session) == [AgentResponseDone("resp_vad", "cancelled", None)]
    assert sent_types(session) == ["response.create"]


def test_done_of_an_untracked_response_does_not_release_the_active_one() -> None:
    session = ready_session()
    session.receive_message(created("resp_1"), 101)
    session.send(RequestResponse(), 101)
    session.receive_message(done("resp_other"), 102)
    assert sent(session) == []
    assert session.response_phase is ResponsePhase.ACTIVE
    session.receive_message(done("resp_1"), 103)
    assert sent_types(session) == ["response.create"]


def test_request_rejected_because_another_response_won_is_sent_again_later() -> None:
    session = ready_session()
    session.send(RequestResponse("Tool result is in."), 101)
    [create] = sent(session)
    # Server VAD started its own response just before ours arrived; we take it for ours...
    session.receive_message(created("resp_vad"), 101.1)
    # ...until the server rejects our response.create.
    session.receive_message(
        error(
            "conversation_already_has_active_response",
            "Conversation already has an active response in progress: resp_vad.",
            event_id=create["event_id"],
        ),
        101.2,
    )
    assert events(session) == [
        AgentResponseStarted("resp_vad"),
        AgentError(
            "conversation_already_has_active_response",
            "Conversation already has an active response in progress: resp_vad.",
        ),
    ]
    assert session.ready
    assert sent(session) == []
    session.receive_message(done("resp_vad"), 102)
    [again] = sent(session)
    assert again["response"] == {"instructions": "Tool result is in."}
    assert session.statistics().requests_requeued == 1


def test_rejected_request_before_created_waits_for_any_done() -> None:
    session = ready_session()
    session.send(RequestResponse(), 101)
    [create] = sent(session)
    session.receive_message(
        error("conversation_already_has_active_response", "busy", event_id=create["event_id"]), 101
    )
    assert session.response_phase is ResponsePhase.ACTIVE
    assert sent(session) == []
    session.receive_message(done("resp_unseen"), 102)
    assert sent_types(session) == ["response.create"]


def test_other_rejection_of_our_request_frees_the_next_one() -> None:
    session = ready_session()
    session.send(RequestResponse(), 101)
    [create] = sent(session)
    session.send(RequestResponse("Next."), 101)
    session.receive_message(
        error("invalid_value", "bad instructions", event_id=create["event_id"]), 101
    )
    assert events(session) == [AgentError("invalid_value", "bad instructions")]
    [following] = sent(session)
    assert following["response"] == {"instructions": "Next."}


def test_cancel_only_while_a_response_is_requested_or_active() -> None:
    session = ready_session()
    session.send(CancelResponse(), 101)
    assert sent(session) == []
    session.send(RequestResponse(), 101)
    sent(session)
    session.send(CancelResponse(), 101)
    [cancel_requested] = sent(session)
    assert cancel_requested == {"type": "response.cancel", "event_id": cancel_requested["event_id"]}
    session.receive_message(created("resp_1"), 102)
    session.send(CancelResponse(), 102)
    [cancel_active] = sent(session)
    assert cancel_active["response_id"] == "resp_1"
    session.receive_message(done("resp_1", "cancelled"), 103)
    session.send(CancelResponse(), 103)
    assert sent(session) == []
    assert session.statistics().cancels_sent == 2


# ---- server events -------------------------------------------------------------------------------


def test_server_events_become_agent_events() -> None:
    session = ready_session()
    audio = bytes(range(256))
    for raw in [
        message(type="input_audio_buffer.speech_started", audio_start_ms=1000, item_id="msg_3"),
        message(type="input_audio_buffer.speech_stopped", audio_end_ms=2000, item_id="msg_3"),
        message(type="input_audio_buffer.committed", item_id="msg_3", previous_item_id=None),
        message(
            type="conversation.item.input_audio_transcription.completed",
            item_id="msg_3",
            content_index=0,
            transcript="Where is my order?",
        ),
        created("resp_1"),
        message(
            type="response.output_audio.delta",
            response_id="resp_1",
            item_id="msg_4",
            output_index=0,
            content_index=0,
            delta=base64.b64encode(audio).decode(),
        ),
        message(type="response.output_audio_transcript.delta", delta="Let"),
        message(
            type="response.output_audio_transcript.done",
            response_id="resp_1",
            item_id="msg_4",
            transcript="Let me check.",
        ),
        message(
            type="response.output_text.done", response_id="resp_1", item_id="msg_5", text="Text."
        ),
        message(type="conversation.item.truncated", item_id="msg_4", audio_end_ms=10),
        message(
            type="conversation.item.input_audio_transcription.failed",
            item_id="msg_6",
            error={"code": "audio_unintelligible", "message": "?"},
        ),
        message(
            type="rate_limits.updated",
            rate_limits=[{"name": "tokens", "limit": 5, "remaining": 4, "reset_seconds": 1}],
        ),
        done("resp_1", usage={"total_tokens": 3}),
    ]:
        session.receive_message(raw, 101)
    assert events(session) == [
        AgentSpeechStarted("msg_3", 1000),
        AgentSpeechStopped("msg_3", 2000),
        AgentTranscript("caller", "msg_3", "Where is my order?"),
        AgentResponseStarted("resp_1"),
        AgentAudio("resp_1", "msg_4", audio),
        AgentTranscript("model", "msg_4", "Let me check."),
        AgentTranscript("model", "msg_5", "Text."),
        AgentResponseDone("resp_1", "completed", {"total_tokens": 3}),
    ]
    statistics = session.statistics()
    assert statistics.audio_bytes_received == 256
    assert statistics.truncations_confirmed == 1
    assert statistics.transcription_failures == 1
    assert [limit.name for limit in statistics.rate_limits] == ["tokens"]
    assert statistics.unknown_events == 0


def test_errors_after_ready_are_not_fatal_except_session_expired() -> None:
    session = ready_session()
    session.receive_message(error("response_cancel_not_active", "Nothing to cancel."), 101)
    session.receive_message(
        error("conversation_already_has_active_response", "busy", event_id="not_ours"), 101
    )
    session.receive_message(message(type="error", error={"type": "server_error"}), 101)
    assert events(session) == [
        AgentError("response_cancel_not_active", "Nothing to cancel."),
        AgentError("conversation_already_has_active_response", "busy"),
        AgentError("server_error", ""),
    ]
    assert session.ready
    session.receive_message(
        error("session_expired", "Your session hit the maximum duration of 60 minutes."), 3700
    )
    assert events(session) == [
        AgentEnded(
            EndReason.MODEL_CLOSED,
            "session_expired: Your session hit the maximum duration of 60 minutes.",
        )
    ]
    assert session.phase is SessionPhase.ENDED
    session.receive_message(created("resp_late"), 3701)
    assert events(session) == []


def test_later_session_updated_with_other_formats_ends_the_session() -> None:
    session = ready_session()
    session.receive_message(ga_session_event("session.updated", *PCMU), 101)
    assert events(session) == []
    session.receive_message(message(type="session.updated", session={"id": "sess_1"}), 101)
    assert events(session) == []
    session.receive_message(ga_session_event("session.updated", "audio/pcmu", "audio/pcm"), 102)
    [ended] = events(session)
    assert isinstance(ended, AgentEnded)
    assert ended.reason is EndReason.MODEL_FORMAT_REJECTED


def test_unknown_and_malformed_messages_are_counted_and_the_call_goes_on() -> None:
    session = ready_session()
    for raw in [
        "not json",
        "[]",
        '{"type": 1}',
        '{"type":"response.output_audio.delta","delta":"@@"}',
    ]:
        session.receive_message(raw, 101)
    session.receive_message(message(type="brand.new"), 101)
    session.receive_message(message(type="brand.new"), 101)
    session.receive_message(message(type="other.new"), 101)
    assert session.new_unknown_event_types() == ["brand.new", "other.new"]
    assert session.new_unknown_event_types() == []
    session.receive_message(message(type="brand.new"), 101)
    session.receive_message(message(type="third.new"), 101)
    assert session.new_unknown_event_types() == ["third.new"]
    assert events(session) == []
    assert session.ready
    statistics = session.statistics()
    assert statistics.malformed_messages == 4
    assert statistics.unknown_events == 5
    assert statistics.unknown_event_types == ("brand.new", "other.new", "third.new")
    session.receive_message(created("resp_1"), 102)
    assert events(session) == [AgentResponseStarted("resp_1")]


def test_unknown_type_memory_is_bounded() -> None:
    session = ready_session()
    for number in range(500):
        session.receive_message(message(type=f"x.{number}"), 101)
    assert len(session.statistics().unknown_event_types) == 64
    assert session.statistics().unknown_events == 500


def test_statistics_count_messages_both_ways() -> None:
    session = ready_session()  # session.update out; session.created + session.updated in
    session.send(SendAudio(FRAME), 101)
    session.send(RequestResponse(), 101)
    session.receive_message(created("r"), 101)
    session.receive_message(done("r"), 101)
    statistics = session.statistics()
    assert statistics.messages_sent == 3
    assert statistics.messages_received == 4
    assert statistics.responses_requested == 1
    assert statistics.responses_created == 1
    assert statistics.responses_done == 1


def test_beta_dialect_reads_beta_names() -> None:
    session = new_session(dialect=Dialect.BETA, formats=("g711_alaw", "g711_alaw"))
    session.receive_message(
        message(
            type="session.updated",
            session={
                "id": "sess_b",
                "input_audio_format": "g711_alaw",
                "output_audio_format": "g711_alaw",
            },
        ),
        101,
    )
    assert events(session) == [AgentReady("sess_b")]
    session.receive_message(
        message(type="response.audio.delta", response_id="r", item_id="i", delta="1dXV"), 102
    )
    session.receive_message(
        message(
            type="response.audio_transcript.done", response_id="r", item_id="i", transcript="Hi"
        ),
        102,
    )
    assert events(session) == [
        AgentAudio("r", "i", b"\xd5\xd5\xd5"),
        AgentTranscript("model", "i", "Hi"),
    ]


def test_beta_dialect_rejects_ga_formats() -> None:
    session = new_session(dialect=Dialect.BETA, formats=("g711_ulaw", "g711_ulaw"))
    session.receive_message(ga_session_event("session.updated", *PCMU), 101)
    [ended] = events(session)
    assert isinstance(ended, AgentEnded)
    assert ended.reason is EndReason.MODEL_FORMAT_REJECTED


# ---- the one-response rule under any interleaving ----------------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.one_of(st.none(), st.sampled_from(["A", "B"]))),
        st.tuples(st.just("server_created"), st.none()),
        st.tuples(st.just("server_done"), st.none()),
        st.tuples(st.just("reject_busy"), st.none()),
        st.tuples(st.just("reject_other"), st.none()),
        st.tuples(st.just("cancel"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_never_two_response_creates_in_flight_and_no_request_is_lost(
    operations: list[tuple[str, str | None]],
) -> None:
    session = ready_session()
    in_flight: list[str] = []  # event ids of response.create the server has not settled
    server_response = ""  # the response the simulated server is running
    counter = 0
    issued = 0

    def collect() -> None:
        for event in sent(session):
            if event["type"] == "response.create":
                in_flight.append(event["event_id"])
                assert len(in_flight) <= 1, "two response.create in flight"

    def settle_created() -> None:
        nonlocal server_response, counter
        counter += 1
        server_response = f"resp_{counter}"
        session.receive_message(created(server_response), 101)

    def settle_done() -> None:
        nonlocal server_response
        session.receive_message(done(server_response or "resp_x"), 101)
        server_response = ""
        in_flight.clear()

    for operation, argument in operations:
        if operation == "request":
            issued += 1
            session.send(RequestResponse(argument), 101)
        elif operation == "cancel":
            session.send(CancelResponse(), 101)
        elif operation == "server_created" and not server_response:
            settle_created()
        elif operation == "server_done" and server_response:
            settle_done()
        elif operation == "reject_busy" and in_flight and server_response:
            session.receive_message(
                error("conversation_already_has_active_response", "busy", in_flight.pop()), 101
            )
        elif operation == "reject_other" and in_flight and not server_response:
            session.receive_message(error("invalid_value", "no", in_flight.pop()), 101)
        collect()

    # Let the server run every response to its end; every request must have been served.
    for _ in range(issued + 2):
        if server_response:
            settle_done()
        elif in_flight:
            settle_created()
        collect()
    assert session.response_phase is ResponsePhase.IDLE
    statistics = session.statistics()
    assert issued == (
        statistics.responses_requested
        - statistics.requests_requeued
        + statistics.requests_coalesced
    )
