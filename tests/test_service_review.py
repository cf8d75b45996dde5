"""Edge cases of the service found in review: a reload never ends the daemon, whatever is wrong
with the new config; a call cut off before its model leg starts still gets its record; a reload
during the drain does not tell systemd the daemon is ready again.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import socket
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from bridge.adapters.systemd import Notifier
from bridge.app import Listening, serve
from bridge.call.events import Codec
from bridge.caller import run_caller
from bridge.config import Config, config_from_dict
from bridge.media import g711
from bridge.records import read_records
from tests.support.daemon import PARAMETERS_WITH_SECRET, SECRET
from tests.support.http_server import open_http_server
from tests.support.service import running_service, service_config

ENVIRON = {"S": SECRET}


def quiet(duration_ms: int) -> bytes:
    return g711.silence(Codec.PCMU, duration_ms * 8)


def daemon_config(tmp_path: Path, extra: Mapping[str, Any] | None = None) -> Config:
    """The built-in loopback model, a media-stream listener on a free port, records in tmp."""
    data: dict[str, Any] = {
        "ingress": {"mediastream": {"port": 0, "shared_secret_env": "S"}},
        "records": {"directory": str(tmp_path / "records")},
        "metrics": {"enabled": False},
        **(extra or {}),
    }
    return config_from_dict(data)


def day_file_records(tmp_path: Path) -> list[dict[str, Any]]:
    return [
        r for path in sorted((tmp_path / "records").glob("*.jsonl")) for r in read_records(path)
    ]


def journals(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "records" / "journal").glob("*/*.jsonl"))


def three_channel_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(3)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(3 * 2 * 800))
    return path


def unconvertible_holding_tool(tmp_path: Path) -> dict[str, Any]:
    """An http tool whose holding audio is a WAV the daemon cannot turn into G.711."""
    return {
        "name": "lookup",
        "kind": "http",
        "url": "http://127.0.0.1:9/lookup",
        "holding": "audio",
        "holding_audio": str(three_channel_wav(tmp_path / "hold.wav")),
    }


async def test_reload_rejects_a_holding_audio_file_it_cannot_convert(tmp_path: Path) -> None:
    good = daemon_config(tmp_path)
    bad = daemon_config(
        tmp_path,
        {"tools": [unconvertible_holding_tool(tmp_path)]},
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(functools.partial(serve, good, environ=ENVIRON))
            problems = await listening.reload(lambda: bad)
            nursery.cancel_scope.cancel()
    assert problems
    assert any("holding_audio" in problem for problem in problems)


async def test_a_call_cut_by_the_drain_during_its_precall_hook_still_gets_a_record(
    tmp_path: Path,
) -> None:
    async with open_http_server() as hook:
        hook.reply("/hook", delay_s=30.0)
        config = daemon_config(
            tmp_path,
            {
                "service": {"shutdown_grace_s": 0.2},
                "precall_hook": {"url": hook.url("/hook"), "timeout_s": 10.0},
            },
        )
        draining = trio.Event()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                listening = await nursery.start(
                    functools.partial(serve, config, environ=ENVIRON, draining=draining)
                )
                url = f"ws://127.0.0.1:{listening.mediastream_port}/media"

                async def caller() -> None:
                    await run_caller(
                        url,
                        codec=Codec.PCMU,
                        audio=quiet(8000),
                        custom_parameters=PARAMETERS_WITH_SECRET,
                        wait_for_reply=False,
                        quiet_s=0.0,
                        max_duration_s=10.0,
                    )

                nursery.start_soon(caller)
                while not hook.requests:  # noqa: ASYNC110 (the hook server only records)
                    await trio.sleep(0.01)
                # The call waits for its hook; SIGTERM, and the grace runs out meanwhile.
                draining.set()
                nursery.cancel_scope.deadline = trio.current_time() + 5.0
    # serve() returned: the drain is over
    records = day_file_records(tmp_path)
    assert [record["end_reason"] for record in records] == ["shutdown"]
    assert journals(tmp_path)


class _CancelOnceJournalExists(trio.abc.Instrument):
    """Cancels `scope` at the first task step after a call's journal appeared on disk: the call
    task then sits between opening its journal and starting run_call."""

    def __init__(self, tmp_path: Path, scope: trio.CancelScope) -> None:
        self.tmp_path = tmp_path
        self.scope = scope
        self.fired = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if not self.fired and journals(self.tmp_path):
            self.fired = True
            self.scope.cancel()


async def test_a_call_cancelled_while_its_recording_opens_still_gets_a_record(
    tmp_path: Path,
) -> None:
    config = daemon_config(
        tmp_path, {"records": {"directory": str(tmp_path / "records"), "audio": True}}
    )
    with trio.fail_after(15):
        async with trio.open_nursery() as outer:
            # The scope `bridge run` cancels on a second SIGTERM, around serve().
            stop_now = trio.CancelScope()

            async def run_daemon(task_status: trio.TaskStatus[Listening]) -> None:
                with stop_now:
                    await serve(config, environ=ENVIRON, task_status=task_status)

            listening = await outer.start(run_daemon)
            cancel_at_journal = _CancelOnceJournalExists(tmp_path, stop_now)
            trio.lowlevel.add_instrument(cancel_at_journal)
            url = f"ws://127.0.0.1:{listening.mediastream_port}/media"
            with trio.move_on_after(5):
                await run_caller(
                    url,
                    codec=Codec.PCMU,
                    audio=quiet(3000),
                    custom_parameters=PARAMETERS_WITH_SECRET,
                    wait_for_reply=False,
                    quiet_s=0.0,
                )
    trio.lowlevel.remove_instrument(cancel_at_journal)
    assert cancel_at_journal.fired
    (journal,) = journals(tmp_path)
    last = json.loads(journal.read_text().splitlines()[-1])
    assert last["event"] == "call.ended"
    assert [record["end_reason"] for record in day_file_records(tmp_path)] == ["shutdown"]


async def test_sighup_with_an_unconvertible_holding_audio_keeps_the_daemon_running(
    tmp_path: Path,
) -> None:
    config = service_config(tmp_path)
    async with running_service(tmp_path, config) as service:
        await service.notification("READY")
        service.write_config(
            {
                **config,
                "tools": [unconvertible_holding_tool(tmp_path)],
            }
        )
        service.send_signal(signal.SIGHUP)
        await service.notification("RELOADING")
        ready = await service.notification("READY", within=5.0)
        assert "reload rejected" in ready["STATUS"]
        assert service.process.returncode is None
        service.send_signal(signal.SIGTERM)
        assert await service.wait() == 0


async def test_a_reload_during_the_drain_does_not_tell_systemd_ready_again(
    tmp_path: Path,
) -> None:
    config = daemon_config(tmp_path, {"service": {"shutdown_grace_s": 10.0}})
    notify_path = tmp_path / "notify.sock"
    received: list[str] = []
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        await notify.bind(str(notify_path))
        notifier = Notifier({"NOTIFY_SOCKET": str(notify_path)}, log=logging.getLogger("test"))

        async def next_with(key: str) -> str:
            with trio.fail_after(5):
                while True:
                    text = (await notify.recv(4096)).decode()
                    received.append(text)
                    if f"{key}=" in text:
                        return text

        draining = trio.Event()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                listening = await nursery.start(
                    functools.partial(
                        serve, config, environ=ENVIRON, draining=draining, notifier=notifier
                    )
                )
                await next_with("READY")
                url = f"ws://127.0.0.1:{listening.mediastream_port}/media"
                nursery.start_soon(
                    functools.partial(
                        run_caller,
                        url,
                        codec=Codec.PCMU,
                        audio=quiet(1500),
                        custom_parameters=PARAMETERS_WITH_SECRET,
                        wait_for_reply=False,
                        quiet_s=0.0,
                    )
                )
                await next_with("STATUS")  # "1 active call"
                draining.set()
                await next_with("STOPPING")
                stopping_at = len(received)
                await listening.reload(lambda: config)
                await trio.sleep(0.1)
            notifier.close()
        # whatever else was sent is already queued on the socket
        with trio.move_on_after(0.2):
            while True:
                received.append((await notify.recv(4096)).decode())
    after_stopping = "\n".join(received[stopping_at:])
    assert "READY=1" not in after_stopping
    assert "RELOADING=1" not in after_stopping
