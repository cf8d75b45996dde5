"""Turning the raw measurements into figures: percentiles, CPU windows, the measurement window,
per-frame latency and loss, the rows of the printed table, the py-spy summary."""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from _stamp import TimeTable


@attrs.frozen
class Distribution:
    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls(0, math.nan, math.nan, math.nan)
        ordered = sorted(values)
        return cls(
            len(ordered), nearest_rank(ordered, 0.50), nearest_rank(ordered, 0.99), ordered[-1]
        )

    def ms(self) -> str:
        if not self.count:
            return "n/a (no samples)"
        return (
            f"{self.p50 * 1000:7.2f} / {self.p99 * 1000:7.2f} / {self.max * 1000:8.2f} ms"
            f"   (n = {self.count})"
        )

    def as_ms_dict(self) -> dict[str, float | int]:
        return {
            "n": self.count,
            "p50_ms": round(self.p50 * 1000, 3),
            "p99_ms": round(self.p99 * 1000, 3),
            "max_ms": round(self.max * 1000, 3),
        }


def nearest_rank(ordered: Sequence[float], quantile: float) -> float:
    """The nearest-rank `quantile` of sorted values (NaN for none)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(quantile * len(ordered)))
    return ordered[rank - 1]


class CpuSeries:
    """Samples of one process's cumulative CPU seconds (user, system), interpolated in time."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.user: list[float] = []
        self.system: list[float] = []

    def add(self, at: float, user: float, system: float) -> None:
        self.times.append(at)
        self.user.append(user)
        self.system.append(system)

    def _at(self, values: list[float], at: float) -> float:
        times = self.times
        if not times:
            return math.nan
        index = bisect.bisect_left(times, at)
        if index == 0:
            return values[0]
        if index >= len(times):
            return values[-1]
        t0, t1 = times[index - 1], times[index]
        v0, v1 = values[index - 1], values[index]
        return v0 + (v1 - v0) * (at - t0) / (t1 - t0) if t1 > t0 else v1

    def between(self, start: float, end: float) -> tuple[float, float]:
        """CPU seconds (user, system) used from `start` to `end`."""
        return (
            self._at(self.user, end) - self._at(self.user, start),
            self._at(self.system, end) - self._at(self.system, start),
        )


# ---- calls and frames ------------------------------------------------------------------------


def is_nan(value: float) -> bool:
    return value != value


def model_tables(
    model_reports: list[dict[str, Any]],
) -> tuple[dict[int, TimeTable], dict[int, TimeTable]]:
    """Per call: when each caller frame reached the model, and when each reply frame left it."""
    at_model: dict[int, TimeTable] = {}
    model_sent: dict[int, TimeTable] = {}
    for report in model_reports:
        for call, data in report["caller_frames"].items():
            at_model[call] = TimeTable.from_bytes(data)
        for call, data in report["reply_frames"].items():
            model_sent[call] = TimeTable.from_bytes(data)
    return at_model, model_sent


def count_by(reports: list[dict[str, Any]], key: str) -> dict[str, int]:
    """How many reports have each value of `key`."""
    counts: dict[str, int] = {}
    for report in reports:
        counts[report[key]] = counts.get(report[key], 0) + 1
    return counts


@attrs.frozen
class Window:
    """The measurement window: from the moment the last call was up (its first frame reached the
    model) to the moment the last call stopped."""

    up_at: dict[int, float]
    came_up: list[dict[str, Any]]
    start: float
    end: float
    call_seconds: float

    @classmethod
    def of(cls, calls: list[dict[str, Any]], at_model: dict[int, TimeTable]) -> Window:
        up_at: dict[int, float] = {}
        for report in calls:
            table = at_model.get(report["index"])
            if table is not None:
                seen = [t for t in table.times if not is_nan(t)]
                if seen:
                    up_at[report["index"]] = min(seen)
        came_up = [r for r in calls if r["index"] in up_at]
        start = max(up_at.values()) if up_at else math.nan
        stops = [
            r["stop_at"] or r["closed_at"] for r in came_up if (r["stop_at"] or r["closed_at"])
        ]
        end = max(stops) if stops else math.nan
        call_seconds = sum(max(0.0, stop - start) for stop in stops)
        return cls(up_at, came_up, start, end, call_seconds)

    def holds(self, at: float) -> bool:
        return self.start <= at <= self.end

    def figures(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "calls_up": len(self.came_up),
            "calls_failed": [
                {"index": r["index"], "error": r["error"], "ended_by": r["ended_by"]}
                for r in calls
                if r["index"] not in self.up_at
            ][:10],
            "ended_by": count_by(calls, "ended_by"),
            "window_s": self.end - self.start,
            "call_seconds": self.call_seconds,
        }


