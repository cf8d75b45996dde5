"""Where secrets (API keys, auth tokens) come from, and a wrapper that keeps them out of logs.

A secret's value never lives in the TOML configuration: the config names an environment variable
and/or a file (systemd `LoadCredential=` puts files under `$CREDENTIALS_DIRECTORY`, see
systemd.exec(5) "Credentials").
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

import attrs

from bridge.errors import SecretError

CREDENTIALS_DIRECTORY_PREFIX = "$CREDENTIALS_DIRECTORY/"


@attrs.frozen(kw_only=True)
class SecretSource:
    """Where one secret comes from: an environment variable, a file, or both (env wins)."""

    env: str = ""
    file: str = ""

    def describe(self) -> str:
        """Say where the secret is looked up, never what it is, e.g. "env OPENAI_API_KEY"."""
        places = []
        if self.env:
            places.append(f"env {self.env}")
        if self.file:
            places.append(f"file {self.file}")
        return " or ".join(places) if places else "nowhere"


def read_secret(source: SecretSource, environ: Mapping[str, str] | None = None) -> str | None:
    """Read a secret: the environment variable first, else the file, stripped of whitespace.

    Returns None when the variable is unset or empty and the file is not configured, does not
    exist, or holds only whitespace, so the caller can say which secret is missing and where it
    looked (`source.describe()`). A file that exists but cannot be read raises SecretError naming
    the path; the message never includes file contents.
    """
    if environ is None:
        environ = os.environ
    if source.env:
        value = environ.get(source.env, "").strip()
        if value:
            return value
    if not source.file:
        return None
    path = _expand_credentials_directory(source.file, environ)
    if path is None:
        return None
    try:
        with open(path, "rb") as secret_file:
            raw = secret_file.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"secret file {path} is not UTF-8 text") from None
    return text.strip() or None


def _expand_credentials_directory(path: str, environ: Mapping[str, str]) -> str | None:
    # Only the systemd credentials prefix is expanded: general $VAR expansion would let a typo
    # silently point at the wrong file.
    if not path.startswith(CREDENTIALS_DIRECTORY_PREFIX):
        return path
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        # Not started by systemd with LoadCredential=: the credential is simply not present.
        return None
    return os.path.join(directory, path[len(CREDENTIALS_DIRECTORY_PREFIX) :])


class Secret:
    """A secret string that prints as *** wherever it ends up (repr, str, f-strings, logs).

    Deliberately not a `str` subclass: string concatenation or formatting would leak the value.
    Call `reveal()` at the single place that needs the real value (an HTTP header, an HMAC).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    def __str__(self) -> str:
        return "***"

    def __format__(self, format_spec: str) -> str:
        return format("***", format_spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing secrets cannot leak them through timing.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))
