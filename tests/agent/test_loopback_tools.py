"""The loopback model's scripted function calls (realtime-api.md §4.2), event by event.

A ``ScriptedToolCall`` makes the model answer a user text item (the keypad message, or a phrase)
with an optional spoken part and then a ``function_call`` item, in the GA event sequence or the
beta one. Every server event these flows produce is validated against the openai-python Realtime
types by the same harness the other loopback tests use, and, beyond that, no event may carry a
field those types do not declare (the types accept unknown fields, so a typo would slip through).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pydantic
import pytest
import trio
import trio_websocket

from bridge.adapters.loopback_server import LoopbackServer, serve_loopback_model
from bridge.agent.loopback import (
    AudioFormat,
    Dialect,
    FunctionCallMade,
    FunctionOutputReceived,
    ScriptedToolCall,
    word_beeps,
)
from bridge.call.events import Codec, dtmf_message
from tests.agent.test_loopback import (
    BETA_EVENTS,
    GA_EVENTS,
    Harness,
    caller_turn,
    error_codes,
    first,
    reply_audio,
    types,
)

CALL_ID = re.compile(r"call_[A-Za-z0-9]{21}")
# Fields the wire carries beyond openai-python's types, each backed by the OpenAPI spec
# (shared/openapi/openai-openapi.yaml): the beta arguments.done names its function
# (RealtimeBetaServerEventResponseFunctionCallArgumentsDone.name), and usage has the GA details.
DECLARED_ELSEWHERE = {
    ("beta", "response.function_call_arguments.done"): {".name"},
    ("beta", "response.done"): {
        ".response.usage.input_token_details.image_tokens",
        ".response.usage.input_token_details.cached_tokens_details",
    },
}
GOODBYE = ScriptedToolCall(
    name="end_call",
    arguments=json.dumps({"reason": "the caller said goodbye"}),
    say="Thank you, goodbye",
    dtmf="1",
)
LOOKUP = ScriptedToolCall(
    name="lookup_order", arguments=json.dumps({"order_number": "A-42"}), user_text="my order"
)
TRANSFER = ScriptedToolCall(name="transfer_call", say="One moment", dtmf="12")


def undeclared_fields(value: Any, path: str = "") -> set[str]:
    """Paths of fields a validated openai model kept as extras, nested models included."""
    found: set[str] = set()
    if isinstance(value, pydantic.BaseModel):
        found.update(f"{path}.{key}" for key in value.__pydantic_extra__ or {})
        for name in type(value).model_fields:
            found |= undeclared_fields(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for index, entry in enumerate(value):
            found |= undeclared_fields(entry, f"{path}[{index}]")
    return found


class ToolHarness(Harness):
    """The loopback harness, stricter: tool-flow events carry only fields the types declare."""

    def take(self) -> list[dict[str, Any]]:
        events = super().take()
        adapter = GA_EVENTS if self.dialect is Dialect.GA else BETA_EVENTS
        for event in events:
            if event["type"].startswith("session."):
                continue  # session documents are checked field by field in test_loopback.py
            allowed = DECLARED_ELSEWHERE.get((self.dialect.value, event["type"]), set())
            extra = undeclared_fields(adapter.validate_python(event)) - allowed
            assert not extra, f"{event['type']} carries undeclared fields {sorted(extra)}"
        return events

    def user_text(self, text: str) -> list[dict[str, Any]]:
        return self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )

    def output(self, call_id: str, output: str, **event: Any) -> list[dict[str, Any]]:
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        return self.send({"type": "conversation.item.create", "item": item, **event})

    def timeline(self, limit: float = 60.0) -> list[tuple[float, dict[str, Any]]]:
        """Let time pass deadline by deadline; each event with the time it was released."""
        released = []
        while (deadline := self.model.next_deadline()) <= limit:
            self.now = max(self.now, deadline)
            self.model.handle_timeout(self.now)
            released += [(self.now, event) for event in self.take()]
        return released


def harness(*script: ScriptedToolCall, codec: Codec = Codec.PCMU, **options: Any) -> ToolHarness:
    tools = ToolHarness(script=script, **options)
    tools.take()
    if tools.dialect is Dialect.GA:
        tools.configure(codec)
    else:
        law = {Codec.PCMU: "g711_ulaw", Codec.PCMA: "g711_alaw"}[codec]
        tools.send(
            {
                "type": "session.update",
                "session": {"input_audio_format": law, "output_audio_format": law},
            }
        )
    return tools


def scripted_response(tools: ToolHarness, trigger: str) -> list[dict[str, Any]]:
    tools.user_text(trigger)
    return tools.send({"type": "response.create"}) + tools.run_until_idle()


def call_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"].startswith("response.function_call_arguments.")]


def function_call_ga(deltas: int) -> list[str]:
    """A GA function call's events to the end of its response, with `deltas` argument pieces."""
    return [
        "response.output_item.added",
        "conversation.item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]


# ---- triggers and the GA event sequence ----------------------------------------------------------


def test_keypad_message_makes_the_model_say_goodbye_and_then_call_end_call() -> None:
    tools = harness(GOODBYE)
    events = scripted_response(tools, dtmf_message("1"))
    say_ends = types(events).index("conversation.item.done")
    assert types(events)[:5] == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert types(events)[say_ends - 5 : say_ends + 1] == [
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
    ]
    # The arguments (37 characters) stream in 16-character pieces after the spoken part.
    assert len(GOODBYE.arguments) == 37
    assert types(events)[say_ends + 1 :] == function_call_ga(3)
    assert reply_audio(events) == word_beeps(AudioFormat.PCMU, "Thank you, goodbye")
    transcript = first(events, "response.output_audio_transcript.done")["transcript"]
    assert transcript == "Thank you, goodbye"

    message_id = first(events, "response.output_item.added")["item"]["id"]
    response_id = first(events, "response.created")["response"]["id"]
    added = [e for e in events if e["type"] == "response.output_item.added"][1]
    call_item = added["item"]
    assert added["output_index"] == 1
    assert CALL_ID.fullmatch(call_item["call_id"])
    assert call_item == {
        "id": call_item["id"],
        "object": "realtime.item",
        "type": "function_call",
        "status": "in_progress",
        "name": "end_call",
        "call_id": call_item["call_id"],
        "arguments": "",
    }
    conversation_added = [e for e in events if e["type"] == "conversation.item.added"][1]
    assert conversation_added["previous_item_id"] == message_id
    *deltas, done = call_events(events)
    ids = {"response_id": response_id, "item_id": call_item["id"], "output_index": 1}
    assert all(
        delta.items() >= {**ids, "call_id": call_item["call_id"]}.items() for delta in deltas
    )
    assert "".join(delta["delta"] for delta in deltas) == GOODBYE.arguments
    assert {key: value for key, value in done.items() if key != "event_id"} == {
        "type": "response.function_call_arguments.done",
        **ids,
        "call_id": call_item["call_id"],
        "name": "end_call",
        "arguments": GOODBYE.arguments,
    }
    completed = {**call_item, "status": "completed", "arguments": GOODBYE.arguments}
    assert [e["item"] for e in events if e["type"] == "response.output_item.done"][1] == completed
    assert [e["item"] for e in events if e["type"] == "conversation.item.done"][1] == completed

    response = events[-1]["response"]
    assert response["status"] == "completed"
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][0]["content"] == [
        {"type": "output_audio", "transcript": "Thank you, goodbye"}
    ]
    assert response["output"][1] == completed
    assert tools.model.statistics().function_calls == [
        FunctionCallMade(call_id=call_item["call_id"], name="end_call", arguments=GOODBYE.arguments)
    ]


