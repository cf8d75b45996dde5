"""The daemon's configuration: a tree of frozen attrs classes and a strict TOML loader.

The file format is TOML 1.0 (read with `tomllib`); docs/configuration.md is the reference for every
key. Structuring goes through one strict cattrs converter (`forbid_extra_keys`, detailed
validation), so every problem in a file is reported at once, each message ending in
`@ $.section.key` like cattrs' `transform_error`. Range and format checks live on the fields as
attrs validators: the loader runs them per key (so each error carries its own path) and `__init__`
runs them again for configs built in code. Checks that involve several keys live in each section's
`_problems()` method.

Secrets never appear here, only where to find them: `<name>_env` / `<name>_file` keys become a
`bridge.credentials.SecretSource`.

Pure module: no I/O apart from `load_config` reading the file it is given.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import os
import re
import string
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TextIO, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn, override

from bridge.call.events import Codec
from bridge.credentials import SecretSource
from bridge.errors import ConfigError

EX_CONFIG: Final = 78  # sysexits.h: "configuration error"

OPENAI_REALTIME_URL: Final = "wss://api.openai.com/v1/realtime"
AZURE_URL_EXAMPLE: Final = "wss://RESOURCE.openai.azure.com/openai/v1/realtime"
DEFAULT_INSTRUCTIONS: Final = "You are a helpful phone assistant. Keep answers short."

# realtime-api.md §2.3: models accepted for input transcription inside a realtime session.
TRANSCRIPTION_MODELS: Final = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
    "gpt-transcribe",
    "gpt-live-transcribe",
)


# --------------------------------------------------------------------------------------------
# Closed choices. The values are exactly what the TOML file says.


class Provider(enum.Enum):
    LOOPBACK = "loopback"
    OPENAI = "openai"
    AZURE = "azure"
    COMPATIBLE = "compatible"


class Dialect(enum.Enum):
    GA = "ga"
    BETA = "beta"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(enum.Enum):
    LOGFMT = "logfmt"
    JSON = "json"


class Voice(enum.Enum):
    ALLOY = "alloy"
    ASH = "ash"
    BALLAD = "ballad"
    CORAL = "coral"
    ECHO = "echo"
    SAGE = "sage"
    SHIMMER = "shimmer"
    VERSE = "verse"
    MARIN = "marin"
    CEDAR = "cedar"


class OutputModality(enum.Enum):
    AUDIO = "audio"
    TEXT = "text"


class AudioFormat(enum.Enum):
    CALL = "call"  # whatever G.711 law the call itself uses
    PCMU = "pcmu"
    PCMA = "pcma"


class ToolChoice(enum.Enum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


class TurnDetectionType(enum.Enum):
    SERVER_VAD = "server_vad"
    SEMANTIC_VAD = "semantic_vad"
    NONE = "none"


class Eagerness(enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    AUTO = "auto"


class NoiseReductionType(enum.Enum):
    NEAR_FIELD = "near_field"
    FAR_FIELD = "far_field"
    OFF = "off"


class MediaStreamAuth(enum.Enum):
    TWILIO_SIGNATURE = "twilio_signature"
    SHARED_SECRET = "shared_secret"
    NONE = "none"


class SipTransport(enum.Enum):
    UDP = "udp"
    TCP = "tcp"


class ToolKind(enum.Enum):
    BUILTIN = "builtin"  # call control carried out by the daemon itself
    HTTP = "http"  # POST JSON to the operator's URL
    PYTHON = "python"  # a module:function in the daemon's process


class BuiltinTool(enum.Enum):
    END_CALL = "end_call"
    TRANSFER_CALL = "transfer_call"
    SEND_DTMF = "send_dtmf"


class Holding(enum.Enum):
    """What the caller hears while a slow tool runs."""

    NONE = "none"
    PHRASE = "phrase"  # the model is asked for a short holding phrase
    AUDIO = "audio"  # an audio file plays (looped) until the result is in


# What each choice is called in error messages: "'nova' is not a voice; choose one of ...".
_CHOICE_NOUNS: Final[Mapping[type[enum.Enum], str]] = {
    Provider: "a provider",
    Dialect: "a dialect",
    LogLevel: "a log level",
    LogFormat: "a log format",
    Voice: "a voice",
    OutputModality: "an output modality",
    AudioFormat: "an audio format",
    ToolChoice: "a tool choice",
    TurnDetectionType: "a turn detection type",
    Eagerness: "an eagerness level",
    NoiseReductionType: "a noise reduction type",
    MediaStreamAuth: "a media stream auth mode",
    SipTransport: "a SIP transport",
    ToolKind: "a tool kind",
    BuiltinTool: "a built-in tool",
    Holding: "a holding mode",
    Codec: "a codec",
}


# --------------------------------------------------------------------------------------------
# Field checks. Each is an attrs validator `(instance, attribute, value)` that never looks at the
# instance, so the loader can run it on one key before the section exists.


class _Invalid(ValueError):
    """One problem with one value; the message is shown to the user as is, plus ` @ path`."""


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _at_least(minimum: float) -> _Validator:
    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        # Written so that NaN and infinity fail too: no duration or size is endless.
        if not (value >= minimum and math.isfinite(value)):
            raise _Invalid(f"must be at least {minimum}, got {value}")

    return check


def _above(minimum: float) -> _Validator:
    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if not (value > minimum and math.isfinite(value)):
            raise _Invalid(f"must be greater than {minimum}, got {value}")

    return check


def _between(low: float, high: float) -> _Validator:
    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}, got {value}")

    return check


def _optional(validator: _Validator) -> _Validator:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            validator(instance, attribute, value)

    return check


def _not_empty(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise _Invalid("must not be empty")


def _websocket_url(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise _Invalid(f"must be a ws:// or wss:// URL, got {value!r}")
    if parts.query:
        raise _Invalid("must not carry a query string (the model name goes in model.model)")


def _public_stream_url(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme != "wss" or not parts.netloc:
        raise _Invalid(f"must be a wss:// URL, got {value!r}")
    if parts.query:
        # Twilio rejects <Stream url> with a query string (error 31922); use <Parameter> instead.
        raise _Invalid("must not carry a query string (pass per-call data as <Parameter>)")


def _url_path(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.startswith("/"):
        raise _Invalid(f"must start with '/', got {value!r}")


def _template(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        fields = [
            (name, conversion)
            for _, name, _, conversion in string.Formatter().parse(value)
            if name is not None
        ]
    except ValueError as exc:
        raise _Invalid(
            f"malformed template: {exc} (write {{{{ and }}}} for literal braces)"
        ) from None
    for name, conversion in fields:
        if conversion not in (None, "s", "r", "a"):
            raise _Invalid(f"malformed template: unknown conversion !{conversion} in {{{name}}}")
        # A positional "{}" or "{0}" has nothing to fill it: values are passed by name only.
        if not name or name[0].isdigit():
            raise _Invalid(
                f"template placeholder {{{name}}} needs a name, like {{caller}} or {{call_id}}"
            )


def _language_code(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value and not re.fullmatch(r"[a-z]{2}", value):
        raise _Invalid(f'must be "" or an ISO-639-1 code of two lowercase letters, got {value!r}')


def _transcription_model(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in TRANSCRIPTION_MODELS:
        raise _Invalid(
            f"{value!r} is not a transcription model; "
            f"choose one of {', '.join(TRANSCRIPTION_MODELS)}"
        )


def _max_output_tokens(_instance: Any, _attribute: attrs.Attribute[Any], value: object) -> None:
    if value == "inf":
        return
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096:
        return
    raise _Invalid(f'must be an integer from 1 to 4096 or "inf", got {value!r}')


def _single_modality(
    _instance: Any, _attribute: attrs.Attribute[Any], value: tuple[OutputModality, ...]
) -> None:
    if len(value) != 1:
        raise _Invalid('must be exactly ["audio"] or ["text"]')


def _ip_literal(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _Invalid(f"must be an IPv4 or IPv6 address, got {value!r}") from None


def _networks(_instance: Any, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise _Invalid('must list at least one network; ["0.0.0.0/0", "::/0"] accepts every source')
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise _Invalid(f"{network!r} is not a network like 192.0.2.0/24 or ::1/128") from None


def _non_empty_unique(
    _instance: Any, _attribute: attrs.Attribute[Any], value: tuple[Any, ...]
) -> None:
    if not value:
        raise _Invalid("must not be empty")
    if len(set(value)) != len(value):
        raise _Invalid("must not list the same value twice")


_HEADER_NAME = re.compile(r"[A-Za-z0-9!%*_+`'~.-]+")


def _header_names(_instance: Any, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for name in value:
        if not _HEADER_NAME.fullmatch(name):
            raise _Invalid(f"{name!r} is not a SIP header name")


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _tool_name(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not _TOOL_NAME.fullmatch(value):
        raise _Invalid(
            f"{value!r} is not a function name: 1 to 64 letters, digits, '_' or '-' "
            "(the Realtime API's rule)"
        )


def _http_url(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Invalid(f"must be an http:// or https:// URL, got {value!r}")
    if parts.username or parts.password:
        raise _Invalid("must not carry credentials; send them in headers_env or headers_file")


def _python_callable(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value):
        raise _Invalid(f'must be "package.module:function", got {value!r}')


def _sip_target(value: str) -> str | None:
    """Why `value` is not a transfer target we can put in Refer-To, or None when it is one."""
    scheme, colon, rest = value.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips", "tel") or not rest:
        return f"{value!r} is not a sip:, sips: or tel: URI"
    if any(char in value for char in '<>\r\n "'):
        return f"{value!r} must not contain spaces, quotes or angle brackets"
    return None


def _transfer_targets(
    _instance: Any, _attribute: attrs.Attribute[Any], value: Mapping[str, str]
) -> None:
    for name, target in value.items():
        if not _TOOL_NAME.fullmatch(name):
            raise _Invalid(f"target name {name!r}: use letters, digits, '_' or '-'")
        if (problem := _sip_target(target)) is not None:
            raise _Invalid(f"target {name!r}: {problem}")


def _transfer_target(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value and (problem := _sip_target(value)) is not None:
        raise _Invalid(problem)


def _header_table(
    _instance: Any, _attribute: attrs.Attribute[Any], value: Mapping[str, str]
) -> None:
    for name in value:
        if not _HEADER_NAME.fullmatch(name):
            raise _Invalid(f"{name!r} is not an HTTP header name")


def _env_names(_instance: Any, _attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
    _header_table(_instance, _attribute, value)
    for name, env in value.items():
        if not _ENV_NAME.fullmatch(env):
            # Never echo it: the likeliest mistake is the secret itself pasted here.
            raise _Invalid(
                f"header {name!r} must name an environment variable (letters, digits, _), "
                "not hold the secret itself"
            )


def _dtmf_digits(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not re.fullmatch(r"[0-9*#A-D]*", value):
        raise _Invalid(f"must be keypad digits 0-9, *, #, A-D, got {value!r}")


def _glob_list(_instance: Any, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for pattern in value:
        if not pattern:
            raise _Invalid("patterns must not be empty")


# Metadata key for a field whose TOML shape the converter cannot derive from its type alone.
_STRUCTURE: Final = "bridge.config.structure"


def _structure_max_output_tokens(value: object, _type: Any) -> int | Literal["inf"]:
    if value == "inf":
        return "inf"
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    got = repr(value) if isinstance(value, str) else _kind(value)
    raise _Invalid(f'must be an integer from 1 to 4096 or "inf", got {got}')


def _list_of(structure_item: Callable[[object], Any]) -> Callable[[object, Any], tuple[Any, ...]]:
    """A TOML array as a tuple; a lone string is an error, not a list of its characters."""

    def structure(value: object, _type: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"must be an array, got {_kind(value)}")
        return tuple(structure_item(item) for item in value)

    return structure


def _structure_str_table(value: object, _type: Any) -> Mapping[str, str]:
    """A TOML table of strings (header names to values, target names to URIs, ...)."""
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table, got {_kind(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _Invalid(f"{key!r} must be a string, got {_kind(item)}")
    return dict(value)


def _structure_json_value(value: object, where: str) -> Any:
    if isinstance(value, dict):
        return {key: _structure_json_value(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [
            _structure_json_value(item, f"{where}[{index}]") for index, item in enumerate(value)
        ]
    if isinstance(value, str | int | float | bool):
        return value
    raise _Invalid(f"{_kind(value)} at {where} has no JSON form")


def _structure_json_table(value: object, _type: Any) -> Mapping[str, Any]:
    """A TOML table that is sent as a JSON object (a JSON schema, function arguments)."""
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table, got {_kind(value)}")
    structured: dict[str, Any] = _structure_json_value(value, "")
    return structured


def _json_schema(
    _instance: Any, _attribute: attrs.Attribute[Any], value: Mapping[str, Any]
) -> None:
    if value and value.get("type") != "object":
        raise _Invalid('a function\'s parameters must be a JSON schema with type = "object"')


def _structure_output_modalities(value: object, _type: Any) -> tuple[OutputModality, ...]:
    if not isinstance(value, list):
        raise _Invalid(f'must be a list, ["audio"] or ["text"], got {_kind(value)}')
    return tuple(_structure_choice(item, OutputModality) for item in value)


# --------------------------------------------------------------------------------------------
# The configuration tree. Every key is optional; the defaults are a working loopback setup.


@attrs.frozen(kw_only=True)
class ServiceConfig:
    name: str = attrs.field(default="bridge", validator=_not_empty)
    max_calls: int = attrs.field(default=200, validator=_at_least(1))
    shutdown_grace_s: float = attrs.field(default=30.0, validator=_at_least(0.0))


@attrs.frozen(kw_only=True)
class LogConfig:
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.LOGFMT


@attrs.frozen(kw_only=True)
class LoopbackToolCallConfig:
    """A function call the loopback model makes when the caller presses keys or says a text.

    Lets the daemon and its tests exercise tools with no real model: `dtmf = "1"` makes the
    loopback model answer the keypad message for "1" by saying `say` and calling `name`.
    """

    name: str = attrs.field(validator=_tool_name)
    arguments: Mapping[str, Any] = attrs.field(
        factory=dict, metadata={_STRUCTURE: _structure_json_table}
    )
    say: str = ""
    dtmf: str = attrs.field(default="", validator=_dtmf_digits)
    user_text: str = ""

    def _problems(self) -> Iterator[tuple[str, str]]:
        if not self.dtmf and not self.user_text:
            yield "dtmf", "a loopback tool call needs a trigger: dtmf or user_text"


@attrs.frozen(kw_only=True)
class LoopbackConfig:
    """The built-in loopback model's scripted behaviour."""

    tool_calls: tuple[LoopbackToolCallConfig, ...] = ()


