from __future__ import annotations

import pytest

from bridge.call.bridge import CallBridge, CallBridgeSettings
from bridge.call.context import CallInfo
from bridge.call.events import (
    AddUserText,
    AgentAudio,
    AgentEnded,
    AgentReady,
    AgentResponseDone,
    AgentResponseStarted,
    AgentSpeechStarted,
    AgentTranscript,
    AnswerCall,
    AudioPlayed,
    CallerAudio,
    CallerDtmf,
    ClearAudio,
    CloseAgent,
    Codec,
    EndReason,
    HangUp,
    PlayAudio,
    RequestResponse,
    SendAudio,
    TelephonyEnded,
    TruncateItem,
)
from bridge.media import g711


def make_bridge(codec: Codec = Codec.PCMU, **settings: object) -> CallBridge:
    info = CallInfo(call_id="c-1", ingress="test", codec=codec)
    merged: dict[str, object] = {"model_codec": codec, **settings}
    return CallBridge(info=info, settings=CallBridgeSettings(**merged), now=100.0)  # type: ignore[arg-type]


def frames(n: int, value: int = 0x10) -> bytes:
    return bytes([value]) * (g711.FRAME_BYTES * n)


def test_caller_audio_is_batched_and_passed_through_unchanged() -> None:
    bridge = make_bridge(input_batch_frames=3)
    audio = bytes(range(256)) * 2  # 512 bytes: 3.2 frames
    sent = []
    for start in range(0, len(audio), 160):
        sent += bridge.handle(CallerAudio(audio[start : start + 160]), 100.0)
    assert sent == [SendAudio(audio[:480])]


def test_caller_audio_transcoded_when_the_model_uses_the_other_law() -> None:
    bridge = make_bridge(Codec.PCMA, model_codec=Codec.PCMU)
    payload = bytes(range(160))
    (command,) = bridge.handle(CallerAudio(payload), 100.0)
    assert command == SendAudio(g711.encode(Codec.PCMU, g711.decode(Codec.PCMA, payload)))


def test_model_audio_cut_into_whole_frames_and_tail_padded_at_response_end() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    delta = bytes(range(200))
    assert bridge.handle(AgentAudio("r1", "i1", delta), 100.0) == [PlayAudio("i1", delta[:160])]
    assert bridge.handle(AgentAudio("r1", "i1", delta), 100.0) == [
        PlayAudio("i1", (delta[160:] + delta)[:160])
    ]
    done = bridge.handle(AgentResponseDone("r1", "completed"), 100.0)
    tail = (delta[160:] + delta)[160:]
    assert done == [PlayAudio("i1", tail + b"\xff" * (160 - len(tail)))]


def test_barge_in_clears_and_truncates_at_confirmed_playout() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "i1", frames(50)), 100.0)  # 1 s received and sent
    bridge.handle(AudioPlayed("i1", 160 * 17), 100.4)  # 340 ms confirmed
    commands = bridge.handle(AgentSpeechStarted("u1", 900), 100.5)
    assert commands == [ClearAudio(), TruncateItem("i1", 340)]
    # Late audio of the interrupted response never reaches the caller.
    assert bridge.handle(AgentAudio("r1", "i1", frames(5)), 100.5) == []
    assert bridge.handle(AgentResponseDone("r1", "cancelled"), 100.6) == []
    # A second speech start has nothing left to cut.
    assert bridge.handle(AgentSpeechStarted("u2", 1900), 101.0) == []
    assert bridge.statistics().barge_ins == 1


def test_barge_in_with_nothing_heard_clears_without_truncating() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "i1", frames(10)), 100.0)
    assert bridge.handle(AgentSpeechStarted("u1", 0), 100.01) == [ClearAudio()]


def test_truncate_never_exceeds_received_audio() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "i1", b"\x10" * 100), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.0)  # padded to 160 bytes
    bridge.handle(AgentResponseStarted("r2"), 100.1)
    bridge.handle(AgentAudio("r2", "i2", frames(1)), 100.1)
    bridge.handle(AudioPlayed("i1", 160), 100.1)  # the padded frame was played
    commands = bridge.handle(AgentSpeechStarted("u1", 0), 100.2)
    # i1 fully heard, nothing left unheard of it; i2 unheard and nothing of it played.
    assert commands == [ClearAudio()]


def test_barge_in_ignored_when_disabled() -> None:
    bridge = make_bridge(barge_in=False)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "i1", frames(10)), 100.0)
    assert bridge.handle(AgentSpeechStarted("u1", 0), 100.1) == []


def test_speech_during_a_response_without_audio_yet_drops_its_late_audio() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(AgentSpeechStarted("u1", 0), 100.0) == []
    assert bridge.handle(AgentAudio("r1", "i1", frames(3)), 100.1) == []
    assert bridge.statistics().dropped_model_bytes == 480


def test_dtmf_gathered_until_pause_then_sent_with_a_response_request() -> None:
    bridge = make_bridge(dtmf_flush_ms=1000)
    assert bridge.handle(CallerDtmf("1"), 100.0) == []
    assert bridge.handle(CallerDtmf("2"), 100.5) == []
    assert bridge.next_deadline() == pytest.approx(101.5)
    assert bridge.handle_timeout(101.0) == []
    assert bridge.handle_timeout(101.5) == [
        AddUserText("The caller pressed 1, 2 on the phone keypad."),
        RequestResponse(),
    ]
    assert bridge.handle(CallerDtmf("5"), 102.0) == []
    assert bridge.handle(CallerDtmf("#"), 102.1) == [
        AddUserText("The caller pressed 5, # on the phone keypad."),
        RequestResponse(),
    ]
    assert bridge.record()["dtmf"] == "125#"


