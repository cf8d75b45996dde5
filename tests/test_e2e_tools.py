"""Tool calls end to end: a caller -> the daemon -> a scripted loopback model that calls tools.

The loopback model is scripted (``ScriptedToolCall``) to call a function when the caller presses
a key; the daemon runs the tool for real (an HTTP server on 127.0.0.1, Python functions in
tests/tools/sample_tools.py, its own call control) and the recording tap in front of the model
shows what went back: the ``function_call_output`` items and the one ``response.create`` after
them. Every client event the daemon sends in these flows is validated against the official
``openai`` types. Media-stream calls use the simulated Twilio gateway (bridge/caller.py); the SIP
flows are in tests/test_e2e_sip_tools.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import trio
from openai.types.realtime import RealtimeClientEventParam

from bridge.agent.loopback import AudioFormat, ScriptedToolCall, word_beeps
from bridge.call.events import Codec
from bridge.caller import CallerResult, run_caller
from bridge.media import g711
from tests.support.daemon import SECRET, Daemon, running_daemon
from tests.support.http_server import open_http_server
from tests.support.model_tap import ModelTap, TappedConnection, open_model_tap

CLIENT_EVENT = pydantic.TypeAdapter(
    RealtimeClientEventParam, config=pydantic.ConfigDict(extra="forbid")
)
CALLER = "+15550100001"
CALLED = "+15550100002"
PARAMETERS = {"secret": SECRET, "from": CALLER, "to": CALLED}
CODEC = Codec.PCMU
# Key presses reach the model at once.
FAST_DTMF = {"call": {"dtmf_flush_ms": 0}}


def quiet(duration_ms: int) -> bytes:
    return g711.silence(CODEC, duration_ms * g711.BYTES_PER_MS)


def with_tools(*tools: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {**FAST_DTMF, "tools": list(tools), **more}


async def call(daemon: Daemon, seconds: float, **options: Any) -> CallerResult:
    options.setdefault("custom_parameters", PARAMETERS)
    options.setdefault("quiet_s", 0.3)
    options.setdefault("max_duration_s", 15.0)
    options.setdefault("wait_for_reply", False)
    with trio.fail_after(30):
        return await run_caller(
            daemon.url, codec=CODEC, audio=quiet(int(seconds * 1000)), **options
        )


async def wait_until(condition: Callable[[], bool], limit_s: float) -> None:
    with trio.fail_after(limit_s):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def wait_for_record(daemon: Daemon, count: int = 1) -> list[dict[str, Any]]:
    await wait_until(lambda: len(daemon.records()) >= count, 3)
    return daemon.records()


def only_connection(tap: ModelTap) -> TappedConnection:
    assert len(tap.connections) == 1, f"{len(tap.connections)} model connections"
    return tap.connections[0]


def assert_all_valid(connection: TappedConnection) -> None:
    """Every event the daemon sent the model validates against the openai package's types."""
    for event in connection.client_events:
        CLIENT_EVENT.validate_python(event)


def function_outputs(connection: TappedConnection) -> list[dict[str, Any]]:
    return [
        event["item"]
        for event in connection.client("conversation.item.create")
        if event["item"]["type"] == "function_call_output"
    ]


def events_after_output(connection: TappedConnection, call_id: str) -> list[str]:
    """The types of the client events after the function_call_output for `call_id`."""
    types = [event["type"] for event in connection.client_events]
    for index, event in enumerate(connection.client_events):
        item = event.get("item", {})
        if item.get("type") == "function_call_output" and item.get("call_id") == call_id:
            return [kind for kind in types[index + 1 :] if kind != "input_audio_buffer.append"]
    raise AssertionError(f"no function_call_output for {call_id}")


def made_calls(connection: TappedConnection) -> dict[str, dict[str, Any]]:
    """The function calls the model made, by name."""
    return {
        event["name"]: event for event in connection.server("response.function_call_arguments.done")
    }


