"""Metrics fed real observations and call records, read back from the rendered text format."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.call.bridge import CallBridge, CallBridgeSettings
from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentAudio,
    AgentResponseStarted,
    AgentSpeechStarted,
    CallerAudio,
    Codec,
    EndReason,
    TelephonyEnded,
    ToolOutcome,
)
from bridge.call.observations import (
    BargeIn,
    DigitPressed,
    ModelConnected,
    ToolCallEnded,
    TranscriptAdded,
    TurnLatency,
    UsageReported,
)
from bridge.media import g711
from bridge.metrics import Metrics
from bridge.supervisor import CallObserver

CALL_ID = "call-7f3a9c"


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the rendered text, by name and labels."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def record_of_a_call(
    end_reason: EndReason = EndReason.CALLER_HANGUP, *, dropped_caller_frames: int = 0
) -> dict[str, Any]:
    """A real CallBridge record, with some caller audio dropped and some model audio cut off."""
    bridge = CallBridge(
        info=CallInfo(call_id=CALL_ID, ingress="sip", codec=Codec.PCMU, caller="+15550100"),
        settings=CallBridgeSettings(model_codec=Codec.PCMU),
        now=100.0,
    )
    bridge.handle(CallerAudio(b"\x10" * g711.FRAME_BYTES * 10), 100.2)
    bridge.caller_audio_dropped(g711.FRAME_BYTES * dropped_caller_frames)
    bridge.handle(AgentResponseStarted("r1"), 100.3)
    bridge.handle(AgentSpeechStarted("item_u1", 0), 100.4)
    # 3 frames of the interrupted response arrive late and are dropped by design
    bridge.handle(AgentAudio("r1", "item_a1", b"\x10" * g711.FRAME_BYTES * 3), 100.5)
    bridge.handle(TelephonyEnded(end_reason), 101.0)
    return bridge.record()


def test_active_calls_and_calls_by_ingress_and_end_reason() -> None:
    metrics = Metrics()
    metrics.call_started("sip")
    metrics.call_started("sip")
    metrics.call_started("mediastream")
    assert value(metrics, "bridge_active_calls", ingress="sip") == 2
    metrics.call_ended("sip", record_of_a_call(EndReason.CALLER_HANGUP))
    metrics.call_ended("mediastream", record_of_a_call(EndReason.MODEL_ERROR))
    assert value(metrics, "bridge_active_calls", ingress="sip") == 1
    assert value(metrics, "bridge_active_calls", ingress="mediastream") == 0
    assert value(metrics, "bridge_calls_total", ingress="sip", end_reason="caller_hangup") == 1
    assert (
        value(metrics, "bridge_calls_total", ingress="mediastream", end_reason="model_error") == 1
    )


def test_a_record_without_a_known_end_reason_counts_as_unknown() -> None:
    metrics = Metrics()
    metrics.call_started("sip")
    metrics.call_ended("sip", {"end_reason": None})
    assert value(metrics, "bridge_calls_total", ingress="sip", end_reason="unknown") == 1


def test_dropped_frames_from_the_record_by_direction_and_reason() -> None:
    metrics = Metrics()
    # present (as 0) before any call, so alerts on rate() have a series
    labels = frozenset({("direction", "caller"), ("reason", "model_leg_behind")})
    assert ("bridge_audio_frames_dropped_total", labels) in samples(metrics)
    record = record_of_a_call(dropped_caller_frames=4)
    assert record["statistics"]["dropped_caller_bytes"] == 640
    assert record["statistics"]["dropped_model_bytes"] == 480
    metrics.call_started("sip")
    metrics.call_ended("sip", record)
    metrics.call_started("sip")
    metrics.call_ended("sip", {**record, "telephony_statistics": {"dropped_caller_bytes": 7 * 160}})
    dropped = "bridge_audio_frames_dropped_total"
    assert value(metrics, dropped, direction="caller", reason="model_leg_behind") == 8
    assert value(metrics, dropped, direction="model", reason="interrupted") == 6
    assert value(metrics, dropped, direction="caller", reason="call_inbox_full") == 7


def test_latency_histograms() -> None:
    metrics = Metrics()
    observer: CallObserver = metrics.observe
    observer(ModelConnected(0.42, "sess_1"))
    observer(TurnLatency(0.8))
    observer(TurnLatency(1.9))
    observer(BargeIn(0.3, {"item_a1": 1200}))
    assert value(metrics, "bridge_model_connect_seconds_count") == 1
    assert value(metrics, "bridge_model_connect_seconds_sum") == pytest.approx(0.42)
    assert value(metrics, "bridge_model_connect_seconds_bucket", le="0.5") == 1
    assert value(metrics, "bridge_model_connect_seconds_bucket", le="0.25") == 0
    assert value(metrics, "bridge_turn_latency_seconds_count") == 2
    assert value(metrics, "bridge_turn_latency_seconds_sum") == pytest.approx(2.7)
    assert value(metrics, "bridge_turn_latency_seconds_bucket", le="1.0") == 1
    assert value(metrics, "bridge_turn_latency_seconds_bucket", le="2.0") == 2
    assert value(metrics, "bridge_barge_in_latency_seconds_bucket", le="0.3") == 1
    assert value(metrics, "bridge_barge_in_latency_seconds_bucket", le="0.2") == 0


def test_tool_calls_by_name_and_outcome_and_invented_names_as_unknown() -> None:
    metrics = Metrics()
    entry = {"name": "x", "outcome": "ok"}
    metrics.observe(ToolCallEnded("lookup_order", ToolOutcome.OK.value, entry))
    metrics.observe(ToolCallEnded("lookup_order", ToolOutcome.OK.value, entry))
    metrics.observe(ToolCallEnded("lookup_order", ToolOutcome.TIMEOUT.value, entry))
    metrics.observe(ToolCallEnded("delete_everything", ToolOutcome.UNKNOWN_TOOL.value, entry))
    metrics.observe(ToolCallEnded("wire_money", ToolOutcome.UNKNOWN_TOOL.value, entry))
    tools = "bridge_tool_calls_total"
    assert value(metrics, tools, tool="lookup_order", outcome="ok") == 2
    assert value(metrics, tools, tool="lookup_order", outcome="timeout") == 1
    assert value(metrics, tools, tool="unknown", outcome="unknown_tool") == 2
    body = metrics.render()[0].decode()
    assert "delete_everything" not in body
    assert "wire_money" not in body


def test_tokens_by_direction_and_modality_with_cached_input() -> None:
    metrics = Metrics()
    usage = {
        "total_tokens": 330,
        "input_tokens": 200,
        "output_tokens": 130,
        "input_token_details": {
            "text_tokens": 120,
            "audio_tokens": 80,
            "cached_tokens": 64,
            "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0},
        },
        "output_token_details": {"text_tokens": 30, "audio_tokens": 100},
    }
    metrics.observe(UsageReported(usage))
    metrics.observe(UsageReported(usage))
    tokens = "bridge_tokens_total"
    assert value(metrics, tokens, direction="input", modality="text") == 240
    assert value(metrics, tokens, direction="input", modality="audio") == 160
    assert value(metrics, tokens, direction="output", modality="text") == 60
    assert value(metrics, tokens, direction="output", modality="audio") == 200
    assert value(metrics, "bridge_cached_input_tokens_total", modality="text") == 128
    assert (tokens, frozenset({("direction", "input"), ("modality", "other")})) not in samples(
        metrics
    )


def test_tokens_without_details_and_garbage_in_usage_never_raise() -> None:
    metrics = Metrics()
    metrics.observe(UsageReported({"input_tokens": 50, "output_tokens": 20}))
    metrics.observe(
        UsageReported(
            {
                "input_tokens": -5,
                "output_tokens": "many",
                "input_token_details": {"text_tokens": True, "cached_tokens": 9},
                "output_token_details": ["audio_tokens"],
            }
        )
    )
    tokens = "bridge_tokens_total"
    assert value(metrics, tokens, direction="input", modality="other") == 50
    assert value(metrics, tokens, direction="output", modality="other") == 20
    assert value(metrics, tokens, direction="input", modality="text") == 0
    assert value(metrics, "bridge_cached_input_tokens_total", modality="other") == 9


def test_transcripts_and_digits_are_not_metrics() -> None:
    metrics = Metrics()
    before = metrics.render()[0]
    metrics.observe(TranscriptAdded(1.5, "user", "item_u1", "my card number is 4111"))
    metrics.observe(DigitPressed(2.0, "4"))
    after = metrics.render()[0]
    assert "4111" not in after.decode()
    assert _bridge_lines(before) == _bridge_lines(after)


def test_pacing_error_model_reconnects_and_draining() -> None:
    metrics = Metrics()
    assert value(metrics, "bridge_model_reconnects_total") == 0
    metrics.pacing_error(0.0)
    metrics.pacing_error(0.004)
    metrics.pacing_error(0.15)
    metrics.pacing_error(float("nan"))
    metrics.pacing_error(-0.001)
    pacing = "bridge_rtp_pacing_error_seconds"
    assert value(metrics, f"{pacing}_count") == 3
    assert value(metrics, f"{pacing}_bucket", le="0.0005") == 1
    assert value(metrics, f"{pacing}_bucket", le="0.005") == 2
    assert value(metrics, f"{pacing}_bucket", le="0.1") == 2
    metrics.model_reconnected()
    assert value(metrics, "bridge_model_reconnects_total") == 1
    assert value(metrics, "bridge_draining") == 0
    metrics.set_draining()
    assert metrics.draining
    assert value(metrics, "bridge_draining") == 1


def test_no_call_details_in_the_output_and_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.call_started("sip")
    first.observe(ModelConnected(0.5, "sess_secret_1"))
    first.call_ended("sip", record_of_a_call())
    body = first.render()[0].decode()
    for detail in (CALL_ID, "+15550100", "sess_secret_1", "item_a1", "item_u1"):
        assert detail not in body
    assert value(second, "bridge_model_connect_seconds_count") == 0
    assert value(second, "bridge_calls_total", ingress="sip", end_reason="caller_hangup") == 0


def test_every_bridge_metric_has_help_and_a_unit_or_total_suffix() -> None:
    body = Metrics().render()[0].decode()
    families = [
        family
        for family in text_string_to_metric_families(body)
        if family.name.startswith("bridge_") and not family.name.endswith("_created")
    ]
    assert {family.name for family in families} >= {
        "bridge_active_calls",
        "bridge_calls",
        "bridge_audio_frames_dropped",
        "bridge_model_connect_seconds",
        "bridge_turn_latency_seconds",
        "bridge_barge_in_latency_seconds",
        "bridge_rtp_pacing_error_seconds",
        "bridge_model_reconnects",
        "bridge_tool_calls",
        "bridge_tokens",
        "bridge_cached_input_tokens",
        "bridge_draining",
    }
    for family in families:
        assert len(family.documentation) > 20, family.name


def _bridge_lines(body: bytes) -> list[str]:
    """Our own samples, without their creation times (the process metrics change by
    themselves)."""
    return [
        line
        for line in body.decode().splitlines()
        if line.startswith("bridge_") and "_created" not in line
    ]
