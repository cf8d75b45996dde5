"""SIP messages: parse and serialize (RFC 3261 §7, §18.3 framing, §20 header names, §25 grammar).

:func:`parse_message` takes one whole message (a UDP datagram, or what :class:`SipStreamFramer`
cut from a TCP stream) and returns a :class:`SipRequest` or :class:`SipResponse`; it raises only
:class:`SipParseError`, whatever the bytes. :func:`serialize` is its inverse and always writes a
correct Content-Length.

Header text is decoded as UTF-8 with ``errors="surrogateescape"``: RFC 3261 says UTF-8, but a peer
that sends Latin-1 must not crash us, and serializing re-encodes the same way, so a header copied
from a request into a response goes back out byte for byte. Bodies stay bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

DEFAULT_MAX_SIZE = 65535
"""Largest message accepted: the biggest UDP datagram, and the framer's limit on streams."""

MAX_HEADER_FIELDS = 256
"""More header lines than this is an attack or a loop, not a call."""


class SipParseError(ValueError):
    """The peer's message is malformed. `status` is the response it deserves when we can still
    answer (400 Bad Request, 413 too large, 505 version), or None when it can only be dropped.

    `partial` is the message as far as it could be read when only a later check failed (a missing
    mandatory header, a CSeq that disagrees with the method, a short body): the UAS needs its Via,
    From, To, Call-ID and CSeq to build the error response. It is None when the head itself could
    not be parsed.
    """

    def __init__(
        self, reason: str, *, status: int | None = 400, partial: SipMessage | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


# ---- header names ------------------------------------------------------------------------------

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS: dict[str, str] = {
    "v": "Via",
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "e": "Content-Encoding",
    "s": "Subject",
    "u": "Allow-Events",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
    "n": "Identity-Info",
}

_KNOWN_NAMES = (
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Diversion",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "History-Info",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Min-SE",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Remote-Party-ID",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Session-Expires",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
)

_CANONICAL: dict[str, str] = {name.lower(): name for name in _KNOWN_NAMES}
_CANONICAL.update(COMPACT_FORMS)

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1): several values may share
# one field, and `get_all` splits them.
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via",
        "Route",
        "Record-Route",
        "Contact",
        "Allow",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Allow-Events",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Path",
    )
)

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def canonical_name(name: str) -> str:
    """The name we store a header field under: compact forms expanded, known names in their RFC
    capitalisation, anything else as given."""
    return _CANONICAL.get(name.lower(), name)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quoted strings and <...>.

    Empty items are dropped and items are stripped, so ``"a , b,"`` gives ``["a", "b"]``.
    """
    if '"' not in value and "<" not in value:
        return [item for item in (part.strip(" \t") for part in value.split(",")) if item]
    items: list[str] = []
    start = 0
    in_quotes = False
    escaped = False
    in_brackets = False
    for index, char in enumerate(value):
        if in_quotes:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif in_brackets:
            # Inside <uri> nothing but '>' is special: a stray quote there is no string.
            in_brackets = char != ">"
        elif char == '"':
            in_quotes = True
        elif char == "<":
            in_brackets = True
        elif char == ",":
            items.append(value[start:index])
            start = index + 1
    items.append(value[start:])
    return [item for item in (part.strip(" \t") for part in items) if item]


@attrs.frozen
class Headers:
    """Ordered header fields; names canonicalised (compact forms expanded, e.g. 'v' -> 'Via',
    'i' -> 'Call-ID'; known names in RFC capitalisation, others kept as received). Lookups are
    case-insensitive and accept compact forms.

    The constructor takes fields as given; :meth:`of`, :meth:`with_field` and the parser
    canonicalise names.
    """

    fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, fields: Iterable[tuple[str, str]]) -> Headers:
        """Headers from (name, value) pairs, names canonicalised."""
        return cls(tuple((canonical_name(name), value) for name, value in fields))

    def get(self, name: str) -> str | None:
        """The first field's value, or None."""
        key = canonical_name(name).lower()
        for field_name, value in self.fields:
            if field_name.lower() == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value: list headers (Via, Route, Contact, Allow, Supported...) split on commas
        outside quotes and <brackets>; other headers one value per field."""
        key = canonical_name(name).lower()
        values = [value for field_name, value in self.fields if field_name.lower() == key]
        if key in LIST_HEADERS:
            return [item for value in values for item in split_list(value)]
        return values

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name).lower()
        return any(field_name.lower() == key for field_name, _ in self.fields)

    def with_field(self, name: str, value: str) -> Headers:
        """A copy with the field appended."""
        return Headers((*self.fields, (canonical_name(name), value)))

    def without(self, name: str) -> Headers:
        """A copy without any field of that name."""
        key = canonical_name(name).lower()
        return Headers(tuple(field for field in self.fields if field[0].lower() != key))

    def replaced(self, name: str, value: str) -> Headers:
        """A copy with the first field of that name holding `value` (appended if absent)."""
        key = canonical_name(name).lower()
        fields = list(self.fields)
        for index, (field_name, _) in enumerate(fields):
            if field_name.lower() == key:
                fields[index] = (field_name, value)
                return Headers(tuple(fields))
        return self.with_field(name, value)


@attrs.frozen
class SipRequest:
    """A request; `method` is case-sensitive (RFC 3261 §7.1) and `uri` the Request-URI text."""

    method: str
    uri: str
    headers: Headers
    body: bytes = b""


@attrs.frozen
class SipResponse:
    """A response; `reason` is the reason phrase (may be empty)."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""


