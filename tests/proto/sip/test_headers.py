from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.proto.sip.headers import (
    CSeq,
    NameAddr,
    SipParseError,
    SipUri,
    Via,
    format_host,
    parse_params,
    split_list,
)

# ---- Via ---------------------------------------------------------------------------------------


def test_via_with_rport_flag() -> None:
    via = Via.parse("SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-a1;rport")
    assert (via.transport, via.host, via.port) == ("UDP", "198.51.100.7", 5060)
    assert via.branch == "z9hG4bK-a1"
    assert via.has_param("rport") and via.param("rport") == ""
    assert via.params == (("branch", "z9hG4bK-a1"), ("rport", None))
    assert not via.has_param("received") and via.param("received") is None


def test_via_answered_with_received_and_rport() -> None:
    via = Via.parse("SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-a1;rport")
    answered = via.with_params(rport="5062", received="192.0.2.4")
    assert str(answered) == (
        "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-a1;rport=5062;received=192.0.2.4"
    )
    assert answered.param("RPORT") == "5062"


def test_via_with_rport_value_and_received() -> None:
    via = Via.parse("SIP/2.0/TCP host.example;received=10.1.2.3;rport=1234;branch=z9hG4bKx")
    assert (via.transport, via.host, via.port) == ("TCP", "host.example", None)
    assert via.param("rport") == "1234"
    assert via.param("received") == "10.1.2.3"
    assert via.sent_by == "host.example"


def test_via_ipv6() -> None:
    via = Via.parse("SIP/2.0/UDP [::1]:5060;branch=z9hG4bK-6;rport")
    assert (via.host, via.port) == ("::1", 5060)
    assert via.sent_by == "[::1]:5060"
    assert str(via) == "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK-6;rport"
    assert Via.parse("SIP/2.0/UDP [2001:db8::9]").host == "2001:db8::9"


def test_via_tolerates_white_space_and_lower_case() -> None:
    via = Via.parse("  sip / 2.0 / udp   example.com:5060 ; branch = z9hG4bK1 ; rport ")
    assert (via.transport, via.host, via.port) == ("UDP", "example.com", 5060)
    assert via.params == (("branch", "z9hG4bK1"), ("rport", None))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 1.2.3.4",
        "SIP/3.0/UDP 1.2.3.4",
        "HTTP/2.0/UDP 1.2.3.4",
        "SIP/2.0/UDP 1.2.3.4:99999",
        "SIP/2.0/UDP 1.2.3.4:",
        "SIP/2.0/UDP ::1:5060",
        "SIP/2.0/UDP [::1",
        "SIP/2.0/UDP [::1]x",
        'SIP/2.0/UDP 1.2.3.4;branch="open',
        "SIP/2.0/UDP 1.2.3.4;=x",
    ],
)
def test_malformed_via(text: str) -> None:
    with pytest.raises(SipParseError) as caught:
        Via.parse(text)
    assert caught.value.status == 400


# ---- NameAddr ----------------------------------------------------------------------------------


def test_name_addr_with_quoted_display_name_holding_commas_and_escaped_quotes() -> None:
    text = '"Doe, John \\"JD\\"" <sip:jd@example.com;transport=tcp>;tag=abc;expires=60'
    address = NameAddr.parse(text)
    assert address.display == 'Doe, John "JD"'
    assert address.uri == "sip:jd@example.com;transport=tcp"
    assert address.params == (("tag", "abc"), ("expires", "60"))
    assert address.tag == "abc"
    assert str(address) == text


def test_uri_params_inside_brackets_are_not_header_params() -> None:
    address = NameAddr.parse("<sip:198.51.100.7;lr>")
    assert address.uri == "sip:198.51.100.7;lr"
    assert address.params == ()
    assert address.param("lr") is None
    assert address.sip_uri().has_param("lr")


