"""The CallBridge's function-call flow: batching, built-ins, timeouts, holding, records."""

from __future__ import annotations

import json
from typing import Any

from bridge.call.bridge import PLAYOUT_GRACE_S, CallBridge, CallBridgeSettings
from bridge.call.context import CallInfo
from bridge.call.events import (
    AddFunctionOutput,
    AgentAudio,
    AgentFunctionCall,
    AgentResponseDone,
    AgentResponseStarted,
    AgentSpeechStarted,
    AudioPlayed,
    CancelTool,
    Capability,
    ClearAudio,
    CloseAgent,
    Codec,
    EndReason,
    HangUp,
    PlayAudio,
    RequestResponse,
    RunTool,
    SendDtmf,
    ToolFinished,
    ToolOutcome,
    TransferCall,
    TransferResult,
)
from bridge.call.tools import error_output, function_definition, function_definitions
from bridge.config import Holding, ToolConfig, ToolKind
from bridge.media import g711

SIP = frozenset({Capability.TRANSFER, Capability.SEND_DTMF})

END_CALL = ToolConfig(name="end_call", kind=ToolKind.BUILTIN)
SEND_DTMF = ToolConfig(name="send_dtmf", kind=ToolKind.BUILTIN)
TRANSFER = ToolConfig(
    name="transfer_call",
    kind=ToolKind.BUILTIN,
    targets={"sales": "sip:sales@192.0.2.1", "support": "sip:support@192.0.2.1"},
)
TRANSFER_HOOK = ToolConfig(
    name="transfer_call",
    kind=ToolKind.BUILTIN,
    target="sip:desk@192.0.2.1",
    hook_url="http://127.0.0.1:9/transfer",
)
LOOKUP = ToolConfig(name="lookup", kind=ToolKind.HTTP, url="http://127.0.0.1:9/x", timeout_s=5)
SLOW = ToolConfig(
    name="slow",
    kind=ToolKind.PYTHON,
    function="tests.tools.sample_tools:slow_tool",
    timeout_s=20,
    holding=Holding.PHRASE,
    holding_after_s=1.0,
)
HOLD_MUSIC = ToolConfig(
    name="music",
    kind=ToolKind.HTTP,
    url="http://127.0.0.1:9/m",
    timeout_s=20,
    holding=Holding.AUDIO,
    holding_audio="hold.wav",
    holding_after_s=1.0,
)


def make_bridge(
    *tools: ToolConfig,
    capabilities: frozenset[Capability] = SIP,
    holding_audio: dict[str, bytes] | None = None,
) -> CallBridge:
    info = CallInfo(call_id="c-1", ingress="sip", codec=Codec.PCMU, capabilities=capabilities)
    settings = CallBridgeSettings(
        model_codec=Codec.PCMU,
        tools={tool.name: tool for tool in tools},
        holding_audio=holding_audio or {},
    )
    return CallBridge(info=info, settings=settings, now=100.0)


def call(name: str, arguments: Any = None, *, call_id: str = "call_1", response: str = "r1") -> Any:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return AgentFunctionCall(response, f"item_{call_id}", call_id, name, text)


def reply_audio(bridge: CallBridge, frames: int, *, response: str = "r1") -> None:
    bridge.handle(AgentResponseStarted(response), 100.0)
    bridge.handle(AgentAudio(response, "say_1", b"\x10" * (g711.FRAME_BYTES * frames)), 100.0)


def output_of(command: Any) -> dict[str, Any]:
    assert isinstance(command, AddFunctionOutput)
    decoded: dict[str, Any] = json.loads(command.output)
    return decoded


# ---- operator tools ----------------------------------------------------------------------------


def test_operator_tool_runs_and_its_output_goes_back_after_the_response_with_one_request() -> None:
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("lookup", {"order": "42"}), 100.1) == [
        RunTool("call_1", "lookup", {"order": "42"})
    ]
    # The tool answers before the response is done: nothing goes out yet.
    assert (
        bridge.handle(ToolFinished("call_1", ToolOutcome.OK, '{"status":"shipped"}'), 100.2) == []
    )
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.3) == [
        AddFunctionOutput("call_1", '{"status":"shipped"}'),
        RequestResponse(),
    ]


