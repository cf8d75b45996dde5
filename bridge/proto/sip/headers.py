"""SIP header values: URIs, name-addr, Via, CSeq (RFC 3261 §19.1, §20.10, §20.42, §25.1; RFC 3581).

Each value class has a ``parse`` constructor that raises only :class:`SipParseError` (status 400,
416 for a URI scheme we do not speak) and a ``__str__`` that writes it back; ``parse(str(x)) == x``.
Parameters keep the peer's spelling and order, and their values stay raw (a quoted value keeps its
quotes), so a header copied from a request into a response does not change. Flag parameters
(``;lr``, ``;rport``) have the value None; :meth:`param` returns "" for them.
IPv6 hosts are stored without brackets and written with them.
"""

from __future__ import annotations

import re

import attrs

from bridge.proto.sip.message import SipParseError, split_list

__all__ = [
    "CSeq",
    "NameAddr",
    "Params",
    "SipParseError",
    "SipUri",
    "Via",
    "find_param",
    "format_host",
    "format_params",
    "parse_params",
    "split_list",
]

Params = tuple[tuple[str, str | None], ...]

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9\-._]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9\-._~]+)?")
_VIA = re.compile(
    r"[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*"
    r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+([^;]*?)[ \t]*(;.*)?",
    re.DOTALL,
)
URI_SCHEMES = ("sip", "sips", "tel")


def format_host(host: str) -> str:
    """The host as written in a URI or Via: IPv6 literals in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _split_params(text: str) -> list[str]:
    """Split on ';' outside quoted strings."""
    if '"' not in text:
        return text.split(";")
    parts: list[str] = []
    start = 0
    in_quotes = False
    escaped = False
    for index, char in enumerate(text):
        if in_quotes:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == ";":
            parts.append(text[start:index])
            start = index + 1
    if in_quotes:
        raise SipParseError("Unterminated quoted string")
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> Params:
    """``;name=value;flag`` (the leading ';' optional) as ((name, value), (flag, None))."""
    text = text.strip(" \t")
    if not text:
        return ()
    if text.startswith(";"):
        text = text[1:]
    params: list[tuple[str, str | None]] = []
    for part in _split_params(text):
        name, equals, value = part.partition("=")
        name = name.strip(" \t")
        if not name and not equals and not value.strip(" \t"):
            continue  # ";;" or a trailing ';': harmless
        if not _TOKEN.fullmatch(name):
            raise SipParseError("Malformed parameter")
        params.append((name, value.strip(" \t") if equals else None))
    return tuple(params)


def format_params(params: Params) -> str:
    """Parameters as written after a value: ``;name=value;flag``."""
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params)


def find_param(params: Params, name: str) -> str | None:
    """A parameter's raw value by case-insensitive name: "" for a flag, None when absent."""
    key = name.lower()
    for param_name, value in params:
        if param_name.lower() == key:
            return "" if value is None else value
    return None


def _updated_params(params: Params, updates: dict[str, str | None]) -> Params:
    result = list(params)
    for key, value in updates.items():
        for index, (name, _) in enumerate(result):
            if name.lower() == key.lower():
                result[index] = (name, value)
                break
        else:
            result.append((key, value))
    return tuple(result)


def _parse_port(text: str) -> int:
    if not (text.isdigit() and text.isascii() and len(text) <= 5) or int(text) > 65535:
        raise SipParseError("Malformed port")
    return int(text)


