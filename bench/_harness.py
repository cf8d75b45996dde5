"""What both load benchmarks share: the command line, /proc sampling, the processes of one run
(model processes, the daemon, caller processes, py-spy) and the run's main flow.

A benchmark subclasses :class:`Run` with its daemon configuration, its readiness probe and its
caller processes, and hands :func:`run_benchmark` its figures and its table.
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
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait as wait_pipes
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from _metrics import Scrape, daemon_figures, print_block
from _metrics import jsonable as metrics_jsonable
from _model import ModelSpec, bind_reuseport, model_main
from _process import pin
from _report import CpuSeries, Distribution, summarize_profile
from _stamp import MAX_CALLS

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MODEL_KEY_ENV = "BENCH_MODEL_KEY"
SAMPLE_EVERY_S = 0.05
SETTLE_S = 1.0
# The end-of-window scrape of the daemon's /metrics comes this long before the first hang-up can.
SCRAPE_BEFORE_HANGUP_S = 0.1
# After the last caller is done: the supervisor's close grace (2 s) plus a margin.
CLOSE_GRACE_S = 3.0
# How long to wait after that for a daemon that fell behind to close its model websockets.
DRAIN_LIMIT_S = 30.0
# A daemon whose main thread was runnable this much of the window had no CPU to spare.
SATURATED = 0.95
CLK_TCK = os.sysconf("SC_CLK_TCK")
NAN = math.nan

CallerMain = Callable[[Any, Pipe], None]


class HarnessError(Exception):
    pass


# ---- command line ---------------------------------------------------------------------------


def harness_parser(
    description: str, *, ramp: str, own: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """The options both benchmarks take; `own` adds the benchmark's own after --batch-frames."""
    parser = argparse.ArgumentParser(description=description)
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
    own(parser)
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
        "--ramp-seconds", type=float, default=0.0, help=f"{ramp} ramp (default max(1, calls/100))"
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


# ---- /proc ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def core_ticks() -> dict[int, tuple[float, float]]:
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


def schedstat(pid: int) -> tuple[float, float] | None:
    """Seconds the main thread ran on a CPU, and waited runnable for one (/proc/PID/schedstat)."""
    try:
        ran, waited, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(ran) / 1e9, int(waited) / 1e9


def memory_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


# ---- one run --------------------------------------------------------------------------------


