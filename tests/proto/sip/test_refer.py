"""Blind transfer from the UAS core (RFC 3515 REFER, RFC 3892 Referred-By, RFC 5589 §6): the
REFER on the wire, its retransmission, the 202 and the NOTIFY sipfrags turned into events, and
every way the transfer can fail, with explicit `now`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import LocalProtocolError
from bridge.proto.sip.headers import CSeq, Via
from bridge.proto.sip.message import SipRequest, SipResponse
from bridge.proto.sip.useragent import (
    CallConfirmed,
    CallTerminated,
    IncomingCall,
    Peer,
    ReferAnswered,
    ReferProgress,
    ReferTimedOut,
    Termination,
    Transport,
    UserAgentEvent,
)
from tests.proto.sip.test_useragent import (
    GATEWAY_TCP,
    LINGER,
    US,
    Harness,
    invite,
    request,
    response_to,
    to_tag,
)

TARGET = "sip:2001@pbx.example"
REFERRER = "sip:+15557654321@bridge.example"
PROXY = Peer(Transport.UDP, "10.0.0.1", 5070)
CONTACT = Peer(Transport.UDP, "198.51.100.7", 5060)  # the INVITE's Contact: the remote target
TIMEOUT = 32.0  # 64 * T1


def answer(refer: SipRequest, status: int, reason: str) -> bytes:
    """The peer's response to our REFER, with the reason phrase we want to see reported."""
    return response_to(refer, status).replace(b" OK\r\n", f" {reason}\r\n".encode(), 1)


def notify(
    tag: str,
    sipfrag: str,
    *,
    cseq: int,
    state: str = "active;expires=60",
    event: str = "refer",
    branch: str | None = None,
) -> bytes:
    """The transferee's NOTIFY in our dialog (From: the caller, To: us with our tag)."""
    return request(
        "NOTIFY",
        branch=branch or f"z9hG4bK-notify{cseq}",
        to_tag=tag,
        cseq=cseq,
        headers=(f"Event: {event}", f"Subscription-State: {state}"),
        body=sipfrag,
        content_type="message/sipfrag;version=2.0",
    )


def statuses(responses: list[SipResponse]) -> list[int]:
    return [response.status for response in responses]


def sent_refer(h: Harness) -> tuple[SipRequest, Peer]:
    ((refer, peer),) = h.sent()
    assert isinstance(refer, SipRequest) and refer.method == "REFER"
    return refer, peer


def referred_call(h: Harness, **kwargs: object) -> tuple[str, str, SipRequest]:
    """A confirmed call with our REFER just sent; returns the call, our tag and the REFER."""
    call, tag = h.confirmed_call(**kwargs)
    assert h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=h.now)
    refer, _ = sent_refer(h)
    return call.call, tag, refer


def accepted_call(h: Harness) -> tuple[str, str, SipRequest]:
    """A call whose REFER got its 202."""
    call, tag, refer = referred_call(h)
    assert h.feed(answer(refer, 202, "Accepted")) == []
    assert h.events() == [ReferAnswered(call, 202, "Accepted")]
    return call, tag, refer


def test_refer_on_the_wire_through_a_record_routing_proxy() -> None:
    h = Harness()
    routes = ("<sip:10.0.0.1:5070;lr>, <sip:10.0.0.2;lr>",)
    call, tag = h.confirmed_call(record_route=routes)
    h.now = 5.0
    assert h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=h.now)
    refer, peer = sent_refer(h)
    assert peer == PROXY  # the first Route (loose routing)
    assert refer.uri == "sip:gw@198.51.100.7:5060"  # the remote target: the INVITE's Contact
    headers = refer.headers
    assert headers.get_all("Route") == ["<sip:10.0.0.1:5070;lr>", "<sip:10.0.0.2;lr>"]
    assert headers.get("From") == f"<sip:+15557654321@bridge.example>;tag={tag}"
    assert headers.get("To") == "<sip:+15551230000@carrier.example>;tag=c-77"
    assert headers.get("Call-ID") == "9f1c@198.51.100.7"
    assert CSeq.parse(headers.get("CSeq") or "") == CSeq(1, "REFER")
    assert headers.get("Max-Forwards") == "70"
    assert headers.get("Contact") == f"<sip:bridge@{US}:5060>"
    assert headers.get("Refer-To") == "<sip:2001@pbx.example>"
    assert headers.get("Referred-By") == "<sip:+15557654321@bridge.example>"
    via = Via.parse(headers.get_all("Via")[0])
    assert (via.transport, via.host, via.port) == ("UDP", US, 5060)
    assert (via.branch or "").startswith("z9hG4bK") and via.has_param("rport")
    assert refer.body == b""
    assert h.events() == []

    # after the 202 the BYE takes the next CSeq and a new branch, along the same route
    assert h.feed(answer(refer, 202, "Accepted"), PROXY) == []
    assert h.events() == [ReferAnswered(call.call, 202, "Accepted")]
    h.ua.hang_up(call.call, h.now)
    ((bye, bye_peer),) = h.sent()
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    assert bye_peer == PROXY
    assert bye.headers.get_all("Route") == headers.get_all("Route")
    assert CSeq.parse(bye.headers.get("CSeq") or "") == CSeq(2, "BYE")
    assert Via.parse(bye.headers.get_all("Via")[0]).branch != via.branch
    assert h.ua.statistics().unmatched == 0


