"""The SIP ingress (protocols.md §5): SIP over UDP and TCP, RTP media, one telephony leg per call.

A thin trio shell around the sans-IO :class:`~bridge.proto.sip.useragent.SipUserAgent`, which
holds every transaction and dialog of the daemon. Everything that reaches the core (a datagram, a
message framed from a TCP stream, a timer, a command of a call) is followed by :meth:`_process`,
which hands the core's events to the calls and sends what the core wants sent. UDP goes out with
non-blocking ``sendto`` from the listening socket, so replies leave from the port requests came to;
each TCP connection has a writer task.

An INVITE the core accepted becomes a :class:`SipCallLeg` (the TelephonyLeg shape) once the app
admitted it and an RTP port pair was bound; otherwise it gets 503 with Retry-After, which makes a
proxy such as Kamailio try another instance. The leg rings (180) while the model connects and
answers (200 OK + SDP) on :class:`~bridge.call.events.AnswerCall`, which the call sends once the
model confirmed the audio format, so the caller never hears dead air and a model that fails leaves
the call unanswered (503) instead of answered and silent. Media then runs in the shared
:class:`~bridge.adapters.rtp.RtpEngine`.

Call control (protocols.md §5.5): :class:`~bridge.call.events.TransferCall` becomes a blind
transfer by REFER (RFC 3515, RFC 5589 §6) with Referred-By (RFC 3892; by default
``<sip:{user}@{contact_host}>``), and the leg answers it with exactly one
:class:`~bridge.call.events.TransferResult`: ok only when the final NOTIFY sipfrag is 2xx; a
non-2xx answer to the REFER, a failed sipfrag, a timeout, or the call ending first are failures
with a detail. The leg does not hang up after a success: the call sends
``HangUp(TRANSFERRED)``, which is a normal BYE. A ``HangUp`` while the transfer is still open
ends it without a result (the call is over). :class:`~bridge.call.events.SendDtmf` queues RFC
4733 key presses on the call's RTP session (ignored, and logged, before the answer or when the
call negotiated no telephone-event). Transfer events and the end of the call reach the call in
the order they happened, through one small queue.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from bridge.adapters.rtp import NoRtpPort, RtpEngine, RtpMedia, RtpPortPool, RtpSockets
from bridge.call.context import CallInfo
from bridge.call.events import (
    AnswerCall,
    CallerDtmf,
    Capability,
    ClearAudio,
    EndReason,
    HangUp,
    PlayAudio,
    SendDtmf,
    TelephonyCommand,
    TelephonyEnded,
    TelephonyEvent,
    TransferCall,
    TransferResult,
)
from bridge.config import SipIngressConfig, SipTransport
from bridge.errors import LocalProtocolError
from bridge.proto.rtp.session import RtpSession
from bridge.proto.sip.headers import SipUri, format_host
from bridge.proto.sip.message import SipParseError, SipStreamFramer
from bridge.proto.sip.sdp import Direction, NegotiatedAudio
from bridge.proto.sip.useragent import (
    CallConfirmed,
    CallTerminated,
    IncomingCall,
    InfoDtmf,
    InviteRefused,
    MediaUpdated,
    Peer,
    ReferAnswered,
    ReferProgress,
    ReferTimedOut,
    SipUserAgent,
    Termination,
    Transport,
    UserAgentSettings,
    UserAgentStatistics,
)

INGRESS = "sip"
DATAGRAM_BUFFER = 65535
TCP_READ_SIZE = 65536
TCP_CONNECT_TIMEOUT_S = 5.0
TCP_IDLE_TIMEOUT_S = 600.0
# Messages a TCP peer may have queued for it before we give up on the connection.
TCP_QUEUE = 256
# A leg's control reports (transfer results, its end) waiting for the call to take them: a
# handful per call at most.
REPORT_QUEUE = 16

# The final answer to an INVITE we could not take, by why the call ended before it was answered.
_STATUS_BEFORE_ANSWER: Mapping[EndReason, int] = {
    EndReason.INTERNAL_ERROR: 500,
    EndReason.MAX_DURATION: 480,
}
_DEFAULT_STATUS_BEFORE_ANSWER = 503

_TERMINATION_DETAIL: Mapping[Termination, str] = {
    Termination.BYE: "the caller sent BYE",
    Termination.CANCEL: "the caller cancelled before the answer",
    Termination.ACK_TIMEOUT: "no ACK for our 200 OK (is our Contact reachable?)",
}


@attrs.frozen
class SipListening:
    """Where the SIP ingress listens, and how the daemon ends its calls when it stops."""

    port: int
    # end_calls(linger_s): BYE (or 503) every call, then let the BYEs get their answers
    end_calls: Callable[[float], Awaitable[None]] = attrs.field(eq=False, repr=False)
    # the SIP core's counters now (for metrics)
    statistics: Callable[[], UserAgentStatistics] = attrs.field(eq=False, repr=False)


# ---- the call leg ------------------------------------------------------------------------------


class SipCallLeg:
    """The telephony leg of one SIP call (the :class:`~bridge.adapters.leg.TelephonyLeg` shape)."""

    def __init__(
        self,
        *,
        endpoint: _SipEndpoint,
        key: str,
        info: CallInfo,
        audio: NegotiatedAudio,
        sockets: RtpSockets,
    ) -> None:
        self.info = info
        self.key = key
        self._endpoint = endpoint
        self._audio = audio
        self._sockets = sockets
        self._media: RtpMedia | None = None
        self._answered = False
        self._finished = False
        self._closed = False
        self._ended: TelephonyEnded | None = None
        self._events: trio.MemorySendChannel[TelephonyEvent] | None = None
        # the transfer target while a REFER is open
        self._transfer_target: str | None = None
        self._reports_send, self._reports = trio.open_memory_channel[TelephonyEvent](REPORT_QUEUE)
        self._extra = {"call_id": info.call_id}

    @property
    def sockets(self) -> RtpSockets:
        return self._sockets

    async def run(
        self,
        events: trio.MemorySendChannel[TelephonyEvent],
        commands: trio.MemoryReceiveChannel[TelephonyCommand],
    ) -> None:
        """Relay until the caller's side ends (after sending TelephonyEnded), HangUp, or commands
        close. The SIP side is always finished when this returns: BYE, or a final response."""
        self._events = events
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward_reports, events, nursery.cancel_scope)
                async for command in commands:
                    match command:
                        case AnswerCall():
                            self._answer()
                        case PlayAudio(item_id=item_id, payload=payload):
                            if self._media is not None:
                                self._media.session.play(item_id, payload)
                        case ClearAudio():
                            if self._media is not None:
                                self._media.session.clear()
                        case TransferCall(target=target, referred_by=referred_by):
                            self._transfer(target, referred_by)
                        case SendDtmf(digits=digits):
                            self._send_dtmf(digits)
                        case HangUp(reason=reason):
                            self._hang_up(reason)
                            break
                nursery.cancel_scope.cancel()
        finally:
            self.close(EndReason.SHUTDOWN)

    async def _forward_reports(
        self, events: trio.MemorySendChannel[TelephonyEvent], cancel_scope: trio.CancelScope
    ) -> None:
        """Transfer results and the end of the call, in order; the leg is done after its end."""
        async for report in self._reports:
            try:
                await events.send(report)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if isinstance(report, TelephonyEnded):
                break
        cancel_scope.cancel()

    def _report(self, report: TransferResult | TelephonyEnded) -> None:
        try:
            self._reports_send.send_nowait(report)
        except trio.WouldBlock:
            # only a call that stopped reading its events gets here; it is ending anyway
            self._endpoint.log.warning(
                "SIP call report dropped",
                extra={**self._extra, "report": type(report).__name__},
            )

    # ---- commands ------------------------------------------------------------------------------

    def _answer(self) -> None:
        if self._answered or self._ended is not None:
            return
        self._answered = True
        endpoint = self._endpoint
        now = trio.current_time()
        config = endpoint.config
        audio = self._audio
        session = RtpSession(
            codec=audio.codec,
            payload_type=audio.payload_type,
            dtmf_payload_type=audio.dtmf_payload_type,
            remote=_remote_media(audio),
            direction=audio.direction,
            rng=endpoint.rng,
            now=now,
            latch_window_s=config.latch_window_s,
            jitter_depth_frames=config.jitter_frames,
        )
        assert self._events is not None
        self._media = RtpMedia(
            session=session,
            sockets=self._sockets,
            events=self._events,
            rtp_timeout_s=config.rtp_timeout_s,
            on_lost=self._media_lost,
            now=now,
            call_id=self.info.call_id,
        )
        self._media.hold(_expects_caller_media(audio.direction), now)
        endpoint.ua.answer(self.key, media_port=self._sockets.port, now=now)
        endpoint.process()
        endpoint.rtp.add(self._media)
        endpoint.log.info(
            "SIP call answered",
            extra={**self._extra, "codec": audio.codec.value, "rtp_port": self._sockets.port},
        )

    def _transfer(self, target: str, referred_by: str) -> None:
        """REFER the caller to `target`; the outcome comes back as one TransferResult."""
        endpoint = self._endpoint
        if self._transfer_target is not None:
            self._report(TransferResult(False, 0, "another transfer is still under way"))
            return
        if self._ended is not None or self._finished:
            self._report(TransferResult(False, 0, "the call has ended"))
            return
        if not self._answered:
            self._report(TransferResult(False, 0, "the call is not answered yet"))
            return
        config = endpoint.config
        referrer = referred_by or f"<sip:{config.user}@{format_host(config.contact_host)}>"
        try:
            sent = endpoint.ua.refer(
                self.key, target, referred_by=referrer, now=trio.current_time()
            )
        except LocalProtocolError as error:
            endpoint.log.warning(
                "SIP transfer refused", extra={**self._extra, "target": target, "error": str(error)}
            )
            self._report(TransferResult(False, 0, f"cannot transfer to {target!r}: {error}"))
            return
        if not sent:
            # no ACK for our 200 yet, or the dialog is ending
            self._report(TransferResult(False, 0, "the call cannot be transferred at this moment"))
            return
        self._transfer_target = target
        endpoint.log.info("SIP transfer started", extra={**self._extra, "target": target})
        endpoint.process()

    def _finish_transfer(self, ok: bool, status: int, detail: str) -> None:
        target = self._transfer_target
        if target is None:
            return
        self._transfer_target = None
        self._endpoint.log.info(
            "SIP transfer finished",
            extra={**self._extra, "target": target, "ok": ok, "status": status, "detail": detail},
        )
        self._report(TransferResult(ok, status, detail))

    def _send_dtmf(self, digits: str) -> None:
        """RFC 4733 key presses ahead of queued audio. The digits are not logged: an IVR may be
        asking for an account number or a PIN."""
        log = self._endpoint.log
        if self._media is None or self._ended is not None:
            log.info("SIP DTMF ignored: the call is not up", extra={**self._extra})
            return
        try:
            self._media.session.send_dtmf(digits)
        except ValueError as error:
            log.warning("SIP DTMF not sent", extra={**self._extra, "error": str(error)})
            return
        log.info("SIP DTMF queued", extra={**self._extra, "digits": len(digits)})

    def _hang_up(self, reason: EndReason) -> None:
        if self._transfer_target is not None:
            # the call is over for the control loop: nobody waits for the transfer's result
            self._endpoint.log.info(
                "SIP transfer finished",
                extra={
                    **self._extra,
                    "target": self._transfer_target,
                    "ok": False,
                    "status": 0,
                    "detail": f"hung up ({reason.value}) before the outcome",
                },
            )
            self._transfer_target = None
        if self._finished:
            return
        endpoint = self._endpoint
        now = trio.current_time()
        if self._answered:
            endpoint.ua.hang_up(self.key, now)
            endpoint.log.info("hanging up (BYE)", extra={**self._extra, "reason": reason.value})
        else:
            status = _STATUS_BEFORE_ANSWER.get(reason, _DEFAULT_STATUS_BEFORE_ANSWER)
            retry_after = endpoint.config.retry_after_s if status == 503 else None
            endpoint.ua.reject(self.key, status, now, retry_after=retry_after)
            endpoint.log.info(
                "SIP call refused before the answer",
                extra={**self._extra, "status": status, "reason": reason.value},
            )
        self._finished = True
        endpoint.process()

    def close(self, reason: EndReason) -> None:
        """Finish the SIP side if nobody did, stop the media and free the ports (idempotent)."""
        if not self._finished and self._ended is None:
            self._hang_up(reason)
        self._finished = True
        if self._media is not None:
            self._endpoint.rtp.remove(self._media)
            if not self._closed:
                self._log_media(self._media)
        self._closed = True
        self._endpoint.forget(self)

    def _log_media(self, media: RtpMedia) -> None:
        rtp = media.session.statistics()
        jitter = rtp.jitter
        self._endpoint.log.info(
            "SIP call media",
            extra={
                **self._extra,
                "packets_in": rtp.packets_in,
                "packets_out": rtp.packets_out,
                "audio_frames_out": rtp.audio_frames_out,
                "lost": jitter.lost,
                "late": jitter.late,
                "duplicates": jitter.duplicates,
                "reordered": jitter.reordered,
                "malformed": rtp.malformed,
                "wrong_source": rtp.wrong_source,
                "dtmf_in": rtp.dtmf_in,
                "cleared_frames": rtp.cleared_frames,
                "ticks_skipped": rtp.ticks_skipped,
                "caller_audio_dropped": media.statistics.caller_audio_dropped,
                "send_errors": media.statistics.send_errors,
                "flood_ticks": media.statistics.flood_ticks,
            },
        )

    def shut_down(self) -> None:
        """The daemon stops: end the SIP side (BYE, or 503 before the answer) and tell the call."""
        if self._ended is None:
            self._finish_transfer(False, 0, "the daemon is shutting down")
            self._hang_up(EndReason.SHUTDOWN)
            self.end(EndReason.SHUTDOWN, "the daemon is shutting down")

    # ---- what the endpoint and the RTP engine report -------------------------------------------

    def end(self, reason: EndReason, detail: str) -> None:
        """The caller's side is over (BYE, CANCEL, no ACK, no RTP)."""
        if self._ended is not None:
            return
        self._finish_transfer(False, 0, "the call ended before the transfer completed")
        self._ended = TelephonyEnded(reason, detail)
        self._report(self._ended)

    def terminated(self, termination: Termination) -> None:
        self._finished = True
        reason = (
            EndReason.TELEPHONY_ERROR
            if termination is Termination.ACK_TIMEOUT
            else EndReason.CALLER_HANGUP
        )
        level = logging.WARNING if reason is EndReason.TELEPHONY_ERROR else logging.INFO
        detail = _TERMINATION_DETAIL[termination]
        self._endpoint.log.log(
            level, "SIP call ended by the caller's side", extra={**self._extra, "detail": detail}
        )
        self.end(reason, detail)

    def confirmed(self) -> None:
        self._endpoint.log.debug("ACK received", extra=self._extra)

    def media_updated(self, audio: NegotiatedAudio) -> None:
        self._audio = audio
        if self._media is None:
            return
        now = trio.current_time()
        self._media.session.update_remote(
            _remote_media(audio),
            audio.direction,
            now,
            payload_type=audio.payload_type,
            dtmf_payload_type=audio.dtmf_payload_type,
        )
        self._media.hold(_expects_caller_media(audio.direction), now)
        self._endpoint.log.info(
            "SIP media updated",
            extra={
                **self._extra,
                "remote": f"{audio.remote_host}:{audio.remote_port}",
                "direction": audio.direction.value,
            },
        )

    def refer_answered(self, status: int, reason: str) -> None:
        if self._transfer_target is None:
            return
        self._endpoint.log.info(
            "SIP transfer answered", extra={**self._extra, "status": status, "reason": reason}
        )
        if status >= 300:
            self._finish_transfer(False, status, f"the REFER was refused: {status} {reason}")

    def refer_progress(self, status: int, reason: str, final: bool) -> None:
        if self._transfer_target is None:
            return
        self._endpoint.log.debug(
            "SIP transfer progress",
            extra={**self._extra, "status": status, "reason": reason, "final": final},
        )
        if not final:
            return
        if 200 <= status < 300:
            self._finish_transfer(True, status, f"the target answered: {status} {reason}")
        elif status == 0:
            self._finish_transfer(False, 0, "the transfer report (NOTIFY) was unreadable")
        elif status < 200:
            self._finish_transfer(
                False, status, f"the transfer report ended at {status} {reason}, unanswered"
            )
        else:
            self._finish_transfer(
                False, status, f"the target did not take the call: {status} {reason}"
            )

    def refer_timed_out(self, detail: str) -> None:
        self._finish_transfer(False, 0, detail)

    @property
    def caller_audio_dropped(self) -> int:
        return self._media.statistics.caller_audio_dropped if self._media is not None else 0

    def info_dtmf(self, digit: str) -> None:
        if self._events is None:
            return
        try:
            self._events.send_nowait(CallerDtmf(digit))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _media_lost(self, detail: str) -> None:
        endpoint = self._endpoint
        endpoint.log.warning("SIP call media lost", extra={**self._extra, "detail": detail})
        if not self._finished:
            endpoint.ua.hang_up(self.key, trio.current_time())
            self._finished = True
            endpoint.process()
        self.end(EndReason.TELEPHONY_ERROR, detail)