SipMessage = SipRequest | SipResponse

MANDATORY_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
"""RFC 3261 §8.1.1: without these a request cannot be matched to a transaction or dialog."""

# ---- parsing -----------------------------------------------------------------------------------


@attrs.frozen
class _Head:
    """A parsed start line and header fields, before the body is known."""

    request: bool
    method: str  # request: the method; response: ""
    uri: str  # request: the Request-URI; response: the reason phrase
    status: int  # response: the status code; request: 0
    headers: Headers

    def error_status(self, status: int) -> int | None:
        # A broken response can only be dropped: there is nobody to answer.
        return status if self.request else None


def _find_blank_line(data: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """(end of head, start of body) for the first empty line, CRLF or bare LF, or None."""
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf < 0 and lf < 0:
        return None
    if lf < 0 or 0 <= crlf < lf:
        return crlf + 1, crlf + 3
    return lf + 1, lf + 2


def _parse_head(head: bytes) -> _Head:
    """Start line and header fields; `head` ends just after the last header line's newline."""
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise SipParseError("Empty message", status=None)
    start_line = lines[0].removesuffix("\r")
    request = not start_line[:4].upper().startswith("SIP/")
    status_code = 0
    method = ""
    if request:
        parts = start_line.split()
        if len(parts) != 3:
            raise SipParseError("Malformed request line")
        method, uri, version = parts
        if not _TOKEN.fullmatch(method):
            raise SipParseError("Malformed method")
        if version.upper() != "SIP/2.0":
            raise SipParseError("Version Not Supported", status=505)
    else:
        parts = start_line.split(None, 2)
        if len(parts) < 2:
            raise SipParseError("Malformed status line", status=None)
        if parts[0].upper() != "SIP/2.0":
            raise SipParseError("Version Not Supported", status=None)
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
            raise SipParseError("Malformed status code", status=None)
        status_code = int(code)
        uri = parts[2].strip(" \t") if len(parts) == 3 else ""
    fail_status = 400 if request else None
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        raise SipParseError("Too many header fields", status=fail_status)
    fields: list[list[str]] = []
    for raw_line in lines[1:]:
        line = raw_line.removesuffix("\r")
        if line[:1] in (" ", "\t"):
            # Folded continuation (RFC 3261 §7.3.1): the line break and leading white space
            # are equivalent to a single space.
            if not fields:
                raise SipParseError("Continuation line before any header", status=fail_status)
            continued = line.strip(" \t")
            if continued:
                previous = fields[-1]
                previous[1] = f"{previous[1]} {continued}" if previous[1] else continued
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _TOKEN.fullmatch(name):
            raise SipParseError("Malformed header line", status=fail_status)
        fields.append([_CANONICAL.get(name.lower(), name), value.strip(" \t")])
    headers = Headers(tuple((name, value) for name, value in fields))
    return _Head(request, method, uri, status_code, headers)


def _content_length(head: _Head) -> int | None:
    values = [value for name, value in head.headers.fields if name == "Content-Length"]
    if not values:
        return None
    first = values[0]
    if not (first.isdigit() and first.isascii() and len(first) <= 10):
        raise SipParseError("Malformed Content-Length", status=head.error_status(400))
    if any(value != first and value.lstrip("0") != first.lstrip("0") for value in values[1:]):
        raise SipParseError("Conflicting Content-Length", status=head.error_status(400))
    return int(first)


def _cseq_method(value: str) -> str | None:
    """The method of a well-formed CSeq value, else None."""
    parts = value.split()
    if len(parts) != 2:
        return None
    number, method = parts
    if not (number.isdigit() and number.isascii() and len(number) <= 10):
        return None
    if int(number) >= 2**32 or not _TOKEN.fullmatch(method):
        return None
    return method


def _finish(head: _Head, body: bytes) -> SipMessage:
    """Build the message and check what every request or response must carry."""
    message: SipMessage
    if head.request:
        message = SipRequest(head.method, head.uri, head.headers, body)
    else:
        message = SipResponse(head.status, head.uri, head.headers, body)
    status = head.error_status(400)
    present = {name.lower() for name, _ in head.headers.fields}
    for name in MANDATORY_HEADERS:
        if name.lower() not in present:
            raise SipParseError(f"Missing {name} header", status=status, partial=message)
    cseq = head.headers.get("CSeq")
    assert cseq is not None
    cseq_method = _cseq_method(cseq)
    if cseq_method is None:
        raise SipParseError("Malformed CSeq header", status=status, partial=message)
    if head.request and cseq_method != head.method:
        raise SipParseError("CSeq method does not match", status=status, partial=message)
    return message


def parse_message(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> SipMessage:
    """One whole message (a UDP datagram, or one framed by :class:`SipStreamFramer`).

    Tolerant: CRLF or bare LF line ends, header folding, leading CRLFs, white space around ':'.
    Strict where it matters: SIP/2.0 only (505), Content-Length honoured (the body is cut to it,
    so bytes after it on UDP are ignored, RFC 3261 §18.3; a shorter body is 400), mandatory Via,
    From, To, Call-ID and CSeq (400 naming the missing header), CSeq a 32-bit number whose method
    equals the request's. Larger than `max_size`: 413.
    """
    if len(data) > max_size:
        raise SipParseError("Message Too Large", status=413)
    start = 0
    while data[start : start + 1] in (b"\r", b"\n"):
        start += 1
    split = _find_blank_line(data, start)
    # A datagram is whole, so one that stops without the blank line is all head and no body.
    head_end, body_start = split if split is not None else (len(data), len(data))
    head = _parse_head(data[start:head_end])
    content_length = _content_length(head)
    if content_length is None:
        body = data[body_start:]
    else:
        if body_start + content_length > len(data):
            raise SipParseError(
                "Body shorter than Content-Length",
                status=head.error_status(400),
                partial=_finish_unchecked(head, data[body_start:]),
            )
        body = data[body_start : body_start + content_length]
    return _finish(head, bytes(body))


def _finish_unchecked(head: _Head, body: bytes) -> SipMessage:
    if head.request:
        return SipRequest(head.method, head.uri, head.headers, body)
    return SipResponse(head.status, head.uri, head.headers, body)


# ---- serializing -------------------------------------------------------------------------------


def serialize(message: SipMessage) -> bytes:
    """Start line, header fields in order (CRLF), Content-Length always set to len(body) (an
    existing Content-Length field is replaced in place, later duplicates dropped), blank line,
    body."""
    if isinstance(message, SipRequest):
        lines = [f"{message.method} {message.uri} SIP/2.0"]
    else:
        lines = [
            f"SIP/2.0 {message.status} {message.reason}"
            if message.reason
            else f"SIP/2.0 {message.status}"
        ]
    length = str(len(message.body))
    length_written = False
    for name, value in message.headers.fields:
        if name.lower() in ("content-length", "l"):
            if length_written:
                continue
            length_written = True
            value = length
        lines.append(f"{name}: {value}")
    if not length_written:
        lines.append(f"Content-Length: {length}")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + message.body


# ---- stream framing ----------------------------------------------------------------------------

_PING = b"\r\n\r\n"


class SipStreamFramer:
    """RFC 3261 §18.3 framing for TCP: feed bytes, take whole messages.

    CRLF keep-alives (RFC 5626 §3.5.1 double-CRLF ping) before a message are skipped and counted
    in `keepalives`, so the adapter can answer the CRLF pong; other stray CR/LF bytes between
    messages are skipped (RFC 3261 §7.5). Content-Length is mandatory on streams: without it the
    message's end is unknown, so that is a SipParseError(400) after which framing is lost. So is
    a message over `max_size` (413) and a head that cannot be parsed.

    Once framing is lost, :attr:`framing_lost` is true and every later :meth:`next_message`
    raises the same error again: the adapter answers if the status says so and closes the
    connection. Errors found after the message was cut out whole (a missing Call-ID, a CSeq that
    disagrees) leave the framer usable.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self.keepalives = 0
        self._buffer = bytearray()
        self._scan_from = 0  # where the blank-line search resumes after a partial head
        self._pending: tuple[_Head, int, int] | None = None  # head, body start, body length
        self._lost: SipParseError | None = None

    @property
    def framing_lost(self) -> bool:
        """True once an error made the rest of the stream unreadable."""
        return self._lost is not None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append bytes read from the stream."""
        self._buffer += data

    def next_message(self) -> SipMessage | None:
        """The next whole message, or None until more bytes arrive; raises SipParseError."""
        if self._lost is not None:
            raise self._lost
        try:
            return self._next_message()
        except SipParseError as error:
            if error.partial is None:
                self._lost = error
            raise

    def _skip_keepalives(self) -> None:
        buffer = self._buffer
        while buffer:
            if buffer.startswith(_PING):
                self.keepalives += 1
                del buffer[:4]
            elif buffer[0] in (0x0D, 0x0A) and not _PING.startswith(buffer):
                del buffer[:1]
            else:
                # A message starts here, or a partial ping waits for its next byte.
                return

    def _next_message(self) -> SipMessage | None:
        if self._pending is None:
            self._skip_keepalives()
            buffer = self._buffer
            if not buffer or _PING.startswith(buffer):
                return None
            split = _find_blank_line(buffer, self._scan_from)
            if split is None:
                if len(buffer) > self.max_size:
                    raise SipParseError("Message Too Large", status=413)
                self._scan_from = max(0, len(buffer) - 2)
                return None
            head_end, body_start = split
            head = _parse_head(bytes(buffer[:head_end]))
            content_length = _content_length(head)
            if content_length is None:
                raise SipParseError("Missing Content-Length header", status=head.error_status(400))
            if body_start + content_length > self.max_size:
                raise SipParseError("Message Too Large", status=413)
            self._pending = (head, body_start, content_length)
        head, body_start, content_length = self._pending
        end = body_start + content_length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[body_start:end])
        del self._buffer[:end]
        self._pending = None
        self._scan_from = 0
        return _finish(head, body)
