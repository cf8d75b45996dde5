"""The SIP UAS core, fed requests as text (the way sipp writes them) with explicit `now`, checked
on the bytes it sends (parsed back with parse_message) and the events it raises."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.call.events import Codec
from bridge.errors import LocalProtocolError
from bridge.proto.sip.headers import CSeq, NameAddr, Via
from bridge.proto.sip.message import (
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    parse_message,
)
from bridge.proto.sip.sdp import Direction, SessionDescription
from bridge.proto.sip.useragent import (
    CallConfirmed,
    CallTerminated,
    IncomingCall,
    InfoDtmf,
    InviteRefused,
    MediaUpdated,
    Peer,
    SipUserAgent,
    Termination,
    Transport,
    UserAgentEvent,
    UserAgentSettings,
)

US = "203.0.113.10"
GATEWAY = Peer(Transport.UDP, "198.51.100.7", 40000)  # behind NAT: Via says 192.168.1.20:5060
GATEWAY_TCP = Peer(Transport.TCP, "198.51.100.7", 40000)
T1 = 0.5
LINGER = 64 * T1 + 5.0  # the longest any transaction or dialog outlives its last message

OFFER = (
    "v=0\r\n"
    "o=gw 1 1 IN IP4 198.51.100.7\r\n"
    "s=-\r\n"
    "c=IN IP4 198.51.100.7\r\n"
    "t=0 0\r\n"
    "m=audio 30000 RTP/AVP 8 0 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)


def offer(
    *,
    formats: str = "8 0 101",
    port: int = 30000,
    host: str = "198.51.100.7",
    direction: str = "sendrecv",
    proto: str = "RTP/AVP",
    extra: str = "",
) -> str:
    return (
        OFFER.replace("m=audio 30000 RTP/AVP 8 0 101", f"m=audio {port} {proto} {formats}")
        .replace("c=IN IP4 198.51.100.7", f"c=IN IP4 {host}")
        .replace("a=sendrecv", f"a={direction}")
        + extra
    )


def request(
    method: str,
    *,
    branch: str = "z9hG4bK-inv1",
    call_id: str = "9f1c@198.51.100.7",
    from_tag: str = "c-77",
    to_tag: str | None = None,
    cseq: int = 101,
    cseq_method: str | None = None,
    uri: str = "sip:+15557654321@203.0.113.10:5060",
    via: str = "SIP/2.0/UDP 192.168.1.20:5060;branch={branch};rport",
    contact: str | None = "<sip:gw@198.51.100.7:5060>",
    record_route: tuple[str, ...] = (),
    headers: tuple[str, ...] = (),
    body: str = "",
    content_type: str | None = "application/sdp",
) -> bytes:
    """A request as a sipp scenario would write it."""
    to = "<sip:+15557654321@bridge.example>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: " + via.format(branch=branch),
        *(f"Record-Route: {route}" for route in record_route),
        "Max-Forwards: 69",
        f"From: <sip:+15551230000@carrier.example>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += headers
    if body and content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def invite(**kwargs: object) -> bytes:
    kwargs.setdefault("body", OFFER)
    return request("INVITE", **kwargs)  # type: ignore[arg-type]


class Harness:
    """One user agent core, a clock, and the wire as parsed messages."""

    def __init__(self, **overrides: object) -> None:
        settings_kwargs: dict[str, object] = {"contact_host": US, "contact_port": 5060}
        settings_kwargs.update(overrides)
        self.ua = SipUserAgent(
            UserAgentSettings(**settings_kwargs),  # type: ignore[arg-type]
            rng=random.Random(7),
        )
        self.now = 0.0

    def feed(self, data: bytes, source: Peer = GATEWAY) -> list[tuple[SipMessage, Peer]]:
        if source.transport is Transport.UDP:
            self.ua.receive_datagram(data, source, self.now)
        else:
            self.ua.receive_message(parse_message(data), source, self.now)
        return self.sent()

    def sent(self) -> list[tuple[SipMessage, Peer]]:
        return [(parse_message(data), peer) for data, peer in self.ua.messages_to_send()]

    def responses(self, data: bytes, source: Peer = GATEWAY) -> list[SipResponse]:
        out = []
        for message, peer in self.feed(data, source):
            assert isinstance(message, SipResponse)
            assert peer == source  # every response goes back where the request came from
            out.append(message)
        return out

    def events(self) -> list[UserAgentEvent]:
        found = []
        while (event := self.ua.next_event()) is not None:
            found.append(event)
        return found

    def advance(self, until: float) -> list[tuple[float, SipMessage, Peer]]:
        """Run every timer up to `until`, noting when each message went out."""
        out = []
        while (deadline := self.ua.next_deadline()) <= until:
            self.now = deadline
            self.ua.handle_timeout(deadline)
            out += [(deadline, message, peer) for message, peer in self.sent()]
        self.now = until
        return out

    def incoming_call(self, **kwargs: object) -> IncomingCall:
        responses = self.responses(invite(**kwargs))
        assert [r.status for r in responses] == [100]
        (event,) = self.events()
        assert isinstance(event, IncomingCall)
        return event

    def answered_call(self, **kwargs: object) -> tuple[IncomingCall, SipResponse]:
        call = self.incoming_call(**kwargs)
        self.ua.answer(call.call, media_port=40000, now=self.now)
        ((ok, _),) = self.sent()
        assert isinstance(ok, SipResponse)
        assert ok.status == 200
        return call, ok

    def confirmed_call(self, **kwargs: object) -> tuple[IncomingCall, str]:
        """An answered and acknowledged call; returns the event and our To-tag."""
        call, ok = self.answered_call(**kwargs)
        tag = to_tag(ok)
        assert self.feed(request("ACK", branch="z9hG4bK-ack1", to_tag=tag)) == []
        assert self.events() == [CallConfirmed(call.call)]
        return call, tag

    def tables_empty(self) -> bool:
        stats = self.ua.statistics()
        return stats.dialogs == stats.transactions == stats.timers == 0


def to_tag(message: SipMessage) -> str:
    value = message.headers.get("To")
    assert value is not None
    tag = NameAddr.parse(value).tag
    assert tag
    return tag


def answer_of(message: SipMessage) -> SessionDescription:
    assert message.headers.get("Content-Type") == "application/sdp"
    return SessionDescription.parse(message.body)


def origin_version(message: SipMessage) -> int:
    version = answer_of(message).origin_version
    assert version is not None
    return version


def response_to(bye: SipRequest, status: int = 200) -> bytes:
    """The gateway's answer to a request we sent."""
    lines = [f"SIP/2.0 {status} OK"]
    lines += [f"Via: {via}" for via in bye.headers.get_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        lines.append(f"{name}: {bye.headers.get(name)}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---- the happy path ----------------------------------------------------------------------------


def test_happy_path_through_a_record_routing_proxy() -> None:
    h = Harness()
    routes = ("<sip:10.0.0.1;lr>, <sip:10.0.0.2;lr;ftag=x>", "<sip:edge.example;lr>")
    (trying,) = h.responses(invite(record_route=routes))
    assert (trying.status, trying.reason) == (100, "Trying")
    assert NameAddr.parse(trying.headers.get("To") or "").tag is None
    top = Via.parse(trying.headers.get_all("Via")[0])
    assert top.param("received") == "198.51.100.7"
    assert top.param("rport") == "40000"
    assert top.branch == "z9hG4bK-inv1"

    (call,) = h.events()
    assert isinstance(call, IncomingCall)
    assert call.call_id == "9f1c@198.51.100.7"
    assert call.request_uri == "sip:+15557654321@203.0.113.10:5060"
    assert call.from_addr.tag == "c-77"
    assert call.to_addr.uri == "sip:+15557654321@bridge.example"
    assert call.source == GATEWAY
    assert call.headers.get("Max-Forwards") == "69"
    assert (call.audio.codec, call.audio.payload_type) == (Codec.PCMU, 0)
    assert call.audio.dtmf_payload_type == 101
    assert (call.audio.remote_host, call.audio.remote_port) == ("198.51.100.7", 30000)

    h.ua.ring(call.call, h.now)
    ((ringing, peer),) = h.sent()
    assert peer == GATEWAY
    assert isinstance(ringing, SipResponse)
    assert (ringing.status, ringing.reason) == (180, "Ringing")
    assert ringing.headers.get("Contact") == f"<sip:bridge@{US}:5060>"
    expected_routes = ["<sip:10.0.0.1;lr>", "<sip:10.0.0.2;lr;ftag=x>", "<sip:edge.example;lr>"]
    assert ringing.headers.get_all("Record-Route") == expected_routes

    h.now = 1.0
    h.ua.answer(call.call, media_port=40000, now=h.now)
    ((ok, peer),) = h.sent()
    assert peer == GATEWAY
    assert isinstance(ok, SipResponse)
    assert (ok.status, ok.reason) == (200, "OK")
    assert to_tag(ok) == to_tag(ringing)
    assert len(to_tag(ok)) >= 8
    assert ok.headers.get_all("Record-Route") == expected_routes
    assert ok.headers.get_all("Via") == trying.headers.get_all("Via")
    assert ok.headers.get("From") == "<sip:+15551230000@carrier.example>;tag=c-77"
    assert ok.headers.get("Call-ID") == "9f1c@198.51.100.7"
    assert ok.headers.get("CSeq") == "101 INVITE"
    assert ok.headers.get("Contact") == f"<sip:bridge@{US}:5060>"
    assert "INVITE" in ok.headers.get_all("Allow")
    assert "100rel" not in ok.headers.get_all("Supported")
    assert ok.headers.get("Server") == "bridge"
    answer = answer_of(ok)
    assert answer.connection == US
    (audio,) = answer.media
    assert (audio.port, audio.formats) == (40000, ("0", "101"))
    assert answer.media_direction(0) is Direction.SENDRECV

    assert h.feed(request("ACK", branch="z9hG4bK-ack", to_tag=to_tag(ok)), GATEWAY) == []
    assert h.events() == [CallConfirmed(call.call)]
    stats = h.ua.statistics()
    assert (stats.calls_offered, stats.calls_rejected, stats.dialogs) == (1, 0, 1)


def test_ipv6_peer_gets_received_and_our_contact_in_brackets() -> None:
    h = Harness(contact_host="2001:db8::10")
    peer = Peer(Transport.UDP, "2001:db8::7", 5062)
    via = "SIP/2.0/UDP [2001:db8::7]:5062;branch={branch}"
    (trying,) = h.responses(invite(via=via), peer)
    # same host, no rport: nothing to add (RFC 3261 §18.2.1)
    assert trying.headers.get_all("Via") == [via.format(branch="z9hG4bK-inv1")]
    (call,) = h.events()
    assert isinstance(call, IncomingCall)
    h.ua.answer(call.call, media_port=40000, now=0)
    ((ok, _),) = h.sent()
    assert ok.headers.get("Contact") == "<sip:bridge@[2001:db8::10]:5060>"
    assert answer_of(ok).connection == "2001:db8::10"


def test_invite_retransmissions_are_absorbed_before_and_after_the_200() -> None:
    h = Harness()
    call = h.incoming_call()
    assert [r.status for r in h.responses(invite())] == [100]
    h.ua.ring(call.call, h.now)
    h.sent()
    (again,) = h.responses(invite())
    assert again.status == 180
    h.ua.answer(call.call, media_port=40000, now=h.now)
    ((ok, _),) = h.sent()
    assert isinstance(ok, SipResponse)
    (again,) = h.responses(invite())
    assert again == ok
    assert h.events() == []
    assert h.ua.statistics().calls_offered == 1
    assert h.ua.statistics().retransmissions == 3


def test_2xx_is_retransmitted_on_the_rfc_schedule_until_the_ack() -> None:
    h = Harness()
    call, ok = h.answered_call()
    sent = h.advance(20.0)
    times = [when for when, _, _ in sent]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(message == ok and peer == GATEWAY for _, message, peer in sent)
    # the ACK of a 2xx has a branch of its own: it is matched by dialog and CSeq
    assert h.feed(request("ACK", branch="z9hG4bK-other", to_tag=to_tag(ok))) == []
    assert h.events() == [CallConfirmed(call.call)]
    assert h.advance(40.0) == []
    assert h.ua.statistics().dialogs == 1


def test_no_ack_ends_the_call_with_a_bye_after_64_t1() -> None:
    h = Harness()
    call, _ = h.answered_call()
    sent = h.advance(32.0)
    assert [when for when, _, _ in sent][-1] == 32.0
    *retransmissions, (_, bye, peer) = sent
    assert len(retransmissions) == 10  # 0.5 1.5 3.5 7.5 ... 31.5
    assert isinstance(bye, SipRequest)
    assert bye.method == "BYE"
    assert peer == Peer(Transport.UDP, "198.51.100.7", 5060)  # the Contact
    assert h.events() == [
        CallTerminated(call.call, Termination.ACK_TIMEOUT, "no ACK for the 2xx within 32 s")
    ]
    h.feed(response_to(bye))
    h.advance(32.0 + LINGER)
    assert h.tables_empty()


# ---- CANCEL ------------------------------------------------------------------------------------


def test_cancel_before_the_answer_gives_200_and_487() -> None:
    h = Harness()
    call = h.incoming_call()
    h.ua.ring(call.call, h.now)
    ((ringing, _),) = h.sent()
    cancel = request("CANCEL", body="", contact=None)
    ok, terminated = h.responses(cancel)
    assert (ok.status, ok.headers.get("CSeq")) == (200, "101 CANCEL")
    assert to_tag(ok) == to_tag(ringing)
    assert (terminated.status, terminated.reason) == (487, "Request Terminated")
    assert terminated.headers.get("CSeq") == "101 INVITE"
    assert to_tag(terminated) == to_tag(ringing)
    assert h.events() == [CallTerminated(call.call, Termination.CANCEL, "CANCEL")]
    # the leg's late commands are no-ops
    h.ua.answer(call.call, media_port=40000, now=h.now)
    h.ua.hang_up(call.call, h.now)
    assert h.sent() == []
    # a retransmitted CANCEL gets the same 200; the ACK of the 487 is absorbed
    assert h.responses(cancel) == [ok]
    ack = request("ACK", to_tag=to_tag(terminated))  # same branch as the INVITE
    assert h.feed(ack) == []
    assert h.ua.statistics().unmatched == 0
    h.advance(LINGER)
    assert h.tables_empty()


def test_cancel_after_the_answer_gets_200_and_the_call_stands() -> None:
    h = Harness()
    h.answered_call()
    (ok,) = h.responses(request("CANCEL", body="", contact=None))
    assert ok.status == 200
    assert h.events() == []
    assert h.ua.statistics().dialogs == 1


def test_cancel_that_matches_nothing_gets_481() -> None:
    h = Harness()
    (response,) = h.responses(request("CANCEL", branch="z9hG4bK-nothing"))
    assert (response.status, response.reason) == (481, "Call/Transaction Does Not Exist")


# ---- BYE ---------------------------------------------------------------------------------------


def test_bye_from_the_peer_and_its_retransmission() -> None:
    h = Harness()
    call, tag = h.confirmed_call()
    bye = request("BYE", branch="z9hG4bK-bye1", to_tag=tag, cseq=102, contact=None)
    (ok,) = h.responses(bye)
    assert (ok.status, ok.headers.get("CSeq"), to_tag(ok)) == (200, "102 BYE", tag)
    assert h.events() == [CallTerminated(call.call, Termination.BYE, "BYE")]
    h.now = 2.0
    assert h.responses(bye) == [ok]  # Timer J keeps the answer
    assert h.events() == []
    h.ua.hang_up(call.call, h.now)  # the leg hanging up too: nothing to do
    assert h.sent() == []
    h.advance(LINGER)
    assert h.tables_empty()


def test_bye_for_an_unknown_dialog_gets_481() -> None:
    h = Harness()
    (response,) = h.responses(request("BYE", to_tag="nope", contact=None))
    assert response.status == 481
    (response,) = h.responses(request("INFO", branch="z9hG4bK-2", contact=None))
    assert response.status == 481


def test_bye_before_the_ack_ends_the_call_and_its_2xx_retransmissions() -> None:
    h = Harness()
    call, ok = h.answered_call()
    bye = request("BYE", branch="z9hG4bK-bye1", to_tag=to_tag(ok), cseq=102, contact=None)
    assert [r.status for r in h.responses(bye)] == [200]
    assert h.events() == [CallTerminated(call.call, Termination.BYE, "BYE")]
    assert h.advance(LINGER) == []
    assert h.tables_empty()


def test_early_bye_from_the_caller_terminates_the_invite_with_487() -> None:
    h = Harness()
    call = h.incoming_call()
    h.ua.ring(call.call, h.now)
    ((ringing, _),) = h.sent()
    bye = request("BYE", branch="z9hG4bK-b", to_tag=to_tag(ringing), cseq=102, contact=None)
    ok, terminated = h.responses(bye)
    assert (ok.status, terminated.status) == (200, 487)
    assert terminated.headers.get("CSeq") == "101 INVITE"
    assert h.events() == [CallTerminated(call.call, Termination.BYE, "BYE")]


def test_our_bye_after_answer() -> None:
    h = Harness()
    routes = ("<sip:10.0.0.1:5070;lr>, <sip:10.0.0.2;lr>",)
    call, tag = h.confirmed_call(record_route=routes, headers=("CSeq-Extra: x",))
    h.now = 10.0
    h.ua.hang_up(call.call, h.now)
    ((bye, peer),) = h.sent()
    assert isinstance(bye, SipRequest)
    assert peer == Peer(Transport.UDP, "10.0.0.1", 5070)  # the first Route
    assert bye.method == "BYE"
    assert bye.uri == "sip:gw@198.51.100.7:5060"  # the remote target: the INVITE's Contact
    assert bye.headers.get_all("Route") == ["<sip:10.0.0.1:5070;lr>", "<sip:10.0.0.2;lr>"]
    assert bye.headers.get("From") == f"<sip:+15557654321@bridge.example>;tag={tag}"
    assert bye.headers.get("To") == "<sip:+15551230000@carrier.example>;tag=c-77"
    assert bye.headers.get("Call-ID") == "9f1c@198.51.100.7"
    assert CSeq.parse(bye.headers.get("CSeq") or "") == CSeq(1, "BYE")
    assert bye.headers.get("Max-Forwards") == "70"
    via = Via.parse(bye.headers.get_all("Via")[0])
    assert (via.transport, via.host, via.port) == ("UDP", US, 5060)
    assert (via.branch or "").startswith("z9hG4bK")
    assert via.has_param("rport")
    assert bye.body == b""
    assert h.events() == []  # the leg knows it hung up

    # Timer E retransmits until a final response
    sent = h.advance(14.0)
    assert [when for when, _, _ in sent] == [10.5, 11.5, 13.5]
    assert all(message == bye and to == peer for _, message, to in sent)
    # an ACK retransmission and a BYE from the peer that crossed ours: 200, no event
    assert h.feed(request("ACK", branch="z9hG4bK-ack1", to_tag=tag)) == []
    (crossed,) = h.responses(request("BYE", branch="z9hG4bK-x", to_tag=tag, cseq=102))
    assert crossed.status == 200
    assert h.events() == []
    assert h.feed(response_to(bye, 200), Peer(Transport.UDP, "10.0.0.1", 5070)) == []
    assert h.advance(20.0) == []
    assert h.ua.statistics().unmatched == 0
    h.advance(20.0 + LINGER)
    assert h.tables_empty()
    assert h.ua.statistics().unmatched == 0


def test_our_bye_gives_up_with_timer_f() -> None:
    h = Harness()
    call, _ = h.confirmed_call()
    h.ua.hang_up(call.call, h.now)
    h.ua.hang_up(call.call, h.now)  # idempotent
    ((bye, _),) = h.sent()
    assert isinstance(bye, SipRequest)
    sent = h.advance(40.0)
    times = [when for when, _, _ in sent]
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert times[-1] == 31.5
    assert h.tables_empty()
    # a late 200 matches nothing any more
    h.feed(response_to(bye))
    assert h.ua.statistics().unmatched == 1


def test_our_bye_after_a_provisional_retransmits_every_t2() -> None:
    h = Harness()
    call, _ = h.confirmed_call()
    h.ua.hang_up(call.call, h.now)
    ((bye, _),) = h.sent()
    assert isinstance(bye, SipRequest)
    h.feed(response_to(bye, 100))
    assert [when for when, _, _ in h.advance(12.0)] == [0.5, 4.5, 8.5]


@pytest.mark.parametrize(
    ("record_route", "contact", "destination"),
    [
        # a route by name and a Contact by IP literal: the Contact
        (("<sip:edge.example;lr>",), "<sip:gw@198.51.100.9:5080>", ("198.51.100.9", 5080)),
        # names only: back to where the INVITE came from
        ((), "<sip:gw@gw.example>", ("198.51.100.7", 40000)),
        # an IPv6 route without port
        (("<sip:[2001:db8::1];lr>",), "<sip:gw@gw.example>", ("2001:db8::1", 5060)),
    ],
)
def test_bye_destination(
    record_route: tuple[str, ...], contact: str, destination: tuple[str, int]
) -> None:
    h = Harness()
    call, _ = h.confirmed_call(record_route=record_route, contact=contact)
    h.ua.hang_up(call.call, h.now)
    ((_, peer),) = h.sent()
    assert (peer.host, peer.port) == destination
    assert peer.transport is Transport.UDP


def test_bye_through_a_strict_router() -> None:
    h = Harness()
    call, _ = h.confirmed_call(record_route=("<sip:10.0.0.1>", "<sip:10.0.0.2;lr>"))
    h.ua.hang_up(call.call, h.now)
    ((bye, peer),) = h.sent()
    assert isinstance(bye, SipRequest)
    # RFC 3261 §12.2.1.1: the strict router goes in the Request-URI, the target last in Route
    assert bye.uri == "sip:10.0.0.1"
    assert bye.headers.get_all("Route") == ["<sip:10.0.0.2;lr>", "<sip:gw@198.51.100.7:5060>"]
    assert (peer.host, peer.port) == ("10.0.0.1", 5060)


# ---- OPTIONS, capacity -------------------------------------------------------------------------


def test_options_is_answered_200_or_503_when_not_accepting() -> None:
    h = Harness(retry_after_s=30)
    (ok,) = h.responses(request("OPTIONS", contact=None))
    assert ok.status == 200
    assert to_tag(ok)
    assert "INVITE" in ok.headers.get_all("Allow")
    assert ok.headers.get("Accept") == "application/sdp"
    h.ua.accepting = False
    (busy,) = h.responses(request("OPTIONS", branch="z9hG4bK-o2", contact=None))
    assert (busy.status, busy.headers.get("Retry-After")) == (503, "30")
    assert h.events() == []


def test_in_dialog_options_keeps_the_call_alive_even_when_not_accepting() -> None:
    h = Harness()
    _, tag = h.confirmed_call()
    h.ua.accepting = False
    (ok,) = h.responses(request("OPTIONS", branch="z9hG4bK-o", to_tag=tag, cseq=102))
    assert ok.status == 200


def test_not_accepting_rejects_new_invites_with_503() -> None:
    h = Harness()
    h.ua.accepting = False
    trying, busy = h.responses(invite())
    assert trying.status == 100
    assert (busy.status, busy.reason) == (503, "Service Unavailable")
    assert busy.headers.get("Retry-After") == "10"
    assert to_tag(busy)
    (refused,) = h.events()
    assert isinstance(refused, InviteRefused)
    assert (refused.status, refused.source) == (503, GATEWAY)
    assert h.ua.statistics().calls_rejected == 1


# ---- checks on new INVITEs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "header", "value"),
    [
        ({"headers": ("Require: 100rel, timer",)}, 420, "Unsupported", "100rel, timer"),
        ({"body": ""}, 488, "Warning", f'399 {US} "SDP offer required"'),
        ({"content_type": "multipart/mixed;boundary=x"}, 415, "Accept", "application/sdp"),
        ({"body": "hello"}, 400, None, None),
        ({"body": offer(formats="18 101", extra="a=rtpmap:18 G729/8000\r\n")}, 488, None, None),
        ({"body": offer(proto="RTP/SAVP")}, 488, None, None),
        ({"contact": None}, 400, "Warning", f'399 {US} "Missing or unusable Contact"'),
        ({"contact": "<tel:+15551230000>"}, 400, None, None),
    ],
    ids=[
        "require",
        "no-body",
        "content-type",
        "bad-sdp",
        "no-common-codec",
        "srtp",
        "no-contact",
        "tel-contact",
    ],
)
def test_invites_we_cannot_take(
    kwargs: dict[str, object], status: int, header: str | None, value: str | None
) -> None:
    h = Harness()
    trying, final = h.responses(invite(**kwargs))
    assert trying.status == 100
    assert final.status == status
    assert final.headers.get("CSeq") == "101 INVITE"
    assert to_tag(final)
    if header is not None:
        assert final.headers.get(header) == value
    (refused,) = h.events()
    assert isinstance(refused, InviteRefused)
    assert refused.status == status
    assert h.ua.statistics().calls_rejected == 1
    # the ACK of the final is absorbed by the transaction
    assert h.feed(request("ACK", to_tag=to_tag(final))) == []
    assert h.ua.statistics().unmatched == 0


def test_merged_request_gets_482() -> None:
    h = Harness()
    h.incoming_call()
    # the same INVITE forked to us along another path: same Call-ID, From tag, CSeq; new branch
    trying, merged = h.responses(invite(branch="z9hG4bK-fork2"))
    assert (trying.status, merged.status) == (100, 482)
    assert h.events() == []
    # a new INVITE of the same call with a higher CSeq is not a merge
    second = h.responses(invite(branch="z9hG4bK-next", cseq=102))
    assert [r.status for r in second] == [100]


@pytest.mark.parametrize(
    ("method", "status"),
    [
        ("REGISTER", 405),
        ("SUBSCRIBE", 405),
        ("MESSAGE", 405),
        ("PUBLISH", 405),
        ("PRACK", 405),
        ("REFER", 405),
        ("FOO", 501),
    ],
)
def test_methods_we_do_not_serve(method: str, status: int) -> None:
    h = Harness()
    (response,) = h.responses(request(method, contact=None))
    assert response.status == status
    assert response.headers.get_all("Allow") == [
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "UPDATE",
        "INFO",
        "NOTIFY",
    ]


def test_ring_answer_reject_on_unknown_calls_are_no_ops() -> None:
    h = Harness()
    h.ua.ring("nope", 0)
    h.ua.answer("nope", media_port=4000, now=0)
    h.ua.reject("nope", 486, 0)
    h.ua.hang_up("nope", 0)
    assert h.sent() == []
    with pytest.raises(LocalProtocolError):
        h.ua.reject("nope", 200, 0)


# ---- non-2xx finals: Timers G, H, I ------------------------------------------------------------


def test_reject_over_udp_retransmits_until_the_ack() -> None:
    h = Harness()
    call = h.incoming_call()
    h.ua.reject(call.call, 486, h.now, retry_after=60)
    ((busy, _),) = h.sent()
    assert isinstance(busy, SipResponse)
    assert (busy.status, busy.reason, busy.headers.get("Retry-After")) == (486, "Busy Here", "60")
    sent = h.advance(5.0)
    assert [when for when, _, _ in sent] == [0.5, 1.5, 3.5]
    assert all(message == busy for _, message, _ in sent)
    assert h.feed(request("ACK", to_tag=to_tag(busy))) == []
    assert h.advance(9.0) == []  # Timer I (T4) absorbs more ACKs, then the transaction goes
    assert h.feed(request("ACK", to_tag=to_tag(busy))) == []
    assert h.ua.statistics().transactions == 1
    h.advance(10.1)
    assert h.tables_empty()


def test_non_2xx_gives_up_with_timer_h() -> None:
    h = Harness()
    call = h.incoming_call()
    h.ua.hang_up(call.call, h.now)  # before answer: 480
    ((unavailable, _),) = h.sent()
    assert isinstance(unavailable, SipResponse)
    assert unavailable.status == 480
    sent = h.advance(40.0)
    times = [when for when, _, _ in sent]
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert times[-1] == 31.5
    assert h.tables_empty()
    assert h.events() == []


def test_tcp_no_retransmission_of_non_2xx_but_the_2xx_is() -> None:
    h = Harness()
    (_, busy) = h.responses(invite(body=""), GATEWAY_TCP)
    assert busy.status == 488
    assert [type(event) for event in h.events()] == [InviteRefused]
    assert h.advance(40.0) == []
    assert h.tables_empty()

    via = "SIP/2.0/TCP 192.168.1.20:5060;branch={branch};rport"
    h.responses(invite(via=via, branch="z9hG4bK-2", call_id="tcp"), GATEWAY_TCP)
    (call,) = h.events()
    assert isinstance(call, IncomingCall)
    h.ua.answer(call.call, media_port=40000, now=h.now)
    ((ok, peer),) = h.sent()
    assert peer == GATEWAY_TCP
    assert ok.headers.get("Contact") == f"<sip:bridge@{US}:5060;transport=tcp>"
    assert [when for when, _, _ in h.advance(h.now + 4.0)] == [40.5, 41.5, 43.5]
    ack = request("ACK", via=via, branch="z9hG4bK-a", call_id="tcp", to_tag=to_tag(ok))
    assert h.feed(ack, GATEWAY_TCP) == []
    h.ua.hang_up(call.call, h.now)
    ((bye, peer),) = h.sent()
    assert isinstance(bye, SipRequest)
    assert peer == Peer(Transport.TCP, "198.51.100.7", 5060)
    assert (bye.headers.get_all("Via")[0]).startswith(f"SIP/2.0/TCP {US}:5060;branch=")
    assert h.advance(h.now + 10.0) == []  # no Timer E on TCP
    h.feed(response_to(bye), GATEWAY_TCP)
    h.advance(h.now + 64 * T1)
    assert h.tables_empty()


# ---- re-INVITE and UPDATE ----------------------------------------------------------------------


def reinvite(tag: str, body: str, *, cseq: int = 102, branch: str = "z9hG4bK-re1") -> bytes:
    return invite(to_tag=tag, cseq=cseq, branch=branch, body=body)


def test_reinvite_hold_and_resume() -> None:
    h = Harness()
    _, ok = h.answered_call()
    tag = to_tag(ok)
    h.feed(request("ACK", branch="z9hG4bK-a", to_tag=tag))
    h.events()
    first_version = origin_version(ok)

    (held,) = h.responses(reinvite(tag, offer(direction="sendonly")))
    assert held.status == 200
    assert answer_of(held).media_direction(0) is Direction.RECVONLY
    assert origin_version(held) == first_version + 1
    (event,) = h.events()
    assert isinstance(event, MediaUpdated)
    assert event.audio.direction is Direction.RECVONLY
    h.feed(request("ACK", branch="z9hG4bK-a2", to_tag=tag, cseq=102))

    # a session refresh repeating the same offer: same answer, same version, no event
    (again,) = h.responses(reinvite(tag, offer(direction="sendonly"), cseq=103, branch="z9"))
    assert origin_version(again) == first_version + 1
    assert h.events() == []
    h.feed(request("ACK", branch="z9hG4bK-a3", to_tag=tag, cseq=103))

    # resume, from a new media address (a relay or a transfer)
    resumed_offer = offer(host="198.51.100.99", port=31000)
    (resumed,) = h.responses(reinvite(tag, resumed_offer, cseq=104, branch="z9hG4bK-re4"))
    assert answer_of(resumed).media_direction(0) is Direction.SENDRECV
    assert origin_version(resumed) == first_version + 2
    (event,) = h.events()
    assert isinstance(event, MediaUpdated)
    assert (event.audio.remote_host, event.audio.remote_port) == ("198.51.100.99", 31000)
    assert event.audio.direction is Direction.SENDRECV
    assert event.audio.codec is Codec.PCMU


def test_reinvite_keeps_the_codec_under_a_new_payload_type_or_gets_488() -> None:
    h = Harness()
    call, tag = h.confirmed_call()
    assert call.audio.codec is Codec.PCMU
    dynamic = offer(formats="8 112 101", extra="a=rtpmap:112 PCMU/8000\r\n")
    (ok,) = h.responses(reinvite(tag, dynamic))
    assert ok.status == 200
    assert answer_of(ok).media[0].formats == ("112", "101")
    (event,) = h.events()
    assert isinstance(event, MediaUpdated)
    assert (event.audio.codec, event.audio.payload_type) == (Codec.PCMU, 112)
    h.feed(request("ACK", branch="z9hG4bK-a2", to_tag=tag, cseq=102))

    # PCMA only: the model's format cannot change mid-call
    (refused,) = h.responses(reinvite(tag, offer(formats="8 101"), cseq=103, branch="z9hG4bK-3"))
    assert refused.status == 488
    assert h.events() == []
    assert h.feed(request("ACK", branch="z9hG4bK-3", to_tag=tag, cseq=103)) == []
    # the dialog is unchanged: the next refresh is answered with PT 112 as before
    (ok,) = h.responses(reinvite(tag, dynamic, cseq=104, branch="z9hG4bK-4"))
    assert answer_of(ok).media[0].formats == ("112", "101")
    assert h.events() == []


def test_reinvite_without_sdp_offers_in_the_200_and_takes_the_answer_from_the_ack() -> None:
    h = Harness()
    _, ok = h.answered_call()
    tag = to_tag(ok)
    h.feed(request("ACK", branch="z9hG4bK-a", to_tag=tag))
    h.events()
    (ours,) = h.responses(reinvite(tag, ""))
    assert ours.status == 200
    our_offer = answer_of(ours)
    assert our_offer.media[0].formats == ("0", "101")
    assert our_offer.media_direction(0) is Direction.SENDRECV
    assert origin_version(ours) == origin_version(ok)  # our description did not change
    assert h.events() == []
    # a second offer before the answer arrived: 500 + Retry-After (RFC 3261 §14.2)
    (busy,) = h.responses(reinvite(tag, OFFER, cseq=103, branch="z9hG4bK-x"))
    assert busy.status == 500
    assert busy.headers.get("Retry-After") is not None
    their_answer = offer(formats="0 101", port=32000, direction="recvonly")
    ack = request("ACK", branch="z9hG4bK-a2", to_tag=tag, cseq=102, body=their_answer)
    assert h.feed(ack) == []
    (event,) = h.events()
    assert isinstance(event, MediaUpdated)
    assert (event.audio.remote_port, event.audio.direction) == (32000, Direction.SENDONLY)


def test_reinvite_2xx_is_retransmitted_until_its_ack_and_times_out_without() -> None:
    h = Harness()
    call, tag = h.confirmed_call()
    (ok,) = h.responses(reinvite(tag, OFFER))
    sent = h.advance(32.0)
    assert all(message == ok for _, message, _ in sent[:-1])
    assert [when for when, _, _ in sent][:3] == [0.5, 1.5, 3.5]
    assert isinstance(sent[-1][1], SipRequest)
    assert sent[-1][1].method == "BYE"
    assert h.events() == [
        CallTerminated(call.call, Termination.ACK_TIMEOUT, "no ACK for the 2xx within 32 s")
    ]


def test_reinvite_updates_the_remote_target() -> None:
    h = Harness()
    call, tag = h.confirmed_call()
    new_contact = "<sip:gw@198.51.100.50:5090>"
    h.responses(invite(to_tag=tag, cseq=102, branch="z9hG4bK-r", contact=new_contact))
    h.feed(request("ACK", branch="z9hG4bK-a2", to_tag=tag, cseq=102))
    h.ua.hang_up(call.call, h.now)
    ((bye, peer),) = h.sent()
    assert isinstance(bye, SipRequest)
    assert bye.uri == "sip:gw@198.51.100.50:5090"
    assert (peer.host, peer.port) == ("198.51.100.50", 5090)


def test_reinvite_during_the_early_dialog_or_out_of_order_gets_500() -> None:
    h = Harness()
    call = h.incoming_call()
    h.ua.ring(call.call, h.now)
    ((ringing, _),) = h.sent()
    (busy,) = h.responses(reinvite(to_tag(ringing), OFFER))
    assert busy.status == 500
    assert busy.headers.get("Retry-After") is not None

    h2 = Harness()
    _, tag = h2.confirmed_call()
    (ok,) = h2.responses(request("INFO", branch="z9hG4bK-i", to_tag=tag, cseq=110))
    assert ok.status == 200
    (late,) = h2.responses(request("INFO", branch="z9hG4bK-j", to_tag=tag, cseq=105))
    assert late.status == 500


def test_reinvite_for_an_unknown_dialog_gets_481() -> None:
    h = Harness()
    (response,) = h.responses(reinvite("unknown", OFFER))
    assert response.status == 481
    assert h.feed(request("ACK", branch="z9hG4bK-re1", to_tag="unknown", cseq=102)) == []


def test_update_with_and_without_sdp() -> None:
    h = Harness()
    _, tag = h.confirmed_call()
    (refresh,) = h.responses(
        request(
            "UPDATE", branch="z9hG4bK-u1", to_tag=tag, cseq=102, headers=("Session-Expires: 1800",)
        )
    )
    assert refresh.status == 200
    assert refresh.body == b""
    assert refresh.headers.get("Contact") == f"<sip:bridge@{US}:5060>"
    assert "timer" not in refresh.headers.get_all("Supported")
    held = offer(direction="inactive")
    (ok,) = h.responses(request("UPDATE", branch="z9hG4bK-u2", to_tag=tag, cseq=103, body=held))
    assert ok.status == 200
    assert answer_of(ok).media_direction(0) is Direction.INACTIVE
    (event,) = h.events()
    assert isinstance(event, MediaUpdated)
    assert event.audio.direction is Direction.INACTIVE
    pcma_only = offer(formats="8")
    (refused,) = h.responses(
        request("UPDATE", branch="z9hG4bK-u3", to_tag=tag, cseq=104, body=pcma_only)
    )
    assert refused.status == 488


def test_update_with_an_offer_before_the_answer_gets_500() -> None:
    h = Harness()
    call = h.incoming_call()
    h.ua.ring(call.call, h.now)
    ((ringing, _),) = h.sent()
    update = request("UPDATE", branch="z9hG4bK-u", to_tag=to_tag(ringing), cseq=102, body=OFFER)
    (busy,) = h.responses(update)
    assert busy.status == 500
    plain = request("UPDATE", branch="z9hG4bK-u2", to_tag=to_tag(ringing), cseq=103)
    assert [r.status for r in h.responses(plain)] == [200]


# ---- INFO and NOTIFY ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "digit"),
    [
        ("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n", "5"),
        ("application/dtmf-relay", "Signal= #\r\nDuration=160\r\n", "#"),
        ("application/dtmf-relay", "Signal=10\r\n", "*"),
        ("application/dtmf", "9", "9"),
        ("application/dtmf-relay", "Signal=x\r\n", None),
        ("application/json", "{}", None),
    ],
)
def test_info_dtmf(content_type: str, body: str, digit: str | None) -> None:
    h = Harness()
    call, tag = h.confirmed_call()
    info = request(
        "INFO", branch="z9hG4bK-i", to_tag=tag, cseq=102, body=body, content_type=content_type
    )
    (ok,) = h.responses(info)
    assert ok.status == 200
    assert h.events() == ([InfoDtmf(call.call, digit)] if digit else [])


