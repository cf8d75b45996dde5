"""What the control loop of a call observed, for metrics and the call's journal.

:class:`bridge.call.bridge.CallBridge` collects these as it handles events; the supervisor takes
them with ``pop_observations()`` after each turn of the loop and hands them to the call's
observers (the metrics registry, the durable journal). They are facts about the call, never
commands: nothing in the call depends on whether anyone reads them.

Latencies are measured on the caller's audio timeline where the model reports positions on it
(Realtime API ``input_audio_buffer.speech_started.audio_start_ms`` and
``speech_stopped.audio_end_ms``, milliseconds of all the input audio of the session): the bridge
knows how much caller audio it has passed to the model, so the distance between that and the
reported position is how long ago, in the caller's time, the caller started or stopped speaking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class ModelConnected:
    """The model session is ready `seconds` after the call started (connect and set-up)."""

    seconds: float
    session_id: str


@attrs.frozen
class TurnLatency:
    """The caller stopped speaking; the first audio of the reply went to the caller `seconds`
    later (this includes the model's end-of-turn silence window)."""

    seconds: float


@attrs.frozen
class BargeIn:
    """The caller spoke over the model; outbound audio stopped `seconds` after the caller started
    speaking. `heard_ms` is, per interrupted item, how much of it the caller heard."""

    seconds: float
    heard_ms: Mapping[str, int]


@attrs.frozen
class TranscriptAdded:
    """One finished utterance, `at_s` seconds after the call started."""

    at_s: float
    role: str
    item_id: str
    text: str


@attrs.frozen
class DigitPressed:
    """The caller pressed a key, `at_s` seconds after the call started."""

    at_s: float
    digit: str


@attrs.frozen
class ToolCallEnded:
    """A function call of the model has its result; `entry` is its line of the call record."""

    name: str
    outcome: str
    entry: Mapping[str, Any]


@attrs.frozen
class UsageReported:
    """A response ended with this token usage (the Realtime API ``response.usage`` object)."""

    usage: Mapping[str, Any]


Observation = (
    ModelConnected
    | TurnLatency
    | BargeIn
    | TranscriptAdded
    | DigitPressed
    | ToolCallEnded
    | UsageReported
)


def add_usage(total: dict[str, Any], usage: Mapping[str, Any]) -> None:
    """Sum a response's usage into a call's total, recursing into the detail objects."""
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, Mapping):
            add_usage(total.setdefault(key, {}), value)