def test_the_call_follows_the_last_audio_delta_at_the_pace_of_the_audio() -> None:
    tools = harness(GOODBYE)
    tools.user_text(dtmf_message("1"))
    start = tools.now
    released = [(tools.now, event) for event in tools.send({"type": "response.create"})]
    released += tools.timeline()
    kinds = [event["type"] for _, event in released]
    last_delta = max(i for i, kind in enumerate(kinds) if kind == "response.output_audio.delta")
    call_starts = kinds.index("response.function_call_arguments.delta")
    assert last_delta < call_starts
    # Three words of 250 ms at four times real time: 100 ms deltas are due every 25 ms, and the
    # call is made once the whole 750 ms is due, together with response.done, not before.
    assert len(word_beeps(AudioFormat.PCMU, GOODBYE.say)) == 750 * 8
    delta_times = [t for t, event in released if event["type"] == "response.output_audio.delta"]
    assert delta_times == pytest.approx([start + n * 0.1 / 4 for n in range(8)])
    call_times = [t for t, _ in released[call_starts:]]
    assert call_times == pytest.approx([start + 0.75 / 4] * len(call_times))
    assert kinds[-1] == "response.done"


def test_a_phrase_in_the_user_text_triggers_a_call_without_speech() -> None:
    tools = harness(GOODBYE, LOOKUP)
    tools.user_text("Where is my order, please?")
    events = tools.send({"type": "response.create"})
    # Nothing to say: the response is the function call alone, at output index 0, at once.
    assert types(events) == ["response.created", "rate_limits.updated", *function_call_ga(2)]
    assert "response.output_audio.delta" not in types(events)
    done = first(events, "response.function_call_arguments.done")
    assert (done["output_index"], done["name"]) == (0, "lookup_order")
    assert json.loads(done["arguments"]) == {"order_number": "A-42"}
    response = events[-1]["response"]
    assert [item["type"] for item in response["output"]] == ["function_call"]
    assert response["output_modalities"] == ["audio"]
    # The arguments are the output: one token per four characters, no audio.
    assert len(LOOKUP.arguments) == 24
    assert response["usage"]["output_token_details"] == {"text_tokens": 6, "audio_tokens": 0}
    assert tools.run_until_idle() == []