# ---- end_call ------------------------------------------------------------------------------------


async def test_end_call_hangs_up_after_the_goodbye_was_heard(tmp_path: Path) -> None:
    goodbye = "Thank you for calling, goodbye"
    script = [
        ScriptedToolCall(
            name="end_call",
            arguments=json.dumps({"reason": "the caller is done"}),
            say=goodbye,
            dtmf="1",
        )
    ]
    overrides = with_tools({"name": "end_call", "kind": "builtin"})
    async with (
        open_model_tap(script=script) as tap,
        running_daemon(tmp_path, overrides, model_url=tap.url) as daemon,
    ):
        result = await call(daemon, 10, dtmf=[(0.3, "1")])
        (record,) = await wait_for_record(daemon)
        connection = only_connection(tap)
    assert result.hung_up_by == "daemon"
    # The daemon closed the stream only once the gateway had played the whole goodbye.
    spoken = word_beeps(AudioFormat.PCMU, goodbye)
    assert spoken in result.heard
    assert result.duration_s < 8
    assert record["end_reason"] == "agent_hangup"
    assert record["end_detail"] == "the caller is done"
    (tool_call,) = record["tool_calls"]
    assert (tool_call["name"], tool_call["outcome"]) == ("end_call", "ok")
    assert tool_call["arguments"] == {"reason": "the caller is done"}
    # The model is not asked for anything after it chose to hang up.
    assert function_outputs(connection) == []
    assert_all_valid(connection)
    tools = connection.client("session.update")[0]["session"]["tools"]
    assert [tool["name"] for tool in tools] == ["end_call"]


async def test_end_call_from_the_config_driven_loopback_model(tmp_path: Path) -> None:
    overrides = with_tools(
        {"name": "end_call", "kind": "builtin"},
        model={
            "provider": "loopback",
            "url": "",
            "loopback": {"tool_calls": [{"dtmf": "9", "name": "end_call", "say": "Bye"}]},
        },
    )
    async with running_daemon(tmp_path, overrides) as daemon:
        result = await call(daemon, 10, dtmf=[(0.3, "9")])
        (record,) = await wait_for_record(daemon)
    assert result.hung_up_by == "daemon"
    assert word_beeps(AudioFormat.PCMU, "Bye") in result.heard
    assert record["end_reason"] == "agent_hangup"


# ---- http tools ----------------------------------------------------------------------------------


async def test_http_tool_gets_the_arguments_and_its_answer_reaches_the_model(
    tmp_path: Path,
) -> None:
    answer = b'{"status": "shipped", "eta": "Tuesday"}'
    script = [
        ScriptedToolCall(
            name="lookup_order", arguments=json.dumps({"order_number": "A-42"}), dtmf="2"
        )
    ]
    async with open_http_server() as server, open_model_tap(script=script) as tap:
        server.reply("/lookup", status=200, body=answer)
        tool = {
            "name": "lookup_order",
            "kind": "http",
            "url": server.url("/lookup"),
            "description": "Look up an order by its number.",
            "parameters": {
                "type": "object",
                "properties": {"order_number": {"type": "string"}},
                "required": ["order_number"],
            },
            "headers": {"X-Source": "bridge-test"},
            "headers_env": {"Authorization": "CRM_AUTH"},
        }
        async with running_daemon(
            tmp_path,
            with_tools(tool),
            model_url=tap.url,
            environ={"CRM_AUTH": "Bearer crm-secret-1"},
        ) as daemon:
            await call(daemon, 3.5, dtmf=[(0.3, "2")])
            (record,) = await wait_for_record(daemon)
        connection = only_connection(tap)
        (request,) = server.requests
    call_id = made_calls(connection)["lookup_order"]["call_id"]
    # The endpoint got the arguments and the call's context, with the configured headers.
    assert request.method == "POST"
    assert request.json == {
        "tool": "lookup_order",
        "tool_call_id": call_id,
        "arguments": {"order_number": "A-42"},
        "call": {
            "call_id": record["call_id"],
            "ingress": "mediastream",
            "caller": CALLER,
            "called": CALLED,
            "variables": {"from": CALLER, "to": CALLED},
            "external_ids": record["external_ids"],
        },
    }
    assert request.headers["authorization"] == "Bearer crm-secret-1"
    assert request.headers["x-source"] == "bridge-test"
    # Its answer went back as the function's output, then exactly one response.create.
    (output,) = function_outputs(connection)
    assert output == {"type": "function_call_output", "call_id": call_id, "output": answer.decode()}
    assert events_after_output(connection, call_id).count("response.create") == 1
    assert events_after_output(connection, call_id)[0] == "response.create"
    assert_all_valid(connection)
    # The tool's definition went to the model as written.
    (definition,) = connection.client("session.update")[0]["session"]["tools"]
    assert definition == {
        "type": "function",
        "name": "lookup_order",
        "description": "Look up an order by its number.",
        "parameters": tool["parameters"],
    }
    (tool_call,) = record["tool_calls"]
    assert (tool_call["outcome"], tool_call["output"]) == ("ok", answer.decode())
    assert "crm-secret-1" not in json.dumps(record)
    model_lines = [line["text"] for line in record["transcript"] if line["role"] == "model"]
    assert any("shipped" in text for text in model_lines), model_lines