def test_notify_in_dialog_gets_200_and_outside_481() -> None:
    h = Harness()
    _, tag = h.confirmed_call()
    headers = ("Event: refer", "Subscription-State: active")
    notify = request(
        "NOTIFY",
        branch="z9hG4bK-n",
        to_tag=tag,
        cseq=102,
        headers=headers,
        body="SIP/2.0 100 Trying\r\n",
        content_type="message/sipfrag;version=2.0",
    )
    assert [r.status for r in h.responses(notify)] == [200]
    outside = request("NOTIFY", branch="z9hG4bK-n2", call_id="other", headers=headers)
    assert [r.status for r in h.responses(outside)] == [481]


# ---- what we drop ------------------------------------------------------------------------------


def test_sources_outside_allow_from_are_dropped_silently() -> None:
    h = Harness(allow_from=(ipaddress.ip_network("10.0.0.0/8"),))
    assert h.feed(invite()) == []
    assert h.events() == []
    inside = Peer(Transport.UDP, "10.1.2.3", 5060)
    assert [r.status for r in h.responses(invite(), inside)] == [100]
    mapped = Peer(Transport.UDP, "::ffff:10.1.2.3", 5060)
    assert [r.status for r in h.responses(request("OPTIONS"), mapped)] == [200]
    stats = h.ua.statistics()
    assert (stats.refused_sources, stats.requests_in) == (1, 2)


