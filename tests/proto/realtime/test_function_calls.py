"""Function calls: both server reports decoded (GA and beta), one call per call_id, outputs out."""

from __future__ import annotations

import json
import random
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.beta.realtime.realtime_client_event_param import (
    RealtimeClientEventParam as BetaClientEventParam,
)
from openai.types.beta.realtime.realtime_server_event import (
    RealtimeServerEvent as BetaServerEvent,
)
from openai.types.realtime import RealtimeClientEventParam, RealtimeServerEvent

from bridge.call.events import (
    AddFunctionOutput,
    AddUserText,
    AgentEvent,
    AgentFunctionCall,
    AgentReady,
    AgentResponseDone,
    AgentResponseStarted,
    RequestResponse,
)
from bridge.config import Dialect
from bridge.proto.realtime.codec import (
    FunctionCallDone,
    FunctionCallStarted,
    IgnoredServerEvent,
    RealtimeCodec,
)
from bridge.proto.realtime.session import RealtimeSession, ResponsePhase

GA = RealtimeCodec(Dialect.GA)
BETA = RealtimeCodec(Dialect.BETA)
GA_SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)
BETA_SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(BetaServerEvent)
# extra="forbid" reaches the nested TypedDicts, so a misspelt key fails instead of being ignored.
GA_CLIENT_EVENT = pydantic.TypeAdapter(
    RealtimeClientEventParam, config=pydantic.ConfigDict(extra="forbid")
)
BETA_CLIENT_EVENT = pydantic.TypeAdapter(
    BetaClientEventParam, config=pydantic.ConfigDict(extra="forbid")
)

ARGUMENTS = '{"order_id":"A-1001"}'


# ---- server events as the service sends them ---------------------------------------------------


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "name": name,
        "call_id": call_id,
        "arguments": arguments,
    }


def item_added(
    response_id: str, item_id: str, call_id: str, name: str = "lookup_order"
) -> dict[str, Any]:
    return {
        "type": "response.output_item.added",
        "event_id": f"event_added_{item_id}",
        "response_id": response_id,
        "output_index": 0,
        "item": call_item(item_id, call_id, name, "", "in_progress"),
    }


def arguments_done(
    response_id: str,
    item_id: str,
    call_id: str,
    name: str | None = "lookup_order",
    arguments: str = ARGUMENTS,
) -> dict[str, Any]:
    """GA ``response.function_call_arguments.done``; beta has no `name` (pass None)."""
    event = {
        "type": "response.function_call_arguments.done",
        "event_id": f"event_args_{item_id}",
        "response_id": response_id,
        "item_id": item_id,
        "output_index": 0,
        "call_id": call_id,
        "arguments": arguments,
    }
    if name is not None:
        event["name"] = name
    return event


def item_done(
    response_id: str,
    item_id: str,
    call_id: str,
    name: str = "lookup_order",
    arguments: str = ARGUMENTS,
    status: str = "completed",
) -> dict[str, Any]:
    return {
        "type": "response.output_item.done",
        "event_id": f"event_done_{item_id}",
        "response_id": response_id,
        "output_index": 0,
        "item": call_item(item_id, call_id, name, arguments, status),
    }


def message_item_done(response_id: str, item_id: str) -> dict[str, Any]:
    return {
        "type": "response.output_item.done",
        "event_id": "event_msg",
        "response_id": response_id,
        "output_index": 0,
        "item": {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "Let me check."}],
        },
    }


def response_created(response_id: str) -> dict[str, Any]:
    return {
        "type": "response.created",
        "event_id": f"event_created_{response_id}",
        "response": {"id": response_id, "object": "realtime.response", "status": "in_progress"},
    }


def response_done(response_id: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "response.done",
        "event_id": f"event_rdone_{response_id}",
        "response": {"id": response_id, "object": "realtime.response", "status": status},
    }


# ---- sessions -----------------------------------------------------------------------------------

