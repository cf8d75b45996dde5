"""SIP/RTP load benchmark: N concurrent SIP calls with RTP media through the daemon to a loopback
model.

    python3 bench/sip_load.py --calls 200 --seconds 20

What runs where (see the "SIP/RTP benchmark" section of bench/README.md for every figure):

* the daemon, ``python -m bridge run -c <generated config>``, a real subprocess pinned to one core
  (``--daemon-core``, default 0): ``[ingress.sip]`` on UDP only, the media-stream ingress off,
  provider "compatible" pointing at the model processes below, records in a temp dir, log level
  warning;
* model processes (``_model.py``, shared with the media-stream benchmark) running the loopback
  model core, one per connection, on the other cores; they time each stamped caller frame's
  arrival and each reply frame's departure;
* caller processes (``_sip_callers.py``): per call a minimal SIP UAC and an RTP socket on one
  epoll loop per process, 50 packets a second each way, talking in turns, on the other cores; they
  time each frame's departure, each reply frame's arrival and every RTP packet the daemon sent;
* this process: it starts the others, samples every process's CPU time from /proc every 50 ms,
  optionally runs py-spy on the daemon during the measurement window, and prints the figures.

The process handling (start-up, sampling, model drain, py-spy, shutdown) and the figures both
benchmarks report are ``_harness.py``'s; only the daemon's configuration and readiness probe, the
callers and the SIP/RTP figures are this file's.

Exit status: 0 when the benchmark ran (whatever the figures), 2 on a harness error.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from _harness import (
    HOST,
    NAN,
    SATURATED,
    CallerMain,
    Run,
    Table,
    harness_parser,
    run_benchmark,
)
from _report import (
    CpuSeries,
    Distribution,
    FrameAccount,
    Window,
    is_nan,
    model_tables,
    nearest_rank,
)
from _sip_callers import SipCallerSpec, callers_main
from _stamp import TimeTable

FRAME_S = 0.020
# The target: every outbound packet 20 ms +- 2 ms after the one before, at p99.
INTERVAL_TOLERANCE_S = 0.002
SIP_USER = "bridge"
# RTP ports: the daemon takes an even port and the next one per call; the pool skips ports in
# use, so the range has room to spare.
RTP_PORT_MIN = 40000


# ---- command line ---------------------------------------------------------------------------


def _own_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jitter-frames",
        type=int,
        default=3,
        help="ingress.sip.jitter_frames: the reorder window of caller audio (default 3)",
    )


def _parser() -> argparse.ArgumentParser:
    return harness_parser(
        "N concurrent SIP/RTP calls against the loopback model, "
        "with the daemon pinned to one core.",
        ramp="INVITE",
        own=_own_arguments,
    )


# ---- processes ------------------------------------------------------------------------------


def _sip_answers(port: int, timeout: float) -> bool:
    """Whether the daemon answers an OPTIONS on 127.0.0.1:port (any response will do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(timeout)
        local = sock.getsockname()[1]
        tag = secrets.token_hex(4)
        options = (
            f"OPTIONS sip:{SIP_USER}@{HOST}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:bench@{HOST}:{local}>;tag={tag}\r\n"
            f"To: <sip:{SIP_USER}@{HOST}:{port}>\r\n"
            f"Call-ID: bench-probe-{tag}@{HOST}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        try:
            sock.sendto(options, (HOST, port))
            data = sock.recv(4096)
        except OSError:  # timeout, or ICMP port unreachable while nothing listens yet
            return False
        return data.startswith(b"SIP/2.0 ")


def _sched_slices(pid: int) -> int | None:
    """How many times the daemon's main thread got a CPU (the third field of schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return None


class _SipRun(Run):
    """The run's processes with SIP callers and a SIP daemon."""

    WORKDIR_PREFIX = "bridge-sip-bench-"
    SCRIPT = "bench/sip_load.py"
    SERVICE_NAME = "bench-sip"
    DAEMON_SOCKET = socket.SOCK_DGRAM
    NOT_READY = "the daemon did not answer OPTIONS within 30 s"
    PROBE_EVERY_S = 0.0  # the OPTIONS probe itself waits
    UP_FIELD = "answered_at"
    NONE_UP = "no call was answered"

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir)
        # (slices, 0): run-queue wait per wake-up tells scheduling delay from the daemon's own
        self.daemon_slices = CpuSeries()

    @classmethod
    def argument_error(cls, args: argparse.Namespace) -> str | None:
        problem = super().argument_error(args)
        if problem is None and RTP_PORT_MIN + 4 * args.calls > 65535:
            return "--calls too large for the RTP port range"
        return problem

    def sample(self) -> None:
        super().sample()
        slices = _sched_slices(self.pids["daemon"])
        if slices is not None:
            self.daemon_slices.add(time.monotonic(), float(slices), 0.0)

    def ingress_toml(self, port: int) -> str:
        args = self.args
        rtp_max = min(65535, RTP_PORT_MIN + 4 * args.calls + 200)
        return f"""[ingress.mediastream]
enabled = false

[ingress.sip]
enabled = true
host = "{HOST}"
port = {port}
transports = ["udp"]
rtp_port_min = {RTP_PORT_MIN}
rtp_port_max = {rtp_max}
codecs = ["PCMU"]
allow_from = ["127.0.0.0/8"]
jitter_frames = {args.jitter_frames}
"""

    def daemon_ready(self, port: int) -> bool:
        return _sip_answers(port, 0.2)

    def caller_process(
        self, start_at: tuple[float, ...], common: dict[str, Any]
    ) -> tuple[CallerMain, object]:
        spec = SipCallerSpec(user=SIP_USER, invite_at=start_at, **common)
        return callers_main, spec


# ---- figures --------------------------------------------------------------------------------


def _doubles(data: bytes) -> array[float]:
    values = array("d")
    values.frombytes(data)
    return values


def _sequence_figures(sequences: bytes, timestamps: bytes) -> dict[str, int]:
    """RTP continuity of one call's packets from the daemon, in arrival order (RFC 3550 §A.1).

    lost: sequence numbers between the first and the highest received that never came;
    duplicates; reordered: packets older than one received before them; timestamp_jumps:
    consecutive packets whose timestamps differ by more than 160 (the daemon skipped ticks),
    with the 20 ms frames skipped; timestamp_backwards: consecutive packets whose timestamp
    did not advance.
    """
    numbers = array("H")
    numbers.frombytes(sequences)
    stamps = array("I")
    stamps.frombytes(timestamps)
    seen: set[int] = set()
    highest = lowest = -1
    highest_timestamp = 0
    duplicates = reordered = jumps = skipped = backwards = 0
    for number, timestamp in zip(numbers, stamps, strict=True):
        if highest < 0:
            extended = number + (1 << 16)  # room below for packets older than the first
            lowest = highest = extended
            highest_timestamp = timestamp
            seen.add(extended)
            continue
        delta = (number - highest) & 0xFFFF
        extended = highest + delta if delta < 0x8000 else highest - (0x10000 - delta)
        if extended in seen:
            duplicates += 1
            continue
        seen.add(extended)
        if extended < highest:
            reordered += 1
            lowest = min(lowest, extended)
            continue
        if extended == highest + 1:
            step = (timestamp - highest_timestamp) & 0xFFFFFFFF
            if step > 160 and step < 0x80000000:
                jumps += 1
                skipped += (step - 160) // 160
            elif step != 160:
                backwards += 1
        highest = extended
        highest_timestamp = timestamp
    lost = (highest - lowest + 1) - len(seen) if highest >= 0 else 0
    return {
        "packets": len(numbers),
        "lost": lost,
        "duplicates": duplicates,
        "reordered": reordered,
        "timestamp_jumps": jumps,
        "frames_skipped": skipped,
        "timestamp_backwards": backwards,
    }


def _figures(run: _SipRun) -> dict[str, Any]:
    args = run.args
    batch = args.batch_frames
    at_model, model_sent = model_tables(run.model_reports)
    calls = sorted(run.caller_reports, key=lambda r: r["index"])
    window = Window.of(calls, at_model)
    window_start, window_end = window.start, window.end
    # Until the first BYE every call is in mid-conversation: no set-up or tear-down work.
    byes = [r["stop_at"] for r in window.came_up if r["stop_at"]]
    steady_end = min(byes) if byes else window_end
    in_window = window.holds

    frames = FrameAccount(window)
    setup: list[float] = []
    trying: list[float] = []
    receive_delay: list[float] = []
    intervals: list[float] = []
    intervals_read: list[float] = []
    intervals_steady: list[float] = []
    worst_call_interval: list[float] = []
    sequence_totals: dict[str, int] = {}
    calls_with_gaps = 0
    for report in calls:
        index = report["index"]
        if report["answered_at"] is not None and report["invite_at"] is not None:
            setup.append(report["answered_at"] - report["invite_at"])
        if report["trying_at"] is not None and report["invite_at"] is not None:
            trying.append(report["trying_at"] - report["invite_at"])
        arrived = at_model.get(index, TimeTable())
        count = report["frames_sent"]
        # The daemon sends whole batches: a partial batch at hang-up is dropped by design. Its
        # batches need not start at our frame 0, so the tail is the run of missing frames after
        # the last one delivered, when it is shorter than a batch.
        last_delivered = next(
            (f for f in range(count - 1, -1, -1) if not is_nan(arrived.get(f))), -1
        )
        complete = count if count - 1 - last_delivered >= batch else last_delivered + 1
        frames.caller_frames(report, arrived, complete)
        frames.reply_frames(report, model_sent.get(index, TimeTable()))

        kernel = _doubles(report["rx_kernel"])
        read = _doubles(report["rx_user"])
        call_max = 0.0
        for position in range(1, len(kernel)):
            previous, current = kernel[position - 1], kernel[position]
            if not (window_start <= previous and current <= window_end):
                continue
            interval = current - previous
            intervals.append(interval)
            if current <= steady_end:
                intervals_steady.append(interval)
            call_max = max(call_max, interval)
            intervals_read.append(read[position] - read[position - 1])
        if call_max:
            worst_call_interval.append(call_max)
        receive_delay.extend(r - k for k, r in zip(kernel, read, strict=True) if in_window(k))
        sequence = _sequence_figures(report["rx_sequence"], report["rx_timestamp"])
        for key, value in sequence.items():
            sequence_totals[key] = sequence_totals.get(key, 0) + value
        if sequence["lost"]:
            calls_with_gaps += 1

    intervals.sort()
    within = sum(1 for i in intervals if abs(i - FRAME_S) <= INTERVAL_TOLERANCE_S)
    deviation = [abs(i - FRAME_S) for i in intervals]
    deviation_steady = [abs(i - FRAME_S) for i in intervals_steady]

    load = run.load(window_start, window_end)
    slices, _ = run.daemon_slices.between(window_start, window_end)
    daemon_requests: dict[str, int] = {}
    for report in calls:
        for method, count in report["daemon_requests"].items():
            daemon_requests[method] = daemon_requests.get(method, 0) + count

    def summed(key: str) -> int:
        return sum(int(r[key]) for r in calls)

    return {
        "calls": args.calls,
        "seconds": args.seconds,
        "batch_frames": batch,
        "jitter_frames": args.jitter_frames,
        "generation_speed": args.generation_speed,
        "calls_answered": sum(1 for r in calls if r["answered_at"] is not None),
        **window.figures(calls),
        **load.daemon_figures(window.call_seconds, frames.delivered_in_window),
        "daemon_wakeups_per_s": slices / load.window,
        "daemon_wait_per_wakeup_s": load.waited / slices if slices > 0 else NAN,
        **load.memory_figures(),
        "setup_invite_to_200": Distribution.of(setup),
        "setup_invite_to_100": Distribution.of(trying),
        "invite_retransmits": summed("invite_retransmits"),
        "ok_retransmits": summed("ok_retransmits"),
        "bye_retransmits": summed("bye_retransmits"),
        "bye_not_200": sum(1 for r in calls if r["stop_at"] is not None and r["bye_status"] != 200),
        "daemon_requests": daemon_requests,
        "outbound_interval": Distribution.of(intervals),
        "outbound_interval_min": intervals[0] if intervals else NAN,
        "outbound_interval_p1": nearest_rank(intervals, 0.01),
        "outbound_interval_deviation": Distribution.of(deviation),
        "outbound_interval_within_2ms": within / len(intervals) if intervals else NAN,
        "outbound_interval_at_read": Distribution.of(intervals_read),
        "steady_s": steady_end - window_start,
        "outbound_interval_steady_deviation": Distribution.of(deviation_steady),
        "outbound_interval_steady_within_2ms": (
            sum(1 for d in deviation_steady if d <= INTERVAL_TOLERANCE_S) / len(deviation_steady)
            if deviation_steady
            else NAN
        ),
        "outbound_worst_call_max": Distribution.of(worst_call_interval),
        "rtp_out": sequence_totals,
        "calls_with_sequence_gaps": calls_with_gaps,
        "rtp_markers": summed("rx_markers"),
        "rtp_ssrcs": summed("rx_ssrcs"),
        "rtp_other_pt": summed("rx_other_pt"),
        "rtp_malformed": summed("rx_malformed"),
        "rtp_wrong_source": summed("rx_wrong_source"),
        "rtp_before_answer": summed("rx_before_answer"),
        "rtp_socket_errors": summed("rx_errors"),
        "caller_send_errors": summed("send_errors"),
        **frames.latency_figures(),
        "harness_receive_delay": Distribution.of(receive_delay),
        **frames.caller_frame_figures(),
        "lost_in_examples": [
            {"call": c, "frame": f, "frames_sent": n} for c, f, n in frames.lost_in_examples
        ],
        **frames.reply_frame_figures(),
        "caller_duplicates": sum(r["caller_duplicates"] for r in run.model_reports),
        "reply_duplicates": summed("reply_duplicates"),
        "turns": summed("turns"),
        "replies": summed("replies"),
        "reply_timeouts": summed("reply_timeouts"),
        **run.model_figures(),
        **load.harness_figures(),
        **run.placement_figures(),
    }


def _target_met(f: dict[str, Any]) -> bool:
    rtp = f["rtp_out"]
    return bool(
        f["outbound_interval"].count
        and f["outbound_interval_deviation"].p99 <= INTERVAL_TOLERANCE_S
        and f["lost_in"] == 0
        and f["lost_out"] == 0
        and rtp.get("lost", 0) == 0
        and f["calls_up"] == f["calls"]
    )


def _print(figures: dict[str, Any]) -> None:
    f = figures
    table = Table(44)
    row = table.row

    table.heading(
        f,
        f"bridge SIP/RTP load: {f['calls']} calls, {f['seconds']:g} s talk, "
        f"batch {f['batch_frames']} frame(s)/append, jitter window {f['jitter_frames']} frames, "
        f"model replies at {f['generation_speed']:g}x real time",
    )
    row(
        "calls answered / up / requested", f"{f['calls_answered']} / {f['calls_up']} / {f['calls']}"
    )
    table.daemon_rows(f)
    row(
        "daemon time slices / waiting per slice",
        f"{f['daemon_wakeups_per_s']:.0f} a second / "
        f"{1e6 * f['daemon_wait_per_wakeup_s']:.0f} us on average in the run queue",
    )
    table.memory_row(f)
    print()
    row("outbound RTP interval p50/p99/max", f["outbound_interval"].ms())
    row(
        "  min / p1",
        f"{1000 * f['outbound_interval_min']:.2f} / {1000 * f['outbound_interval_p1']:.2f} ms",
    )
    row(
        "  |interval - 20 ms| p50/p99/max",
        f["outbound_interval_deviation"].ms(),
    )
    row(
        "  share within 20 +- 2 ms",
        f"{100 * f['outbound_interval_within_2ms']:.3f}%",
    )
    row("  each call's largest interval p50/p99/max", f["outbound_worst_call_max"].ms())
    row("  same, from the callers' read times", f["outbound_interval_at_read"].ms())
    row(
        f"  before the first BYE ({f['steady_s']:.1f} s): |i - 20 ms|",
        f["outbound_interval_steady_deviation"].ms(),
    )
    row(
        "    share within 20 +- 2 ms",
        f"{100 * f['outbound_interval_steady_within_2ms']:.3f}%",
    )
    rtp = f["rtp_out"]
    row(
        "daemon RTP: packets / lost / dup / reordered",
        f"{rtp.get('packets', 0)} / {rtp.get('lost', 0)} / {rtp.get('duplicates', 0)} / "
        f"{rtp.get('reordered', 0)}  ({f['calls_with_sequence_gaps']} calls with gaps)",
    )
    row(
        "daemon RTP: timestamp jumps (frames skipped)",
        f"{rtp.get('timestamp_jumps', 0)} ({rtp.get('frames_skipped', 0)}), "
        f"{rtp.get('timestamp_backwards', 0)} not advancing; M=1 {f['rtp_markers']}, "
        f"SSRCs {f['rtp_ssrcs']}, wrong source {f['rtp_wrong_source']}",
    )
    print()
    table.latency_rows(f)
    print()
    row("call setup INVITE->100 p50/p99/max", f["setup_invite_to_100"].ms())
    row("call setup INVITE->200 p50/p99/max", f["setup_invite_to_200"].ms())
    row(
        "retransmissions INVITE / 200 / BYE",
        f"{f['invite_retransmits']} / {f['ok_retransmits']} / {f['bye_retransmits']}"
        f"  (BYEs not answered 200: {f['bye_not_200']})",
    )
    row(
        "turns / replies heard / reply timeouts",
        f"{f['turns']} / {f['replies']} / {f['reply_timeouts']}",
    )
    table.outcome_rows(f)
    if f["daemon_requests"]:
        row("requests from the daemon", json.dumps(f["daemon_requests"]))
    if f["calls_failed"]:
        row("calls that never came up (first 10)", json.dumps(f["calls_failed"]))
    row("harness send lateness p50/p99/max", f["harness_lateness"].ms())
    row("harness receive delay p50/p99/max", f["harness_receive_delay"].ms())
    table.harness_cpu_row(f)
    table.other_load_row(f)
    if f["daemon_runnable"] > SATURATED:
        print(
            "  note: the daemon was SATURATED: it fell behind, so latency grows with the run and "
            "the CPU per call-second\n  understates the cost; the CPU per delivered frame "
            "still holds."
        )
    print()
    print(
        "  target (outbound interval 20 +- 2 ms at p99, nothing lost, all calls up): "
        f"{'MET' if _target_met(f) else 'MISSED'}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(
        _parser().parse_args(argv),
        _SipRun,
        _figures,
        _print,
        json_extras=lambda figures: {"target_met": _target_met(figures)},
    )


if __name__ == "__main__":
    sys.exit(main())
