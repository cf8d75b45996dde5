"""serve(): the daemon — the model endpoint, the ingress listeners and one supervised task per call.

`serve` resolves the model endpoint (starting the built-in loopback model when the provider is
`loopback`), checks that every secret the config names can be read and that records can be
written, opens the media-stream listener and reports `started(Listening(...))`. Each accepted
stream becomes one call run by :func:`bridge.supervisor.run_call`; a call's failure never reaches
this level. A call that cannot be taken (at capacity, shutting down) still runs through
`run_call` with a model leg that refuses at once, so the caller is hung up on and the call gets
its record like any other.

When `draining` is set, new calls are refused, calls in progress get `service.shutdown_grace_s`
to finish, and `serve` then returns, ending the rest cleanly.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import json
import logging
import os
import random
import tempfile
import wave
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx2
import trio

from bridge.adapters.leg import TelephonyLeg
from bridge.adapters.loopback_server import serve_loopback_model
from bridge.adapters.mediastream_ws import MediaStreamLeg, serve_mediastream
from bridge.adapters.realtime_ws import run_realtime_leg
from bridge.adapters.sip import SipCallLeg, SipListening, serve_sip
from bridge.adapters.status_http import serve_status
from bridge.adapters.systemd import Notifier
from bridge.agent.errors import AgentLegFailed
from bridge.agent.loopback import ScriptedToolCall
from bridge.audiofiles import read_audio
from bridge.call.bridge import CallBridgeSettings
from bridge.call.context import CallInfo
from bridge.call.events import AgentCommand, AgentEvent, Codec, EndReason
from bridge.call.observations import Observation
from bridge.call.profile import CallProfile, choose_profile
from bridge.call.tools import function_definitions
from bridge.config import (
    Config,
    MediaStreamAuth,
    Provider,
    ToolKind,
    TurnDetectionConfig,
    TurnDetectionType,
)
from bridge.credentials import SecretSource, read_secret
from bridge.errors import ConfigError, SecretError
from bridge.logs import CallLogger, call_logger
from bridge.metrics import Metrics
from bridge.proto.realtime.session_config import session_codec
from bridge.recording import CallRecording
from bridge.records import CallJournal, append_record, recover_unfinished, redact_record
from bridge.supervisor import run_call
from bridge.tools.http_client import open_http_client
from bridge.tools.precall import PrecallResult, run_precall_hook
from bridge.tools.python_tool import load_callable
from bridge.tools.runner import ToolRunner

log = logging.getLogger("bridge")

# After the drain grace: how long SIP calls get to be hung up (BYE answered) before the
# listeners close.
SIP_SHUTDOWN_LINGER_S = 4.0
# After the linger: closing sockets and writing the last records.
STOP_MARGIN_S = 5.0
# The Realtime API's server_vad default (realtime-api.md, turn detection).
SERVER_VAD_DEFAULT_PREFIX_PADDING_MS = 300


@attrs.frozen(kw_only=True)
class Listening:
    """Where a started daemon can be reached (port 0: disabled), and how to reload it.

    ``await reload(load)`` calls `load()` for a new config, checks it like a start-up would and
    gives it to new calls; calls in progress keep theirs. It returns the problems that made it
    reject the config (nothing changed then), or an empty list.
    """

    mediastream_port: int
    model_url: str
    sip_port: int = 0
    metrics_port: int = 0
    reload: Callable[[Callable[[], Config]], Awaitable[list[str]]] = attrs.field(
        eq=False, repr=False
    )


def bridge_settings(
    config: Config,
    info: CallInfo,
    profile: CallProfile | None = None,
    holding_audio: Mapping[tuple[str, Codec], bytes] | None = None,
) -> CallBridgeSettings:
    """The control loop's settings for one call under `profile` (the defaults when None)."""
    profile = profile or choose_profile(config, info)
    session = profile.session
    turn_detection = session.turn_detection
    holding_audio = holding_audio or {}
    return CallBridgeSettings(
        model_codec=session_codec(session, info),
        input_batch_frames=config.call.input_batch_frames,
        dtmf_flush_ms=config.call.dtmf_flush_ms,
        max_duration_s=config.call.max_duration_s,
        greeting=session.greeting,
        barge_in=turn_detection.type is not TurnDetectionType.NONE
        and turn_detection.interrupt_response,
        vad_prefix_padding_ms=_vad_prefix_padding_ms(session.turn_detection),
        tools={tool.name: tool for tool in profile.tools},
        holding_audio={
            tool.name: holding_audio[tool.name, info.codec]
            for tool in profile.tools
            if (tool.name, info.codec) in holding_audio
        },
    )


