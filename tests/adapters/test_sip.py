"""The SIP ingress adapter over real loopback UDP and TCP, under trio's virtual clock.

The app's side is played by the test: it runs each SipCallLeg with memory channels and sends the
commands the call would (AnswerCall, PlayAudio, HangUp). The peer is a bare UDP or TCP socket that
sends SIP text and parses what comes back with the project's own parser.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from bridge.adapters.sip import SipCallLeg, serve_sip
from bridge.call.events import (
    AnswerCall,
    CallerAudio,
    EndReason,
    HangUp,
    PlayAudio,
    TelephonyCommand,
    TelephonyEnded,
    TelephonyEvent,
)
from bridge.config import SipIngressConfig, SipTransport
from bridge.proto.rtp.packet import RtpPacket
from bridge.proto.sip.message import SipRequest, SipResponse, SipStreamFramer, parse_message

LOG = logging.getLogger("test.sip")


@attrs.define
class App:
    """Plays the daemon's part: admits calls up to `capacity` and records what each leg did."""

    capacity: int = 10
    active: int = 0
    legs: list[SipCallLeg] = attrs.field(factory=list)
    events: list[TelephonyEvent] = attrs.field(factory=list)
    commands: dict[str, trio.MemorySendChannel[TelephonyCommand]] = attrs.field(factory=dict)
    answer_at_once: bool = True
    leg_started: trio.Event = attrs.field(factory=trio.Event)
    leg_done: trio.Event = attrs.field(factory=trio.Event)

    def admit(self) -> bool:
        if self.active >= self.capacity:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1

    def available(self) -> bool:
        return self.active < self.capacity

    async def handle_call(self, leg: SipCallLeg) -> None:
        self.legs.append(leg)
        events_send, events_receive = trio.open_memory_channel[TelephonyEvent](1000)
        commands_send, commands_receive = trio.open_memory_channel[TelephonyCommand](1000)
        self.commands[leg.info.call_id] = commands_send
        if self.answer_at_once:
            commands_send.send_nowait(AnswerCall())
        self.leg_started.set()

        async def collect() -> None:
            async for event in events_receive:
                self.events.append(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            await leg.run(events_send, commands_receive)
            events_send.close()
        self.leg_done.set()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """pytest-trio's autojump clock, but it jumps only after half a millisecond of real
    idleness: a datagram on a loopback socket may reach the receive queue a moment after
    sendto() returns (a busy machine defers it to a softirq), and a clock that jumped at once
    would retransmit before it arrived, shifting the timings these tests check."""
    return trio.testing.MockClock(autojump_threshold=0.0005)


@asynccontextmanager
async def sip_ingress(app: App, **overrides: Any) -> AsyncIterator[int]:
    settings: dict[str, Any] = {
        "enabled": True,
        "port": 0,
        "rtp_port_min": 32000,
        "rtp_port_max": 32999,
        "rtp_timeout_s": 0.0,
    }
    settings.update(overrides)
    config = SipIngressConfig(**settings)
    counter = iter(range(1, 1000))
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(
            functools.partial(
                serve_sip,
                config,
                handle_call=app.handle_call,
                admit=app.admit,
                release=app.release,
                available=app.available,
                log=LOG,
                rng=random.Random(7),
                new_call_id=lambda: f"c-{next(counter)}",
            )
        )
        yield listening.port
        nursery.cancel_scope.cancel()


class UdpPeer:
    """A SIP peer on a loopback UDP socket; `received` holds (virtual time, message)."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.received: list[tuple[float, SipRequest | SipResponse]] = []
        self.port = 0

    async def bind(self) -> None:
        await self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    async def send(self, text: str, port: int) -> None:
        await self.sock.sendto(_crlf(text), ("127.0.0.1", port))

    async def receive(self) -> SipRequest | SipResponse:
        data, _ = await self.sock.recvfrom(65535)
        message = parse_message(data)
        self.received.append((trio.current_time(), message))
        return message

    async def receive_until(
        self, wanted: Callable[[SipRequest | SipResponse], bool]
    ) -> SipRequest | SipResponse:
        while True:
            message = await self.receive()
            if wanted(message):
                return message


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


def _crlf(text: str) -> bytes:
    head, _, body = text.partition("\n\n")
    lines = [line.strip() for line in head.strip().splitlines()]
    body_bytes = body.replace("\n", "\r\n").encode()
    lines.append(f"Content-Length: {len(body_bytes)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body_bytes


def invite(
    sip_port: int,
    peer_port: int,
    *,
    call_id: str = "call-1@127.0.0.1",
    branch: str = "z9hG4bK-inv-1",
    transport: str = "UDP",
    media_port: int = 40000,
    formats: str = "0 8 101",
) -> str:
    return f"""INVITE sip:+15550100002@127.0.0.1:{sip_port} SIP/2.0
        Via: SIP/2.0/{transport} 127.0.0.1:{peer_port};branch={branch};rport
        From: "Alice" <sip:+15550100001@127.0.0.1:{peer_port}>;tag=caller-1
        To: <sip:+15550100002@127.0.0.1:{sip_port}>
        Call-ID: {call_id}
        CSeq: 1 INVITE
        Contact: <sip:alice@127.0.0.1:{peer_port}>
        X-Customer-Id: 4711
        Max-Forwards: 70
        Content-Type: application/sdp

v=0
o=alice 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio {media_port} RTP/AVP {formats}
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"""


def ack(sip_port: int, peer_port: int, to_header: str, *, call_id: str = "call-1@127.0.0.1") -> str:
    return f"""ACK sip:bridge@127.0.0.1:{sip_port} SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{peer_port};branch=z9hG4bK-ack-1;rport
        From: "Alice" <sip:+15550100001@127.0.0.1:{peer_port}>;tag=caller-1
        To: {to_header}
        Call-ID: {call_id}
        CSeq: 1 ACK
        Max-Forwards: 70

"""


def is_status(status: int) -> Callable[[SipRequest | SipResponse], bool]:
    return lambda message: isinstance(message, SipResponse) and message.status == status


def is_request(method: str) -> Callable[[SipRequest | SipResponse], bool]:
    return lambda message: isinstance(message, SipRequest) and message.method == method


async def test_2xx_retransmitted_until_timer_h_then_bye(
    autojump_clock: trio.abc.Clock, peer: UdpPeer
) -> None:
    """RFC 3261 §13.3.1.4: no ACK -> the 200 again after 0.5, 1, 2, 4, 4... s; BYE at 64*T1."""
    app = App()
    peer_port = peer.port
    with trio.fail_after(60):
        async with sip_ingress(app) as sip_port:
            await peer.send(invite(sip_port, peer_port), sip_port)
            first = await peer.receive_until(is_status(200))
            answered_at = trio.current_time()
            bye = await peer.receive_until(is_request("BYE"))
            bye_at = trio.current_time()
            await app.leg_done.wait()
    assert isinstance(first, SipResponse)
    times = [t - answered_at for t, m in peer.received if is_status(200)(m)]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(gap == 4.0 for gap in gaps[3:])
    assert 31.5 <= bye_at - answered_at <= 32.5
    assert isinstance(bye, SipRequest)
    assert bye.headers.get("Call-ID") == "call-1@127.0.0.1"
    ended = [e for e in app.events if isinstance(e, TelephonyEnded)]
    assert ended and ended[0].reason is EndReason.TELEPHONY_ERROR
    assert "ACK" in ended[0].detail
    assert app.active == 0


async def test_call_answered_with_sdp_then_rtp_paced_and_bye_from_us(
    autojump_clock: trio.abc.Clock, peer: UdpPeer, rtp: trio.socket.SocketType
) -> None:
    app = App()
    peer_port = peer.port
    media_port = rtp.getsockname()[1]
    with trio.fail_after(30):
        async with sip_ingress(app, headers=("X-Customer-Id",)) as sip_port:
            await peer.send(invite(sip_port, peer_port, media_port=media_port), sip_port)
            ringing = await peer.receive_until(is_status(180))
            ok = await peer.receive_until(is_status(200))
            assert isinstance(ok, SipResponse) and isinstance(ringing, SipResponse)
            to_header = ok.headers.get("To")
            assert to_header is not None and ";tag=" in to_header
            assert ringing.headers.get("To") == to_header
            await peer.send(ack(sip_port, peer_port, to_header), sip_port)
            body = ok.body.decode()
            assert "m=audio " in body and "RTP/AVP 0 101" in body
            our_media_port = int(body.split("m=audio ")[1].split()[0])
            assert our_media_port % 2 == 0
            # caller audio in, model audio out
            leg = app.legs[0]
            assert leg.info.variables["x_customer_id"] == "4711"
            assert leg.info.caller == "+15550100001" and leg.info.called == "+15550100002"
            speech = bytes(range(1, 161))
            for n in range(5):
                packet = RtpPacket(
                    payload_type=0, sequence=100 + n, timestamp=160 * n, ssrc=1, payload=speech
                )
                await rtp.sendto(packet.serialize(), ("127.0.0.1", our_media_port))
            reply = bytes([0x10]) * 160 * 10
            await app.commands[leg.info.call_id].send(PlayAudio("item-1", reply))
            arrivals: list[tuple[float, RtpPacket]] = []
            while len(arrivals) < 25:
                data, source = await rtp.recvfrom(2048)
                assert source[1] == our_media_port  # symmetric RTP
                arrivals.append((trio.current_time(), RtpPacket.parse(data)))
            await app.commands[leg.info.call_id].send(HangUp(EndReason.MAX_DURATION))
            bye = await peer.receive_until(is_request("BYE"))
            await app.leg_done.wait()
    assert isinstance(bye, SipRequest)
    gaps = [round(b[0] - a[0], 6) for a, b in itertools.pairwise(arrivals)]
    assert set(gaps) == {0.02}
    packets = [p for _, p in arrivals]
    assert all(p.payload_type == 0 and len(p.payload) == 160 for p in packets)
    sequences = [p.sequence for p in packets]
    assert sequences == [(sequences[0] + i) % 65536 for i in range(len(packets))]
    stamps = [p.timestamp for p in packets]
    assert stamps == [(stamps[0] + 160 * i) % 2**32 for i in range(len(packets))]
    payload = b"".join(p.payload for p in packets)
    assert reply in payload  # the model's audio, unchanged and in order, between silence
    assert payload.replace(reply, b"").strip(b"\xff") == b""
    audio = b"".join(e.payload for e in app.events if isinstance(e, CallerAudio))
    assert audio.startswith(speech * 5)
    assert app.active == 0


async def test_options_answered_and_503_at_capacity(
    autojump_clock: trio.abc.Clock, peer: UdpPeer
) -> None:
    app = App(capacity=0)
    peer_port = peer.port
    with trio.fail_after(10):
        async with sip_ingress(app) as sip_port:
            await peer.send(
                f"""OPTIONS sip:bridge@127.0.0.1:{sip_port} SIP/2.0
                Via: SIP/2.0/UDP 127.0.0.1:{peer_port};branch=z9hG4bK-opt-1;rport
                From: <sip:monitor@127.0.0.1>;tag=m1
                To: <sip:bridge@127.0.0.1>
                Call-ID: options-1
                CSeq: 1 OPTIONS
                Max-Forwards: 70

                """,
                sip_port,
            )
            options = await peer.receive()
            await peer.send(invite(sip_port, peer_port), sip_port)
            refused = await peer.receive_until(
                lambda m: isinstance(m, SipResponse) and m.status >= 200
            )
    assert isinstance(options, SipResponse) and options.status == 503
    assert isinstance(refused, SipResponse) and refused.status == 503
    assert refused.headers.get("Retry-After") == "10"
    assert app.legs == []


async def test_refused_source_gets_no_answer(autojump_clock: trio.abc.Clock, peer: UdpPeer) -> None:
    app = App()
    peer_port = peer.port
    with trio.fail_after(10):
        async with sip_ingress(app, allow_from=("192.0.2.0/24",)) as sip_port:
            await peer.send(invite(sip_port, peer_port), sip_port)
            with trio.move_on_after(5) as waited:
                await peer.receive()
    assert waited.cancelled_caught
    assert app.legs == []


async def test_call_over_tcp_answered_and_bye_from_caller(autojump_clock: trio.abc.Clock) -> None:
    app = App()
    with trio.fail_after(10):
        async with sip_ingress(app, transports=(SipTransport.TCP,)) as sip_port:
            stream = await trio.open_tcp_stream("127.0.0.1", sip_port)
            local_port = stream.socket.getsockname()[1]
            framer = SipStreamFramer()

            async def receive() -> SipRequest | SipResponse:
                while True:
                    message = framer.next_message()
                    if message is not None:
                        return message
                    framer.feed(await stream.receive_some(65536))

            await stream.send_all(_crlf(invite(sip_port, local_port, transport="TCP")))
            while not is_status(200)(ok := await receive()):
                pass
            assert isinstance(ok, SipResponse)
            contact = ok.headers.get("Contact")
            assert contact is not None and "transport=tcp" in contact
            to_header = ok.headers.get("To")
            assert to_header is not None
            await stream.send_all(_crlf(ack(sip_port, local_port, to_header).replace("UDP", "TCP")))
            await stream.send_all(
                _crlf(
                    f"""BYE sip:bridge@127.0.0.1:{sip_port} SIP/2.0
                    Via: SIP/2.0/TCP 127.0.0.1:{local_port};branch=z9hG4bK-bye-1;rport
                    From: "Alice" <sip:+15550100001@127.0.0.1>;tag=caller-1
                    To: {to_header}
                    Call-ID: call-1@127.0.0.1
                    CSeq: 2 BYE
                    Max-Forwards: 70

                    """
                )
            )
            while not is_status(200)(bye_ok := await receive()):
                pass
            assert isinstance(bye_ok, SipResponse)
            assert bye_ok.headers.get("CSeq") == "2 BYE"
            await app.leg_done.wait()
            await stream.aclose()
    ended = [e for e in app.events if isinstance(e, TelephonyEnded)]
    assert ended == [TelephonyEnded(EndReason.CALLER_HANGUP, "the caller sent BYE")]


@pytest.mark.parametrize(
    "reason,status", [(EndReason.MODEL_CONNECT_FAILED, 503), (EndReason.INTERNAL_ERROR, 500)]
)
async def test_hang_up_before_answer_gives_a_final_response(
    autojump_clock: trio.abc.Clock, peer: UdpPeer, reason: EndReason, status: int
) -> None:
    app = App(answer_at_once=False)
    peer_port = peer.port
    with trio.fail_after(10):
        async with sip_ingress(app) as sip_port:
            await peer.send(invite(sip_port, peer_port), sip_port)
            await app.leg_started.wait()
            await app.commands[app.legs[0].info.call_id].send(HangUp(reason))
            final = await peer.receive_until(
                lambda m: isinstance(m, SipResponse) and m.status >= 200
            )
            await app.leg_done.wait()
    assert isinstance(final, SipResponse) and final.status == status
    assert (final.headers.get("Retry-After") is not None) == (status == 503)
    assert app.active == 0


async def test_port_pool_hands_out_even_ports_and_skips_busy_ones() -> None:
    from bridge.adapters.rtp import NoRtpPort, RtpPortPool

    pool = RtpPortPool("127.0.0.1", 33000, 33005, rng=random.Random(1))
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 33003))  # the RTCP port of the pair at 33002
    try:
        taken = [pool.allocate() for _ in range(2)]
        assert sorted(s.port for s in taken) == [33000, 33004]
        with pytest.raises(NoRtpPort):
            pool.allocate()
        pool.release(taken[0])
        again = pool.allocate()
        assert again.port == taken[0].port
        for sockets in [again, taken[1]]:
            pool.release(sockets)
    finally:
        busy.close()