@attrs.frozen(kw_only=True)
class ModelConfig:
    """The realtime model endpoint (realtime-api.md §1; Azure §6.1)."""

    provider: Provider = Provider.LOOPBACK
    url: str = attrs.field(default="", validator=_websocket_url)
    model: str = attrs.field(default="gpt-realtime", validator=_not_empty)
    api_key: SecretSource = attrs.field(default=SecretSource(env="OPENAI_API_KEY"))
    dialect: Dialect = Dialect.GA
    connect_timeout_s: float = attrs.field(default=10.0, validator=_above(0.0))
    session_timeout_s: float = attrs.field(default=10.0, validator=_above(0.0))
    max_message_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_at_least(1024 * 1024))
    loopback: LoopbackConfig = attrs.field(factory=LoopbackConfig)

    @property
    def effective_url(self) -> str:
        """The endpoint to dial: `url`, or the provider's well-known one when `url` is empty.

        Empty for providers without a public default (azure and compatible are required to set
        `url`) and for loopback, where the daemon runs the model itself.
        """
        if self.url:
            return self.url
        if self.provider is Provider.OPENAI:
            return OPENAI_REALTIME_URL
        return ""

    def _problems(self) -> Iterator[tuple[str, str]]:
        if not self.url and self.provider is Provider.AZURE:
            yield "url", f"required for provider azure, e.g. {AZURE_URL_EXAMPLE!r}"
        if not self.url and self.provider is Provider.COMPATIBLE:
            yield "url", "required for provider compatible: the server's realtime websocket URL"
        if self.provider is not Provider.LOOPBACK and not (self.api_key.env or self.api_key.file):
            yield "api_key_env", f"provider {self.provider.value} needs api_key_env or api_key_file"
        if self.dialect is Dialect.BETA and self.provider not in (
            Provider.COMPATIBLE,
            Provider.LOOPBACK,
        ):
            yield (
                "dialect",
                f"dialect beta is only allowed with provider compatible or loopback, "
                f"not {self.provider.value}",
            )


