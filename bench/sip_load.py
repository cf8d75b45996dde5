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

The process handling (sampling, model drain, py-spy, shutdown) is the media-stream benchmark's
(``mediastream_load._Run``); only the start-up, the callers and the figures differ.

Exit status: 0 when the benchmark ran (whatever the figures), 2 on a harness error.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from _model import ModelSpec, bind_reuseport, model_main
from _process import pin
from _report import CpuSeries, Distribution, summarize_profile
from _sip_callers import SipCallerSpec, callers_main
from _stamp import MAX_CALLS, TimeTable
from mediastream_load import (
    CLOSE_GRACE_S,
    DRAIN_LIMIT_S,
    HOST,
    MODEL_KEY_ENV,
    REPO,
    SATURATED,
    HarnessError,
    _core_ticks,
    _jsonable,
    _Run,
)

NAN = math.nan
SETTLE_S = 1.0
FRAME_S = 0.020
# The target: every outbound packet 20 ms +- 2 ms after the one before, at p99.
INTERVAL_TOLERANCE_S = 0.002
SIP_USER = "bridge"
# RTP ports: the daemon takes an even port and the next one per call; the pool skips ports in
# use, so the range has room to spare.
RTP_PORT_MIN = 40000


# ---- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="N concurrent SIP/RTP calls against the loopback model, "
        "with the daemon pinned to one core.",
    )
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="talk time once all calls are up (default 20)"
    )
    parser.add_argument(
        "--batch-frames",
        type=int,
        default=1,
        help="call.input_batch_frames: 20 ms frames per input_audio_buffer.append (default 1)",
    )
    parser.add_argument(
        "--jitter-frames",
        type=int,
        default=3,
        help="ingress.sip.jitter_frames: the reorder window of caller audio (default 3)",
    )
    parser.add_argument(
        "--speech-ms", type=int, default=1500, help="length of each caller turn (default 1500)"
    )
    parser.add_argument(
        "--generation-speed",
        type=float,
        default=4.0,
        help="how much faster than real time the model sends reply audio (default 4)",
    )
    parser.add_argument("--daemon-core", type=int, default=0, help="CPU for the daemon (default 0)")
    parser.add_argument("--caller-procs", type=int, default=0, help="default: from the cores")
    parser.add_argument("--model-procs", type=int, default=0, help="default: from the cores")
    parser.add_argument(
        "--ramp-seconds", type=float, default=0.0, help="INVITE ramp (default max(1, calls/100))"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the daemon with py-spy (raw format) during the measurement window",
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples a second")
    parser.add_argument(
        "--profile-nonblocking",
        action="store_true",
        help="do not pause the daemon per sample (less intrusive, but stacks come out torn)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, logs)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice value for the daemon and the harness; negative (root only) keeps other work "
        "on a shared machine from taking their cores (default 0)",
    )
    parser.add_argument("--seed", type=int, default=1)
    return parser


# ---- processes ------------------------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


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


def _config_toml(
    args: argparse.Namespace, *, port: int, model_port: int, records: Path, rtp_max: int
) -> str:
    return f"""# generated by bench/sip_load.py
[service]
name = "bench-sip"
max_calls = {args.calls + 16}

[log]
level = "warning"

[model]
provider = "compatible"
url = "ws://{HOST}:{model_port}/v1/realtime"
api_key_env = "{MODEL_KEY_ENV}"
dialect = "ga"

[call]
input_batch_frames = {args.batch_frames}

[records]
enabled = true
directory = "{records}"

[ingress.mediastream]
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


def _sched_slices(pid: int) -> int | None:
    """How many times the daemon's main thread got a CPU (the third field of schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return None


class _SipRun(_Run):
    """The media-stream benchmark's process handling with SIP callers and a SIP daemon."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(args, workdir)
        # (slices, 0): run-queue wait per wake-up tells scheduling delay from the daemon's own
        self.daemon_slices = CpuSeries()

    def _sample(self) -> None:
        super()._sample()
        slices = _sched_slices(self.pids["daemon"])
        if slices is not None:
            self.daemon_slices.add(time.monotonic(), float(slices), 0.0)

    def start(self) -> None:
        args = self.args
        daemon_core, harness = self.cores()
        self.daemon_core, self.harness_cores = daemon_core, harness
        pin(harness, args.nice)
        model_procs = args.model_procs or max(1, len(harness) // 3)
        caller_procs = args.caller_procs or max(1, len(harness) - model_procs)
        self.model_procs, self.caller_procs = model_procs, caller_procs
        context = multiprocessing.get_context("spawn")

        # Model processes share one port: hold it (SO_REUSEPORT, not listening) while they bind.
        holder = bind_reuseport(HOST, 0)
        model_port = holder.getsockname()[1]
        for worker in range(model_procs):
            parent_end, child_end = context.Pipe()
            spec = ModelSpec(
                host=HOST,
                port=model_port,
                cores=harness,
                generation_speed=args.generation_speed,
                worker=worker,
                nice=args.nice,
            )
            process = context.Process(
                target=model_main, args=(spec, child_end), name=f"bench-model-{worker}"
            )
            process.start()
            self.models.append((process, parent_end))
        for model, pipe in self.models:
            if not pipe.poll(30):
                raise HarnessError(f"{model.name} did not start")
            pipe.recv()
        holder.close()

        # The daemon.
        port = _free_udp_port()
        self.port = port
        records = self.workdir / "records"
        records.mkdir()
        config = self.workdir / "bench.toml"
        rtp_max = min(65535, RTP_PORT_MIN + 4 * args.calls + 200)
        config.write_text(
            _config_toml(args, port=port, model_port=model_port, records=records, rtp_max=rtp_max)
        )
        environ = dict(os.environ)
        environ[MODEL_KEY_ENV] = secrets.token_urlsafe(24)
        environ["PYTHONUNBUFFERED"] = "1"
        self.daemon_log = self.workdir / "daemon.log"
        with self.daemon_log.open("wb") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "-c", str(config)],
                cwd=REPO,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: pin(daemon_core, args.nice, own_group=True),
            )
        self.pids["daemon"] = self.daemon.pid
        deadline = time.monotonic() + 30
        while not _sip_answers(port, 0.2):
            if self.daemon.poll() is not None:
                raise HarnessError(
                    f"the daemon exited with {self.daemon.returncode}: "
                    + self.daemon_log.read_text()[-2000:]
                )
            if time.monotonic() > deadline:
                raise HarnessError("the daemon did not answer OPTIONS within 30 s")

        # The callers: INVITE over a ramp, talk for --seconds once everyone is up.
        ramp = args.ramp_seconds or max(1.0, args.calls / 100)
        t0 = time.monotonic() + 2.0
        talk_until = t0 + ramp + SETTLE_S + args.seconds
        self.planned_window = (t0 + ramp + SETTLE_S, talk_until)
        for worker in range(caller_procs):
            calls = tuple(range(worker, args.calls, caller_procs))
            parent_end, child_end = context.Pipe()
            caller_spec = SipCallerSpec(
                host=HOST,
                port=port,
                user=SIP_USER,
                calls=calls,
                cores=harness,
                invite_at=tuple(t0 + ramp * i / args.calls for i in calls),
                talk_until=talk_until,
                hard_stop=talk_until + 20.0,
                speech_ms=args.speech_ms,
                seed=args.seed,
                nice=args.nice,
            )
            caller = context.Process(
                target=callers_main, args=(caller_spec, child_end), name=f"bench-callers-{worker}"
            )
            caller.start()
            self.callers.append((caller, parent_end))
        for started, _pipe in self.models + self.callers:
            assert started.pid is not None
            self.pids[started.name] = started.pid
        self.cpu = {name: CpuSeries() for name in self.pids}
        self.cores_busy = {core: CpuSeries() for core in _core_ticks()}


# ---- figures --------------------------------------------------------------------------------


def _nan(value: float) -> bool:
    return value != value


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


def _quantile(ordered: list[float], quantile: float) -> float:
    if not ordered:
        return NAN
    rank = max(1, math.ceil(quantile * len(ordered)))
    return ordered[rank - 1]


def _figures(run: _SipRun) -> dict[str, Any]:
    args = run.args
    batch = args.batch_frames
    at_model: dict[int, TimeTable] = {}
    model_sent: dict[int, TimeTable] = {}
    for report in run.model_reports:
        for call, data in report["caller_frames"].items():
            at_model[call] = TimeTable.from_bytes(data)
        for call, data in report["reply_frames"].items():
            model_sent[call] = TimeTable.from_bytes(data)

    calls = sorted(run.caller_reports, key=lambda r: r["index"])
    up_at: dict[int, float] = {}
    for report in calls:
        table = at_model.get(report["index"])
        if table is not None:
            seen = [t for t in table.times if not _nan(t)]
            if seen:
                up_at[report["index"]] = min(seen)
    came_up = [r for r in calls if r["index"] in up_at]
    window_start = max(up_at.values()) if up_at else NAN
    stops = [r["stop_at"] or r["closed_at"] for r in came_up if (r["stop_at"] or r["closed_at"])]
    window_end = max(stops) if stops else NAN
    # Until the first BYE every call is in mid-conversation: no set-up or tear-down work.
    byes = [r["stop_at"] for r in came_up if r["stop_at"]]
    steady_end = min(byes) if byes else window_end
    call_seconds = sum(max(0.0, stop - window_start) for stop in stops)

    def in_window(at: float) -> bool:
        return window_start <= at <= window_end

    setup: list[float] = []
    trying: list[float] = []
    lat_in: list[float] = []
    lat_out: list[float] = []
    lat_first: list[float] = []
    lateness: list[float] = []
    receive_delay: list[float] = []
    intervals: list[float] = []
    intervals_read: list[float] = []
    intervals_steady: list[float] = []
    worst_call_interval: list[float] = []
    lost_in = tail_in = frames_in = delivered_in_window = 0
    lost_in_examples: list[tuple[int, int, int]] = []
    lost_out = frames_out = unexpected_out = 0
    sequence_totals: dict[str, int] = {}
    calls_with_gaps = 0
    for report in calls:
        index = report["index"]
        if report["answered_at"] is not None and report["invite_at"] is not None:
            setup.append(report["answered_at"] - report["invite_at"])
        if report["trying_at"] is not None and report["invite_at"] is not None:
            trying.append(report["trying_at"] - report["invite_at"])
        sent = TimeTable.from_bytes(report["sent_at"])
        due = TimeTable.from_bytes(report["due_at"])
        arrived = at_model.get(index, TimeTable())
        count = report["frames_sent"]
        # The daemon sends whole batches: a partial batch at hang-up is dropped by design. Its
        # batches need not start at our frame 0, so the tail is the run of missing frames after
        # the last one delivered, when it is shorter than a batch.
        last_delivered = next((f for f in range(count - 1, -1, -1) if not _nan(arrived.get(f))), -1)
        complete = count if count - 1 - last_delivered >= batch else last_delivered + 1
        for frame in range(count):
            sent_at = sent.get(frame)
            sent_in_window = in_window(sent_at)
            if sent_in_window:
                lateness.append(sent_at - due.get(frame))
            model_at = arrived.get(frame)
            if not _nan(model_at):
                frames_in += 1
                if in_window(model_at):
                    delivered_in_window += 1
                if sent_in_window:
                    lat_in.append(model_at - sent_at)
            elif frame < complete:
                frames_in += 1
                lost_in += 1
                if len(lost_in_examples) < 20:
                    lost_in_examples.append((index, frame, count))
            else:
                tail_in += 1
        replies = model_sent.get(index, TimeTable())
        heard = TimeTable.from_bytes(report["reply_at"])
        for frame, left_at in enumerate(replies.times):
            if _nan(left_at):
                continue
            frames_out += 1
            heard_at = heard.get(frame)
            if _nan(heard_at):
                lost_out += 1
                continue
            if in_window(left_at):
                lat_out.append(heard_at - left_at)
                if frame == 0 or _nan(replies.get(frame - 1)):
                    lat_first.append(heard_at - left_at)
        unexpected_out += sum(
            1 for f, t in enumerate(heard.times) if not _nan(t) and _nan(replies.get(f))
        )

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

    window = window_end - window_start
    cpu: dict[str, dict[str, float]] = {}
    for name, series in run.cpu.items():
        user, system = series.between(window_start, window_end)
        cpu[name] = {"user_s": user, "system_s": system, "load": (user + system) / window}
    daemon_cpu = cpu["daemon"]
    core_load: dict[int, float] = {}
    for core, series in run.cores_busy.items():
        busy, total = series.between(window_start, window_end)
        core_load[core] = busy / total if total > 0 else NAN
    ran, waited = run.daemon_sched.between(window_start, window_end)
    slices, _ = run.daemon_slices.between(window_start, window_end)
    harness_load = sum(v["load"] for k, v in cpu.items() if k != "daemon")
    others = {
        "daemon_core": core_load.get(run.daemon_core, NAN) - daemon_cpu["load"],
        "harness_cores": sum(core_load.get(c, NAN) for c in run.harness_cores) - harness_load,
    }
    daemon_cpu_s = daemon_cpu["user_s"] + daemon_cpu["system_s"]
    totals: dict[str, int] = {}
    errors: dict[str, int] = {}
    for report in run.model_reports:
        for key, value in report["totals"].items():
            totals[key] = totals.get(key, 0) + value
        for key, value in report["errors"].items():
            errors[key] = errors.get(key, 0) + value
    ended_by: dict[str, int] = {}
    daemon_requests: dict[str, int] = {}
    for report in calls:
        ended_by[report["ended_by"]] = ended_by.get(report["ended_by"], 0) + 1
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
        "calls_up": len(came_up),
        "calls_failed": [
            {"index": r["index"], "error": r["error"], "ended_by": r["ended_by"]}
            for r in calls
            if r["index"] not in up_at
        ][:10],
        "ended_by": ended_by,
        "window_s": window,
        "call_seconds": call_seconds,
        "daemon_cpu_ms_per_call_second": 1000 * daemon_cpu_s / call_seconds
        if call_seconds
        else NAN,
        "daemon_cpu_us_per_delivered_frame": 1e6 * daemon_cpu_s / delivered_in_window
        if delivered_in_window
        else NAN,
        "daemon_cpu_user_s": daemon_cpu["user_s"],
        "daemon_cpu_system_s": daemon_cpu["system_s"],
        "daemon_core_load": daemon_cpu["load"],
        "daemon_runnable": (ran + waited) / window,
        "daemon_runqueue_wait": waited / window,
        "daemon_wakeups_per_s": slices / window,
        "daemon_wait_per_wakeup_s": waited / slices if slices > 0 else NAN,
        "daemon_vmhwm_kib": run.memory.get("VmHWM", 0),
        "daemon_vmrss_after_kib": run.memory_after.get("VmRSS", 0),
        "setup_invite_to_200": Distribution.of(setup),
        "setup_invite_to_100": Distribution.of(trying),
        "invite_retransmits": summed("invite_retransmits"),
        "ok_retransmits": summed("ok_retransmits"),
        "bye_retransmits": summed("bye_retransmits"),
        "bye_not_200": sum(1 for r in calls if r["stop_at"] is not None and r["bye_status"] != 200),
        "daemon_requests": daemon_requests,
        "outbound_interval": Distribution.of(intervals),
        "outbound_interval_min": intervals[0] if intervals else NAN,
        "outbound_interval_p1": _quantile(intervals, 0.01),
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
        "caller_to_model": Distribution.of(lat_in),
        "model_to_caller": Distribution.of(lat_out),
        "model_to_caller_first": Distribution.of(lat_first),
        "harness_lateness": Distribution.of(lateness),
        "harness_receive_delay": Distribution.of(receive_delay),
        "frames_in": frames_in,
        "lost_in": lost_in,
        "tail_in": tail_in,
        "lost_in_examples": [
            {"call": c, "frame": f, "frames_sent": n} for c, f, n in lost_in_examples
        ],
        "frames_out": frames_out,
        "lost_out": lost_out,
        "unexpected_out": unexpected_out,
        "caller_duplicates": sum(r["caller_duplicates"] for r in run.model_reports),
        "reply_duplicates": summed("reply_duplicates"),
        "turns": summed("turns"),
        "replies": summed("replies"),
        "reply_timeouts": summed("reply_timeouts"),
        "model_connections": sum(r["connections_total"] for r in run.model_reports),
        "model_open_after": run.open_after_grace,
        "model_open_at_end": run.open_at_end,
        "model_websockets_drained_after_s": run.drained_after,
        "model_errors": errors,
        "model_totals": totals,
        "harness_cpu": {name: value["load"] for name, value in cpu.items() if name != "daemon"},
        "core_busy": core_load,
        "other_load": others,
        "model_procs": run.model_procs,
        "caller_procs": run.caller_procs,
        "daemon_core": run.daemon_core,
        "nice": args.nice,
        "harness_cores": list(run.harness_cores),
        "daemon_exit": run.daemon_exit,
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

    def row(label: str, value: str) -> None:
        print(f"  {label:<44} {value}")

    print()
    print(
        f"bridge SIP/RTP load: {f['calls']} calls, {f['seconds']:g} s talk, "
        f"batch {f['batch_frames']} frame(s)/append, jitter window {f['jitter_frames']} frames, "
        f"model replies at {f['generation_speed']:g}x real time"
    )
    harness = ",".join(map(str, f["harness_cores"]))
    print(
        f"daemon pinned to CPU {f['daemon_core']}; harness on CPU {harness} "
        f"({f['caller_procs']} caller + {f['model_procs']} model processes); nice {f['nice']}"
    )
    print()
    row(
        "calls answered / up / requested", f"{f['calls_answered']} / {f['calls_up']} / {f['calls']}"
    )
    row("measurement window", f"{f['window_s']:.2f} s  ({f['call_seconds']:.0f} call-seconds)")
    row(
        "daemon CPU per call-second",
        f"{f['daemon_cpu_ms_per_call_second']:.2f} ms  (user {f['daemon_cpu_user_s']:.2f} s + "
        f"sys {f['daemon_cpu_system_s']:.2f} s; core {100 * f['daemon_core_load']:.0f}% busy)",
    )
    row(
        "daemon CPU per caller frame delivered",
        f"{f['daemon_cpu_us_per_delivered_frame']:.0f} us",
    )
    row(
        "daemon main thread runnable",
        f"{100 * f['daemon_runnable']:.0f}% of the window  (waiting for the CPU "
        f"{100 * f['daemon_runqueue_wait']:.0f}%)"
        + ("  -> SATURATED" if f["daemon_runnable"] > SATURATED else ""),
    )
    row(
        "daemon time slices / waiting per slice",
        f"{f['daemon_wakeups_per_s']:.0f} a second / "
        f"{1e6 * f['daemon_wait_per_wakeup_s']:.0f} us on average in the run queue",
    )
    row(
        "daemon peak memory (VmHWM)",
        f"{f['daemon_vmhwm_kib'] / 1024:.1f} MiB  (VmRSS after the calls "
        f"{f['daemon_vmrss_after_kib'] / 1024:.1f} MiB)",
    )
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
    row("caller->model latency p50/p99/max", f["caller_to_model"].ms())
    row("model->caller latency p50/p99/max", f["model_to_caller"].ms())
    row("  first frame of each reply", f["model_to_caller_first"].ms())
    row(
        "frames lost caller->model",
        f"{f['lost_in']} of {f['frames_in']}  (+{f['tail_in']} in partial batches at hang-up)",
    )
    row("frames lost model->caller", f"{f['lost_out']} of {f['frames_out']}")
    drained = f["model_websockets_drained_after_s"]
    row(
        f"model websockets open {CLOSE_GRACE_S:g} s after the calls",
        f"{f['model_open_after']}  (of {f['model_connections']} opened; "
        + (
            f"all closed {drained:.1f} s after the last caller finished)"
            if not _nan(drained)
            else f"{f['model_open_at_end']} still open after {DRAIN_LIMIT_S:g} s)"
        ),
    )
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
    row("duplicate frames in / out", f"{f['caller_duplicates']} / {f['reply_duplicates']}")
    row("model errors", json.dumps(f["model_errors"]) if f["model_errors"] else "none")
    row("calls ended by", json.dumps(f["ended_by"]))
    if f["daemon_requests"]:
        row("requests from the daemon", json.dumps(f["daemon_requests"]))
    if f["calls_failed"]:
        row("calls that never came up (first 10)", json.dumps(f["calls_failed"]))
    row("harness send lateness p50/p99/max", f["harness_lateness"].ms())
    row("harness receive delay p50/p99/max", f["harness_receive_delay"].ms())
    row(
        "harness CPU (% of one core)",
        ", ".join(f"{name} {100 * load:.0f}%" for name, load in f["harness_cpu"].items()),
    )
    other = f["other_load"]
    row(
        "other processes' CPU in the window",
        f"{100 * other['daemon_core']:.0f}% of the daemon's core, "
        f"{100 * other['harness_cores']:.0f}% of a core on the harness cores",
    )
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
    args = _parser().parse_args(argv)
    if not 1 <= args.calls < MAX_CALLS:
        print(f"--calls must be 1..{MAX_CALLS - 1}", file=sys.stderr)
        return 2
    if RTP_PORT_MIN + 4 * args.calls > 65535:
        print("--calls too large for the RTP port range", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bridge-sip-bench-"))
    run = _SipRun(args, workdir)
    try:
        run.start()
        run.wait()
    except HarnessError as error:
        print(f"harness error: {error}", file=sys.stderr)
        print(f"(config and daemon log kept in {workdir})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 2
    finally:
        run.stop()
    if not run.caller_reports or not any(r["answered_at"] for r in run.caller_reports):
        errors = {r["error"] for r in run.caller_reports}
        print(f"harness error: no call was answered: {sorted(errors)[:3]}", file=sys.stderr)
        print(f"(config and daemon log kept in {workdir})", file=sys.stderr)
        return 2
    figures = _figures(run)
    _print(figures)
    warnings = [
        line
        for line in run.daemon_log.read_text(errors="replace").splitlines()
        if "level=warning" in line or "level=error" in line
    ]
    if warnings:
        print(f"\n  daemon log: {len(warnings)} warning/error lines, e.g.:")
        for line in warnings[:3]:
            print(f"    {line[:200]}")
    if args.profile:
        print()
        print(summarize_profile(Path(args.profile)))
    if args.json:
        figures["daemon_log_warnings"] = len(warnings)
        figures["target_met"] = _target_met(figures)
        Path(args.json).write_text(json.dumps(_jsonable(figures), indent=2) + "\n")
    if args.keep:
        print(f"\n  kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
