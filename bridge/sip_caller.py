"""A SIP test caller: one call over UDP (RFC 3261 UAC) with G.711 RTP, recording what it hears.

It sends an INVITE with an SDP offer (PCMU/PCMA and telephone-event 101, RFC 3264 §5), follows
100/180/200 (retransmitting the INVITE with Timer A until the first response, §17.1.1.2), ACKs
the 2xx to the remote target through the route set (§12.1.2, §12.2.1.1, §13.2.2.4) or the non-2xx
on the INVITE's branch (§17.1.1.3), then talks RTP (RFC 3550): one 160-byte packet every 20 ms on
an absolute schedule, the caller's audio first and line silence after it, RFC 4733 key presses in
place of audio while they last. Every RTP packet that arrives is kept with its arrival time
(``trio.current_time()``); the RFC 4733 telephone events among them (the daemon pressing keys)
are also read into :class:`ReceivedTelephoneEvent` and the digits they make
(:attr:`SipCallResult.dtmf_received`, one per event, keyed by SSRC and timestamp as RFC 4733
§2.5.2 asks). The call ends with our BYE (retransmitted with Timer E until a final
response, §17.1.2.2) or the daemon's BYE, which gets 200.

:class:`SipUac` builds and reads the messages without doing I/O; :func:`place_call` is the trio
shell that owns the two UDP sockets (SIP and RTP) and the clocks. Used by the end-to-end tests
and by anyone who wants to try a SIP daemon by hand.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import math
import platform
import random
import socket
import struct
import sys
from collections.abc import Sequence

import attrs
import trio

from bridge.call.events import Codec
from bridge.media import g711
from bridge.proto.rtp.dtmf import DtmfReceiver, TelephoneEvent, dtmf_payloads
from bridge.proto.rtp.packet import RtpPacket, RtpParseError
from bridge.proto.sip.headers import CSeq, NameAddr, SipUri, format_host
from bridge.proto.sip.message import (
    Headers,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    parse_message,
    serialize,
)
from bridge.proto.sip.sdp import (
    NegotiatedAudio,
    OfferRejected,
    SdpError,
    SessionDescription,
    negotiate,
)

FRAME_S = g711.FRAME_MS / 1000
TELEPHONE_EVENT_PT = 101
STATIC_PAYLOAD_TYPES = {Codec.PCMU: 0, Codec.PCMA: 8}
T1 = 0.5
T2 = 4.0
# Timer B / F (64*T1): how long a request is retransmitted before the transaction gives up.
TRANSACTION_TIMEOUT_S = 64 * T1
# How long a tool run waits for the answer to its BYE (Timer F would be 32 s).
BYE_BOUND_S = 8.0
DATAGRAM_BUFFER = 65535
USER_AGENT = "bridge-sip-caller"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"
MAGIC_COOKIE = "z9hG4bK"


class SipCallError(Exception):
    """The call could not be placed or went wrong in a way the result cannot express."""


@attrs.frozen(kw_only=True)
class ReceivedRtp:
    """One RTP packet the caller received, with ``trio.current_time()`` when we read it and, where
    the OS stamps datagrams (Linux SO_TIMESTAMPNS), the kernel's receive time in seconds of the
    system clock: gaps between those do not include this process's own scheduling delays."""

    at: float
    packet: RtpPacket
    kernel_at: float | None = None


