"""The SIP/RTP benchmark's caller process: many SIP calls with RTP media on one event loop.

Each call is a minimal hand-written SIP user agent client over UDP (RFC 3261 §13.2, §17.1: an
INVITE with an SDP offer ``m=audio <port> RTP/AVP 0 101``, retransmitted on Timer A until the
first response; 100/180 noted; on the 200 an ACK to the Contact; at the end a BYE, retransmitted
on Timer E until its 200; a BYE from the daemon is answered with 200) and one RTP socket
(RFC 3550 §5.1: V=2, PT 0, sequence +1 and timestamp +160 a packet, one SSRC, M=1 on the first
packet). Per call that is two non-blocking UDP sockets.

The whole process is one ``select.epoll`` loop and one heap of timers: no task, coroutine or
thread per call or per packet, so 200 calls (10,000 packets a second each way) cost little more
than the system calls. Each call sends one 160-byte u-law frame every 20 ms on its own absolute
grid with a random phase, every frame opening with a stamp (``_stamp.py``), and talks in turns
like ``_callers.py``: silence for 0.5-3 s, ~1.5 s of speech-like audio, silence until the
reply's last frame (the turn's last speech frame, which the loopback model echoes) has arrived,
a pause of 0.3-0.8 s, and so on. After ``talk_until`` a call stops its RTP at the first moment it
is neither speaking nor waiting for a reply, keeps listening for ``DRAIN_S`` so its last frames
can reach the model, and sends BYE.

Recorded per call, with ``time.monotonic()``: when each frame was due and sent; when each stamped
reply frame arrived; and for every RTP packet from the daemon its sequence number, timestamp and
two arrival times: when this loop read it, and when the kernel queued it on the socket
(``SO_TIMESTAMPNS``, converted from CLOCK_REALTIME to the monotonic clock). On loopback the
kernel time is the moment the daemon's ``sendto`` ran, so packet intervals computed from it do
not depend on how promptly this process was scheduled; the difference between the two is this
process's own receive delay.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import random
import re
import select
import socket
import struct
import time
from array import array
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from typing import Any

import attrs
from _process import pin
from _stamp import STAMP_BYTES, StampScanner, TimeTable, stamp
from _turns import FRAME_S, CallPlan, Talk, Turns, speech_frames

from bridge.media import g711

PCMU = 0
TELEPHONE_EVENT = 101
# After its last frame a call keeps listening this long before its BYE, so every frame it sent
# has had time to reach the model (the daemon reads RTP once per 20 ms tick).
DRAIN_S = 0.5
# RFC 3261 §17.1.1.2 / §17.1.2.2: T1, T2 and the transaction timeout 64*T1.
T1 = 0.5
T2 = 4.0
TRANSACTION_TIMEOUT_S = 64 * T1
# A BYE nobody answers is given up sooner: the call is over for the benchmark either way.
BYE_TIMEOUT_S = 10.0
RECEIVE_BYTES = 4096

# Linux: SO_TIMESTAMPNS (asm-generic/socket.h, also SCM_TIMESTAMPNS); the socket module lacks it.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size)
_RTP = struct.Struct("!BBHII")
_RTP_HEADER_BYTES = 12

_COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
}
_URI_HOSTPORT = re.compile(r"sips?:(?:[^@;>]*@)?([^:;>?]+)(?::(\d+))?")
_TAG = re.compile(r";\s*tag=([^;>\s]+)", re.IGNORECASE)


@attrs.frozen(kw_only=True)
class SipCallerSpec(CallPlan):
    user: str
    invite_at: tuple[float, ...]


class _Phase(enum.Enum):
    WAITING = "waiting"  # INVITE not sent yet
    INVITING = "inviting"  # INVITE sent, no response yet (Timer A runs)
    PROCEEDING = "proceeding"  # a provisional response came
    ANSWERED = "answered"  # 200 received, ACK sent, RTP flows
    DRAINING = "draining"  # RTP stopped, BYE due after DRAIN_S
    BYE_SENT = "bye_sent"
    DONE = "done"


@attrs.define
class _SipMessage:
    """The little of a SIP message a benchmark UAC needs."""

    start: str
    headers: list[tuple[str, str]]  # lower-case full names, values as received
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> _SipMessage | None:
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
        if not lines or not lines[0]:
            return None
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                continue
            name, colon, value = line.partition(":")
            if not colon:
                continue
            name = name.strip().lower()
            headers.append((_COMPACT.get(name, name), value.strip()))
        message = cls(lines[0], headers, body)
        length = message.get("content-length")
        if length is not None and length.isdigit():
            message.body = body[: int(length)]
        return message

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    @property
    def status(self) -> int | None:
        """The status code of a response, None for a request."""
        if not self.start.startswith("SIP/2.0 "):
            return None
        code = self.start[8:11]
        return int(code) if code.isdigit() else None

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def cseq_method(self) -> str:
        cseq = self.get("cseq") or ""
        return cseq.split()[-1].upper() if cseq.split() else ""


def _hostport(uri: str, default_port: int = 5060) -> tuple[str, int] | None:
    match = _URI_HOSTPORT.search(uri)
    if match is None:
        return None
    return match[1], int(match[2]) if match[2] else default_port


def _split(value: str) -> list[str]:
    """A comma-separated header value split at the commas outside <...> and quotes."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for position, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(value[start:position].strip())
            start = position + 1
    parts.append(value[start:].strip())
    return [part for part in parts if part]