def test_parallel_calls_of_one_response_go_back_together_with_one_request() -> None:
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("lookup", {"order": "1"}, call_id="a"), 100.0)
    bridge.handle(call("lookup", {"order": "2"}, call_id="b"), 100.0)
    # Both events of one call (arguments.done and output_item.done) count once.
    assert bridge.handle(call("lookup", {"order": "2"}, call_id="b"), 100.0) == []
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.1) == []
    assert bridge.handle(ToolFinished("b", ToolOutcome.OK, "two"), 100.5) == []
    assert bridge.handle(ToolFinished("a", ToolOutcome.OK, "one"), 100.9) == [
        AddFunctionOutput("a", "one"),
        AddFunctionOutput("b", "two"),
        RequestResponse(),
    ]
    record = bridge.record()["tool_calls"]
    assert [(entry["call_id"], entry["outcome"], entry["output"]) for entry in record] == [
        ("a", "ok", "one"),
        ("b", "ok", "two"),
    ]
    assert record[0]["arguments"] == {"order": "1"}
    assert record[0]["duration_s"] == 0.9


def test_invalid_json_arguments_and_unknown_tools_are_error_outputs() -> None:
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("lookup", '{"order": ', call_id="a"), 100.0) == []
    assert bridge.handle(call("nope", {}, call_id="b"), 100.0) == []
    assert bridge.handle(call("lookup", "[1, 2]", call_id="c"), 100.0) == []
    commands = bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert [output_of(command)["error"] for command in commands[:3]] == [
        "invalid_arguments",
        "unknown_tool",
        "invalid_arguments",
    ]
    assert "not valid JSON" in output_of(commands[0])["message"]
    assert commands[3] == RequestResponse()
    assert bridge.record()["tool_calls"][0]["arguments"] == '{"order": '


def test_a_tool_that_times_out_is_cancelled_and_reported_while_the_call_goes_on() -> None:
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("lookup", {}), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert bridge.next_deadline() == 105.0
    commands = bridge.handle_timeout(105.0)
    assert commands[0] == CancelTool("call_1")
    assert output_of(commands[1]) == {
        "error": "timeout",
        "message": "lookup did not finish within 5 s",
    }
    assert commands[2] == RequestResponse()
    # A late answer changes nothing.
    assert bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "late"), 106.0) == []
    assert not bridge.ended
    assert bridge.record()["tool_calls"][0]["outcome"] == "timeout"


def test_tools_still_running_when_the_call_ends_are_recorded_as_cancelled() -> None:
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("lookup", {}), 100.0)
    bridge.end(EndReason.SHUTDOWN, "stop", 102.0)
    (entry,) = bridge.record()["tool_calls"]
    assert (entry["outcome"], entry["duration_s"]) == ("cancelled", 2.0)


# ---- built-ins ---------------------------------------------------------------------------------


def test_end_call_hangs_up_only_after_the_goodbye_was_heard() -> None:
    bridge = make_bridge(END_CALL)
    reply_audio(bridge, 50)  # one second of goodbye
    assert bridge.handle(call("end_call", {"reason": "caller is done"}), 100.1) == []
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.2) == []
    assert bridge.handle(AudioPlayed("say_1", 160 * 30), 100.8) == []
    assert not bridge.ended
    assert bridge.handle(AudioPlayed("say_1", 160 * 50), 101.2) == [
        HangUp(EndReason.AGENT_HANGUP),
        CloseAgent(),
    ]
    record = bridge.record()
    assert (record["end_reason"], record["end_detail"]) == ("agent_hangup", "caller is done")
    assert record["tool_calls"][0]["outcome"] == "ok"


def test_end_call_goes_ahead_when_playout_is_never_confirmed() -> None:
    bridge = make_bridge(END_CALL)
    reply_audio(bridge, 50)
    bridge.handle(call("end_call", {}), 100.1)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.2)
    assert bridge.next_deadline() == 100.2 + 1.0 + PLAYOUT_GRACE_S
    assert bridge.handle_timeout(100.2 + 1.0 + PLAYOUT_GRACE_S) == [
        HangUp(EndReason.AGENT_HANGUP),
        CloseAgent(),
    ]


