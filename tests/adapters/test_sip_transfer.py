"""Call control on the SIP leg over real loopback sockets: TransferCall as a REFER answered by one
TransferResult, HangUp(TRANSFERRED) as a plain BYE, and SendDtmf as RFC 4733 packets.

The app's part is played by the test (tests/adapters/test_sip.py's App and sip_ingress), which
sends the commands the call would. The far end is either a bare UDP socket speaking SIP text
under trio's virtual clock, or SIPp 3.6 (real time, skipped when it is not installed) running
the scenarios tests/sipp/uac_refer.xml, uac_refer_busy.xml and uac_dtmf_echo.xml.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from bridge.call.events import (
    AnswerCall,
    CallerDtmf,
    Capability,
    EndReason,
    HangUp,
    SendDtmf,
    TelephonyEnded,
    TransferCall,
    TransferResult,
)
from bridge.proto.rtp.dtmf import DIGITS, TelephoneEvent
from bridge.proto.rtp.packet import RtpPacket
from bridge.proto.sip.headers import CSeq, NameAddr
from bridge.proto.sip.message import SipRequest
from bridge.sip_caller import place_call
from tests.adapters.test_sip import (
    App,
    UdpPeer,
    ack,
    invite,
    is_request,
    is_status,
    sip_ingress,
)
from tests.support.sipp import SippResult, requests_received, run_sipp, sipp_binary

TARGET = "sip:2001@pbx.example"
DEFAULT_REFERRER = "<sip:bridge@127.0.0.1>"  # <sip:{user}@{contact_host}> of the ingress config


@pytest.fixture
async def peer() -> AsyncIterator[UdpPeer]:
    udp = UdpPeer()
    with udp.sock:
        await udp.bind()
        yield udp


@pytest.fixture
async def rtp() -> AsyncIterator[trio.socket.SocketType]:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        yield sock


async def until(condition: Callable[[], bool]) -> None:
    """Wait for what another task makes true (the App records events in a list)."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.01)


def results(app: App) -> list[TransferResult]:
    return [event for event in app.events if isinstance(event, TransferResult)]


def reply(request: SipRequest, status: int, reason: str) -> str:
    """The far end's response to a request of ours."""
    headers = request.headers
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {via}" for via in headers.get_all("Via")]
    lines += [f"{name}: {headers.get(name)}" for name in ("From", "To", "Call-ID", "CSeq")]
    return "\n".join(lines) + "\n\n"


def notify(refer: SipRequest, peer_port: int, cseq: int, sipfrag: str, state: str) -> str:
    """The transferee's NOTIFY in the REFER's dialog: From/To swapped back, its own CSeq."""
    headers = refer.headers
    return f"""NOTIFY sip:bridge@127.0.0.1 SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{peer_port};branch=z9hG4bK-notify-{cseq};rport
        From: {headers.get("To")}
        To: {headers.get("From")}
        Call-ID: {headers.get("Call-ID")}
        CSeq: {cseq} NOTIFY
        Contact: <sip:alice@127.0.0.1:{peer_port}>
        Event: refer
        Subscription-State: {state}
        Content-Type: message/sipfrag;version=2.0

{sipfrag}
"""


def bye_from_caller(to_header: str, peer_port: int, cseq: int) -> str:
    return f"""BYE sip:bridge@127.0.0.1 SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{peer_port};branch=z9hG4bK-bye-{cseq};rport
        From: "Alice" <sip:+15550100001@127.0.0.1:{peer_port}>;tag=caller-1
        To: {to_header}
        Call-ID: call-1@127.0.0.1
        CSeq: {cseq} BYE
        Max-Forwards: 70

"""


async def confirmed_call(
    app: App, peer: UdpPeer, sip_port: int, *, media_port: int = 40000, formats: str = "0 8 101"
) -> str:
    """INVITE, 200 and ACK; returns the To header with our tag."""
    await peer.send(invite(sip_port, peer.port, media_port=media_port, formats=formats), sip_port)
    ok = await peer.receive_until(is_status(200))
    to_header = ok.headers.get("To")
    assert to_header is not None
    await peer.send(ack(sip_port, peer.port, to_header), sip_port)
    await until(lambda: bool(app.legs))
    return to_header