def test_malformed_datagrams_are_counted_and_answered_when_possible() -> None:
    h = Harness()
    assert h.feed(b"\r\n\r\n") == []  # a keep-alive is not malformed
    assert h.ua.statistics().malformed == 0
    assert h.feed(b"\x00\x01garbage") == []
    assert h.ua.statistics().malformed == 1
    # the CSeq method disagrees with the request line: 400, copied headers
    (bad,) = h.responses(request("OPTIONS", cseq_method="INVITE"))
    assert bad.status == 400
    assert bad.headers.get("Call-ID") == "9f1c@198.51.100.7"
    assert Via.parse(bad.headers.get_all("Via")[0]).param("rport") == "40000"
    # SIP/3.0: 505 from a line scan of the head
    wrong_version = request("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
    (version,) = h.responses(wrong_version)
    assert (version.status, version.reason) == (505, "Version Not Supported")
    # no Call-ID: nothing to answer with
    no_call_id = request("OPTIONS").replace(b"Call-ID: 9f1c@198.51.100.7\r\n", b"")
    assert h.feed(no_call_id) == []
    # an unreadable Via in an otherwise whole message
    assert h.feed(request("OPTIONS", via="garbage")) == []
    # a broken ACK is never answered
    assert h.feed(request("ACK", cseq_method="BYE")) == []
    assert h.ua.statistics().malformed == 6
    assert h.events() == []


def test_framer_errors_from_tcp_are_counted_and_answered() -> None:
    h = Harness()
    try:
        parse_message(request("OPTIONS", cseq_method="BYE"))
    except SipParseError as error:
        h.ua.receive_malformed(error, GATEWAY_TCP, h.now)
    else:
        pytest.fail("no parse error")
    ((bad, peer),) = h.sent()
    assert (bad.status if isinstance(bad, SipResponse) else None, peer) == (400, GATEWAY_TCP)
    assert h.ua.statistics().malformed == 1


def test_stray_responses_and_acks_are_counted() -> None:
    h = Harness()
    stray = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKnope\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n"
    )
    assert h.feed(stray) == []
    assert h.feed(request("ACK", to_tag="zzz")) == []
    stats = h.ua.statistics()
    assert (stats.unmatched, stats.responses_in, stats.requests_in) == (2, 1, 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500))
