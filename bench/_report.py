"""Turning the raw measurements into figures: percentiles, CPU windows, the py-spy summary."""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import attrs


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
            len(ordered), _nearest_rank(ordered, 0.50), _nearest_rank(ordered, 0.99), ordered[-1]
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


def _nearest_rank(ordered: Sequence[float], quantile: float) -> float:
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
