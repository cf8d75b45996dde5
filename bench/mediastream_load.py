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
import secrets
import sys
from pathlib import Path
from typing import Any

from _callers import CallerSpec, callers_main
from _harness import (
    HOST,
    SATURATED,
    CallerMain,
    Run,
    Table,
    harness_parser,
    run_benchmark,
    sum_counts,
)
from _report import FrameAccount, Window, model_tables
from _stamp import TimeTable

MEDIA_PATH = "/media"
SECRET_ENV = "BENCH_MEDIA_SECRET"
_PER_FRAME_NOTE = "  (all the window's CPU over the caller frames that reached the model in it)"


# ---- command line ---------------------------------------------------------------------------


def _own_arguments(parser: argparse.ArgumentParser) -> None:
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


def _parser() -> argparse.ArgumentParser:
    return harness_parser(
        "N concurrent simulated media-stream calls against the loopback model, "
        "with the daemon pinned to one core.",
        ramp="connect",
        own=_own_arguments,
    )


# ---- processes ------------------------------------------------------------------------------


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp, without connecting)."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in lines)


class _MediaStreamRun(Run):
    """The run's processes with media-stream callers and a media-stream daemon."""

    NOT_READY = "the daemon did not start listening within 30 s"

    def ingress_toml(self, port: int) -> str:
        args = self.args
        return f"""[ingress.mediastream]
host = "{HOST}"
port = {port}
path = "{MEDIA_PATH}"
auth = "shared_secret"
shared_secret_env = "{SECRET_ENV}"
outbound_chunk_frames = {args.chunk_frames}
playout_lead_ms = {args.playout_lead_ms}
"""

    def daemon_environ(self, environ: dict[str, str]) -> None:
        self.secret = secrets.token_urlsafe(24)
        environ[SECRET_ENV] = self.secret

    def daemon_ready(self, port: int) -> bool:
        return _listening(port)

    def caller_process(
        self, start_at: tuple[float, ...], common: dict[str, Any]
    ) -> tuple[CallerMain, object]:
        spec = CallerSpec(
            path=MEDIA_PATH,
            secret_parameter="secret",
            secret=self.secret,
            total_calls=self.args.calls,
            connect_at=start_at,
            **common,
        )
        return callers_main, spec


# ---- figures --------------------------------------------------------------------------------


def _figures(run: _MediaStreamRun) -> dict[str, Any]:
    args = run.args
    batch = args.batch_frames
    at_model, model_sent = model_tables(run.model_reports)
    calls = sorted(run.caller_reports, key=lambda r: r["index"])
    window = Window.of(calls, at_model)
    frames = FrameAccount(window)
    for report in calls:
        index = report["index"]
        count = report["frames_sent"]
        # The daemon sends whole batches: a partial batch at hang-up is dropped by design.
        frames.caller_frames(report, at_model.get(index, TimeTable()), count - count % batch)
        frames.reply_frames(report, model_sent.get(index, TimeTable()))

    load = run.load(window.start, window.end)
    return {
        "calls": args.calls,
        "seconds": args.seconds,
        "batch_frames": batch,
        "chunk_frames": args.chunk_frames,
        "playout_lead_ms": args.playout_lead_ms,
        **window.figures(calls),
        **load.daemon_figures(window.call_seconds, frames.delivered_in_window),
        **load.memory_figures(),
        **frames.latency_figures(),
        **frames.caller_frame_figures(),
        **frames.reply_frame_figures(),
        "caller_duplicates": sum(r["caller_duplicates"] for r in run.model_reports),
        "reply_duplicates": sum(r["reply_duplicates"] for r in calls),
        "clears": sum(r["clears"] for r in calls),
        "bytes_cleared": sum(r["bytes_cleared"] for r in calls),
        "malformed_at_gateway": sum(r["malformed"] for r in calls),
        "turns": sum(r["turns"] for r in calls),
        "replies": sum(r["replies"] for r in calls),
        "reply_timeouts": sum(r["reply_timeouts"] for r in calls),
        "backlogged_sends": sum(r["backlogged_sends"] for r in calls),
        **run.model_figures(),
        "model_close_codes": sum_counts(run.model_reports, "close_codes"),
        **load.harness_figures(),
        **run.placement_figures(),
    }


def _print(figures: dict[str, Any]) -> None:
    f = figures
    table = Table(42)
    row = table.row

    table.heading(
        f,
        f"bridge media-stream load: {f['calls']} calls, {f['seconds']:g} s talk, "
        f"batch {f['batch_frames']} frame(s)/append, outbound chunk {f['chunk_frames']} frames, "
        f"playout lead {f['playout_lead_ms']} ms",
    )
    row("calls up / requested", f"{f['calls_up']} / {f['calls']}")
    table.daemon_rows(f, per_frame_note=_PER_FRAME_NOTE)
    table.memory_row(f)
    table.latency_rows(f)
    print()
    row(
        "turns / replies heard / reply timeouts",
        f"{f['turns']} / {f['replies']} / {f['reply_timeouts']}",
    )
    row("barge-in clears / bytes cleared", f"{f['clears']} / {f['bytes_cleared']}")
    table.outcome_rows(f)
    if f["calls_failed"]:
        row("calls that never came up (first 10)", json.dumps(f["calls_failed"]))
    row("harness send lateness p50/p99/max", f["harness_lateness"].ms())
    table.harness_cpu_row(f)
    row("sends the kernel did not take at once", str(f["backlogged_sends"]))
    table.other_load_row(f)
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


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(_parser().parse_args(argv), _MediaStreamRun, _figures, _print)


if __name__ == "__main__":
    sys.exit(main())
