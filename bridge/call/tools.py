"""The tools a call offers the model: function definitions, built-in argument checks, outputs.

Function tools are declared in ``session.update`` as ``{"type": "function", "name", "description",
"parameters"}`` (Realtime API, "Function calling"; realtime-api.md §1.3 ``tools``). The three
built-in call-control tools have fixed names and schemas written here; an operator's tool brings
its own description and JSON schema from ``[[tools]]``.

Outputs go back to the model as the ``output`` string of a ``function_call_output`` item. A
successful operator tool's output is its reply as is; everything the bridge says itself is a JSON
object, and every failure has the same shape, ``{"error": <outcome>, "message": <text>}``, so a
prompt can teach the model one rule for all of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from bridge.call.events import ToolFinished, ToolOutcome
from bridge.config import BuiltinTool, ToolConfig

# RFC 4733 §3.2 events 0-15: the digits, * and #, and A-D.
DTMF_DIGITS = re.compile(r"[0-9*#A-D]{1,32}")

_BUILTIN_DESCRIPTIONS = {
    BuiltinTool.END_CALL: (
        "Hang up the phone call. Say goodbye first: the call ends once the caller has heard "
        "everything you said."
    ),
    BuiltinTool.TRANSFER_CALL: (
        "Transfer the caller to a person or department. Tell the caller first that you are "
        "transferring them. You are told whether the transfer worked."
    ),
    BuiltinTool.SEND_DTMF: (
        "Press keys on the phone keypad (DTMF tones), for example to choose options in a phone "
        "menu you are talking to."
    ),
}


def _builtin_parameters(tool: ToolConfig, builtin: BuiltinTool) -> dict[str, Any]:
    match builtin:
        case BuiltinTool.END_CALL:
            properties: dict[str, Any] = {
                "reason": {
                    "type": "string",
                    "description": "Why the call ends, in a few words, for the call record.",
                }
            }
            required: list[str] = []
        case BuiltinTool.TRANSFER_CALL:
            properties = {}
            required = []
            if tool.targets:
                properties["target"] = {
                    "type": "string",
                    "enum": list(tool.targets),
                    "description": "Where to transfer the caller.",
                }
                required = ["target"]
        case BuiltinTool.SEND_DTMF:
            properties = {
                "digits": {
                    "type": "string",
                    "description": "The keys to press in order: 0-9, *, #, A-D (up to 32).",
                }
            }
            required = ["digits"]
    return {"type": "object", "properties": properties, "required": required}


def function_definition(tool: ToolConfig) -> dict[str, Any]:
    """The ``session.update`` entry for `tool`."""
    builtin = tool.builtin
    description = tool.description
    parameters: Mapping[str, Any] = tool.parameters
    if builtin is not None:
        description = description or _BUILTIN_DESCRIPTIONS[builtin]
        parameters = parameters or _builtin_parameters(tool, builtin)
    return {
        "type": "function",
        "name": tool.name,
        "description": description,
        "parameters": dict(parameters) or {"type": "object", "properties": {}},
    }


def function_definitions(tools: Iterable[ToolConfig]) -> list[dict[str, Any]]:
    return [function_definition(tool) for tool in tools]


def parse_arguments(raw: str) -> dict[str, Any]:
    """The model's arguments as a JSON object; ValueError says what is wrong with them."""
    if not raw.strip():
        return {}
    try:
        arguments = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"the arguments are not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError("the arguments are nested too deeply") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"the arguments must be a JSON object, not {type(arguments).__name__}")
    return arguments


def ok_output(**fields: Any) -> str:
    return json.dumps({"status": "ok", **fields}, ensure_ascii=False)


def error_output(outcome: ToolOutcome, message: str) -> str:
    """What the model is told when a tool call did not work."""
    return json.dumps({"error": outcome.value, "message": message}, ensure_ascii=False)


def tool_failure(
    call_id: str, outcome: ToolOutcome, message: str, detail: str = ""
) -> ToolFinished:
    """A tool run that did not work: the error output for the model, `detail` for the log."""
    return ToolFinished(call_id, outcome, error_output(outcome, message), detail or message)


def dtmf_digits(arguments: Mapping[str, Any]) -> str:
    """The digits of a send_dtmf call, upper-cased; ValueError when there are none or bad ones."""
    digits = arguments.get("digits")
    if isinstance(digits, int) and not isinstance(digits, bool) and digits >= 0:
        digits = str(digits)
    if not isinstance(digits, str):
        raise ValueError('"digits" must be a string of keypad keys such as "1#"')
    digits = digits.replace(" ", "").replace(",", "").upper()
    if not DTMF_DIGITS.fullmatch(digits):
        raise ValueError(f'"digits" may hold only 0-9, *, #, A-D (1 to 32 of them), got {digits!r}')
    return digits


def transfer_target(tool: ToolConfig, arguments: Mapping[str, Any]) -> tuple[str, str]:
    """(target name, URI) of a transfer_call; ValueError names the allowed choices."""
    if tool.target:
        return "", tool.target
    name = arguments.get("target")
    if not isinstance(name, str) or name not in tool.targets:
        choices = ", ".join(tool.targets)
        raise ValueError(f'"target" must be one of: {choices}; got {name!r}')
    return name, tool.targets[name]


__all__ = [
    "DTMF_DIGITS",
    "dtmf_digits",
    "error_output",
    "function_definition",
    "function_definitions",
    "ok_output",
    "parse_arguments",
    "tool_failure",
    "transfer_target",
]
