from __future__ import annotations

import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.proto.sip.message import (
    Headers,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    canonical_name,
    parse_message,
    serialize,
    split_list,
)


def crlf(text: str) -> bytes:
    """A message written with LF line ends as its wire form, CRLF everywhere."""
    return text.replace("\n", "\r\n").encode()


def with_body(head: str, body: str) -> bytes:
    """Head lines (no Content-Length) plus a body, with the correct Content-Length."""
    body_bytes = crlf(body)
    return crlf(head) + f"Content-Length: {len(body_bytes)}\r\n\r\n".encode() + body_bytes


SDP_OFFER = """v=0
o=gw 1 1 IN IP4 198.51.100.7
s=-
c=IN IP4 198.51.100.7
t=0 0
m=audio 30000 RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"""

SDP_ANSWER = """v=0
o=bridge 8241 1 IN IP4 203.0.113.10
s=-
c=IN IP4 203.0.113.10
t=0 0
m=audio 40000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"""

# protocols.md §5.3, the trunk's INVITE.
CARRIER_INVITE = with_body(
    """INVITE sip:+15557654321@203.0.113.10:5060 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-a1;rport
From: <sip:+15551230000@carrier.example>;tag=c-77
To: <sip:+15557654321@bridge.example>
Call-ID: 9f1c@198.51.100.7
CSeq: 101 INVITE
Contact: <sip:gw@198.51.100.7:5060>
Record-Route: <sip:198.51.100.7;lr>
Max-Forwards: 69
Content-Type: application/sdp
""",
    SDP_OFFER,
)

# protocols.md §5.3, our 200 OK.
BRIDGE_OK = with_body(
    """SIP/2.0 200 OK
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-a1;rport=5060;received=198.51.100.7
Record-Route: <sip:198.51.100.7;lr>
From: <sip:+15551230000@carrier.example>;tag=c-77
To: <sip:+15557654321@bridge.example>;tag=b-5e2a
Call-ID: 9f1c@198.51.100.7
CSeq: 101 INVITE
Contact: <sip:bridge@203.0.113.10:5060>
Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, NOTIFY, REFER
Content-Type: application/sdp
""",
    SDP_ANSWER,
)

# protocols.md §7.1, the SIPp UAC scenario's INVITE with its keywords filled in.
SIPP_INVITE = with_body(
    """INVITE sip:bridge@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-4242-1-0
From: "sipp" <sip:sipp@127.0.0.1:5080>;tag=4242SIPpTag001
To: <sip:bridge@127.0.0.1:5060>
Call-ID: 1-4242@127.0.0.1
CSeq: 1 INVITE
Contact: <sip:sipp@127.0.0.1:5080>
Max-Forwards: 70
Content-Type: application/sdp
""",
    """v=0
o=sipp 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0 8 96
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:96 telephone-event/8000
a=fmtp:96 0-15
a=ptime:20
a=sendrecv
""",
)

# RFC 3261 §7.3.3 compact forms, bare LF line ends.
COMPACT_INVITE = b"""INVITE sip:bob@biloxi.example.com SIP/2.0
v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds
t: Bob <sip:bob@biloxi.example.com>
f: Alice <sip:alice@atlanta.example.com>;tag=1928301774
i: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
m: <sip:alice@pc33.atlanta.example.com>
k: replaces, timer
c: application/sdp
l: 4

abcd"""

# RFC 3261 §7.3.1 folding, RFC 4475-style: list values across lines, white space around ':'.
FOLDED_OPTIONS = crlf(
    """OPTIONS sip:bridge@127.0.0.1 SIP/2.0
Via  :  SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-f1,
 SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK-f2
From: <sip:a@b.example>;tag=x
To:
   <sip:bridge@127.0.0.1>
Call-ID: fold
CSeq: 7 OPTIONS
Subject: I know you're there,
\tpick up the phone
Content-Length: 0

"""
)

SAMPLES = [CARRIER_INVITE, BRIDGE_OK, SIPP_INVITE, COMPACT_INVITE, FOLDED_OPTIONS]


def request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


# ---- whole messages ----------------------------------------------------------------------------