def _remote_media(audio: NegotiatedAudio) -> tuple[str, int] | None:
    """The SDP's media address, if it is one we can send to without a DNS lookup.

    A host name in c= (legal, rare) would make every sendto() resolve it, blocking the event
    loop; such a call gets its destination from latching on the caller's first packets instead.
    """
    if audio.remote_port == 0:
        return None
    try:
        address = ipaddress.ip_address(audio.remote_host)
    except ValueError:
        return None
    if address.is_unspecified:
        return None
    return (audio.remote_host, audio.remote_port)


def _expects_caller_media(direction: Direction) -> bool:
    """Whether a silent caller means a dead call: only while both ways are on (many phones send
    nothing at all while they hold the call, whatever their SDP says)."""
    return direction is Direction.SENDRECV


# ---- the endpoint --------------------------------------------------------------------------------


class _TcpConnection:
    def __init__(self, stream: trio.abc.Stream, peer: Peer) -> None:
        self.stream = stream
        self.peer = peer
        self.outgoing_send, self.outgoing = trio.open_memory_channel[bytes](TCP_QUEUE)
        self.cancel_scope = trio.CancelScope()


class _SipEndpoint:
    def __init__(
        self,
        *,
        config: SipIngressConfig,
        ua: SipUserAgent,
        rtp: RtpEngine,
        ports: RtpPortPool,
        rng: random.Random,
        log: logging.Logger,
        admit: Callable[[], bool],
        release: Callable[[], None],
        available: Callable[[], bool],
        handle_call: Callable[[SipCallLeg], Awaitable[None]],
        new_call_id: Callable[[], str],
        nursery: trio.Nursery,
        refused: Callable[[int], None],
    ) -> None:
        self.config = config
        self._refused = refused
        self.ua = ua
        self.rtp = rtp
        self.ports = ports
        self.rng = rng
        self.log = log
        self._admit = admit
        self._release = release
        self._available = available
        self._handle_call = handle_call
        self._new_call_id = new_call_id
        self._nursery = nursery
        self._legs: dict[str, SipCallLeg] = {}
        self._tcp: dict[tuple[str, int], _TcpConnection] = {}
        self._udp: socket.socket | None = None
        self._timer_changed = trio.Event()
        self._no_calls = trio.Event()
        self.udp_send_errors = 0
        self.tcp_messages_dropped = 0

    # ---- input ---------------------------------------------------------------------------------

    def _accepting(self) -> bool:
        limit = self.config.max_calls
        if limit and len(self._legs) >= limit:
            return False
        return self._available() and self.ports.in_use < self.ports.capacity

    def datagram(self, data: bytes, source: Peer) -> None:
        self.ua.accepting = self._accepting()
        self.ua.receive_datagram(data, source, trio.current_time())
        self.process()

    def message(self, message: object, source: Peer) -> None:
        self.ua.accepting = self._accepting()
        self.ua.receive_message(message, source, trio.current_time())  # type: ignore[arg-type]
        self.process()

    def process(self) -> None:
        """Hand the core's events to the calls and send what it has to send."""
        ua = self.ua
        while (event := ua.next_event()) is not None:
            match event:
                case IncomingCall():
                    self._incoming(event)
                case InviteRefused(status=status):
                    self._refused(status)
                case CallConfirmed(call=key):
                    if (leg := self._legs.get(key)) is not None:
                        leg.confirmed()
                case MediaUpdated(call=key, audio=audio):
                    if (leg := self._legs.get(key)) is not None:
                        leg.media_updated(audio)
                case InfoDtmf(call=key, digit=digit):
                    if (leg := self._legs.get(key)) is not None:
                        leg.info_dtmf(digit)
                case CallTerminated(call=key, reason=termination):
                    if (leg := self._legs.get(key)) is not None:
                        leg.terminated(termination)
                case ReferAnswered(call=key, status=status, reason=reason):
                    if (leg := self._legs.get(key)) is not None:
                        leg.refer_answered(status, reason)
                case ReferProgress(call=key, status=status, reason=reason, final=final):
                    if (leg := self._legs.get(key)) is not None:
                        leg.refer_progress(status, reason, final)
                case ReferTimedOut(call=key, detail=detail):
                    if (leg := self._legs.get(key)) is not None:
                        leg.refer_timed_out(detail)
        for data, peer in ua.messages_to_send():
            self._send(data, peer)
        self._timer_changed.set()

    def _send(self, data: bytes, peer: Peer) -> None:
        if peer.transport is Transport.UDP:
            if self._udp is None:
                self.udp_send_errors += 1
                return
            try:
                self._udp.sendto(data, (peer.host, peer.port))
            except OSError:
                self.udp_send_errors += 1
            return
        connection = self._tcp.get((peer.host, peer.port))
        if connection is None:
            self._nursery.start_soon(self._connect_and_send, peer, data)
            return
        try:
            connection.outgoing_send.send_nowait(data)
        except trio.WouldBlock:
            # a peer that stops reading is gone: its writer is stuck, so end the connection
            self.tcp_messages_dropped += 1
            connection.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.tcp_messages_dropped += 1

    def _incoming(self, event: IncomingCall) -> None:
        now = trio.current_time()
        source = f"{event.source.host}:{event.source.port}"
        if not self._accepting() or not self._admit():
            self.ua.reject(event.call, 503, now, retry_after=self.config.retry_after_s)
            self._refused(503)
            self.log.warning(
                "SIP call refused: at capacity or draining",
                extra={"sip_call_id": event.call_id, "source": source},
            )
            return
        try:
            sockets = self.ports.allocate()
        except (NoRtpPort, OSError) as error:
            self._release()
            self.ua.reject(event.call, 503, now, retry_after=self.config.retry_after_s)
            self._refused(503)
            self.log.error(
                "SIP call refused: no RTP port",
                extra={"sip_call_id": event.call_id, "error": str(error)},
            )
            return
        info = _call_info(self._new_call_id(), event, self.config.headers)
        leg = SipCallLeg(
            endpoint=self, key=event.call, info=info, audio=event.audio, sockets=sockets
        )
        self._legs[event.call] = leg
        if self.config.ringing:
            self.ua.ring(event.call, now)
        self.log.info(
            "SIP call offered",
            extra={
                "call_id": info.call_id,
                "sip_call_id": event.call_id,
                "source": source,
                "caller": info.caller,
                "called": info.called,
                "codec": event.audio.codec.value,
                "transport": event.source.transport.value,
            },
        )
        self._nursery.start_soon(self._run_call, leg)

    async def _run_call(self, leg: SipCallLeg) -> None:
        try:
            await self._handle_call(leg)
        except Exception:
            self.log.exception("SIP call failed", extra={"call_id": leg.info.call_id})
        finally:
            leg.close(EndReason.INTERNAL_ERROR)

    async def end_calls(self, linger_s: float) -> None:
        """Hang up every call cleanly, and keep serving SIP for up to `linger_s` so the BYEs are
        retransmitted and answered before the listeners close."""
        legs = list(self._legs.values())
        for leg in legs:
            leg.shut_down()
        if not legs:
            return
        self.log.info("ending SIP calls", extra={"calls": len(legs)})
        with trio.move_on_after(linger_s):
            self._no_calls = trio.Event()
            if self._legs:
                await self._no_calls.wait()
            # the BYEs' answers (and, over UDP, their retransmissions) need a moment
            await trio.sleep(min(1.0, linger_s))

    def forget(self, leg: SipCallLeg) -> None:
        if self._legs.pop(leg.key, None) is not None:
            self.ports.release(leg.sockets)
            self._release()
            if not self._legs:
                self._no_calls.set()

    # ---- tasks ---------------------------------------------------------------------------------

    async def serve_timers(self) -> None:
        while True:
            self._timer_changed = trio.Event()
            deadline = self.ua.next_deadline()
            with trio.move_on_at(deadline):
                await self._timer_changed.wait()
            now = trio.current_time()
            if now >= deadline:
                self.ua.handle_timeout(now)
                self.process()

    async def serve_udp(self, sock: socket.socket) -> None:
        self._udp = sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            # everything the socket holds, then one round of processing per datagram
            for _ in range(256):
                try:
                    data, address = sock.recvfrom(DATAGRAM_BUFFER)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    # ICMP errors of earlier sends surface here on Linux
                    continue
                self._guarded_input(
                    self.datagram, data, Peer(Transport.UDP, address[0], address[1])
                )
            await trio.lowlevel.checkpoint()

    async def serve_tcp_connection(self, stream: trio.SocketStream) -> None:
        # trio.serve_listeners runs this in the server's nursery: nothing may escape it, or one
        # peer (a connect and an instant reset is enough) would stop the whole daemon.
        try:
            address = stream.socket.getpeername()
        except OSError:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()
            return
        peer = Peer(Transport.TCP, address[0], address[1])
        try:
            await self._run_connection(stream, peer)
        except Exception:
            self.log.exception(
                "SIP over TCP: connection failed", extra={"peer": f"{peer.host}:{peer.port}"}
            )

    async def _connect_and_send(self, peer: Peer, data: bytes) -> None:
        try:
            with trio.fail_after(TCP_CONNECT_TIMEOUT_S):
                stream = await trio.open_tcp_stream(peer.host, peer.port)
        except (OSError, trio.TooSlowError) as error:
            self.tcp_messages_dropped += 1
            self.log.warning(
                "SIP over TCP: cannot connect",
                extra={"peer": f"{peer.host}:{peer.port}", "error": str(error)},
            )
            return
        try:
            await self._run_connection(stream, peer, first=data)
        except Exception:
            self.log.exception(
                "SIP over TCP: connection failed", extra={"peer": f"{peer.host}:{peer.port}"}
            )

    async def _run_connection(
        self, stream: trio.SocketStream, peer: Peer, first: bytes | None = None
    ) -> None:
        connection = _TcpConnection(stream, peer)
        key = (peer.host, peer.port)
        self._tcp[key] = connection
        if first is not None:
            connection.outgoing_send.send_nowait(first)
        try:
            with connection.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_connection, connection, nursery.cancel_scope)
                    await self._read_connection(connection, inbound=first is None)
                    nursery.cancel_scope.cancel()
        finally:
            if self._tcp.get(key) is connection:
                del self._tcp[key]
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _read_connection(self, connection: _TcpConnection, *, inbound: bool) -> None:
        framer = SipStreamFramer()
        pings = 0
        peer = connection.peer
        if inbound and not self._allowed_source(peer.host):
            self.log.info("SIP over TCP: source not allowed", extra={"peer": peer.host})
            return
        while True:
            data: bytes | bytearray = b""
            with trio.move_on_after(TCP_IDLE_TIMEOUT_S):
                try:
                    data = await connection.stream.receive_some(TCP_READ_SIZE)
                except trio.BrokenResourceError:
                    return
            if not data:
                return
            framer.feed(bytes(data))
            while True:
                try:
                    message = framer.next_message()
                except SipParseError as error:
                    if not framer.framing_lost:
                        # one bad message, cut out whole: it gets its 400 and the stream goes on
                        self.ua.receive_malformed(error, peer, trio.current_time())
                        self.process()
                        continue
                    # framing is lost: nothing after this can be trusted
                    self.log.info(
                        "SIP over TCP: malformed stream, closing",
                        extra={"peer": f"{peer.host}:{peer.port}", "error": error.reason},
                    )
                    return
                if message is None:
                    break
                self._guarded_input(self.message, message, peer)
            if framer.keepalives != pings:
                pings = framer.keepalives
                # RFC 5626 §3.5.1: a double-CRLF ping is answered with one CRLF
                try:
                    connection.outgoing_send.send_nowait(b"\r\n")
                except trio.WouldBlock:
                    self.log.info(
                        "SIP over TCP: the peer does not read what we send, closing",
                        extra={"peer": f"{peer.host}:{peer.port}"},
                    )
                    return

    async def _write_connection(
        self, connection: _TcpConnection, cancel_scope: trio.CancelScope
    ) -> None:
        try:
            async for data in connection.outgoing:
                await connection.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        cancel_scope.cancel()

    def _guarded_input(self, handle: Callable[[Any, Peer], None], item: Any, peer: Peer) -> None:
        """One message's failure costs that message, never the listener and its calls."""
        try:
            handle(item, peer)
        except Exception:
            self.log.exception(
                "SIP message could not be handled", extra={"peer": f"{peer.host}:{peer.port}"}
            )

    def _allowed_source(self, host: str) -> bool:
        """The core checks every message too; this only spares a connection nobody may use."""
        networks = self.ua.settings.allow_from
        if not networks:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in networks)