@attrs.frozen(kw_only=True)
class TranscriptionConfig:
    """Input audio transcription (realtime-api.md §2.3)."""

    enabled: bool = True
    model: str = attrs.field(default="gpt-4o-mini-transcribe", validator=_transcription_model)
    language: str = attrs.field(default="", validator=_language_code)
    prompt: str = ""


_SERVER_VAD_ONLY: Final = (
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "idle_timeout_ms",
)


@attrs.frozen(kw_only=True)
class TurnDetectionConfig:
    """Turn detection (realtime-api.md §2.1/§2.2). Unset parameters keep the server's default."""

    type: TurnDetectionType = TurnDetectionType.SERVER_VAD
    threshold: float | None = attrs.field(default=None, validator=_optional(_between(0.0, 1.0)))
    prefix_padding_ms: int | None = attrs.field(default=None, validator=_optional(_at_least(0)))
    silence_duration_ms: int | None = attrs.field(default=None, validator=_optional(_at_least(0)))
    idle_timeout_ms: int | None = attrs.field(
        default=None, validator=_optional(_between(5000, 30000))
    )
    eagerness: Eagerness | None = None
    create_response: bool = True
    interrupt_response: bool = True

    def _problems(self) -> Iterator[tuple[str, str]]:
        if self.type is not TurnDetectionType.SERVER_VAD:
            for name in _SERVER_VAD_ONLY:
                if getattr(self, name) is not None:
                    yield name, f"{name} applies to server_vad only"
        if self.type is not TurnDetectionType.SEMANTIC_VAD and self.eagerness is not None:
            yield "eagerness", "eagerness applies to semantic_vad only"