async def test_a_timeout_and_an_exception_are_error_outputs_and_the_call_goes_on(
    tmp_path: Path,
) -> None:
    script = [
        ScriptedToolCall(name="slow", arguments=json.dumps({"seconds": 30}), dtmf="3"),
        ScriptedToolCall(name="broken", arguments="{}", dtmf="4"),
    ]
    tools = (
        {
            "name": "slow",
            "kind": "python",
            "function": "tests.tools.sample_tools:slow_tool",
            "timeout_s": 0.5,
        },
        {"name": "broken", "kind": "python", "function": "tests.tools.sample_tools:broken_tool"},
    )
    async with (
        open_model_tap(script=script) as tap,
        running_daemon(tmp_path, with_tools(*tools), model_url=tap.url) as daemon,
    ):
        result = await call(daemon, 4.0, dtmf=[(0.3, "3"), (2.0, "4")])
        (record,) = await wait_for_record(daemon)
        connection = only_connection(tap)
    # The caller hung up; the daemon never did.
    assert result.hung_up_by == "caller"
    assert record["end_reason"] == "caller_hangup"
    outputs = {item["call_id"]: json.loads(item["output"]) for item in function_outputs(connection)}
    calls = made_calls(connection)
    assert outputs[calls["slow"]["call_id"]] == {
        "error": "timeout",
        "message": "slow did not finish within 0.5 s",
    }
    broken = outputs[calls["broken"]["call_id"]]
    assert broken["error"] == "error"
    assert "RuntimeError: database down" in broken["message"]
    for name in ("slow", "broken"):
        assert events_after_output(connection, calls[name]["call_id"])[0] == "response.create"
    assert_all_valid(connection)
    assert [(entry["name"], entry["outcome"]) for entry in record["tool_calls"]] == [
        ("slow", "timeout"),
        ("broken", "error"),
    ]


