"""serve(): the daemon — the model endpoint, the ingress listeners and one supervised task per call.

`serve` resolves the model endpoint (starting the built-in loopback model when the provider is
`loopback`), checks that every secret the config names can be read, opens the media-stream
listener and reports `started(Listening(...))`. Each accepted stream becomes one call run by
:func:`bridge.supervisor.run_call`; a call's failure never reaches this level.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from bridge.adapters.loopback_server import serve_loopback_model
from bridge.adapters.mediastream_ws import MediaStreamLeg, serve_mediastream
from bridge.adapters.realtime_ws import run_realtime_leg
from bridge.call.bridge import CallBridgeSettings
from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentCommand,
    AgentEvent,
    Codec,
    EndReason,
    HangUp,
    TelephonyCommand,
    TelephonyEvent,
)
from bridge.config import AudioFormat, Config, MediaStreamAuth, Provider, TurnDetectionType
from bridge.credentials import SecretSource, read_secret
from bridge.errors import ConfigError
from bridge.logs import call_logger
from bridge.records import append_record
from bridge.supervisor import run_call

log = logging.getLogger("bridge")


@attrs.frozen
class Listening:
    """Where a started daemon can be reached."""

    mediastream_port: int
    model_url: str


def model_codec(config: Config, call_codec: Codec) -> Codec:
    """The G.711 law the model session uses: the call's own unless the config forces one."""
    if config.session.audio_format is AudioFormat.PCMU:
        return Codec.PCMU
    if config.session.audio_format is AudioFormat.PCMA:
        return Codec.PCMA
    return call_codec


def bridge_settings(config: Config, info: CallInfo) -> CallBridgeSettings:
    turn_detection = config.session.turn_detection
    return CallBridgeSettings(
        model_codec=model_codec(config, info.codec),
        input_batch_frames=config.call.input_batch_frames,
        dtmf_flush_ms=config.call.dtmf_flush_ms,
        max_duration_s=config.call.max_duration_s,
        greeting=config.session.greeting,
        barge_in=turn_detection.type is not TurnDetectionType.NONE
        and turn_detection.interrupt_response,
    )


def _required_secret(source: SecretSource, what: str, key: str, environ: Mapping[str, str]) -> str:
    value = read_secret(source, environ)
    if value is None:
        raise ConfigError([f"{what} is not set: provide it in {source.describe()} @ $.{key}"])
    return value


@attrs.frozen
class StartupSecrets:
    """The ingress secrets the daemon needs before it can listen (never logged)."""

    auth_token: str | None
    shared_secret: str | None


def startup_secrets(config: Config, environ: Mapping[str, str]) -> StartupSecrets:
    """Read every secret the config needs now; a missing one is a ConfigError naming its key."""
    ingress = config.ingress.mediastream
    auth_token = shared_secret = None
    if ingress.auth is MediaStreamAuth.TWILIO_SIGNATURE:
        auth_token = _required_secret(
            ingress.auth_token,
            "the Twilio auth token",
            "ingress.mediastream.auth_token_env",
            environ,
        )
    elif ingress.auth is MediaStreamAuth.SHARED_SECRET:
        shared_secret = _required_secret(
            ingress.shared_secret,
            "the media-stream shared secret",
            "ingress.mediastream.shared_secret_env",
            environ,
        )
    if config.model.provider is not Provider.LOOPBACK:
        _required_secret(config.model.api_key, "the model API key", "model.api_key_env", environ)
    return StartupSecrets(auth_token=auth_token, shared_secret=shared_secret)


class _Calls:
    """Counts calls in progress against the configured maximum."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.active = 0


async def serve(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until cancelled."""
    environ = os.environ if environ is None else environ
    rng = rng or random.SystemRandom()
    ingress = config.ingress.mediastream
    secrets = startup_secrets(config, environ)
    if ingress.auth is MediaStreamAuth.NONE:
        log.warning(
            "media-stream authentication is OFF: anyone who can reach the listener can place "
            "calls on your model account",
            extra={"listen": f"{ingress.host}:{ingress.port}"},
        )

    calls = _Calls(config.service.max_calls)

    async with trio.open_nursery() as nursery:
        if config.model.provider is Provider.LOOPBACK:
            loopback = await nursery.start(
                functools.partial(
                    serve_loopback_model,
                    host="127.0.0.1",
                    port=0,
                    dialect=config.model.dialect.value,
                )
            )
            model_url = loopback.url
        else:
            model_url = config.model.effective_url

        async def handle_call(leg: MediaStreamLeg) -> None:
            if calls.active >= calls.maximum:
                await _refuse(leg)
                return
            calls.active += 1
            try:
                await _run_one_call(config, leg, model_url=model_url, environ=environ)
            finally:
                calls.active -= 1

        port = await nursery.start(
            functools.partial(
                serve_mediastream,
                ingress,
                handle_call=handle_call,
                auth_token=secrets.auth_token,
                shared_secret=secrets.shared_secret,
                log=logging.getLogger("bridge.mediastream"),
                new_call_id=lambda: f"c-{rng.getrandbits(64):016x}",
            )
        )
        log.info(
            "listening",
            extra={
                "mediastream": f"ws://{ingress.host}:{port}{ingress.path}",
                "provider": config.model.provider.value,
                "model": config.model.model,
            },
        )
        task_status.started(Listening(mediastream_port=port, model_url=model_url))


async def _run_one_call(
    config: Config, leg: MediaStreamLeg, *, model_url: str, environ: Mapping[str, str]
) -> None:
    info = leg.info
    call_log = call_logger(info.call_id)
    api_key = read_secret(config.model.api_key, environ)

    async def agent(
        info: CallInfo,
        events: trio.MemorySendChannel[AgentEvent],
        commands: trio.MemoryReceiveChannel[AgentCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await run_realtime_leg(
            model=config.model,
            session=config.session,
            call=info,
            api_key=api_key,
            url=model_url,
            events=events,
            commands=commands,
            log=call_log,
            task_status=task_status,
        )

    records = config.records

    async def write_record(record: dict[str, Any]) -> None:
        if not records.transcripts:
            record.pop("transcript", None)
        await trio.to_thread.run_sync(
            append_record, records.directory, record, dt.datetime.now(dt.UTC)
        )

    await run_call(
        leg,
        agent,
        settings=bridge_settings(config, info),
        log=call_log,
        write_record=write_record if records.enabled else None,
    )


async def _refuse(leg: MediaStreamLeg) -> None:
    """Hang up a call we have no room for, at once."""
    call_logger(leg.info.call_id).warning("at capacity: call refused")
    events_send, events = trio.open_memory_channel[TelephonyEvent](64)
    commands_send, commands = trio.open_memory_channel[TelephonyCommand](1)
    commands_send.send_nowait(HangUp(EndReason.AT_CAPACITY))

    async def run_leg() -> None:
        async with events_send:
            await leg.run(events_send, commands)

    with trio.move_on_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_leg)
            async for _ in events:
                pass