class FrameAccount:
    """Latency and loss of the stamped frames both ways, summed over the calls."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.lat_in: list[float] = []
        self.lat_out: list[float] = []
        self.lat_first: list[float] = []
        self.turn_latency: list[float] = []
        self.lateness: list[float] = []
        self.frames_in = self.lost_in = self.tail_in = self.delivered_in_window = 0
        self.lost_in_examples: list[tuple[int, int, int]] = []
        self.frames_out = self.lost_out = self.unexpected_out = 0

    def caller_frames(self, report: dict[str, Any], arrived: TimeTable, complete: int) -> None:
        """One call's frames to the model; the frames from `complete` on may be lost by design
        (the daemon sends whole batches: a partial batch at hang-up is dropped)."""
        in_window = self.window.holds
        sent = TimeTable.from_bytes(report["sent_at"])
        due = TimeTable.from_bytes(report["due_at"])
        count = report["frames_sent"]
        for frame in range(count):
            sent_at = sent.get(frame)
            sent_in_window = in_window(sent_at)
            if sent_in_window:
                self.lateness.append(sent_at - due.get(frame))
            model_at = arrived.get(frame)
            if not is_nan(model_at):
                self.frames_in += 1
                if in_window(model_at):
                    self.delivered_in_window += 1
                if sent_in_window:
                    self.lat_in.append(model_at - sent_at)
            elif frame < complete:
                self.frames_in += 1
                self.lost_in += 1
                if len(self.lost_in_examples) < 20:
                    self.lost_in_examples.append((report["index"], frame, count))
            else:
                self.tail_in += 1

    def reply_frames(self, report: dict[str, Any], replies: TimeTable) -> None:
        """One call's reply frames from the model."""
        heard = TimeTable.from_bytes(report["reply_at"])
        self._turn_latency(TimeTable.from_bytes(report["sent_at"]), replies, heard)
        for frame, left_at in enumerate(replies.times):
            if is_nan(left_at):
                continue
            self.frames_out += 1
            heard_at = heard.get(frame)
            if is_nan(heard_at):
                self.lost_out += 1
                continue
            if self.window.holds(left_at):
                self.lat_out.append(heard_at - left_at)
                if frame == 0 or is_nan(replies.get(frame - 1)):
                    self.lat_first.append(heard_at - left_at)
        self.unexpected_out += sum(
            1 for f, t in enumerate(heard.times) if not is_nan(t) and is_nan(replies.get(f))
        )

    def _turn_latency(self, sent: TimeTable, replies: TimeTable, heard: TimeTable) -> None:
        """Per reply whose first frame left the model in the window: from the caller sending the
        reply's last frame (the loopback model echoes a turn up to its last speech frame) to the
        caller receiving the reply's first frame: the daemon's turn latency seen from outside."""
        times = replies.times
        first = -1
        for frame, left_at in enumerate(times):
            if is_nan(left_at):
                continue
            if frame == 0 or is_nan(times[frame - 1]):
                first = frame
            if frame + 1 < len(times) and not is_nan(times[frame + 1]):
                continue
            latency = heard.get(first) - sent.get(frame)
            if self.window.holds(times[first]) and not is_nan(latency):
                self.turn_latency.append(latency)

    def latency_figures(self) -> dict[str, Any]:
        return {
            "harness_turn_latency": Distribution.of(self.turn_latency),
            "caller_to_model": Distribution.of(self.lat_in),
            "model_to_caller": Distribution.of(self.lat_out),
            "model_to_caller_first": Distribution.of(self.lat_first),
            "harness_lateness": Distribution.of(self.lateness),
        }

    def caller_frame_figures(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "lost_in": self.lost_in, "tail_in": self.tail_in}

    def reply_frame_figures(self) -> dict[str, Any]:
        return {
            "frames_out": self.frames_out,
            "lost_out": self.lost_out,
            "unexpected_out": self.unexpected_out,
        }


# ---- py-spy ---------------------------------------------------------------------------------

_RUN_LOOP = "unrolled_run (trio/_core/_run.py)"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_file(path: str) -> str:
    # py-spy already shortens most paths; these catch the ones it leaves whole.
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _frame_name(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, "?"
    file = _short_file(match["file"])
    return f"{match['function']} ({file})", file


def summarize_profile(path: Path, *, top: int = 25) -> str:
    """Self and inclusive time per function (and self time per file) of a py-spy raw profile."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    file_counts: Counter[str] = Counter()
    task_counts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f[0].startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        leaf, leaf_file = frames[-1]
        self_counts[leaf] += count
        file_counts[leaf_file] += count
        for name in {name for name, _ in frames}:
            total_counts[name] += count
        names = [name for name, _ in frames]
        if _RUN_LOOP in names:
            below = names.index(_RUN_LOOP) + 1
            task_counts[names[below] if below < len(names) else "(trio's run loop itself)"] += count
    if not samples:
        return f"profile {path}: no samples"
    lines = [
        f"py-spy profile {path}: {samples} samples of the daemon doing something (idle excluded)"
    ]
    lines.append(f"\n  top {top} functions by self time (where the CPU is actually spent):")
    for name, count in self_counts.most_common(top):
        lines.append(f"    {100 * count / samples:5.1f}%  {name}")
    lines.append(f"\n  top {top} functions by inclusive time (self + callees):")
    for name, count in total_counts.most_common(top):
        lines.append(f"    {100 * count / samples:5.1f}%  {name}")
    lines.append("\n  inclusive time by trio task (the coroutine the run loop was stepping):")
    for name, count in task_counts.most_common(12):
        lines.append(f"    {100 * count / samples:5.1f}%  {name}")
    lines.append("\n  self time by package:")
    groups: defaultdict[str, int] = defaultdict(int)
    for file, count in file_counts.items():
        groups[_package(file)] += count
    for group, count in sorted(groups.items(), key=lambda item: -item[1]):
        lines.append(f"    {100 * count / samples:5.1f}%  {group}")
    return "\n".join(lines)


def _package(file: str) -> str:
    if file.startswith("bridge/"):
        parts = file.split("/")
        return "/".join(parts[:3]) if len(parts) > 2 else file
    if "/" in file:
        return file.split("/", 1)[0]
    return f"stdlib {file}" if file.endswith(".py") else file
