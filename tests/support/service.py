"""The daemon as systemd runs it: a real `python -m bridge run` subprocess with a NOTIFY_SOCKET.

The test binds the unix datagram socket systemd would (sd_notify(3)) and reads what the daemon
sends there; logs go to a file as JSON lines; signals are real signals.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from bridge.records import read_records
from tests.support.daemon import merge

MEDIA_SECRET = "service-test-secret"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def websocket_upgrade_status(port: int, path: str = "/media") -> int:
    """The HTTP status a websocket upgrade to 127.0.0.1:`port` gets (trio-websocket's client
    leaks its socket when an upgrade is refused, so this speaks the handshake itself)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request.encode())
            reply = b""
            while b"\r\n" not in reply:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                reply += chunk
    return int(reply.split(b" ", 2)[1])


def toml_text(table: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for test configs: nested tables of strings, numbers and booleans."""
    lines = []
    tables = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    text = "\n".join(lines) + "\n"
    for key, value in tables:
        name = f"{prefix}{key}"
        text += f"\n[{name}]\n" + toml_text(value, prefix=f"{name}.")
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


@attrs.define
class Service:
    process: trio.Process
    notify: trio.socket.SocketType
    config_path: Path
    log_path: Path
    records_dir: Path
    mediastream_port: int
    metrics_port: int
    notifications: list[str] = attrs.Factory(list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.mediastream_port}/media"

    def metrics_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    async def notification(self, key: str, *, within: float = 15.0) -> dict[str, str]:
        """The next datagram that sets `key` (e.g. "READY"), as a mapping of its assignments."""
        with trio.fail_after(within):
            while True:
                data = await self.notify.recv(4096)
                text = data.decode()
                self.notifications.append(text)
                fields = dict(line.partition("=")[::2] for line in text.splitlines())
                if key in fields:
                    return fields

    async def status(self, contains: str, *, within: float = 15.0) -> str:
        """Wait for a STATUS= that contains `contains`."""
        with trio.fail_after(within):
            while True:
                status = (await self.notification("STATUS", within=within))["STATUS"]
                if contains in status:
                    return status

    def write_config(self, table: Mapping[str, Any]) -> None:
        self.config_path.write_text(toml_text(table))

    def send_signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def wait(self, *, within: float = 30.0) -> int:
        with trio.fail_after(within):
            return await self.process.wait()

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def records(self) -> list[dict[str, Any]]:
        return [r for path in sorted(self.records_dir.glob("*.jsonl")) for r in read_records(path)]


def service_config(tmp_path: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A config for the subprocess daemon: fixed free ports, JSON logs, records under tmp_path."""
    config: dict[str, Any] = {
        "service": {"shutdown_grace_s": 10.0},
        "log": {"format": "json"},
        "records": {"directory": str(tmp_path / "records")},
        "metrics": {"port": free_tcp_port()},
        "ingress": {
            "mediastream": {
                "port": free_tcp_port(),
                "shared_secret_env": "SERVICE_TEST_SECRET",
                "outbound_chunk_frames": 1,
                "playout_lead_ms": 400,
            }
        },
    }
    return merge(config, overrides or {})


@asynccontextmanager
async def running_service(
    tmp_path: Path,
    config: Mapping[str, Any],
    *,
    watchdog_usec: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Service]:
    """Start the daemon subprocess; on exit kill it if it still runs."""
    config_path = tmp_path / "bridge.toml"
    config_path.write_text(toml_text(config))
    log_path = tmp_path / "daemon.log"
    notify_path = tmp_path / "notify.sock"
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(notify_path))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "SERVICE_TEST_SECRET": MEDIA_SECRET,
        **(environ or {}),
    }
    env.pop("WATCHDOG_USEC", None)
    env.pop("WATCHDOG_PID", None)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    with notify, log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge", "run", "-c", str(config_path)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(tmp_path),
        )
        service = Service(
            process=process,
            notify=notify,
            config_path=config_path,
            log_path=log_path,
            records_dir=Path(config["records"]["directory"]),
            mediastream_port=config["ingress"]["mediastream"]["port"],
            metrics_port=config["metrics"]["port"],
        )
        try:
            yield service
        finally:
            if process.returncode is None:
                process.kill()
                with trio.move_on_after(10, shield=True):
                    await process.wait()