def test_refer_is_retransmitted_with_timer_e_then_every_t2_after_a_provisional() -> None:
    h = Harness()
    _, _, refer = referred_call(h)
    sent = h.advance(4.0)
    assert [when for when, _, _ in sent] == [0.5, 1.5, 3.5]
    assert all(message == refer and to == CONTACT for _, message, to in sent)
    assert h.feed(answer(refer, 100, "Trying")) == []
    assert [when for when, _, _ in h.advance(16.0)] == [7.5, 11.5, 15.5]
    assert h.events() == []


def test_refer_over_tcp_is_not_retransmitted() -> None:
    h = Harness()
    via = "SIP/2.0/TCP 192.168.1.20:5060;branch={branch}"
    h.feed(invite(via=via), GATEWAY_TCP)
    (call,) = h.events()
    assert isinstance(call, IncomingCall)
    h.ua.answer(call.call, media_port=40000, now=h.now)
    ((ok, _),) = h.sent()
    tag = to_tag(ok)
    h.feed(request("ACK", branch="z9hG4bK-ack1", to_tag=tag, via=via), GATEWAY_TCP)
    assert h.events() == [CallConfirmed(call.call)]
    assert h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=h.now)
    refer, peer = sent_refer(h)
    assert peer == Peer(Transport.TCP, CONTACT.host, CONTACT.port)
    assert h.ua.statistics().timers > 0
    assert [m for _, m, _ in h.advance(10.0) if isinstance(m, SipRequest)] == []
    assert h.feed(answer(refer, 202, "Accepted"), GATEWAY_TCP) == []
    assert h.events() == [ReferAnswered(call.call, 202, "Accepted")]


def test_202_then_notify_trying_then_notify_200_is_a_success_and_the_call_hangs_up() -> None:
    h = Harness()
    call, tag, _ = accepted_call(h)
    h.now = 1.0
    trying = notify(tag, "SIP/2.0 100 Trying\r\n", cseq=102)
    (ok,) = h.responses(trying)
    assert ok.status == 200
    assert ok.headers.get("CSeq") == "102 NOTIFY"
    assert h.events() == [ReferProgress(call, 100, "Trying", False)]
    # a retransmitted NOTIFY gets the same 200 again and raises nothing
    assert h.responses(trying) == [ok]
    assert h.events() == []
    h.now = 3.0
    done = notify(
        tag,
        "SIP/2.0 200 OK\r\nContent-Length: 0\r\n",
        cseq=103,
        state="terminated;reason=noresource",
    )
    assert statuses(h.responses(done)) == [200]
    assert h.events() == [ReferProgress(call, 200, "OK", True)]
    assert h.responses(done) and h.events() == []
    # the leg hangs up next: a plain BYE
    h.ua.hang_up(call, h.now)
    ((bye, _),) = h.sent()
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    assert h.feed(response_to(bye)) == []
    h.advance(h.now + LINGER)
    assert h.tables_empty(), h.ua.statistics()
    assert h.events() == []


def test_far_end_bye_after_a_successful_transfer() -> None:
    h = Harness()
    call, tag, _ = accepted_call(h)
    done = notify(tag, "SIP/2.0 200 OK", cseq=102, state="terminated;reason=noresource")
    assert statuses(h.responses(done)) == [200]
    assert h.events() == [ReferProgress(call, 200, "OK", True)]
    (ok,) = h.responses(request("BYE", branch="z9hG4bK-bye", to_tag=tag, cseq=103))
    assert ok.status == 200
    assert h.events() == [CallTerminated(call, Termination.BYE, "BYE")]
    h.advance(LINGER)
    assert h.tables_empty()