def test_carrier_invite() -> None:
    invite = request(CARRIER_INVITE)
    assert invite.method == "INVITE"
    assert invite.uri == "sip:+15557654321@203.0.113.10:5060"
    assert invite.headers.get("via") == "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-a1;rport"
    assert invite.headers.get("CALL-ID") == "9f1c@198.51.100.7"
    assert invite.headers.get("Max-Forwards") == "69"
    assert invite.body == crlf(SDP_OFFER)
    assert [name for name, _ in invite.headers.fields][:5] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
    ]


def test_bridge_ok() -> None:
    ok = parse_message(BRIDGE_OK)
    assert isinstance(ok, SipResponse)
    assert (ok.status, ok.reason) == (200, "OK")
    assert ok.headers.get_all("Allow") == [
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "UPDATE",
        "INFO",
        "NOTIFY",
        "REFER",
    ]
    assert ok.body == crlf(SDP_ANSWER)


def test_sipp_invite() -> None:
    invite = request(SIPP_INVITE)
    assert invite.headers.get("From") == '"sipp" <sip:sipp@127.0.0.1:5080>;tag=4242SIPpTag001'
    assert invite.body.startswith(b"v=0\r\no=sipp 1 1 IN IP4 127.0.0.1\r\n")
    assert invite.body.endswith(b"a=sendrecv\r\n")


def test_compact_forms_are_expanded() -> None:
    invite = request(COMPACT_INVITE)
    assert [name for name, _ in invite.headers.fields] == [
        "Via",
        "To",
        "From",
        "Call-ID",
        "CSeq",
        "Contact",
        "Supported",
        "Content-Type",
        "Content-Length",
    ]
    assert invite.headers.get("i") == "a84b4c76e66710@pc33.atlanta.example.com"
    assert invite.headers.get_all("Supported") == ["replaces", "timer"]
    assert invite.body == b"abcd"


def test_folded_headers_are_unfolded() -> None:
    options = request(FOLDED_OPTIONS)
    assert options.headers.get_all("Via") == [
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-f1",
        "SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK-f2",
    ]
    assert options.headers.get("To") == "<sip:bridge@127.0.0.1>"
    assert options.headers.get("Subject") == "I know you're there, pick up the phone"
    assert options.body == b""


@pytest.mark.parametrize("data", SAMPLES)
def test_serialize_is_stable(data: bytes) -> None:
    message = parse_message(data)
    wire = serialize(message)
    assert parse_message(wire) == message
    assert serialize(parse_message(wire)) == wire


def test_serialize_writes_the_samples_back_byte_for_byte() -> None:
    for data in (CARRIER_INVITE, BRIDGE_OK, SIPP_INVITE):
        assert serialize(parse_message(data)) == data


