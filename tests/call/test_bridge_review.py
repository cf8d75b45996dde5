"""Review of the CallBridge's tool-call flow: odd model input and races the happy path misses.

The tests above "odd input the bridge already handles" each pin one bug found in review: they
failed against the code as reviewed (commit b840787) and pass once the proposed fix is in. The
ones below it pin behaviour the review checked and found right.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.call.bridge import PLAYOUT_GRACE_S, CallBridge, Command
from bridge.call.events import (
    AddFunctionOutput,
    AddUserText,
    AgentAudio,
    AgentResponseDone,
    AgentResponseStarted,
    AgentSpeechStarted,
    AudioPlayed,
    CallerDtmf,
    ClearAudio,
    CloseAgent,
    EndReason,
    HangUp,
    PlayAudio,
    RequestResponse,
    RunTool,
    ToolFinished,
    ToolOutcome,
    TransferCall,
    TransferResult,
)
from bridge.media import g711
from tests.call.test_bridge_tools import END_CALL, HOLD_MUSIC, LOOKUP, TRANSFER, call, make_bridge

FRAME = g711.FRAME_BYTES
MUSIC = bytes(range(160)) * 5  # 100 ms


def say(bridge: CallBridge, frames: int, *, response: str, item: str, now: float) -> list[Command]:
    bridge.handle(AgentResponseStarted(response), now)
    return bridge.handle(AgentAudio(response, item, b"\x10" * (FRAME * frames)), now)


def outputs_for(commands: list[Command], call_id: str) -> list[dict[str, Any]]:
    return [
        json.loads(command.output)
        for command in commands
        if isinstance(command, AddFunctionOutput) and command.call_id == call_id
    ]


# ---- a model's odd input must never crash the call -------------------------------------------


def test_deeply_nested_arguments_are_an_error_output_not_a_crash() -> None:
    # json.loads raises RecursionError (not ValueError) past ~1000 levels of nesting; a model
    # can write that much, and the exception would end the call as an internal error.
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("lookup", "[" * 100_000), 100.0) == []
    commands = bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    (output,) = outputs_for(commands, "call_1")
    assert output["error"] == "invalid_arguments"
    assert commands[-1] == RequestResponse()
    assert not bridge.ended


def test_a_function_call_without_a_response_id_is_answered_when_its_response_is_done() -> None:
    # The Realtime session reports calls with an empty response_id when the server left it out
    # (its tolerant readers give ""; session.py treats "" as "of any response"). The bridge
    # keyed such a call's batch under "" and waited for a response.done of "" that never comes:
    # the result was never sent and the model waited for it forever.
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("lookup", {"order": "42"}, response=""), 100.0) == [
        RunTool("call_1", "lookup", {"order": "42"})
    ]
    assert bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "shipped"), 100.2) == []
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.3) == [
        AddFunctionOutput("call_1", "shipped"),
        RequestResponse(),
    ]


# ---- hang-up and transfer sequencing -----------------------------------------------------------


def test_a_caller_barging_in_on_the_goodbye_cancels_the_pending_hang_up() -> None:
    # The model says goodbye and calls end_call; response.done arrives long before the caller has
    # heard the goodbye (the model talks faster than real time). The caller interrupts ("wait,
    # one more thing"): the goodbye was not heard, so the call must not be hung up on them.
    bridge = make_bridge(END_CALL)
    say(bridge, 50, response="r1", item="say_1", now=100.0)  # one second of goodbye
    assert bridge.handle(call("end_call", {"reason": "done"}), 100.1) == []
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.2) == []
    assert bridge.handle(AudioPlayed("say_1", FRAME * 10), 100.4) == []
    commands = bridge.handle(AgentSpeechStarted("u1", 300), 100.5)
    assert ClearAudio() in commands
    # Media-stream gateways hand back the marks of cleared audio; that is no playout.
    commands += bridge.handle(AudioPlayed("say_1", FRAME * 10), 100.55)
    # The model answers the caller; the old playout deadline passes while it talks.
    commands += say(bridge, 100, response="r2", item="say_2", now=101.0)
    commands += bridge.handle_timeout(100.2 + 1.0 + PLAYOUT_GRACE_S)
    assert not any(isinstance(command, HangUp) for command in commands)
    assert not bridge.ended
    # The model is told its end_call did not happen, and is not asked for another response:
    # the caller is talking.
    (output,) = outputs_for(commands, "call_1")
    assert "error" in output
    assert RequestResponse() not in commands


def test_a_caller_barging_in_on_the_transfer_announcement_cancels_the_transfer() -> None:
    bridge = make_bridge(TRANSFER)
    say(bridge, 50, response="r1", item="say_1", now=100.0)
    bridge.handle(call("transfer_call", {"target": "sales"}), 100.1)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.2)
    commands = bridge.handle(AudioPlayed("say_1", FRAME * 10), 100.4)
    commands += bridge.handle(AgentSpeechStarted("u1", 300), 100.5)
    commands += bridge.handle(AudioPlayed("say_1", FRAME * 10), 100.55)
    commands += bridge.handle_timeout(100.2 + 1.0 + PLAYOUT_GRACE_S)
    assert not any(isinstance(command, TransferCall | HangUp) for command in commands)
    (output,) = outputs_for(commands, "call_1")
    assert "error" in output


def test_end_call_reported_after_its_response_was_done_still_gets_a_playout_deadline() -> None:
    # The bridge accepts a function call whose response is already done (the batch is created
    # done), but the hand-over deadline is only ever set in _response_done: such an end_call
    # waits for playout reports forever, and a leg that never confirms playout never hangs up.
    bridge = make_bridge(END_CALL)
    say(bridge, 50, response="r1", item="say_1", now=100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.2)
    assert bridge.handle(call("end_call", {}), 100.3) == []
    deadline = bridge.next_deadline()
    assert deadline <= 100.3 + 1.0 + PLAYOUT_GRACE_S
    assert HangUp in [type(command) for command in bridge.handle_timeout(deadline)]
    assert bridge.ended


def test_a_transfer_result_that_arrives_before_the_transfer_started_is_ignored() -> None:
    # A first transfer times out on our side (the model is told), but the leg's REFER is still
    # under way and its result comes later, while the model's second transfer waits for its
    # announcement to be heard. That stale result must not decide the second transfer, which
    # was never sent.
    bridge = make_bridge(TRANSFER)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("transfer_call", {"target": "sales"}, call_id="t1"), 100.0)
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.1) == [
        TransferCall("sip:sales@192.0.2.1")
    ]
    timed_out = bridge.handle_timeout(bridge.next_deadline())
    assert outputs_for(timed_out, "t1")[0]["error"] == "timeout"
    say(bridge, 50, response="r2", item="say_2", now=131.0)
    bridge.handle(call("transfer_call", {"target": "support"}, call_id="t2", response="r2"), 131.0)
    bridge.handle(AgentResponseDone("r2", "completed"), 131.1)
    # The first REFER's NOTIFY arrives now, before the second was started.
    assert bridge.handle(TransferResult(ok=True, status=200), 131.2) == []
    assert not bridge.ended
    # The second goes ahead once its announcement was heard.
    assert bridge.handle(AudioPlayed("say_2", FRAME * 50), 132.2) == [
        TransferCall("sip:support@192.0.2.1")
    ]


# ---- holding audio -----------------------------------------------------------------------------


def test_model_audio_while_holding_audio_plays_stops_the_loop_and_is_never_cleared() -> None:
    # While a slow tool's holding audio loops, the caller presses a key: the model answers the
    # digit. Its reply must not wait behind the holding loop, and when the tool's result comes
    # the ClearAudio that ends the loop must not wipe the reply (it would also be left "unheard"
    # forever, blocking later holding and hang-ups on playout that never comes).
    bridge = make_bridge(HOLD_MUSIC, holding_audio={"music": MUSIC})
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("music", {}), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert bridge.handle_timeout(101.0) == [PlayAudio("hold_1", MUSIC)]
    assert bridge.handle(CallerDtmf("5"), 101.02) == []
    assert bridge.handle(CallerDtmf("#"), 101.03) == [
        AddUserText("The caller pressed 5, # on the phone keypad."),
        RequestResponse(),
    ]
    reply = say(bridge, 10, response="r2", item="say_2", now=101.05)
    assert reply[-1] == PlayAudio("say_2", b"\x10" * (FRAME * 10))
    # The holding loop ends before the reply is queued, so the reply is heard at once.
    assert ClearAudio() in reply[:-1]
    bridge.handle(AgentResponseDone("r2", "completed"), 101.06)
    # The loop does not come back on a late playout report of the holding audio.
    assert bridge.handle(AudioPlayed("hold_1", len(MUSIC)), 101.07) == []
    finished = bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "ok"), 101.1)
    assert ClearAudio() not in finished
    assert finished == [AddFunctionOutput("call_1", "ok"), RequestResponse()]
    bridge.handle(AudioPlayed("say_2", FRAME * 10), 101.3)
    assert bridge.unheard_items() == []


# ---- odd input the bridge already handles ------------------------------------------------------


def test_tool_results_for_unknown_or_answered_calls_are_ignored() -> None:
    bridge = make_bridge(LOOKUP)
    assert bridge.handle(ToolFinished("nobody", ToolOutcome.OK, "x"), 100.0) == []
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    bridge.handle(call("lookup", {}), 100.0)
    bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    assert bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "one"), 100.2) == [
        AddFunctionOutput("call_1", "one"),
        RequestResponse(),
    ]
    # A second answer for the same call is not sent again.
    assert bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "two"), 100.3) == []
    assert bridge.next_deadline() == 100.0 + 3600.0


def test_end_call_twice_and_transfer_while_a_hang_up_is_pending_hang_up_once() -> None:
    bridge = make_bridge(END_CALL, TRANSFER)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("end_call", {}, call_id="a"), 100.0) == []
    assert bridge.handle(call("end_call", {}, call_id="b"), 100.0) == []
    assert bridge.handle(call("transfer_call", {"target": "sales"}, call_id="c"), 100.0) == []
    assert bridge.handle(AgentResponseDone("r1", "completed"), 100.1) == [
        HangUp(EndReason.AGENT_HANGUP),
        CloseAgent(),
    ]
    outcomes = {entry["call_id"]: entry["outcome"] for entry in bridge.record()["tool_calls"]}
    assert outcomes == {"a": "ok", "b": "error", "c": "error"}


def test_a_call_id_reused_by_a_later_response_is_not_run_again() -> None:
    bridge = make_bridge(LOOKUP)
    bridge.handle(AgentResponseStarted("r1"), 100.0)
    assert bridge.handle(call("lookup", {}), 100.0) == [RunTool("call_1", "lookup", {})]
    bridge.handle(AgentResponseDone("r1", "completed"), 100.1)
    bridge.handle(ToolFinished("call_1", ToolOutcome.OK, "one"), 100.2)
    bridge.handle(AgentResponseStarted("r2"), 101.0)
    assert bridge.handle(call("lookup", {}, response="r2"), 101.0) == []
    assert bridge.handle(AgentResponseDone("r2", "completed"), 101.1) == []
    assert len(bridge.record()["tool_calls"]) == 1