@attrs.frozen(kw_only=True)
class ReceivedTelephoneEvent:
    """One RFC 4733 telephone-event packet the caller received (RFC 4733 §2.3): its RTP header
    fields and its payload, read. `at` is ``trio.current_time()`` when we read it."""

    at: float
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The keypad digit (0-9, *, #, A-D), None for flash and other events."""
        return TelephoneEvent(self.event, self.end, self.volume, self.duration).digit


@attrs.frozen(kw_only=True)
class SipCallResult:
    """What one call did: the SIP exchange, the RTP both ways and who hung up."""

    # Every response to the INVITE in arrival order, retransmissions included.
    statuses: tuple[int, ...]
    # The final response to the INVITE (None: none came in time).
    final: SipResponse | None
    # The codec, payload types and media address of the daemon's SDP answer.
    negotiated: NegotiatedAudio | None
    # trio.current_time() when the 2xx was acknowledged: packet n was due 20 ms * n later.
    answered_at: float | None
    ended_at: float
    received: tuple[ReceivedRtp, ...]
    sent_packets: int
    # How late each of our own packets went out (seconds after its slot): when these are large,
    # this process was short of CPU, and arrival gaps say more about it than about the peer.
    send_lateness: tuple[float, ...]
    # Bytes of the caller's own audio that went out (line silence after it not counted).
    sent_audio_bytes: int
    dtmf_sent: str
    # "caller" (our BYE), "daemon" (its BYE, answered 200) or None (the call was never up).
    hung_up_by: str | None
    # The final response to our BYE (None: we sent none, or it never came).
    bye_status: int | None
    # Every packet of the negotiated telephone-event payload type, in arrival order (the three
    # end copies of each key press included), readable ones only.
    telephone_events: tuple[ReceivedTelephoneEvent, ...] = ()
    # The keys the daemon pressed: one digit per event (SSRC and RTP timestamp), in order.
    dtmf_received: str = ""

    @property
    def final_status(self) -> int | None:
        return None if self.final is None else self.final.status

    @property
    def answered(self) -> bool:
        return self.final is not None and 200 <= self.final.status < 300

    @property
    def codec(self) -> Codec | None:
        return None if self.negotiated is None else self.negotiated.codec

    def audio_packets(self) -> list[ReceivedRtp]:
        """Received packets of the call's audio payload type, in arrival order."""
        if self.negotiated is None:
            return []
        payload_type = self.negotiated.payload_type
        return [r for r in self.received if r.packet.payload_type == payload_type]

    def heard(self) -> bytes:
        """The audio payloads received, joined in arrival order (silence included)."""
        return b"".join(r.packet.payload for r in self.audio_packets())

    def summary(self) -> str:
        statuses = " ".join(str(status) for status in self.statuses) or "none"
        lines = [f"responses:   {statuses}"]
        if self.negotiated is not None and self.answered_at is not None:
            audio = self.audio_packets()
            heard = sum(len(r.packet.payload) for r in audio)
            lines += [
                f"codec:       {self.negotiated.codec.value} (PT {self.negotiated.payload_type}), "
                f"telephone-event PT {self.negotiated.dtmf_payload_type}",
                f"call lasted: {self.ended_at - self.answered_at:.2f} s after the answer, "
                f"ended by the {self.hung_up_by or 'nobody'}",
                f"sent:        {self.sent_packets} RTP packets, digits {self.dtmf_sent or 'none'}",
                f"received:    {len(audio)} audio packets ({heard / g711.SAMPLE_RATE:.2f} s), "
                f"digits {self.dtmf_received or 'none'}",
            ]
        return "\n".join(lines)


def _token(rng: random.Random, bits: int = 48) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def build_offer(
    address: str,
    port: int,
    codecs: Sequence[Codec],
    *,
    session_id: int,
    telephone_event: int | None = TELEPHONE_EVENT_PT,
) -> bytes:
    """An SDP offer (RFC 3264 §5) of the G.711 codecs in order, plus telephone-event."""
    address_type = "IP6" if ":" in address else "IP4"
    formats = [str(STATIC_PAYLOAD_TYPES[codec]) for codec in codecs]
    lines = [
        "v=0",
        f"o=caller {session_id} 1 IN {address_type} {address}",
        "s=-",
        f"c=IN {address_type} {address}",
        "t=0 0",
    ]
    if telephone_event is not None:
        formats.append(str(telephone_event))
    lines.append(f"m=audio {port} RTP/AVP {' '.join(formats)}")
    lines += [f"a=rtpmap:{STATIC_PAYLOAD_TYPES[c]} {c.value}/8000" for c in codecs]
    if telephone_event is not None:
        lines += [
            f"a=rtpmap:{telephone_event} telephone-event/8000",
            f"a=fmtp:{telephone_event} 0-16",
        ]
    lines += ["a=ptime:20", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SipUac:
    """The caller's side of one INVITE dialog, as messages (no I/O, no clock).

    The request methods return the message and the address to send it to; :meth:`learn` takes
    every response to the INVITE so the dialog (remote tag, remote target, route set) is known
    when the ACK and BYE are built.
    """

    def __init__(
        self,
        *,
        local: tuple[str, int],
        remote: tuple[str, int],
        user: str,
        offer: bytes,
        rng: random.Random,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.local = local
        self.remote = remote
        host, port = local
        self.request_uri = f"sip:{user}@{format_host(remote[0])}:{remote[1]}"
        self.call_id = f"{_token(rng, 64)}@{format_host(host)}"
        self.local_tag = _token(rng, 32)
        self.from_addr = NameAddr(
            f"sip:caller@{format_host(host)}:{port}", "bridge sip caller"
        ).with_tag(self.local_tag)
        self.to_addr = NameAddr(self.request_uri)
        self.contact = f"<sip:caller@{format_host(host)}:{port}>"
        self.invite_branch = MAGIC_COOKIE + _token(rng)
        self.offer = offer
        self.extra_headers = tuple(extra_headers)
        self.remote_tag: str | None = None
        self.remote_target: str | None = None
        self.route_set: tuple[str, ...] = ()
        self._cseq = 1
        self._rng = rng

    def _via(self, branch: str) -> str:
        host, port = self.local
        return f"SIP/2.0/UDP {format_host(host)}:{port};branch={branch};rport"

    def _to(self) -> str:
        to_addr = self.to_addr
        if self.remote_tag is not None:
            to_addr = to_addr.with_tag(self.remote_tag)
        return str(to_addr)

    def invite(self) -> SipRequest:
        fields = [
            ("Via", self._via(self.invite_branch)),
            ("Max-Forwards", "70"),
            ("From", str(self.from_addr)),
            ("To", str(self.to_addr)),
            ("Call-ID", self.call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", self.contact),
            ("Allow", ALLOW),
            ("User-Agent", USER_AGENT),
            *self.extra_headers,
            ("Content-Type", "application/sdp"),
        ]
        return SipRequest("INVITE", self.request_uri, Headers.of(fields), self.offer)

    def cancel(self) -> SipRequest:
        """RFC 3261 §9.1: same Request-URI, Call-ID, From, To and branch as the INVITE."""
        fields = [
            ("Via", self._via(self.invite_branch)),
            ("Max-Forwards", "70"),
            ("From", str(self.from_addr)),
            ("To", str(self.to_addr)),
            ("Call-ID", self.call_id),
            ("CSeq", "1 CANCEL"),
            ("User-Agent", USER_AGENT),
        ]
        return SipRequest("CANCEL", self.request_uri, Headers.of(fields))

    def learn(self, response: SipResponse) -> None:
        """Take the dialog state from a response to the INVITE (RFC 3261 §12.1.2)."""
        if response.status < 101 or response.status >= 300:
            return
        to_value = response.headers.get("To")
        if to_value is not None:
            tag = NameAddr.parse(to_value).tag
            if tag:
                self.remote_tag = tag
        contact = response.headers.get_all("Contact")
        if contact:
            self.remote_target = NameAddr.parse(contact[0]).uri
        # The UAC's route set is the Record-Route list in reverse order.
        self.route_set = tuple(reversed(response.headers.get_all("Record-Route")))

    def _in_dialog(self, method: str, cseq: int, branch: str) -> tuple[SipRequest, tuple[str, int]]:
        """RFC 3261 §12.2.1.1: Request-URI = remote target, Route = route set, loose routing."""
        target = self.remote_target or self.request_uri
        fields = [("Via", self._via(branch)), ("Max-Forwards", "70")]
        fields += [("Route", route) for route in self.route_set]
        fields += [
            ("From", str(self.from_addr)),
            ("To", self._to()),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", self.contact),
            ("User-Agent", USER_AGENT),
        ]
        next_hop = target
        if self.route_set:
            first = NameAddr.parse(self.route_set[0]).uri
            if SipUri.parse(first).has_param("lr"):
                next_hop = first
            else:
                # A strict router: it becomes the Request-URI and the target goes last.
                fields = [f for f in fields if f[0] != "Route"]
                routes = [*self.route_set[1:], f"<{target}>"]
                fields[2:2] = [("Route", route) for route in routes]
                target = next_hop = first
        request = SipRequest(method, target, Headers.of(fields))
        return request, self._destination(next_hop)

    def _destination(self, uri_text: str) -> tuple[str, int]:
        try:
            uri = SipUri.parse(uri_text)
        except SipParseError:
            return self.remote
        if not _ip_literal(uri.host):
            # No DNS here (RFC 3263 is out of scope): fall back to where the INVITE went.
            return self.remote
        return (uri.host, uri.port or 5060)

    def ack_2xx(self) -> tuple[SipRequest, tuple[str, int]]:
        """The ACK of a 2xx is its own transaction: a new branch, the INVITE's CSeq number."""
        return self._in_dialog("ACK", 1, MAGIC_COOKIE + _token(self._rng))

    def ack_non_2xx(self, response: SipResponse) -> tuple[SipRequest, tuple[str, int]]:
        """RFC 3261 §17.1.1.3: the INVITE's branch and Request-URI, the response's To."""
        fields = [
            ("Via", self._via(self.invite_branch)),
            ("Max-Forwards", "70"),
            ("From", str(self.from_addr)),
            ("To", response.headers.get("To") or str(self.to_addr)),
            ("Call-ID", self.call_id),
            ("CSeq", "1 ACK"),
            ("User-Agent", USER_AGENT),
        ]
        return SipRequest("ACK", self.request_uri, Headers.of(fields)), self.remote

    def bye(self) -> tuple[SipRequest, tuple[str, int]]:
        self._cseq += 1
        return self._in_dialog("BYE", self._cseq, MAGIC_COOKIE + _token(self._rng))

    def reply(self, request: SipRequest, status: int, reason: str) -> SipResponse:
        """A response to a request the daemon sent us (RFC 3261 §8.2.6.2)."""
        headers = request.headers
        fields = [("Via", via) for via in headers.get_all("Via")]
        fields += [
            ("From", headers.get("From") or ""),
            ("To", headers.get("To") or ""),
            ("Call-ID", headers.get("Call-ID") or ""),
            ("CSeq", headers.get("CSeq") or ""),
            ("User-Agent", USER_AGENT),
        ]
        if status == 405:
            fields.append(("Allow", ALLOW))
        return SipResponse(status, reason, Headers.of(fields))

    def is_ours(self, message: SipMessage) -> bool:
        return message.headers.get("Call-ID") == self.call_id


def _cseq(message: SipMessage) -> CSeq | None:
    value = message.headers.get("CSeq")
    if value is None:
        return None
    try:
        return CSeq.parse(value)
    except SipParseError:
        return None


@attrs.define
class _Talk:
    """The RTP sender's state (one SSRC, one sequence and timestamp line)."""

    ssrc: int
    first_sequence: int
    first_timestamp: int
    sent: int = 0
    sent_audio_bytes: int = 0
    dtmf_sent: str = ""
    lateness: list[float] = attrs.field(factory=list)


class _Call:
    """The trio side of one call: sockets, the reader tasks, the RTP pacer."""

    def __init__(
        self,
        *,
        uac: SipUac,
        sip: trio.socket.SocketType,
        rtp: trio.socket.SocketType,
    ) -> None:
        self.uac = uac
        self.sip = sip
        self.rtp = rtp
        self.statuses: list[int] = []
        self.final: SipResponse | None = None
        self.received: list[ReceivedRtp] = []
        self.invite_responses_send, self.invite_responses = trio.open_memory_channel[SipResponse](
            64
        )
        self.bye_response: SipResponse | None = None
        self.bye_answered = trio.Event()
        self.daemon_bye = trio.Event()
        self.last_ack: tuple[bytes, tuple[str, int]] | None = None

    async def send(self, message: SipMessage, destination: tuple[str, int]) -> bytes:
        data = serialize(message)
        await self.sip.sendto(data, destination)
        return data

    async def read_sip(self) -> None:
        while True:
            try:
                data, source = await self.sip.recvfrom(DATAGRAM_BUFFER)
            except ConnectionError:
                # an ICMP error of an earlier send; the socket stays usable
                continue
            try:
                message = parse_message(data)
            except SipParseError:
                continue
            if not self.uac.is_ours(message):
                continue
            cseq = _cseq(message)
            if isinstance(message, SipResponse):
                if cseq is None:
                    continue
                if cseq.method == "INVITE":
                    with contextlib.suppress(trio.WouldBlock):
                        self.invite_responses_send.send_nowait(message)
                elif cseq.method == "BYE" and message.status >= 200:
                    self.bye_response = message
                    self.bye_answered.set()
                continue
            await self._answer_request(message, (source[0], source[1]))

    async def _answer_request(self, request: SipRequest, source: tuple[str, int]) -> None:
        # Responses go back where the request came from (RFC 3581 symmetric response).
        match request.method:
            case "BYE":
                await self.send(self.uac.reply(request, 200, "OK"), source)
                self.daemon_bye.set()
            case "ACK":
                pass
            case "OPTIONS" | "INFO" | "NOTIFY" | "UPDATE":
                await self.send(self.uac.reply(request, 200, "OK"), source)
            case _:
                await self.send(self.uac.reply(request, 405, "Method Not Allowed"), source)

    async def read_rtp(self) -> None:
        stamped = _KERNEL_TIMESTAMPS is not None
        while True:
            kernel_at = None
            try:
                if stamped:
                    data, ancillary, _, _ = await self.rtp.recvmsg(
                        DATAGRAM_BUFFER, _ANCILLARY_SPACE
                    )
                    kernel_at = _kernel_time(ancillary)
                else:
                    data = await self.rtp.recv(DATAGRAM_BUFFER)
            except ConnectionError:
                continue
            at = trio.current_time()
            try:
                packet = RtpPacket.parse(data)
            except RtpParseError:
                continue
            self.received.append(ReceivedRtp(at=at, packet=packet, kernel_at=kernel_at))

    async def invite(self, *, answer_timeout_s: float) -> SipResponse | None:
        """Send the INVITE and wait for its final response (None: none in time)."""
        uac = self.uac
        invite = await self.send(uac.invite(), uac.remote)
        started = trio.current_time()
        retransmit_at, interval = started + T1, T1
        provisional = False
        give_up_at = started + min(answer_timeout_s, TRANSACTION_TIMEOUT_S)
        while True:
            deadline = give_up_at if provisional else min(retransmit_at, give_up_at)
            response = None
            with trio.move_on_at(deadline):
                response = await self.invite_responses.receive()
            if response is None:
                if trio.current_time() >= give_up_at:
                    if provisional:
                        return await self._cancel()
                    return None
                # Timer A: retransmit until the first response (RFC 3261 §17.1.1.2).
                await self.sip.sendto(invite, uac.remote)
                interval *= 2
                retransmit_at += interval
                continue
            self.statuses.append(response.status)
            uac.learn(response)
            if response.status < 200:
                provisional = True
                continue
            return response

    async def _cancel(self) -> SipResponse | None:
        """No answer in time after a provisional response: CANCEL, then take the 487."""
        await self.send(self.uac.cancel(), self.uac.remote)
        with trio.move_on_after(TRANSACTION_TIMEOUT_S / 4):
            while True:
                response = await self.invite_responses.receive()
                self.statuses.append(response.status)
                if response.status >= 200:
                    return response
        return None

    async def acknowledge(self, response: SipResponse) -> None:
        if 200 <= response.status < 300:
            request, destination = self.uac.ack_2xx()
        else:
            request, destination = self.uac.ack_non_2xx(response)
        data = await self.send(request, destination)
        self.last_ack = (data, destination)

    async def absorb_invite_retransmissions(self) -> None:
        """A retransmitted final response means our ACK was lost: send it again."""
        async for response in self.invite_responses:
            self.statuses.append(response.status)
            if response.status >= 200 and self.last_ack is not None:
                data, destination = self.last_ack
                await self.sip.sendto(data, destination)

    async def hang_up(self, *, bound_s: float) -> None:
        """Our BYE, retransmitted with Timer E until a final response (or `bound_s`)."""
        request, destination = self.uac.bye()
        data = await self.send(request, destination)
        interval = T1
        with trio.move_on_after(min(bound_s, TRANSACTION_TIMEOUT_S)):
            while not self.bye_answered.is_set():
                with trio.move_on_after(interval):
                    await self.bye_answered.wait()
                if not self.bye_answered.is_set():
                    await self.sip.sendto(data, destination)
                    interval = min(interval * 2, T2)

    async def talk(
        self,
        *,
        negotiated: NegotiatedAudio,
        audio: bytes,
        dtmf: Sequence[tuple[float, str]],
        start: float,
        hang_up_after_s: float | None,
        quiet_s: float,
        wait_for_reply: bool,
        max_duration_s: float,
        hang_up: trio.Event | None,
        state: _Talk,
    ) -> None:
        """Send one packet per 20 ms from `start` until it is time to hang up."""
        silence_byte = g711.silence(negotiated.codec, 1)
        silence_frame = silence_byte * g711.FRAME_BYTES
        pending_dtmf = sorted(dtmf)
        event: list[bytes] = []
        event_timestamp = 0
        event_first = False
        index = 0
        heard_until = len(self.received)
        replied = False
        quiet_since = start
        while True:
            due = start + index * FRAME_S
            await trio.sleep_until(due)
            now = trio.current_time()
            state.lateness.append(now - due)
            elapsed = now - start
            timestamp = (state.first_timestamp + index * g711.FRAME_BYTES) % 2**32
            if not event and pending_dtmf and pending_dtmf[0][0] <= elapsed:
                digit = pending_dtmf.pop(0)[1]
                if negotiated.dtmf_payload_type is not None:
                    event = dtmf_payloads(digit)
                    event_timestamp, event_first = timestamp, True
                    state.dtmf_sent += digit
            if event and negotiated.dtmf_payload_type is not None:
                packet = RtpPacket(
                    payload_type=negotiated.dtmf_payload_type,
                    sequence=(state.first_sequence + state.sent) % 2**16,
                    timestamp=event_timestamp,
                    ssrc=state.ssrc,
                    payload=event.pop(0),
                    marker=event_first,
                )
                event_first = False
            else:
                frame = audio[index * g711.FRAME_BYTES : (index + 1) * g711.FRAME_BYTES]
                if frame:
                    state.sent_audio_bytes += len(frame)
                frame = frame + silence_frame[len(frame) :]
                packet = RtpPacket(
                    payload_type=negotiated.payload_type,
                    sequence=(state.first_sequence + state.sent) % 2**16,
                    timestamp=timestamp,
                    ssrc=state.ssrc,
                    payload=frame,
                    marker=state.sent == 0,
                )
            destination = (negotiated.remote_host, negotiated.remote_port)
            await self.rtp.sendto(packet.serialize(), destination)
            state.sent += 1
            index += 1

            for received in self.received[heard_until:]:
                if received.packet.payload_type == negotiated.payload_type and (
                    received.packet.payload.strip(silence_byte)
                ):
                    replied = True
                    quiet_since = max(quiet_since, received.at)
            heard_until = len(self.received)
            if elapsed >= max_duration_s or (hang_up is not None and hang_up.is_set()):
                return
            if hang_up_after_s is not None:
                if elapsed >= hang_up_after_s:
                    return
                continue
            speech_over = index * g711.FRAME_BYTES >= len(audio) and not pending_dtmf and not event
            if not speech_over:
                # The quiet that ends the call is counted from the end of our own audio.
                quiet_since = now
                continue
            if (replied or not wait_for_reply) and now - quiet_since >= quiet_s:
                return


# Kernel receive timestamps (Linux): SO_TIMESTAMPNS delivers a struct timespec per datagram.
# Python 3.11's socket module does not name the option; on the architectures that use the
# generic Linux socket numbers it is 35 (include/uapi/asm-generic/socket.h, SO_TIMESTAMPNS_OLD).
_GENERIC_LINUX_MACHINES = frozenset(
    {"x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "riscv64", "ppc64le", "s390x"}
)
_KERNEL_TIMESTAMPS: int | None = getattr(
    socket,
    "SO_TIMESTAMPNS",
    35
    if sys.platform == "linux" and platform.machine().lower() in _GENERIC_LINUX_MACHINES
    else None,
)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if _KERNEL_TIMESTAMPS is not None else 0


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _KERNEL_TIMESTAMPS and len(data) >= 16:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds) + float(nanoseconds) / 1e9
    return None


async def _bind(host: str, *, stamp: bool = False) -> trio.socket.SocketType:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    try:
        await sock.bind((host, 0))
        if stamp and _KERNEL_TIMESTAMPS is not None:
            sock.setsockopt(socket.SOL_SOCKET, _KERNEL_TIMESTAMPS, 1)
    except OSError:
        sock.close()
        raise
    return sock


async def place_call(
    host: str,
    port: int,
    *,
    audio: bytes = b"",
    audio_codec: Codec = Codec.PCMU,
    offer: Sequence[Codec] = (Codec.PCMU, Codec.PCMA),
    dtmf: Sequence[tuple[float, str]] = (),
    user: str = "bridge",
    local_host: str = "127.0.0.1",
    hang_up_after_s: float | None = None,
    quiet_s: float = 1.0,
    wait_for_reply: bool = True,
    max_duration_s: float = 30.0,
    answer_timeout_s: float = 30.0,
    extra_headers: Sequence[tuple[str, str]] = (),
    answered: trio.Event | None = None,
    hang_up: trio.Event | None = None,
    rng: random.Random | None = None,
) -> SipCallResult:
    """Call ``sip:<user>@host:port`` over UDP and return what happened.

    `audio` (G.711 in `audio_codec`, transcoded if the daemon picks the other law) is the
    caller's side of the line from the answer on; silence follows it. `dtmf` presses keys at
    seconds after the answer. The caller hangs up `hang_up_after_s` after the answer when given;
    otherwise once its audio is over, a reply was heard (unless `wait_for_reply` is False) and
    the line has been quiet for `quiet_s`; always at `max_duration_s` or once `hang_up` is set.
    A BYE from the daemon ends the call at once. `answered` is set when the 2xx was acknowledged
    and RTP starts. A 2xx without a usable SDP answer is hung up and raises SipCallError.
    """
    rng = rng if rng is not None else random.Random()
    if not offer:
        raise ValueError("offer at least one codec")
    sip = await _bind(local_host)
    rtp = await _bind(local_host, stamp=True)
    with sip, rtp:
        local = sip.getsockname()
        rtp_port = rtp.getsockname()[1]
        body = build_offer(local_host, rtp_port, offer, session_id=rng.getrandbits(32))
        uac = SipUac(
            local=(local_host, local[1]),
            remote=(host, port),
            user=user,
            offer=body,
            rng=rng,
            extra_headers=extra_headers,
        )
        call = _Call(uac=uac, sip=sip, rtp=rtp)
        talk = _Talk(
            ssrc=rng.getrandbits(32),
            first_sequence=rng.getrandbits(16),
            first_timestamp=rng.getrandbits(32),
        )
        negotiated: NegotiatedAudio | None = None
        answered_at: float | None = None
        hung_up_by: str | None = None
        failure: SipCallError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.read_sip)
            nursery.start_soon(call.read_rtp)
            final = await call.invite(answer_timeout_s=answer_timeout_s)
            call.final = final
            if final is not None:
                await call.acknowledge(final)
                nursery.start_soon(call.absorb_invite_retransmissions)
            if final is not None and 200 <= final.status < 300:
                try:
                    negotiated = _negotiated(final, offer)
                except SipCallError as error:
                    failure = error
                    await call.hang_up(bound_s=BYE_BOUND_S)
            if negotiated is not None:
                answered_at = trio.current_time()
                if answered is not None:
                    answered.set()
                if negotiated.codec is not audio_codec:
                    audio = g711.transcode(audio_codec, negotiated.codec, audio)
                hung_up_by = await _converse(
                    call,
                    negotiated=negotiated,
                    audio=audio,
                    dtmf=dtmf,
                    start=answered_at,
                    hang_up_after_s=hang_up_after_s,
                    quiet_s=quiet_s,
                    wait_for_reply=wait_for_reply,
                    max_duration_s=max_duration_s,
                    hang_up=hang_up,
                    talk=talk,
                )
            ended_at = trio.current_time()
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    telephone_events, dtmf_received = _telephone_events(call.received, negotiated)
    return SipCallResult(
        statuses=tuple(call.statuses),
        final=call.final,
        negotiated=negotiated,
        answered_at=answered_at,
        ended_at=ended_at,
        received=tuple(call.received),
        sent_packets=talk.sent,
        send_lateness=tuple(talk.lateness),
        sent_audio_bytes=talk.sent_audio_bytes,
        dtmf_sent=talk.dtmf_sent,
        hung_up_by=hung_up_by,
        bye_status=None if call.bye_response is None else call.bye_response.status,
        telephone_events=telephone_events,
        dtmf_received=dtmf_received,
    )


def _telephone_events(
    received: Sequence[ReceivedRtp], negotiated: NegotiatedAudio | None
) -> tuple[tuple[ReceivedTelephoneEvent, ...], str]:
    """The telephone-event packets among `received`, read, and the digits they press."""
    if negotiated is None or negotiated.dtmf_payload_type is None:
        return (), ""
    payload_type = negotiated.dtmf_payload_type
    receiver = DtmfReceiver(memory_s=math.inf)
    events: list[ReceivedTelephoneEvent] = []
    digits: list[str] = []
    for item in received:
        packet = item.packet
        if packet.payload_type != payload_type:
            continue
        try:
            event = TelephoneEvent.parse(packet.payload)
            digit = receiver.receive(packet, item.at)
        except RtpParseError:
            continue
        events.append(
            ReceivedTelephoneEvent(
                at=item.at,
                payload_type=packet.payload_type,
                sequence=packet.sequence,
                timestamp=packet.timestamp,
                ssrc=packet.ssrc,
                marker=packet.marker,
                event=event.event,
                end=event.end,
                volume=event.volume,
                duration=event.duration,
            )
        )
        if digit is not None:
            digits.append(digit)
    return tuple(events), "".join(digits)


def _negotiated(response: SipResponse, offer: Sequence[Codec]) -> NegotiatedAudio:
    try:
        return negotiate(SessionDescription.parse(response.body), offer)
    except (SdpError, OfferRejected) as error:
        raise SipCallError(f"the 2xx carries no usable SDP answer: {error}") from error


async def _converse(
    call: _Call,
    *,
    negotiated: NegotiatedAudio,
    audio: bytes,
    dtmf: Sequence[tuple[float, str]],
    start: float,
    hang_up_after_s: float | None,
    quiet_s: float,
    wait_for_reply: bool,
    max_duration_s: float,
    hang_up: trio.Event | None,
    talk: _Talk,
) -> str:
    """Talk until one side hangs up; returns who did ("caller" or "daemon")."""
    async with trio.open_nursery() as nursery:

        async def wait_for_daemon_bye() -> None:
            await call.daemon_bye.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait_for_daemon_bye)
        await call.talk(
            negotiated=negotiated,
            audio=audio,
            dtmf=dtmf,
            start=start,
            hang_up_after_s=hang_up_after_s,
            quiet_s=quiet_s,
            wait_for_reply=wait_for_reply,
            max_duration_s=max_duration_s,
            hang_up=hang_up,
            state=talk,
        )
        nursery.cancel_scope.cancel()
    if call.daemon_bye.is_set():
        return "daemon"
    await call.hang_up(bound_s=BYE_BOUND_S)
    return "caller"


def frame_arrival_gaps(packets: Sequence[ReceivedRtp]) -> list[float]:
    """Seconds between consecutive arrivals, for pacing checks: by the kernel's receive stamps
    when every packet has one, else by when we read them."""
    kernel = [r.kernel_at for r in packets if r.kernel_at is not None]
    times = kernel if len(kernel) == len(packets) else [r.at for r in packets]
    return [b - a for a, b in itertools.pairwise(times)]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` 0..1) of `values`; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


__all__ = [
    "ReceivedRtp",
    "ReceivedTelephoneEvent",
    "SipCallError",
    "SipCallResult",
    "SipUac",
    "build_offer",
    "frame_arrival_gaps",
    "percentile",
    "place_call",
]