def test_random_garbage_never_raises(data: bytes) -> None:
    ua = SipUserAgent(UserAgentSettings(contact_host=US, contact_port=5060), rng=random.Random(1))
    ua.receive_datagram(data, GATEWAY, 0.0)
    ua.handle_timeout(100.0)
    assert ua.next_event() is None


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 900), st.integers(0, 40), st.binary(max_size=30))
def test_mutated_invites_never_raise(position: int, cut: int, insert: bytes) -> None:
    data = invite(record_route=("<sip:10.0.0.1;lr>",))
    position %= len(data)
    mutated = data[:position] + insert + data[position + cut :]
    ua = SipUserAgent(UserAgentSettings(contact_host=US, contact_port=5060), rng=random.Random(1))
    ua.receive_datagram(mutated, GATEWAY, 0.0)
    while (event := ua.next_event()) is not None:
        if isinstance(event, IncomingCall):
            ua.ring(event.call, 0.0)
            ua.answer(event.call, media_port=4000, now=0.0)
            ua.hang_up(event.call, 1.0)
    for data_out, _ in ua.messages_to_send():
        parse_message(data_out)  # everything we send parses
    ua.handle_timeout(100.0)  # no ACK: the 2xx times out, which frees the BYE hang_up() asked for
    ua.handle_timeout(200.0)  # and the BYE's own timers run out
    assert ua.statistics().dialogs == 0


