"""Tool calls on SIP calls end to end: REFER transfers against sipp, send_dtmf and end_call.

Real peers on 127.0.0.1: sipp plays a keypad digit (RFC 4733) that the scripted loopback model
answers with a function call; the daemon carries it out on the SIP leg. The Python caller
(bridge/sip_caller.py) records the daemon's RFC 4733 packets and the BYE. Every client event the
daemon sends the model in these flows validates against the openai types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.agent.loopback import AudioFormat, ScriptedToolCall, word_beeps
from bridge.sip_caller import place_call
from tests.support.daemon import merge, running_daemon
from tests.support.model_tap import TappedConnection, open_model_tap
from tests.support.sipp import SippResult, requests_received, run_sipp, sipp_binary
from tests.test_e2e_sip import SIP_ONLY, wait_for_records
from tests.test_e2e_tools import assert_all_valid, function_outputs, only_connection

TRANSFER_TOOL = {
    "name": "transfer_call",
    "kind": "builtin",
    "targets": {"sales": "sip:sales@127.0.0.1:5999"},
}
FAST_DTMF = {"call": {"dtmf_flush_ms": 0}}


@pytest.fixture
def sipp() -> str:
    return sipp_binary()


def overrides(*tools: dict[str, Any]) -> dict[str, Any]:
    return merge(SIP_ONLY, {**FAST_DTMF, "tools": list(tools)})


def transfer_script(digit: str) -> list[ScriptedToolCall]:
    return [
        ScriptedToolCall(
            name="transfer_call",
            arguments=json.dumps({"target": "sales"}),
            say="Transferring you",
            dtmf=digit,
        )
    ]


async def transfer_with_sipp(
    tmp_path: Path, scenario: str
) -> tuple[SippResult, dict[str, Any], TappedConnection]:
    """A sipp call that presses 6, which the model answers with transfer_call to sales."""
    async with (
        open_model_tap(script=transfer_script("6")) as tap,
        running_daemon(tmp_path, overrides(TRANSFER_TOOL), model_url=tap.url) as daemon,
    ):
        result = await run_sipp(
            scenario,
            remote_port=daemon.sip_port,
            workdir=tmp_path,
            keys={"digit": "6"},
            timeout_s=20,
        )
        assert result.returncode == 0, result.explain()
        (record,) = await wait_for_records(daemon)
        return result, record, only_connection(tap)


async def test_refer_transfer_against_sipp(tmp_path: Path, sipp: str) -> None:
    result, record, connection = await transfer_with_sipp(tmp_path, "uac_refer.xml")
    (refer,) = requests_received(result, "REFER")
    assert "sip:sales@127.0.0.1:5999" in refer.headers.get("refer-to")
    assert refer.headers.get("referred-by")
    assert record["end_reason"] == "transferred"
    (tool_call,) = record["tool_calls"]
    assert (tool_call["name"], tool_call["outcome"]) == ("transfer_call", "ok")
    # The caller was transferred: the model is not asked for anything more.
    assert function_outputs(connection) == []
    assert_all_valid(connection)


async def test_a_busy_transfer_target_is_reported_to_the_model(tmp_path: Path, sipp: str) -> None:
    _, record, connection = await transfer_with_sipp(tmp_path, "uac_refer_busy.xml")
    (output,) = function_outputs(connection)
    failure = json.loads(output["output"])
    assert failure["error"] == "error"
    assert "SIP 486" in failure["message"]
    # One response.create follows the output, and the caller (sipp) hung up later on its own.
    types = [event["type"] for event in connection.client_events]
    after = types[types.index("conversation.item.create", types.index("response.create")) :]
    assert "response.create" in after
    assert record["end_reason"] == "caller_hangup"
    assert record["tool_calls"][0]["outcome"] == "error"
    assert_all_valid(connection)


async def test_send_dtmf_reaches_the_caller_as_rfc4733_events(tmp_path: Path) -> None:
    script = [ScriptedToolCall(name="send_dtmf", arguments='{"digits": "123#"}', dtmf="5")]
    async with (
        open_model_tap(script=script) as tap,
        running_daemon(
            tmp_path, overrides({"name": "send_dtmf", "kind": "builtin"}), model_url=tap.url
        ) as daemon,
    ):
        with trio.fail_after(30):
            result = await place_call(
                "127.0.0.1",
                daemon.sip_port,
                dtmf=[(0.3, "5")],
                hang_up_after_s=3.0,
                wait_for_reply=False,
            )
        (record,) = await wait_for_records(daemon)
        connection = only_connection(tap)
    assert result.dtmf_received == "123#"
    ends = [event for event in result.telephone_events if event.end]
    assert {event.digit for event in ends} == set("123#")
    assert record["tool_calls"][0]["outcome"] == "ok"
    (output,) = function_outputs(connection)
    assert json.loads(output["output"]) == {"status": "ok", "sent": "123#"}
    assert_all_valid(connection)


async def test_send_dtmf_digits_arrive_at_sipp(tmp_path: Path, sipp: str) -> None:
    # sipp echoes the daemon's RTP (-rtp_echo), so the digits it got come back as key presses.
    script = [ScriptedToolCall(name="send_dtmf", arguments='{"digits": "1234"}', dtmf="7")]
    async with running_daemon(
        tmp_path, overrides({"name": "send_dtmf", "kind": "builtin"}), script=script
    ) as daemon:
        result = await run_sipp(
            "uac_dtmf_echo.xml",
            remote_port=daemon.sip_port,
            workdir=tmp_path,
            keys={"digit": "7"},
            extra_args=("-rtp_echo",),
            timeout_s=20,
        )
        assert result.returncode == 0, result.explain()
        (record,) = await wait_for_records(daemon)
    assert record["dtmf"] == "71234"


async def test_end_call_sends_bye_after_the_goodbye_was_on_the_wire(tmp_path: Path) -> None:
    goodbye = "Goodbye and thank you"
    script = [ScriptedToolCall(name="end_call", say=goodbye, dtmf="1")]
    async with (
        open_model_tap(script=script) as tap,
        running_daemon(
            tmp_path, overrides({"name": "end_call", "kind": "builtin"}), model_url=tap.url
        ) as daemon,
    ):
        with trio.fail_after(30):
            result = await place_call(
                "127.0.0.1",
                daemon.sip_port,
                dtmf=[(0.3, "1")],
                hang_up_after_s=15.0,
                wait_for_reply=False,
            )
        (record,) = await wait_for_records(daemon)
        assert_all_valid(only_connection(tap))
    assert result.hung_up_by == "daemon"
    assert word_beeps(AudioFormat.PCMU, goodbye) in result.heard()
    assert record["end_reason"] == "agent_hangup"
    assert record["tool_calls"][0]["name"] == "end_call"
