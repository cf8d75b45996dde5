"""`[[tools]]`, `[[routes]]`, `[precall_hook]` and `[model.loopback]`: loading and every error."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.call.context import CallInfo
from bridge.call.events import Codec
from bridge.call.profile import choose_profile
from bridge.config import (
    BuiltinTool,
    ConfigError,
    Holding,
    ToolKind,
    Voice,
    config_from_dict,
    load_config,
)
from tests.test_config import CONFIG_DIR

LOOKUP = {"name": "lookup", "kind": "http", "url": "https://crm.example.com/lookup"}


def test_tools_load_with_their_defaults() -> None:
    config = config_from_dict(
        {
            "tools": [
                {"name": "end_call", "kind": "builtin"},
                {"name": "transfer_call", "kind": "builtin", "targets": {"sales": "sip:s@h"}},
                {
                    **LOOKUP,
                    "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
                    "headers_env": {"Authorization": "CRM_AUTH"},
                    "holding": "phrase",
                },
                {"name": "py", "kind": "python", "function": "pkg.mod:func"},
            ]
        }
    )
    end_call, transfer, lookup, python = config.tools
    assert end_call.builtin is BuiltinTool.END_CALL
    assert end_call.effective_timeout_s == 10.0
    assert transfer.effective_timeout_s == 30.0
    assert lookup.kind is ToolKind.HTTP and lookup.holding is Holding.PHRASE
    assert lookup.parameters["properties"] == {"n": {"type": "integer"}}
    assert lookup.secret_headers()["Authorization"].env == "CRM_AUTH"
    assert python.function == "pkg.mod:func"


TOOL_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"name": "bad name"}, "is not a function name"),
    ({"name": "x", "kind": "builtin"}, "'x' is not a built-in tool; choose one of end_call"),
    ({"name": "x", "kind": "http"}, 'required for kind = "http"'),
    ({"name": "x", "kind": "python"}, 'required for kind = "python"'),
    ({"name": "x", "kind": "python", "function": "no colon"}, 'must be "package.module:function"'),
    ({**LOOKUP, "url": "ftp://x/y"}, "must be an http:// or https:// URL"),
    ({**LOOKUP, "url": "https://u:p@x/y"}, "must not carry credentials"),
    ({**LOOKUP, "parameters": {"type": "string"}}, 'JSON schema with type = "object"'),
    ({**LOOKUP, "timeout_s": 0}, "must be between 0.1 and 600.0"),
    ({**LOOKUP, "headers_env": {"Authorization": "Bearer sk-1"}}, "must name an environment"),
    ({**LOOKUP, "holding": "audio"}, 'required for holding = "audio"'),
    ({**LOOKUP, "target": "sip:a@b"}, "applies to the built-in transfer_call only"),
    ({"name": "transfer_call", "kind": "builtin"}, "transfer_call needs target or targets"),
    (
        {"name": "transfer_call", "kind": "builtin", "targets": {"a": "https://x"}},
        "is not a sip:, sips: or tel: URI",
    ),
    (
        {
            "name": "transfer_call",
            "kind": "builtin",
            "target": "sip:a@b",
            "targets": {"a": "sip:c"},
        },
        "either target (fixed) or targets",
    ),
    ({"name": "end_call", "kind": "builtin", "headers": {"X": "1"}}, "headers apply to http"),
]


@pytest.mark.parametrize(("tool", "message"), TOOL_ERRORS)
def test_bad_tools_are_errors_with_their_path(tool: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"tools": [LOOKUP, tool]})
    assert any(message in line and "@ $.tools[1]" in line for line in error.value.messages), (
        error.value.messages
    )


def test_secret_values_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"tools": [{**LOOKUP, "headers_env": {"Authorization": "sk-live-123"}}]})
    assert "sk-live-123" not in " ".join(error.value.messages)


def test_duplicate_tool_names_and_unknown_route_tools() -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(
            {
                "tools": [LOOKUP, LOOKUP],
                "routes": [{"name": "r", "tools": ["lookup", "nope"]}],
            }
        )
    assert error.value.messages == [
        "a second tool named 'lookup' @ $.tools[1].name",
        "'nope' is not the name of a [[tools]] entry @ $.routes[0].tools",
    ]


def test_route_session_is_laid_over_the_session_table() -> None:
    config = config_from_dict(
        {
            "session": {
                "voice": "ash",
                "instructions": "Base",
                "turn_detection": {"threshold": 0.6},
            },
            "routes": [
                {
                    "name": "sales",
                    "called": ["+1555*"],
                    "session": {"voice": "cedar", "turn_detection": {"silence_duration_ms": 700}},
                }
            ],
        }
    )
    (route,) = config.routes
    assert route.session.voice is Voice.CEDAR
    assert route.session.instructions == "Base"
    assert route.session.turn_detection.threshold == 0.6
    assert route.session.turn_detection.silence_duration_ms == 700


def test_route_errors_point_into_the_route_and_base_errors_are_not_repeated() -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict(
            {"session": {"voice": "nova"}, "routes": [{"name": "r", "session": {"speed": 9}}]}
        )
    assert len(error.value.messages) == 2
    assert error.value.messages[0].endswith("@ $.session.voice")
    assert (
        error.value.messages[1]
        == "must be between 0.25 and 1.5, got 9.0 @ $.routes[0].session.speed"
    )


def test_loopback_tool_calls_need_a_trigger() -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"model": {"loopback": {"tool_calls": [{"name": "end_call"}]}}})
    assert error.value.messages == [
        "a loopback tool call needs a trigger: dtmf or user_text"
        " @ $.model.loopback.tool_calls[0].dtmf"
    ]


def test_precall_hook_checks_its_url() -> None:
    with pytest.raises(ConfigError) as error:
        config_from_dict({"precall_hook": {"url": "crm.example.com"}})
    assert error.value.messages == [
        "must be an http:// or https:// URL, got 'crm.example.com' @ $.precall_hook.url"
    ]


# ---- choosing a route ----------------------------------------------------------------------------

ROUTED = config_from_dict(
    {
        "tools": [{"name": "end_call", "kind": "builtin"}, LOOKUP],
        "routes": [
            {"name": "vip", "variables": {"tier": "gold"}, "session": {"voice": "ballad"}},
            {
                "name": "sales",
                "called": ["+1555010*"],
                "caller": ["+44*"],
                "model": "gpt-realtime-mini",
                "tools": ["end_call"],
                "session": {"voice": "cedar", "instructions": "Sales for {caller}"},
            },
        ],
    }
)


def info(called: str = "", caller: str = "", **variables: str) -> CallInfo:
    return CallInfo(
        call_id="c",
        ingress="sip",
        codec=Codec.PCMU,
        called=called,
        caller=caller,
        variables=variables,
    )


def test_first_matching_route_wins_and_overrides_model_tools_and_session() -> None:
    profile = choose_profile(ROUTED, info("+15550101", "+442071234567"))
    assert profile.route == "sales"
    assert profile.model == "gpt-realtime-mini"
    assert [tool.name for tool in profile.tools] == ["end_call"]
    assert profile.session.voice is Voice.CEDAR
    assert choose_profile(ROUTED, info("+15550101", "+442071234567", tier="gold")).route == "vip"


def test_no_match_gets_the_defaults_and_a_named_route_wins() -> None:
    default = choose_profile(ROUTED, info("+15550101", "+12125551234"))
    assert default.route == ""
    assert default.model == "gpt-realtime"
    assert [tool.name for tool in default.tools] == ["end_call", "lookup"]
    assert default.session == ROUTED.session
    assert choose_profile(ROUTED, info(), route_name="sales").route == "sales"
    # An unknown name from the hook falls back to matching.
    assert choose_profile(ROUTED, info(tier="gold"), route_name="gone").route == "vip"


def test_tools_example_config() -> None:
    config = load_config(CONFIG_DIR / "tools.toml")
    assert [tool.name for tool in config.tools] == [
        "end_call",
        "transfer_call",
        "send_dtmf",
        "lookup_order",
    ]
    assert [call.dtmf for call in config.model.loopback.tool_calls] == ["1", "2", "3"]
    support = choose_profile(config, info("+15550199"))
    assert (support.route, support.session.voice) == ("support", Voice.CEDAR)
    assert config.ingress.sip.enabled
