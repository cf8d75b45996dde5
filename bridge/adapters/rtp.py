"""RTP media for SIP calls: the port pool and the one 20 ms tick that serves every call.

Each call has its own UDP port pair (an even RTP port and the next one for RTCP, RFC 3550 §11),
and sends from the port it receives on (symmetric RTP, RFC 4961). The protocol itself lives in the
sans-IO :class:`~bridge.proto.rtp.session.RtpSession`; this module moves datagrams.

One task paces every call (DESIGN.md "consider one shared 20 ms tick for all RTP calls"). On an
absolute schedule ``t0 + n * 20 ms`` it sends each call the one packet its session has for this
tick (model audio, a DTMF event or silence: RTP never stops, or peers hang up on RTP timeout),
reads whatever the readable sockets hold (non-blocking, so waiting costs no task wake-up per
packet), lets the sessions release caller audio through their jitter buffers, and passes each
session's events to its call. So 200 calls cost 50 wake-ups a second, not 20,000. When the loop
falls more than 100 ms behind it skips the missed ticks instead of bursting, and the sessions
advance their timestamps by the time skipped.

Caller audio goes to the call with ``send_nowait`` and is counted when the call's inbox is full
(DESIGN.md rule 5): real-time audio never waits.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import random
import select
import socket
from collections.abc import Callable
from typing import Any

import attrs
import trio

from bridge.call.events import (
    AudioPlayed,
    CallerAudio,
    CallerDtmf,
    TelephonyEvent,
)
from bridge.media import g711
from bridge.proto.rtp.session import RtpSession

FRAME_S = g711.FRAME_MS / 1000
# Beyond this lateness the pacer skips ticks rather than sending a burst.
MAX_BEHIND_TICKS = 5
RECEIVE_BUFFER = 2048
# Datagrams read from one socket per tick, at most: a flood must not starve the other calls.
MAX_READS_PER_TICK = 64


class NoRtpPort(Exception):
    """Every port pair of the configured range is in use."""


@attrs.define(eq=False)
class RtpSockets:
    """One call's bound, non-blocking RTP and RTCP sockets."""

    rtp: socket.socket
    rtcp: socket.socket
    port: int

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


