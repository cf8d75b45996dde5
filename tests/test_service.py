"""The daemon as a systemd service: a real subprocess, a real NOTIFY_SOCKET, real signals.

Each test starts `python -m bridge run -c <file>` and reads what it tells "systemd" (sd_notify
datagrams on a unix socket the test bound): READY once its listeners answer, STATUS with the
active calls, WATCHDOG pings, RELOADING/READY around a SIGHUP, STOPPING on SIGTERM; and what it
does: new calls get a reloaded config while calls in progress keep theirs, a bad config is
rejected, a drain lets calls finish and exits 0.
"""

from __future__ import annotations

import array
import contextlib
import functools
import json
import random
import signal
import time
import wave
from pathlib import Path
from typing import Any

import httpx2
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from bridge.call.events import Codec
from bridge.caller import CallerResult, run_caller
from bridge.media import g711
from bridge.sip_caller import place_call
from tests.support.model_tap import open_model_tap
from tests.support.service import (
    MEDIA_SECRET,
    Service,
    running_service,
    service_config,
    websocket_upgrade_status,
)
from tests.support.sipp import free_media_port, free_udp_port

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
        with trio.fail_after(5):
            for _ in range(4):
                await service.notification("WATCHDOG")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, service, loud_noise(600, seed=1) + quiet(2500))
            assert await service.status("1 active call") == "1 active call"
        assert await service.status("0 active calls") == "0 active calls"

        service.send_signal(signal.SIGTERM)
        stopping = await service.notification("STOPPING")
        assert stopping["STOPPING"] == "1"
        # systemd is asked to wait for the grace (10 s), the SIP linger (4 s) and a margin (5 s).
        assert stopping["EXTEND_TIMEOUT_USEC"] == "19000000"
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
            figures = metric_values((await get(service.metrics_url("/metrics"))).text)
            assert figures["bridge_config_reloads_total", ("outcome", "applied")] == 1
            assert figures["bridge_config_reloads_total", ("outcome", "rejected")] == 1
            assert figures["bridge_config_last_reload_successful",] == 0

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
    # Structured lines: every line about a call names it; no secret appears anywhere.
    call_lines = [line for line in service.logs() if line["logger"] == "bridge.call"]
    assert {"call started", "call ended"} <= {line["msg"] for line in call_lines}
    assert all(line["call_id"].startswith("c-") for line in call_lines)
    log_text = service.log_path.read_text()
    assert "sk-test" not in log_text
    assert MEDIA_SECRET not in log_text


async def test_sigterm_refuses_new_calls_and_lets_the_call_in_progress_finish(
    tmp_path: Path,
) -> None:
    sip = sip_ingress()
    config = service_config(
        tmp_path, {"service": {"shutdown_grace_s": 20.0}, "ingress": {"sip": sip}}
    )
    sip_port = sip["port"]
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
            # New calls are refused: at the websocket upgrade, and with a SIP 503; the health
            # check says not ready.
            assert await websocket_upgrade_status(service.mediastream_port) == 503
            with trio.fail_after(10):
                refused = await place_call("127.0.0.1", sip_port, audio=quiet(500))
            assert not refused.answered
            assert refused.final_status == 503
            assert (await get(service.metrics_url("/readyz"))).status_code == 503
            assert (await get(service.metrics_url("/healthz"))).status_code == 200
            figures = metric_values((await get(service.metrics_url("/metrics"))).text)
            assert (
                figures[
                    "bridge_calls_refused_total", ("ingress", "mediastream"), ("reason", "draining")
                ]
                == 1
            )
            assert (
                figures["bridge_calls_refused_total", ("ingress", "sip"), ("reason", "draining")]
                == 1
            )
            assert figures["bridge_draining",] == 1
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


async def call_until_cut(service: Service, audio: bytes) -> None:
    """A call whose daemon is killed under it: the caller only has to notice the line drop."""
    with contextlib.suppress(trio.BrokenResourceError, trio_websocket.ConnectionClosed):
        await call(service, audio)


def sip_ingress() -> dict[str, Any]:
    """SIP on free loopback ports (UDP for signalling, four for RTP and RTCP)."""
    rtp = free_media_port()
    return {
        "enabled": True,
        "host": "127.0.0.1",
        "port": free_udp_port(),
        "rtp_port_min": rtp,
        "rtp_port_max": rtp + 3,
    }