def test_bare_addr_spec_params_belong_to_the_header() -> None:
    address = NameAddr.parse("sip:a@b;tag=x")
    assert (address.uri, address.display) == ("sip:a@b", "")
    assert address.tag == "x"
    assert str(address) == "<sip:a@b>;tag=x"


def test_token_display_name() -> None:
    address = NameAddr.parse("Bob Smith <sip:bob@biloxi.example.com>")
    assert address.display == "Bob Smith"
    assert str(address) == '"Bob Smith" <sip:bob@biloxi.example.com>'


def test_contact_star() -> None:
    star = NameAddr.parse(" * ")
    assert star.is_wildcard and str(star) == "*"


def test_with_tag_replaces_or_appends() -> None:
    to = NameAddr.parse("<sip:+15557654321@bridge.example>")
    tagged = to.with_tag("b-5e2a")
    assert str(tagged) == "<sip:+15557654321@bridge.example>;tag=b-5e2a"
    assert str(tagged.with_tag("z")) == "<sip:+15557654321@bridge.example>;tag=z"


def test_quoted_header_param_value_with_semicolon_and_brackets() -> None:
    text = '<sip:a@10.0.0.1>;+sip.instance="<urn:uuid:1;2>";expires=30'
    address = NameAddr.parse(text)
    assert address.param("+sip.instance") == '"<urn:uuid:1;2>"'
    assert address.param("EXPIRES") == "30"
    assert str(address) == text


@pytest.mark.parametrize(
    "text",
    ["", '"unterminated <sip:a@b>', '"Name" sip:a@b', "<sip:a@b", "<>", "<sip:a@b> junk", "a b"],
)
def test_malformed_name_addr(text: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(text)


# ---- SipUri ------------------------------------------------------------------------------------


def test_sip_uri_with_everything() -> None:
    uri = SipUri.parse("sip:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi&x=y")
    assert uri.scheme == "sip"
    assert (uri.user, uri.password) == ("alice", "secret")
    assert (uri.host, uri.port) == ("2001:db8::1", 5061)
    assert uri.params == (("transport", "tcp"), ("lr", None))
    assert uri.param("Transport") == "tcp" and uri.param("lr") == "" and uri.has_param("LR")
    assert uri.headers == "subject=hi&x=y"
    assert str(uri) == "sip:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi&x=y"
    assert uri.host_port == "[2001:db8::1]:5061"


def test_sip_uri_host_only_and_user_with_semicolon() -> None:
    assert SipUri.parse("sip:198.51.100.7;lr") == SipUri(
        "sip", "", "198.51.100.7", None, (("lr", None),)
    )
    carrier = SipUri.parse("SIPS:+15551234567;npdi@carrier.example:5061")
    assert (carrier.scheme, carrier.user, carrier.host) == (
        "sips",
        "+15551234567;npdi",
        "carrier.example",
    )


def test_tel_uri() -> None:
    uri = SipUri.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.scheme, uri.user, uri.host) == ("tel", "+1-201-555-0123", "")
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


def test_sip_uri_with_params_updated() -> None:
    uri = SipUri.parse("sip:bridge@203.0.113.10:5060")
    assert str(uri.with_params(transport="udp")) == "sip:bridge@203.0.113.10:5060;transport=udp"


def test_unknown_scheme_is_416() -> None:
    with pytest.raises(SipParseError) as caught:
        SipUri.parse("mailto:a@b")
    assert caught.value.status == 416


@pytest.mark.parametrize(
    "text",
    ["", "sip:", "sip:@host", "sip:a@", "sip:a b@c", "sip:a@host:port", "sip:a@[::1", "tel:"],
)
def test_malformed_uri(text: str) -> None:
    with pytest.raises(SipParseError) as caught:
        SipUri.parse(text)
    assert caught.value.status == 400


# ---- CSeq, lists, params -----------------------------------------------------------------------