def _vad_prefix_padding_ms(turn_detection: TurnDetectionConfig) -> int:
    """How far before the speech the model's VAD puts speech_started (its audio_start_ms)."""
    if turn_detection.type is not TurnDetectionType.SERVER_VAD:
        return 0
    if turn_detection.prefix_padding_ms is None:
        return SERVER_VAD_DEFAULT_PREFIX_PADDING_MS
    return turn_detection.prefix_padding_ms


@attrs.frozen
class ToolResources:
    """What the tools need, prepared once at start-up so a bad entry fails the start, not a call."""

    python_functions: Mapping[str, Callable[..., Any]] = attrs.field(factory=dict)
    holding_audio: Mapping[tuple[str, Codec], bytes] = attrs.field(factory=dict)


def prepare_tools(config: Config, environ: Mapping[str, str]) -> ToolResources:
    """Import Python tools, read holding audio, check secret headers; ConfigError lists problems."""
    problems: list[str] = []
    functions: dict[str, Callable[..., Any]] = {}
    audio: dict[tuple[str, Codec], bytes] = {}
    for index, tool in enumerate(config.tools):
        where = f"$.tools[{index}]"
        if tool.kind is ToolKind.PYTHON:
            try:
                functions[tool.name] = load_callable(tool.function)
            except ValueError as error:
                problems.append(f"{error} @ {where}.function")
        if tool.holding_audio:
            try:
                for codec in Codec:
                    audio[tool.name, codec] = read_audio(tool.holding_audio, codec)
            except (OSError, EOFError, wave.Error, ValueError) as error:
                problems.append(f"cannot read holding audio: {error} @ {where}.holding_audio")
        problems += _secret_header_problems(tool.secret_headers(), where, environ)
    hook = config.precall_hook
    if hook.url:
        problems += _secret_header_problems(hook.secret_headers(), "$.precall_hook", environ)
    if problems:
        raise ConfigError(problems)
    return ToolResources(python_functions=functions, holding_audio=audio)


def _secret_header_problems(
    sources: Mapping[str, SecretSource], where: str, environ: Mapping[str, str]
) -> list[str]:
    problems = []
    for name, source in sources.items():
        key = "headers_env" if source.env else "headers_file"
        try:
            value = read_secret(source, environ)
        except SecretError as error:
            problems.append(f"header {name}: {error} @ {where}.{key}")
            continue
        if value is None:
            problems.append(
                f"header {name} is not set: provide it in {source.describe()} @ {where}.{key}"
            )
    return problems


def loopback_script(config: Config) -> tuple[ScriptedToolCall, ...]:
    """The loopback model's scripted function calls from `[model.loopback]`."""
    return tuple(
        ScriptedToolCall(
            name=call.name,
            arguments=json.dumps(call.arguments),
            say=call.say,
            dtmf=call.dtmf,
            user_text=call.user_text,
        )
        for call in config.model.loopback.tool_calls
    )


@attrs.frozen
class StartupSecrets:
    """The ingress secrets the daemon needs before it can listen (never printed)."""

    auth_token: str | None = attrs.field(repr=False)
    shared_secret: str | None = attrs.field(repr=False)


def _required_secret(source: SecretSource, what: str, key: str, environ: Mapping[str, str]) -> str:
    value = read_secret(source, environ)
    if value is None:
        raise ConfigError([f"{what} is not set: provide it in {source.describe()} @ $.{key}"])
    return value


def startup_secrets(config: Config, environ: Mapping[str, str]) -> StartupSecrets:
    """Read every secret the config needs now; a missing one is a ConfigError naming its key."""
    ingress = config.ingress.mediastream
    auth_token = shared_secret = None
    if not ingress.enabled:
        pass
    elif ingress.auth is MediaStreamAuth.TWILIO_SIGNATURE:
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