@attrs.frozen(kw_only=True)
class NoiseReductionConfig:
    type: NoiseReductionType = NoiseReductionType.NEAR_FIELD


@attrs.frozen(kw_only=True)
class SessionConfig:
    """What the model is told at session start (realtime-api.md §1.3 GA, §1.4 beta)."""

    # A str.format template: {caller}, {called}, {call_id} and the call's custom parameters.
    instructions: str = attrs.field(default=DEFAULT_INSTRUCTIONS, validator=_template)
    voice: Voice = Voice.MARIN
    output_modalities: tuple[OutputModality, ...] = attrs.field(
        default=(OutputModality.AUDIO,),
        validator=_single_modality,
        metadata={_STRUCTURE: _structure_output_modalities},
    )
    audio_format: AudioFormat = AudioFormat.CALL
    speed: float = attrs.field(default=1.0, validator=_between(0.25, 1.5))
    greeting: str = ""
    temperature: float | None = attrs.field(default=None, validator=_optional(_between(0.6, 1.2)))
    max_output_tokens: int | Literal["inf"] = attrs.field(
        default="inf",
        validator=_max_output_tokens,
        metadata={_STRUCTURE: _structure_max_output_tokens},
    )
    tool_choice: ToolChoice = ToolChoice.AUTO
    transcription: TranscriptionConfig = attrs.field(factory=TranscriptionConfig)
    turn_detection: TurnDetectionConfig = attrs.field(factory=TurnDetectionConfig)
    noise_reduction: NoiseReductionConfig = attrs.field(factory=NoiseReductionConfig)


@attrs.frozen(kw_only=True)
class CallConfig:
    max_duration_s: float = attrs.field(default=3600.0, validator=_above(0.0))
    # 20 ms caller frames per input_audio_buffer.append: fewer, larger messages at high call counts.
    input_batch_frames: int = attrs.field(default=1, validator=_between(1, 50))
    # Digits typed within this gap reach the model together; "#" flushes at once.
    dtmf_flush_ms: int = attrs.field(default=1500, validator=_at_least(0))


@attrs.frozen(kw_only=True)
class RecordsConfig:
    enabled: bool = True
    directory: str = attrs.field(default="records", validator=_not_empty)
    transcripts: bool = True
    # A stereo WAV per call (caller left, model right); off by default: it holds what was said.
    audio: bool = False


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """The local HTTP port for Prometheus metrics and the health checks."""

    enabled: bool = True
    host: str = attrs.field(default="127.0.0.1", validator=_not_empty)
    port: int = attrs.field(default=8767, validator=_between(0, 65535))


@attrs.frozen(kw_only=True)
class MediaStreamIngressConfig:
    """Twilio-style websocket media streams (protocols.md, media streams)."""

    enabled: bool = True
    host: str = attrs.field(default="127.0.0.1", validator=_not_empty)
    port: int = attrs.field(default=8765, validator=_between(0, 65535))
    path: str = attrs.field(default="/media", validator=_url_path)
    auth: MediaStreamAuth = MediaStreamAuth.SHARED_SECRET
    # Twilio signs the URL exactly as written in the TwiML, so it cannot be derived from host/port.
    public_url: str = attrs.field(default="", validator=_public_stream_url)
    auth_token: SecretSource = attrs.field(default=SecretSource(env="TWILIO_AUTH_TOKEN"))
    shared_secret: SecretSource = attrs.field(default=SecretSource(env="BRIDGE_MEDIA_SECRET"))
    secret_parameter: str = attrs.field(default="secret", validator=_not_empty)
    outbound_chunk_frames: int = attrs.field(default=5, validator=_between(1, 50))
    playout_lead_ms: int = attrs.field(default=1000, validator=_at_least(100))

    def _problems(self) -> Iterator[tuple[str, str]]:
        if self.auth is MediaStreamAuth.TWILIO_SIGNATURE and not self.public_url:
            yield (
                "public_url",
                'required when auth = "twilio_signature": the wss:// URL exactly as written '
                "in the TwiML <Stream url=...>",
            )
        if self.auth is MediaStreamAuth.TWILIO_SIGNATURE and not (
            self.auth_token.env or self.auth_token.file
        ):
            yield (
                "auth_token_env",
                'auth = "twilio_signature" needs auth_token_env or auth_token_file',
            )
        if self.auth is MediaStreamAuth.SHARED_SECRET and not (
            self.shared_secret.env or self.shared_secret.file
        ):
            yield (
                "shared_secret_env",
                'auth = "shared_secret" needs shared_secret_env or shared_secret_file',
            )


_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::"})


