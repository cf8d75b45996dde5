"""The daemon as a systemd service: a real subprocess, a real NOTIFY_SOCKET, real signals.

Each test starts `python -m bridge run -c <file>` and reads what it tells "systemd" (sd_notify
datagrams on a unix socket the test bound): READY once its listeners answer, STATUS with the
active calls, WATCHDOG pings, RELOADING/READY around a SIGHUP, STOPPING on SIGTERM; and what it
does: new calls get a reloaded config while calls in progress keep theirs, a bad config is
rejected, a drain lets calls finish and exits 0.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx2
import trio

from bridge.call.events import Codec
from bridge.caller import CallerResult, run_caller
from bridge.media import g711
from tests.support.model_tap import open_model_tap
from tests.support.service import (
    MEDIA_SECRET,
    Service,
    running_service,
    service_config,
    websocket_upgrade_status,
)

PARAMETERS = {"secret": MEDIA_SECRET, "from": "+15550100001", "to": "+15550100002"}


def loud_noise(duration_ms: int, seed: int) -> bytes:
    rng = random.Random(seed)
    silence = g711.silence(Codec.PCMU, 1)[0]
    return bytes(
        rng.choice([b for b in range(256) if b != silence]) for _ in range(duration_ms * 8)
    )


def quiet(duration_ms: int) -> bytes:
    return g711.silence(Codec.PCMU, duration_ms * 8)


async def call(service: Service, audio: bytes, **options: Any) -> CallerResult:
    options.setdefault("custom_parameters", PARAMETERS)
    options.setdefault("quiet_s", 0.5)
    options.setdefault("max_duration_s", 20.0)
    with trio.fail_after(40):
        return await run_caller(service.url, codec=Codec.PCMU, audio=audio, **options)


async def get(url: str) -> httpx2.Response:
    async with httpx2.AsyncClient() as client:
        return await client.get(url, timeout=5.0)


async def test_ready_once_listening_then_status_watchdog_and_stopping(tmp_path: Path) -> None:
    config = service_config(tmp_path)
    async with running_service(tmp_path, config, watchdog_usec=400_000) as service:
        ready = await service.notification("READY")
        assert ready["READY"] == "1"
        assert ready["STATUS"] == "0 active calls"
        # READY means the listeners answer now, with no retry.
        stream = await trio.open_tcp_stream("127.0.0.1", service.mediastream_port)
        await stream.aclose()
        assert (await get(service.metrics_url("/healthz"))).status_code == 200
        assert (await get(service.metrics_url("/readyz"))).status_code == 200

        # WATCHDOG=1 every half WATCHDOG_USEC (0.2 s): a few arrive within a second or two.
        started = trio.current_time()
        for _ in range(4):
            await service.notification("WATCHDOG", within=5)
        assert trio.current_time() - started < 5

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, service, loud_noise(600, seed=1) + quiet(2500))
            assert await service.status("1 active call") == "1 active call"
        assert await service.status("0 active calls") == "0 active calls"

        service.send_signal(signal.SIGTERM)
        stopping = await service.notification("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert await service.wait() == 0
    (record,) = service.records()
    assert record["end_reason"] == "caller_hangup"


async def test_sighup_gives_new_calls_the_new_config_and_rejects_a_bad_one(
    tmp_path: Path,
) -> None:
    async with open_model_tap() as tap:
        config = service_config(
            tmp_path,
            {
                "model": {
                    "provider": "compatible",
                    "url": tap.url,
                    "api_key_env": "SERVICE_TEST_KEY",
                },
                "session": {"voice": "marin"},
            },
        )
        async with running_service(
            tmp_path, config, environ={"SERVICE_TEST_KEY": "sk-test"}
        ) as service:
            await service.notification("READY")

            async with trio.open_nursery() as nursery:
                # A call in progress across the reload: about 5 s long.
                nursery.start_soon(call, service, loud_noise(600, seed=2) + quiet(4500))
                with trio.fail_after(10):
                    while not (tap.connections and tap.connections[0].client("session.update")):  # noqa: ASYNC110
                        await trio.sleep(0.05)

                service.write_config({**config, "session": {"voice": "cedar"}})
                before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                service.send_signal(signal.SIGHUP)
                reloading = await service.notification("RELOADING")
                after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                assert before <= int(reloading["MONOTONIC_USEC"]) <= after
                assert (await service.notification("READY"))["READY"] == "1"

                # A new call while the first is still up.
                await call(service, loud_noise(400, seed=3) + quiet(800))
                assert len(tap.connections) == 2
                assert service.process.returncode is None

            # A file with a misspelt key: rejected, logged, the previous config stays.
            good = service.config_path.read_text()
            service.config_path.write_text(good.replace('voice = "cedar"', 'voise = "ash"'))
            service.send_signal(signal.SIGHUP)
            await service.notification("RELOADING")
            ready = await service.notification("READY")
            assert "reload rejected" in ready["STATUS"]
            await call(service, loud_noise(400, seed=4) + quiet(800))

            service.send_signal(signal.SIGTERM)
            assert await service.wait() == 0

    voices = [
        connection.client("session.update")[0]["session"]["audio"]["output"]["voice"]
        for connection in tap.connections
    ]
    assert voices == ["marin", "cedar", "cedar"]
    # The call in progress was never reconfigured.
    assert len(tap.connections[0].client("session.update")) == 1
    rejected = [line for line in service.logs() if line["msg"].startswith("configuration rejected")]
    assert rejected
    assert "unknown key 'voise'" in rejected[0]["problem"]
    assert any(line["msg"].startswith("configuration reloaded") for line in service.logs())
    assert len(service.records()) == 3


async def test_sigterm_refuses_new_calls_and_lets_the_call_in_progress_finish(
    tmp_path: Path,
) -> None:
    config = service_config(tmp_path, {"service": {"shutdown_grace_s": 20.0}})
    async with running_service(tmp_path, config) as service:
        await service.notification("READY")
        results: dict[str, CallerResult] = {}

        async def long_call() -> None:
            results["long"] = await call(service, loud_noise(800, seed=5) + quiet(3500))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_call)
            await service.status("1 active call")
            service.send_signal(signal.SIGTERM)
            await service.notification("STOPPING")
            # New calls are refused at the websocket upgrade; the health check says not ready.
            assert await websocket_upgrade_status(service.mediastream_port) == 503
            assert (await get(service.metrics_url("/readyz"))).status_code == 503
            assert (await get(service.metrics_url("/healthz"))).status_code == 200
        # The call ran to its natural end, well inside the grace, then the daemon exited.
        assert await service.wait(within=15) == 0
    assert results["long"].close_code is None or results["long"].close_code == 1000
    (record,) = service.records()
    assert record["end_reason"] == "caller_hangup"
    assert record["transcript"]
    assert record["statistics"]["model_bytes"] > 0


async def test_sigterm_hangs_up_calls_still_up_after_the_grace(tmp_path: Path) -> None:
    config = service_config(tmp_path, {"service": {"shutdown_grace_s": 1.0}})
    async with running_service(tmp_path, config) as service:
        await service.notification("READY")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, service, loud_noise(600, seed=6) + quiet(15000))
            await service.status("1 active call")
            service.send_signal(signal.SIGTERM)
            assert await service.wait(within=15) == 0
    (record,) = service.records()
    assert record["end_reason"] == "shutdown"
    assert record["duration_s"] > 0
