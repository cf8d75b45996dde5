"""The `bridge` command: run the daemon, check a config, place test calls, run the loopback model.

Exit codes: 0 done, 1 failure, 78 (EX_CONFIG) a configuration that cannot be used; systemd's
`RestartPreventExitStatus=78` keeps a broken config from restarting in a loop.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from bridge import __version__, audiofiles
from bridge.call.events import Codec
from bridge.caller import CallerResult, run_caller
from bridge.config import Config, MediaStreamAuth, check_config_main, default_config, load_config
from bridge.errors import BridgeError, ConfigError
from bridge.logs import setup_logging
from bridge.media import synth

if TYPE_CHECKING:
    from bridge.app import Listening

EX_CONFIG = 78


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge", description="Telephony bridge from phone calls to realtime speech models."
    )
    parser.add_argument("--version", action="version", version=f"bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def config_options(sub: argparse.ArgumentParser, *, required: bool) -> None:
        sub.add_argument(
            "-c",
            "--config",
            required=required,
            help="TOML config file" + ("" if required else " (default: built-in defaults)"),
        )
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override one config key, e.g. --set session.voice=cedar (repeatable)",
        )

    run = commands.add_parser("run", help="run the daemon")
    config_options(run, required=True)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file")
    check.add_argument("--set", dest="overrides", action="append", default=[])

    def caller_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--audio", help="caller audio: a PCM WAV file or raw .ulaw/.alaw")
        sub.add_argument("--codec", choices=["pcmu", "pcma"], default="pcmu")
        sub.add_argument("--out", default="reply.wav", help="WAV file of what the caller heard")
        sub.add_argument(
            "--dtmf",
            type=_dtmf_press,
            action="append",
            default=[],
            metavar="SECONDS:DIGIT",
            help="press a key at a time into the call, e.g. 2.5:7 (repeatable)",
        )
        sub.add_argument("--max-duration", type=float, default=30.0, metavar="SECONDS")

    demo = commands.add_parser(
        "demo", help="start the daemon and place one test call to it (loopback model by default)"
    )
    config_options(demo, required=False)
    caller_options(demo)

    call = commands.add_parser("call", help="place a test call to a running daemon")
    call.add_argument(
        "url",
        help="the daemon's media-stream URL (ws://127.0.0.1:8765/media) or SIP address "
        "(sip:bridge@127.0.0.1:5060, over UDP)",
    )
    call.add_argument(
        "--secret-env",
        default="BRIDGE_MEDIA_SECRET",
        help="environment variable holding the shared secret (sent as stream parameter)",
    )
    call.add_argument("--secret-parameter", default="secret")
    call.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    caller_options(call)

    loopback = commands.add_parser("loopback-model", help="run the loopback model on its own")
    loopback.add_argument("--host", default="127.0.0.1")
    loopback.add_argument("--port", type=int, default=8766)
    loopback.add_argument("--dialect", choices=["ga", "beta"], default="ga")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except BaseExceptionGroup as group:
        # Errors raised inside a nursery arrive wrapped; report the first one as itself.
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        return _report_error(leaf)
    except (BridgeError, OSError) as error:
        return _report_error(error)
    except KeyboardInterrupt:
        return 0


def _command(args: argparse.Namespace) -> int:
    match args.command:
        case "check-config":
            return check_config_main(args.file, args.overrides, sys.stdout)
        case "run":
            config = load_config(args.config, args.overrides)
            _setup_logging(config)
            trio.run(_run_daemon, config, args.config, args.overrides)
            return 0
        case "demo":
            return _demo(args)
        case "call":
            return _call(args)
        case "loopback-model":
            setup_logging()
            trio.run(_run_loopback, args.host, args.port, args.dialect)
            return 0
    return 1


def _report_error(error: BaseException) -> int:
    if isinstance(error, ConfigError):
        for message in error.messages:
            print(message, file=sys.stderr)
        return EX_CONFIG
    if isinstance(error, BridgeError | OSError):
        print(f"bridge: {error}", file=sys.stderr)
        return 1
    if isinstance(error, KeyboardInterrupt):
        return 0
    raise error


def _setup_logging(config: Config) -> None:
    setup_logging(level=config.log.level.value, fmt=config.log.format.value)


async def _run_daemon(config: Config, path: str, overrides: Sequence[str]) -> None:
    """The daemon under systemd: SIGTERM/SIGINT drain (twice: stop now), SIGHUP reloads `path`."""
    from bridge.adapters.systemd import Notifier
    from bridge.app import serve
    from bridge.startup import check_records_directory, startup_secrets

    # Missing secrets and an unwritable records folder are config errors (exit 78): find them
    # before any task starts.
    startup_secrets(config, os.environ)
    check_records_directory(config)
    draining = trio.Event()
    notifier = Notifier(os.environ, log=logging.getLogger("bridge.systemd"))
    # Signals that arrive before serve() is up wait in the receiver until it is.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:

        async def watch_signals(listening: Listening, cancel_scope: trio.CancelScope) -> None:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await _reload(listening, path, overrides)
                elif draining.is_set():
                    # A second signal: stop now; calls still end cleanly, records written.
                    cancel_scope.cancel()
                    return
                else:
                    draining.set()

        try:
            async with trio.open_nursery() as nursery:

                async def run(task_status: trio.TaskStatus[Listening]) -> None:
                    await serve(
                        config, draining=draining, notifier=notifier, task_status=task_status
                    )
                    # the drain is over
                    nursery.cancel_scope.cancel()

                listening = await nursery.start(run)
                nursery.start_soon(watch_signals, listening, nursery.cancel_scope)
        finally:
            notifier.close()


async def _reload(listening: Listening, path: str, overrides: Sequence[str]) -> None:
    loaded: list[Config] = []

    def load() -> Config:
        loaded.append(load_config(path, overrides))
        return loaded[-1]

    if not await listening.reload(load):
        # the log settings are the process's, not a call's: they change at once
        _setup_logging(loaded[-1])


async def _run_loopback(host: str, port: int, dialect: str) -> None:
    from bridge.adapters.loopback_server import serve_loopback_model

    await serve_loopback_model(host=host, port=port, dialect=dialect)


def _caller_audio(args: argparse.Namespace, codec: Codec) -> bytes:
    if args.audio:
        return audiofiles.read_audio(args.audio, codec)
    # No file given: a 1.5 s speech-like burst and a pause, the same on every run.
    return synth.utterance(codec, duration_ms=1500)


def _dtmf_press(value: str) -> tuple[float, str]:
    """`SECONDS:DIGIT`, e.g. `2.5:7`, for --dtmf."""
    at, _, digit = value.partition(":")
    try:
        seconds = float(at)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or len(digit) != 1 or digit not in "0123456789*#ABCD":
        raise argparse.ArgumentTypeError(f"{value!r}: expected SECONDS:DIGIT, e.g. 2.5:7")
    return seconds, digit


def _report(result: CallerResult | None, out: str, codec: Codec) -> None:
    if result is None:
        raise BridgeError("the test call did not run")
    audiofiles.write_wav(out, codec, result.heard_timeline)
    print(result.summary())
    if result.close_code == 1008:
        print("the daemon refused the stream (1008): check the shared secret", file=sys.stderr)
    print(f"recording:        {Path(out).resolve()}")


def _demo(args: argparse.Namespace) -> int:
    from bridge.app import serve

    config = load_config(args.config, args.overrides) if args.config else default_config()
    config = _local_demo_config(config)
    setup_logging(level="warning", fmt=config.log.format.value)
    codec = Codec(args.codec.upper())
    ingress = config.ingress.mediastream
    environ = dict(os.environ)
    parameters = {"from": "+15550100001", "to": "+15550100002"}
    if ingress.auth is MediaStreamAuth.SHARED_SECRET:
        # A one-off secret shared by the daemon and the caller of this demo only.
        secret = secrets.token_urlsafe(24)
        if ingress.shared_secret.env:
            environ[ingress.shared_secret.env] = secret
        parameters[ingress.secret_parameter] = secret
    audio = _caller_audio(args, codec)
    result: CallerResult | None = None

    async def demo() -> None:
        nonlocal result
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(functools.partial(serve, config, environ=environ))
            url = f"ws://{_connect_host(ingress.host)}:{listening.mediastream_port}{ingress.path}"
            print(f"daemon up: {url} -> {config.model.provider.value} model")
            result = await run_caller(
                url,
                codec=codec,
                audio=audio,
                custom_parameters=parameters,
                dtmf=args.dtmf,
                max_duration_s=args.max_duration,
            )
            nursery.cancel_scope.cancel()

    trio.run(demo)
    _report(result, args.out, codec)
    return 0


def _local_demo_config(config: Config) -> Config:
    """The demo binds an ephemeral local port and, for Twilio auth, needs no public URL."""
    ingress = attrs.evolve(config.ingress.mediastream, host="127.0.0.1", port=0)
    if ingress.auth is MediaStreamAuth.TWILIO_SIGNATURE:
        ingress = attrs.evolve(ingress, auth=MediaStreamAuth.SHARED_SECRET)
    return attrs.evolve(
        config,
        ingress=attrs.evolve(config.ingress, mediastream=ingress),
        metrics=attrs.evolve(config.metrics, enabled=False),
    )


def _call_sip(args: argparse.Namespace, codec: Codec) -> int:
    from bridge.proto.sip.headers import SipUri
    from bridge.proto.sip.message import SipParseError
    from bridge.sip_caller import place_call

    try:
        uri = SipUri.parse(args.url)
    except SipParseError as error:
        raise BridgeError(f"{args.url!r} is not a SIP address: {error.reason}") from None
    result = trio.run(
        functools.partial(
            place_call,
            uri.host,
            uri.port or 5060,
            user=uri.user or "bridge",
            audio=_caller_audio(args, codec),
            audio_codec=codec,
            offer=(codec,),
            dtmf=args.dtmf,
            max_duration_s=args.max_duration,
        )
    )
    audiofiles.write_wav(args.out, codec, result.heard())
    print(result.summary())
    print(f"recording:        {Path(args.out).resolve()}")
    return 0 if result.answered else 1


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _call(args: argparse.Namespace) -> int:
    codec = Codec(args.codec.upper())
    if args.url.startswith("sip:"):
        return _call_sip(args, codec)
    parameters = dict(param.partition("=")[::2] for param in args.param)
    secret = os.environ.get(args.secret_env, "")
    if secret:
        parameters[args.secret_parameter] = secret
    else:
        print(
            f"note: {args.secret_env} is not set, so the call carries no shared secret; "
            "a daemon with shared-secret authentication will close it (code 1008)",
            file=sys.stderr,
        )
    result = trio.run(
        functools.partial(
            run_caller,
            args.url,
            codec=codec,
            audio=_caller_audio(args, codec),
            custom_parameters=parameters,
            dtmf=args.dtmf,
            max_duration_s=args.max_duration,
        )
    )
    _report(result, args.out, codec)
    return 0