@attrs.frozen(kw_only=True)
class SipIngressConfig:
    """A SIP trunk or PBX sending calls straight to the daemon, media over RTP (protocols.md §4-5).

    Off unless enabled: a SIP listener lets whoever may reach it place calls on the model account,
    so sources are limited by `allow_from` (loopback only by default).
    """

    enabled: bool = False
    # Where SIP (and RTP) listen: an IP address; 0.0.0.0 or :: needs advertised_host.
    host: str = attrs.field(default="127.0.0.1", validator=_ip_literal)
    port: int = attrs.field(default=5060, validator=_between(0, 65535))
    transports: tuple[SipTransport, ...] = attrs.field(
        default=(SipTransport.UDP, SipTransport.TCP),
        validator=_non_empty_unique,
        metadata={_STRUCTURE: _list_of(lambda item: _structure_choice(item, SipTransport))},
    )
    # The address peers reach us at, in Contact and SDP (the public address behind NAT).
    advertised_host: str = attrs.field(default="", validator=_ip_literal)
    user: str = attrs.field(default="bridge", validator=_not_empty)
    rtp_port_min: int = attrs.field(default=20000, validator=_between(1024, 65534))
    rtp_port_max: int = attrs.field(default=29999, validator=_between(1025, 65535))
    codecs: tuple[Codec, ...] = attrs.field(
        default=(Codec.PCMU, Codec.PCMA),
        validator=_non_empty_unique,
        metadata={_STRUCTURE: _list_of(lambda item: _structure_choice(item, Codec))},
    )
    allow_from: tuple[str, ...] = attrs.field(
        default=("127.0.0.0/8", "::1/128"),
        validator=_networks,
        metadata={_STRUCTURE: _list_of(lambda item: _structure_str(item, str))},
    )
    # 0: only service.max_calls limits SIP calls.
    max_calls: int = attrs.field(default=0, validator=_at_least(0))
    # SIP headers of the INVITE whose values become call variables (X-Customer-Id -> x_customer_id).
    headers: tuple[str, ...] = attrs.field(
        default=(),
        validator=_header_names,
        metadata={_STRUCTURE: _list_of(lambda item: _structure_str(item, str))},
    )
    ringing: bool = True
    latch_window_s: float = attrs.field(default=2.0, validator=_between(0.0, 60.0))
    jitter_frames: int = attrs.field(default=3, validator=_between(1, 10))
    # No RTP from the caller for this long ends the call (0: never); not counted while on hold.
    rtp_timeout_s: float = attrs.field(default=30.0, validator=_at_least(0.0))
    retry_after_s: int = attrs.field(default=10, validator=_between(1, 3600))

    @property
    def contact_host(self) -> str:
        return self.advertised_host or self.host

    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(network, strict=False) for network in self.allow_from)

    def _problems(self) -> Iterator[tuple[str, str]]:
        if self.host in _WILDCARD_HOSTS and not self.advertised_host:
            yield (
                "advertised_host",
                f"required when host is {self.host}: the address callers reach this daemon at "
                "goes into Contact and SDP",
            )
        if self.rtp_port_max - self.rtp_port_min < 1:
            yield ("rtp_port_max", "the RTP port range must hold at least two ports (RTP + RTCP)")


def _secret_header_sources(
    headers_env: Mapping[str, str], headers_file: Mapping[str, str]
) -> dict[str, SecretSource]:
    """One SecretSource per secret header; the environment wins where both name a header."""
    sources = {name: SecretSource(file=path) for name, path in headers_file.items()}
    sources.update({name: SecretSource(env=env) for name, env in headers_env.items()})
    return sources


DEFAULT_HOLDING_PHRASE: Final = (
    "Tell the caller in a few words that you are looking into it and will be right back. "
    "Say nothing else."
)