async def command(app: App, item: object) -> None:
    await app.commands[app.legs[0].info.call_id].send(item)  # type: ignore[arg-type]


async def received_refer(peer: UdpPeer) -> SipRequest:
    refer = await peer.receive_until(is_request("REFER"))
    assert isinstance(refer, SipRequest)
    return refer


# ---- REFER against a bare UDP peer, virtual time ------------------------------------------------


async def test_transfer_succeeds_then_hang_up_transferred_sends_bye(
    autojump_clock: trio.abc.Clock, peer: UdpPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.sip")
    app = App()
    with trio.fail_after(30):
        async with sip_ingress(app) as sip_port:
            await confirmed_call(app, peer, sip_port)
            leg = app.legs[0]
            assert leg.info.capabilities == {Capability.TRANSFER, Capability.SEND_DTMF}
            await command(app, TransferCall(TARGET))
            refer = await received_refer(peer)
            assert refer.uri == f"sip:alice@127.0.0.1:{peer.port}"  # the INVITE's Contact
            assert refer.headers.get("Refer-To") == f"<{TARGET}>"
            assert refer.headers.get("Referred-By") == DEFAULT_REFERRER
            assert refer.headers.get("Contact") == f"<sip:bridge@127.0.0.1:{sip_port}>"
            assert CSeq.parse(refer.headers.get("CSeq") or "").method == "REFER"
            assert NameAddr.parse(refer.headers.get("To") or "").tag == "caller-1"
            await peer.send(reply(refer, 202, "Accepted"), sip_port)
            await peer.send(notify(refer, peer.port, 2, "SIP/2.0 100 Trying", "active"), sip_port)
            trying_ok = await peer.receive_until(is_status(200))
            assert trying_ok.headers.get("CSeq") == "2 NOTIFY"
            await trio.sleep(1)
            assert results(app) == []
            done = notify(refer, peer.port, 3, "SIP/2.0 200 OK", "terminated;reason=noresource")
            await peer.send(done, sip_port)
            await peer.receive_until(is_status(200))
            await until(lambda: bool(results(app)))
            # the leg does not hang up by itself
            with trio.move_on_after(5):
                await peer.receive_until(is_request("BYE"))
                pytest.fail("the leg hung up without being told")
            await command(app, HangUp(EndReason.TRANSFERRED))
            bye = await peer.receive_until(is_request("BYE"))
            assert isinstance(bye, SipRequest)
            bye_cseq = CSeq.parse(bye.headers.get("CSeq") or "")
            assert bye_cseq.number == CSeq.parse(refer.headers.get("CSeq") or "").number + 1
            await peer.send(reply(bye, 200, "OK"), sip_port)
            await app.leg_done.wait()
    (result,) = results(app)
    assert result.ok and result.status == 200
    assert "200" in result.detail
    assert app.active == 0
    logged = {record.getMessage(): record.__dict__ for record in caplog.records}
    assert logged["SIP transfer started"]["target"] == TARGET
    assert logged["SIP transfer answered"]["status"] == 202
    finished = logged["SIP transfer finished"]
    assert (finished["ok"], finished["status"]) == (True, 200)


async def test_explicit_referred_by_is_used(autojump_clock: trio.abc.Clock, peer: UdpPeer) -> None:
    app = App()
    with trio.fail_after(10):
        async with sip_ingress(app) as sip_port:
            await confirmed_call(app, peer, sip_port)
            await command(app, TransferCall("sip:desk@10.0.0.5:5080", "sip:agent@bridge.example"))
            refer = await received_refer(peer)
            await command(app, HangUp(EndReason.AGENT_HANGUP))
            await app.leg_done.wait()
    assert refer.headers.get("Refer-To") == "<sip:desk@10.0.0.5:5080>"
    assert refer.headers.get("Referred-By") == "<sip:agent@bridge.example>"
    # a hang-up while the transfer is open ends it without a result
    assert results(app) == []


@pytest.mark.parametrize(
    ("far_end", "status", "words"),
    [
        ("refuse", 603, "refused"),
        ("busy", 486, "Busy Here"),
        ("unreadable", 0, "unreadable"),
        ("silent", 0, "NOTIFY"),
    ],
)
async def test_transfer_failures_keep_the_call_up(
    autojump_clock: trio.abc.Clock, peer: UdpPeer, far_end: str, status: int, words: str
) -> None:
    app = App()
    with trio.fail_after(60):
        async with sip_ingress(app) as sip_port:
            to_header = await confirmed_call(app, peer, sip_port)
            await command(app, TransferCall(TARGET))
            refer = await received_refer(peer)
            if far_end == "refuse":
                await peer.send(reply(refer, 603, "Decline"), sip_port)
            else:
                await peer.send(reply(refer, 202, "Accepted"), sip_port)
            if far_end == "busy":
                frag = "SIP/2.0 486 Busy Here"
                await peer.send(notify(refer, peer.port, 2, frag, "terminated"), sip_port)
            elif far_end == "unreadable":
                await peer.send(notify(refer, peer.port, 2, "junk", "terminated"), sip_port)
            await until(lambda: bool(results(app)))
            # the call goes on: the caller hangs up later
            await peer.send(bye_from_caller(to_header, peer.port, 5), sip_port)
            await app.leg_done.wait()
    (result,) = results(app)
    assert not result.ok
    assert result.status == status
    assert words in result.detail
    ended = [event for event in app.events if isinstance(event, TelephonyEnded)]
    assert ended == [TelephonyEnded(EndReason.CALLER_HANGUP, "the caller sent BYE")]


async def test_caller_hanging_up_during_the_transfer_reports_a_failure_first(
    autojump_clock: trio.abc.Clock, peer: UdpPeer
) -> None:
    app = App()
    with trio.fail_after(10):
        async with sip_ingress(app) as sip_port:
            to_header = await confirmed_call(app, peer, sip_port)
            await command(app, TransferCall(TARGET))
            refer = await received_refer(peer)
            await peer.send(reply(refer, 202, "Accepted"), sip_port)
            await peer.send(bye_from_caller(to_header, peer.port, 2), sip_port)
            await app.leg_done.wait()
    reports = [e for e in app.events if isinstance(e, TransferResult | TelephonyEnded)]
    assert reports == [
        TransferResult(False, 0, "the call ended before the transfer completed"),
        TelephonyEnded(EndReason.CALLER_HANGUP, "the caller sent BYE"),
    ]


async def test_transfers_that_cannot_start_fail_at_once(
    autojump_clock: trio.abc.Clock, peer: UdpPeer
) -> None:
    app = App(answer_at_once=False)
    with trio.fail_after(10):
        async with sip_ingress(app) as sip_port:
            await peer.send(invite(sip_port, peer.port), sip_port)
            await app.leg_started.wait()
            await command(app, TransferCall(TARGET))
            await until(lambda: len(results(app)) == 1)
            await command(app, AnswerCall())
            ok = await peer.receive_until(is_status(200))
            to_header = ok.headers.get("To") or ""
            await peer.send(ack(sip_port, peer.port, to_header), sip_port)
            await trio.sleep(0.1)
            await command(app, TransferCall("not a uri"))
            await until(lambda: len(results(app)) == 2)
            await command(app, TransferCall(TARGET))
            await received_refer(peer)
            await command(app, TransferCall("sip:other@pbx.example"))
            await until(lambda: len(results(app)) == 3)
            await command(app, HangUp(EndReason.AGENT_HANGUP))
            await app.leg_done.wait()
    first, second, third = results(app)
    assert first == TransferResult(False, 0, "the call is not answered yet")
    assert not second.ok and "not a uri" in second.detail
    assert third == TransferResult(False, 0, "another transfer is still under way")


# ---- RFC 4733 from SendDtmf, virtual time --------------------------------------------------------


async def test_send_dtmf_puts_rfc_4733_events_on_the_wire(
    autojump_clock: trio.abc.Clock,
    peer: UdpPeer,
    rtp: trio.socket.SocketType,
) -> None:
    app = App(answer_at_once=False)
    media_port = rtp.getsockname()[1]
    with trio.fail_after(20):
        async with sip_ingress(app) as sip_port:
            await peer.send(invite(sip_port, peer.port, media_port=media_port), sip_port)
            await app.leg_started.wait()
            await command(app, SendDtmf("9"))  # before the answer: ignored
            await command(app, AnswerCall())
            ok = await peer.receive_until(is_status(200))
            await peer.send(ack(sip_port, peer.port, ok.headers.get("To") or ""), sip_port)
            packets: list[RtpPacket] = []

            async def collect(seconds: float) -> None:
                with trio.move_on_after(seconds):
                    while True:
                        packets.append(RtpPacket.parse((await rtp.recvfrom(2048))[0]))

            await collect(0.5)
            await command(app, SendDtmf("1#"))
            await collect(1.0)
            await command(app, HangUp(EndReason.AGENT_HANGUP))
            await app.leg_done.wait()
    events = [p for p in packets if p.payload_type == 101]
    audio = [p for p in packets if p.payload_type == 0]
    assert audio and len(events) == 14  # two presses of 100 ms: 4 updates + 3 end copies each
    # one SSRC and one sequence line for audio and events alike
    assert {p.ssrc for p in packets} == {audio[0].ssrc}
    sequences = [p.sequence for p in packets]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))
    presses: dict[int, list[RtpPacket]] = {}
    for packet in events:
        presses.setdefault(packet.timestamp, []).append(packet)
    assert len(presses) == 2
    for digit, press in zip("1#", presses.values(), strict=True):
        parsed = [TelephoneEvent.parse(p.payload) for p in press]
        assert {e.event for e in parsed} == {DIGITS.index(digit)}
        assert [p.marker for p in press] == [True] + [False] * 6
        assert [e.end for e in parsed] == [False] * 4 + [True] * 3
        assert [e.duration for e in parsed] == [160, 320, 480, 640, 800, 800, 800]
    (first, second) = presses
    assert (second - first) % 2**32 >= 7 * 160  # the second press starts after the first
    assert not [e for e in app.events if isinstance(e, CallerDtmf)]