def test_leading_crlfs_and_bare_lf() -> None:
    head, _, body = CARRIER_INVITE.partition(b"\r\n\r\n")
    invite = request(b"\r\n\r\n" + head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert invite.headers.get("CSeq") == "101 INVITE"
    assert invite.body == crlf(SDP_OFFER)


def test_trailing_garbage_after_content_length_is_ignored_on_a_datagram() -> None:
    assert parse_message(CARRIER_INVITE + b"\x00garbage\r\n\r\nINVITE") == parse_message(
        CARRIER_INVITE
    )


def test_without_content_length_a_datagram_body_runs_to_the_end() -> None:
    data = crlf(
        "MESSAGE sip:b@c SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\n"
        "To: <sip:b@c>\nCall-ID: x\nCSeq: 2 MESSAGE\n\nhello"
    )
    assert request(data).body == b"hello"


def test_a_datagram_without_the_blank_line_is_all_head() -> None:
    data = crlf(
        "OPTIONS sip:b@c SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\n"
        "To: <sip:b@c>\nCall-ID: x\nCSeq: 2 OPTIONS\n"
    )
    assert request(data).headers.get("Call-ID") == "x"


def test_non_utf8_header_bytes_survive() -> None:
    data = CARRIER_INVITE.replace(b"From: <", b'From: "Jos\xe9" <')
    invite = request(data)
    from_value = invite.headers.get("From")
    assert from_value is not None and from_value.startswith('"Jos')
    assert serialize(invite) == data


def test_utf8_display_name() -> None:
    data = CARRIER_INVITE.replace(b"From: <", 'From: "José" <'.encode())
    assert request(data).headers.get("From") == '"José" <sip:+15551230000@carrier.example>;tag=c-77'


# ---- errors ------------------------------------------------------------------------------------


def parse_error(data: bytes, **options: int) -> SipParseError:
    with pytest.raises(SipParseError) as caught:
        parse_message(data, **options)
    return caught.value


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header_is_400_naming_it(name: str) -> None:
    lines = CARRIER_INVITE.split(b"\r\n")
    data = b"\r\n".join(line for line in lines if not line.startswith(name.encode() + b":"))
    error = parse_error(data)
    assert error.status == 400
    assert name in error.reason
    # Enough is kept to answer with the other headers.
    assert isinstance(error.partial, SipRequest)
    assert error.partial.headers.get("Call-ID" if name != "Call-ID" else "Via")


def test_wrong_version_is_505() -> None:
    error = parse_error(CARRIER_INVITE.replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia"))
    assert error.status == 505


def test_content_length_larger_than_the_body_is_400() -> None:
    data = CARRIER_INVITE.replace(b"Content-Length: 221", b"Content-Length: 300")
    assert data != CARRIER_INVITE
    error = parse_error(data)
    assert error.status == 400
    assert error.partial is not None


def test_oversize_is_413() -> None:
    assert parse_error(CARRIER_INVITE, max_size=len(CARRIER_INVITE) - 1).status == 413
    assert request(CARRIER_INVITE.ljust(65535, b"x")).method == "INVITE"
    assert parse_error(CARRIER_INVITE.ljust(65536, b"x")).status == 413


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"CSeq: 101 INVITE", b"CSeq: 101 BYE"),
        (b"CSeq: 101 INVITE", b"CSeq: 4294967296 INVITE"),
        (b"CSeq: 101 INVITE", b"CSeq: INVITE"),
        (b"Content-Length: 221", b"Content-Length: -1"),
        (b"Content-Length: 221", b"Content-Length: 221\r\nContent-Length: 12"),
        (b"Max-Forwards: 69", b"Max-Forwards 69"),
        (b"Max-Forwards: 69", b"Max Forwards: 69"),
        (b"INVITE sip:", b"INV@TE sip:"),
        (b"INVITE sip:+15557654321@203.0.113.10:5060 SIP", b"INVITE SIP"),
    ],
)
def test_malformed_requests_are_400(old: bytes, new: bytes) -> None:
    data = CARRIER_INVITE.replace(old, new, 1)
    assert data != CARRIER_INVITE
    assert parse_error(data).status == 400


def test_the_largest_cseq_number_is_accepted() -> None:
    data = CARRIER_INVITE.replace(b"CSeq: 101", b"CSeq: 4294967295")
    assert request(data).headers.get("CSeq") == "4294967295 INVITE"


@pytest.mark.parametrize(
    "data",
    [
        BRIDGE_OK.replace(b"SIP/2.0 200", b"SIP/3.0 200"),
        BRIDGE_OK.replace(b"SIP/2.0 200", b"SIP/2.0 2000"),
        BRIDGE_OK.replace(b"SIP/2.0 200", b"SIP/2.0 099"),
        BRIDGE_OK.replace(b"Call-ID: 9f1c@198.51.100.7\r\n", b""),
        BRIDGE_OK.replace(b"Content-Length: 204", b"Content-Length: 999"),
        b"",
        b"\r\n\r\n",
    ],
)
def test_broken_responses_and_noise_can_only_be_dropped(data: bytes) -> None:
    assert data != BRIDGE_OK
    assert parse_error(data).status is None


def test_response_without_reason_phrase() -> None:
    data = BRIDGE_OK.replace(b"SIP/2.0 200 OK", b"SIP/2.0 200")
    response = parse_message(data)
    assert isinstance(response, SipResponse)
    assert (response.status, response.reason) == (200, "")
    assert serialize(response) == data


# ---- headers and serialize ---------------------------------------------------------------------


def test_headers_lookups_and_copies() -> None:
    headers = Headers.of([("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"), ("x-foo", "1")])
    assert headers.fields[0][0] == "Via"
    assert headers.get_all("VIA") == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b"]
    assert headers.get("X-FOO") == "1"
    assert "x-Foo" in headers and "v" in headers and "To" not in headers and 3 not in headers
    assert headers.get("To") is None and headers.get_all("To") == []
    headers = headers.with_field("record-route", "<sip:p1;lr>").with_field(
        "Record-Route", "<sip:p2>"
    )
    assert headers.get_all("Record-Route") == ["<sip:p1;lr>", "<sip:p2>"]
    assert headers.without("record-ROUTE").fields == (
        ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"),
        ("x-foo", "1"),
    )
    replaced = headers.replaced("Record-Route", "<sip:p3>")
    assert replaced.get_all("Record-Route") == ["<sip:p3>", "<sip:p2>"]
    assert headers.replaced("Subject", "hi").fields[-1] == ("Subject", "hi")


