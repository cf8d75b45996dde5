"""A test caller: plays a phone call into the daemon over a media stream, as Twilio would.

It sends `connected` and `start`, then one 20 ms `media` frame every 20 ms on an absolute schedule
(the caller's audio, then line silence), echoes marks as its simulated playout reaches them, and
records what it hears. It hangs up (`stop`) once it has heard a reply and the line has been quiet
for `quiet_s`, or at `max_duration_s`, unless the daemon closes first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import trio
import trio_websocket

from bridge.adapters.websocket_client import run_client_websocket
from bridge.call.events import Codec
from bridge.media import g711
from bridge.proto.mediastream.gateway import GatewayStatistics, SimulatedGateway

PLAYOUT_TICK_S = 0.005


@attrs.frozen(kw_only=True)
class CallerResult:
    """What one test call did and heard."""

    codec: Codec
    sent_ms: int
    heard: bytes
    heard_timeline: bytes
    first_audio_after_s: float | None
    duration_s: float
    hung_up_by: str
    close_code: int | None
    statistics: GatewayStatistics
    confirmed_at_clears: list[int]

    def summary(self) -> str:
        first = (
            f"{self.first_audio_after_s:.2f} s after the call started"
            if self.first_audio_after_s is not None
            else "never"
        )
        stats = self.statistics
        return "\n".join(
            [
                f"codec:            {self.codec.value}",
                f"call lasted:      {self.duration_s:.2f} s, ended by the {self.hung_up_by}",
                f"caller sent:      {self.sent_ms / 1000:.2f} s of audio "
                f"in {stats.media_sent} media messages",
                f"caller heard:     {len(self.heard) / g711.SAMPLE_RATE:.2f} s of model audio "
                f"in {stats.media_received} media messages",
                f"first reply:      {first}",
                f"marks echoed:     {stats.marks_echoed}; clears: {stats.clears}",
            ]
        )


async def run_caller(
    url: str,
    *,
    codec: Codec,
    audio: bytes,
    custom_parameters: Mapping[str, str] | None = None,
    dtmf: Sequence[tuple[float, str]] = (),
    inject: Sequence[tuple[float, str]] = (),
    quiet_s: float = 1.5,
    max_duration_s: float = 30.0,
    wait_for_reply: bool = True,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> CallerResult:
    """Call the daemon at `url` (a ws:// media-stream URL) and return what happened.

    `audio` is the caller's side of the line from the start (speech and pauses); `dtmf` presses
    keys and `inject` sends raw text frames (tests: malformed input), both at seconds from start.
    """
    gateway = SimulatedGateway(codec=codec, custom_parameters=custom_parameters)
    silence_frame = g711.silence(codec, g711.FRAME_BYTES)
    frames = [audio[i : i + g711.FRAME_BYTES] for i in range(0, len(audio), g711.FRAME_BYTES)]
    pending_dtmf = sorted(dtmf)
    pending_raw = sorted(inject)
    hung_up_by = "caller"
    close_code: int | None = None
    headers = [(k.encode(), v.encode()) for k, v in extra_headers]
    clock = {"start": 0.0, "end": 0.0}

    async def converse(ws: trio_websocket.WebSocketConnection) -> None:
        nonlocal hung_up_by, close_code
        start = clock["start"] = trio.current_time()
        quiet_since = start

        def closed_by_daemon(closed: trio_websocket.ConnectionClosed) -> None:
            nonlocal hung_up_by, close_code
            hung_up_by = "daemon"
            close_code = closed.reason.code if closed.reason else None

        async def read(cancel_scope: trio.CancelScope) -> None:
            nonlocal quiet_since
            try:
                while True:
                    message = await ws.get_message()
                    gateway.receive_message(message, trio.current_time())
                    quiet_since = math.inf
            except trio_websocket.ConnectionClosed as closed:
                closed_by_daemon(closed)
                cancel_scope.cancel()

        async def talk() -> None:
            nonlocal quiet_since
            for message in gateway.start_messages():
                await ws.send_message(message)
            index = 0
            while True:
                await trio.sleep_until(start + index * g711.FRAME_MS / 1000)
                now = trio.current_time()
                gateway.advance(now)
                for echo in gateway.messages_to_send():
                    await ws.send_message(echo)
                frame = frames[index] if index < len(frames) else silence_frame
                await ws.send_message(gateway.media_message(frame, timestamp_ms=index * 20))
                while pending_dtmf and pending_dtmf[0][0] <= now - start:
                    await ws.send_message(gateway.dtmf_message(pending_dtmf.pop(0)[1]))
                while pending_raw and pending_raw[0][0] <= now - start:
                    await ws.send_message(pending_raw.pop(0)[1])
                index += 1
                if gateway.playing:
                    quiet_since = math.inf
                elif quiet_since == math.inf:
                    quiet_since = now
                speech_over = index >= len(frames) and not pending_dtmf
                replied = gateway.first_audio_at is not None or not wait_for_reply
                if speech_over and replied and now - quiet_since >= quiet_s:
                    break
                if now - start >= max_duration_s:
                    break
            await ws.send_message(gateway.stop_message())

        async def play_out() -> None:
            # Marks are echoed within a few milliseconds of their audio finishing, as Twilio
            # does, not at the next 20 ms send tick.
            while True:
                await trio.sleep(PLAYOUT_TICK_S)
                gateway.advance(trio.current_time())
                for echo in gateway.messages_to_send():
                    await ws.send_message(echo)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, nursery.cancel_scope)
            nursery.start_soon(play_out)
            try:
                await talk()
            except trio_websocket.ConnectionClosed as closed:
                closed_by_daemon(closed)
            nursery.cancel_scope.cancel()

        clock["end"] = trio.current_time()

    try:
        await run_client_websocket(
            url,
            extra_headers=headers,
            message_queue_size=256,
            max_message_size=1 << 20,
            connect_timeout=10,
            run=converse,
        )
    except BaseExceptionGroup as group:
        # A refused handshake is the one failure a caller wants to see as itself.
        rejected = group.subgroup(trio_websocket.ConnectionRejected)
        if rejected is None:
            raise
        leaf: BaseException = rejected
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    start, end = clock["start"], clock["end"]
    gateway.advance(end)
    return CallerResult(
        codec=codec,
        sent_ms=gateway.statistics().media_sent * g711.FRAME_MS,
        heard=gateway.heard_audio(),
        heard_timeline=gateway.heard_timeline(start, end),
        first_audio_after_s=(
            gateway.first_audio_at - start if gateway.first_audio_at is not None else None
        ),
        duration_s=end - start,
        hung_up_by=hung_up_by,
        close_code=close_code,
        statistics=gateway.statistics(),
        confirmed_at_clears=gateway.confirmed_at_clears,
    )