def test_several_keys_match_the_keypad_message_exactly() -> None:
    tools = harness(TRANSFER, GOODBYE)
    events = scripted_response(tools, dtmf_message("12"))
    assert first(events, "response.function_call_arguments.done")["name"] == "transfer_call"
    # "1" alone is a different message: the keypad trigger is not a substring match.
    events = scripted_response(tools, dtmf_message("1"))
    assert first(events, "response.function_call_arguments.done")["name"] == "end_call"
    events = scripted_response(tools, dtmf_message("123"))
    assert call_events(events) == []


def test_only_the_newest_user_text_since_the_previous_response_triggers() -> None:
    tools = harness(GOODBYE)
    tools.user_text(dtmf_message("1"))
    tools.user_text("Actually, never mind.")
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    assert call_events(events) == []
    assert first(events, "response.output_audio_transcript.done")["transcript"] == (
        "Actually, never mind."
    )
    # A trigger answered by one response (here a holding phrase) does not fire again later.
    tools.user_text(dtmf_message("1"))
    events = tools.send({"type": "response.create", "response": {"instructions": "Hold on"}})
    events += tools.run_until_idle()
    assert call_events(events) == []
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    assert call_events(events) == []
    assert tools.model.statistics().function_calls == []


def test_a_deleted_trigger_no_longer_counts() -> None:
    tools = harness(GOODBYE)
    item_id = tools.user_text(dtmf_message("1"))[0]["item"]["id"]
    assert types(tools.send({"type": "conversation.item.delete", "item_id": item_id})) == [
        "conversation.item.deleted"
    ]
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    assert call_events(events) == []


def test_a_turn_detection_response_makes_the_scripted_call_instead_of_the_echo() -> None:
    tools = harness(GOODBYE)
    tools.user_text(dtmf_message("1"))
    events = tools.stream(caller_turn(Codec.PCMU)) + tools.run_until_idle()
    assert "input_audio_buffer.committed" in types(events)
    assert reply_audio(events) == word_beeps(AudioFormat.PCMU, GOODBYE.say)
    assert first(events, "response.function_call_arguments.done")["name"] == "end_call"
    # The next turn has no new trigger and is echoed as usual.
    events = tools.stream(caller_turn(Codec.PCMU)) + tools.run_until_idle()
    assert call_events(events) == []
    assert first(events, "response.output_audio_transcript.done")["transcript"].startswith(
        "You said"
    )


def test_a_response_with_instructions_never_calls() -> None:
    tools = harness(GOODBYE)
    tools.user_text(dtmf_message("1"))
    events = tools.send({"type": "response.create", "response": {"instructions": "Greet"}})
    events += tools.run_until_idle()
    assert call_events(events) == []
    assert first(events, "response.output_audio_transcript.done")["transcript"] == "Greet"


# ---- tool_choice ---------------------------------------------------------------------------------


def test_tool_choice_none_on_the_response_never_calls() -> None:
    tools = harness(GOODBYE)
    tools.user_text(dtmf_message("1"))
    events = tools.send({"type": "response.create", "response": {"tool_choice": "none"}})
    events += tools.run_until_idle()
    assert call_events(events) == []
    assert "function_call" not in json.dumps(events)
    # Answered as any response.create without instructions: the last user text, a 1 s tone.
    done = first(events, "response.done")["response"]
    assert done["output"][0]["content"][0]["transcript"] == dtmf_message("1")
    assert len(reply_audio(events)) == 8000
    assert tools.model.statistics().function_calls == []


