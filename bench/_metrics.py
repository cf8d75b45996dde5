"""The daemon's own figures: its Prometheus ``/metrics`` (README "Metrics, logs and call records",
bridge/metrics.py), scraped by the harness at the start and at the end of the measurement window
and once more after the calls ended, so they can be set next to the harness's own figures.

Counters and histograms are cumulative: a window's figures are the end scrape minus the start
scrape. Quantiles are estimated from the histogram buckets the way Prometheus'
``histogram_quantile`` does: linear interpolation inside the bucket the rank falls in; a rank in
the ``+Inf`` bucket only says the value is above the highest finite bound.
"""

from __future__ import annotations

import http.client
import math
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 2.0
FRAME_S = 0.020

# One scrape: each sample's value by (sample name, sorted label pairs).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def fetch(host: str, port: int, timeout: float = SCRAPE_TIMEOUT_S) -> Samples:
    """Scrape ``http://host:port/metrics``; raises OSError, ValueError or HTTPException when
    that fails."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
        return parse(response.read().decode())


@attrs.frozen
class Scrape:
    """One scrape: when it completed (time.monotonic()) and what it said, or why it failed."""

    at: float
    samples: Samples | None
    error: str = ""

    @classmethod
    def take(cls, host: str, port: int) -> Scrape:
        try:
            samples = fetch(host, port)
        except (OSError, ValueError, http.client.HTTPException) as error:
            return cls(time.monotonic(), None, f"{type(error).__name__}: {error}")
        return cls(time.monotonic(), samples)


def by_label(samples: Samples, name: str, *labels: str) -> dict[str, int]:
    """The counts of sample `name` keyed by its `labels`' values joined with '/'."""
    values: dict[str, int] = {}
    for (sample, pairs), value in samples.items():
        if sample == name:
            label_of = dict(pairs)
            values["/".join(label_of.get(label, "") for label in labels)] = round(value)
    return values


@attrs.frozen
class Quantile:
    """A quantile estimated from buckets: `value` (seconds), the upper bound `le` of the bucket it
    lies in, `above_top` when that bucket is +Inf (then `value` is the highest finite bound and
    the quantile is above it)."""

    value: float
    le: float
    above_top: bool = False

    def text(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"> {_ms(self.value)}" if self.above_top else _ms(self.value)

    def bucket_text(self) -> str:
        return "+Inf" if math.isinf(self.le) else f"≤ {_ms(self.le)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ms": None if math.isnan(self.value) else round(self.value * 1000, 3),
            "bucket_le_ms": None if math.isinf(self.le) else round(self.le * 1000, 3),
            "above_top_bucket": self.above_top,
        }


NO_QUANTILE = Quantile(math.nan, math.nan)


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


@attrs.frozen
class Histogram:
    """One histogram's cumulative bucket counts (bounds ascending, the last +Inf) and sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float

    @classmethod
    def of(cls, samples: Samples, name: str) -> Histogram:
        buckets = sorted(
            (float(dict(pairs)["le"]), value)
            for (sample, pairs), value in samples.items()
            if sample == f"{name}_bucket"
        )
        return cls(
            tuple(b for b, _ in buckets),
            tuple(c for _, c in buckets),
            samples.get((f"{name}_sum", ()), 0.0),
        )

    @property
    def count(self) -> int:
        return round(self.cumulative[-1]) if self.cumulative else 0

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations since `earlier` (a scrape of the same histogram)."""
        if earlier.bounds != self.bounds:
            return self
        pairs = zip(self.cumulative, earlier.cumulative, strict=True)
        return Histogram(
            self.bounds, tuple(now - then for now, then in pairs), self.total - earlier.total
        )

    def quantile(self, q: float) -> Quantile:
        """Like Prometheus' histogram_quantile."""
        bounds, counts = self.bounds, self.cumulative
        if len(bounds) < 2 or not math.isinf(bounds[-1]) or counts[-1] <= 0:
            return NO_QUANTILE
        rank = q * counts[-1]
        index = next(i for i, c in enumerate(counts) if c >= rank)
        if index == len(bounds) - 1:
            return Quantile(bounds[-2], bounds[-1], above_top=True)
        start = bounds[index - 1] if index > 0 else 0.0
        below = counts[index - 1] if index > 0 else 0.0
        inside = counts[index] - below
        return Quantile(start + (bounds[index] - start) * (rank - below) / inside, bounds[index])

    def share_above(self, bound: float) -> float:
        """The share of observations above `bound` (one of the bucket bounds)."""
        if not self.count or bound not in self.bounds:
            return math.nan
        return 1 - self.cumulative[self.bounds.index(bound)] / self.cumulative[-1]

    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


# ---- the figures ----------------------------------------------------------------------------

TURN = "bridge_turn_latency_seconds"
BARGE_IN = "bridge_barge_in_latency_seconds"
CONNECT = "bridge_model_connect_seconds"
PACING = "bridge_rtp_pacing_error_seconds"


def _quantiles(histogram: Histogram, *qs: float) -> dict[str, Quantile]:
    return {f"p{round(q * 100)}": histogram.quantile(q) for q in qs}