@pytest.mark.parametrize(("status", "reason"), [(603, "Decline"), (405, "Method Not Allowed")])
def test_a_refused_refer_is_a_failure_and_the_call_goes_on(status: int, reason: str) -> None:
    h = Harness()
    call, _, refer = referred_call(h)
    assert h.feed(answer(refer, status, reason)) == []
    assert h.events() == [ReferAnswered(call, status, reason)]
    # retransmissions of the final are absorbed, and no timeout follows
    h.feed(answer(refer, status, reason))
    h.advance(2 * TIMEOUT)
    assert h.events() == []
    assert h.ua.statistics().unmatched == 0
    # the call is still up: another transfer may be tried
    assert h.ua.refer(call, "sip:2002@pbx.example", referred_by="", now=h.now)
    second, _ = sent_refer(h)
    assert CSeq.parse(second.headers.get("CSeq") or "") == CSeq(2, "REFER")
    assert "Referred-By" not in second.headers


def test_notify_486_is_a_failure_and_the_far_end_may_still_hang_up() -> None:
    h = Harness()
    call, tag, _ = accepted_call(h)
    assert statuses(h.responses(notify(tag, "SIP/2.0 100 Trying", cseq=102))) == [200]
    busy = notify(tag, "SIP/2.0 486 Busy Here\r\n", cseq=103, state="terminated;reason=noresource")
    assert statuses(h.responses(busy)) == [200]
    assert h.events() == [
        ReferProgress(call, 100, "Trying", False),
        ReferProgress(call, 486, "Busy Here", True),
    ]
    h.advance(2 * TIMEOUT)
    assert h.events() == []  # no timeout after the outcome
    (ok,) = h.responses(request("BYE", branch="z9hG4bK-bye", to_tag=tag, cseq=104))
    assert ok.status == 200
    assert h.events() == [CallTerminated(call, Termination.BYE, "BYE")]


def test_no_final_notify_within_64_t1_of_the_202_times_out() -> None:
    h = Harness()
    h.now = 10.0
    call, tag, _ = accepted_call(h)
    assert statuses(h.responses(notify(tag, "SIP/2.0 100 Trying", cseq=102))) == [200]
    assert h.events() == [ReferProgress(call, 100, "Trying", False)]
    h.advance(10.0 + TIMEOUT - 0.01)
    assert h.events() == []
    h.advance(10.0 + TIMEOUT)
    (timed_out,) = h.events()
    assert isinstance(timed_out, ReferTimedOut) and timed_out.call == call
    assert "NOTIFY" in timed_out.detail
    # a late final NOTIFY is still answered 200, and raises nothing
    late = notify(tag, "SIP/2.0 200 OK", cseq=103, state="terminated")
    assert statuses(h.responses(late)) == [200]
    assert h.events() == []