def test_end_call_without_audio_hangs_up_when_the_response_is_done() -> None:
    bridge = make_bridge(END_CALL)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("end_call", {}), 100.0)
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.1) == [
        HangUp(EndReason.AGENT_HANGUP),
        CloseAgent(),
    ]


def test_send_dtmf_goes_to_the_leg_and_reports_what_was_sent() -> None:
    bridge = make_bridge(SEND_DTMF)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("send_dtmf", {"digits": "12#a"}), 100.0) == [SendDtmf("12#A")]
    (output, request) = bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert output_of(output) == {"status": "ok", "sent": "12#A"}
    assert request == RequestResponse()


def test_send_dtmf_on_a_leg_that_cannot_is_a_clear_error() -> None:
    bridge = make_bridge(SEND_DTMF, capabilities=frozenset())
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("send_dtmf", {"digits": "1"}), 100.0) == []
    (output, _) = bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert output_of(output) == {
        "error": "error",
        "message": "this call (sip) cannot send keypad tones",
    }


def test_send_dtmf_rejects_keys_a_phone_does_not_have() -> None:
    bridge = make_bridge(SEND_DTMF)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("send_dtmf", {"digits": "12x"}), 100.0) == []
    (output, _) = bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert output_of(output)["error"] == "invalid_arguments"


def test_transfer_waits_for_playout_then_refers_and_ends_the_call_on_success() -> None:
    bridge = make_bridge(TRANSFER)
    reply_audio(bridge, 10)
    assert bridge.handle(call("transfer_call", {"target": "sales"}), 100.0) == []
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.1) == []
    assert bridge.handle(AudioPlayed("say_1", 1600), 100.3) == [TransferCall("sip:sales@192.0.2.1")]
    assert bridge.handle(TransferResult(ok=True, status=200), 104.0) == [
        HangUp(EndReason.TRANSFERRED),
        CloseAgent(),
    ]
    record = bridge.record()
    assert record["end_reason"] == "transferred"
    assert record["tool_calls"][0]["outcome"] == "ok"


def test_a_failed_transfer_is_told_to_the_model_and_the_call_goes_on() -> None:
    bridge = make_bridge(TRANSFER)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("transfer_call", {"target": "support"}), 100.0)
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.1) == [
        TransferCall("sip:support@192.0.2.1")
    ]
    output, request = bridge.handle(TransferResult(ok=False, status=486, detail="Busy Here"), 103.0)
    assert output_of(output) == {
        "error": "error",
        "message": "the transfer to sip:support@192.0.2.1 failed (SIP 486): Busy Here",
    }
    assert request == RequestResponse()
    assert not bridge.ended


def test_transfer_to_a_target_off_the_allow_list_is_refused() -> None:
    bridge = make_bridge(TRANSFER)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("transfer_call", {"target": "sip:evil@203.0.113.9"}), 100.0)
    (output, _) = bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert output_of(output)["error"] == "invalid_arguments"
    assert "sales, support" in output_of(output)["message"]


def test_transfer_on_a_media_stream_goes_through_the_hook() -> None:
    bridge = make_bridge(TRANSFER_HOOK, capabilities=frozenset())
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("transfer_call", {}), 100.0)
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.1) == [
        RunTool("call_1", "transfer_call", {"target": "sip:desk@192.0.2.1"})
    ]
    assert bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "{}"), 100.5) == [
        HangUp(EndReason.TRANSFERRED),
        CloseAgent(),
    ]


def test_a_failing_transfer_hook_is_an_error_output() -> None:
    bridge = make_bridge(TRANSFER_HOOK, capabilities=frozenset())
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("transfer_call", {}), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    failure = error_output(ToolOutcome.ERROR, "transfer_call failed: HTTP 500")
    output, request = bridge.handle(ToolFinished("call_1", ToolOutcome.ERROR, failure), 100.5)
    assert "HTTP 500" in output_of(output)["message"]
    assert request == RequestResponse()


def test_transfer_without_refer_or_hook_is_refused() -> None:
    bridge = make_bridge(TRANSFER, capabilities=frozenset())
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("transfer_call", {"target": "sales"}), 100.0)
    (output, _) = bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert output_of(output)["message"] == "this call (sip) cannot be transferred"