def daemon_figures(
    start: Scrape | None, end: Scrape | None, final: Scrape | None
) -> dict[str, Any]:
    """The daemon's own figures: the window's (end - start) and the run's (the last scrape that
    worked, after the calls if it did). Errors say which scrapes failed."""
    errors = {
        name: scrape.error if scrape is not None else "not taken"
        for name, scrape in (("window_start", start), ("window_end", end), ("after_calls", final))
        if scrape is None or scrape.samples is None
    }
    figures: dict[str, Any] = {"scrape_errors": errors}
    if start is not None and start.samples is not None and end is not None and end.samples:
        before, after = start.samples, end.samples

        def window(name: str) -> Histogram:
            return Histogram.of(after, name).minus(Histogram.of(before, name))

        turn, barge_in, pacing = window(TURN), window(BARGE_IN), window(PACING)
        figures["window"] = {
            "seconds": end.at - start.at,
            "turn_latency": {"n": turn.count, **_quantiles(turn, 0.5, 0.9, 0.99)},
            "barge_in_latency": {"n": barge_in.count, **_quantiles(barge_in, 0.5)},
            "rtp_pacing_error": {
                "n": pacing.count,
                **_quantiles(pacing, 0.5, 0.99),
                "later_than_20ms": pacing.share_above(FRAME_S),
            },
        }
    last = next((s for s in (final, end) if s is not None and s.samples is not None), None)
    if last is not None and last.samples is not None:
        samples = last.samples
        connect = Histogram.of(samples, CONNECT)
        figures["run"] = {
            "after_calls": last is final,
            "model_connect": {"n": connect.count, **_quantiles(connect, 0.5, 0.99)},
            "frames_dropped": by_label(
                samples, "bridge_audio_frames_dropped_total", "direction", "reason"
            ),
            "calls_by_end_reason": by_label(samples, "bridge_calls_total", "ingress", "end_reason"),
            "calls_active": sum(by_label(samples, "bridge_active_calls", "ingress").values()),
            "calls_refused": by_label(samples, "bridge_calls_refused_total", "ingress", "reason"),
        }
    return figures


def jsonable(figures: Mapping[str, Any]) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, Quantile):
            return value.as_dict()
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    result: dict[str, Any] = convert(figures)
    return result


# ---- the printed block ----------------------------------------------------------------------


def _quantile_row(figures: Mapping[str, Any], *names: str) -> str:
    if not figures["n"]:
        return "none observed"
    quantiles: list[Quantile] = [figures[name] for name in names]
    return (
        " / ".join(q.text() for q in quantiles)
        + " ms  (buckets "
        + " / ".join(q.bucket_text() for q in quantiles)
        + f" ms; n = {figures['n']})"
    )


def _counts(values: Mapping[str, int]) -> str:
    shown = {k: v for k, v in sorted(values.items()) if v}
    return ", ".join(f"{k} {v}" for k, v in shown.items()) if shown else "none"


def print_block(
    figures: Mapping[str, Any],
    harness: Mapping[str, Any],
    row: Callable[[str, str], None],
    *,
    rtp: bool,
) -> None:
    """The daemon's figures, with the harness's matching ones in brackets where it has them."""
    print()
    print("  daemon's own figures (from /metrics, the window):")
    errors = figures["scrape_errors"]
    if errors:
        failed = "; ".join(f"{name.replace('_', ' ')}: {error}" for name, error in errors.items())
        print(f"  scraping the daemon's /metrics failed ({failed}); what it affects is left out")
    window = figures.get("window")
    if window is not None:
        row(
            "daemon window (between the scrapes)",
            f"{window['seconds']:.2f} s  (from the planned start to just before the first "
            "hang-up; the harness's window runs on to the last)",
        )
        turn = window["turn_latency"]
        row("turn latency p50/p90/p99", _quantile_row(turn, "p50", "p90", "p99"))
        ours = harness.get("harness_turn_latency")
        if ours is not None and ours.count:
            row(
                "  harness: last speech frame -> reply heard",
                f"{ours.p50 * 1000:.0f} / {ours.p99 * 1000:.0f} ms p50/p99  (n = {ours.count})",
            )
        barge_in = window["barge_in_latency"]
        row(
            "barge-in latency: count, p50",
            f"{barge_in['n']}, {barge_in['p50'].text()} ms"
            if barge_in["n"]
            else "0 (none observed)",
        )
        pacing = window["rtp_pacing_error"]
        if rtp or pacing["n"]:
            row("RTP pacing error p50/p99", _quantile_row(pacing, "p50", "p99"))
            later = pacing["later_than_20ms"]
            deviation = harness.get("outbound_interval_deviation")
            row(
                "  ticks later than 20 ms",
                ("n/a" if math.isnan(later) else f"{100 * later:.3f}%")
                + (
                    f"  (harness: |interval - 20 ms| p99 {deviation.p99 * 1000:.2f} ms)"
                    if deviation is not None and deviation.count
                    else ""
                ),
            )
    run = figures.get("run")
    if run is not None:
        when = "after the calls ended" if run["after_calls"] else "at the window's end"
        print(f"  daemon's own figures (from /metrics, the whole run, scraped {when}):")
        row("model connect p50/p99", _quantile_row(run["model_connect"], "p50", "p99"))
        lost = (
            f"  (harness lost: {harness['lost_in']} in, {harness['lost_out']} out)"
            if "lost_in" in harness
            else ""
        )
        row("frames dropped by direction/reason", _counts(run["frames_dropped"]) + lost)
        active = run["calls_active"]
        row(
            "calls by end reason",
            _counts(run["calls_by_end_reason"])
            + (f"; {active} still active" if active else "")
            + (f"  (callers: {_counts(harness['ended_by'])})" if "ended_by" in harness else ""),
        )
        row("calls refused", _counts(run["calls_refused"]))