# ---- a whole run -------------------------------------------------------------------------------

_ACTIONS = st.sampled_from(
    [
        "invite",
        "invite-again",
        "ring",
        "answer",
        "reject",
        "hang_up",
        "ack",
        "cancel",
        "bye",
        "reinvite",
        "reinvite-empty",
        "update",
        "info",
        "wait",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_ACTIONS, st.integers(0, 2)), max_size=30))
def test_any_sequence_of_requests_and_commands_leaves_no_state_behind(
    steps: list[tuple[str, int]],
) -> None:
    """Three calls, driven in any order: nothing raises, every message we send parses, and once
    everything is hung up and the timers ran out, the tables are empty."""
    h = Harness()
    calls: dict[int, str] = {}
    tags: dict[int, str] = {}
    cseqs = dict.fromkeys(range(3), 101)

    def call_kwargs(n: int) -> dict[str, object]:
        return {"call_id": f"call-{n}", "branch": f"z9hG4bK-inv{n}"}

    def record(out: list[tuple[SipMessage, Peer]]) -> None:
        for message, _ in out:
            if isinstance(message, SipResponse) and message.status > 100:
                value = message.headers.get("Call-ID") or ""
                if value.startswith("call-"):
                    tags.setdefault(int(value[5:]), to_tag(message))

    def in_dialog(method: str, n: int, **extra: object) -> None:
        cseqs[n] += 1
        branch = f"z9hG4bK-{method}{n}-{cseqs[n]}"
        data = request(
            method,
            call_id=f"call-{n}",
            to_tag=tags.get(n, "x"),
            cseq=cseqs[n],
            branch=branch,
            **extra,  # type: ignore[arg-type]
        )
        record(h.feed(data))

    for action, n in steps:
        if action in ("invite", "invite-again"):
            record(h.feed(invite(**call_kwargs(n))))
        elif action in ("ring", "answer", "reject", "hang_up") and n in calls:
            if action == "ring":
                h.ua.ring(calls[n], h.now)
            elif action == "answer":
                h.ua.answer(calls[n], media_port=4000, now=h.now)
            elif action == "reject":
                h.ua.reject(calls[n], 486, h.now)
            else:
                h.ua.hang_up(calls[n], h.now)
            record(h.sent())
        elif action == "ack":
            data = request("ACK", call_id=f"call-{n}", to_tag=tags.get(n, "x"), cseq=cseqs[n])
            record(h.feed(data))
        elif action == "cancel":
            record(h.feed(request("CANCEL", **call_kwargs(n))))  # type: ignore[arg-type]
        elif action == "bye":
            in_dialog("BYE", n)
        elif action == "reinvite":
            in_dialog("INVITE", n, body=offer(direction="sendonly"))
        elif action == "reinvite-empty":
            in_dialog("INVITE", n)
        elif action == "update":
            in_dialog("UPDATE", n, body=OFFER)
        elif action == "info":
            in_dialog("INFO", n, body="Signal=1", content_type="application/dtmf-relay")
        else:
            for _, message, _ in h.advance(h.now + 2.0 * (n + 1)):
                record([(message, GATEWAY)])
        for event in h.events():
            if isinstance(event, IncomingCall):
                calls[int(event.call_id[5:])] = event.call
    for call in calls.values():
        h.ua.hang_up(call, h.now)
    h.sent()
    h.advance(h.now + 2 * LINGER)
    assert h.tables_empty(), h.ua.statistics()