def test_get_all_keeps_non_list_headers_whole() -> None:
    headers = Headers.of([("Subject", "a, b"), ("Subject", "c"), ("Contact", "*")])
    assert headers.get_all("Subject") == ["a, b", "c"]
    assert headers.get_all("m") == ["*"]


def test_canonical_names() -> None:
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("CSEQ") == "CSeq"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("x") == "Session-Expires"
    assert canonical_name("X-Custom") == "X-Custom"


def test_split_list_respects_quotes_and_brackets() -> None:
    assert split_list('"a, b" <sip:x>, <sip:y;p=1,2>;q=1, sip:z') == [
        '"a, b" <sip:x>',
        "<sip:y;p=1,2>;q=1",
        "sip:z",
    ]
    assert split_list('"esc \\" , still" <sip:x>,sip:y') == ['"esc \\" , still" <sip:x>', "sip:y"]
    assert split_list(" INVITE ,ACK,, BYE ") == ["INVITE", "ACK", "BYE"]


def test_serialize_sets_content_length() -> None:
    message = SipResponse(
        486,
        "Busy Here",
        Headers.of([("Content-Length", "99"), ("Call-ID", "x"), ("l", "7")]),
        b"body",
    )
    assert serialize(message) == (
        b"SIP/2.0 486 Busy Here\r\nContent-Length: 4\r\nCall-ID: x\r\n\r\nbody"
    )
    bye = SipRequest("BYE", "sip:a@b", Headers.of([("Call-ID", "y")]))
    assert serialize(bye) == b"BYE sip:a@b SIP/2.0\r\nCall-ID: y\r\nContent-Length: 0\r\n\r\n"


def test_parse_is_fast() -> None:
    assert 550 <= len(CARRIER_INVITE) <= 700
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(200):
            parse_message(CARRIER_INVITE)
        best = min(best, (time.perf_counter() - start) / 200)
    assert best < 100e-6


# ---- stream framing ----------------------------------------------------------------------------


def frame_all(chunks: list[bytes], framer: SipStreamFramer | None = None) -> list[SipMessage]:
    framer = framer or SipStreamFramer()
    messages: list[SipMessage] = []
    for chunk in chunks:
        framer.feed(chunk)
        while (message := framer.next_message()) is not None:
            messages.append(message)
    return messages


STREAM = b"".join(SAMPLES)
EXPECTED = [parse_message(sample) for sample in SAMPLES]


def random_splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_framer_whole() -> None:
    assert frame_all([STREAM]) == EXPECTED


def test_framer_byte_by_byte() -> None:
    assert frame_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@pytest.mark.parametrize("seed", range(20))
def test_framer_random_splits(seed: int) -> None:
    assert frame_all(random_splits(STREAM, seed)) == EXPECTED


def test_two_messages_in_one_read_come_out_as_two() -> None:
    framer = SipStreamFramer()
    framer.feed(CARRIER_INVITE + BRIDGE_OK)
    assert framer.next_message() == EXPECTED[0]
    assert framer.next_message() == EXPECTED[1]
    assert framer.next_message() is None
    assert framer.buffered == 0


def test_keepalives_are_counted() -> None:
    stream = b"\r\n\r\n" + CARRIER_INVITE + b"\r\n\r\n\r\n\r\n" + BRIDGE_OK + b"\r\n\r\n"
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        framer = SipStreamFramer()
        assert frame_all(chunks, framer) == EXPECTED[:2]
        assert framer.keepalives == 4
        assert framer.buffered == 0


def test_a_partial_keepalive_waits_for_its_last_bytes() -> None:
    framer = SipStreamFramer()
    framer.feed(b"\r\n")
    assert framer.next_message() is None
    assert framer.keepalives == 0
    framer.feed(b"\r\n")
    assert framer.next_message() is None
    assert framer.keepalives == 1


