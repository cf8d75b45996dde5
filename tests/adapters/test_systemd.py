"""sd_notify over a real unix datagram socket: messages, watchdog rules, no-op without one."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from bridge.adapters.systemd import Notifier

LOG = logging.getLogger("test.systemd")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    with sock:
        yield path, sock


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_reloading_stopping_and_status(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path}, log=LOG)
    notifier.ready("0 active calls")
    notifier.status("0 active calls")  # unchanged: not sent again
    notifier.status("1 active call")
    notifier.reloading()
    notifier.stopping("draining: 1 active call", needs_s=39.0)
    notifier.close()
    ready, status, reloading, stopping = received(sock)
    assert ready == "READY=1\nSTATUS=0 active calls"
    assert status == "STATUS=1 active call"
    lines = reloading.splitlines()
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and int(value) > 0
    assert stopping == "STOPPING=1\nEXTEND_TIMEOUT_USEC=39000000\nSTATUS=draining: 1 active call"


def test_an_abstract_socket_name_is_reached() -> None:
    name = f"bridge-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name}, log=LOG)
        notifier.watchdog()
        notifier.close()
        assert received(sock) == ["WATCHDOG=1"]


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_process() -> None:
    base = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "20000000"}
    assert Notifier(base, log=LOG).watchdog_interval_s == 10.0
    mine = {**base, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine, log=LOG).watchdog_interval_s == 10.0
    assert Notifier({**base, "WATCHDOG_PID": "1"}, log=LOG).watchdog_interval_s is None
    assert Notifier({**base, "WATCHDOG_USEC": "0"}, log=LOG).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "20000000"}, log=LOG).watchdog_interval_s is None


async def test_the_watchdog_is_fed_on_schedule(
    receiver: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    path, sock = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, log=LOG)
    with trio.move_on_after(3.5):
        await notifier.keep_watchdog_fed()
    notifier.close()
    # at 0, 1, 2 and 3 s
    assert received(sock) == ["WATCHDOG=1"] * 4


def test_without_notify_socket_nothing_is_sent(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({}, log=LOG)
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping("x", needs_s=1.0)
    assert caplog.records == []


def test_an_unreachable_socket_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")}, log=LOG)
    with caplog.at_level(logging.WARNING, logger="test.systemd"):
        notifier.ready("x")
        notifier.watchdog()
    notifier.close()
    assert [record.getMessage() for record in caplog.records] == ["cannot notify systemd"]