def test_tables_are_empty_after_a_call_and_its_timers() -> None:
    h = Harness()
    _, tag = h.confirmed_call()
    h.responses(request("OPTIONS", branch="z9hG4bK-o", to_tag=tag, cseq=102))
    (ok,) = h.responses(request("BYE", branch="z9hG4bK-b", to_tag=tag, cseq=103))
    assert ok.status == 200
    assert h.ua.statistics().dialogs == 0
    assert h.ua.statistics().transactions > 0
    h.advance(LINGER)
    assert h.tables_empty()
    assert h.ua.next_deadline() == float("inf")


def test_three_hundred_interleaved_calls_stay_linear() -> None:
    h = Harness()
    count = 300
    started = time.perf_counter()
    keys: list[str] = []
    tags: list[str] = []
    for n in range(count):
        h.now = n * 0.01
        h.feed(invite(call_id=f"c{n}", branch=f"z9hG4bK-{n}"))
        (event,) = h.events()
        assert isinstance(event, IncomingCall)
        keys.append(event.call)
        h.ua.ring(event.call, h.now)
        h.sent()
    for n, key in enumerate(keys):
        h.ua.answer(key, media_port=10000 + 2 * n, now=h.now)
        ((ok, _),) = h.sent()
        tags.append(to_tag(ok))
    assert h.ua.statistics().dialogs == count
    h.advance(h.now + 0.6)  # one round of 2xx retransmissions for all of them
    for n, tag in enumerate(tags):
        h.feed(request("ACK", call_id=f"c{n}", branch=f"z9hG4bK-a{n}", to_tag=tag))
    assert sum(isinstance(e, CallConfirmed) for e in h.events()) == count
    for n, tag in enumerate(tags):
        if n % 2:
            h.feed(request("BYE", call_id=f"c{n}", branch=f"z9hG4bK-b{n}", to_tag=tag, cseq=102))
        else:
            h.ua.hang_up(keys[n], h.now)
            ((bye, peer),) = h.sent()
            assert isinstance(bye, SipRequest)
            h.feed(response_to(bye), peer)
    assert sum(isinstance(e, CallTerminated) for e in h.events()) == count // 2
    h.advance(h.now + LINGER)
    assert h.tables_empty()
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, elapsed