def test_stream_message_without_content_length_loses_framing() -> None:
    data = COMPACT_INVITE.replace(b"l: 4\n", b"")
    framer = SipStreamFramer()
    framer.feed(data)
    with pytest.raises(SipParseError) as caught:
        framer.next_message()
    assert caught.value.status == 400
    assert "Content-Length" in caught.value.reason
    assert framer.framing_lost
    framer.feed(CARRIER_INVITE)
    with pytest.raises(SipParseError):
        framer.next_message()


def test_stream_oversize_is_413() -> None:
    framer = SipStreamFramer(max_size=1000)
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"p" * 1000)
    with pytest.raises(SipParseError) as caught:
        framer.next_message()
    assert caught.value.status == 413

    framer = SipStreamFramer(max_size=1000)
    framer.feed(CARRIER_INVITE.replace(b"Content-Length: 221", b"Content-Length: 900"))
    with pytest.raises(SipParseError) as caught:
        framer.next_message()
    assert caught.value.status == 413


def test_stream_keeps_framing_after_a_message_that_is_only_invalid() -> None:
    no_call_id = CARRIER_INVITE.replace(b"Call-ID: 9f1c@198.51.100.7\r\n", b"")
    framer = SipStreamFramer()
    framer.feed(no_call_id + BRIDGE_OK)
    with pytest.raises(SipParseError) as caught:
        framer.next_message()
    assert caught.value.status == 400 and "Call-ID" in caught.value.reason
    assert not framer.framing_lost
    assert framer.next_message() == EXPECTED[1]


# ---- Hypothesis --------------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_parse_raises_only_sip_parse_error_on_random_bytes(data: bytes) -> None:
    try:
        parse_message(data)
    except SipParseError:
        pass


@given(st.data())
def test_parse_raises_only_sip_parse_error_on_mutated_messages(data: st.DataObject) -> None:
    sample = bytearray(data.draw(st.sampled_from(SAMPLES)))
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(sample) - 1))
        operation = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.sampled_from(b'\r\n :;,<>"\\@[]/0123456789\x00\xff\xc3aZ'))
        if operation == "set":
            sample[index] = byte
        elif operation == "insert":
            sample.insert(index, byte)
        else:
            del sample[index]
    try:
        message = parse_message(bytes(sample))
    except SipParseError:
        return
    # Serializing may add the Content-Length a datagram went without; after that it is stable.
    wire = serialize(message)
    assert serialize(parse_message(wire)) == wire
    assert parse_message(wire).body == message.body


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_framer_raises_only_sip_parse_error_on_random_bytes(chunks: list[bytes]) -> None:
    framer = SipStreamFramer(max_size=2000)
    try:
        frame_all(chunks, framer)
    except SipParseError:
        pass


TOKEN = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,12}", fullmatch=True)
SPECIAL_NAMES = {"via", "from", "to", "call-id", "cseq", "content-length"}
TEXT = st.characters(codec="utf-8", exclude_characters="\r\n")
VALUE = st.text(TEXT, max_size=40).map(lambda text: text.strip(" \t"))
NO_SPACE = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(
    lambda text: not any(char.isspace() for char in text)
)


@st.composite
def messages(draw: st.DrawFn) -> SipMessage:
    body = draw(st.binary(max_size=200))
    is_request = draw(st.booleans())
    method = draw(TOKEN.filter(lambda token: not token.upper().startswith("SIP/")))
    fields = [
        ("Via", draw(VALUE)),
        ("From", draw(VALUE)),
        ("To", draw(VALUE)),
        ("Call-ID", draw(VALUE)),
        ("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}"),
        ("Content-Length", str(len(body))),
    ]
    fields += draw(
        st.lists(
            st.tuples(
                TOKEN.filter(lambda name: canonical_name(name).lower() not in SPECIAL_NAMES),
                VALUE,
            ),
            max_size=8,
        )
    )
    headers = Headers.of(draw(st.permutations(fields)))
    if is_request:
        return SipRequest(method, draw(NO_SPACE), headers, body)
    reason = draw(st.text(TEXT, max_size=30).map(str.strip))
    return SipResponse(draw(st.integers(100, 699)), reason, headers, body)


@given(messages())
def test_round_trip(message: SipMessage) -> None:
    wire = serialize(message)
    assert parse_message(wire) == message
    assert frame_all([wire]) == [message]