def _bracketed(value: str) -> str:
    """The URI inside <...> of a name-addr (or the value itself for a bare addr-spec)."""
    start = value.find("<")
    if start >= 0:
        end = value.find(">", start)
        return value[start + 1 : end if end > 0 else len(value)]
    return value.split(";", 1)[0].strip()


def _sdp_audio(body: bytes) -> tuple[str, int, tuple[str, ...]] | None:
    """The answer's audio address (media-level c= else session-level), port and formats."""
    session_host: str | None = None
    media_host: str | None = None
    port = -1
    formats: tuple[str, ...] = ()
    in_audio = False
    for raw in body.decode("latin-1").splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if port >= 0:
                break  # only the first audio m-line matters
            parts = line[2:].split()
            in_audio = len(parts) >= 3 and parts[0] == "audio"
            if in_audio:
                port = int(parts[1])
                formats = tuple(parts[3:])
        elif line.startswith("c="):
            address = line[2:].split()[-1].split("/")[0]
            if in_audio:
                media_host = address
            elif port < 0:
                session_host = address
    host = media_host or session_host
    if host is None or port < 0:
        return None
    return host, port, formats


class _Loop:
    """epoll plus a timer heap; handlers and timers get the loop's notion of now."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.readers: dict[int, Callable[[float], None]] = {}
        self.timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._order = itertools.count()

    def add_reader(self, sock: socket.socket, handler: Callable[[float], None]) -> None:
        self.readers[sock.fileno()] = handler
        self.epoll.register(sock.fileno(), select.EPOLLIN)

    def remove_reader(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self.readers.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def call_at(self, due: float, callback: Callable[[float], None]) -> None:
        heapq.heappush(self.timers, (due, next(self._order), callback))

    def run_once(self, limit: float) -> None:
        timers = self.timers
        now = time.monotonic()
        timeout = min(limit, timers[0][0] if timers else limit) - now
        # epoll rounds its timeout up to whole milliseconds, so a timer fires 0-1 ms late.
        events = self.epoll.poll(max(0.0, timeout))
        now = time.monotonic()
        readers = self.readers
        for fd, _mask in events:
            handler = readers.get(fd)
            if handler is not None:
                handler(now)
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _due, _order, callback = heapq.heappop(timers)
            callback(now)


class _Call:
    def __init__(
        self,
        index: int,
        spec: SipCallerSpec,
        loop: _Loop,
        rng: random.Random,
        speech: list[bytes],
        clock_offset: float,
    ) -> None:
        self.index = index
        self.spec = spec
        self.loop = loop
        self.rng = rng
        self.clock_offset = clock_offset
        self.phase = _Phase.WAITING
        self.daemon = (spec.host, spec.port)

        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind((spec.host, 0))
        self.sip.setblocking(False)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((spec.host, 0))
        self.rtp.setblocking(False)
        self.rtp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        self.sip_port: int = self.sip.getsockname()[1]
        self.rtp_port: int = self.rtp.getsockname()[1]
        loop.add_reader(self.sip, self.on_sip)
        loop.add_reader(self.rtp, self.on_rtp)

        token = f"{index}-{rng.getrandbits(48):012x}"
        self.call_id = f"bench-{token}@{spec.host}"
        self.from_tag = f"c{rng.getrandbits(32):08x}"
        self.invite_branch = self._branch()
        self.local_uri = f"sip:caller{index}@{spec.host}:{self.sip_port}"
        self.request_uri = f"sip:{spec.user}@{spec.host}:{spec.port}"
        self.to_value = f"<{self.request_uri}>"
        self.remote_target = ""
        self.route: list[str] = []
        self.next_hop = self.daemon
        self.invite = b""
        self.bye = b""
        self.retransmit_interval = T1

        # RTP out
        self.ssrc = rng.getrandbits(32)
        self.sequence = rng.getrandbits(16)
        self.timestamp = rng.getrandbits(32)
        self.media_to: tuple[str, int] | None = None
        self.frame = 0
        self.due = 0.0
        self.due_at = TimeTable()
        self.sent_at = TimeTable()
        self.send_errors = 0

        # RTP in
        self.scanner = StampScanner()
        self.reply_at = TimeTable()
        self.rx_kernel = array("d")
        self.rx_user = array("d")
        self.rx_sequence = array("H")
        self.rx_timestamp = array("I")
        self.rx_markers = 0
        self.rx_ssrcs: set[int] = set()
        self.rx_other_pt = 0
        self.rx_malformed = 0
        self.rx_errors = 0
        self.rx_wrong_source = 0
        self.rx_before_answer = 0

        self.conversation = Turns(rng, speech)

        # SIP outcome
        self.invite_at: float | None = None
        self.trying_at: float | None = None
        self.ringing_at: float | None = None
        self.answered_at: float | None = None
        self.answer_formats: tuple[str, ...] = ()
        self.final_status: int | None = None
        self.invite_retransmits = 0
        self.ok_retransmits = 0
        self.stop_at: float | None = None
        self.bye_status: int | None = None
        self.bye_retransmits = 0
        self.closed_at: float | None = None
        self.ended_by = ""
        self.error = ""
        self.daemon_requests: dict[str, int] = {}

    def _branch(self) -> str:
        return f"z9hG4bK{self.rng.getrandbits(64):016x}"

    def _send_sip(self, data: bytes, to: tuple[str, int]) -> None:
        try:
            self.sip.sendto(data, to)
        except OSError as error:
            self.error = self.error or f"SIP send: {error!r}"

    # ---- SIP: INVITE ------------------------------------------------------------------------

    def start(self, now: float) -> None:
        spec = self.spec
        host = spec.host
        sdp = (
            "v=0\r\n"
            f"o=bench {self.index} 1 IN IP4 {host}\r\n"
            "s=-\r\n"
            f"c=IN IP4 {host}\r\n"
            "t=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP {PCMU} {TELEPHONE_EVENT}\r\n"
            f"a=rtpmap:{PCMU} PCMU/8000\r\n"
            f"a=rtpmap:{TELEPHONE_EVENT} telephone-event/8000\r\n"
            f"a=fmtp:{TELEPHONE_EVENT} 0-15\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n"
        ).encode()
        head = (
            f"INVITE {self.request_uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{self.sip_port};branch={self.invite_branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <{self.local_uri}>;tag={self.from_tag}\r\n"
            f"To: {self.to_value}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <{self.local_uri}>\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n"
        )
        self.invite = head.encode() + sdp
        self.phase = _Phase.INVITING
        self.invite_at = time.monotonic()
        self._send_sip(self.invite, self.daemon)
        self.retransmit_interval = T1
        self.loop.call_at(now + T1, self._invite_timer)

    def _invite_timer(self, now: float) -> None:
        """Timer A (retransmit, doubling, no cap for INVITE) until a response; Timer B gives up.

        After a provisional response the timer only watches for a final one (the daemon answers
        once the model is ready); a call without one after 64*T1 is given up (no CANCEL: the
        benchmark reports it, and the daemon's own timers end its side).
        """
        if self.phase not in (_Phase.INVITING, _Phase.PROCEEDING):
            return
        assert self.invite_at is not None
        if now - self.invite_at >= TRANSACTION_TIMEOUT_S:
            self.error = (
                "INVITE: no response (Timer B)"
                if self.phase is _Phase.INVITING
                else "INVITE: provisional response, but no final one in 32 s"
            )
            self._finish(now, "error")
            return
        if self.phase is _Phase.PROCEEDING:
            self.loop.call_at(now + T1, self._invite_timer)
            return
        self.invite_retransmits += 1
        self._send_sip(self.invite, self.daemon)
        self.retransmit_interval *= 2
        self.loop.call_at(now + self.retransmit_interval, self._invite_timer)

    def on_sip(self, now: float) -> None:
        while True:
            try:
                data, source = self.sip.recvfrom(RECEIVE_BYTES)
            except BlockingIOError:
                return
            except OSError:
                continue
            message = _SipMessage.parse(data)
            if message is None:
                continue
            if message.status is None:
                self._on_request(message, source, now)
            elif message.cseq_method == "INVITE":
                self._on_invite_response(message, now)
            elif message.cseq_method == "BYE":
                self._on_bye_response(message, now)

    def _on_invite_response(self, message: _SipMessage, now: float) -> None:
        status = message.status
        assert status is not None
        if status < 200:
            if self.phase is _Phase.INVITING:
                self.phase = _Phase.PROCEEDING
            if status == 100 and self.trying_at is None:
                self.trying_at = now
            elif status in (180, 183) and self.ringing_at is None:
                self.ringing_at = now
            return
        if status >= 300:
            # RFC 3261 §17.1.1.3: the ACK of a non-2xx is part of the INVITE transaction.
            to = message.get("to") or self.to_value
            self._send_sip(self._ack(self.request_uri, self.invite_branch, to, []), self.daemon)
            if self.phase in (_Phase.INVITING, _Phase.PROCEEDING):
                self.final_status = status
                self.error = f"INVITE answered {message.start[8:].strip()}"
                self._finish(now, "refused")
            return
        if self.answered_at is not None:
            # A retransmitted 200: our ACK was lost or late; every 200 gets an ACK (§13.2.2.4).
            self.ok_retransmits += 1
            if self.phase is not _Phase.DONE:
                self._send_ack()
            return
        if self.phase not in (_Phase.INVITING, _Phase.PROCEEDING):
            return
        self.final_status = status
        self.answered_at = now
        self.to_value = message.get("to") or self.to_value
        contact = message.get("contact")
        self.remote_target = _bracketed(contact) if contact else self.request_uri
        # §12.1.2: the UAC's route set is the Record-Route list reversed.
        self.route = list(
            reversed([r for header in message.get_all("record-route") for r in _split(header)])
        )
        first_hop = _bracketed(self.route[0]) if self.route else self.remote_target
        self.next_hop = _hostport(first_hop) or self.daemon
        self._send_ack()
        audio = _sdp_audio(message.body)
        if audio is None:
            self.error = "200 OK without a usable SDP answer"
            self._hang_up(now)
            return
        host, port, formats = audio
        self.answer_formats = formats
        self.media_to = (host, port)
        self.phase = _Phase.ANSWERED
        self.conversation.next_turn_at = now + self.rng.uniform(0.5, 3.0)
        self.due = now + self.rng.uniform(0.0, FRAME_S)
        self.loop.call_at(self.due, self.tick)

    def _ack(self, uri: str, branch: str, to: str, route: list[str]) -> bytes:
        routes = "".join(f"Route: {r}\r\n" for r in route)
        return (
            f"ACK {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.spec.host}:{self.sip_port};branch={branch};rport\r\n"
            f"{routes}"
            "Max-Forwards: 70\r\n"
            f"From: <{self.local_uri}>;tag={self.from_tag}\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            "CSeq: 1 ACK\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def _send_ack(self) -> None:
        ack = self._ack(self.remote_target, self._branch(), self.to_value, self.route)
        self._send_sip(ack, self.next_hop)

    # ---- SIP: in-dialog requests ------------------------------------------------------------

    def _on_request(self, message: _SipMessage, source: tuple[str, int], now: float) -> None:
        method = message.method
        if method == "ACK":
            return
        self.daemon_requests[method] = self.daemon_requests.get(method, 0) + 1
        status = "488 Not Acceptable Here" if method == "INVITE" else "200 OK"
        vias = "".join(f"Via: {via}\r\n" for via in message.get_all("via"))
        response = (
            f"SIP/2.0 {status}\r\n{vias}"
            f"From: {message.get('from')}\r\n"
            f"To: {message.get('to')}\r\n"
            f"Call-ID: {message.get('call-id')}\r\n"
            f"CSeq: {message.get('cseq')}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        self._send_sip(response, source)
        if method == "BYE" and message.get("call-id") == self.call_id:
            if self.phase in (_Phase.ANSWERED, _Phase.PROCEEDING, _Phase.INVITING):
                self._finish(now, "daemon")
            elif self.phase in (_Phase.DRAINING, _Phase.BYE_SENT):
                self._finish(now, "daemon (while the caller hung up)")

    # ---- SIP: BYE ---------------------------------------------------------------------------

    def _hang_up(self, now: float) -> None:
        """Stop sending RTP now; BYE after DRAIN_S."""
        self.phase = _Phase.DRAINING
        self.loop.call_at(now + DRAIN_S, self._send_bye)

    def _send_bye(self, now: float) -> None:
        if self.phase is not _Phase.DRAINING:
            return
        routes = "".join(f"Route: {r}\r\n" for r in self.route)
        self.bye = (
            f"BYE {self.remote_target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.spec.host}:{self.sip_port};branch={self._branch()};rport\r\n"
            f"{routes}"
            "Max-Forwards: 70\r\n"
            f"From: <{self.local_uri}>;tag={self.from_tag}\r\n"
            f"To: {self.to_value}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            "CSeq: 2 BYE\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        self.phase = _Phase.BYE_SENT
        self.stop_at = time.monotonic()
        self._send_sip(self.bye, self.next_hop)
        self.retransmit_interval = T1
        self.loop.call_at(now + T1, self._bye_timer)

    def _bye_timer(self, now: float) -> None:
        """Timer E: retransmit, doubling up to T2, until a final response."""
        if self.phase is not _Phase.BYE_SENT:
            return
        assert self.stop_at is not None
        if now - self.stop_at >= BYE_TIMEOUT_S:
            self.error = self.error or "BYE: no final response"
            self._finish(now, "caller (BYE unanswered)")
            return
        self.bye_retransmits += 1
        self._send_sip(self.bye, self.next_hop)
        self.retransmit_interval = min(2 * self.retransmit_interval, T2)
        self.loop.call_at(now + self.retransmit_interval, self._bye_timer)

    def _on_bye_response(self, message: _SipMessage, now: float) -> None:
        status = message.status
        if status is None or status < 200 or self.phase is not _Phase.BYE_SENT:
            return
        self.bye_status = status
        self._finish(now, "caller")

    def _finish(self, now: float, ended_by: str) -> None:
        if self.phase is _Phase.DONE:
            return
        self.phase = _Phase.DONE
        self.ended_by = self.ended_by or ended_by
        self.closed_at = now
        self.loop.remove_reader(self.rtp)
        self.rtp.close()
        # The SIP socket stays open until the process ends: a retransmitted 200 or BYE from the
        # daemon still gets its ACK or 200 (a daemon that never saw our answer would retry).

    # ---- RTP --------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Send this call's frame that is due and schedule the next one."""
        if self.phase is not _Phase.ANSWERED:
            return
        spec = self.spec
        talk = self.conversation.check_reply(now, self.reply_at)
        if (talk is Talk.PAUSE and now >= spec.talk_until) or now >= spec.hard_stop:
            self._hang_up(now)
            return
        frame = self.frame
        audio = self.conversation.audio(now, frame)
        packet = (
            _RTP.pack(
                0x80,
                PCMU | (0x80 if frame == 0 else 0),
                (self.sequence + frame) & 0xFFFF,
                (self.timestamp + frame * g711.FRAME_BYTES) & 0xFFFFFFFF,
                self.ssrc,
            )
            + stamp(self.index, frame)
            + audio[STAMP_BYTES:]
        )
        self.due_at.set_first(frame, self.due)
        self.sent_at.set_first(frame, time.monotonic())
        assert self.media_to is not None
        try:
            self.rtp.sendto(packet, self.media_to)
        except OSError:
            self.send_errors += 1
        self.frame += 1
        self.due += FRAME_S
        self.loop.call_at(self.due, self.tick)

    def on_rtp(self, now: float) -> None:
        rtp = self.rtp
        offset = self.clock_offset
        index = self.index
        while True:
            try:
                data, ancillary, _flags, source = rtp.recvmsg(RECEIVE_BYTES, _ANCILLARY_BYTES)
            except BlockingIOError:
                return
            except OSError:
                # ICMP port unreachable of an earlier send (the daemon's port already closed)
                self.rx_errors += 1
                continue
            read_at = time.monotonic()
            kernel_at = read_at
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack(value)
                    kernel_at = seconds + nanoseconds * 1e-9 - offset
            if len(data) < _RTP_HEADER_BYTES or data[0] >> 6 != 2:
                self.rx_malformed += 1
                continue
            first, second, sequence, timestamp, ssrc = _RTP.unpack_from(data)
            if self.media_to is not None and source != self.media_to:
                # symmetric RTP (RFC 4961): the daemon must send from the port in its SDP
                self.rx_wrong_source += 1
            if self.answered_at is None:
                self.rx_before_answer += 1
            self.rx_ssrcs.add(ssrc)
            if second & 0x7F != PCMU:
                self.rx_other_pt += 1
                continue
            if second & 0x80:
                self.rx_markers += 1
            self.rx_kernel.append(kernel_at)
            self.rx_user.append(read_at)
            self.rx_sequence.append(sequence)
            self.rx_timestamp.append(timestamp)
            header = _RTP_HEADER_BYTES + 4 * (first & 0x0F)
            for call, frame in self.scanner.feed(data[header:]):
                if call == index:
                    self.reply_at.set_first(frame, read_at)

    # ---- report -----------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "invite_at": self.invite_at,
            "trying_at": self.trying_at,
            "ringing_at": self.ringing_at,
            "answered_at": self.answered_at,
            "answer_formats": list(self.answer_formats),
            "final_status": self.final_status,
            "invite_retransmits": self.invite_retransmits,
            "ok_retransmits": self.ok_retransmits,
            "stop_at": self.stop_at,
            "bye_status": self.bye_status,
            "bye_retransmits": self.bye_retransmits,
            "closed_at": self.closed_at,
            "ended_by": self.ended_by,
            "error": self.error,
            "daemon_requests": self.daemon_requests,
            "frames_sent": self.frame,
            "due_at": self.due_at.to_bytes(),
            "sent_at": self.sent_at.to_bytes(),
            "send_errors": self.send_errors,
            "reply_at": self.reply_at.to_bytes(),
            "reply_duplicates": self.reply_at.duplicates,
            "rx_kernel": self.rx_kernel.tobytes(),
            "rx_user": self.rx_user.tobytes(),
            "rx_sequence": self.rx_sequence.tobytes(),
            "rx_timestamp": self.rx_timestamp.tobytes(),
            "rx_markers": self.rx_markers,
            "rx_ssrcs": len(self.rx_ssrcs),
            "rx_other_pt": self.rx_other_pt,
            "rx_malformed": self.rx_malformed,
            "rx_errors": self.rx_errors,
            "rx_wrong_source": self.rx_wrong_source,
            "rx_before_answer": self.rx_before_answer,
            "turns": self.conversation.turns,
            "replies": self.conversation.replies,
            "reply_timeouts": self.conversation.reply_timeouts,
        }