# ---- corners -----------------------------------------------------------------------------------


def test_hang_up_before_the_ack_waits_for_it_then_sends_bye() -> None:
    # RFC 3261 §15: no BYE on a confirmed dialog before the ACK of our 2xx (or its timeout)
    h = Harness()
    call, ok = h.answered_call()
    h.advance(1.0)
    h.ua.hang_up(call.call, h.now)
    assert h.sent() == []
    h.ua.hang_up(call.call, h.now)  # idempotent
    # the 2xx goes on being retransmitted, and resent to INVITE retransmissions
    assert [(when, message) for when, message, _ in h.advance(2.0)] == [(1.5, ok)]
    assert h.responses(invite()) == [ok]
    ((bye, peer),) = h.feed(request("ACK", branch="z9hG4bK-a", to_tag=to_tag(ok)))
    assert isinstance(bye, SipRequest)
    assert bye.method == "BYE"
    assert peer == Peer(Transport.UDP, "198.51.100.7", 5060)  # the Contact
    assert CSeq.parse(bye.headers.get("CSeq") or "") == CSeq(1, "BYE")
    assert h.events() == []  # no CallConfirmed: the leg has hung up
    # only the BYE is retransmitted now; a late ACK retransmission is absorbed
    assert h.feed(request("ACK", branch="z9hG4bK-a", to_tag=to_tag(ok))) == []
    sent = h.advance(4.0)
    assert [(when, message) for when, message, _ in sent] == [(2.5, bye), (3.5, bye)]
    h.feed(response_to(bye))
    h.advance(4.0 + LINGER)
    assert h.tables_empty()
    assert h.events() == []
    with pytest.raises(LocalProtocolError):
        h.ua.answer(h.incoming_call(branch="z9hG4bK-2", call_id="x").call, media_port=0, now=h.now)


