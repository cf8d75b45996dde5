"""sd_notify: tell systemd the daemon's state over ``$NOTIFY_SOCKET`` (sd_notify(3)).

The protocol is one datagram of newline-separated ``KEY=VALUE`` assignments to the unix socket
named by ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). We send:

* ``READY=1`` once every listener is up, and again after a reload;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC in µs, which ``Type=notify-reload``
  requires and plain ``Type=notify`` accepts) when a reload starts;
* ``STOPPING=1`` when the drain starts, with ``EXTEND_TIMEOUT_USEC=`` for the time the drain may
  take, so a ``TimeoutStopSec=`` shorter than the configured grace does not cut calls off;
* ``STATUS=`` a one-line human status (``systemctl status`` shows it);
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` (systemd.service(5) ``WatchdogSec=``), sent by a task
  of the event loop that serves calls, so a stuck loop stops the pings and systemd restarts it.

Without ``NOTIFY_SOCKET`` (not started by systemd) every method does nothing. A failed send is
logged once and never stops the daemon: systemd's view is advisory for us.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio


class Notifier:
    """The daemon's side of sd_notify; construct with the process environment."""

    def __init__(self, environ: Mapping[str, str], *, log: logging.Logger) -> None:
        self._log = log
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _watchdog_usec(environ)
        self._socket: socket.socket | None = None
        self._failed = False
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1 (half the watchdog timeout), or None without a watchdog."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self, status: str) -> None:
        self._status = status
        self._send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration")

    def stopping(self, status: str, *, needs_s: float) -> None:
        """The drain started; it may take up to `needs_s` (EXTEND_TIMEOUT_USEC: systemd waits
        at least that long before it kills us, even with a shorter TimeoutStopSec=)."""
        self._status = status
        usec = round(needs_s * 1_000_000)
        self._send(f"STOPPING=1\nEXTEND_TIMEOUT_USEC={usec}\nSTATUS={status}")

    def status(self, status: str) -> None:
        """Send STATUS= when it changed."""
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    async def keep_watchdog_fed(self) -> None:
        """Send WATCHDOG=1 at half the watchdog interval until cancelled (no-op without one)."""
        interval = self.watchdog_interval_s
        if interval is None:
            return
        deadline = trio.current_time()
        while True:
            self.watchdog()
            deadline += interval
            await trio.sleep_until(deadline)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self._address)
        except OSError as error:
            if not self._failed:
                self._failed = True
                self._log.warning(
                    "cannot notify systemd", extra={"socket": self._address, "error": str(error)}
                )


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        # the abstract namespace: a leading NUL byte instead of the "@"
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # vsock addresses (vsock:CID:PORT) are for VMs; a daemon in one would not be started so
    return None


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        # meant for another process (a wrapper that exec'd us would have updated it)
        return None
    return usec if usec > 0 else None