async def test_a_slow_tool_gets_a_holding_phrase(tmp_path: Path) -> None:
    script = [ScriptedToolCall(name="slow", arguments=json.dumps({"seconds": 1.5}), dtmf="5")]
    tool = {
        "name": "slow",
        "kind": "python",
        "function": "tests.tools.sample_tools:slow_tool",
        "timeout_s": 5,
        "holding": "phrase",
        "holding_after_s": 0.3,
        "holding_phrase": "Say that you are checking.",
    }
    async with (
        open_model_tap(script=script) as tap,
        running_daemon(tmp_path, with_tools(tool), model_url=tap.url) as daemon,
    ):
        await call(daemon, 4.0, dtmf=[(0.3, "5")])
        (record,) = await wait_for_record(daemon)
        connection = only_connection(tap)
    requests = connection.client("response.create")
    holding = [event for event in requests if event.get("response", {}).get("tool_choice")]
    assert [event["response"] for event in holding] == [
        {"instructions": "Say that you are checking.", "tool_choice": "none"}
    ]
    # The holding phrase came before the result.
    types = [event["type"] for event in connection.client_events]
    hold_index = connection.client_events.index(holding[0])
    output_index = next(
        index
        for index, event in enumerate(connection.client_events)
        if event.get("item", {}).get("type") == "function_call_output"
    )
    assert hold_index < output_index, types
    assert record["tool_calls"][0]["outcome"] == "ok"
    assert_all_valid(connection)


async def test_holding_audio_plays_while_a_slow_tool_runs(tmp_path: Path) -> None:
    # Half a second of a distinctive pattern (no silence codes), as a raw u-law file.
    music = bytes(0x20 + (index % 64) for index in range(4000))
    (tmp_path / "hold.ulaw").write_bytes(music)
    script = [ScriptedToolCall(name="slow", arguments=json.dumps({"seconds": 1.6}), dtmf="5")]
    tool = {
        "name": "slow",
        "kind": "python",
        "function": "tests.tools.sample_tools:slow_tool",
        "timeout_s": 5,
        "holding": "audio",
        "holding_audio": str(tmp_path / "hold.ulaw"),
        "holding_after_s": 0.2,
    }
    async with (
        open_model_tap(script=script) as tap,
        running_daemon(tmp_path, with_tools(tool), model_url=tap.url) as daemon,
    ):
        result = await call(daemon, 4.5, dtmf=[(0.3, "5")])
        (record,) = await wait_for_record(daemon)
        connection = only_connection(tap)
    # The caller heard the holding audio, looped, then the model's answer with the result.
    assert result.heard.count(music) >= 2
    (output,) = function_outputs(connection)
    assert json.loads(output["output"]) == {"slept_s": 1.6}
    reply = word_beeps(AudioFormat.PCMU, 'Tool slow returned: {"slept_s": 1.6}')
    assert reply in result.heard
    assert result.heard.index(music) < result.heard.index(reply)
    assert record["tool_calls"][0]["outcome"] == "ok"
    # Holding audio is ours: the model was never told to truncate anything.
    assert connection.client("conversation.item.truncate") == []
    assert_all_valid(connection)


# ---- transfer on media streams -------------------------------------------------------------------


async def test_media_stream_transfer_goes_through_the_hook(tmp_path: Path) -> None:
    script = [ScriptedToolCall(name="transfer_call", say="One moment", dtmf="6")]
    async with open_http_server() as server:
        server.reply("/transfer", status=200, body=b'{"redirected": true}')
        tool = {
            "name": "transfer_call",
            "kind": "builtin",
            "target": "sip:desk@pbx.example.com",
            "hook_url": server.url("/transfer"),
        }
        async with running_daemon(tmp_path, with_tools(tool), script=script) as daemon:
            result = await call(daemon, 10, dtmf=[(0.3, "6")])
            (record,) = await wait_for_record(daemon)
        (request,) = server.requests
    assert request.json["tool"] == "transfer_call"
    assert request.json["arguments"] == {"target": "sip:desk@pbx.example.com"}
    assert request.json["call"]["external_ids"] == record["external_ids"]
    assert word_beeps(AudioFormat.PCMU, "One moment") in result.heard
    assert result.hung_up_by == "daemon"
    assert record["end_reason"] == "transferred"


# ---- routes and the pre-call hook ----------------------------------------------------------------

ROUTES = {
    "session": {"instructions": "Default desk.", "voice": "marin"},
    "routes": [
        {
            "name": "sales",
            "called": [CALLED],
            "session": {"instructions": "Sales desk. The caller is {caller}.", "voice": "cedar"},
        },
        {
            "name": "vip",
            "variables": {"tier": "gold"},
            "session": {"instructions": "Greet {customer_name} by name.", "voice": "ash"},
        },
    ],
}


