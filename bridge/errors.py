"""The daemon's exception roots (DESIGN.md rule 7)."""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error the daemon raises on purpose."""


class ConfigError(BridgeError):
    """A configuration that cannot be used; `messages` holds one line per problem."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


class SecretError(BridgeError):
    """A secret (API key, auth token) that is configured but cannot be read."""


class ProtocolError(BridgeError):
    """Something broke a protocol's rules."""


class LocalProtocolError(ProtocolError):
    """We broke the protocol: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; `hint` says what to answer (close code, SIP status)."""

    def __init__(self, message: str, *, hint: int) -> None:
        super().__init__(message)
        self.hint = hint