def metric_values(text: str) -> dict[tuple[Any, ...], float]:
    """Samples of a /metrics page by (name, *sorted label pairs)."""
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def records_in(records_dir: Path) -> list[Path]:
    return sorted(records_dir.glob("*.jsonl"))


async def restart(workdir: Path, config: dict[str, Any]) -> tuple[dict[str, Any], Service]:
    """Start and stop a daemon on `config`'s records; the one record it wrote, and the daemon."""
    second = {**service_config(workdir), "records": config["records"]}
    await trio.Path(workdir).mkdir()
    async with running_service(workdir, second) as service:
        await service.notification("READY")
        service.send_signal(signal.SIGTERM)
        assert await service.wait() == 0
    (record,) = service.records()
    return record, service


def journals(records_dir: Path) -> list[Path]:
    return sorted((records_dir / "journal").glob("*/*.jsonl"))


def reply_journaled_and_audio_flushed(records_dir: Path) -> bool:
    """A journal with the model's reply in it, and a WAV beside it with a second of stereo."""
    for path in journals(records_dir):
        recording = path.with_suffix(".wav")
        one_second = 44 + 8000 * 2 * 2
        flushed = recording.exists() and recording.stat().st_size >= one_second
        if flushed and any(line.get("role") == "model" for line in journal_lines(path)):
            return True
    return False


def journal_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_sigkill_mid_call_leaves_the_call_readable_and_the_next_start_recovers_it(
    tmp_path: Path,
) -> None:
    config = service_config(tmp_path / "first", {"records": {"audio": True}})
    records_dir = Path(config["records"]["directory"])
    (tmp_path / "first").mkdir()
    async with running_service(tmp_path / "first", config) as service:
        await service.notification("READY")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_until_cut, service, loud_noise(700, seed=7) + quiet(15000))
            # Wait until the model's reply is in the journal and the recording has flushed a
            # second of audio (it writes about once a second), then kill the daemon outright.
            with trio.fail_after(15):
                while not reply_journaled_and_audio_flushed(records_dir):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            service.send_signal(signal.SIGKILL)
            assert await service.wait() == -signal.SIGKILL
    # No record was written, but the journal has the call up to the kill.
    assert not records_in(records_dir)
    (journal,) = journals(records_dir)
    lines = journal_lines(journal)
    started = lines[0]
    assert started["event"] == "call.started"
    assert started["ingress"] == "mediastream"
    assert started["caller"] == "+15550100001"
    events = [line["event"] for line in lines]
    assert "model_connected" in events
    assert "transcript" in events
    assert "call.ended" not in events
    # The recording is a valid stereo WAV up to its last flush, caller audio on the left.
    with wave.open(str(journal.with_suffix(".wav")), "rb") as recording:
        assert recording.getnchannels() == 2
        assert recording.getframerate() == 8000
        frames = recording.readframes(recording.getnframes())
    left = array.array("h", frames)[0::2]
    assert max(abs(sample) for sample in left) > 1000

    # The next start rebuilds the record from the journal, once.
    record, service = await restart(tmp_path / "second", config)
    assert record["call_id"] == started["call_id"]
    assert record["end_reason"] == "daemon_crashed"
    assert any(line["role"] == "model" for line in record["transcript"])
    assert journal_lines(journal)[-1]["event"] == "call.ended"
    assert any("rebuilt from its journal" in line["msg"] for line in service.logs())