class Run:
    """The processes of one benchmark run and what they reported.

    Subclasses say how the daemon is configured and probed and what the callers are.
    """

    # Where the temp dir goes, and what the daemon was waited for when it is not ready in time.
    WORKDIR_PREFIX = "bridge-bench-"
    # The script named in the generated daemon configuration, and the daemon's service name.
    SCRIPT = "bench/mediastream_load.py"
    SERVICE_NAME = "bench"
    DAEMON_SOCKET = socket.SOCK_STREAM
    NOT_READY = "the daemon did not start within 30 s"
    # Pause between readiness probes (a probe that blocks may make it 0).
    PROBE_EVERY_S = 0.05
    # The caller report field that is set once a call is up, and the error when none is.
    UP_FIELD = "connected_at"
    NONE_UP = "no call connected"

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
        self.metrics_port = 0
        # The daemon's /metrics at the window's start and end, and after the calls ended.
        self.scrapes: dict[str, Scrape] = {}

    @classmethod
    def argument_error(cls, args: argparse.Namespace) -> str | None:
        """Why these arguments cannot run, if they cannot."""
        if not 1 <= args.calls < MAX_CALLS:
            return f"--calls must be 1..{MAX_CALLS - 1}"
        return None

    # -- what a benchmark provides --

    def daemon_port(self) -> int:
        """A free port of the kind the daemon listens on."""
        with socket.socket(socket.AF_INET, self.DAEMON_SOCKET) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
            return port

    def ingress_toml(self, port: int) -> str:
        """The daemon configuration's ingress sections, the daemon listening on `port`."""
        raise NotImplementedError

    def daemon_environ(self, environ: dict[str, str]) -> None:
        """Add what the daemon's environment needs beyond the model's API key."""

    def daemon_ready(self, port: int) -> bool:
        raise NotImplementedError

    def caller_process(
        self, start_at: tuple[float, ...], common: dict[str, Any]
    ) -> tuple[CallerMain, object]:
        """The entry point of a caller process, and its spec: the fields both kinds of spec have
        are in `common`; `start_at` is when each of its calls starts."""
        raise NotImplementedError

    # -- setup --

    def config_toml(self, *, port: int, model_port: int, records: Path) -> str:
        args = self.args
        return f"""# generated by {self.SCRIPT}
[service]
name = "{self.SERVICE_NAME}"
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

[metrics]
host = "{HOST}"
port = {self.metrics_port}

""" + self.ingress_toml(port)

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
        port = self.daemon_port()
        self.port = port
        self.metrics_port = free_tcp_port()
        records = self.workdir / "records"
        records.mkdir()
        config = self.workdir / "bench.toml"
        config.write_text(self.config_toml(port=port, model_port=model_port, records=records))
        environ = dict(os.environ)
        self.daemon_environ(environ)
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
        while not self.daemon_ready(port):
            if self.daemon.poll() is not None:
                raise HarnessError(
                    f"the daemon exited with {self.daemon.returncode}: "
                    + self.daemon_log.read_text()[-2000:]
                )
            if time.monotonic() > deadline:
                raise HarnessError(self.NOT_READY)
            if self.PROBE_EVERY_S:
                time.sleep(self.PROBE_EVERY_S)

        # The callers: start calls over a ramp, talk for --seconds once everyone is up.
        ramp = args.ramp_seconds or max(1.0, args.calls / 100)
        t0 = time.monotonic() + 2.0
        talk_until = t0 + ramp + SETTLE_S + args.seconds
        self.planned_window = (t0 + ramp + SETTLE_S, talk_until)
        for worker in range(caller_procs):
            calls = tuple(range(worker, args.calls, caller_procs))
            parent_end, child_end = context.Pipe()
            start_at = tuple(t0 + ramp * i / args.calls for i in calls)
            common = {
                "host": HOST,
                "port": port,
                "calls": calls,
                "cores": harness,
                "talk_until": talk_until,
                "hard_stop": talk_until + 20.0,
                "speech_ms": args.speech_ms,
                "seed": args.seed,
                "nice": args.nice,
            }
            target, caller_spec = self.caller_process(start_at, common)
            caller = context.Process(
                target=target, args=(caller_spec, child_end), name=f"bench-callers-{worker}"
            )
            caller.start()
            self.callers.append((caller, parent_end))
        for started, _pipe in self.models + self.callers:
            assert started.pid is not None
            self.pids[started.name] = started.pid
        self.cpu = {name: CpuSeries() for name in self.pids}
        self.cores_busy = {core: CpuSeries() for core in core_ticks()}

    # -- the run --

    def sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.cpu[name].add(now, *cpu)
        sched = schedstat(self.pids["daemon"])
        if sched is not None:
            self.daemon_sched.add(now, *sched)
        for core, (busy, total) in core_ticks().items():
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
        scrape_at = [
            ("window_end", self.planned_window[1] - SCRAPE_BEFORE_HANGUP_S),
            ("window_start", self.planned_window[0]),
        ]
        while pending:
            self.sample()
            if time.monotonic() >= profile_at:
                profile_at = math.inf
                self._start_profiler()
            if scrape_at and time.monotonic() >= scrape_at[-1][1]:
                self.scrapes[scrape_at.pop()[0]] = Scrape.take(HOST, self.metrics_port)
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
        self.memory = memory_kib(self.pids["daemon"])
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
            self.sample()
            time.sleep(0.1)
            open_now = self._open_model_websockets()
        self.open_at_end = open_now
        self.scrapes["after_calls"] = Scrape.take(HOST, self.metrics_port)
        for _process, pipe in self.models:
            pipe.send("report")
        for process, pipe in self.models:
            if not pipe.poll(30):
                raise HarnessError(f"{process.name} did not report")
            kind, payload = pipe.recv()
            self.model_reports.append(payload)
        self.memory_after = memory_kib(self.pids["daemon"])
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

    # -- figures every benchmark reports --

    def load(self, window_start: float, window_end: float) -> Load:
        return Load(self, window_start, window_end)

    def model_figures(self) -> dict[str, Any]:
        return {
            "model_connections": sum(r["connections_total"] for r in self.model_reports),
            "model_open_after": self.open_after_grace,
            "model_open_at_end": self.open_at_end,
            "model_websockets_drained_after_s": self.drained_after,
            "model_errors": sum_counts(self.model_reports, "errors"),
            "model_totals": sum_counts(self.model_reports, "totals"),
        }

    def daemon_metrics(self) -> dict[str, Any]:
        """The daemon's own figures from its /metrics (see _metrics.py)."""
        scrapes = self.scrapes
        return daemon_figures(
            scrapes.get("window_start"), scrapes.get("window_end"), scrapes.get("after_calls")
        )

    def placement_figures(self) -> dict[str, Any]:
        return {
            "model_procs": self.model_procs,
            "caller_procs": self.caller_procs,
            "daemon_core": self.daemon_core,
            "nice": self.args.nice,
            "harness_cores": list(self.harness_cores),
            "daemon_exit": self.daemon_exit,
        }


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def sum_counts(reports: list[dict[str, Any]], key: str) -> dict[str, int]:
    """The per-name counts under `key`, summed over the reports."""
    totals: dict[str, int] = {}
    for report in reports:
        for name, value in report[key].items():
            totals[name] = totals.get(name, 0) + value
    return totals