async def test_no_telephone_event_means_no_send_dtmf_capability(
    autojump_clock: trio.abc.Clock, peer: UdpPeer
) -> None:
    app = App()
    with trio.fail_after(10):
        async with sip_ingress(app) as sip_port:
            await confirmed_call(app, peer, sip_port, formats="0 8")
            assert app.legs[0].info.capabilities == {Capability.TRANSFER}
            await command(app, SendDtmf("1"))  # logged and ignored
            await command(app, HangUp(EndReason.AGENT_HANGUP))
            await peer.receive_until(is_request("BYE"))
            await app.leg_done.wait()


# ---- sipp, real time ---------------------------------------------------------------------------


@pytest.fixture
def sipp() -> str:
    return sipp_binary()


async def run_scenario(
    app: App,
    scenario: str,
    tmp_path: Path,
    *,
    digit: str,
    script: Callable[[App], Awaitable[None]],
    extra_args: tuple[str, ...] = (),
    timeout_s: float = 15.0,
) -> SippResult:
    """Run sipp's `scenario` against the ingress (`-key digit <digit>`) while `script` plays the
    call's part (the commands a scripted model's tool call would cause)."""
    async with sip_ingress(app) as sip_port, trio.open_nursery() as nursery:
        nursery.start_soon(script, app)
        result = await run_sipp(
            scenario,
            remote_port=sip_port,
            workdir=tmp_path,
            keys={"digit": digit},
            extra_args=extra_args,
            timeout_s=timeout_s,
        )
        # the leg ends with sipp's last BYE; when sipp failed, its log tells why
        with trio.move_on_after(3):
            await app.leg_done.wait()
        nursery.cancel_scope.cancel()
    return result