def test_hang_up_before_an_ack_that_never_comes_sends_bye_at_the_timeout_without_an_event() -> None:
    h = Harness()
    call, ok = h.answered_call()
    h.advance(10.0)
    h.ua.hang_up(call.call, h.now)
    sent = h.advance(32.0)
    *retransmissions, (when, bye, peer) = sent
    assert [when for when, _, _ in retransmissions] == [11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(message == ok for _, message, _ in retransmissions)
    assert when == 32.0
    assert isinstance(bye, SipRequest)
    assert bye.method == "BYE"
    assert peer == Peer(Transport.UDP, "198.51.100.7", 5060)
    assert h.events() == []  # the leg asked for the end: no CallTerminated(ACK_TIMEOUT)
    h.feed(response_to(bye))
    h.advance(32.0 + LINGER)
    assert h.tables_empty()
    assert h.events() == []


def test_hang_up_while_a_reinvite_2xx_awaits_its_ack() -> None:
    h = Harness()
    call, tag = h.confirmed_call()
    (ours,) = h.responses(reinvite(tag, ""))  # no SDP: our offer in the 200, the answer in the ACK
    assert ours.status == 200
    h.ua.hang_up(call.call, h.now)
    assert h.sent() == []
    assert [message for _, message, _ in h.advance(0.5)] == [ours]
    their_answer = offer(formats="0 101", port=32000)
    ack = request("ACK", branch="z9hG4bK-a2", to_tag=tag, cseq=102, body=their_answer)
    ((bye, _),) = h.feed(ack)
    assert isinstance(bye, SipRequest)
    assert bye.method == "BYE"
    assert h.events() == []  # no MediaUpdated for a call that is ending
    h.feed(response_to(bye))
    h.advance(LINGER)
    assert h.tables_empty()


def test_a_pending_bye_waits_for_every_2xx_awaiting_its_ack() -> None:
    h = Harness()
    call, ok = h.answered_call()
    tag = to_tag(ok)
    (reinvited,) = h.responses(reinvite(tag, OFFER))  # before the first ACK: legal, if odd
    assert reinvited.status == 200
    h.ua.hang_up(call.call, h.now)
    assert h.feed(request("ACK", branch="z9hG4bK-a", to_tag=tag)) == []
    ((bye, _),) = h.feed(request("ACK", branch="z9hG4bK-a2", to_tag=tag, cseq=102))
    assert isinstance(bye, SipRequest)
    assert bye.method == "BYE"
    assert h.events() == []


def test_the_peer_ending_the_call_while_our_bye_is_pending() -> None:
    h = Harness()
    call, ok = h.answered_call()
    tag = to_tag(ok)
    h.ua.hang_up(call.call, h.now)
    # a re-INVITE is refused like during our BYE; INFO gets 200 and raises no event
    (refused,) = h.responses(reinvite(tag, OFFER))
    assert refused.status == 481
    info = request(
        "INFO",
        branch="z9hG4bK-i",
        to_tag=tag,
        cseq=103,
        body="Signal=1",
        content_type="application/dtmf-relay",
    )
    assert [r.status for r in h.responses(info)] == [200]
    (bye_ok,) = h.responses(request("BYE", branch="z9hG4bK-b", to_tag=tag, cseq=104))
    assert bye_ok.status == 200
    assert h.events() == []
    # no BYE of ours, and the 2xx is not retransmitted any more
    sent = h.advance(LINGER)
    assert [message for _, message, _ in sent if message != refused] == []
    assert h.tables_empty()
    h.ua.hang_up(call.call, h.now)
    assert h.sent() == []


def test_requests_while_our_bye_is_in_flight() -> None:
    h = Harness()
    call, tag = h.confirmed_call()
    h.ua.hang_up(call.call, h.now)
    ((bye, _),) = h.sent()
    assert isinstance(bye, SipRequest)
    (refused,) = h.responses(reinvite(tag, OFFER, cseq=102))
    assert refused.status == 481
    update = request("UPDATE", branch="z9hG4bK-u", to_tag=tag, cseq=103, body=OFFER)
    assert [r.status for r in h.responses(update)] == [481]
    info = request(
        "INFO",
        branch="z9hG4bK-i",
        to_tag=tag,
        cseq=104,
        body="Signal=1",
        content_type="application/dtmf-relay",
    )
    assert [r.status for r in h.responses(info)] == [200]
    assert h.events() == []
    # the 200 to our BYE, then its retransmission during Timer K
    assert h.feed(response_to(bye)) == []
    assert h.feed(response_to(bye)) == []
    assert h.ua.statistics().unmatched == 0
    h.advance(LINGER)
    assert h.tables_empty()


def test_out_of_order_reinvite_gets_500() -> None:
    h = Harness()
    _, tag = h.confirmed_call()
    (ok,) = h.responses(request("INFO", branch="z9hG4bK-i", to_tag=tag, cseq=110))
    assert ok.status == 200
    (late,) = h.responses(reinvite(tag, OFFER, cseq=105))
    assert (late.status, late.headers.get("CSeq")) == (500, "105 INVITE")
    assert late.headers.get("Retry-After") is not None
    # but a late BYE still ends the call
    (ok,) = h.responses(request("BYE", branch="z9hG4bK-b", to_tag=tag, cseq=106))
    assert ok.status == 200
    assert [type(event) for event in h.events()] == [CallTerminated]


@pytest.mark.parametrize(
    "body",
    ["", "not sdp", offer(formats="8 101")],
    ids=["no-answer", "unreadable", "other-codec"],
)
def test_unusable_answer_in_the_ack_leaves_the_call_as_it_was(body: str) -> None:
    h = Harness()
    _, tag = h.confirmed_call()
    (ours,) = h.responses(reinvite(tag, ""))
    assert ours.status == 200
    ack = request("ACK", branch="z9hG4bK-a2", to_tag=tag, cseq=102, body=body)
    assert h.feed(ack) == []
    assert h.events() == []
    assert h.ua.statistics().malformed == 1
    assert h.advance(40.0) == []  # the ACK still stopped the 2xx retransmissions


def test_tcp_non_invite_keeps_no_transaction_and_acks_end_the_invite_at_once() -> None:
    h = Harness()
    via = "SIP/2.0/TCP 192.168.1.20:5060;branch={branch}"
    (ok,) = h.responses(request("OPTIONS", via=via), GATEWAY_TCP)
    assert ok.status == 200
    assert h.ua.statistics().transactions == 0  # Timer J = 0 on TCP
    h.responses(invite(via=via, branch="z9hG4bK-i"), GATEWAY_TCP)
    (call,) = h.events()
    assert isinstance(call, IncomingCall)
    h.ua.reject(call.call, 603, h.now)
    ((declined, _),) = h.sent()
    assert isinstance(declined, SipResponse)
    assert (declined.status, declined.reason) == (603, "Decline")
    ack = request("ACK", via=via, branch="z9hG4bK-i", to_tag=to_tag(declined))
    assert h.feed(ack, GATEWAY_TCP) == []
    assert h.tables_empty()  # Timer I = 0 on TCP


def test_options_with_a_to_tag_of_no_dialog_is_still_answered() -> None:
    h = Harness()
    (ok,) = h.responses(request("OPTIONS", to_tag="stale"))
    assert (ok.status, to_tag(ok)) == (200, "stale")


def test_refused_source_over_tcp() -> None:
    h = Harness(allow_from=(ipaddress.ip_network("10.0.0.0/8"),))
    assert h.feed(request("OPTIONS"), GATEWAY_TCP) == []
    try:
        parse_message(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
    except SipParseError as error:
        h.ua.receive_malformed(error, GATEWAY_TCP, h.now)
    stats = h.ua.statistics()
    assert (stats.refused_sources, stats.malformed) == (2, 0)