def test_no_answer_to_the_refer_times_out_with_timer_f() -> None:
    h = Harness()
    call, _, refer = referred_call(h)
    sent = h.advance(TIMEOUT + 1)
    assert [when for when, _, _ in sent][:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert {message for _, message, _ in sent} == {refer}
    (timed_out,) = h.events()
    assert timed_out == ReferTimedOut(call, "no answer to the REFER within 32 s")
    # the call is still up
    assert h.ua.statistics().dialogs == 1


def test_bye_from_the_far_end_in_the_middle_ends_the_transfer_silently() -> None:
    h = Harness()
    call, tag, refer = referred_call(h)
    (ok,) = h.responses(request("BYE", branch="z9hG4bK-bye", to_tag=tag, cseq=102))
    assert ok.status == 200
    assert h.events() == [CallTerminated(call, Termination.BYE, "BYE")]
    # the 202 that crossed the BYE is absorbed; a NOTIFY for the gone dialog gets 481
    assert h.feed(answer(refer, 202, "Accepted")) == []
    assert statuses(h.responses(notify(tag, "SIP/2.0 200 OK", cseq=103))) == [481]
    h.advance(LINGER)
    assert h.events() == []
    assert h.tables_empty()
    assert h.ua.statistics().unmatched == 0


def test_hanging_up_during_the_transfer_ends_it_silently() -> None:
    h = Harness()
    call, tag, _ = accepted_call(h)
    h.ua.hang_up(call, h.now)
    ((bye, _),) = h.sent()
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    # NOTIFYs while our BYE is in flight still get 200, without events
    assert statuses(h.responses(notify(tag, "SIP/2.0 200 OK", cseq=102))) == [200]
    h.feed(response_to(bye))
    h.advance(LINGER)
    assert h.events() == []
    assert h.tables_empty()


def test_a_notify_may_overtake_the_202() -> None:
    h = Harness()
    call, tag, refer = referred_call(h)
    assert statuses(h.responses(notify(tag, "SIP/2.0 100 Trying", cseq=102))) == [200]
    assert h.feed(answer(refer, 202, "Accepted")) == []
    assert h.events() == [
        ReferProgress(call, 100, "Trying", False),
        ReferAnswered(call, 202, "Accepted"),
    ]
    # the final NOTIFY too; then a 202 arriving late raises nothing
    h2 = Harness()
    call2, tag2, refer2 = referred_call(h2)
    done = notify(tag2, "SIP/2.0 200 OK", cseq=102, state="terminated")
    assert statuses(h2.responses(done)) == [200]
    assert h2.feed(answer(refer2, 202, "Accepted")) == []
    assert h2.events() == [ReferProgress(call2, 200, "OK", True)]
    h2.advance(2 * TIMEOUT)
    assert h2.events() == []


@pytest.mark.parametrize(
    ("body", "state", "expected"),
    [
        ("garbage", "active", ReferProgress("", 0, "unreadable sipfrag", False)),
        ("", "terminated;reason=timeout", ReferProgress("", 0, "unreadable sipfrag", True)),
        ("SIP/2.0 2000 OK", "terminated", ReferProgress("", 0, "unreadable sipfrag", True)),
        # the subscription ended before the new call was answered: a failure too
        (
            "SIP/2.0 180 Ringing",
            "terminated;reason=timeout",
            ReferProgress("", 180, "Ringing", True),
        ),
        ("SIP/2.0 503", "active", ReferProgress("", 503, "Service Unavailable", True)),
        ("\r\nSIP/2.0 202 Accepted\r\n", "active", ReferProgress("", 202, "Accepted", True)),
    ],
)
def test_sipfrag_bodies_and_subscription_states(
    body: str, state: str, expected: ReferProgress
) -> None:
    h = Harness()
    call, tag, _ = accepted_call(h)
    assert statuses(h.responses(notify(tag, body, cseq=102, state=state))) == [200]
    (progress,) = h.events()
    assert progress == ReferProgress(call, expected.status, expected.reason, expected.final)


def test_notifies_about_other_things_only_get_their_200() -> None:
    h = Harness()
    call, tag, _ = accepted_call(h)
    other_package = notify(tag, "SIP/2.0 200 OK", cseq=102, event="dialog", state="terminated")
    other_refer = notify(tag, "SIP/2.0 200 OK", cseq=103, event="refer;id=99", state="terminated")
    ours = notify(tag, "SIP/2.0 200 OK", cseq=104, event="refer;id=1", state="terminated")
    assert statuses(h.responses(other_package)) == [200]
    assert statuses(h.responses(other_refer)) == [200]
    assert h.events() == []
    assert statuses(h.responses(ours)) == [200]
    assert h.events() == [ReferProgress(call, 200, "OK", True)]
    # with no REFER in progress, a NOTIFY is just answered
    stray = notify(tag, "SIP/2.0 100 Trying", cseq=105)
    assert statuses(h.responses(stray)) == [200]
    assert h.events() == []


def test_when_a_refer_can_be_sent() -> None:
    h = Harness()
    assert not h.ua.refer("no-such-call", TARGET, referred_by=REFERRER, now=0)
    call, ok = h.answered_call()
    # answered but not acknowledged yet: the peer might not know the dialog
    assert not h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=0)
    assert h.sent() == []
    h.feed(request("ACK", branch="z9hG4bK-ack1", to_tag=to_tag(ok)))
    h.events()
    assert h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=0)
    sent_refer(h)
    # one at a time
    with pytest.raises(LocalProtocolError):
        h.ua.refer(call.call, "sip:2002@pbx.example", referred_by=REFERRER, now=0)
    assert h.sent() == []
    # once we hang up, no more
    h.ua.hang_up(call.call, 0)
    h.sent()
    assert not h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=0)
    assert h.sent() == []


def test_an_early_call_cannot_be_referred() -> None:
    h = Harness()
    call = h.incoming_call()
    assert not h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=0)
    assert h.sent() == []