async def press_then(app: App, digit: str, *commands: object) -> None:
    await until(lambda: any(isinstance(e, CallerDtmf) and e.digit == digit for e in app.events))
    for item in commands:
        await command(app, item)


async def test_sipp_transfer_succeeds(tmp_path: Path, sipp: str) -> None:
    app = App()

    async def script(app: App) -> None:
        await press_then(app, "6", TransferCall(TARGET))
        await until(lambda: bool(results(app)))
        if results(app)[0].ok:
            await command(app, HangUp(EndReason.TRANSFERRED))

    with trio.fail_after(25):
        result = await run_scenario(app, "uac_refer.xml", tmp_path, digit="6", script=script)
    assert result.returncode == 0, result.explain()
    assert results(app) == [TransferResult(True, 200, "the target answered: 200 OK")]
    (refer,) = requests_received(result, "REFER")
    assert refer.uri.startswith("sip:sipp@127.0.0.1:")  # sipp's Contact
    assert refer.headers.get("Refer-To") == f"<{TARGET}>"
    assert refer.headers.get("Referred-By") == DEFAULT_REFERRER
    (bye,) = requests_received(result, "BYE")
    assert bye.uri == refer.uri
    refer_cseq = CSeq.parse(refer.headers.get("CSeq") or "")
    assert CSeq.parse(bye.headers.get("CSeq") or "") == CSeq(refer_cseq.number + 1, "BYE")
    assert not [e for e in app.events if isinstance(e, TelephonyEnded)]