class RtpPortPool:
    """Hands out even RTP ports (and the RTCP port above each) from a configured range."""

    def __init__(self, host: str, low: int, high: int, *, rng: random.Random) -> None:
        self.host = host
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        first = low + (low % 2)
        self._ports = list(range(first, high, 2))
        self._in_use: set[int] = set()
        self._next = rng.randrange(len(self._ports)) if self._ports else 0

    @property
    def capacity(self) -> int:
        return len(self._ports)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def allocate(self) -> RtpSockets:
        """Bind the next free pair; ports other programs hold are skipped."""
        for _ in range(len(self._ports)):
            port = self._ports[self._next]
            self._next = (self._next + 1) % len(self._ports)
            if port in self._in_use:
                continue
            try:
                sockets = self._bind(port)
            except OSError as error:
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self._in_use.add(port)
            return sockets
        raise NoRtpPort(f"all {len(self._ports)} RTP port pairs are in use")

    def release(self, sockets: RtpSockets) -> None:
        sockets.close()
        self._in_use.discard(sockets.port)

    def _bind(self, port: int) -> RtpSockets:
        rtp = socket.socket(self._family, socket.SOCK_DGRAM)
        rtcp = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            rtp.bind((self.host, port))
            rtcp.bind((self.host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            raise
        rtp.setblocking(False)
        rtcp.setblocking(False)
        return RtpSockets(rtp=rtp, rtcp=rtcp, port=port)


@attrs.define(kw_only=True)
class RtpMediaStatistics:
    caller_audio_dropped: int = 0
    events_dropped: int = 0
    send_errors: int = 0
    rtcp_in: int = 0
    flood_ticks: int = 0


class RtpMedia:
    """One call's RTP as the engine serves it: its session, its sockets, where its events go."""

    def __init__(
        self,
        *,
        session: RtpSession,
        sockets: RtpSockets,
        events: trio.MemorySendChannel[TelephonyEvent],
        rtp_timeout_s: float,
        on_lost: Callable[[str], None],
        now: float,
        call_id: str = "",
    ) -> None:
        self.call_id = call_id
        self.session = session
        self.sockets = sockets
        self.statistics = RtpMediaStatistics()
        self.expect_media = True
        self._events = events
        self._rtp_timeout_s = rtp_timeout_s
        self.on_lost = on_lost
        self._quiet_since = now
        self._closed = False

    def hold(self, expect_media: bool, now: float) -> None:
        """Whether the caller is meant to send now (not while they have us on hold)."""
        self.expect_media = expect_media
        self._quiet_since = now

    def send(self, now: float, elapsed_frames: int) -> None:
        """This tick's one packet: model audio, a DTMF event, or silence."""
        packet = self.session.tick(now, elapsed_frames=elapsed_frames)
        destination = self.session.destination
        if packet is not None and destination is not None:
            try:
                self.sockets.rtp.sendto(packet, destination)
            except OSError:
                self.statistics.send_errors += 1

    def read_rtp(self, now: float) -> None:
        """Everything the RTP socket holds (it was reported readable)."""
        session = self.session
        rtp = self.sockets.rtp
        for _ in range(MAX_READS_PER_TICK):
            try:
                data, source = rtp.recvfrom(RECEIVE_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP port unreachable from an earlier send surfaces here on Linux
                continue
            session.receive_datagram(data, (source[0], source[1]), now)
        self.statistics.flood_ticks += 1

    def read_rtcp(self) -> None:
        # RTCP is read and dropped (protocols.md §4.2): no peer we serve needs our reports, and an
        # unread socket would answer theirs with ICMP port unreachable.
        for _ in range(MAX_READS_PER_TICK):
            try:
                self.sockets.rtcp.recv(RECEIVE_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.statistics.rtcp_in += 1

    def finish_tick(self, now: float) -> None:
        """Pass this tick's events on and watch for the caller going silent for good."""
        self._forward()
        self._check_timeout(now)

    def _forward(self) -> None:
        if self._closed:
            # drain the session anyway so its queue never grows
            while self.session.next_event() is not None:
                pass
            return
        audio: list[bytes] = []
        others: list[TelephonyEvent] = []
        played: dict[str, AudioPlayed] = {}
        while (event := self.session.next_event()) is not None:
            if isinstance(event, CallerAudio):
                audio.append(event.payload)
            elif isinstance(event, AudioPlayed):
                played[event.item_id] = event
            elif isinstance(event, CallerDtmf):
                others.append(event)
        try:
            if audio:
                try:
                    self._events.send_nowait(CallerAudio(b"".join(audio)))
                except trio.WouldBlock:
                    self.statistics.caller_audio_dropped += len(audio)
            for update in [*played.values(), *others]:
                try:
                    self._events.send_nowait(update)
                except trio.WouldBlock:
                    # a later AudioPlayed supersedes this one; a lost digit is counted
                    self.statistics.events_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._closed = True

    def _check_timeout(self, now: float) -> None:
        if not self.expect_media or self._rtp_timeout_s <= 0:
            return
        last = self.session.last_received_at
        since = max(last if last is not None else self._quiet_since, self._quiet_since)
        if now - since >= self._rtp_timeout_s:
            self.expect_media = False
            self.on_lost(f"no RTP from the caller for {now - since:.0f} s")


class RtpEngine:
    """The shared 20 ms pacer: serves every registered call once per tick.

    A tick first sends every call's packet (so the packets leave within a short burst right at
    the tick, whatever the receiving costs), then reads only the sockets an epoll says are
    readable (one system call finds them all, instead of a failing read per idle socket), then
    hands each call its events.

    Trio has no task priorities: a pacer task whose timer expired waits until every task of the
    current scheduling batch has had its step, which under load is several milliseconds. So the
    sending half of a tick is also run from a trio instrument after any task step at which the
    tick is due: packets leave within one task step of their time, and the pacer task, when it
    gets its turn, does the reading and the rest.
    """

    def __init__(
        self,
        *,
        log: logging.Logger,
        pacing_observer: Callable[[float], None] | None = None,
    ) -> None:
        self._media: dict[int, RtpMedia] = {}
        self._readers: dict[int, tuple[RtpMedia, bool]] = {}
        self._poller = select.epoll()
        self._log = log
        # told each tick's lateness against the schedule, in seconds (the pacing-error metric)
        self._pacing_observer = pacing_observer
        self._wake = trio.Event()
        # the schedule of the sending half: next tick number and when it is due
        self._start = 0.0
        self._next_tick = 0
        self._next_due = math.inf
        self._sent_elapsed = 1
        self.ticks = 0
        self.ticks_skipped = 0
        self.late_ticks = 0
        self.sent_from_instrument = 0
        self._lost: list[RtpMedia] = []

    def add(self, media: RtpMedia) -> None:
        self._media[id(media)] = media
        for sock, is_rtcp in ((media.sockets.rtp, False), (media.sockets.rtcp, True)):
            self._poller.register(sock.fileno(), select.EPOLLIN)
            self._readers[sock.fileno()] = (media, is_rtcp)
        self._wake.set()

    def remove(self, media: RtpMedia) -> None:
        if self._media.pop(id(media), None) is None:
            return
        for sock in (media.sockets.rtp, media.sockets.rtcp):
            fd = sock.fileno()
            if fd >= 0 and self._readers.get(fd, (None, False))[0] is media:
                del self._readers[fd]
                with contextlib.suppress(OSError, ValueError):
                    self._poller.unregister(fd)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pace until cancelled."""
        instrument = _SendWhenDue(self)
        trio.lowlevel.add_instrument(instrument)
        try:
            task_status.started()
            while True:
                if not self._media:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                await self._pace()
        finally:
            with contextlib.suppress(KeyError):
                trio.lowlevel.remove_instrument(instrument)
            # the calls' legs still remove their media while being cancelled
            self._readers.clear()
            self._media.clear()
            self._poller.close()

    async def _pace(self) -> None:
        """Tick on one absolute schedule for as long as any call has media."""
        self._start = trio.current_time()
        self._next_tick = 1
        self._next_due = self._start + FRAME_S
        try:
            while self._media:
                await trio.sleep_until(self._next_due)
                now = trio.current_time()
                # nothing to send when the instrument already sent this tick's packets
                self.send_if_due(now)
                self.ticks += 1
                self._receive(now)
            self._report_lost()
        finally:
            self._next_due = math.inf

    def send_if_due(self, now: float) -> bool:
        """Send this tick's packets if it is due (and not yet sent); True if it sent."""
        if now < self._next_due:
            return False
        if self._pacing_observer is not None:
            self._observe_pacing(now - self._next_due)
        tick = self._next_tick
        elapsed = 1
        behind = int((now - self._next_due) / FRAME_S)
        if behind >= 1:
            self.late_ticks += 1
        if behind >= MAX_BEHIND_TICKS:
            # far behind: skip the missed ticks instead of sending a burst
            tick += behind
            elapsed += behind
            self.ticks_skipped += behind
        self._next_tick = tick + 1
        self._next_due = self._start + self._next_tick * FRAME_S
        for media in list(self._media.values()):
            self._guarded(media, media.send, now, elapsed)
        return True

    def _observe_pacing(self, lateness: float) -> None:
        assert self._pacing_observer is not None
        try:
            self._pacing_observer(lateness)
        except Exception:
            # the metric is lost, never the pacing (this may run inside a trio instrument)
            self._log.exception("the RTP pacing observer failed; it is switched off")
            self._pacing_observer = None

    def _receive(self, now: float) -> None:
        self._report_lost()
        media_list = list(self._media.values())
        for fd, _ in self._poller.poll(0, max(1, len(self._readers))):
            reader = self._readers.get(fd)
            if reader is None:
                continue
            media, is_rtcp = reader
            if is_rtcp:
                self._guarded(media, media.read_rtcp)
            else:
                self._guarded(media, media.read_rtp, now)
        for media in media_list:
            self._guarded(media, media.finish_tick, now)

    def _report_lost(self) -> None:
        # calls whose media failed while sending (maybe from the instrument, outside any task)
        # are told from the pacer task
        while self._lost:
            self._lost.pop().on_lost("RTP media failed")

    def _guarded(self, media: RtpMedia, step: Callable[..., None], *args: Any) -> None:
        if id(media) not in self._media:
            return
        try:
            step(*args)
        except Exception:
            # one call's media must never stop the pacer for the others
            self._log.exception("RTP media failed; the call ends", extra={"call_id": media.call_id})
            self.remove(media)
            self._lost.append(media)


class _SendWhenDue(trio.abc.Instrument):
    """Runs the pacer's sending half after whichever task step finds a tick due."""

    def __init__(self, engine: RtpEngine) -> None:
        self._engine = engine

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        engine = self._engine
        if engine._next_due == math.inf:
            return
        now = trio.current_time()
        if now >= engine._next_due and engine.send_if_due(now):
            engine.sent_from_instrument += 1


__all__ = [
    "FRAME_S",
    "NoRtpPort",
    "RtpEngine",
    "RtpMedia",
    "RtpMediaStatistics",
    "RtpPortPool",
    "RtpSockets",
]
