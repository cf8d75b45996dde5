"""The RTP engine tells a pacing observer how late each 20 ms tick ran; a failing one is dropped."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

from bridge.adapters.rtp import FRAME_S, RtpEngine, RtpMedia, RtpPortPool
from bridge.call.events import Codec, TelephonyEvent
from bridge.metrics import Metrics
from bridge.proto.rtp.session import RtpSession
from bridge.proto.sip.sdp import Direction

log = logging.getLogger("test.rtp_pacing")


class Peer:
    """A caller's RTP socket on loopback that counts what our pacer sends it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()

    def received(self) -> int:
        count = 0
        while True:
            try:
                self.sock.recv(2048)
            except BlockingIOError:
                return count
            count += 1


@pytest.fixture
def peer() -> Iterator[Peer]:
    peer = Peer()
    yield peer
    peer.sock.close()


async def run_engine(
    peer: Peer,
    observer: Callable[[float], None],
    during: Callable[[RtpEngine], Awaitable[None]],
) -> RtpEngine:
    """Pace one call sending to `peer` while `during(engine)` runs, then stop."""
    engine = RtpEngine(log=log, pacing_observer=observer)
    ports = RtpPortPool("127.0.0.1", 40000, 40100, rng=random.Random(5))
    sockets = ports.allocate()
    events_send, events = trio.open_memory_channel[TelephonyEvent](100)
    media = RtpMedia(
        session=RtpSession(
            codec=Codec.PCMU,
            payload_type=0,
            dtmf_payload_type=None,
            remote=peer.address,
            direction=Direction.SENDRECV,
            rng=random.Random(7),
            now=trio.current_time(),
        ),
        sockets=sockets,
        events=events_send,
        rtp_timeout_s=0,
        on_lost=lambda reason: None,
        now=trio.current_time(),
    )
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                engine.add(media)
                await during(engine)
                nursery.cancel_scope.cancel()
    finally:
        engine.remove(media)
        ports.release(sockets)
        events.close()
    return engine


async def test_each_tick_reports_its_lateness(
    peer: Peer, autojump_clock: trio.testing.MockClock
) -> None:
    lateness: list[float] = []

    async def late_once(engine: RtpEngine) -> None:
        await trio.sleep(0.1 + FRAME_S / 2)  # between two ticks
        # The loop is stuck for 50 ms: the next tick runs 40 ms late, the one after it
        # 20 ms late (sent at once to catch up), then the schedule is met again.
        autojump_clock.jump(0.05)
        await trio.sleep(0.2)

    await run_engine(peer, lateness.append, late_once)
    # one report per tick, and each tick sent the call its one packet
    assert len(lateness) == peer.received() >= 14
    assert all(seconds >= 0 for seconds in lateness)
    late = [round(seconds, 3) for seconds in lateness if seconds > 0.0005]
    assert late == [0.04, 0.02]


async def test_the_pacing_metric_counts_the_ticks(
    peer: Peer, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics()

    async def pace(engine: RtpEngine) -> None:
        await trio.sleep(0.5)

    await run_engine(peer, metrics.pacing_error, pace)
    (family,) = metrics.rtp_pacing_error.collect()
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    sent = peer.received()
    assert sent >= 24
    assert values["bridge_rtp_pacing_error_seconds_count", None] == sent
    # on a virtual clock every tick is on time
    assert values["bridge_rtp_pacing_error_seconds_bucket", "0.0005"] == sent


async def test_a_failing_observer_is_switched_off_and_pacing_goes_on(
    peer: Peer, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []

    def broken(seconds: float) -> None:
        calls.append(seconds)
        raise ValueError("metrics are broken")

    async def pace(engine: RtpEngine) -> None:
        await trio.sleep(0.5)

    engine = await run_engine(peer, broken, pace)
    assert len(calls) == 1
    assert caplog.text.count("pacing observer failed") == 1
    assert engine.ticks >= 24
    assert peer.received() >= 24
