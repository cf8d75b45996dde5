"""The daemon's Prometheus metrics (text exposition format, served at ``/metrics``).

Issue 5 item 5: active calls; calls by ingress and end reason; model connect time; turn latency;
barge-in latency; outbound RTP pacing error; frames dropped; model reconnects; tool calls by name
and outcome; tokens used. There are no per-call labels (no call id, caller or item id): every
label takes a small, fixed set of values, so the number of series stays bounded however many
calls the daemon serves. Tool names are the operator's configured names; a name the model made up
(outcome ``unknown_tool``) is counted as ``unknown``.

Each :class:`Metrics` has its own :class:`~prometheus_client.CollectorRegistry`, never the
library's global one, so several daemons can run in one process (the tests do).

Everything here is called from the event loop (the RTP pacer even from a trio instrument) and
must not block or raise: metric updates are a lock and an addition, and values that come from the
model (token usage) are checked before they are counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from bridge.call.events import EndReason, ToolOutcome
from bridge.call.observations import (
    BargeIn,
    ModelConnected,
    Observation,
    ToolCallEnded,
    TurnLatency,
    UsageReported,
)
from bridge.media import g711
from bridge.proto.sip.useragent import UserAgentStatistics

# Seconds. A model session is usually ready within 0.3 to 2 s; the 10 s and 20 s buckets catch a
# struggling provider.
MODEL_CONNECT_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
# Seconds. Turn latency includes the model's end-of-turn silence window (server VAD 500 ms by
# default), so good calls land between 0.6 and 1.5 s; people notice beyond about 2 s.
TURN_LATENCY_BUCKETS = (
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
    7.5, 10.0,
)  # fmt: skip
# Seconds. The model's VAD needs some speech before it reports it; above 0.5 s the caller hears
# themselves talked over.
BARGE_IN_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
# Seconds late against the absolute 20 ms schedule. 0.02 is one whole frame (a receiver's
# jitter buffer starts to notice); 0.1 is where the pacer gives up and skips ticks.
PACING_ERROR_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

UNKNOWN_TOOL = "unknown"
_OUTCOMES = frozenset(outcome.value for outcome in ToolOutcome)
_END_REASONS = frozenset(reason.value for reason in EndReason)

# Where audio is dropped, by (direction, reason): what the call record's statistics count.
_DROPPED_IN_RECORD = {
    "dropped_caller_bytes": ("caller", "model_leg_behind"),
    "dropped_caller_bytes_connecting": ("caller", "model_connecting"),
    "dropped_model_bytes": ("model", "interrupted"),
}


class Metrics:
    """All of the daemon's metrics, in one private registry.

    The app calls :meth:`call_started` / :meth:`call_ended` around each call, passes
    :meth:`observe` to the call's supervisor as its ``CallObserver``, and :meth:`pacing_error` to
    the RTP engine; :meth:`render` is the ``/metrics`` body.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.draining = False
        registry = self.registry
        ProcessCollector(registry=registry)
        self.active_calls = Gauge(
            "bridge_active_calls",
            "Calls in progress, by ingress (sip, mediastream).",
            ["ingress"],
            registry=registry,
        )
        self.calls = Counter(
            "bridge_calls_total",
            "Calls ended, by ingress and end reason (the call record's end_reason).",
            ["ingress", "end_reason"],
            registry=registry,
        )
        self.audio_frames_dropped = Counter(
            "bridge_audio_frames_dropped_total",
            "20 ms audio frames dropped, by direction and reason. caller/model_leg_behind: caller"
            " audio the model connection could not take in time (overload);"
            " caller/model_connecting: caller audio older than what is held for a model still"
            " connecting; caller/call_inbox_full: caller audio the call's control loop could not"
            " take (overload); model/interrupted: model audio of a reply the caller had already"
            " interrupted (barge-in, by design).",
            ["direction", "reason"],
            registry=registry,
        )
        self.model_connect = Histogram(
            "bridge_model_connect_seconds",
            "From the start of a call until its model session was ready (connect and set-up).",
            buckets=MODEL_CONNECT_BUCKETS,
            registry=registry,
        )
        self.turn_latency = Histogram(
            "bridge_turn_latency_seconds",
            "From the caller stopping speaking (on the caller's audio timeline) until the first"
            " audio of the model's reply went to the caller; includes the model's end-of-turn"
            " silence window.",
            buckets=TURN_LATENCY_BUCKETS,
            registry=registry,
        )
        self.barge_in_latency = Histogram(
            "bridge_barge_in_latency_seconds",
            "From the caller starting to speak over the model until the model's audio to the"
            " caller was stopped.",
            buckets=BARGE_IN_BUCKETS,
            registry=registry,
        )
        self.rtp_pacing_error = Histogram(
            "bridge_rtp_pacing_error_seconds",
            "How late each 20 ms RTP send tick ran against its absolute schedule (one sample per"
            " tick for all SIP calls together). Ticks more than 0.1 s late skip the missed frames.",
            buckets=PACING_ERROR_BUCKETS,
            registry=registry,
        )
        self.model_reconnects = Counter(
            "bridge_model_reconnects_total",
            "Model sessions replaced during a call (session rollover or reconnect after a"
            " dropped connection). Not done yet by this version, so always 0.",
            registry=registry,
        )
        self.tool_calls = Counter(
            "bridge_tool_calls_total",
            "Function calls of the model, by tool and outcome. Names the model invented"
            ' (outcome unknown_tool) are counted as tool="unknown".',
            ["tool", "outcome"],
            registry=registry,
        )
        self.tokens = Counter(
            "bridge_tokens_total",
            "Model tokens used (the Realtime API's response usage), by direction (input, output)"
            " and modality (text, audio, image; other: the part of a total the details did not"
            " break down). Input includes cached tokens.",
            ["direction", "modality"],
            registry=registry,
        )
        self.cached_tokens = Counter(
            "bridge_cached_input_tokens_total",
            "Input tokens served from the model's prompt cache, by modality (a part of"
            ' bridge_tokens_total{direction="input"}, usually billed lower).',
            ["modality"],
            registry=registry,
        )
        self.draining_gauge = Gauge(
            "bridge_draining",
            "1 while the daemon is draining (stopping: no new calls, calls in progress finish).",
            registry=registry,
        )
        self.calls_refused = Counter(
            "bridge_calls_refused_total",
            "Calls turned away before they started (SIP 503, media-stream upgrade refused), by"
            " ingress and reason: at_capacity or draining. Calls refused after they were taken"
            " (a media stream at capacity) end with end_reason at_capacity instead; bad_request:"
            " a SIP INVITE that failed a check (no or unusable offer, unknown Require).",
            ["ingress", "reason"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "bridge_config_reloads_total",
            "SIGHUP reloads by outcome: applied (new calls get the new config) or rejected (the"
            " previous config stays; the log says why).",
            ["outcome"],
            registry=registry,
        )
        self.config_last_reload_successful = Gauge(
            "bridge_config_last_reload_successful",
            "1 if the last reload was applied (or none was asked for), 0 if it was rejected.",
            registry=registry,
        )
        self.config_last_reload_successful.set(1)
        # Series that exist before anything happened, so rate() and alerts see a 0, not nothing.
        for direction, reason in [*_DROPPED_IN_RECORD.values(), ("caller", "call_inbox_full")]:
            self.audio_frames_dropped.labels(direction, reason)
        for outcome in ("applied", "rejected"):
            self.config_reloads.labels(outcome)
        for direction, modality in (
            ("input", "text"),
            ("input", "audio"),
            ("output", "text"),
            ("output", "audio"),
        ):
            self.tokens.labels(direction, modality)

    # ---- the daemon --------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The ``/metrics`` response: body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def set_draining(self, draining: bool = True) -> None:
        """The daemon stopped (or, False, resumed) taking calls; /readyz says why it is not
        ready."""
        self.draining = draining
        self.draining_gauge.set(1 if draining else 0)

    def pacing_error(self, seconds: float) -> None:
        """One RTP tick ran `seconds` late (the RTP engine's ``pacing_observer``)."""
        if seconds >= 0 and math.isfinite(seconds):
            self.rtp_pacing_error.observe(seconds)

    def call_refused(self, ingress: str, reason: str) -> None:
        """A call was turned away before it started (`reason`: at_capacity or draining)."""
        self.calls_refused.labels(ingress, reason).inc()

    def config_reloaded(self, applied: bool) -> None:
        self.config_reloads.labels("applied" if applied else "rejected").inc()
        self.config_last_reload_successful.set(1 if applied else 0)

    def watch_sip(self, statistics: Callable[[], UserAgentStatistics]) -> None:
        """Export the SIP user agent's own counters, read at each scrape."""
        self.registry.register(_SipCollector(statistics))

    def model_reconnected(self) -> None:
        """A call's model session was replaced by a new one."""
        self.model_reconnects.inc()

    # ---- calls -------------------------------------------------------------------------------

    def call_started(self, ingress: str) -> None:
        self.active_calls.labels(ingress).inc()

    def call_ended(self, ingress: str, record: Mapping[str, Any]) -> None:
        """A call ended with this record (bridge.call.bridge.CallBridge.record())."""
        self.active_calls.labels(ingress).dec()
        reason = record.get("end_reason")
        self.calls.labels(ingress, reason if reason in _END_REASONS else "unknown").inc()
        statistics = record.get("statistics")
        if isinstance(statistics, Mapping):
            for key, (direction, why) in _DROPPED_IN_RECORD.items():
                self._count_dropped(direction, why, _count(statistics.get(key)) // g711.FRAME_BYTES)
        # Caller audio the telephony leg could not hand to the control loop (the call's inbox
        # was full), in bytes like the bridge's own counts.
        telephony = record.get("telephony_statistics")
        if isinstance(telephony, Mapping):
            frames = _count(telephony.get("dropped_caller_bytes")) // g711.FRAME_BYTES
            self._count_dropped("caller", "call_inbox_full", frames)

    def _count_dropped(self, direction: str, reason: str, frames: int) -> None:
        if frames > 0:
            self.audio_frames_dropped.labels(direction, reason).inc(frames)

    def observe(self, observation: Observation) -> None:
        """What a call's control loop observed (the supervisor's ``CallObserver``)."""
        match observation:
            case ModelConnected(seconds=seconds):
                self.model_connect.observe(max(0.0, seconds))
            case TurnLatency(seconds=seconds):
                self.turn_latency.observe(max(0.0, seconds))
            case BargeIn(seconds=seconds):
                self.barge_in_latency.observe(max(0.0, seconds))
            case ToolCallEnded(name=name, outcome=outcome):
                if outcome not in _OUTCOMES:
                    outcome = "other"
                tool = UNKNOWN_TOOL if outcome == ToolOutcome.UNKNOWN_TOOL.value else name
                self.tool_calls.labels(tool, outcome).inc()
            case UsageReported(usage=usage):
                self._count_usage(usage)
            case _:
                # transcript lines and digits belong to the journal, not to metrics
                pass

    def _count_usage(self, usage: Mapping[str, Any]) -> None:
        for direction in ("input", "output"):
            total = _count(usage.get(f"{direction}_tokens"))
            details = usage.get(f"{direction}_token_details")
            broken_down = 0
            if isinstance(details, Mapping):
                for modality in ("text", "audio", "image"):
                    tokens = _count(details.get(f"{modality}_tokens"))
                    if tokens:
                        self.tokens.labels(direction, modality).inc(tokens)
                        broken_down += tokens
                if direction == "input":
                    self._count_cached(details)
            if total > broken_down:
                self.tokens.labels(direction, "other").inc(total - broken_down)

    def _count_cached(self, details: Mapping[str, Any]) -> None:
        total = _count(details.get("cached_tokens"))
        cached = details.get("cached_tokens_details")
        broken_down = 0
        if isinstance(cached, Mapping):
            for modality in ("text", "audio", "image"):
                tokens = _count(cached.get(f"{modality}_tokens"))
                if tokens:
                    self.cached_tokens.labels(modality).inc(tokens)
                    broken_down += tokens
        if total > broken_down:
            self.cached_tokens.labels("other").inc(total - broken_down)


def _count(value: object) -> int:
    """A count from a foreign object: a non-negative int, else 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


__all__ = [
    "BARGE_IN_BUCKETS",
    "MODEL_CONNECT_BUCKETS",
    "PACING_ERROR_BUCKETS",
    "TURN_LATENCY_BUCKETS",
    "UNKNOWN_TOOL",
    "Metrics",
]


class _SipCollector(Collector):
    """The SIP core's counters (bridge.proto.sip.useragent.UserAgentStatistics), pulled at scrape
    time: the core counts anyway, so nothing is added to the SIP path."""

    def __init__(self, statistics: Callable[[], UserAgentStatistics]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        figures = self._statistics()
        counters = (
            ("bridge_sip_requests_received", "SIP requests received.", figures.requests_in),
            ("bridge_sip_responses_received", "SIP responses received.", figures.responses_in),
            ("bridge_sip_messages_sent", "SIP messages sent.", figures.messages_out),
            (
                "bridge_sip_retransmissions",
                "SIP messages sent again (timers, or answers to retransmitted requests).",
                figures.retransmissions,
            ),
            (
                "bridge_sip_malformed",
                "SIP datagrams or messages that did not parse.",
                figures.malformed,
            ),
            (
                "bridge_sip_refused_sources",
                "SIP messages from sources outside ingress.sip.allow_from.",
                figures.refused_sources,
            ),
            (
                "bridge_sip_invites_offered",
                "New SIP calls (initial INVITEs).",
                figures.calls_offered,
            ),
            (
                "bridge_sip_invites_rejected",
                "Initial INVITEs answered with a failure (503 at capacity or draining, 4xx for a"
                " bad offer).",
                figures.calls_rejected,
            ),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily(
            "bridge_sip_dialogs", "SIP dialogs in progress.", value=figures.dialogs
        )
        yield GaugeMetricFamily(
            "bridge_sip_transactions", "SIP transactions in progress.", value=figures.transactions
        )