# ---- holding -----------------------------------------------------------------------------------


def test_a_slow_tool_gets_a_holding_phrase_once_the_model_is_quiet() -> None:
    bridge = make_bridge(SLOW)
    reply_audio(bridge, 10)
    bridge.handle(call("slow", {"seconds": 5}), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    # At the holding time the reply is still playing: try again shortly.
    assert bridge.next_deadline() == 101.0
    assert bridge.handle_timeout(101.0) == []
    bridge.handle(AudioPlayed("say_1", 1600), 101.1)
    assert bridge.handle_timeout(bridge.next_deadline()) == [
        RequestResponse(instructions=SLOW.holding_phrase, allow_tools=False)
    ]
    # Only once.
    assert bridge.next_deadline() == 120.0
    assert bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "done"), 105.0) == [
        AddFunctionOutput("call_1", "done"),
        RequestResponse(),
    ]


def test_holding_audio_loops_until_the_result_and_is_then_cleared() -> None:
    music = bytes(range(160)) * 5  # 100 ms
    bridge = make_bridge(HOLD_MUSIC, holding_audio={"music": music})
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("music", {}), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert bridge.handle_timeout(101.0) == [PlayAudio("hold_1", music)]
    assert bridge.handle(AudioPlayed("hold_1", 800), 101.1) == [PlayAudio("hold_1", music)]
    bridge.handle(AudioPlayed("hold_1", 1000), 101.12)
    assert bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "ok"), 101.15) == [
        ClearAudio(),
        AddFunctionOutput("call_1", "ok"),
        RequestResponse(),
    ]
    # Holding audio is ours: it never counts as the model's audio heard.
    assert bridge.statistics().played_bytes == 0


def test_barge_in_over_holding_audio_clears_it_without_truncating_anything() -> None:
    music = bytes(range(160)) * 5
    bridge = make_bridge(HOLD_MUSIC, holding_audio={"music": music})
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("music", {}), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    bridge.handle_timeout(101.0)
    bridge.handle(AudioPlayed("hold_1", 320), 101.04)
    assert bridge.handle(AgentSpeechStarted("u1", 500), 101.05) == [ClearAudio()]
    # The loop does not start again after the caller spoke.
    assert bridge.handle(AudioPlayed("hold_1", 320), 101.1) == []


# ---- definitions -------------------------------------------------------------------------------


def test_builtin_definitions_offer_the_configured_targets() -> None:
    definition = function_definition(TRANSFER)
    assert definition["type"] == "function"
    assert definition["parameters"]["properties"]["target"]["enum"] == ["sales", "support"]
    assert definition["parameters"]["required"] == ["target"]
    fixed = function_definition(TRANSFER_HOOK)
    assert fixed["parameters"] == {"type": "object", "properties": {}, "required": []}
    names = [entry["name"] for entry in function_definitions([END_CALL, SEND_DTMF, LOOKUP])]
    assert names == ["end_call", "send_dtmf", "lookup"]
    assert function_definition(LOOKUP)["parameters"] == {"type": "object", "properties": {}}


def test_calls_of_a_cancelled_response_are_stopped_and_no_response_is_asked_for() -> None:
    bridge = make_bridge(LOOKUP, SEND_DTMF, END_CALL)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("send_dtmf", {"digits": "1"}, call_id="a"), 100.0)
    bridge.handle(call("lookup", {}, call_id="b"), 100.0)
    bridge.handle(call("end_call", {}, call_id="c"), 100.0)
    commands = bridge.handle(AgentResponseDone("r1", "cancelled"), 100.2)
    assert commands[0] == CancelTool("b")
    outputs = [output_of(command) for command in commands[1:]]
    assert outputs[0] == {"status": "ok", "sent": "1"}
    assert outputs[1] == {"error": "cancelled", "message": "the response was cancelled"}
    assert RequestResponse() not in commands
    # The hang-up was dropped with its response: the caller is talking.
    assert not bridge.ended
    assert bridge.handle(ToolFinished("b", ToolOutcome.OK, "late"), 101.0) == []
    assert [entry["outcome"] for entry in bridge.record()["tool_calls"]] == [
        "ok",
        "cancelled",
        "cancelled",
    ]