@pytest.mark.parametrize(
    ("given", "header"),
    [
        ("sip:2001@pbx.example;user=phone", "<sip:2001@pbx.example;user=phone>"),
        ("<sip:2001@pbx.example>", "<sip:2001@pbx.example>"),
        ('"Front desk" <sip:2001@10.0.0.5:5080>', '"Front desk" <sip:2001@10.0.0.5:5080>'),
        ("tel:+15550100", "<tel:+15550100>"),
        ("  sips:desk@pbx.example  ", "<sips:desk@pbx.example>"),
    ],
)
def test_refer_to_forms(given: str, header: str) -> None:
    h = Harness()
    call, _ = h.confirmed_call()
    assert h.ua.refer(call.call, given, referred_by=given, now=0)
    refer, _ = sent_refer(h)
    assert refer.headers.get("Refer-To") == header
    assert refer.headers.get("Referred-By") == header


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "2001",
        "http://example.com/",
        "sip:2001@pbx.example\r\nX-Injected: 1",
        "sip:20 01@pbx.example",
        "<sip:2001@pbx.example",
    ],
)
def test_unusable_addresses_are_our_bug(bad: str) -> None:
    h = Harness()
    call, _ = h.confirmed_call()
    with pytest.raises(LocalProtocolError):
        h.ua.refer(call.call, bad, referred_by=REFERRER, now=0)
    with pytest.raises(LocalProtocolError):
        h.ua.refer(call.call, TARGET, referred_by=bad or "nonsense", now=0)
    assert h.sent() == []
    # nothing was started: a good REFER still goes
    assert h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=0)


_STEPS = st.sampled_from(
    [
        "refer",
        "answer-202",
        "answer-603",
        "notify-100",
        "notify-200",
        "notify-486",
        "notify-junk",
        "notify-again",
        "bye",
        "hang_up",
        "wait",
    ]
)


def is_outcome(event: UserAgentEvent) -> bool:
    """Whether `event` ends a REFER: a timeout, a final NOTIFY, or a failed answer."""
    match event:
        case ReferTimedOut():
            return True
        case ReferProgress(final=final):
            return final
        case ReferAnswered(status=status):
            return status >= 300
    return False


@settings(max_examples=200, deadline=None)
@given(st.lists(_STEPS, max_size=25))
def test_any_sequence_of_transfer_steps_leaves_no_state_behind(steps: list[str]) -> None:
    """REFERs, their answers, NOTIFYs, BYEs and timers in any order: nothing raises, the events
    make sense (at most one outcome per REFER), every NOTIFY of a live dialog gets 200, and once
    the call is over and the timers ran out the tables are empty."""
    h = Harness()
    call, tag = h.confirmed_call()
    refers: list[SipRequest] = []
    cseq = 101
    last_notify = b""
    outcomes = 0
    started = 0
    for step in steps:
        if step == "refer":
            try:
                sent = h.ua.refer(call.call, TARGET, referred_by=REFERRER, now=h.now)
            except LocalProtocolError:
                sent = False
            if sent:
                started += 1
                refers.append(sent_refer(h)[0])
        elif step.startswith("answer-") and refers:
            status = int(step[7:])
            h.feed(answer(refers[-1], status, "Accepted" if status == 202 else "Decline"))
        elif step.startswith("notify-"):
            if step == "notify-again":
                data = last_notify
            else:
                cseq += 1
                frag = {"100": "SIP/2.0 100 Trying", "200": "SIP/2.0 200 OK"}
                frag |= {"486": "SIP/2.0 486 Busy Here", "junk": "?"}
                state = "active" if step == "notify-100" else "terminated"
                data = last_notify = notify(tag, frag[step[7:]], cseq=cseq, state=state)
            if data:
                (response,) = h.responses(data)
                assert response.status in (200, 481)
        elif step == "bye":
            cseq += 1
            h.responses(request("BYE", branch=f"z9hG4bK-bye{cseq}", to_tag=tag, cseq=cseq))
        elif step == "hang_up":
            h.ua.hang_up(call.call, h.now)
            h.sent()
        else:
            h.advance(h.now + 10.0)
        outcomes += sum(map(is_outcome, h.events()))
        assert outcomes <= started
    h.ua.hang_up(call.call, h.now)
    h.sent()
    h.advance(h.now + 2 * LINGER)
    assert h.tables_empty(), h.ua.statistics()