class Load:
    """CPU use of the daemon, the harness processes and the cores in the measurement window."""

    def __init__(self, run: Run, window_start: float, window_end: float) -> None:
        self.run = run
        self.window = window = window_end - window_start
        cpu: dict[str, dict[str, float]] = {}
        for name, series in run.cpu.items():
            user, system = series.between(window_start, window_end)
            cpu[name] = {"user_s": user, "system_s": system, "load": (user + system) / window}
        self.cpu = cpu
        self.daemon_cpu = daemon_cpu = cpu["daemon"]
        core_load: dict[int, float] = {}
        for core, series in run.cores_busy.items():
            busy, total = series.between(window_start, window_end)
            core_load[core] = busy / total if total > 0 else NAN
        self.core_load = core_load
        self.ran, self.waited = run.daemon_sched.between(window_start, window_end)
        harness_load = sum(v["load"] for k, v in cpu.items() if k != "daemon")
        self.others = {
            "daemon_core": core_load.get(run.daemon_core, NAN) - daemon_cpu["load"],
            "harness_cores": sum(core_load.get(c, NAN) for c in run.harness_cores) - harness_load,
        }
        self.daemon_cpu_s = daemon_cpu["user_s"] + daemon_cpu["system_s"]

    def daemon_figures(self, call_seconds: float, delivered_in_window: int) -> dict[str, Any]:
        daemon_cpu, daemon_cpu_s, window = self.daemon_cpu, self.daemon_cpu_s, self.window
        return {
            "daemon_cpu_ms_per_call_second": 1000 * daemon_cpu_s / call_seconds
            if call_seconds
            else NAN,
            "daemon_cpu_us_per_delivered_frame": 1e6 * daemon_cpu_s / delivered_in_window
            if delivered_in_window
            else NAN,
            "daemon_cpu_user_s": daemon_cpu["user_s"],
            "daemon_cpu_system_s": daemon_cpu["system_s"],
            "daemon_core_load": daemon_cpu["load"],
            "daemon_runnable": (self.ran + self.waited) / window,
            "daemon_runqueue_wait": self.waited / window,
        }

    def memory_figures(self) -> dict[str, Any]:
        return {
            "daemon_vmhwm_kib": self.run.memory.get("VmHWM", 0),
            "daemon_vmrss_after_kib": self.run.memory_after.get("VmRSS", 0),
        }

    def harness_figures(self) -> dict[str, Any]:
        return {
            "harness_cpu": {
                name: value["load"] for name, value in self.cpu.items() if name != "daemon"
            },
            "core_busy": self.core_load,
            "other_load": self.others,
        }


# ---- the printed table ----------------------------------------------------------------------