def check_records_directory(config: Config) -> None:
    """Create the records folder and prove it is writable now, not when the first call ends."""
    if not config.records.enabled:
        return
    directory = Path(config.records.directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ConfigError(
            [
                f"cannot write call records in {str(directory)!r}: {error.strerror} "
                "@ $.records.directory"
            ]
        ) from None


class _Calls:
    """Counts calls in progress against the configured maximum."""

    def __init__(self, maximum: int, draining: trio.Event | None) -> None:
        self.maximum = maximum
        self.active = 0
        self._draining = draining
        self._idle = trio.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        return self._draining is not None and self._draining.is_set()

    def available(self) -> bool:
        """Whether a new call would be taken now."""
        return not self.draining and self.active < self.maximum

    def reserve(self) -> bool:
        """Take a slot for a new call at once (False: full or draining); `release` gives it back."""
        if not self.available():
            return False
        self._add()
        return True

    def release(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def _add(self) -> None:
        self.active += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    @contextmanager
    def counting(self) -> Iterator[None]:
        self._add()
        try:
            yield
        finally:
            self.release()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@attrs.define
class _Current:
    """What a new call is given: the config in force (replaced by a reload) and its tools."""

    config: Config
    resources: ToolResources
    model_url: str


def reloadable(old: Config, new: Config) -> tuple[Config, list[str]]:
    """`new` with the settings that only apply at start-up kept as in `old`; and which differed."""
    changed = []
    if new.ingress != old.ingress:
        changed.append("ingress")
    if new.metrics != old.metrics:
        changed.append("metrics")
    if new.service.name != old.service.name:
        changed.append("service.name")
    if new.model.loopback != old.model.loopback:
        changed.append("model.loopback")
    effective = attrs.evolve(
        new,
        ingress=old.ingress,
        metrics=old.metrics,
        service=attrs.evolve(new.service, name=old.service.name),
        model=attrs.evolve(new.model, loopback=old.model.loopback),
    )
    return effective, changed


def status_line(calls: _Calls) -> str:
    """The one-line state for `systemctl status` (STATUS=)."""
    noun = "call" if calls.active == 1 else "calls"
    text = f"{calls.active} active {noun}"
    return f"draining: {text}" if calls.draining else text


async def serve(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    rng: random.Random | None = None,
    draining: trio.Event | None = None,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until cancelled, or until a drain set by `draining` is over.

    `notifier` tells systemd when the daemon is ready, reloading or stopping, and feeds its
    watchdog from this event loop. The started value's `reload` applies a new config to new calls.
    """
    environ = os.environ if environ is None else environ
    rng = rng or random.SystemRandom()
    notifier = notifier or Notifier({}, log=log)
    ingress = config.ingress.mediastream
    secrets = startup_secrets(config, environ)
    check_records_directory(config)
    resources = prepare_tools(config, environ)
    if config.records.enabled:
        for record in await trio.to_thread.run_sync(recover_unfinished, config.records.directory):
            log.warning(
                "a call was cut off when the daemon last stopped; its record was rebuilt from its "
                "journal",
                extra={"call_id": record.get("call_id"), "end_reason": record.get("end_reason")},
            )
    if ingress.enabled and ingress.auth is MediaStreamAuth.NONE:
        log.warning(
            "media-stream authentication is OFF: anyone who can reach the listener can place "
            "calls on your model account",
            extra={"listen": f"{ingress.host}:{ingress.port}"},
        )
    calls = _Calls(config.service.max_calls, draining)
    metrics = Metrics()

    def new_call_id() -> str:
        return f"c-{rng.getrandbits(64):016x}"

    async with (
        open_http_client() as http_client,
        trio.open_nursery() as nursery,
    ):
        # The built-in model, started when a config first asks for it, one per dialect.
        loopback_urls: dict[str, str] = {}

        async def model_url_for(config: Config) -> str:
            if config.model.provider is not Provider.LOOPBACK:
                url = config.model.effective_url
                if url.startswith("ws://"):
                    log.warning(
                        "the model URL is not encrypted (ws://): the API key crosses the network "
                        "in clear text",
                        extra={"provider": config.model.provider.value},
                    )
                return url
            dialect = config.model.dialect.value
            if dialect not in loopback_urls:
                loopback = await nursery.start(
                    functools.partial(
                        serve_loopback_model,
                        host="127.0.0.1",
                        port=0,
                        dialect=dialect,
                        script=loopback_script(config),
                    )
                )
                loopback_urls[dialect] = loopback.url
            return loopback_urls[dialect]

        current = _Current(config, resources, await model_url_for(config))

        async def run_one_call(leg: TelephonyLeg, refusal: AgentLegFailed | None) -> None:
            # The config in force when the call starts stays the call's, whatever reloads come.
            taken = current
            metrics.call_started(leg.info.ingress)
            record: dict[str, Any] = {}
            try:
                record = await _run_one_call(
                    taken.config,
                    leg,
                    model_url=taken.model_url,
                    environ=environ,
                    refusal=refusal,
                    resources=taken.resources,
                    http_client=http_client,
                    metrics=metrics,
                )
            finally:
                metrics.call_ended(leg.info.ingress, record)

        async def handle_call(leg: MediaStreamLeg) -> None:
            refusal = None
            if calls.draining:
                refusal = AgentLegFailed(EndReason.SHUTDOWN, "the daemon is shutting down")
            elif calls.active >= calls.maximum:
                refusal = AgentLegFailed(
                    EndReason.AT_CAPACITY, f"{calls.maximum} calls already in progress"
                )
            with calls.counting():
                await run_one_call(leg, refusal)

        def accepting_streams() -> bool:
            if calls.draining:
                metrics.call_refused("mediastream", "draining")
                return False
            return True

        def sip_call_refused(status: int) -> None:
            if status != 503:
                reason = "bad_request"
            else:
                reason = "draining" if calls.draining else "at_capacity"
            metrics.call_refused("sip", reason)

        port = 0
        if ingress.enabled:
            port = await nursery.start(
                functools.partial(
                    serve_mediastream,
                    ingress,
                    handle_call=handle_call,
                    accepting=accepting_streams,
                    auth_token=secrets.auth_token,
                    shared_secret=secrets.shared_secret,
                    log=logging.getLogger("bridge.mediastream"),
                    new_call_id=new_call_id,
                )
            )
            log.info(
                "listening",
                extra={
                    "service": config.service.name,
                    "mediastream": f"ws://{ingress.host}:{port}{ingress.path}",
                    "provider": config.model.provider.value,
                    "model": config.model.model,
                },
            )
        sip_port = 0
        sip = config.ingress.sip
        listening_sip: SipListening | None = None
        if sip.enabled:

            async def handle_sip_call(leg: SipCallLeg) -> None:
                # the slot was reserved when the INVITE was admitted; the leg releases it
                await run_one_call(leg, None)

            listening_sip = await nursery.start(
                functools.partial(
                    serve_sip,
                    sip,
                    handle_call=handle_sip_call,
                    admit=calls.reserve,
                    release=calls.release,
                    available=calls.available,
                    log=logging.getLogger("bridge.sip"),
                    rng=rng,
                    new_call_id=new_call_id,
                    pacing_observer=metrics.pacing_error,
                    refused=sip_call_refused,
                )
            )
            sip_port = listening_sip.port
            metrics.watch_sip(listening_sip.statistics)
            log.info(
                "listening",
                extra={
                    "service": config.service.name,
                    "sip": f"{sip.host}:{sip_port}",
                    "transports": ",".join(t.value for t in sip.transports),
                    "provider": config.model.provider.value,
                },
            )
        if not ingress.enabled and not sip.enabled:
            log.warning("no ingress is enabled: this daemon takes no calls")
        metrics_port = 0
        if config.metrics.enabled:
            metrics_port = await nursery.start(
                functools.partial(
                    serve_status,
                    config.metrics.host,
                    config.metrics.port,
                    metrics=metrics,
                    ready=lambda: not calls.draining,
                    log=logging.getLogger("bridge.status"),
                )
            )
            log.info(
                "metrics and health checks listening",
                extra={"metrics": f"http://{config.metrics.host}:{metrics_port}/metrics"},
            )
        nursery.start_soon(_collect_garbage_at_quiet_moments, calls)

        async def reload(load: Callable[[], Config]) -> list[str]:
            """Load and check a new config for new calls; the problems if it was rejected."""
            nonlocal current
            if calls.draining:
                log.warning("reload ignored: the daemon is stopping")
                return ["the daemon is stopping"]
            notifier.reloading()
            try:
                effective, restart_only = reloadable(current.config, load())
                startup_secrets(effective, environ)
                check_records_directory(effective)
                new_resources = prepare_tools(effective, environ)
                model_url = await model_url_for(effective)
            except ConfigError as error:
                problems = list(error.messages)
            except (SecretError, OSError) as error:
                problems = [str(error)]
            except Exception as error:
                # Whatever is wrong with the new config, the daemon and its calls go on.
                log.exception("the new configuration could not be checked")
                problems = [f"{type(error).__name__}: {error}"]
            else:
                problems = []
                current = _Current(effective, new_resources, model_url)
                calls.maximum = effective.service.max_calls
                log.info("configuration reloaded: new calls get it", extra={"calls": calls.active})
                if restart_only:
                    log.warning(
                        "these settings changed but take effect only on restart",
                        extra={"settings": ",".join(restart_only)},
                    )
            metrics.config_reloaded(not problems)
            for problem in problems:
                log.error(
                    "configuration rejected, the previous one stays", extra={"problem": problem}
                )
            status = status_line(calls)
            if problems:
                status += f"; reload rejected ({len(problems)} problems, see the log)"
            notifier.ready(status)
            return problems

        task_status.started(
            Listening(
                mediastream_port=port,
                model_url=current.model_url,
                sip_port=sip_port,
                metrics_port=metrics_port,
                reload=reload,
            )
        )
        notifier.ready(status_line(calls))
        nursery.start_soon(notifier.keep_watchdog_fed)
        nursery.start_soon(_report_status, notifier, calls)

        if draining is not None:
            await draining.wait()
            grace = current.config.service.shutdown_grace_s
            # systemd's stop timeout must not cut the drain short: ask for what it needs.
            notifier.stopping(
                status_line(calls), needs_s=grace + SIP_SHUTDOWN_LINGER_S + STOP_MARGIN_S
            )
            metrics.set_draining()
            log.info("draining", extra={"calls": calls.active, "grace_s": grace})
            with trio.move_on_after(grace):
                await calls.wait_idle()
            if listening_sip is not None:
                # SIP calls still up are ended with BYE while the SIP listener still runs
                await listening_sip.end_calls(SIP_SHUTDOWN_LINGER_S)
            nursery.cancel_scope.cancel()


# How often STATUS= is refreshed (sent only when it changed).
STATUS_INTERVAL_S = 1.0


async def _report_status(notifier: Notifier, calls: _Calls) -> None:
    if not notifier.enabled:
        return
    while True:
        await trio.sleep(STATUS_INTERVAL_S)
        notifier.status(status_line(calls))


# A full collection walks every live object: at 200 calls that is a ~60 ms stall of the RTP
# pacer, every few seconds when the collector decides itself. So the daemon decides: young
# generations are collected as usual (cheap), full passes happen when no call is up, or at most
# every FULL_COLLECTION_INTERVAL_S under constant load, and start-up objects are frozen out of
# them altogether.
FULL_COLLECTION_INTERVAL_S = 600.0
QUIET_CHECK_INTERVAL_S = 10.0
_NEVER_BY_ITSELF = 1_000_000_000


async def _collect_garbage_at_quiet_moments(calls: _Calls) -> None:
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(thresholds[0], thresholds[1], _NEVER_BY_ITSELF)
    try:
        last_full = trio.current_time()
        collected_while_idle = True
        while True:
            await trio.sleep(QUIET_CHECK_INTERVAL_S)
            now = trio.current_time()
            idle = calls.active == 0
            if (idle and not collected_while_idle) or now - last_full >= FULL_COLLECTION_INTERVAL_S:
                gc.collect()
                last_full = now
            collected_while_idle = idle
    finally:
        # serve() may run inside a bigger program (the tests): leave the collector as it was
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _run_one_call(
    config: Config,
    leg: TelephonyLeg,
    *,
    model_url: str,
    environ: Mapping[str, str],
    refusal: AgentLegFailed | None,
    resources: ToolResources,
    http_client: httpx2.AsyncClient | None,
    metrics: Metrics,
) -> dict[str, Any]:
    call_log = call_logger(leg.info.call_id)
    info = leg.info
    records = config.records
    started_at = dt.datetime.now(dt.UTC)
    # The journal first: from here on, even a crash leaves a trace of the call. Shielded, so a
    # call cancelled meanwhile still reaches run_call, which writes its record.
    with trio.CancelScope(shield=True):
        journal = await _open_journal(config, info, started_at, call_log)
        recording = None
        if journal is not None and records.audio:
            try:
                recording = await trio.to_thread.run_sync(
                    functools.partial(CallRecording.open, journal.recording_path, codec=info.codec)
                )
            except OSError as error:
                call_log.error("could not start the call recording", extra={"error": str(error)})
    try:
        return await _run_journaled_call(
            config,
            leg,
            model_url=model_url,
            environ=environ,
            refusal=refusal,
            resources=resources,
            http_client=http_client,
            metrics=metrics,
            started_at=started_at,
            journal=journal,
            recording=recording,
            call_log=call_log,
        )
    finally:
        with trio.CancelScope(shield=True):
            if recording is not None:
                await trio.to_thread.run_sync(_close_recording, recording, call_log)
            if journal is not None and not journal.closed:
                # The call failed before it could end: the next start rebuilds its record.
                journal.close()


async def _run_journaled_call(
    config: Config,
    leg: TelephonyLeg,
    *,
    model_url: str,
    environ: Mapping[str, str],
    refusal: AgentLegFailed | None,
    resources: ToolResources,
    http_client: httpx2.AsyncClient | None,
    metrics: Metrics,
    started_at: dt.datetime,
    journal: CallJournal | None,
    recording: CallRecording | None,
    call_log: CallLogger,
) -> dict[str, Any]:
    """The call once its journal is open: pre-call hook, profile, then run_call."""
    records = config.records
    info = leg.info
    precall = PrecallResult()
    if config.precall_hook.url and refusal is None:
        try:
            precall = await run_precall_hook(
                config.precall_hook, info, environ=environ, log=call_log, client=http_client
            )
        except trio.Cancelled:
            # run_call's first checkpoint raises it again, after the call got its record
            refusal = AgentLegFailed(EndReason.SHUTDOWN, "stopped during the pre-call hook")
        info = attrs.evolve(info, variables={**info.variables, **precall.variables})
    profile = choose_profile(config, info, route_name=precall.route)
    if profile.route:
        call_log.info("route chosen", extra={"route": profile.route})
    model = attrs.evolve(config.model, model=profile.model)
    tool_definitions = function_definitions(profile.tools)

    async def agent(
        info: CallInfo,
        events: trio.MemorySendChannel[AgentEvent],
        commands: trio.MemoryReceiveChannel[AgentCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if refusal is not None:
            raise refusal
        api_key = None
        if config.model.provider is not Provider.LOOPBACK:
            # Read per call, so a rotated key (a new credential file) is used at once.
            try:
                api_key = read_secret(config.model.api_key, environ)
            except SecretError as error:
                raise AgentLegFailed(EndReason.MODEL_CONNECT_FAILED, str(error)) from None
        await run_realtime_leg(
            model=model,
            session=profile.session,
            call=info,
            api_key=api_key,
            url=model_url,
            tools=tool_definitions,
            events=events,
            commands=commands,
            log=call_log,
            task_status=task_status,
        )

    def observe(observation: Observation) -> None:
        metrics.observe(observation)
        if journal is not None:
            journal(observation)

    async def write_record(record: dict[str, Any]) -> None:
        record["route"] = profile.route
        if config.precall_hook.url:
            record["precall_hook"] = precall.problem or "ok"
        if recording is not None:
            record["recording"] = str(recording.path.relative_to(records.directory))
        if journal is not None:
            # Transcripts, keypad digits (PINs, card numbers) and what tools were told or
            # answered stay out of the record unless records.transcripts is on.
            await trio.to_thread.run_sync(journal.finish, record)
            return
        if not records.transcripts:
            record = redact_record(record)
        await trio.to_thread.run_sync(append_record, records.directory, record, started_at)

    runner = ToolRunner(
        tools={tool.name: tool for tool in profile.tools},
        info=info,
        log=call_log,
        environ=environ,
        python_functions=resources.python_functions,
        client=http_client,
    )
    return await run_call(
        leg,
        agent,
        info=info,
        settings=bridge_settings(config, info, profile, resources.holding_audio),
        log=call_log,
        tools=runner if profile.tools else None,
        write_record=write_record if records.enabled else None,
        observer=observe,
        audio_tap=recording,
        wallclock=lambda: started_at,
    )


async def _open_journal(
    config: Config,
    info: CallInfo,
    started_at: dt.datetime,
    log: CallLogger,
) -> CallJournal | None:
    """The call's journal, written as the call goes (None: records are off, or it failed)."""
    records = config.records
    if not records.enabled:
        return None
    header = {
        "ingress": info.ingress,
        "codec": info.codec.value,
        "caller": info.caller,
        "called": info.called,
        "external_ids": dict(info.external_ids),
        "variables": dict(info.variables),
    }
    try:
        return await trio.to_thread.run_sync(
            functools.partial(
                CallJournal.open,
                records.directory,
                call_id=info.call_id,
                started_at=started_at,
                header=header,
                transcripts=records.transcripts,
                log=log,
            )
        )
    except OSError as error:
        log.error(
            "could not open the call's journal; its record is written when it ends",
            extra={"error": str(error)},
        )
        return None


def _close_recording(recording: CallRecording, log: CallLogger) -> None:
    try:
        recording.close()
    except OSError as error:
        log.error("could not finish the call recording", extra={"error": str(error)})