def test_cseq() -> None:
    cseq = CSeq.parse(" 101   INVITE ")
    assert cseq == CSeq(101, "INVITE")
    assert str(cseq) == "101 INVITE"
    assert CSeq.parse("4294967295 ACK").number == 2**32 - 1
    for bad in ("", "INVITE", "1", "-1 INVITE", "4294967296 INVITE", "1 IN VITE", "x INVITE"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


def test_split_list_keeps_quoted_commas() -> None:
    assert split_list('"a, b" <sip:x>, <sip:y>') == ['"a, b" <sip:x>', "<sip:y>"]


def test_format_host() -> None:
    assert format_host("::1") == "[::1]"
    assert format_host("[::1]") == "[::1]"
    assert format_host("10.0.0.1") == "10.0.0.1"


def test_parse_params() -> None:
    assert parse_params(";a=1;b; c = 3 ;;") == (("a", "1"), ("b", None), ("c", "3"))
    assert parse_params("") == ()


# ---- Hypothesis round trips --------------------------------------------------------------------

TOKEN = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,10}", fullmatch=True)
PARAM_VALUE = st.one_of(
    st.none(),
    st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~\[\]/:&$]{0,10}", fullmatch=True),
    st.from_regex(r'"([^"\\\r\n]|\\[ -~]){0,10}"', fullmatch=True),
)
PARAMS = st.lists(st.tuples(TOKEN, PARAM_VALUE), max_size=4).map(tuple)
URI_PARAMS = st.lists(
    st.tuples(
        TOKEN, st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9\-._~]{1,10}", fullmatch=True))
    ),
    max_size=4,
).map(tuple)
LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9\-]{0,8}[A-Za-z0-9])?", fullmatch=True)
HOSTNAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
IPV4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
IPV6 = st.ip_addresses(v=6).map(str)
HOST = st.one_of(HOSTNAME, IPV4, IPV6)
PORT = st.one_of(st.none(), st.integers(0, 65535))
USER = st.from_regex(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]{1,12}", fullmatch=True)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    scheme = draw(st.sampled_from(["sip", "sips"]))
    user = draw(st.one_of(st.just(""), USER))
    password = draw(st.from_regex(r"[A-Za-z0-9&=+$,]{0,8}", fullmatch=True)) if user else ""
    headers = draw(
        st.from_regex(
            r"([A-Za-z0-9]+=[A-Za-z0-9%]*(&[A-Za-z0-9]+=[A-Za-z0-9%]*)*)?", fullmatch=True
        )
    )
    return SipUri(scheme, user, draw(HOST), draw(PORT), draw(URI_PARAMS), headers, password)


@given(sip_uris())
def test_sip_uri_round_trip(uri: SipUri) -> None:
    assert SipUri.parse(str(uri)) == uri


DISPLAY = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n"), max_size=20
)


@given(sip_uris(), DISPLAY, PARAMS)
def test_name_addr_round_trip(
    uri: SipUri, display: str, params: tuple[tuple[str, str | None], ...]
) -> None:
    address = NameAddr(str(uri), display, params)
    assert NameAddr.parse(str(address)) == address
    assert NameAddr.parse(str(address)).sip_uri() == uri
    # The comma-list split keeps each value whole however its display name is written.
    assert split_list(f"{address}, {address}") == [str(address), str(address)]


@given(st.sampled_from(["UDP", "TCP", "TLS", "WS", "SCTP"]), HOST, PORT, PARAMS)
def test_via_round_trip(
    transport: str, host: str, port: int | None, params: tuple[tuple[str, str | None], ...]
) -> None:
    via = Via(transport, host, port, params)
    assert Via.parse(str(via)) == via


@given(st.integers(0, 2**32 - 1), TOKEN)
def test_cseq_round_trip(number: int, method: str) -> None:
    assert CSeq.parse(str(CSeq(number, method))) == CSeq(number, method)


@given(st.text(max_size=60))
def test_value_parsers_raise_only_sip_parse_error(text: str) -> None:
    for parse in (SipUri.parse, NameAddr.parse, Via.parse, CSeq.parse, parse_params):
        try:
            parse(text)
        except SipParseError:
            pass