@attrs.frozen(kw_only=True)
class ToolConfig:
    """One function the model may call (`[[tools]]`); see docs/configuration.md "Tools".

    `kind` says who runs it: the daemon's call control (`builtin`: end_call, transfer_call,
    send_dtmf), the operator's HTTP endpoint (`http`) or a Python callable (`python`).
    """

    name: str = attrs.field(validator=_tool_name)
    kind: ToolKind = ToolKind.HTTP
    description: str = ""
    # A JSON schema (type = "object"); empty: the built-in's own, or no parameters.
    parameters: Mapping[str, Any] = attrs.field(
        factory=dict, validator=_json_schema, metadata={_STRUCTURE: _structure_json_table}
    )
    # Unset: 10 s, or 30 s for transfer_call (counted from the REFER: the target has to answer).
    timeout_s: float | None = attrs.field(default=None, validator=_optional(_between(0.1, 600.0)))
    holding: Holding = Holding.NONE
    holding_after_s: float = attrs.field(default=1.5, validator=_between(0.0, 60.0))
    holding_phrase: str = attrs.field(default=DEFAULT_HOLDING_PHRASE, validator=_not_empty)
    holding_audio: str = ""
    # http: where to POST, and the request headers (secret values from the environment or a file).
    url: str = attrs.field(default="", validator=_http_url)
    headers: Mapping[str, str] = attrs.field(
        factory=dict, validator=_header_table, metadata={_STRUCTURE: _structure_str_table}
    )
    headers_env: Mapping[str, str] = attrs.field(
        factory=dict, validator=_env_names, metadata={_STRUCTURE: _structure_str_table}
    )
    headers_file: Mapping[str, str] = attrs.field(
        factory=dict, validator=_header_table, metadata={_STRUCTURE: _structure_str_table}
    )
    # python: "package.module:function", called as function(arguments, context).
    function: str = attrs.field(default="", validator=_python_callable)
    # transfer_call: one fixed target, or named targets the model chooses from.
    target: str = attrs.field(default="", validator=_transfer_target)
    targets: Mapping[str, str] = attrs.field(
        factory=dict, validator=_transfer_targets, metadata={_STRUCTURE: _structure_str_table}
    )
    # transfer_call on calls without SIP REFER (media streams): POST the transfer here.
    hook_url: str = attrs.field(default="", validator=_http_url)

    @property
    def effective_timeout_s(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        return 30.0 if self.builtin is BuiltinTool.TRANSFER_CALL else 10.0

    @property
    def builtin(self) -> BuiltinTool | None:
        if self.kind is not ToolKind.BUILTIN:
            return None
        return next((tool for tool in BuiltinTool if tool.value == self.name), None)

    def secret_headers(self) -> dict[str, SecretSource]:
        """Header names whose values are secrets, and where each is read from."""
        return _secret_header_sources(self.headers_env, self.headers_file)

    def _problems(self) -> Iterator[tuple[str, str]]:
        builtin = self.builtin
        if self.kind is ToolKind.BUILTIN and builtin is None:
            names = ", ".join(tool.value for tool in BuiltinTool)
            yield "name", f"{self.name!r} is not a built-in tool; choose one of {names}"
        if self.kind is ToolKind.HTTP and not self.url:
            yield "url", 'required for kind = "http": the URL the arguments are POSTed to'
        if self.kind is ToolKind.PYTHON and not self.function:
            yield "function", 'required for kind = "python": "package.module:function"'
        if self.url and self.kind is not ToolKind.HTTP:
            yield "url", 'applies to kind = "http" only (transfer_call uses hook_url)'
        if self.function and self.kind is not ToolKind.PYTHON:
            yield "function", 'applies to kind = "python" only'
        transfer_only = ("target", "targets", "hook_url")
        if builtin is not BuiltinTool.TRANSFER_CALL:
            for key in transfer_only:
                if getattr(self, key):
                    yield key, "applies to the built-in transfer_call only"
        elif self.target and self.targets:
            yield "targets", "give either target (fixed) or targets (the model chooses), not both"
        elif not self.target and not self.targets:
            yield "target", "transfer_call needs target or targets"
        headers_used = self.kind is ToolKind.HTTP or self.hook_url
        if not headers_used and (self.headers or self.headers_env or self.headers_file):
            yield "headers", "headers apply to http tools and transfer hooks only"
        if self.holding is Holding.AUDIO and not self.holding_audio:
            yield "holding_audio", 'required for holding = "audio": a WAV or .ulaw/.alaw file'
        if self.holding_audio and self.holding is not Holding.AUDIO:
            yield "holding_audio", 'applies to holding = "audio" only'


@attrs.frozen(kw_only=True)
class RouteConfig:
    """A per-call profile (`[[routes]]`): the first route whose conditions all match applies.

    `called`, `caller` and the values in `variables` are shell-style patterns (`+1555*`); an
    empty condition matches anything. `session` holds any `[session]` key and is merged over the
    `[session]` table, so a route says only what differs.
    """

    name: str = attrs.field(validator=_not_empty)
    called: tuple[str, ...] = attrs.field(
        default=(),
        validator=_glob_list,
        metadata={_STRUCTURE: _list_of(lambda item: _structure_str(item, str))},
    )
    caller: tuple[str, ...] = attrs.field(
        default=(),
        validator=_glob_list,
        metadata={_STRUCTURE: _list_of(lambda item: _structure_str(item, str))},
    )
    variables: Mapping[str, str] = attrs.field(
        factory=dict, metadata={_STRUCTURE: _structure_str_table}
    )
    model: str = ""
    # The [[tools]] names this route offers; absent: all of them.
    tools: tuple[str, ...] | None = attrs.field(
        default=None,
        metadata={_STRUCTURE: _list_of(lambda item: _structure_str(item, str))},
    )
    session: SessionConfig = attrs.field(factory=SessionConfig)


@attrs.frozen(kw_only=True)
class PrecallHookConfig:
    """An HTTP endpoint asked for per-call variables before the model is called (a CRM lookup).

    It gets the call (id, caller, called, variables) as JSON and answers
    `{"variables": {...}}`; `"route": "name"` picks a route. Failure or timeout: defaults.
    """

    url: str = attrs.field(default="", validator=_http_url)
    timeout_s: float = attrs.field(default=2.0, validator=_between(0.1, 10.0))
    headers: Mapping[str, str] = attrs.field(
        factory=dict, validator=_header_table, metadata={_STRUCTURE: _structure_str_table}
    )
    headers_env: Mapping[str, str] = attrs.field(
        factory=dict, validator=_env_names, metadata={_STRUCTURE: _structure_str_table}
    )
    headers_file: Mapping[str, str] = attrs.field(
        factory=dict, validator=_header_table, metadata={_STRUCTURE: _structure_str_table}
    )

    def secret_headers(self) -> dict[str, SecretSource]:
        """Header names whose values are secrets, and where each is read from."""
        return _secret_header_sources(self.headers_env, self.headers_file)


@attrs.frozen(kw_only=True)
class IngressConfig:
    mediastream: MediaStreamIngressConfig = attrs.field(factory=MediaStreamIngressConfig)
    sip: SipIngressConfig = attrs.field(factory=SipIngressConfig)


@attrs.frozen(kw_only=True)
class Config:
    service: ServiceConfig = attrs.field(factory=ServiceConfig)
    log: LogConfig = attrs.field(factory=LogConfig)
    model: ModelConfig = attrs.field(factory=ModelConfig)
    session: SessionConfig = attrs.field(factory=SessionConfig)
    call: CallConfig = attrs.field(factory=CallConfig)
    records: RecordsConfig = attrs.field(factory=RecordsConfig)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    ingress: IngressConfig = attrs.field(factory=IngressConfig)
    tools: tuple[ToolConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    precall_hook: PrecallHookConfig = attrs.field(factory=PrecallHookConfig)

    def _problems(self) -> Iterator[tuple[str, str]]:
        sessions = [("session", self.session)] + [
            (f"routes[{index}].session", route.session) for index, route in enumerate(self.routes)
        ]
        for where, session in sessions:
            if session.temperature is not None and self.model.dialect is Dialect.GA:
                yield (
                    f"{where}.temperature",
                    "temperature is not part of the GA protocol; remove it, or use "
                    'model.dialect = "beta" with a provider that speaks beta',
                )
        seen: set[str] = set()
        for index, tool in enumerate(self.tools):
            if tool.name in seen:
                yield f"tools[{index}].name", f"a second tool named {tool.name!r}"
            seen.add(tool.name)
        route_names: set[str] = set()
        for index, route in enumerate(self.routes):
            if route.name in route_names:
                yield f"routes[{index}].name", f"a second route named {route.name!r}"
            route_names.add(route.name)
            for name in route.tools or ():
                if name not in seen:
                    yield f"routes[{index}].tools", f"{name!r} is not the name of a [[tools]] entry"


# Keys that look like a secret written inline; they get a pointer to the *_env/*_file keys.
_INLINE_SECRET_KEYS: Final = frozenset({"api_key", "auth_token", "shared_secret"})


# --------------------------------------------------------------------------------------------
# Public entry points.


def default_config() -> Config:
    """Every key at its default: provider loopback, media streams on 127.0.0.1:8765."""
    return Config()


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Structure and validate a parsed TOML document; ConfigError lists every problem."""
    try:
        return _converter.structure(_with_route_sessions(data), Config)
    except ClassValidationError as exc:
        raise ConfigError(_without_inherited(_messages(exc, "$"))) from None
    except _Invalid as exc:
        raise ConfigError([f"{exc} @ $"]) from None


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        below = merged.get(key)
        if isinstance(below, dict) and isinstance(value, dict):
            merged[key] = _merged(below, value)
        else:
            merged[key] = value
    return merged


def _with_route_sessions(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Each route's `session` table laid over `[session]`: a route says only what differs."""
    routes = data.get("routes")
    base = data.get("session", {})
    if not isinstance(routes, list) or not isinstance(base, dict):
        return data
    merged_routes = []
    for route in routes:
        if isinstance(route, dict) and isinstance(route.get("session", {}), dict):
            route = {**route, "session": _merged(base, route.get("session", {}))}
        merged_routes.append(route)
    return {**data, "routes": merged_routes}


_ROUTE_SESSION_PATH = re.compile(r"(.*) @ \$\.routes\[\d+\]\.session(.*)")


def _without_inherited(messages: list[str]) -> list[str]:
    """Drop a route's copy of a problem that `[session]` itself has (it inherited the key)."""
    present = set(messages)
    kept = []
    for message in messages:
        match = _ROUTE_SESSION_PATH.fullmatch(message)
        if match and f"{match[1]} @ $.session{match[2]}" in present:
            continue
        kept.append(message)
    return kept


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read a TOML file, apply `--set key.path=value` overrides, structure and validate it."""
    data = _read_toml(path)
    problems = _apply_overrides(data, overrides)
    try:
        config = config_from_dict(data)
    except ConfigError as exc:
        problems.extend(exc.messages)
    if problems:
        raise ConfigError(problems)
    return config


def check_config_main(path: str, overrides: Sequence[str], out: TextIO) -> int:
    """`bridge check-config FILE`: print OK and a summary (exit 0), or every problem (exit 78)."""
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        for message in exc.messages:
            print(f"error: {message}", file=out)
        return EX_CONFIG
    for line in _summary(path, config):
        print(line, file=out)
    return 0


def _summary(path: str, config: Config) -> Iterator[str]:
    model = config.model
    yield f"OK: {path}"
    if model.provider is Provider.LOOPBACK:
        yield f"  model: provider loopback (built in), model {model.model}"
    else:
        yield (
            f"  model: provider {model.provider.value}, model {model.model}, "
            f"dialect {model.dialect.value}, url {model.effective_url}, "
            f"api key from {model.api_key.describe()}"
        )
    if config.tools:
        yield "  tools: " + ", ".join(f"{tool.name} ({tool.kind.value})" for tool in config.tools)
    if config.routes:
        yield "  routes: " + ", ".join(route.name for route in config.routes)
    if config.precall_hook.url:
        yield f"  pre-call hook: {_without_query(config.precall_hook.url)}"
    records = config.records
    if records.enabled:
        extras = ("" if records.transcripts else ", without transcripts") + (
            ", with stereo WAV recordings" if records.audio else ""
        )
        yield f"  records: {records.directory}{extras}"
    else:
        yield "  records: off"
    metrics = config.metrics
    if metrics.enabled:
        host = f"[{metrics.host}]" if ":" in metrics.host else metrics.host
        yield f"  metrics: http://{host}:{metrics.port}/metrics, /healthz, /readyz"
    stream = config.ingress.mediastream
    if not stream.enabled:
        yield "  ingress mediastream: disabled"
        return
    auth = stream.auth.value
    if stream.auth is MediaStreamAuth.TWILIO_SIGNATURE:
        auth += f" (token from {stream.auth_token.describe()}, public_url {stream.public_url})"
    elif stream.auth is MediaStreamAuth.SHARED_SECRET:
        auth += (
            f" (parameter {stream.secret_parameter!r}, "
            f"secret from {stream.shared_secret.describe()})"
        )
    host = f"[{stream.host}]" if ":" in stream.host else stream.host
    yield f"  ingress mediastream: listening on ws://{host}:{stream.port}{stream.path}, auth {auth}"


def _without_query(url: str) -> str:
    """A URL for display: a query string may carry a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


# --------------------------------------------------------------------------------------------
# Reading and overriding.


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    name = os.fspath(path)
    try:
        with open(path, "rb") as config_file:
            return tomllib.load(config_file)
    except OSError as exc:
        raise ConfigError([f"cannot read config file {name}: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name} is not valid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name} is not valid TOML: not UTF-8 text"]) from None


def _parse_override_value(text: str) -> Any:
    # A value that is not valid TOML on its own (openai, /var/lib/x, 0.0.0.0) is taken as a bare
    # string, so the common case needs no shell-quoted TOML quotes.
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """Apply each `key.path=value` to `data` in place; return one message per bad override."""
    problems = []
    for item in overrides:
        key_path, equals, text = item.partition("=")
        keys = [key.strip() for key in key_path.split(".")]
        if not equals or not all(keys):
            problems.append(f"--set expects key.path=value, got {item!r}")
            continue
        table = data
        for depth, key in enumerate(keys[:-1]):
            child = table.get(key)
            if child is None:
                child = table[key] = {}
            elif not isinstance(child, dict):
                where = "$." + ".".join(keys[: depth + 1])
                problems.append(f"--set {key_path}: {key} is not a table @ {where}")
                break
            table = child
        else:
            table[keys[-1]] = _parse_override_value(text)
    return problems


# --------------------------------------------------------------------------------------------
# The converter. Every config class above is structured by `_section_hook`, which wraps the
# cattrs-generated function with three things cattrs has no notion of: secret keys (two TOML keys,
# `x_env` and `x_file`, become one SecretSource field `x`), per-key validators, and the
# section's own cross-key `_problems()`.


_E = TypeVar("_E", bound=enum.Enum)


def _kind(value: object) -> str:
    # Type only, never the value: the value might be a secret typed into the wrong key.
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case _:
            return f"a {type(value).__name__}"


def _structure_str(value: object, _type: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_kind(value)}")
    return value


def _structure_bool(value: object, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_kind(value)}")
    return value


def _structure_int(value: object, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_kind(value)}")
    return value


def _structure_float(value: object, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {_kind(value)}")
    return float(value)


def _structure_choice(value: object, choices: type[_E]) -> _E:
    allowed = ", ".join(str(member.value) for member in choices)
    noun = _CHOICE_NOUNS.get(choices, f"a {choices.__name__}")
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, one of {allowed}; got {_kind(value)}")
    for member in choices:
        if member.value == value:
            return member
    raise _Invalid(f"{value!r} is not {noun}; choose one of {allowed}")


def _is_config_class(cls: Any) -> bool:
    return isinstance(cls, type) and attrs.has(cls) and cls.__module__ == __name__


def _secret_fields(cls: type[Any]) -> list[attrs.Attribute[Any]]:
    return [field for field in attrs.fields(cls) if field.type is SecretSource]


def _toml_keys(cls: type[Any]) -> list[str]:
    keys = []
    for field in attrs.fields(cls):
        if field.type is SecretSource:
            keys += [f"{field.name}_env", f"{field.name}_file"]
        else:
            keys.append(field.name)
    return keys


def _at_key(exc: Exception, key: str) -> Exception:
    # The same note cattrs attaches, so one message walker handles both.
    exc.__notes__ = [*getattr(exc, "__notes__", []), AttributeValidationNote(key, key, Any)]
    return exc


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _take_secret_source(
    data: dict[str, Any], field: attrs.Attribute[Any], errors: list[Exception]
) -> SecretSource:
    default = field.default
    assert isinstance(default, SecretSource)
    env_key, file_key = f"{field.name}_env", f"{field.name}_file"
    env = data.pop(env_key, default.env)
    file = data.pop(file_key, default.file)
    if not isinstance(env, str):
        errors.append(_at_key(_Invalid(f"expected a string, got {_kind(env)}"), env_key))
    elif env and not _ENV_NAME.fullmatch(env):
        # Never echo it: the likeliest mistake is the secret itself pasted here.
        errors.append(
            _at_key(
                _Invalid(
                    "must be the NAME of an environment variable (letters, digits, _), "
                    "not the secret itself"
                ),
                env_key,
            )
        )
    if not isinstance(file, str):
        errors.append(_at_key(_Invalid(f"expected a string, got {_kind(file)}"), file_key))
    if errors:
        return default
    return SecretSource(env=env, file=file)


def _field_hook(field: attrs.Attribute[Any]) -> Callable[[Any, Any], Any]:
    structure: Callable[[Any, Any], Any] = field.metadata.get(_STRUCTURE) or (
        _converter.get_structure_hook(field.type)
    )
    validator = field.validator
    if validator is None:
        return structure

    def structure_and_check(value: Any, type_: Any) -> Any:
        result = structure(value, type_)
        validator(None, field, result)
        return result

    return structure_and_check


def _section_hook(cls: type[Any]) -> Callable[[Any, Any], Any]:
    attrs.resolve_types(cls)
    secret_fields = _secret_fields(cls)
    field_overrides: dict[str, Any] = {
        field.name: override(omit=True)
        if field.type is SecretSource
        else override(struct_hook=_field_hook(field))
        for field in attrs.fields(cls)
    }
    structure_generated = make_dict_structure_fn(
        cls,
        _converter,
        _cattrs_forbid_extra_keys=True,
        _cattrs_detailed_validation=True,
        **field_overrides,
    )
    check_section = getattr(cls, "_problems", None)

    def structure_section(value: Any, _type: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a table, got {_kind(value)}")
        data = dict(value)
        errors: list[Exception] = []
        secrets = {field.name: _take_secret_source(data, field, errors) for field in secret_fields}
        try:
            section = structure_generated(data, cls)
        except ClassValidationError as exc:
            errors[:0] = exc.exceptions
        if errors:
            raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)
        if secrets:
            section = attrs.evolve(section, **secrets)
        if check_section is not None:
            problems = [_at_key(_Invalid(message), key) for key, message in check_section(section)]
            if problems:
                raise ClassValidationError(f"While checking {cls.__name__}", problems, cls)
        return section

    return structure_section


_converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
_converter.register_structure_hook(str, _structure_str)
_converter.register_structure_hook(bool, _structure_bool)
_converter.register_structure_hook(int, _structure_int)
_converter.register_structure_hook(float, _structure_float)
_converter.register_structure_hook_func(
    lambda cls: isinstance(cls, type) and issubclass(cls, enum.Enum), _structure_choice
)
_converter.register_structure_hook_factory(_is_config_class, _section_hook)


# --------------------------------------------------------------------------------------------
# Errors as messages, in cattrs transform_error style ("<problem> @ $.section.key").


def _unknown_key_message(key: str, cls: type[Any]) -> str:
    if key in _INLINE_SECRET_KEYS:
        if any(field.name == key for field in _secret_fields(cls)):
            return (
                f"{key} must not hold the secret itself: put the secret in an environment "
                f"variable or a file and name it with {key}_env or {key}_file"
            )
        return f"unknown key {key!r} (secrets never go in the config file)"
    close = difflib.get_close_matches(key, _toml_keys(cls), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"


def _messages(exc: BaseException, path: str) -> list[str]:
    messages = []
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            messages += _messages(sub, f"{path}.{note.name}")
        for sub in without:
            messages += _messages(sub, path)
    elif isinstance(exc, IterableValidationError):
        with_index, without = exc.group_exceptions()
        for sub, index_note in with_index:
            messages += _messages(sub, f"{path}[{index_note.index!r}]")
        for sub in without:
            messages += _messages(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            messages.append(f"{_unknown_key_message(key, exc.cl)} @ {path}.{key}")
    elif isinstance(exc, _Invalid):
        messages.append(f"{exc} @ {path}")
    else:
        # Not expected from the hooks above; say what happened rather than hide it.
        messages.append(f"invalid value ({type(exc).__name__}: {exc}) @ {path}")
    return messages