@pytest.mark.parametrize(("response_choice", "calls"), [(None, False), ("auto", True)])
def test_session_tool_choice_none_applies_unless_the_response_overrides_it(
    response_choice: str | None, calls: bool
) -> None:
    tools = harness(GOODBYE)
    tools.send({"type": "session.update", "session": {"type": "realtime", "tool_choice": "none"}})
    tools.user_text(dtmf_message("1"))
    response = {} if response_choice is None else {"tool_choice": response_choice}
    events = tools.send({"type": "response.create", "response": response})
    events += tools.run_until_idle()
    assert bool(call_events(events)) is calls


def test_a_malformed_tool_choice_is_refused() -> None:
    tools = harness(GOODBYE)
    tools.user_text(dtmf_message("1"))
    events = tools.send({"type": "response.create", "response": {"tool_choice": "never"}})
    assert error_codes(events) == ["invalid_value"]
    assert events[0]["error"]["param"] == "response.tool_choice"
    # The refused request took nothing: the trigger still fires with the next one.
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    assert first(events, "response.function_call_arguments.done")["name"] == "end_call"


# ---- function outputs ----------------------------------------------------------------------------


def made_call_id(events: list[dict[str, Any]]) -> str:
    call_id: str = first(events, "response.function_call_arguments.done")["call_id"]
    return call_id


def test_the_output_is_answered_by_the_next_response() -> None:
    tools = harness(LOOKUP)
    call_id = made_call_id(scripted_response(tools, "Where is my order?"))
    output = '{"status": "shipped"}'
    events = tools.output(call_id, output)
    assert types(events) == ["conversation.item.added", "conversation.item.done"]
    assert events[1]["item"] == {
        "id": events[1]["item"]["id"],
        "object": "realtime.item",
        "type": "function_call_output",
        "status": "completed",
        "call_id": call_id,
        "output": output,
    }
    # Adding the output does not trigger a reply (§4.2 step 4).
    assert tools.run_until_idle() == []
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    reply = 'Tool lookup_order returned: {"status": "shipped"}'
    assert first(events, "response.output_audio_transcript.done")["transcript"] == reply
    assert reply_audio(events) == word_beeps(AudioFormat.PCMU, reply)
    assert call_events(events) == []
    stats = tools.model.statistics()
    assert stats.function_outputs == [FunctionOutputReceived(call_id=call_id, output=output)]
    # Answered once: the next response.create is an ordinary one again.
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    assert first(events, "response.output_audio_transcript.done")["transcript"] != reply


def test_several_outputs_are_answered_together() -> None:
    second = ScriptedToolCall(name="check_stock", arguments='{"sku": 7}', dtmf="2")
    tools = harness(LOOKUP, second)
    lookup_id = made_call_id(scripted_response(tools, "about my order"))
    stock_id = made_call_id(scripted_response(tools, dtmf_message("2")))
    tools.output(lookup_id, "shipped")
    tools.output(stock_id, "3 left")
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    reply = "Tool lookup_order returned: shipped Tool check_stock returned: 3 left"
    assert first(events, "response.output_audio_transcript.done")["transcript"] == reply
    assert [call.name for call in tools.model.statistics().function_calls] == [
        "lookup_order",
        "check_stock",
    ]


def test_an_output_for_an_unknown_call_is_an_error() -> None:
    tools = harness(LOOKUP)
    events = tools.output("call_nobodymadethis00001", "{}", event_id="out-1")
    assert types(events) == ["error"]
    assert events[0]["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "No tool call found for function call output with call_id "
        "call_nobodymadethis00001.",
        "param": "item.call_id",
        "event_id": "out-1",
    }
    assert tools.model.statistics().function_outputs == []
    # Nothing was added, so the next response is not a tool reply.
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    assert "returned" not in first(events, "response.output_audio_transcript.done")["transcript"]


