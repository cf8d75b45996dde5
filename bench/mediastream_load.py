"""Media-stream load benchmark: N concurrent simulated calls through the daemon to a loopback model.

    python3 bench/mediastream_load.py --calls 100 --seconds 20 --batch-frames 1

What runs where (see bench/README.md for what each figure means):

* the daemon, ``python -m bridge run -c <generated config>``, a real subprocess pinned to one core
  (``--daemon-core``, default 0), provider "compatible" pointing at the model processes below,
  shared-secret auth with a generated secret, records in a temp dir, log level warning;
* model processes (``_model.py``) running the loopback model core, one per connection, on the other
  cores; they time each stamped caller frame's arrival and each reply frame's departure;
* caller processes (``_callers.py``) simulating Twilio media streams at 50 frames a second, talking
  in turns, on the other cores; they time each frame's departure and each reply frame's arrival;
* this process, which samples every process's CPU time from /proc every 50 ms, optionally runs
  py-spy on the daemon during the measurement window, and prints the figures.

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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait as wait_pipes
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from _callers import CallerSpec, callers_main
from _model import ModelSpec, bind_reuseport, model_main
from _process import pin
from _report import CpuSeries, Distribution, summarize_profile
from _stamp import MAX_CALLS, TimeTable

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MEDIA_PATH = "/media"
SECRET_ENV = "BENCH_MEDIA_SECRET"
MODEL_KEY_ENV = "BENCH_MODEL_KEY"
SAMPLE_EVERY_S = 0.05
SETTLE_S = 1.0
# After the last caller is done: the supervisor's close grace (2 s) plus a margin.
CLOSE_GRACE_S = 3.0
# How long to wait after that for a daemon that fell behind to close its model websockets.
DRAIN_LIMIT_S = 30.0
# A daemon whose main thread was runnable this much of the window had no CPU to spare.
SATURATED = 0.95
CLK_TCK = os.sysconf("SC_CLK_TCK")
NAN = math.nan


class HarnessError(Exception):
    pass


# ---- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="N concurrent simulated media-stream calls against the loopback model, "
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
        "--chunk-frames",
        type=int,
        default=5,
        help="ingress.mediastream.outbound_chunk_frames (default 5)",
    )
    parser.add_argument(
        "--playout-lead-ms",
        type=int,
        default=5000,
        help="ingress.mediastream.playout_lead_ms (default 5000: never binds for the ~2 s "
        "replies, so model-to-caller latency is transit time, not flow control)",
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
        "--ramp-seconds", type=float, default=0.0, help="connect ramp (default max(1, calls/100))"
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp, without connecting)."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in lines)


def _cpu_seconds(pid: int) -> tuple[float, float] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def _core_ticks() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy seconds, total seconds) since boot, from /proc/stat."""
    ticks: dict[int, tuple[float, float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        numbers = [int(v) for v in values[:8]]
        total = sum(numbers)
        idle = numbers[3] + numbers[4]
        ticks[int(name[3:])] = ((total - idle) / CLK_TCK, total / CLK_TCK)
    return ticks


def _schedstat(pid: int) -> tuple[float, float] | None:
    """Seconds the main thread ran on a CPU, and waited runnable for one (/proc/PID/schedstat)."""
    try:
        ran, waited, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(ran) / 1e9, int(waited) / 1e9


def _memory_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def _config_toml(args: argparse.Namespace, *, port: int, model_port: int, records: Path) -> str:
    return f"""# generated by bench/mediastream_load.py
[service]
name = "bench"
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
host = "{HOST}"
port = {port}
path = "{MEDIA_PATH}"
auth = "shared_secret"
shared_secret_env = "{SECRET_ENV}"
outbound_chunk_frames = {args.chunk_frames}
playout_lead_ms = {args.playout_lead_ms}
"""


class _Run:
    """The processes of one benchmark run and what they reported."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.daemon: subprocess.Popen[bytes] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None
        self.models: list[tuple[BaseProcess, Pipe]] = []
        self.callers: list[tuple[BaseProcess, Pipe]] = []
        self.cpu: dict[str, CpuSeries] = {}
        self.cores_busy: dict[int, CpuSeries] = {}
        self.pids: dict[str, int] = {}
        self.caller_reports: list[dict[str, Any]] = []
        self.model_reports: list[dict[str, Any]] = []
        self.memory: dict[str, int] = {}
        self.memory_after: dict[str, int] = {}
        self.daemon_exit: int | None = None
        self.planned_window = (NAN, NAN)
        self.callers_done_at = NAN
        self.open_after_grace = -1
        self.open_at_end = -1
        self.drained_after = NAN
        self.daemon_sched = CpuSeries()

    # -- setup --

    def cores(self) -> tuple[int, tuple[int, ...]]:
        available = sorted(os.sched_getaffinity(0))
        daemon_core = self.args.daemon_core
        if daemon_core not in available:
            raise HarnessError(f"--daemon-core {daemon_core} is not one of the CPUs {available}")
        harness = tuple(c for c in available if c != daemon_core)
        if not harness:
            print("warning: one CPU only; the harness shares the daemon's core", file=sys.stderr)
            harness = (daemon_core,)
        return daemon_core, harness

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
        port = _free_port()
        self.port = port
        records = self.workdir / "records"
        records.mkdir()
        config = self.workdir / "bench.toml"
        config.write_text(_config_toml(args, port=port, model_port=model_port, records=records))
        self.secret = secrets.token_urlsafe(24)
        environ = dict(os.environ)
        environ[SECRET_ENV] = self.secret
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
        while not _listening(port):
            if self.daemon.poll() is not None:
                raise HarnessError(
                    f"the daemon exited with {self.daemon.returncode}: "
                    + self.daemon_log.read_text()[-2000:]
                )
            if time.monotonic() > deadline:
                raise HarnessError("the daemon did not start listening within 30 s")
            time.sleep(0.05)

        # The callers: connect over a ramp, talk for --seconds once everyone is up.
        ramp = args.ramp_seconds or max(1.0, args.calls / 100)
        t0 = time.monotonic() + 2.0
        talk_until = t0 + ramp + SETTLE_S + args.seconds
        self.planned_window = (t0 + ramp + SETTLE_S, talk_until)
        for worker in range(caller_procs):
            calls = tuple(range(worker, args.calls, caller_procs))
            parent_end, child_end = context.Pipe()
            caller_spec = CallerSpec(
                host=HOST,
                port=port,
                path=MEDIA_PATH,
                secret_parameter="secret",
                secret=self.secret,
                calls=calls,
                total_calls=args.calls,
                cores=harness,
                connect_at=tuple(t0 + ramp * i / args.calls for i in calls),
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

    # -- the run --

    def _sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            cpu = _cpu_seconds(pid)
            if cpu is not None:
                self.cpu[name].add(now, *cpu)
        sched = _schedstat(self.pids["daemon"])
        if sched is not None:
            self.daemon_sched.add(now, *sched)
        for core, (busy, total) in _core_ticks().items():
            if core in self.cores_busy:
                self.cores_busy[core].add(now, busy, total)

    def _start_profiler(self) -> None:
        args = self.args
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            raise HarnessError("--profile needs py-spy (pip install py-spy)")
        assert self.daemon is not None
        self.profiler = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(self.daemon.pid),
                "--duration",
                str(max(1, int(args.seconds))),
                "--rate",
                str(args.profile_rate),
                *(["--nonblocking"] if args.profile_nonblocking else []),
                "--nolineno",
                "--format",
                "raw",
                "--output",
                str(args.profile),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "py-spy.log").open("wb"),
        )

    def wait(self) -> None:
        args = self.args
        pending = {pipe: process for process, pipe in self.callers}
        give_up = self.planned_window[1] + 60.0
        profile_at = self.planned_window[0] if args.profile else math.inf
        while pending:
            self._sample()
            if time.monotonic() >= profile_at:
                profile_at = math.inf
                self._start_profiler()
            ready = wait_pipes(list(pending), timeout=SAMPLE_EVERY_S)
            for pipe in ready:
                assert isinstance(pipe, Pipe)
                try:
                    kind, payload = pipe.recv()
                except EOFError:
                    raise HarnessError(f"{pending[pipe].name} died") from None
                if kind == "report":
                    self.caller_reports.extend(payload)
                    del pending[pipe]
            for pipe, process in list(pending.items()):
                if not process.is_alive() and not pipe.poll():
                    raise HarnessError(f"{process.name} exited with {process.exitcode}")
            if self.daemon is not None and self.daemon.poll() is not None:
                raise HarnessError(f"the daemon died with {self.daemon.returncode}")
            if time.monotonic() > give_up:
                raise HarnessError("the callers did not finish in time")
        self.callers_done_at = time.monotonic()
        self.memory = _memory_kib(self.pids["daemon"])
        # Poll the model processes: when did the last model websocket close, and how many were
        # still open CLOSE_GRACE_S after the last caller finished (the figure that must be 0)?
        grace_end = self.callers_done_at + CLOSE_GRACE_S
        give_up = self.callers_done_at + DRAIN_LIMIT_S
        open_now = self._open_model_websockets()
        while True:
            now = time.monotonic()
            if not open_now and math.isnan(self.drained_after):
                self.drained_after = now - self.callers_done_at
            if now >= grace_end and self.open_after_grace < 0:
                self.open_after_grace = open_now
            if now >= give_up or (now >= grace_end and not open_now):
                break
            self._sample()
            time.sleep(0.1)
            open_now = self._open_model_websockets()
        self.open_at_end = open_now
        for _process, pipe in self.models:
            pipe.send("report")
        for process, pipe in self.models:
            if not pipe.poll(30):
                raise HarnessError(f"{process.name} did not report")
            kind, payload = pipe.recv()
            self.model_reports.append(payload)
        self.memory_after = _memory_kib(self.pids["daemon"])
        if self.profiler is not None:
            try:
                self.profiler.wait(timeout=args.seconds + 30)
            except subprocess.TimeoutExpired:
                self.profiler.terminate()

    def _open_model_websockets(self) -> int:
        for _process, pipe in self.models:
            pipe.send("count")
        total = 0
        for process, pipe in self.models:
            if not pipe.poll(30):
                raise HarnessError(f"{process.name} did not answer")
            _kind, count = pipe.recv()
            total += count
        return int(total)

    def stop(self) -> None:
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.terminate()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon_exit = self.daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon_exit = self.daemon.wait()
        for process, _pipe in self.callers + self.models:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


# ---- figures --------------------------------------------------------------------------------


def _nan(value: float) -> bool:
    return value != value


def _figures(run: _Run) -> dict[str, Any]:
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
    call_seconds = sum(max(0.0, stop - window_start) for stop in stops)

    lat_in: list[float] = []
    lat_out: list[float] = []
    lat_first: list[float] = []
    lateness: list[float] = []
    lost_in = tail_in = frames_in = delivered_in_window = 0
    lost_out = frames_out = unexpected_out = 0
    for report in calls:
        index = report["index"]
        sent = TimeTable.from_bytes(report["sent_at"])
        due = TimeTable.from_bytes(report["due_at"])
        arrived = at_model.get(index, TimeTable())
        count = report["frames_sent"]
        # The daemon sends whole batches: a partial batch at hang-up is dropped by design.
        complete = count - count % batch
        for frame in range(count):
            sent_at = sent.get(frame)
            in_window = window_start <= sent_at <= window_end
            if in_window:
                lateness.append(sent_at - due.get(frame))
            model_at = arrived.get(frame)
            if not _nan(model_at):
                frames_in += 1
                if window_start <= model_at <= window_end:
                    delivered_in_window += 1
                if in_window:
                    lat_in.append(model_at - sent_at)
            elif frame < complete:
                frames_in += 1
                lost_in += 1
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
            if window_start <= left_at <= window_end:
                lat_out.append(heard_at - left_at)
                if frame == 0 or _nan(replies.get(frame - 1)):
                    lat_first.append(heard_at - left_at)
        unexpected_out += sum(
            1 for f, t in enumerate(heard.times) if not _nan(t) and _nan(replies.get(f))
        )

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
    harness_load = sum(v["load"] for k, v in cpu.items() if k != "daemon")
    others = {
        "daemon_core": core_load.get(run.daemon_core, NAN) - daemon_cpu["load"],
        "harness_cores": sum(core_load.get(c, NAN) for c in run.harness_cores) - harness_load,
    }
    daemon_cpu_s = daemon_cpu["user_s"] + daemon_cpu["system_s"]
    totals: dict[str, int] = {}
    errors: dict[str, int] = {}
    close_codes: dict[str, int] = {}
    for report in run.model_reports:
        for key, value in report["totals"].items():
            totals[key] = totals.get(key, 0) + value
        for key, value in report["errors"].items():
            errors[key] = errors.get(key, 0) + value
        for key, value in report["close_codes"].items():
            close_codes[key] = close_codes.get(key, 0) + value
    ended_by: dict[str, int] = {}
    for report in calls:
        ended_by[report["ended_by"]] = ended_by.get(report["ended_by"], 0) + 1
    return {
        "calls": args.calls,
        "seconds": args.seconds,
        "batch_frames": batch,
        "chunk_frames": args.chunk_frames,
        "playout_lead_ms": args.playout_lead_ms,
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
        "daemon_vmhwm_kib": run.memory.get("VmHWM", 0),
        "daemon_vmrss_after_kib": run.memory_after.get("VmRSS", 0),
        "caller_to_model": Distribution.of(lat_in),
        "model_to_caller": Distribution.of(lat_out),
        "model_to_caller_first": Distribution.of(lat_first),
        "harness_lateness": Distribution.of(lateness),
        "frames_in": frames_in,
        "lost_in": lost_in,
        "tail_in": tail_in,
        "frames_out": frames_out,
        "lost_out": lost_out,
        "unexpected_out": unexpected_out,
        "caller_duplicates": sum(r["caller_duplicates"] for r in run.model_reports),
        "reply_duplicates": sum(r["reply_duplicates"] for r in calls),
        "clears": sum(r["clears"] for r in calls),
        "bytes_cleared": sum(r["bytes_cleared"] for r in calls),
        "malformed_at_gateway": sum(r["malformed"] for r in calls),
        "turns": sum(r["turns"] for r in calls),
        "replies": sum(r["replies"] for r in calls),
        "reply_timeouts": sum(r["reply_timeouts"] for r in calls),
        "backlogged_sends": sum(r["backlogged_sends"] for r in calls),
        "model_connections": sum(r["connections_total"] for r in run.model_reports),
        "model_open_after": run.open_after_grace,
        "model_open_at_end": run.open_at_end,
        "model_websockets_drained_after_s": run.drained_after,
        "model_errors": errors,
        "model_totals": totals,
        "model_close_codes": close_codes,
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


def _print(figures: dict[str, Any]) -> None:
    f = figures

    def row(label: str, value: str) -> None:
        print(f"  {label:<42} {value}")

    print()
    print(
        f"bridge media-stream load: {f['calls']} calls, {f['seconds']:g} s talk, "
        f"batch {f['batch_frames']} frame(s)/append, outbound chunk {f['chunk_frames']} frames, "
        f"playout lead {f['playout_lead_ms']} ms"
    )
    harness = ",".join(map(str, f["harness_cores"]))
    print(
        f"daemon pinned to CPU {f['daemon_core']}; harness on CPU {harness} "
        f"({f['caller_procs']} caller + {f['model_procs']} model processes); nice {f['nice']}"
    )
    print()
    row("calls up / requested", f"{f['calls_up']} / {f['calls']}")
    row("measurement window", f"{f['window_s']:.2f} s  ({f['call_seconds']:.0f} call-seconds)")
    row(
        "daemon CPU per call-second",
        f"{f['daemon_cpu_ms_per_call_second']:.2f} ms  (user {f['daemon_cpu_user_s']:.2f} s + "
        f"sys {f['daemon_cpu_system_s']:.2f} s; core {100 * f['daemon_core_load']:.0f}% busy)",
    )
    row(
        "daemon CPU per caller frame delivered",
        f"{f['daemon_cpu_us_per_delivered_frame']:.0f} us  (all the window's CPU over the caller "
        "frames that reached the model in it)",
    )
    row(
        "daemon main thread runnable",
        f"{100 * f['daemon_runnable']:.0f}% of the window  (waiting for the CPU "
        f"{100 * f['daemon_runqueue_wait']:.0f}%)"
        + ("  -> SATURATED" if f["daemon_runnable"] > SATURATED else ""),
    )
    row(
        "daemon peak memory (VmHWM)",
        f"{f['daemon_vmhwm_kib'] / 1024:.1f} MiB  (VmRSS after the calls "
        f"{f['daemon_vmrss_after_kib'] / 1024:.1f} MiB)",
    )
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
    row(
        "turns / replies heard / reply timeouts",
        f"{f['turns']} / {f['replies']} / {f['reply_timeouts']}",
    )
    row("barge-in clears / bytes cleared", f"{f['clears']} / {f['bytes_cleared']}")
    row("duplicate frames in / out", f"{f['caller_duplicates']} / {f['reply_duplicates']}")
    row("model errors", json.dumps(f["model_errors"]) if f["model_errors"] else "none")
    row("calls ended by", json.dumps(f["ended_by"]))
    if f["calls_failed"]:
        row("calls that never came up (first 10)", json.dumps(f["calls_failed"]))
    row("harness send lateness p50/p99/max", f["harness_lateness"].ms())
    row(
        "harness CPU (% of one core)",
        ", ".join(f"{name} {100 * load:.0f}%" for name, load in f["harness_cpu"].items()),
    )
    row("sends the kernel did not take at once", str(f["backlogged_sends"]))
    other = f["other_load"]
    row(
        "other processes' CPU in the window",
        f"{100 * other['daemon_core']:.0f}% of the daemon's core, "
        f"{100 * other['harness_cores']:.0f}% of a core on the harness cores",
    )
    if f["daemon_runnable"] > SATURATED:
        print(
            "  note: the daemon was SATURATED: it fell behind, so latency grows with the run and "
            "the CPU per call-second\n  understates the cost (frames waited or were dropped); "
            "the CPU per delivered frame still holds."
        )
    print()
    p99_in = f["caller_to_model"].p99 * 1000
    p99_out = f["model_to_caller"].p99 * 1000
    met = (
        p99_in < 20
        and p99_out < 20
        and f["lost_in"] == 0
        and f["lost_out"] == 0
        and f["model_open_after"] == 0
        and f["calls_up"] == f["calls"]
    )
    print(
        f"  target (p99 < 20 ms each way, nothing lost, 0 open, all calls up): "
        f"{'MET' if met else 'MISSED'}"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Distribution):
        return value.as_ms_dict()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.calls < MAX_CALLS:
        print(f"--calls must be 1..{MAX_CALLS - 1}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    run = _Run(args, workdir)
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
    if not run.caller_reports or not any(r["connected_at"] for r in run.caller_reports):
        errors = {r["error"] for r in run.caller_reports}
        print(f"harness error: no call connected: {sorted(errors)[:3]}", file=sys.stderr)
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
        Path(args.json).write_text(json.dumps(_jsonable(figures), indent=2) + "\n")
    if args.keep:
        print(f"\n  kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
