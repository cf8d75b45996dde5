"""serve(): the daemon — the model endpoint, the listeners, the calls, reload and drain.

`serve` checks the config (bridge.startup), rebuilds the records of calls a crash cut off,
resolves the model endpoint (starting the built-in loopback model when the provider is
`loopback`), opens the media-stream, SIP and metrics listeners, tells systemd it is ready and
reports `started(Listening(...))`. Each accepted call runs through
:func:`bridge.callsetup.run_configured_call` under the config in force when it started; a call's
failure never reaches this level. A call that cannot be taken (at capacity, shutting down) still
runs with a model leg that refuses at once, so the caller is hung up on and the call gets its
record like any other.

`Listening.reload` applies a new config to new calls (SIGHUP). When `draining` is set (SIGTERM),
new calls are refused, calls in progress get `service.shutdown_grace_s` to finish, and `serve`
then returns, ending the rest cleanly.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager

import attrs
import trio

from bridge.adapters.leg import TelephonyLeg
from bridge.adapters.loopback_server import serve_loopback_model
from bridge.adapters.mediastream_ws import MediaStreamLeg, serve_mediastream
from bridge.adapters.sip import SipCallLeg, SipListening, serve_sip
from bridge.adapters.status_http import serve_status
from bridge.adapters.systemd import Notifier
from bridge.agent.errors import AgentLegFailed
from bridge.call.events import EndReason
from bridge.callsetup import InForce, SharedByCalls, run_configured_call
from bridge.config import Config, MediaStreamAuth, Provider
from bridge.errors import ConfigError, SecretError
from bridge.metrics import Metrics
from bridge.records import recover_unfinished
from bridge.startup import (
    check_records_directory,
    loopback_script,
    prepare_tools,
    startup_secrets,
)
from bridge.tools.http_client import open_http_client

log = logging.getLogger("bridge")

# After the drain grace: how long SIP calls get to be hung up (BYE answered) before the
# listeners close.
SIP_SHUTDOWN_LINGER_S = 4.0
# After the linger: closing sockets and writing the last records.
STOP_MARGIN_S = 5.0


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
        shared = SharedByCalls(environ=environ, http_client=http_client, metrics=metrics)
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

        current = InForce(config, resources, await model_url_for(config))

        async def run_one_call(leg: TelephonyLeg, refusal: AgentLegFailed | None) -> None:
            # `current` now: the config in force when the call starts stays the call's.
            await run_configured_call(current, leg, refusal=refusal, shared=shared)

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
                current = InForce(effective, new_resources, model_url)
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