def _realtime_offset() -> float:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, from the tightest of a few paired readings."""
    best = (float("inf"), 0.0)
    for _ in range(50):
        before = time.monotonic()
        real = time.time()
        after = time.monotonic()
        best = min(best, (after - before, real - (before + after) / 2))
    return best[1]


def _run(spec: SipCallerSpec, pipe: Pipe) -> None:
    loop = _Loop()
    offset = _realtime_offset()
    calls: list[_Call] = []
    speech = {seed: speech_frames(spec.speech_ms, seed) for seed in range(7)}
    for index, invite_at in zip(spec.calls, spec.invite_at, strict=True):
        rng = random.Random(spec.seed * 100003 + index)
        call = _Call(index, spec, loop, rng, speech[index % 7], offset)
        calls.append(call)
        loop.call_at(invite_at, call.start)
    pipe.send(("ready", None))
    give_up = spec.hard_stop + DRAIN_S + BYE_TIMEOUT_S + 5.0
    while True:
        if all(call.phase is _Phase.DONE for call in calls):
            break
        now = time.monotonic()
        if now >= give_up:
            for call in calls:
                if call.phase is not _Phase.DONE:
                    call.error = call.error or f"still {call.phase.value} at the harness's limit"
                    call._finish(now, "harness limit")
            break
        loop.run_once(min(give_up, now + 1.0))
    # Linger briefly so retransmitted final responses and BYEs from the daemon are answered.
    linger_until = time.monotonic() + 0.5
    while time.monotonic() < linger_until:
        loop.run_once(linger_until)
    pipe.send(("report", [call.report() for call in calls]))
    for call in calls:
        call.sip.close()


def callers_main(spec: SipCallerSpec, pipe: Pipe) -> None:
    """Process entry point."""
    pin(spec.cores, spec.nice, own_group=True)
    _run(spec, pipe)