class Table:
    """Rows of `label  value`, the labels padded to `width`, and the rows both tables share."""

    def __init__(self, width: int) -> None:
        self.width = width

    def row(self, label: str, value: str) -> None:
        print(f"  {label:<{self.width}} {value}")

    @staticmethod
    def heading(f: dict[str, Any], title: str) -> None:
        """The table's title line and where the processes ran."""
        print()
        print(title)
        harness = ",".join(map(str, f["harness_cores"]))
        print(
            f"daemon pinned to CPU {f['daemon_core']}; harness on CPU {harness} "
            f"({f['caller_procs']} caller + {f['model_procs']} model processes); nice {f['nice']}"
        )
        print()

    def daemon_rows(self, f: dict[str, Any], *, per_frame_note: str = "") -> None:
        row = self.row
        row("measurement window", f"{f['window_s']:.2f} s  ({f['call_seconds']:.0f} call-seconds)")
        row(
            "daemon CPU per call-second",
            f"{f['daemon_cpu_ms_per_call_second']:.2f} ms  (user {f['daemon_cpu_user_s']:.2f} s + "
            f"sys {f['daemon_cpu_system_s']:.2f} s; core {100 * f['daemon_core_load']:.0f}% busy)",
        )
        row(
            "daemon CPU per caller frame delivered",
            f"{f['daemon_cpu_us_per_delivered_frame']:.0f} us{per_frame_note}",
        )
        row(
            "daemon main thread runnable",
            f"{100 * f['daemon_runnable']:.0f}% of the window  (waiting for the CPU "
            f"{100 * f['daemon_runqueue_wait']:.0f}%)"
            + ("  -> SATURATED" if f["daemon_runnable"] > SATURATED else ""),
        )

    def memory_row(self, f: dict[str, Any]) -> None:
        self.row(
            "daemon peak memory (VmHWM)",
            f"{f['daemon_vmhwm_kib'] / 1024:.1f} MiB  (VmRSS after the calls "
            f"{f['daemon_vmrss_after_kib'] / 1024:.1f} MiB)",
        )

    def latency_rows(self, f: dict[str, Any]) -> None:
        row = self.row
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
                if not math.isnan(drained)
                else f"{f['model_open_at_end']} still open after {DRAIN_LIMIT_S:g} s)"
            ),
        )

    def outcome_rows(self, f: dict[str, Any]) -> None:
        row = self.row
        row("duplicate frames in / out", f"{f['caller_duplicates']} / {f['reply_duplicates']}")
        row("model errors", json.dumps(f["model_errors"]) if f["model_errors"] else "none")
        row("calls ended by", json.dumps(f["ended_by"]))

    def harness_cpu_row(self, f: dict[str, Any]) -> None:
        self.row(
            "harness CPU (% of one core)",
            ", ".join(f"{name} {100 * load:.0f}%" for name, load in f["harness_cpu"].items()),
        )

    def other_load_row(self, f: dict[str, Any]) -> None:
        other = f["other_load"]
        self.row(
            "other processes' CPU in the window",
            f"{100 * other['daemon_core']:.0f}% of the daemon's core, "
            f"{100 * other['harness_cores']:.0f}% of a core on the harness cores",
        )


# ---- main -----------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    if isinstance(value, Distribution):
        return value.as_ms_dict()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


R = TypeVar("R", bound=Run)


def run_benchmark(
    args: argparse.Namespace,
    run_type: type[R],
    figures_of: Callable[[R], dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
    *,
    json_extras: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> int:
    """Run one benchmark, print its table (and profile summary), write its JSON; the exit status."""
    problem = run_type.argument_error(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix=run_type.WORKDIR_PREFIX))
    run = run_type(args, workdir)
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
    if not run.caller_reports or not any(r[run.UP_FIELD] for r in run.caller_reports):
        errors = {r["error"] for r in run.caller_reports}
        print(f"harness error: {run.NONE_UP}: {sorted(errors)[:3]}", file=sys.stderr)
        print(f"(config and daemon log kept in {workdir})", file=sys.stderr)
        return 2
    figures = figures_of(run)
    show(figures)
    daemon = run.daemon_metrics()
    # A UDP daemon port is the SIP benchmark's: its calls carry RTP, so pacing figures are due.
    print_block(daemon, figures, Table(44).row, rtp=run.DAEMON_SOCKET == socket.SOCK_DGRAM)
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
        figures["daemon_metrics"] = metrics_jsonable(daemon)
        if json_extras is not None:
            figures.update(json_extras(figures))
        Path(args.json).write_text(json.dumps(jsonable(figures), indent=2) + "\n")
    if args.keep:
        print(f"\n  kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