def _call_info(call_id: str, event: IncomingCall, header_names: tuple[str, ...]) -> CallInfo:
    caller = _user(event.from_addr.uri)
    called = _user(event.request_uri) or _user(event.to_addr.uri)
    variables = {
        "sip_call_id": event.call_id,
        "sip_from": event.from_addr.uri,
        "sip_to": event.to_addr.uri,
        "sip_request_uri": event.request_uri,
        "caller_name": event.from_addr.display,
    }
    for name in header_names:
        value = event.headers.get(name)
        if value is not None:
            variables[name.lower().replace("-", "_")] = value
    source = event.source
    capabilities = {Capability.TRANSFER}
    if event.audio.dtmf_payload_type is not None:
        # RFC 4733 needs the telephone-event payload type the caller offered
        capabilities.add(Capability.SEND_DTMF)
    return CallInfo(
        call_id=call_id,
        ingress=INGRESS,
        codec=event.audio.codec,
        caller=caller,
        called=called,
        variables=variables,
        external_ids={
            "sip_call_id": event.call_id,
            "sip_source": f"{source.transport.value.lower()}:{source.host}:{source.port}",
        },
        capabilities=frozenset(capabilities),
    )


def _user(uri: str) -> str:
    try:
        return SipUri.parse(uri).user
    except SipParseError:
        return ""