def test_an_output_may_answer_a_call_the_client_replayed() -> None:
    tools = harness()
    replayed = {
        "type": "function_call",
        "call_id": "call_replayedfromhistory1",
        "name": "lookup_order",
        "arguments": "{}",
    }
    assert types(tools.send({"type": "conversation.item.create", "item": replayed})) == [
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert types(tools.output("call_replayedfromhistory1", "found")) == [
        "conversation.item.added",
        "conversation.item.done",
    ]
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    transcript = first(events, "response.output_audio_transcript.done")["transcript"]
    assert transcript == "Tool lookup_order returned: found"


def test_a_cancelled_response_never_makes_its_call() -> None:
    tools = harness(GOODBYE)
    tools.user_text(dtmf_message("1"))
    tools.send({"type": "response.create"})
    events = tools.send({"type": "response.cancel"})
    assert call_events(events) == []
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert [item["type"] for item in done["output"]] == ["message"]
    assert tools.model.statistics().function_calls == []
    assert error_codes(tools.output("call_" + "x" * 21, "late")) == ["invalid_value"]


def test_a_text_only_session_writes_the_words_then_calls() -> None:
    tools = harness(GOODBYE)
    tools.send(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
    )
    events = scripted_response(tools, dtmf_message("1"))
    assert "response.output_audio.delta" not in types(events)
    assert first(events, "response.output_text.done")["text"] == "Thank you, goodbye"
    response = events[-1]["response"]
    assert response["output_modalities"] == ["text"]
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]


# ---- beta dialect --------------------------------------------------------------------------------


def test_the_beta_dialect_calls_in_the_beta_shape() -> None:
    tools = harness(GOODBYE, LOOKUP, dialect="beta")
    events = scripted_response(tools, dtmf_message("1"))
    say_ends = types(events).index("response.output_item.done")
    assert types(events)[:5] == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
    ]
    assert types(events)[say_ends + 1 :] == [
        "response.output_item.added",
        "conversation.item.created",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]
    assert "conversation.item.added" not in types(events)
    assert "conversation.item.done" not in types(events)
    assert reply_audio(events, "response.audio.delta") == word_beeps(AudioFormat.PCMU, GOODBYE.say)
    done = first(events, "response.function_call_arguments.done")
    assert (done["name"], done["arguments"], done["output_index"]) == (
        "end_call",
        GOODBYE.arguments,
        1,
    )
    response = events[-1]["response"]
    assert response["modalities"] == ["text", "audio"]
    message, call = response["output"]
    assert message["content"] == [{"type": "audio", "transcript": "Thank you, goodbye"}]
    assert call["type"] == "function_call" and call["call_id"] == done["call_id"]

    events = tools.output(done["call_id"], "bye")
    assert types(events) == ["conversation.item.created"]
    events = tools.send({"type": "response.create"}) + tools.run_until_idle()
    transcript = first(events, "response.audio_transcript.done")["transcript"]
    assert transcript == "Tool end_call returned: bye"
    assert error_codes(tools.output("call_unknown", "x")) == ["invalid_value"]


def test_the_beta_dialect_honours_tool_choice_none() -> None:
    tools = harness(LOOKUP, dialect="beta")
    tools.user_text("my order")
    events = tools.send({"type": "response.create", "response": {"tool_choice": "none"}})
    events += tools.run_until_idle()
    assert call_events(events) == []


# ---- the script itself ---------------------------------------------------------------------------


def test_a_scripted_call_needs_a_trigger() -> None:
    with pytest.raises(ValueError, match="needs a trigger"):
        ScriptedToolCall(name="end_call")
    assert ScriptedToolCall(name="x", user_text="help").triggered_by("please help me")
    assert not ScriptedToolCall(name="x", dtmf="1").triggered_by(dtmf_message("11"))


def test_arguments_are_sent_as_written_even_when_not_json() -> None:
    broken = ScriptedToolCall(name="lookup_order", arguments='{"order": ', dtmf="5")
    empty = ScriptedToolCall(name="ping", arguments="", dtmf="6")
    tools = harness(broken, empty)
    events = scripted_response(tools, dtmf_message("5"))
    assert first(events, "response.function_call_arguments.done")["arguments"] == '{"order": '
    events = scripted_response(tools, dtmf_message("6"))
    (delta, done) = call_events(events)
    assert (delta["delta"], done["arguments"]) == ("", "")


# ---- any order of events -------------------------------------------------------------------------