async def test_sipp_transfer_busy_and_the_call_goes_on(tmp_path: Path, sipp: str) -> None:
    app = App()

    async def script(app: App) -> None:
        await press_then(app, "6", TransferCall(TARGET))

    with trio.fail_after(25):
        result = await run_scenario(app, "uac_refer_busy.xml", tmp_path, digit="6", script=script)
    assert result.returncode == 0, result.explain()
    assert results(app) == [
        TransferResult(False, 486, "the target did not take the call: 486 Busy Here")
    ]
    assert len(requests_received(result, "REFER")) == 1
    assert requests_received(result, "BYE") == []  # the daemon kept the call up
    ended = [e for e in app.events if isinstance(e, TelephonyEnded)]
    assert ended == [TelephonyEnded(EndReason.CALLER_HANGUP, "the caller sent BYE")]


async def test_sipp_echoes_the_dtmf_we_send(tmp_path: Path, sipp: str) -> None:
    app = App()

    async def script(app: App) -> None:
        await press_then(app, "7", SendDtmf("1234"))

    with trio.fail_after(25):
        result = await run_scenario(
            app, "uac_dtmf_echo.xml", tmp_path, digit="7", script=script, extra_args=("-rtp_echo",)
        )
    assert result.returncode == 0, result.explain()
    # sipp's own key press, then ours as its echo brought them back
    digits = "".join(e.digit for e in app.events if isinstance(e, CallerDtmf))
    assert digits == "71234"
    ended = [e for e in app.events if isinstance(e, TelephonyEnded)]
    assert ended == [TelephonyEnded(EndReason.CALLER_HANGUP, "the caller sent BYE")]


# ---- the Python caller records the key presses it hears -----------------------------------------


async def test_python_caller_records_the_rfc_4733_events_it_receives(
    autojump_clock: trio.abc.Clock,
) -> None:
    app = App()
    answered = trio.Event()
    with trio.fail_after(20):
        async with sip_ingress(app) as sip_port, trio.open_nursery() as nursery:

            async def press_keys() -> None:
                await answered.wait()
                await until(lambda: bool(app.legs))
                await command(app, SendDtmf("5*"))

            nursery.start_soon(press_keys)
            call = await place_call(
                "127.0.0.1", sip_port, answered=answered, hang_up_after_s=1.5, dtmf=[(0.2, "3")]
            )
            await app.leg_done.wait()
    assert call.dtmf_sent == "3"
    assert call.dtmf_received == "5*"
    assert [e.digit for e in app.events if isinstance(e, CallerDtmf)] == ["3"]
    events = call.telephone_events
    assert len(events) == 14
    assert {e.payload_type for e in events} == {101}
    for digit, press in zip("5*", (events[:7], events[7:]), strict=True):
        assert {e.digit for e in press} == {digit}
        assert len({e.timestamp for e in press}) == 1
        assert [e.marker for e in press] == [True] + [False] * 6
        assert [e.end for e in press] == [False] * 4 + [True] * 3
        assert [e.duration for e in press] == [160, 320, 480, 640, 800, 800, 800]
        sequences = [e.sequence for e in press]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))
