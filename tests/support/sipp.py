"""Running SIPp 3.6 (protocols.md §7.1) as a subprocess from trio, bounded in time.

Each run gets its own working directory (the test's tmp_path): scenarios stream raw audio files
named relative to it, and sipp's error and message logs land there, so a failing assertion can
show what sipp saw. sipp bounds itself (-timeout, -m) and a trio deadline bounds the wait; if that
deadline or any cancellation ends the wait first, ``trio.run_process`` kills the process in its
``finally`` (with :func:`kill`: at once, no grace period) and reaps it.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import pytest
import trio

from bridge.proto.sip.message import SipParseError, SipRequest, SipResponse, parse_message

SCENARIOS = Path(__file__).resolve().parent.parent / "sipp"
# Beyond sipp's own -timeout: how long we wait for it to exit before we kill it.
EXIT_GRACE_S = 5.0


def sipp_binary() -> str:
    """The sipp executable, or skip the test: CI installs it (apt package sip-tester)."""
    path = shutil.which("sipp")
    if path is None:
        pytest.skip("sipp is not installed (Debian/Ubuntu: apt-get install sip-tester)")
    return path


@attrs.frozen
class SippResult:
    """How sipp ended: exit status 0 = every call succeeded, 1 = some failed, others = errors."""

    command: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    error_log: str
    message_log: str

    def explain(self) -> str:
        """Everything useful for an assertion message."""
        screen = self.stdout[-3000:]
        return (
            f"sipp exited {self.returncode}: {' '.join(self.command)}\n"
            f"--- error log (-trace_err) ---\n{self.error_log or '(empty)'}\n"
            f"--- messages (-trace_msg) ---\n{self.message_log[-6000:] or '(empty)'}\n"
            f"--- stderr ---\n{self.stderr[-2000:]}\n--- screen ---\n{screen}"
        )


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 nobody holds right now (sipp would otherwise try 5060 first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_media_port() -> int:
    """An even UDP port on 127.0.0.1 with the three above it free too (sipp's -mp uses the port
    and the one two above it for its echo sockets; RTCP sits on the odd ones)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(40000, 60000, 2)
        sockets: list[socket.socket] = []
        try:
            for offset in range(4):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return port
    raise RuntimeError("no free media port range found for sipp")


async def run_sipp(
    scenario: str,
    *,
    remote_port: int,
    workdir: Path,
    calls: int = 1,
    timeout_s: float = 20.0,
    service: str = "bridge",
    keys: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> SippResult:
    """Run `scenario` (a file name in tests/sipp/) against 127.0.0.1:`remote_port`.

    sipp quits after `calls` calls (-m) or `timeout_s` (-timeout, counted as an error with
    -timeout_error); the whole run is also bounded by a trio deadline, after which sipp is
    killed. The error and message logs are read into the result.
    """
    binary = sipp_binary()
    error_file, message_file = _log_files(workdir, scenario)
    command = [
        binary,
        f"127.0.0.1:{remote_port}",
        "-sf",
        str(SCENARIOS / scenario),
        "-s",
        service,
        "-i",
        "127.0.0.1",
        "-p",
        str(free_udp_port()),
        "-mi",
        "127.0.0.1",
        "-mp",
        str(free_media_port()),
        "-m",
        str(calls),
        "-l",
        str(calls),
        "-timeout",
        f"{timeout_s:g}",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(error_file),
        "-trace_msg",
        "-message_file",
        str(message_file),
    ]
    for key, value in (keys or {}).items():
        command += ["-key", key, value]
    command += list(extra_args)
    # run_process kills sipp when the deadline (or any cancellation) ends the wait.
    with trio.fail_after(timeout_s + EXIT_GRACE_S):
        completed = await trio.run_process(
            command,
            cwd=workdir,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            stdin=b"",
            deliver_cancel=kill,
        )
    return SippResult(
        command=tuple(command),
        returncode=completed.returncode,
        stdout=completed.stdout.decode(errors="replace"),
        stderr=completed.stderr.decode(errors="replace"),
        error_log=_read(error_file),
        message_log=_read(message_file),
    )


def _log_files(workdir: Path, scenario: str) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    stem = Path(scenario).stem
    return workdir / f"{stem}.errors.log", workdir / f"{stem}.messages.log"


async def kill(process: trio.Process) -> None:
    """Cancellation of a peer process: no grace period, a test is already failing or over."""
    process.kill()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# One entry of sipp's -trace_msg log: a dashed line with the time, then a line such as
# "UDP message received [437] bytes :" or "UDP message sent (308 bytes):", a blank line, and the
# message itself.
_LOG_ENTRY = re.compile(
    r"^-{20,} [^\n]*\n(?:UDP|TCP|TLS|SCTP) message (?P<direction>received|sent) "
    r"[\[(](?P<size>\d+)[\])]? ?bytes\)? ?:\n\n",
    re.MULTILINE,
)


def logged_messages(message_log: str, *, received: bool) -> list[SipRequest | SipResponse]:
    """The SIP messages sipp received (or sent) in a run, parsed, in order, from its message log
    (`SippResult.message_log`); entries that do not parse are left out."""
    wanted = "received" if received else "sent"
    messages: list[SipRequest | SipResponse] = []
    for entry in _LOG_ENTRY.finditer(message_log):
        if entry.group("direction") != wanted:
            continue
        start = entry.end()
        data = message_log[start : start + int(entry.group("size"))]
        try:
            messages.append(parse_message(data.encode("utf-8", "surrogateescape")))
        except SipParseError:
            continue
    return messages


def requests_received(result: SippResult, method: str) -> list[SipRequest]:
    """The requests of `method` (REFER, BYE...) sipp received from the daemon, retransmissions
    included."""
    return [
        message
        for message in logged_messages(result.message_log, received=True)
        if isinstance(message, SipRequest) and message.method == method
    ]
