"""What the daemon checks and prepares from a config before it takes calls, and again on reload.

The secrets it needs at once (ingress tokens, the model API key), a records folder it can write,
the tools' Python functions, holding audio and secret headers. A problem is a
:class:`~bridge.errors.ConfigError` naming its key path, so a bad config fails the start (exit 78)
or is rejected by a reload, never a call.
"""

from __future__ import annotations

import json
import tempfile
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from bridge.agent.loopback import ScriptedToolCall
from bridge.audiofiles import read_audio
from bridge.call.events import Codec
from bridge.config import Config, MediaStreamAuth, Provider, ToolKind
from bridge.credentials import SecretSource, read_secret
from bridge.errors import ConfigError, SecretError
from bridge.tools.python_tool import load_callable


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