async def test_metrics_show_calls_latencies_tools_tokens_and_pacing(tmp_path: Path) -> None:
    sip = sip_ingress()
    sip_port = sip["port"]
    config = service_config(
        tmp_path,
        {
            "tools": [{"name": "end_call", "kind": "builtin"}],
            "model": {
                "loopback": {
                    "tool_calls": [
                        {"dtmf": "5", "name": "end_call", "say": "Goodbye", "arguments": {}}
                    ]
                }
            },
            "ingress": {"sip": sip},
        },
    )
    async with running_service(tmp_path, config) as service:
        await service.notification("READY")
        # A caller who talks over the reply (barge-in), one who presses 5 (end_call), one on SIP.
        barge_in = loud_noise(1000, seed=8) + quiet(1100) + loud_noise(600, seed=9)
        await call(service, barge_in)
        await call(service, quiet(4000), dtmf=[(0.5, "5")])
        with trio.fail_after(40):
            sip_call = await place_call(
                "127.0.0.1",
                sip_port,
                audio=loud_noise(800, seed=10) + quiet(1500),
                max_duration_s=20.0,
            )
        assert sip_call.answered
        text = (await get(service.metrics_url("/metrics"))).text
        service.send_signal(signal.SIGTERM)
        assert await service.wait() == 0

    samples = metric_values(text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, *sorted(labels.items()))]

    assert value("bridge_calls_total", ingress="mediastream", end_reason="caller_hangup") == 1
    assert value("bridge_calls_total", ingress="mediastream", end_reason="agent_hangup") == 1
    assert value("bridge_calls_total", ingress="sip", end_reason="caller_hangup") == 1
    assert value("bridge_active_calls", ingress="mediastream") == 0
    assert value("bridge_active_calls", ingress="sip") == 0
    assert value("bridge_model_connect_seconds_count") == 3
    assert value("bridge_turn_latency_seconds_count") >= 2
    assert value("bridge_turn_latency_seconds_sum") > 0
    assert value("bridge_barge_in_latency_seconds_count") == 1
    assert value("bridge_rtp_pacing_error_seconds_count") > 50
    assert value("bridge_tool_calls_total", tool="end_call", outcome="ok") == 1
    assert value("bridge_model_reconnects_total") == 0
    assert value("bridge_sip_invites_offered_total") == 1
    assert value("bridge_sip_invites_rejected_total") == 0
    assert value("bridge_sip_dialogs") == 0
    tokens = sum(v for key, v in samples.items() if key[0] == "bridge_tokens_total")
    assert tokens > 0
    # Frames dropped are exported from the start, by direction and reason (none dropped here).
    assert (
        value("bridge_audio_frames_dropped_total", direction="caller", reason="call_inbox_full")
        == 0
    )
    # No per-call labels: no call id, number or item id anywhere.
    assert "c-" not in "".join(str(key[1:]) for key in samples)
    assert "+1555" not in text
    records = service.records()
    assert sorted(r["end_reason"] for r in records) == [
        "agent_hangup",
        "caller_hangup",
        "caller_hangup",
    ]
    assert all(record["latency"]["model_connect_ms"] > 0 for record in records)


async def test_a_second_sigterm_ends_calls_at_once_and_still_writes_their_records(
    tmp_path: Path,
) -> None:
    config = service_config(tmp_path, {"service": {"shutdown_grace_s": 60.0}})
    async with running_service(tmp_path, config) as service:
        await service.notification("READY")
        async with trio.open_nursery() as nursery:
            for seed in (11, 12):
                nursery.start_soon(call, service, loud_noise(600, seed=seed) + quiet(15000))
            await service.status("2 active calls")
            service.send_signal(signal.SIGTERM)
            await service.notification("STOPPING")
            service.send_signal(signal.SIGTERM)
            # Far inside the 60 s grace: the second signal did not wait for it.
            assert await service.wait(within=10) == 0
    records = service.records()
    assert [record["end_reason"] for record in records] == ["shutdown", "shutdown"]
    for record in records:
        (journal,) = (
            path
            for path in journals(Path(config["records"]["directory"]))
            if path.stem == record["call_id"]
        )
        assert journal_lines(journal)[-1]["event"] == "call.ended"


async def test_sigkill_while_the_precall_hook_runs_still_leaves_the_call_in_its_journal(
    tmp_path: Path,
) -> None:
    async def never_answer(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async with trio.open_nursery() as hooks:
        (listener,) = await hooks.start(
            functools.partial(trio.serve_tcp, never_answer, 0, host="127.0.0.1")
        )
        hook_port = listener.socket.getsockname()[1]
        config = service_config(
            tmp_path / "first",
            {"precall_hook": {"url": f"http://127.0.0.1:{hook_port}/hook", "timeout_s": 10.0}},
        )
        records_dir = Path(config["records"]["directory"])
        (tmp_path / "first").mkdir()
        async with running_service(tmp_path / "first", config) as service:
            await service.notification("READY")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call_until_cut, service, quiet(15000))
                with trio.fail_after(10):
                    while not journals(records_dir):  # noqa: ASYNC110 (a file)
                        await trio.sleep(0.05)
                service.send_signal(signal.SIGKILL)
                assert await service.wait() == -signal.SIGKILL
        hooks.cancel_scope.cancel()
    (journal,) = journals(records_dir)
    (started,) = journal_lines(journal)
    assert started["event"] == "call.started"
    assert started["caller"] == "+15550100001"

    record, _ = await restart(tmp_path / "second", config)
    assert (record["call_id"], record["end_reason"]) == (started["call_id"], "daemon_crashed")