async def test_a_route_chooses_instructions_and_voice_by_the_dialled_number(
    tmp_path: Path,
) -> None:
    other = {**PARAMETERS, "to": "+15550109999"}
    async with (
        open_model_tap() as tap,
        running_daemon(tmp_path, ROUTES, model_url=tap.url) as daemon,
    ):
        await call(daemon, 0.5)
        await call(daemon, 0.5, custom_parameters=other)
        records = await wait_for_record(daemon, 2)
        first, second = tap.connections
    sales = first.client("session.update")[0]["session"]
    default = second.client("session.update")[0]["session"]
    assert sales["instructions"] == f"Sales desk. The caller is {CALLER}."
    assert sales["audio"]["output"]["voice"] == "cedar"
    assert default["instructions"] == "Default desk."
    assert default["audio"]["output"]["voice"] == "marin"
    assert sorted(record["route"] for record in records) == ["", "sales"]
    for connection in (first, second):
        assert_all_valid(connection)


async def test_the_precall_hook_adds_variables_and_picks_a_route(tmp_path: Path) -> None:
    async with open_http_server() as server, open_model_tap() as tap:
        server.reply(
            "/precall", status=200, body=b'{"variables": {"customer_name": "Ann", "tier": "gold"}}'
        )
        overrides = {**ROUTES, "precall_hook": {"url": server.url("/precall"), "timeout_s": 1.0}}
        async with running_daemon(tmp_path, overrides, model_url=tap.url) as daemon:
            await call(daemon, 0.5, custom_parameters={**PARAMETERS, "to": "+15550109999"})
            (record,) = await wait_for_record(daemon)
        (request,) = server.requests
    assert request.json["call"]["caller"] == CALLER
    assert request.json["call"]["called"] == "+15550109999"
    session = only_connection(tap).client("session.update")[0]["session"]
    # The hook's variables match the vip route (the number matches no route).
    assert session["instructions"] == "Greet Ann by name."
    assert session["audio"]["output"]["voice"] == "ash"
    assert record["route"] == "vip"
    assert record["precall_hook"] == "ok"
    assert record["variables"]["customer_name"] == "Ann"


async def test_a_failing_precall_hook_keeps_the_defaults(tmp_path: Path) -> None:
    async with open_http_server() as server, open_model_tap() as tap:
        server.reply("/precall", status=200, body=b"{}", delay_s=5.0)
        overrides = {**ROUTES, "precall_hook": {"url": server.url("/precall"), "timeout_s": 0.3}}
        async with running_daemon(tmp_path, overrides, model_url=tap.url) as daemon:
            await call(daemon, 0.5)
            (record,) = await wait_for_record(daemon)
    session = only_connection(tap).client("session.update")[0]["session"]
    assert session["instructions"] == f"Sales desk. The caller is {CALLER}."
    assert record["route"] == "sales"
    assert record["precall_hook"].startswith("timeout")


@pytest.mark.parametrize("transcripts", [True, False])
async def test_tool_arguments_follow_the_transcripts_setting(
    tmp_path: Path, transcripts: bool
) -> None:
    script = [ScriptedToolCall(name="send_dtmf", arguments='{"digits": "1234"}', dtmf="7")]
    overrides = with_tools(
        {"name": "send_dtmf", "kind": "builtin"}, records={"transcripts": transcripts}
    )
    async with running_daemon(tmp_path, overrides, script=script) as daemon:
        await call(daemon, 2.0, dtmf=[(0.3, "7")])
        (record,) = await wait_for_record(daemon)
    (tool_call,) = record["tool_calls"]
    # A media stream cannot send tones: the model was told so.
    assert tool_call["outcome"] == "error"
    assert ("arguments" in tool_call) is transcripts
    assert ("output" in tool_call) is transcripts