def parse_hostport(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` as (host without brackets, port)."""
    text = text.strip(" \t")
    if text.startswith("["):
        end = text.find("]")
        host = text[1:end]
        if end < 0 or not _IPV6.fullmatch(host):
            raise SipParseError("Malformed IPv6 host")
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise SipParseError("Malformed host")
        return host, _parse_port(rest[1:])
    host, colon, port = text.partition(":")
    if not _HOSTNAME.fullmatch(host):
        raise SipParseError("Malformed host")
    return host, (_parse_port(port) if colon else None)


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """The unescaped content of the quoted string opening at `start`, and the index after it."""
    chars: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            chars.append(text[index + 1])
            index += 2
            continue
        if char == '"':
            return "".join(chars), index + 1
        chars.append(char)
        index += 1
    raise SipParseError("Unterminated quoted string")


def quote(text: str) -> str:
    """`text` as a quoted string, backslashes and quotes escaped (RFC 3261 §25.1)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@attrs.frozen
class SipUri:
    """A sip:, sips: or tel: URI (RFC 3261 §19.1.1, RFC 3966 for tel: with only the number in
    `user` and an empty host)."""

    scheme: str
    user: str
    host: str
    port: int | None
    params: Params = ()
    headers: str = ""
    password: str = ""

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse URI text; SipParseError(400), or 416 for a scheme other than sip/sips/tel."""
        text = text.strip(" \t")
        scheme, colon, rest = text.partition(":")
        if not colon or not scheme:
            raise SipParseError("Malformed URI")
        scheme = scheme.lower()
        if scheme not in URI_SCHEMES:
            raise SipParseError("Unsupported URI Scheme", status=416)
        if scheme == "tel":
            number, _, param_text = rest.partition(";")
            if not number or any(c in number for c in ' \t<>"?'):
                raise SipParseError("Malformed tel URI")
            return cls(scheme, number, "", None, parse_params(param_text))
        user = password = ""
        at = rest.find("@")
        if at >= 0:
            user, _, password = rest[:at].partition(":")
            rest = rest[at + 1 :]
            if not user or any(c in user for c in ' \t<>"'):
                raise SipParseError("Malformed URI user")
        rest, _, headers = rest.partition("?")
        hostport, _, param_text = rest.partition(";")
        host, port = parse_hostport(hostport)
        return cls(scheme, user, host, port, parse_params(param_text), headers, password)

    def param(self, name: str) -> str | None:
        """A URI parameter by case-insensitive name: "" for a flag like lr, None when absent."""
        return find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return find_param(self.params, name) is not None

    def with_params(self, **updates: str | None) -> SipUri:
        """A copy with these parameters set (replaced where present, else appended)."""
        return attrs.evolve(self, params=_updated_params(self.params, updates))

    @property
    def host_port(self) -> str:
        """``host[:port]`` with IPv6 in brackets."""
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        params = format_params(self.params)
        if self.scheme == "tel":
            return f"tel:{self.user}{params}"
        userinfo = ""
        if self.user:
            password = f":{self.password}" if self.password else ""
            userinfo = f"{self.user}{password}@"
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.host_port}{params}{headers}"


@attrs.frozen
class NameAddr:
    """From/To/Contact/Route/Record-Route/Refer-To value: `"Display" <uri>;params` or bare addr-spec
    (bare: params after the uri belong to the header, RFC 3261 §20.10). A Contact of ``*``
    (REGISTER's remove-all) has the uri "*"."""

    uri: str
    display: str = ""
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip(" \t")
        if text == "*":
            return cls("*")
        if text.startswith('"'):
            display, end = _read_quoted(text, 0)
            rest = text[end:].lstrip(" \t")
            if not rest.startswith("<"):
                raise SipParseError("Display name without <uri>")
        else:
            less = text.find("<")
            semicolon = text.find(";")
            if less < 0 or (0 <= semicolon < less):
                # Bare addr-spec: it cannot hold ';', so everything after the first ';'
                # is a header parameter.
                uri, _, param_text = text.partition(";")
                uri = uri.strip(" \t")
                if not uri or any(c in uri for c in ' \t<>"'):
                    raise SipParseError("Malformed address")
                return cls(uri, "", parse_params(param_text))
            display = text[:less].strip(" \t")
            rest = text[less:]
        close = rest.find(">")
        if close < 0:
            raise SipParseError("Unterminated <uri>")
        uri = rest[1:close].strip(" \t")
        if not uri:
            raise SipParseError("Empty <uri>")
        param_text = rest[close + 1 :].strip(" \t")
        if param_text and not param_text.startswith(";"):
            raise SipParseError("Malformed address parameters")
        return cls(uri, display, parse_params(param_text))

    @property
    def is_wildcard(self) -> bool:
        """The Contact ``*``."""
        return self.uri == "*"

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddr:
        """A copy whose tag parameter is `tag` (replaced, or appended)."""
        return attrs.evolve(self, params=_updated_params(self.params, {"tag": tag}))

    def with_params(self, **updates: str | None) -> NameAddr:
        """A copy with these header parameters set (replaced where present, else appended)."""
        return attrs.evolve(self, params=_updated_params(self.params, updates))

    def param(self, name: str) -> str | None:
        """A header parameter by case-insensitive name: "" for a flag, None when absent."""
        return find_param(self.params, name)

    def sip_uri(self) -> SipUri:
        """The uri parsed (SipParseError if it is not a sip/sips/tel URI)."""
        return SipUri.parse(self.uri)

    def __str__(self) -> str:
        if self.uri == "*":
            return "*"
        display = f"{quote(self.display)} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


@attrs.frozen
class Via:
    """One Via value (RFC 3261 §20.42, §18.2.1 received, RFC 3581 rport). A bare ``;rport``
    (the client asks for it) has the value None; the response sets ``rport=<port>``."""

    transport: str
    host: str
    port: int | None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> Via:
        """``SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bK...;rport`` (white space around '/' allowed)."""
        match = _VIA.fullmatch(text)
        if match is None:
            raise SipParseError("Malformed Via")
        name, version, transport, sent_by, param_text = match.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SipParseError("Malformed Via protocol")
        host, port = parse_hostport(sent_by)
        return cls(transport.upper(), host, port, parse_params(param_text or ""))

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def sent_by(self) -> str:
        """``host[:port]`` with IPv6 in brackets."""
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def param(self, name: str) -> str | None:
        """A parameter by case-insensitive name: "" for a flag like rport, None when absent."""
        return find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return find_param(self.params, name) is not None

    def with_params(self, **updates: str | None) -> Via:
        """Set or replace parameters in place order (new ones appended); None writes a flag."""
        return attrs.evolve(self, params=_updated_params(self.params, updates))

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


@attrs.frozen
class CSeq:
    """The CSeq value (RFC 3261 §20.16): a 32-bit sequence number and the method."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2:
            raise SipParseError("Malformed CSeq header")
        number, method = parts
        if not (number.isdigit() and number.isascii() and len(number) <= 10):
            raise SipParseError("Malformed CSeq header")
        if int(number) >= 2**32 or not _TOKEN.fullmatch(method):
            raise SipParseError("Malformed CSeq header")
        return cls(int(number), method)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"