FORMATS = {Dialect.GA: ("audio/pcmu", "audio/pcmu"), Dialect.BETA: ("g711_ulaw", "g711_ulaw")}
SESSION_UPDATES = {
    Dialect.GA: {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
    },
    Dialect.BETA: {"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}},
}


def session_updated(dialect: Dialect) -> dict[str, Any]:
    if dialect is Dialect.GA:
        audio = {"format": {"type": "audio/pcmu"}}
        session: dict[str, Any] = {"id": "sess_1", "audio": {"input": audio, "output": audio}}
    else:
        session = {
            "id": "sess_1",
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_ulaw",
        }
    return {"type": "session.updated", "event_id": "event_su", "session": session}


def new_session(dialect: Dialect = Dialect.GA) -> RealtimeSession:
    return RealtimeSession(
        dialect=dialect,
        session_update=SESSION_UPDATES[dialect],
        expected_formats=FORMATS[dialect],
        session_timeout_s=10.0,
        now=100.0,
    )


def ready_session(dialect: Dialect = Dialect.GA) -> RealtimeSession:
    session = new_session(dialect)
    feed(session, session_updated(dialect))
    assert events(session) == [AgentReady("sess_1")]
    sent(session, dialect)  # the session.update
    return session


def feed(session: RealtimeSession, *raw: dict[str, Any]) -> None:
    for event in raw:
        session.receive_message(json.dumps(event), 101.0)


def events(session: RealtimeSession) -> list[AgentEvent]:
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def sent(session: RealtimeSession, dialect: Dialect = Dialect.GA) -> list[dict[str, Any]]:
    """What went on the wire; every client event must be valid for the dialect's SDK types."""
    decoded = [json.loads(text) for text in session.messages_to_send()]
    for event in decoded:
        if event["type"] == "session.update":
            continue  # built by session_config and checked by its own tests
        GA_CLIENT_EVENT.validate_python(event)
        if dialect is Dialect.BETA:
            BETA_CLIENT_EVENT.validate_python(event)
    return decoded


def function_calls(agent_events: list[AgentEvent]) -> list[AgentFunctionCall]:
    return [event for event in agent_events if isinstance(event, AgentFunctionCall)]


# ---- codec: decoding ----------------------------------------------------------------------------

GA_DECODED = [
    (
        arguments_done("resp_1", "item_1", "call_1"),
        FunctionCallDone("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS),
    ),
    (
        item_done("resp_1", "item_1", "call_1"),
        FunctionCallDone("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS),
    ),
    (
        item_added("resp_1", "item_1", "call_1"),
        FunctionCallStarted("resp_1", "item_1", "call_1", "lookup_order"),
    ),
    (
        item_done("resp_1", "item_1", "call_1", arguments='{"order_id":"A-', status="incomplete"),
        IgnoredServerEvent("response.output_item.done"),
    ),
    (message_item_done("resp_1", "msg_1"), IgnoredServerEvent("response.output_item.done")),
    (
        {**message_item_done("resp_1", "msg_1"), "type": "response.output_item.added"},
        IgnoredServerEvent("response.output_item.added"),
    ),
]


@pytest.mark.parametrize(("raw", "expected"), GA_DECODED)
def test_ga_function_call_events_decode(raw: dict[str, Any], expected: object) -> None:
    GA_SERVER_EVENT.validate_python(raw)  # the fixture is a real GA server event
    assert GA.decode(json.dumps(raw)) == expected
    assert BETA.decode(json.dumps(raw)) == expected  # beta codecs read GA names too


BETA_DECODED = [
    (
        arguments_done("resp_1", "item_1", "call_1", name=None),
        FunctionCallDone("resp_1", "item_1", "call_1", "", ARGUMENTS),
    ),
    (
        item_done("resp_1", "item_1", "call_1"),
        FunctionCallDone("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS),
    ),
    (
        item_added("resp_1", "item_1", "call_1"),
        FunctionCallStarted("resp_1", "item_1", "call_1", "lookup_order"),
    ),
    (
        item_done("resp_1", "item_1", "call_1", status="incomplete"),
        IgnoredServerEvent("response.output_item.done"),
    ),
]


@pytest.mark.parametrize(("raw", "expected"), BETA_DECODED)
def test_beta_function_call_events_decode(raw: dict[str, Any], expected: object) -> None:
    BETA_SERVER_EVENT.validate_python(raw)  # the fixture is a real beta server event
    assert BETA.decode(json.dumps(raw)) == expected


def test_function_call_decoding_is_tolerant() -> None:
    assert GA.decode('{"type":"response.function_call_arguments.done"}') == FunctionCallDone(
        "", "", "", "", ""
    )
    assert GA.decode(
        '{"type":"response.function_call_arguments.done","call_id":7,"arguments":{"a":1}}'
    ) == FunctionCallDone("", "", "", "", "")
    for kind in ("response.output_item.added", "response.output_item.done"):
        assert GA.decode(json.dumps({"type": kind, "item": None})) == IgnoredServerEvent(kind)
        assert GA.decode(json.dumps({"type": kind})) == IgnoredServerEvent(kind)
    assert GA.decode(
        json.dumps(
            {
                "type": "response.output_item.done",
                "item": {"type": "function_call", "status": "completed", "name": 3},
            }
        )
    ) == FunctionCallDone("", "", "", "", "")


# ---- codec: encoding ----------------------------------------------------------------------------


def test_function_call_output_on_the_wire() -> None:
    text = GA.function_call_output("call_1", '{"status":"shipped","note":"ünïcode \\"q\\""}', "e_1")
    event = json.loads(text)
    assert event == {
        "type": "conversation.item.create",
        "event_id": "e_1",
        "item": {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": '{"status":"shipped","note":"ünïcode \\"q\\""}',
        },
    }
    GA_CLIENT_EVENT.validate_python(event)
    BETA_CLIENT_EVENT.validate_python(event)


@pytest.mark.parametrize(
    ("instructions", "allow_tools", "expected"),
    [
        (None, True, None),
        ("Say hi.", True, {"instructions": "Say hi."}),
        (None, False, {"tool_choice": "none"}),
        ("Say one moment.", False, {"instructions": "Say one moment.", "tool_choice": "none"}),
    ],
)
def test_response_create_can_forbid_tools(
    instructions: str | None, allow_tools: bool, expected: dict[str, Any] | None
) -> None:
    event = json.loads(GA.response_create(instructions, "e_2", allow_tools=allow_tools))
    assert event.get("response") == expected
    assert event["type"] == "response.create"
    GA_CLIENT_EVENT.validate_python(event)
    BETA_CLIENT_EVENT.validate_python(event)


# ---- session: one AgentFunctionCall per call_id -------------------------------------------------


def test_ga_call_reported_once_when_arguments_are_done_and_before_response_done() -> None:
    session = ready_session()
    feed(session, response_created("resp_1"), item_added("resp_1", "item_1", "call_1"))
    assert events(session) == [AgentResponseStarted("resp_1")]
    feed(session, arguments_done("resp_1", "item_1", "call_1"))
    # Reported at once, so the tool can run while the rest of the response streams.
    assert events(session) == [
        AgentFunctionCall("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS)
    ]
    feed(session, item_done("resp_1", "item_1", "call_1"), response_done("resp_1"))
    assert events(session) == [AgentResponseDone("resp_1", "completed")]
    statistics = session.statistics()
    assert statistics.function_calls == 1
    assert statistics.function_call_duplicates == 1
    assert statistics.function_calls_dropped == 0


def test_output_item_done_first_then_arguments_done_is_one_call() -> None:
    session = ready_session()
    feed(
        session,
        response_created("resp_1"),
        item_done("resp_1", "item_1", "call_1"),
        arguments_done("resp_1", "item_1", "call_1"),
        response_done("resp_1"),
    )
    assert events(session) == [
        AgentResponseStarted("resp_1"),
        AgentFunctionCall("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS),
        AgentResponseDone("resp_1", "completed"),
    ]


def test_parallel_calls_of_one_response_are_each_reported_once() -> None:
    session = ready_session()
    feed(
        session,
        response_created("resp_1"),
        message_item_done("resp_1", "msg_1"),
        item_added("resp_1", "item_1", "call_1"),
        arguments_done("resp_1", "item_1", "call_1"),
        item_added("resp_1", "item_2", "call_2", name="end_call"),
        arguments_done("resp_1", "item_2", "call_2", name="end_call", arguments="{}"),
        item_done("resp_1", "item_1", "call_1"),
        item_done("resp_1", "item_2", "call_2", name="end_call", arguments="{}"),
        response_done("resp_1"),
    )
    assert events(session) == [
        AgentResponseStarted("resp_1"),
        AgentFunctionCall("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS),
        AgentFunctionCall("resp_1", "item_2", "call_2", "end_call", "{}"),
        AgentResponseDone("resp_1", "completed"),
    ]
    assert session.statistics().function_calls == 2


def test_incomplete_call_item_is_not_a_call() -> None:
    session = ready_session()
    feed(
        session,
        response_created("resp_1"),
        item_added("resp_1", "item_1", "call_1"),
        item_done("resp_1", "item_1", "call_1", arguments='{"order', status="incomplete"),
        response_done("resp_1", status="cancelled"),
    )
    assert events(session) == [
        AgentResponseStarted("resp_1"),
        AgentResponseDone("resp_1", "cancelled"),
    ]
    assert session.statistics().function_calls == 0


def test_function_call_events_before_ready_are_ignored() -> None:
    session = new_session()
    feed(session, arguments_done("resp_1", "item_1", "call_1"))
    assert events(session) == []
    feed(session, session_updated(Dialect.GA))
    assert events(session) == [AgentReady("sess_1")]


# ---- session: beta names come from the output items ---------------------------------------------


def test_beta_call_named_by_output_item_added() -> None:
    session = ready_session(Dialect.BETA)
    feed(
        session,
        response_created("resp_1"),
        item_added("resp_1", "item_1", "call_1"),
        arguments_done("resp_1", "item_1", "call_1", name=None),
    )
    assert function_calls(events(session)) == [
        AgentFunctionCall("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS)
    ]
    feed(session, item_done("resp_1", "item_1", "call_1"), response_done("resp_1"))
    assert events(session) == [AgentResponseDone("resp_1", "completed")]


def test_beta_call_without_added_waits_for_output_item_done() -> None:
    session = ready_session(Dialect.BETA)
    feed(
        session, response_created("resp_1"), arguments_done("resp_1", "item_1", "call_1", name=None)
    )
    assert events(session) == [AgentResponseStarted("resp_1")]
    feed(session, item_done("resp_1", "item_1", "call_1"))
    assert events(session) == [
        AgentFunctionCall("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS)
    ]
    feed(session, response_done("resp_1"))
    assert events(session) == [AgentResponseDone("resp_1", "completed")]
    assert session.statistics().function_calls == 1


def test_call_never_named_is_reported_when_its_response_is_done() -> None:
    session = ready_session(Dialect.BETA)
    feed(
        session,
        response_created("resp_1"),
        arguments_done("resp_1", "item_1", "call_1", name=None),
        response_done("resp_1"),
    )
    # The control loop can still answer it (unknown tool), so the model is not left waiting.
    assert events(session) == [
        AgentResponseStarted("resp_1"),
        AgentFunctionCall("resp_1", "item_1", "call_1", "", ARGUMENTS),
        AgentResponseDone("resp_1", "completed"),
    ]


def test_call_without_call_id_cannot_be_answered_and_is_dropped() -> None:
    session = ready_session()
    feed(
        session,
        response_created("resp_1"),
        arguments_done("resp_1", "item_1", ""),
        response_done("resp_1"),
    )
    assert events(session) == [
        AgentResponseStarted("resp_1"),
        AgentResponseDone("resp_1", "completed"),
    ]
    assert session.statistics().function_calls_dropped == 1


def test_call_id_missing_from_one_report_is_taken_from_the_other() -> None:
    session = ready_session(Dialect.BETA)
    feed(
        session,
        response_created("resp_1"),
        arguments_done("resp_1", "item_1", "", name=None),
        item_done("resp_1", "item_1", "call_1"),
        response_done("resp_1"),
    )
    assert function_calls(events(session)) == [
        AgentFunctionCall("resp_1", "item_1", "call_1", "lookup_order", ARGUMENTS)
    ]


def test_a_call_of_another_response_waits_for_its_own_response() -> None:
    session = ready_session(Dialect.BETA)
    feed(
        session,
        response_created("resp_1"),
        arguments_done("resp_oob", "item_9", "call_9", name=None),
        response_done("resp_1"),
    )
    assert function_calls(events(session)) == []
    feed(session, item_done("resp_oob", "item_9", "call_9", name="lookup_order"))
    assert function_calls(events(session)) == [
        AgentFunctionCall("resp_oob", "item_9", "call_9", "lookup_order", ARGUMENTS)
    ]


# Per call: which of the three events the server sends (added is optional), each possibly twice.
CALL_EVENTS = st.lists(
    st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=3
)


@settings(max_examples=200, deadline=None)
@given(
    plan=CALL_EVENTS,
    dialect=st.sampled_from([Dialect.GA, Dialect.BETA]),
    order=st.randoms(use_true_random=False),
)
def test_every_call_is_reported_exactly_once_before_its_response_is_done(
    plan: list[tuple[bool, bool, bool]], dialect: Dialect, order: random.Random
) -> None:
    session = ready_session(dialect)
    feed(session, response_created("resp_1"))
    name_in_arguments = "lookup_order" if dialect is Dialect.GA else None
    wire: list[dict[str, Any]] = []
    for index, (with_added, twice, item_done_first) in enumerate(plan):
        ids = ("resp_1", f"item_{index}", f"call_{index}")
        reports = [
            arguments_done(*ids, name=name_in_arguments, arguments=f'{{"n":{index}}}'),
            item_done(*ids, arguments=f'{{"n":{index}}}'),
        ]
        if item_done_first:
            reports.reverse()
        wire += ([item_added(*ids)] if with_added else []) + reports * (2 if twice else 1)
    order.shuffle(wire)
    for raw in wire:
        (GA_SERVER_EVENT if dialect is Dialect.GA else BETA_SERVER_EVENT).validate_python(raw)
    feed(session, *wire, response_done("resp_1"))

    agent_events = events(session)
    assert agent_events[0] == AgentResponseStarted("resp_1")
    assert agent_events[-1] == AgentResponseDone("resp_1", "completed")
    assert sorted(function_calls(agent_events), key=lambda call: call.call_id) == [
        AgentFunctionCall("resp_1", f"item_{i}", f"call_{i}", "lookup_order", f'{{"n":{i}}}')
        for i in range(len(plan))
    ]
    assert session.statistics().function_calls == len(plan)


# ---- session: outputs and the tool-less response on the wire ------------------------------------


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA])
def test_outputs_then_one_response_create_on_the_wire(dialect: Dialect) -> None:
    session = ready_session(dialect)
    feed(
        session,
        response_created("resp_1"),
        arguments_done("resp_1", "item_1", "call_1"),
        arguments_done("resp_1", "item_2", "call_2"),
        response_done("resp_1"),
    )
    assert len(function_calls(events(session))) == 2
    session.send(AddFunctionOutput("call_1", '{"status":"shipped"}'), 102.0)
    session.send(AddFunctionOutput("call_2", '{"error":"timeout"}'), 102.0)
    session.send(RequestResponse(), 102.0)
    wire = sent(session, dialect)
    assert [(event["type"], event.get("item")) for event in wire] == [
        (
            "conversation.item.create",
            {"type": "function_call_output", "call_id": "call_1", "output": '{"status":"shipped"}'},
        ),
        (
            "conversation.item.create",
            {"type": "function_call_output", "call_id": "call_2", "output": '{"error":"timeout"}'},
        ),
        ("response.create", None),
    ]
    assert "response" not in wire[2]
    assert session.statistics().function_outputs_sent == 2


def test_outputs_before_ready_are_held_in_order() -> None:
    session = new_session()
    sent(session)  # the session.update
    session.send(AddFunctionOutput("call_1", "one"), 100.5)
    session.send(AddUserText("note"), 100.5)
    session.send(RequestResponse(allow_tools=False), 100.5)
    assert sent(session) == []
    feed(session, session_updated(Dialect.GA))
    wire = sent(session)
    assert [event["type"] for event in wire] == [
        "conversation.item.create",
        "conversation.item.create",
        "response.create",
    ]
    assert wire[0]["item"] == {"type": "function_call_output", "call_id": "call_1", "output": "one"}
    assert wire[2]["response"] == {"tool_choice": "none"}


@pytest.mark.parametrize("dialect", [Dialect.GA, Dialect.BETA])
def test_tool_less_request_goes_out_with_tool_choice_none(dialect: Dialect) -> None:
    session = ready_session(dialect)
    session.send(RequestResponse("Say: one moment please.", allow_tools=False), 102.0)
    [create] = sent(session, dialect)
    assert create["response"] == {
        "instructions": "Say: one moment please.",
        "tool_choice": "none",
    }


def queued_after_active(*requests: RequestResponse) -> dict[str, Any]:
    """The one response.create sent for `requests` queued while a response was active."""
    session = ready_session()
    feed(session, response_created("resp_vad"))
    for request in requests:
        session.send(request, 102.0)
    assert sent(session) == []
    feed(session, response_done("resp_vad"))
    [create] = sent(session)
    assert create["type"] == "response.create"
    assert session.response_phase is ResponsePhase.REQUESTED
    assert session.statistics().requests_coalesced == len(requests) - 1
    return create


HOLD = RequestResponse("Say: one moment.", allow_tools=False)


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        # The tool results are due: the holding phrase is moot, whichever came first.
        ((HOLD, RequestResponse()), None),
        ((RequestResponse(), HOLD), None),
        ((RequestResponse("Greet."), HOLD), {"instructions": "Greet."}),
        ((HOLD, RequestResponse("Greet."), HOLD), {"instructions": "Greet."}),
        # Only tool-less requests: still tool-less, the last instructions win.
        (
            (HOLD, RequestResponse("Say: still checking.", allow_tools=False)),
            {"instructions": "Say: still checking.", "tool_choice": "none"},
        ),
        (
            (HOLD, RequestResponse(allow_tools=False)),
            {"instructions": "Say: one moment.", "tool_choice": "none"},
        ),
    ],
)
def test_coalesced_request_is_tool_less_only_if_every_request_was(
    requests: tuple[RequestResponse, ...], expected: dict[str, Any] | None
) -> None:
    assert queued_after_active(*requests).get("response") == expected


def test_rejected_tool_less_request_gives_way_to_a_normal_one() -> None:
    session = ready_session()
    session.send(HOLD, 102.0)
    [hold] = sent(session)
    # The server's own VAD response won the race; meanwhile the tool results came in.
    feed(session, response_created("resp_vad"))
    session.send(RequestResponse(), 102.0)
    feed(
        session,
        {
            "type": "error",
            "event_id": "event_err",
            "error": {
                "type": "invalid_request_error",
                "code": "conversation_already_has_active_response",
                "message": "busy",
                "event_id": hold["event_id"],
            },
        },
        response_done("resp_vad"),
    )
    [create] = sent(session)
    assert "response" not in create