# ---- the server ----------------------------------------------------------------------------------


def _bind_udp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve_sip(
    config: SipIngressConfig,
    *,
    handle_call: Callable[[SipCallLeg], Awaitable[None]],
    admit: Callable[[], bool],
    release: Callable[[], None],
    available: Callable[[], bool],
    log: logging.Logger,
    rng: random.Random,
    new_call_id: Callable[[], str],
    pacing_observer: Callable[[float], None] | None = None,
    refused: Callable[[int], None] = lambda status: None,
    task_status: trio.TaskStatus[SipListening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve SIP on ``config.host:config.port`` (UDP and/or TCP) until cancelled.

    `admit()` reserves a call slot in the daemon (False: at capacity or draining) and `release()`
    frees it when the call is over; `available()` says whether a call would be admitted now
    (OPTIONS and INVITE get 503 otherwise). `pacing_observer` is told how late, in seconds, each
    20 ms RTP tick ran, and `refused(status)` of each new INVITE answered with a failure (503
    when not admitted, 4xx for a bad request or offer). Reports ``started(SipListening(port))``.
    """
    transports = set(config.transports)
    udp_sock: socket.socket | None = None
    tcp_listeners: list[trio.SocketListener] = []
    port = config.port
    if SipTransport.UDP in transports:
        udp_sock = _bind_udp(config.host, port)
        port = udp_sock.getsockname()[1]
    if SipTransport.TCP in transports:
        try:
            tcp_listeners = await trio.open_tcp_listeners(port, host=config.host)
        except OSError:
            if udp_sock is not None:
                udp_sock.close()
            raise
        port = tcp_listeners[0].socket.getsockname()[1]
    contact_host = config.contact_host
    settings = UserAgentSettings(
        contact_host=contact_host,
        contact_port=port,
        user=config.user,
        codecs=tuple(config.codecs),
        allow_from=config.allowed_networks(),
        retry_after_s=config.retry_after_s,
    )
    ua = SipUserAgent(settings, rng=rng)
    endpoint: _SipEndpoint | None = None
    rtp = RtpEngine(log=log, pacing_observer=pacing_observer)
    ports = RtpPortPool(config.host, config.rtp_port_min, config.rtp_port_max, rng=rng)
    try:
        async with trio.open_nursery() as nursery:
            endpoint = _SipEndpoint(
                config=config,
                ua=ua,
                rtp=rtp,
                ports=ports,
                rng=rng,
                log=log,
                admit=admit,
                release=release,
                available=available,
                handle_call=handle_call,
                new_call_id=new_call_id,
                nursery=nursery,
                refused=refused,
            )
            await nursery.start(rtp.run)
            nursery.start_soon(endpoint.serve_timers)
            if udp_sock is not None:
                nursery.start_soon(endpoint.serve_udp, udp_sock)
            if tcp_listeners:
                nursery.start_soon(
                    trio.serve_listeners, endpoint.serve_tcp_connection, tcp_listeners
                )
            log.info(
                "SIP ingress listening",
                extra={
                    "host": config.host,
                    "port": port,
                    "transports": ",".join(t.value for t in config.transports),
                    "contact": f"{contact_host}:{port}",
                    "rtp_ports": f"{config.rtp_port_min}-{config.rtp_port_max}",
                },
            )
            task_status.started(
                SipListening(port=port, end_calls=endpoint.end_calls, statistics=ua.statistics)
            )
    finally:
        if udp_sock is not None:
            udp_sock.close()
        sip_figures = attrs.asdict(ua.statistics())
        log.info(
            "SIP ingress stopped",
            extra={
                **sip_figures,
                "rtp_ticks": rtp.ticks,
                "rtp_late_ticks": rtp.late_ticks,
                "rtp_ticks_skipped": rtp.ticks_skipped,
                "rtp_sent_from_instrument": rtp.sent_from_instrument,
                "udp_send_errors": endpoint.udp_send_errors if endpoint else 0,
                "tcp_messages_dropped": endpoint.tcp_messages_dropped if endpoint else 0,
            },
        )


__all__ = ["INGRESS", "SipCallLeg", "SipListening", "serve_sip"]