def test_call_answered_then_greeting_requested_once_when_the_model_is_ready() -> None:
    bridge = make_bridge(greeting="Hello, this is Example Corp.")
    answer, command = bridge.handle(AgentReady("sess_1"), 100.0)
    assert answer == AnswerCall()
    assert isinstance(command, RequestResponse)
    assert command.instructions is not None
    assert command.instructions.endswith("Hello, this is Example Corp.")
    assert bridge.handle(AgentReady("sess_1"), 100.0) == []
    assert make_bridge().handle(AgentReady("s"), 100.0) == [AnswerCall()]


def test_either_side_ending_ends_the_other() -> None:
    bridge = make_bridge()
    assert bridge.handle(TelephonyEnded(EndReason.CALLER_HANGUP), 103.0) == [CloseAgent()]
    assert bridge.ended
    assert bridge.handle(AgentEnded(EndReason.MODEL_CLOSED), 103.0) == []
    record = bridge.record()
    assert record["end_reason"] == "caller_hangup"
    assert record["duration_s"] == 3.0

    bridge = make_bridge()
    assert bridge.handle(AgentEnded(EndReason.MODEL_ERROR, "boom"), 101.0) == [
        HangUp(EndReason.MODEL_ERROR)
    ]


def test_maximum_duration_hangs_up() -> None:
    bridge = make_bridge(max_duration_s=60.0)
    assert bridge.next_deadline() == 160.0
    assert bridge.handle_timeout(159.9) == []
    assert bridge.handle_timeout(160.0) == [HangUp(EndReason.MAX_DURATION), CloseAgent()]
    assert bridge.record()["end_reason"] == "max_duration"


def test_record_holds_transcript_usage_and_heard_ms() -> None:
    bridge = make_bridge()
    bridge.handle(AgentTranscript("caller", "u1", "hi"), 101.0)
    bridge.handle(AgentResponseStarted("r1"), 101.0)
    bridge.handle(AgentAudio("r1", "i1", frames(10)), 101.0)
    bridge.handle(AgentTranscript("model", "i1", "hello there"), 101.2)
    bridge.handle(AudioPlayed("i1", 800), 101.3)
    bridge.handle(AgentSpeechStarted("u2", 0), 101.3)
    usage = {"total_tokens": 10, "input_token_details": {"audio_tokens": 4}}
    bridge.handle(AgentResponseDone("r1", "cancelled", usage), 101.4)
    bridge.handle(AgentResponseDone("r2", "completed", usage), 102.0)
    bridge.handle(TelephonyEnded(EndReason.CALLER_HANGUP), 104.0)
    record = bridge.record()
    assert record["transcript"] == [
        {"at_s": 1.0, "role": "caller", "item_id": "u1", "text": "hi"},
        {"at_s": 1.2, "role": "model", "item_id": "i1", "text": "hello there", "heard_ms": 100},
    ]
    assert record["usage"] == {"total_tokens": 20, "input_token_details": {"audio_tokens": 8}}
    assert record["codec"] == "PCMU"
    assert record["statistics"]["truncations"] == 1


def test_truncate_capped_at_the_audio_the_model_sent() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "i1", b"\x10" * 100), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.0)  # padded to one 160-byte frame
    bridge.handle(AudioPlayed("i1", 150), 100.1)  # padding partly played: not model audio
    assert bridge.handle(AgentSpeechStarted("u1", 0), 100.2) == [
        ClearAudio(),
        TruncateItem("i1", 12),
    ]


def test_confirmations_never_exceed_what_was_sent() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "i1", frames(2)), 100.0)
    bridge.handle(AudioPlayed("i1", 160), 100.1)
    bridge.handle(AgentSpeechStarted("u1", 0), 100.2)  # cut at 20 ms
    bridge.handle(AudioPlayed("i1", 320), 100.3)  # a stale confirmation after the clear
    assert bridge.statistics().played_bytes == 160
    assert bridge.unheard_items() == []


def test_an_interrupted_response_leaves_no_tail_to_play() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "i1", b"\x10" * 200), 100.0)  # one frame sent, 40 bytes kept
    bridge.handle(AgentSpeechStarted("u1", 0), 100.01)
    assert bridge.handle(AgentResponseDone("r1", "cancelled"), 100.02) == []


def test_record_marks_a_reply_cut_before_anything_was_heard() -> None:
    bridge = make_bridge()
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(AgentAudio("r1", "i1", frames(5)), 100.0)
    bridge.handle(AgentTranscript("model", "i1", "a long answer"), 100.0)
    assert bridge.handle(AgentSpeechStarted("u1", 0), 100.01) == [ClearAudio()]
    (line,) = bridge.record()["transcript"]
    assert line["heard_ms"] == 0


def test_usage_and_transcripts_arriving_after_the_end_are_kept() -> None:
    bridge = make_bridge()
    bridge.handle(TelephonyEnded(EndReason.CALLER_HANGUP), 101.0)
    bridge.handle(AgentTranscript("caller", "u9", "bye"), 101.1)
    bridge.handle(AgentResponseDone("r9", "cancelled", {"total_tokens": 7}), 101.2)
    assert bridge.handle(CallerAudio(frames(1)), 101.3) == []
    record = bridge.record()
    assert record["usage"] == {"total_tokens": 7}
    assert record["transcript"][0]["text"] == "bye"
    assert record["duration_s"] == 1.0
