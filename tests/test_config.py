"""Tests for bridge.config (loading, validation, overrides, check-config) and bridge.credentials."""

from __future__ import annotations

import io
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from bridge.call.events import Codec
from bridge.config import (
    AudioFormat,
    CallConfig,
    Config,
    Dialect,
    Eagerness,
    LogFormat,
    LogLevel,
    MediaStreamAuth,
    ModelConfig,
    NoiseReductionType,
    OutputModality,
    Provider,
    RouteConfig,
    ServiceConfig,
    SipTransport,
    ToolChoice,
    ToolConfig,
    TurnDetectionType,
    Voice,
    check_config_main,
    config_from_dict,
    default_config,
    load_config,
)
from bridge.credentials import Secret, SecretSource, read_secret
from bridge.errors import ConfigError, SecretError

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"


def nested(path: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} from "a.b", to keep the test tables short."""
    data: dict[str, Any] = {}
    table = data
    *parents, leaf = path.split(".")
    for key in parents:
        table = table.setdefault(key, {})
    table[leaf] = value
    return data


def merge(*tables: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for table in tables:
        _merge_into(result, table)
    return result


def _merge_into(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return info.value.messages


# ----------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    config = default_config()
    assert config == config_from_dict({}) == Config()
    assert config.service == ServiceConfig(name="bridge", max_calls=200, shutdown_grace_s=30.0)
    assert config.log.level is LogLevel.INFO
    assert config.log.format is LogFormat.LOGFMT
    model = config.model
    assert model.provider is Provider.LOOPBACK
    assert model.url == ""
    assert model.model == "gpt-realtime"
    assert model.api_key == SecretSource(env="OPENAI_API_KEY", file="")
    assert model.dialect is Dialect.GA
    assert (model.connect_timeout_s, model.session_timeout_s) == (10.0, 10.0)
    assert model.max_message_bytes == 16 * 1024 * 1024
    session = config.session
    assert session.instructions == "You are a helpful phone assistant. Keep answers short."
    assert session.voice is Voice.MARIN
    assert session.output_modalities == (OutputModality.AUDIO,)
    assert session.audio_format is AudioFormat.CALL
    assert session.speed == 1.0
    assert session.greeting == ""
    assert session.temperature is None
    assert session.max_output_tokens == "inf"
    assert session.tool_choice is ToolChoice.AUTO
    assert session.transcription.enabled is True
    assert session.transcription.model == "gpt-4o-mini-transcribe"
    assert (session.transcription.language, session.transcription.prompt) == ("", "")
    detection = session.turn_detection
    assert detection.type is TurnDetectionType.SERVER_VAD
    unset = (detection.threshold, detection.prefix_padding_ms, detection.silence_duration_ms)
    assert unset == (None, None, None)
    assert (detection.idle_timeout_ms, detection.eagerness) == (None, None)
    assert detection.create_response is detection.interrupt_response is True
    assert session.noise_reduction.type is NoiseReductionType.NEAR_FIELD
    assert config.call == CallConfig(
        max_duration_s=3600.0, input_batch_frames=1, dtmf_flush_ms=1500
    )
    assert (config.records.enabled, config.records.directory) == (True, "records")
    assert config.records.transcripts is True
    stream = config.ingress.mediastream
    assert (stream.enabled, stream.host, stream.port, stream.path) == (
        True,
        "127.0.0.1",
        8765,
        "/media",
    )
    assert stream.auth is MediaStreamAuth.SHARED_SECRET
    assert stream.public_url == ""
    assert stream.auth_token == SecretSource(env="TWILIO_AUTH_TOKEN")
    assert stream.shared_secret == SecretSource(env="BRIDGE_MEDIA_SECRET")
    assert stream.secret_parameter == "secret"
    assert (stream.outbound_chunk_frames, stream.playout_lead_ms) == (5, 1000)


def test_config_is_frozen() -> None:
    config = default_config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.service.max_calls = 5  # type: ignore[misc]


def test_validators_also_guard_configs_built_in_code() -> None:
    with pytest.raises(ValueError, match="must be at least 1, got 0"):
        ServiceConfig(max_calls=0)


def test_values_are_structured_into_their_types() -> None:
    config = config_from_dict(
        {
            "log": {"level": "debug", "format": "json"},
            "model": {"connect_timeout_s": 3},  # a TOML integer is fine where a float goes
            "session": {
                "voice": "cedar",
                "output_modalities": ["text"],
                "audio_format": "pcma",
                "max_output_tokens": 4096,
                "tool_choice": "required",
                "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
                "noise_reduction": {"type": "off"},
            },
        }
    )
    assert config.log.level is LogLevel.DEBUG
    assert config.log.format is LogFormat.JSON
    assert config.model.connect_timeout_s == 3.0
    assert isinstance(config.model.connect_timeout_s, float)
    assert config.session.voice is Voice.CEDAR
    assert config.session.output_modalities == (OutputModality.TEXT,)
    assert config.session.audio_format is AudioFormat.PCMA
    assert config.session.max_output_tokens == 4096
    assert config.session.tool_choice is ToolChoice.REQUIRED
    assert config.session.turn_detection.type is TurnDetectionType.SEMANTIC_VAD
    assert config.session.turn_detection.eagerness is Eagerness.LOW
    assert config.session.noise_reduction.type is NoiseReductionType.OFF


def test_server_vad_parameters() -> None:
    detection = config_from_dict(
        nested(
            "session.turn_detection",
            {
                "type": "server_vad",
                "threshold": 0.7,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 0,
                "idle_timeout_ms": 5000,
                "create_response": False,
                "interrupt_response": False,
            },
        )
    ).session.turn_detection
    assert (detection.threshold, detection.prefix_padding_ms) == (0.7, 300)
    assert (detection.silence_duration_ms, detection.idle_timeout_ms) == (0, 5000)
    assert detection.create_response is detection.interrupt_response is False


def test_effective_url() -> None:
    assert ModelConfig(provider=Provider.OPENAI).effective_url == "wss://api.openai.com/v1/realtime"
    custom = "wss://proxy.example.com/v1/realtime"
    assert ModelConfig(provider=Provider.OPENAI, url=custom).effective_url == custom
    azure = "wss://r.openai.azure.com/openai/v1/realtime"
    assert ModelConfig(provider=Provider.AZURE, url=azure).effective_url == azure
    assert ModelConfig(provider=Provider.LOOPBACK).effective_url == ""


# ------------------------------------------------------------------------------ example configs


# Arrays of tables are empty by default; bridge.toml shows a commented example of each.
TABLE_ARRAYS = {"tools", "routes"}


def test_bridge_toml_is_the_default_and_spells_out_every_key() -> None:
    assert load_config(CONFIG_DIR / "bridge.toml") == default_config()
    with open(CONFIG_DIR / "bridge.toml", "rb") as file:
        written = _key_paths(tomllib.load(file))
    # Optional keys without a default appear as comments only.
    optional = {key for key in all_key_paths() if _default_of(key) is None}
    assert written == all_key_paths() - optional - TABLE_ARRAYS
    text = (CONFIG_DIR / "bridge.toml").read_text()
    for key in optional:
        assert re.search(rf"^# {key.rsplit('.', 1)[1]} = ", text, re.MULTILINE), key
    for key in TABLE_ARRAYS:
        assert re.search(rf"^# \[\[{key}\]\]", text, re.MULTILINE), key


def test_openai_example() -> None:
    config = load_config(CONFIG_DIR / "openai.toml")
    assert config.model.provider is Provider.OPENAI
    assert config.model.model == "gpt-realtime"
    assert config.model.effective_url == "wss://api.openai.com/v1/realtime"
    stream = config.ingress.mediastream
    assert stream.auth is MediaStreamAuth.TWILIO_SIGNATURE
    assert stream.public_url == "wss://bridge.example.com/media"


def test_azure_example() -> None:
    config = load_config(CONFIG_DIR / "azure.toml")
    assert config.model.provider is Provider.AZURE
    assert config.model.url == "wss://my-resource.openai.azure.com/openai/v1/realtime"
    assert config.model.api_key == SecretSource(env="AZURE_OPENAI_API_KEY")


def test_compatible_beta_example() -> None:
    config = load_config(CONFIG_DIR / "compatible-beta.toml")
    assert config.model.provider is Provider.COMPATIBLE
    assert config.model.dialect is Dialect.BETA
    assert config.session.temperature == 0.8


def test_sip_example() -> None:
    config = load_config(CONFIG_DIR / "sip.toml")
    sip = config.ingress.sip
    assert sip.enabled and not config.ingress.mediastream.enabled
    assert config.model.provider is Provider.LOOPBACK
    assert sip.transports == (SipTransport.UDP, SipTransport.TCP)
    assert sip.codecs == (Codec.PCMU, Codec.PCMA)
    assert sip.headers == ("X-Customer-Id",)
    assert [str(n) for n in sip.allowed_networks()] == ["127.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(
    ("sip", "message"),
    [
        ({"codecs": "PCMU"}, "must be an array, got a string @ $.ingress.sip.codecs"),
        ({"codecs": ["G729"]}, "'G729' is not a codec; choose one of PCMU, PCMA"),
        ({"codecs": []}, "must not be empty @ $.ingress.sip.codecs"),
        ({"transports": ["udp", "udp"]}, "must not list the same value twice"),
        ({"transports": ["tls"]}, "'tls' is not a SIP transport"),
        ({"allow_from": []}, "must list at least one network"),
        ({"allow_from": ["10.0.0.0/33"]}, "'10.0.0.0/33' is not a network"),
        ({"host": "sip.example.com"}, "must be an IPv4 or IPv6 address"),
        ({"host": "0.0.0.0"}, "required when host is 0.0.0.0"),
        ({"rtp_port_min": 30000, "rtp_port_max": 30000}, "at least two ports"),
        ({"headers": ["X Customer"]}, "is not a SIP header name @ $.ingress.sip.headers"),
        ({"jitter_frames": 0}, "must be between 1 and 10, got 0 @ $.ingress.sip.jitter_frames"),
    ],
)
def test_sip_ingress_errors_name_their_key(sip: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"ingress": {"sip": sip}})
    assert any(message in problem for problem in caught.value.messages), caught.value.messages


def test_sip_wildcard_host_with_advertised_address() -> None:
    config = config_from_dict(
        {"ingress": {"sip": {"host": "0.0.0.0", "advertised_host": "203.0.113.10"}}}
    )
    assert config.ingress.sip.contact_host == "203.0.113.10"


def test_docs_describe_every_key() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for key in sorted(all_key_paths() - TABLE_ARRAYS):
        section, name = key.rsplit(".", 1)
        assert f"[{section}]" in docs, section
        assert f"`{name}`" in docs, key
    for table_array, cls in (("tools", ToolConfig), ("routes", RouteConfig)):
        assert f"[[{table_array}]]" in docs, table_array
        for field in attrs.fields(cls):
            assert f"`{field.name}`" in docs, f"{table_array}.{field.name}"


def all_key_paths(cls: type[Any] = Config, prefix: str = "") -> set[str]:
    """Every TOML key the config accepts, as dotted paths ("session.turn_detection.type")."""
    keys = set()
    attrs.resolve_types(cls)
    for field in attrs.fields(cls):
        path = f"{prefix}{field.name}"
        if attrs.has(field.type) and field.type is not SecretSource:
            keys |= all_key_paths(field.type, f"{path}.")
        elif field.type is SecretSource:
            keys |= {f"{path}_env", f"{path}_file"}
        else:
            keys.add(path)
    return keys


def _key_paths(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in table.items():
        if isinstance(value, dict) and value:
            keys |= _key_paths(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


_NOT_A_FIELD = object()


def _default_of(key_path: str) -> object:
    """The default of a key; secret keys (x_env, x_file) are not fields of their own."""
    value: Any = default_config()
    for name in key_path.split("."):
        value = getattr(value, name, _NOT_A_FIELD)
    return value


# -------------------------------------------------------------------------------- validation

AZURE_URL = "wss://r.openai.azure.com/openai/v1/realtime"
COMPATIBLE_BETA = {
    "provider": "compatible",
    "url": "ws://127.0.0.1:9000/v1/realtime",
    "dialect": "beta",
}

VALIDATION_CASES: list[tuple[dict[str, Any], str]] = [
    # [service]
    (nested("service.name", ""), "must not be empty @ $.service.name"),
    (nested("service.max_calls", 0), "must be at least 1, got 0 @ $.service.max_calls"),
    (
        nested("service.shutdown_grace_s", -1.0),
        "must be at least 0.0, got -1.0 @ $.service.shutdown_grace_s",
    ),
    # [log]
    (
        nested("log.level", "verbose"),
        "'verbose' is not a log level; choose one of debug, info, warning, error @ $.log.level",
    ),
    (
        nested("log.format", "xml"),
        "'xml' is not a log format; choose one of logfmt, json @ $.log.format",
    ),
    # [model]
    (
        nested("model.provider", "acme"),
        "'acme' is not a provider; choose one of loopback, openai, azure, compatible"
        " @ $.model.provider",
    ),
    (
        nested("model.url", "https://api.openai.com/v1/realtime"),
        "must be a ws:// or wss:// URL, got 'https://api.openai.com/v1/realtime' @ $.model.url",
    ),
    (
        nested("model.url", "wss://api.openai.com/v1/realtime?model=gpt-realtime"),
        "must not carry a query string (the model name goes in model.model) @ $.model.url",
    ),
    (
        nested("model.provider", "azure"),
        "required for provider azure, e.g. 'wss://RESOURCE.openai.azure.com/openai/v1/realtime'"
        " @ $.model.url",
    ),
    (
        nested("model.provider", "compatible"),
        "required for provider compatible: the server's realtime websocket URL @ $.model.url",
    ),
    (nested("model.model", ""), "must not be empty @ $.model.model"),
    (
        nested("model.dialect", "v2"),
        "'v2' is not a dialect; choose one of ga, beta @ $.model.dialect",
    ),
    (
        {"model": {"provider": "openai", "dialect": "beta"}},
        "dialect beta is only allowed with provider compatible or loopback, not openai"
        " @ $.model.dialect",
    ),
    (
        {"model": {"provider": "azure", "url": AZURE_URL, "dialect": "beta"}},
        "dialect beta is only allowed with provider compatible or loopback, not azure"
        " @ $.model.dialect",
    ),
    (
        {"model": {"provider": "openai", "api_key_env": ""}},
        "provider openai needs api_key_env or api_key_file @ $.model.api_key_env",
    ),
    (
        nested("model.connect_timeout_s", 0),
        "must be greater than 0.0, got 0.0 @ $.model.connect_timeout_s",
    ),
    (
        nested("model.session_timeout_s", -2.5),
        "must be greater than 0.0, got -2.5 @ $.model.session_timeout_s",
    ),
    (
        nested("model.max_message_bytes", 65536),
        "must be at least 1048576, got 65536 @ $.model.max_message_bytes",
    ),
    # [session]
    (
        nested("session.instructions", "Hello {caller"),
        "malformed template: expected '}' before end of string (write {{ and }} for literal"
        " braces) @ $.session.instructions",
    ),
    (
        nested("session.instructions", "Hello caller}"),
        "malformed template: Single '}' encountered in format string (write {{ and }} for literal"
        " braces) @ $.session.instructions",
    ),
    (
        nested("session.instructions", "Hello {}"),
        "template placeholder {} needs a name, like {caller} or {call_id} @ $.session.instructions",
    ),
    (
        nested("session.instructions", "Hello {caller!x}"),
        "malformed template: unknown conversion !x in {caller} @ $.session.instructions",
    ),
    (
        nested("session.voice", "nova"),
        "'nova' is not a voice; choose one of alloy, ash, ballad, coral, echo, sage, shimmer,"
        " verse, marin, cedar @ $.session.voice",
    ),
    (
        nested("session.output_modalities", ["audio", "text"]),
        'must be exactly ["audio"] or ["text"] @ $.session.output_modalities',
    ),
    (
        nested("session.output_modalities", []),
        'must be exactly ["audio"] or ["text"] @ $.session.output_modalities',
    ),
    (
        nested("session.output_modalities", "audio"),
        'must be a list, ["audio"] or ["text"], got a string @ $.session.output_modalities',
    ),
    (
        nested("session.output_modalities", ["video"]),
        "'video' is not an output modality; choose one of audio, text"
        " @ $.session.output_modalities",
    ),
    (
        nested("session.audio_format", "pcm16"),
        "'pcm16' is not an audio format; choose one of call, pcmu, pcma @ $.session.audio_format",
    ),
    (nested("session.speed", 2.0), "must be between 0.25 and 1.5, got 2.0 @ $.session.speed"),
    (nested("session.speed", 0.2), "must be between 0.25 and 1.5, got 0.2 @ $.session.speed"),
    (
        nested("session.temperature", 0.8),
        'temperature is not part of the GA protocol; remove it, or use model.dialect = "beta"'
        " with a provider that speaks beta @ $.session.temperature",
    ),
    (
        {"model": COMPATIBLE_BETA, "session": {"temperature": 1.5}},
        "must be between 0.6 and 1.2, got 1.5 @ $.session.temperature",
    ),
    (
        nested("session.max_output_tokens", 0),
        'must be an integer from 1 to 4096 or "inf", got 0 @ $.session.max_output_tokens',
    ),
    (
        nested("session.max_output_tokens", 4097),
        'must be an integer from 1 to 4096 or "inf", got 4097 @ $.session.max_output_tokens',
    ),
    (
        nested("session.max_output_tokens", "infinite"),
        "must be an integer from 1 to 4096 or \"inf\", got 'infinite'"
        " @ $.session.max_output_tokens",
    ),
    (
        nested("session.max_output_tokens", 1.5),
        'must be an integer from 1 to 4096 or "inf", got a float @ $.session.max_output_tokens',
    ),
    (
        nested("session.tool_choice", "any"),
        "'any' is not a tool choice; choose one of auto, none, required @ $.session.tool_choice",
    ),
    # [session.transcription]
    (
        nested("session.transcription.model", "whisper-2"),
        "'whisper-2' is not a transcription model; choose one of whisper-1, gpt-4o-transcribe,"
        " gpt-4o-mini-transcribe, gpt-4o-mini-transcribe-2025-12-15, gpt-4o-transcribe-diarize,"
        " gpt-realtime-whisper, gpt-transcribe, gpt-live-transcribe"
        " @ $.session.transcription.model",
    ),
    (
        nested("session.transcription.language", "EN"),
        "must be \"\" or an ISO-639-1 code of two lowercase letters, got 'EN'"
        " @ $.session.transcription.language",
    ),
    (
        nested("session.transcription.language", "eng"),
        "must be \"\" or an ISO-639-1 code of two lowercase letters, got 'eng'"
        " @ $.session.transcription.language",
    ),
    # [session.turn_detection]
    (
        nested("session.turn_detection.type", "vad"),
        "'vad' is not a turn detection type; choose one of server_vad, semantic_vad, none"
        " @ $.session.turn_detection.type",
    ),
    (
        nested("session.turn_detection.threshold", 1.5),
        "must be between 0.0 and 1.0, got 1.5 @ $.session.turn_detection.threshold",
    ),
    (
        nested("session.turn_detection.prefix_padding_ms", -1),
        "must be at least 0, got -1 @ $.session.turn_detection.prefix_padding_ms",
    ),
    (
        nested("session.turn_detection.silence_duration_ms", -1),
        "must be at least 0, got -1 @ $.session.turn_detection.silence_duration_ms",
    ),
    (
        nested("session.turn_detection.idle_timeout_ms", 4999),
        "must be between 5000 and 30000, got 4999 @ $.session.turn_detection.idle_timeout_ms",
    ),
    (
        nested("session.turn_detection.idle_timeout_ms", 30001),
        "must be between 5000 and 30000, got 30001 @ $.session.turn_detection.idle_timeout_ms",
    ),
    (
        nested("session.turn_detection.eagerness", "fast"),
        "'fast' is not an eagerness level; choose one of low, medium, high, auto"
        " @ $.session.turn_detection.eagerness",
    ),
    (
        nested("session.turn_detection", {"type": "semantic_vad", "threshold": 0.5}),
        "threshold applies to server_vad only @ $.session.turn_detection.threshold",
    ),
    (
        nested("session.turn_detection", {"type": "semantic_vad", "prefix_padding_ms": 100}),
        "prefix_padding_ms applies to server_vad only @ $.session.turn_detection.prefix_padding_ms",
    ),
    (
        nested("session.turn_detection", {"type": "none", "silence_duration_ms": 100}),
        "silence_duration_ms applies to server_vad only"
        " @ $.session.turn_detection.silence_duration_ms",
    ),
    (
        nested("session.turn_detection", {"type": "semantic_vad", "idle_timeout_ms": 10000}),
        "idle_timeout_ms applies to server_vad only @ $.session.turn_detection.idle_timeout_ms",
    ),
    (
        nested("session.turn_detection.eagerness", "high"),
        "eagerness applies to semantic_vad only @ $.session.turn_detection.eagerness",
    ),
    # [session.noise_reduction]
    (
        nested("session.noise_reduction.type", "strong"),
        "'strong' is not a noise reduction type; choose one of near_field, far_field, off"
        " @ $.session.noise_reduction.type",
    ),
    # [call]
    (
        nested("call.max_duration_s", 0.0),
        "must be greater than 0.0, got 0.0 @ $.call.max_duration_s",
    ),
    (
        nested("call.input_batch_frames", 0),
        "must be between 1 and 50, got 0 @ $.call.input_batch_frames",
    ),
    (
        nested("call.input_batch_frames", 51),
        "must be between 1 and 50, got 51 @ $.call.input_batch_frames",
    ),
    (nested("call.dtmf_flush_ms", -1), "must be at least 0, got -1 @ $.call.dtmf_flush_ms"),
    # [records]
    (nested("records.directory", ""), "must not be empty @ $.records.directory"),
    # [ingress.mediastream]
    (nested("ingress.mediastream.host", ""), "must not be empty @ $.ingress.mediastream.host"),
    (
        nested("ingress.mediastream.port", 65536),
        "must be between 0 and 65535, got 65536 @ $.ingress.mediastream.port",
    ),
    (
        nested("ingress.mediastream.port", -1),
        "must be between 0 and 65535, got -1 @ $.ingress.mediastream.port",
    ),
    (
        nested("ingress.mediastream.path", "media"),
        "must start with '/', got 'media' @ $.ingress.mediastream.path",
    ),
    (
        nested("ingress.mediastream.auth", "basic"),
        "'basic' is not a media stream auth mode; choose one of twilio_signature, shared_secret,"
        " none @ $.ingress.mediastream.auth",
    ),
    (
        nested("ingress.mediastream.auth", "twilio_signature"),
        'required when auth = "twilio_signature": the wss:// URL exactly as written in the TwiML'
        " <Stream url=...> @ $.ingress.mediastream.public_url",
    ),
    (
        nested("ingress.mediastream.public_url", "https://bridge.example.com/media"),
        "must be a wss:// URL, got 'https://bridge.example.com/media'"
        " @ $.ingress.mediastream.public_url",
    ),
    (
        nested("ingress.mediastream.public_url", "wss://bridge.example.com/media?tenant=a"),
        "must not carry a query string (pass per-call data as <Parameter>)"
        " @ $.ingress.mediastream.public_url",
    ),
    (
        nested(
            "ingress.mediastream",
            {
                "auth": "twilio_signature",
                "public_url": "wss://b.example.com/media",
                "auth_token_env": "",
            },
        ),
        'auth = "twilio_signature" needs auth_token_env or auth_token_file'
        " @ $.ingress.mediastream.auth_token_env",
    ),
    (
        nested("ingress.mediastream.shared_secret_env", ""),
        'auth = "shared_secret" needs shared_secret_env or shared_secret_file'
        " @ $.ingress.mediastream.shared_secret_env",
    ),
    (
        nested("ingress.mediastream.secret_parameter", ""),
        "must not be empty @ $.ingress.mediastream.secret_parameter",
    ),
    (
        nested("ingress.mediastream.outbound_chunk_frames", 0),
        "must be between 1 and 50, got 0 @ $.ingress.mediastream.outbound_chunk_frames",
    ),
    (
        nested("ingress.mediastream.outbound_chunk_frames", 51),
        "must be between 1 and 50, got 51 @ $.ingress.mediastream.outbound_chunk_frames",
    ),
    (
        nested("ingress.mediastream.playout_lead_ms", 99),
        "must be at least 100, got 99 @ $.ingress.mediastream.playout_lead_ms",
    ),
    # types: no silent coercion of what TOML already typed
    (nested("service.max_calls", "200"), "expected an integer, got a string @ $.service.max_calls"),
    (nested("service.max_calls", True), "expected an integer, got a boolean @ $.service.max_calls"),
    (nested("service.max_calls", 1.5), "expected an integer, got a float @ $.service.max_calls"),
    (nested("session.speed", "fast"), "expected a number, got a string @ $.session.speed"),
    (nested("session.speed", False), "expected a number, got a boolean @ $.session.speed"),
    (nested("service.name", 7), "expected a string, got an integer @ $.service.name"),
    (nested("records.enabled", "yes"), "expected true or false, got a string @ $.records.enabled"),
    (
        nested("session.voice", 3),
        "expected a string, one of alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin,"
        " cedar; got an integer @ $.session.voice",
    ),
    ({"service": 5}, "expected a table, got an integer @ $.service"),
    (
        nested("session.turn_detection", "server_vad"),
        "expected a table, got a string @ $.session.turn_detection",
    ),
    (nested("model.api_key_env", 5), "expected a string, got an integer @ $.model.api_key_env"),
    (nested("model.api_key_file", True), "expected a string, got a boolean @ $.model.api_key_file"),
]


@pytest.mark.parametrize(
    ("data", "message"),
    VALIDATION_CASES,
    ids=[message.rsplit(" @ ", 1)[1] + ": " + message[:40] for _, message in VALIDATION_CASES],
)
def test_validation_rule(data: dict[str, Any], message: str) -> None:
    assert problems(data) == [message]


def test_valid_edges_are_accepted() -> None:
    config = config_from_dict(
        merge(
            {"model": COMPATIBLE_BETA},
            nested("service.max_calls", 1),
            nested("service.shutdown_grace_s", 0),
            nested("session.speed", 0.25),
            nested("session.temperature", 1.2),
            nested("session.max_output_tokens", 1),
            nested("session.instructions", "Hi {caller}, {{literal}} {tenant!r:>5}"),
            nested("session.transcription.language", "de"),
            nested("call.input_batch_frames", 50),
            nested("call.dtmf_flush_ms", 0),
            nested("ingress.mediastream.port", 0),
            nested("ingress.mediastream.auth", "none"),
            nested("ingress.mediastream.shared_secret_env", ""),
            nested("ingress.mediastream.playout_lead_ms", 100),
            nested("model.max_message_bytes", 1048576),
        )
    )
    assert config.session.temperature == 1.2
    assert config.ingress.mediastream.port == 0


def test_unknown_key_suggests_the_closest_name() -> None:
    assert problems(nested("session.turn_detection.treshold", 0.5)) == [
        "unknown key 'treshold' (did you mean 'threshold'?) @ $.session.turn_detection.treshold"
    ]
    assert problems({"sevice": {}}) == ["unknown key 'sevice' (did you mean 'service'?) @ $.sevice"]
    assert problems(nested("model.api_key_evn", "X")) == [
        "unknown key 'api_key_evn' (did you mean 'api_key_env'?) @ $.model.api_key_evn"
    ]


def test_unknown_key_without_a_near_name() -> None:
    assert problems(nested("call.zzz", 1)) == ["unknown key 'zzz' @ $.call.zzz"]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("model.api_key", "api_key"),
        ("ingress.mediastream.auth_token", "auth_token"),
        ("ingress.mediastream.shared_secret", "shared_secret"),
    ],
)
def test_inline_secret_is_rejected_without_echoing_it(path: str, name: str) -> None:
    value = "sk-proj-THIS-IS-SECRET-123"
    with pytest.raises(ConfigError) as info:
        config_from_dict(nested(path, value))
    assert info.value.messages == [
        f"{name} must not hold the secret itself: put the secret in an environment variable or"
        f" a file and name it with {name}_env or {name}_file @ $.{path}"
    ]
    assert value not in str(info.value)


def test_secret_pasted_into_env_key_is_not_echoed() -> None:
    value = "sk-proj-THIS-IS-SECRET-123"
    messages = problems(nested("model.api_key_env", value))
    assert messages == [
        "must be the NAME of an environment variable (letters, digits, _), not the secret itself"
        " @ $.model.api_key_env"
    ]
    assert value not in messages[0]


def test_secret_keys_build_secret_sources() -> None:
    config = config_from_dict(
        {
            "model": {"api_key_env": "", "api_key_file": "$CREDENTIALS_DIRECTORY/openai"},
            "ingress": {
                "mediastream": {"auth_token_file": "/run/token", "shared_secret_env": "MY_SECRET"}
            },
        }
    )
    assert config.model.api_key == SecretSource(env="", file="$CREDENTIALS_DIRECTORY/openai")
    stream = config.ingress.mediastream
    assert stream.auth_token == SecretSource(env="TWILIO_AUTH_TOKEN", file="/run/token")
    assert stream.shared_secret == SecretSource(env="MY_SECRET", file="")


def test_several_errors_are_all_reported() -> None:
    messages = problems(
        {
            "service": {"max_calls": 0, "nmae": "x"},
            "log": {"level": "loud"},
            "model": {"provider": "openai", "dialect": "beta"},
            "session": {"voice": "nova", "turn_detection": {"threshold": 2.0}},
            "ingress": {"mediastream": {"port": 99999, "path": "media"}},
            "extra": 1,
        }
    )
    assert sorted(messages) == sorted(
        [
            "must be at least 1, got 0 @ $.service.max_calls",
            "unknown key 'nmae' (did you mean 'name'?) @ $.service.nmae",
            "'loud' is not a log level; choose one of debug, info, warning, error @ $.log.level",
            "dialect beta is only allowed with provider compatible or loopback, not openai"
            " @ $.model.dialect",
            "'nova' is not a voice; choose one of alloy, ash, ballad, coral, echo, sage, shimmer,"
            " verse, marin, cedar @ $.session.voice",
            "must be between 0.0 and 1.0, got 2.0 @ $.session.turn_detection.threshold",
            "must be between 0 and 65535, got 99999 @ $.ingress.mediastream.port",
            "must start with '/', got 'media' @ $.ingress.mediastream.path",
            "unknown key 'extra' @ $.extra",
        ]
    )


def test_every_message_ends_with_a_key_path() -> None:
    for data, _ in VALIDATION_CASES:
        for message in problems(data):
            assert re.search(r" @ \$(\.[a-z_]+)+$", message), message


# --------------------------------------------------------------------------------- load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = write(tmp_path, '[session]\nvoice = "cedar"\n[ingress.mediastream]\nport = 9000\n')
    config = load_config(path)
    assert config.session.voice is Voice.CEDAR
    assert config.ingress.mediastream.port == 9000
    assert load_config(str(path)) == config


def test_load_config_reports_file_errors_with_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "[service]\nmax_calls = 0\n[session]\nvocie = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.messages == [
        "must be at least 1, got 0 @ $.service.max_calls",
        "unknown key 'vocie' (did you mean 'voice'?) @ $.session.vocie",
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.messages == [f"cannot read config file {path}: No such file or directory"]


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "[service]\nmax_calls = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [message] = info.value.messages
    assert message.startswith(f"{path} is not valid TOML: ")
    assert "line 2" in message


def test_override_number_bool_and_nested_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[session]\nvoice = "cedar"\n')
    config = load_config(
        path,
        [
            "session.turn_detection.threshold=0.7",
            "records.enabled=false",
            "service.max_calls=12",
            "session.noise_reduction.type=far_field",
        ],
    )
    assert config.session.turn_detection.threshold == 0.7
    assert config.records.enabled is False
    assert config.service.max_calls == 12
    assert config.session.noise_reduction.type is NoiseReductionType.FAR_FIELD
    assert config.session.voice is Voice.CEDAR  # the rest of the file still applies


def test_override_strings_quoted_or_bare(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path, ['model.provider="openai"']).model.provider is Provider.OPENAI
    assert load_config(path, ["model.provider=openai"]).model.provider is Provider.OPENAI
    config = load_config(
        path,
        [
            "session.greeting=Hello there, how can I help?",
            "ingress.mediastream.host=0.0.0.0",
            "records.directory=/var/lib/bridge/records",
            'session.output_modalities=["text"]',
        ],
    )
    assert config.session.greeting == "Hello there, how can I help?"
    assert config.ingress.mediastream.host == "0.0.0.0"
    assert config.records.directory == "/var/lib/bridge/records"
    assert config.session.output_modalities == (OutputModality.TEXT,)


def test_override_replaces_a_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[service]\nmax_calls = 0\n")
    assert load_config(path, ["service.max_calls=5"]).service.max_calls == 5


def test_override_unknown_path_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["session.turn_detection.treshold=0.7", "sesion.voice=ash"])
    assert sorted(info.value.messages) == [
        "unknown key 'sesion' (did you mean 'session'?) @ $.sesion",
        "unknown key 'treshold' (did you mean 'threshold'?) @ $.session.turn_detection.treshold",
    ]


def test_override_problems_are_reported_with_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, '[service]\nmax_calls = 0\nname = "b"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, ["service.name.first=x", "novalue", "=3", "a..b=1"])
    assert info.value.messages == [
        "--set service.name.first: name is not a table @ $.service.name",
        "--set expects key.path=value, got 'novalue'",
        "--set expects key.path=value, got '=3'",
        "--set expects key.path=value, got 'a..b=1'",
        "must be at least 1, got 0 @ $.service.max_calls",
    ]


def test_override_value_is_type_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["service.max_calls=many"])
    assert info.value.messages == ["expected an integer, got a string @ $.service.max_calls"]


# ---------------------------------------------------------------------------- check-config


def test_check_config_ok(tmp_path: Path) -> None:
    out = io.StringIO()
    path = str(CONFIG_DIR / "openai.toml")
    assert check_config_main(path, [], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"OK: {path}"
    summary = "\n".join(lines[1:])
    assert "provider openai" in summary
    assert "model gpt-realtime" in summary
    assert "ws://127.0.0.1:8765/media" in summary
    assert "auth twilio_signature" in summary
    assert "env OPENAI_API_KEY" in summary


def test_check_config_default_and_overrides() -> None:
    out = io.StringIO()
    path = str(CONFIG_DIR / "bridge.toml")
    overrides = ["ingress.mediastream.host=::1", "ingress.mediastream.port=9000"]
    assert check_config_main(path, overrides, out) == 0
    text = out.getvalue()
    assert "provider loopback" in text
    assert "ws://[::1]:9000/media" in text
    assert "auth shared_secret" in text


def test_check_config_errors_exit_78(tmp_path: Path) -> None:
    path = write(tmp_path, '[session]\nvoice = "nova"\n[call]\ndtmf_flush_ms = -5\n')
    out = io.StringIO()
    assert check_config_main(str(path), ["service.max_calls=0"], out) == 78
    assert out.getvalue().splitlines() == [
        "error: must be at least 1, got 0 @ $.service.max_calls",
        "error: 'nova' is not a voice; choose one of alloy, ash, ballad, coral, echo, sage,"
        " shimmer, verse, marin, cedar @ $.session.voice",
        "error: must be at least 0, got -5 @ $.call.dtmf_flush_ms",
    ]


def test_check_config_missing_file(tmp_path: Path) -> None:
    out = io.StringIO()
    path = str(tmp_path / "missing.toml")
    assert check_config_main(path, [], out) == 78
    assert out.getvalue() == f"error: cannot read config file {path}: No such file or directory\n"


def test_check_config_never_prints_an_inline_secret(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\napi_key = "sk-live-abcdef123456"\n')
    out = io.StringIO()
    assert check_config_main(str(path), [], out) == 78
    assert "sk-live" not in out.getvalue()
    assert "api_key_env" in out.getvalue()


# -------------------------------------------------------------------------------------- secrets


def test_secret_from_env() -> None:
    source = SecretSource(env="OPENAI_API_KEY")
    assert read_secret(source, {"OPENAI_API_KEY": "  sk-1 \n"}) == "sk-1"


def test_secret_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TEST_SECRET", "value-1")
    assert read_secret(SecretSource(env="BRIDGE_TEST_SECRET")) == "value-1"


def test_secret_env_wins_over_file(tmp_path: Path) -> None:
    file = tmp_path / "key"
    file.write_text("from-file")
    source = SecretSource(env="KEY", file=str(file))
    assert read_secret(source, {"KEY": "from-env"}) == "from-env"
    # An unset or empty variable falls through to the file.
    assert read_secret(source, {}) == "from-file"
    assert read_secret(source, {"KEY": ""}) == "from-file"


def test_secret_from_file_is_stripped(tmp_path: Path) -> None:
    file = tmp_path / "key"
    file.write_text("\n  s3cret-token  \n\n")
    assert read_secret(SecretSource(file=str(file)), {}) == "s3cret-token"


def test_secret_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "openai").write_text("sk-cred\n")
    source = SecretSource(file="$CREDENTIALS_DIRECTORY/openai")
    assert read_secret(source, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "sk-cred"
    # Without systemd credentials the secret is simply absent.
    assert read_secret(source, {}) is None


def test_secret_missing() -> None:
    assert read_secret(SecretSource(), {}) is None
    assert read_secret(SecretSource(env="NOT_SET"), {}) is None
    assert read_secret(SecretSource(file="/nonexistent/bridge/key"), {}) is None


def test_secret_empty_file_is_missing(tmp_path: Path) -> None:
    file = tmp_path / "key"
    file.write_text(" \n")
    assert read_secret(SecretSource(file=str(file)), {}) is None


def test_secret_unreadable_file_names_the_path_only(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(SecretError, match=re.escape(str(directory))):
        read_secret(SecretSource(file=str(directory)), {})


def test_secret_file_that_is_not_text(tmp_path: Path) -> None:
    file = tmp_path / "key"
    file.write_bytes(b"\xff\xfe-secret-bytes")
    with pytest.raises(SecretError) as info:
        read_secret(SecretSource(file=str(file)), {})
    assert str(info.value) == f"secret file {file} is not UTF-8 text"


def test_secret_source_describe_never_has_the_value() -> None:
    assert SecretSource(env="OPENAI_API_KEY").describe() == "env OPENAI_API_KEY"
    path = "/run/credentials/bridge/key"
    assert SecretSource(file=path).describe() == f"file {path}"
    assert SecretSource(env="K", file="/k").describe() == "env K or file /k"
    assert SecretSource().describe() == "nowhere"


def test_secret_prints_as_stars() -> None:
    secret = Secret("sk-very-secret")
    assert repr(secret) == str(secret) == f"{secret}" == "***"
    assert f"{secret:>5}" == "  ***"
    assert "sk-very-secret" not in repr([secret, {"key": secret}])
    # Logging formats its arguments with %s / %r.
    record = logging.LogRecord(
        "bridge", logging.INFO, __file__, 1, "key=%s %r", (secret, secret), None
    )
    assert record.getMessage() == "key=*** ***"
    assert secret.reveal() == "sk-very-secret"
    assert secret == Secret("sk-very-secret")
    assert secret != Secret("other")
    assert bool(secret) and not Secret("")


def test_secret_sources_are_independent_of_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # An explicit environ mapping must not fall back to os.environ.
    monkeypatch.setenv("BRIDGE_TEST_SECRET", "process-value")
    assert read_secret(SecretSource(env="BRIDGE_TEST_SECRET"), {}) is None
    assert os.environ["BRIDGE_TEST_SECRET"] == "process-value"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("call.max_duration_s", "nan"),
        ("call.max_duration_s", "inf"),
        ("model.connect_timeout_s", "nan"),
        ("service.shutdown_grace_s", "inf"),
    ],
)
def test_nan_and_infinity_are_not_durations(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as error:
        load_config(path, [f"{key}={value}"])
    assert f"@ $.{key}" in str(error.value)


def test_check_config_names_records_and_the_metrics_port() -> None:
    out = io.StringIO()
    path = str(CONFIG_DIR / "bridge.toml")
    overrides = ["records.audio=true", "records.transcripts=false", "metrics.host=::1"]
    assert check_config_main(path, overrides, out) == 0
    text = out.getvalue()
    assert "records: records, without transcripts, with stereo WAV recordings" in text
    assert "metrics: http://[::1]:8767/metrics, /healthz, /readyz" in text
    out = io.StringIO()
    assert check_config_main(path, ["records.enabled=false", "metrics.enabled=false"], out) == 0
    assert "records: off" in out.getvalue()
    assert "metrics:" not in out.getvalue()
