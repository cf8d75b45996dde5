"""Structured log lines for journald: logfmt or JSON, one line a record, the call id in each.

Records carry the call id through `logging.LoggerAdapter` extras (see :func:`call_logger`), so a
line about a call can always be found by its id. Secrets never reach a log call: the config holds
only where a secret comes from, and :class:`bridge.credentials.Secret` prints as ``***``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update(
        (key, value)
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    )
    if record.exc_info and record.exc_info[0] is not None:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    """``level=info logger=bridge msg="call started" call_id=c-1``."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\n\t\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


def setup_logging(
    *, level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None
) -> None:
    """Send the `bridge` loggers to `stream` (stdout by default) in the chosen format."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger("bridge")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The HTTP client logs each request's full URL at INFO; a URL may carry a token.
    for name in ("httpx2", "httpcore2", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


class CallLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that adds its fields to a record's own `extra` (3.11 replaces them)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def call_logger(call_id: str, name: str = "bridge.call") -> CallLogger:
    """A logger whose every record carries `call_id`."""
    return CallLogger(logging.getLogger(name), {"call_id": call_id})