# Weighted towards triggers, plain response.create and known call ids, so most runs make calls.
TRIGGERS = st.sampled_from([dtmf_message("1"), "my order?", "my order?", "hello"])
TOOL_STEPS = st.one_of(
    st.tuples(st.just("ask"), TRIGGERS),
    st.tuples(st.just("ask"), TRIGGERS),
    st.tuples(st.just("text"), TRIGGERS),
    st.tuples(
        st.just("create"),
        st.sampled_from([None, None, "none", "auto"]),
        st.sampled_from([None, None, "", "Hold on"]),
    ),
    st.tuples(st.just("output"), st.sampled_from([True, True, False]), st.text(max_size=20)),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("wait"), st.floats(min_value=0, max_value=0.3)),
    st.tuples(st.just("wait"), st.just(1.0)),
)


@hypothesis.given(steps=st.lists(TOOL_STEPS, max_size=25), dialect=st.sampled_from(["ga", "beta"]))
@hypothesis.settings(max_examples=150, deadline=None)
def test_tool_flows_in_any_order_stay_well_formed(
    steps: list[tuple[Any, ...]], dialect: str
) -> None:
    """Triggers, outputs, cancels and time in any order: events stay valid, calls consistent."""
    tools = harness(GOODBYE, LOOKUP, dialect=dialect)
    events: list[dict[str, Any]] = []
    for step in steps:
        match step:
            case ("text", text):
                events += tools.user_text(text)
            case ("ask", text):
                events += tools.user_text(text)
                events += tools.send({"type": "response.create"})
            case ("create", tool_choice, instructions):
                response = {} if tool_choice is None else {"tool_choice": tool_choice}
                if instructions is not None:
                    response["instructions"] = instructions
                events += tools.send({"type": "response.create", "response": response})
            case ("output", known, output):
                so_far = tools.model.statistics().function_calls
                call_id = so_far[-1].call_id if known and so_far else "call_" + "0" * 21
                events += tools.output(call_id, output)
            case ("cancel",):
                events += tools.send({"type": "response.cancel"})
            case ("wait", seconds):
                tools.now += seconds
                tools.model.handle_timeout(tools.now)
                events += tools.take()
    events += tools.run_until_idle()
    stats = tools.model.statistics()
    made = {call.call_id: call for call in stats.function_calls}
    announced = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["call_id"] for e in announced] == list(made)
    for event in announced:
        assert (event["name"], event["arguments"]) == (
            made[event["call_id"]].name,
            made[event["call_id"]].arguments,
        )
    for done in (e["response"] for e in events if e["type"] == "response.done"):
        calls = [item for item in done["output"] if item["type"] == "function_call"]
        assert not calls or done["status"] == "completed"
    # Outputs are accepted exactly when they answer a call the model made.
    assert {output.call_id for output in stats.function_outputs} <= set(made)


# ---- the websocket server ------------------------------------------------------------------------


@asynccontextmanager
async def running_server(**options: Any) -> AsyncIterator[LoopbackServer]:
    async with trio.open_nursery() as nursery:
        server: LoopbackServer = await nursery.start(
            functools.partial(serve_loopback_model, **options)
        )
        yield server
        nursery.cancel_scope.cancel()


async def test_the_server_gives_every_session_the_script() -> None:
    with trio.fail_after(10):
        async with running_server(generation_speed=math.inf, script=[GOODBYE]) as server:
            for _ in range(2):
                async with trio_websocket.open_websocket_url(server.url) as ws:
                    created = json.loads(await ws.get_message())
                    assert created["type"] == "session.created"
                    for event in (
                        {
                            "type": "conversation.item.create",
                            "item": {
                                "type": "message",
                                "role": "user",
                                "content": [{"type": "input_text", "text": dtmf_message("1")}],
                            },
                        },
                        {"type": "response.create"},
                    ):
                        await ws.send_message(json.dumps(event))
                    received: list[dict[str, Any]] = []
                    while not received or received[-1]["type"] != "response.done":
                        received.append(json.loads(await ws.get_message()))
                    for event in received:
                        GA_EVENTS.validate_python(event)
                    done = first(received, "response.function_call_arguments.done")
                    assert done["name"] == "end_call"
                    audio = b"".join(
                        base64.b64decode(e["delta"])
                        for e in received
                        if e["type"] == "response.output_audio.delta"
                    )
                    assert audio == word_beeps(AudioFormat.PCM, GOODBYE.say)
            calls = [stats.function_calls for stats in server.registry.statistics()]
            assert [[call.name for call in made] for made in calls] == [["end_call"]] * 2
