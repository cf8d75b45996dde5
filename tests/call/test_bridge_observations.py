"""What the CallBridge observes for metrics and the journal, driven with explicit `now`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.call.bridge import CallBridge, CallBridgeSettings
from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentAudio,
    AgentFunctionCall,
    AgentReady,
    AgentResponseDone,
    AgentResponseStarted,
    AgentSpeechStarted,
    AgentSpeechStopped,
    AgentTranscript,
    AudioPlayed,
    CallerAudio,
    CallerDtmf,
    CancelTool,
    ClearAudio,
    Codec,
    EndReason,
    PlayAudio,
    RunTool,
    TelephonyEnded,
    ToolFinished,
    ToolOutcome,
    TruncateItem,
)
from bridge.call.observations import (
    BargeIn,
    DigitPressed,
    ModelConnected,
    ToolCallEnded,
    TranscriptAdded,
    TurnLatency,
    UsageReported,
)
from bridge.config import ToolConfig, ToolKind
from bridge.media import g711

FRAME = g711.FRAME_BYTES
LOOKUP = ToolConfig(name="lookup", kind=ToolKind.HTTP, url="http://127.0.0.1:9/x", timeout_s=5)


def make_bridge(*tools: ToolConfig, **settings: Any) -> CallBridge:
    info = CallInfo(call_id="c-1", ingress="sip", codec=Codec.PCMU)
    return CallBridge(
        info=info,
        settings=CallBridgeSettings(
            model_codec=Codec.PCMU, tools={tool.name: tool for tool in tools}, **settings
        ),
        now=100.0,
    )


def caller_speaks(bridge: CallBridge, frames: int, now: float) -> None:
    """`frames` 20 ms frames of caller audio, one event each (all handled at `now`)."""
    for _ in range(frames):
        bridge.handle(CallerAudio(b"\x10" * FRAME), now)


def tool_call(name: str, call_id: str, response: str = "r1") -> AgentFunctionCall:
    return AgentFunctionCall(response, f"item_{call_id}", call_id, name, json.dumps({"q": 1}))


# ---- model connect -------------------------------------------------------------------------


def test_model_connected_once_when_the_agent_is_ready() -> None:
    bridge = make_bridge()
    assert bridge.pop_observations() == []
    bridge.handle(AgentReady("sess_1"), 101.25)
    bridge.handle(AgentReady("sess_1"), 102.0)
    (observed,) = bridge.pop_observations()
    assert isinstance(observed, ModelConnected)
    assert observed.seconds == pytest.approx(1.25)
    assert observed.session_id == "sess_1"
    assert bridge.record()["latency"]["model_connect_ms"] == 1250
    # popped means gone
    assert bridge.pop_observations() == []


# ---- turn latency --------------------------------------------------------------------------


def test_turn_latency_is_caller_time_since_speech_end_plus_wait_for_the_first_reply_frame() -> None:
    bridge = make_bridge()
    caller_speaks(bridge, 100, 102.0)  # 2000 ms of caller audio passed on
    # The model says the caller stopped at 1500 ms: 0.5 s of caller time ago.
    assert bridge.handle(AgentSpeechStopped("item_u1", 1500), 102.0) == []
    bridge.handle(AgentResponseStarted("r1"), 102.1)
    # Less than a frame: nothing goes to the caller yet, so nothing is measured.
    assert bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * 100), 102.7) == []
    assert bridge.pop_observations() == []
    sent = bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * 100), 102.8)
    assert sent == [PlayAudio("item_a1", b"\x10" * FRAME)]
    (observed,) = bridge.pop_observations()
    assert isinstance(observed, TurnLatency)
    assert observed.seconds == pytest.approx(0.5 + 0.8)
    # Later frames of the same reply measure nothing more.
    bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * FRAME * 5), 103.0)
    assert bridge.pop_observations() == []
    assert bridge.record()["latency"]["turns_ms"] == [1300]


def test_turn_latency_counts_only_caller_audio_that_reached_the_model() -> None:
    bridge = make_bridge(input_batch_frames=5)
    caller_speaks(bridge, 12, 101.0)  # 10 frames sent in two batches, 2 waiting in the batch
    bridge.caller_audio_dropped(5 * FRAME)  # one batch never reached the model
    # The model heard 5 frames (100 ms); it says the caller stopped at 40 ms.
    bridge.handle(AgentSpeechStopped("item_u1", 40), 101.0)
    bridge.handle(AgentResponseStarted("r1"), 101.0)
    bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * FRAME), 101.0)
    (observed,) = bridge.pop_observations()
    assert isinstance(observed, TurnLatency)
    assert observed.seconds == pytest.approx(0.06)


def test_a_position_ahead_of_the_audio_passed_on_gives_zero_not_a_negative_latency() -> None:
    bridge = make_bridge()
    caller_speaks(bridge, 10, 101.0)  # 200 ms
    bridge.handle(AgentSpeechStopped("item_u1", 900), 101.0)
    bridge.handle(AgentResponseStarted("r1"), 101.0)
    bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * FRAME), 101.0)
    assert bridge.pop_observations() == [TurnLatency(0.0)]


def test_the_caller_speaking_again_cancels_the_pending_turn_measurement() -> None:
    bridge = make_bridge(barge_in=False)
    caller_speaks(bridge, 50, 101.0)
    bridge.handle(AgentSpeechStopped("item_u1", 900), 101.0)
    bridge.handle(AgentSpeechStarted("item_u2", 950), 101.1)
    bridge.handle(AgentResponseStarted("r1"), 101.2)
    bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * FRAME), 101.3)
    assert bridge.pop_observations() == []
    assert bridge.record()["latency"]["turns_ms"] == []


def test_turn_latency_waits_for_a_reply_that_started_after_the_turn() -> None:
    bridge = make_bridge(barge_in=False)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * FRAME * 50), 100.0)
    caller_speaks(bridge, 100, 102.0)  # the caller talks over it; no barge-in
    bridge.handle(AgentSpeechStopped("item_u1", 1500), 102.0)
    # r1 goes on: this is not the answer to what the caller just said
    bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * FRAME), 102.05)
    bridge.handle(AgentResponseDone("r1", "completed"), 102.1)
    assert bridge.pop_observations() == []
    bridge.handle(AgentResponseStarted("r2"), 102.6)
    bridge.handle(AgentAudio("r2", "item_a2", b"\x10" * FRAME), 102.9)
    (observed,) = bridge.pop_observations()
    assert isinstance(observed, TurnLatency)
    assert observed.seconds == pytest.approx(0.5 + 0.9)


# ---- barge-in --------------------------------------------------------------------------------


def test_barge_in_latency_from_speech_start_after_the_vad_padding() -> None:
    bridge = make_bridge(vad_prefix_padding_ms=300)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * FRAME * 100), 100.0)
    bridge.handle(AudioPlayed("item_a1", FRAME * 60), 101.2)  # 1200 ms heard
    caller_speaks(bridge, 150, 103.0)  # 3000 ms of caller audio passed on
    # VAD puts speech_started 300 ms before the speech: the caller started at 2700 ms, 0.3 s ago
    commands = bridge.handle(AgentSpeechStarted("item_u1", 2400), 103.0)
    assert commands == [ClearAudio(), TruncateItem("item_a1", 1200)]
    (observed,) = bridge.pop_observations()
    assert isinstance(observed, BargeIn)
    assert observed.seconds == pytest.approx(0.3)
    assert observed.heard_ms == {"item_a1": 1200}
    assert bridge.record()["latency"]["barge_ins_ms"] == [300]


def test_no_barge_in_observed_when_nothing_was_playing() -> None:
    bridge = make_bridge(vad_prefix_padding_ms=300)
    caller_speaks(bridge, 50, 101.0)
    assert bridge.handle(AgentSpeechStarted("item_u1", 500), 101.0) == []
    assert bridge.pop_observations() == []
    assert bridge.record()["latency"]["barge_ins_ms"] == []


# ---- transcript, digits, usage ---------------------------------------------------------------


def test_transcript_lines_and_digits_with_their_time_in_the_call() -> None:
    bridge = make_bridge(dtmf_flush_ms=1000)
    bridge.handle(AgentTranscript("user", "item_u1", "my account number"), 101.5)
    bridge.handle(CallerDtmf("4"), 102.0)
    bridge.handle(CallerDtmf("2"), 102.25)
    assert bridge.pop_observations() == [
        TranscriptAdded(1.5, "user", "item_u1", "my account number"),
        DigitPressed(2.0, "4"),
        DigitPressed(2.25, "2"),
    ]


def test_usage_reported_per_response_also_after_the_end() -> None:
    bridge = make_bridge()
    usage = {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10}
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed", usage), 100.5)
    bridge.handle(AgentResponseStarted("r2"), 101.0)
    bridge.handle(AgentResponseDone("r2", "completed", None), 101.5)
    assert bridge.pop_observations() == [UsageReported(usage)]
    bridge.handle(AgentResponseStarted("r3"), 102.0)
    bridge.handle(TelephonyEnded(EndReason.CALLER_HANGUP), 102.1)
    bridge.handle(AgentResponseDone("r3", "cancelled", usage), 102.2)
    bridge.handle(AgentTranscript("assistant", "item_a3", "Goodbye"), 102.3)
    assert bridge.pop_observations() == [
        UsageReported(usage),
        TranscriptAdded(2.3, "assistant", "item_a3", "Goodbye"),
    ]
    assert bridge.record()["usage"]["input_tokens"] == 40


# ---- tool calls ------------------------------------------------------------------------------


def test_each_tool_call_observed_once_when_it_ends_also_a_timed_out_one() -> None:
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(tool_call("lookup", "call_1"), 100.1) == [
        RunTool("call_1", "lookup", {"q": 1})
    ]
    bridge.handle(tool_call("lookup", "call_2"), 100.1)
    bridge.handle(tool_call("made_up", "call_3"), 100.1)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.2)
    # the invented tool ended at once
    (unknown,) = bridge.pop_observations()
    assert isinstance(unknown, ToolCallEnded)
    assert (unknown.name, unknown.outcome) == ("made_up", "unknown_tool")
    assert unknown.entry["call_id"] == "call_3"

    bridge.handle(ToolFinished("call_1", ToolOutcome.OK, '{"status":"shipped"}'), 101.0)
    (done,) = bridge.pop_observations()
    assert isinstance(done, ToolCallEnded)
    assert (done.name, done.outcome) == ("lookup", "ok")
    assert done.entry["output"] == '{"status":"shipped"}'
    assert done.entry["duration_s"] == pytest.approx(0.9)

    assert bridge.handle_timeout(105.1)[0] == CancelTool("call_2")
    (timed_out,) = bridge.pop_observations()
    assert isinstance(timed_out, ToolCallEnded)
    assert (timed_out.name, timed_out.outcome) == ("lookup", "timeout")
    # its late result changes nothing and is not observed again
    bridge.handle(ToolFinished("call_2", ToolOutcome.OK, "{}"), 106.0)
    assert bridge.pop_observations() == []
    outcomes = [entry["outcome"] for entry in bridge.record()["tool_calls"]]
    assert outcomes == ["ok", "timeout", "unknown_tool"]


def test_a_tool_still_running_at_the_end_of_the_call_is_observed_as_cancelled() -> None:
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(tool_call("lookup", "call_1"), 100.1)
    bridge.handle(TelephonyEnded(EndReason.CALLER_HANGUP), 101.0)
    assert bridge.record()["tool_calls"][0]["outcome"] == "cancelled"
    observed = [o for o in bridge.pop_observations() if isinstance(o, ToolCallEnded)]
    assert [(o.name, o.outcome) for o in observed] == [("lookup", "cancelled")]
