"""serve(): capacity, draining and start-up checks, with whole calls over loopback sockets."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from bridge.app import serve
from bridge.call.events import Codec
from bridge.caller import run_caller
from bridge.config import config_from_dict, default_config, load_config
from bridge.errors import ConfigError
from bridge.media import g711
from bridge.records import read_records
from bridge.sip_caller import SipCallResult, place_call
from bridge.startup import StartupSecrets, check_records_directory, startup_secrets
from tests.support.daemon import PARAMETERS_WITH_SECRET, SECRET, running_daemon
from tests.support.service import websocket_upgrade_status

ROOT = Path(__file__).resolve().parent.parent


def quiet(duration_ms: int) -> bytes:
    return g711.silence(Codec.PCMU, duration_ms * 8)


async def test_calls_over_capacity_are_hung_up_with_a_record(tmp_path: Path) -> None:
    async with running_daemon(tmp_path, {"service": {"max_calls": 1}}) as daemon:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    run_caller,
                    daemon.url,
                    codec=Codec.PCMU,
                    audio=quiet(1500),
                    custom_parameters=PARAMETERS_WITH_SECRET,
                    wait_for_reply=False,
                    quiet_s=0.0,
                )
            )
            await trio.sleep(0.5)
            with trio.fail_after(10):
                refused = await run_caller(
                    daemon.url,
                    codec=Codec.PCMU,
                    audio=quiet(1000),
                    custom_parameters=PARAMETERS_WITH_SECRET,
                    wait_for_reply=False,
                )
        assert refused.hung_up_by == "daemon"
        with trio.fail_after(3):
            while len(daemon.records()) < 2:  # noqa: ASYNC110 (records are files)
                await trio.sleep(0.01)
        reasons = sorted(record["end_reason"] for record in daemon.records())
    assert reasons == ["at_capacity", "caller_hangup"]


async def test_drain_refuses_new_calls_and_lets_calls_in_progress_finish(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "service": {"shutdown_grace_s": 30.0},
            "ingress": {"mediastream": {"port": 0, "shared_secret_env": "S"}},
            "records": {"directory": str(tmp_path / "records")},
            "metrics": {"port": 0},
        }
    )
    draining = trio.Event()
    results = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(
                functools.partial(serve, config, environ={"S": SECRET}, draining=draining)
            )
            url = f"ws://127.0.0.1:{listening.mediastream_port}/media"

            async def long_call() -> None:
                results["long"] = await run_caller(
                    url,
                    codec=Codec.PCMU,
                    audio=quiet(2000),
                    custom_parameters=PARAMETERS_WITH_SECRET,
                    wait_for_reply=False,
                    quiet_s=0.0,
                )

            nursery.start_soon(long_call)
            await trio.sleep(0.5)
            draining.set()
            await trio.sleep(0.1)
            # A new stream is refused at the websocket upgrade: no call, no record.
            assert await websocket_upgrade_status(listening.mediastream_port) == 503
        # serve() returned on its own once the call in progress had ended.
    assert results["long"].hung_up_by == "caller"
    (path,) = (tmp_path / "records").glob("*.jsonl")
    reasons = sorted(record["end_reason"] for record in read_records(path))
    assert reasons == ["caller_hangup"]


def test_an_unwritable_records_folder_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = config_from_dict({"records": {"directory": str(blocker / "records")}})
    with pytest.raises(ConfigError) as error:
        check_records_directory(config)
    assert "@ $.records.directory" in str(error.value)


def test_a_disabled_media_stream_ingress_needs_no_secret() -> None:
    config = load_config(ROOT / "config" / "sip.toml")
    assert startup_secrets(config, {}) == StartupSecrets(auth_token=None, shared_secret=None)
    with pytest.raises(ConfigError, match="BRIDGE_MEDIA_SECRET"):
        startup_secrets(default_config(), {})


async def test_drain_ends_sip_calls_with_bye_after_the_grace(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "service": {"shutdown_grace_s": 0.5},
            "ingress": {
                "mediastream": {"enabled": False},
                "sip": {"enabled": True, "port": 0, "rtp_port_min": 34000, "rtp_port_max": 34099},
            },
            "records": {"directory": str(tmp_path / "records")},
            "metrics": {"port": 0},
        }
    )
    draining = trio.Event()
    results: dict[str, SipCallResult] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(
                functools.partial(serve, config, environ={}, draining=draining)
            )
            answered = trio.Event()

            async def long_call() -> None:
                results["long"] = await place_call(
                    "127.0.0.1",
                    listening.sip_port,
                    audio=quiet(500),
                    wait_for_reply=False,
                    max_duration_s=15.0,
                    answered=answered,
                )

            nursery.start_soon(long_call)
            await answered.wait()
            draining.set()
            await trio.sleep(0.1)
            results["late"] = await place_call(
                "127.0.0.1", listening.sip_port, audio=quiet(100), wait_for_reply=False
            )
        # serve() returned on its own after the grace and the calls' BYEs
    assert results["long"].hung_up_by == "daemon"
    assert results["late"].final_status == 503
    (path,) = (tmp_path / "records").glob("*.jsonl")
    records = read_records(path)
    assert [record["end_reason"] for record in records] == ["shutdown"]
    assert records[0]["ingress"] == "sip"
