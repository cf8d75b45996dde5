"""The benchmark's caller process: many simulated media-stream calls, talking in turns.

Each call is a :class:`bridge.proto.mediastream.gateway.SimulatedGateway` (what Twilio does: the
``connected``/``start`` messages, one ``media`` message per 20 ms, playout of what it receives in
real time, mark echoes) on the minimal websocket of :mod:`_ws`. One scheduler task sends every
call's frames on its own absolute 20 ms grid (each call has a random phase, so frames reach the
daemon spread over the 20 ms like independent gateways would send them, not in one burst), which
is far cheaper than a task wake-up per call and frame.

A call talks in turns: silence for a random 0.5-3 s, then ~1.5 s of speech-like audio, then
silence while it waits for the whole reply (the reply ends with the turn's last speech frame, which
the frame stamps make easy to spot) and until it has been played out, then a pause of 0.3-0.8 s,
and so on. So the model's VAD never sees the caller talk over a reply, and no reply audio is
cleared by barge-in. After ``talk_until`` a call hangs up (``stop``) at the first moment it is
neither speaking nor waiting for a reply.

Recorded per frame, with ``time.monotonic()``: when it was due, when it was sent (so the harness's
own lateness is known) and, for reply audio, when the ``media`` message carrying it arrived.
"""

from __future__ import annotations

import base64
import heapq
import random
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

import attrs
import trio
from _process import pin
from _stamp import STAMP_BYTES, StampScanner, TimeTable, stamp
from _turns import FRAME_S, CallPlan, Talk, Turns, speech_frames
from _ws import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Connection,
    FrameParser,
    WebSocketError,
    client_text,
    close_code,
    close_payload,
    connect_client,
    encode_frame,
)

from bridge.call.events import Codec
from bridge.media import g711
from bridge.proto.mediastream.gateway import SimulatedGateway

# How long a call waits for the daemon to close the websocket after its stop.
CLOSE_WAIT_S = 5.0
_PAYLOAD_FIELD = '"payload":"'


@attrs.frozen(kw_only=True)
class CallerSpec(CallPlan):
    path: str
    secret_parameter: str
    secret: str
    total_calls: int
    connect_at: tuple[float, ...]


class _Call:
    def __init__(self, index: int, rng: random.Random, speech: list[bytes]) -> None:
        self.index = index
        self.rng = rng
        self.gateway = SimulatedGateway(
            codec=Codec.PCMU,
            stream_sid=f"MZbench{index:027d}",
            call_sid=f"CAbench{index:027d}",
        )
        self.connection: Connection | None = None
        self.parser = FrameParser()
        self.scanner = StampScanner()
        self.frame = 0
        self.due = 0.0
        self.due_at = TimeTable()
        self.sent_at = TimeTable()
        self.reply_at = TimeTable()
        self.conversation = Turns(rng, speech)
        # Set once the call sends no more frames (it hung up, or the websocket is gone).
        self.over = False
        self.connect_started: float | None = None
        self.connected_at: float | None = None
        self.stop_at: float | None = None
        self.closed_at: float | None = None
        self.ended_by = ""
        self.close_code: int | None = None
        self.error = ""
        self.done = trio.Event()
        self.stopped = trio.Event()

    def send(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.send_nowait(data)

    def tick(self, now: float, talk_until: float, hard_stop: float) -> bool:
        """Send this call's frame that is due; False once the call hung up."""
        gateway = self.gateway
        if gateway.playing:
            gateway.advance(now)
        echoes = gateway.messages_to_send()
        talk = self.conversation.check_reply(now, self.reply_at, played_out=not gateway.playing)
        if talk is Talk.PAUSE and (now >= talk_until or now >= hard_stop):
            self._hang_up(now, echoes)
            return False
        if talk is Talk.WAIT_REPLY and now >= hard_stop:
            self._hang_up(now, echoes)
            return False
        frame = self.frame
        audio = self.conversation.audio(now, frame)
        payload = stamp(self.index, frame) + audio[STAMP_BYTES:]
        message = gateway.media_message(payload, timestamp_ms=frame * g711.FRAME_MS)
        data = client_text(message)
        if echoes:
            data = b"".join(client_text(echo) for echo in echoes) + data
        self.due_at.set_first(frame, self.due)
        self.sent_at.set_first(frame, time.monotonic())
        self.send(data)
        self.frame += 1
        if gateway.heard:
            # Only the statistics matter here; a long run must not keep every chunk heard.
            gateway.heard.clear()
        return True

    def _hang_up(self, now: float, echoes: list[str]) -> None:
        self.over = True
        data = b"".join(client_text(echo) for echo in echoes)
        self.stop_at = now
        self.send(data + client_text(self.gateway.stop_message()))
        self.stopped.set()

    def on_media(self, text: str, at: float) -> None:
        start = text.find(_PAYLOAD_FIELD)
        if start < 0:
            return
        start += len(_PAYLOAD_FIELD)
        end = text.find('"', start)
        try:
            audio = base64.b64decode(text[start:end])
        except ValueError:
            return
        for call, frame in self.scanner.feed(audio):
            if call == self.index:
                self.reply_at.set_first(frame, at)

    def report(self) -> dict[str, Any]:
        stats = self.gateway.statistics()
        return {
            "index": self.index,
            "connect_started": self.connect_started,
            "connected_at": self.connected_at,
            "stop_at": self.stop_at,
            "closed_at": self.closed_at,
            "frames_sent": self.frame,
            "due_at": self.due_at.to_bytes(),
            "sent_at": self.sent_at.to_bytes(),
            "reply_at": self.reply_at.to_bytes(),
            "reply_duplicates": self.reply_at.duplicates,
            "turns": self.conversation.turns,
            "replies": self.conversation.replies,
            "reply_timeouts": self.conversation.reply_timeouts,
            "ended_by": self.ended_by,
            "close_code": self.close_code,
            "error": self.error,
            "media_received": stats.media_received,
            "marks_received": stats.marks_received,
            "marks_echoed": stats.marks_echoed,
            "clears": stats.clears,
            "bytes_cleared": stats.bytes_cleared,
            "malformed": stats.malformed,
            "backlogged_sends": (
                self.connection.backlogged_sends if self.connection is not None else 0
            ),
        }


class _Scheduler:
    """Sends each call's frames on its own 20 ms grid from one task."""

    def __init__(self, spec: CallerSpec, clock_offset: float) -> None:
        self.spec = spec
        self.clock_offset = clock_offset
        self.heap: list[tuple[float, int, _Call]] = []
        self.wakeup = trio.Event()
        self.active = 0

    def add(self, call: _Call, first_due: float) -> None:
        call.due = first_due
        heapq.heappush(self.heap, (first_due, call.index, call))
        self.active += 1
        self.wakeup.set()

    async def run(self, finished: trio.Event) -> None:
        spec = self.spec
        heap = self.heap
        while not finished.is_set():
            if not heap:
                await self.wakeup.wait()
                self.wakeup = trio.Event()
                continue
            first = heap[0][0]
            if first > time.monotonic():
                with trio.move_on_at(first + self.clock_offset):
                    await self.wakeup.wait()
                self.wakeup = trio.Event()
                continue
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, index, call = heapq.heappop(heap)
                if call.over or call.done.is_set():
                    continue
                call.due = due
                if call.tick(now, spec.talk_until, spec.hard_stop):
                    heapq.heappush(heap, (due + FRAME_S, index, call))


async def _run_call(
    call: _Call, spec: CallerSpec, connect_at: float, scheduler: _Scheduler
) -> None:
    offset = scheduler.clock_offset
    await trio.sleep_until(connect_at + offset)
    call.connect_started = time.monotonic()
    try:
        with trio.fail_after(15):
            connection, rest = await connect_client(spec.host, spec.port, spec.path)
    except (WebSocketError, OSError, trio.TooSlowError) as error:
        call.error = f"connect: {error!r}"
        call.ended_by = "error"
        call.done.set()
        return
    call.connection = connection
    call.connected_at = time.monotonic()
    gateway = call.gateway
    gateway.custom_parameters[spec.secret_parameter] = spec.secret
    call.send(b"".join(client_text(m) for m in gateway.start_messages()))
    call.conversation.next_turn_at = call.connected_at + call.rng.uniform(0.5, 3.0)
    scheduler.add(call, call.connected_at + call.rng.uniform(0.0, FRAME_S))
    pending = call.parser.feed(rest)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run_writer)
            nursery.start_soon(_watch_close, call, nursery.cancel_scope)
            await _read(call, connection, pending)
            nursery.cancel_scope.cancel()
    finally:
        call.closed_at = time.monotonic()
        call.over = True
        if not call.ended_by:
            call.ended_by = "daemon"
        connection.close()
        call.done.set()


async def _watch_close(call: _Call, cancel_scope: trio.CancelScope) -> None:
    """After our stop the daemon must close the websocket; give up waiting after a while."""
    await call.stopped.wait()
    await trio.sleep(CLOSE_WAIT_S)
    call.ended_by = "caller (daemon did not close)"
    cancel_scope.cancel()


async def _read(call: _Call, connection: Connection, pending: list[tuple[int, bytes]]) -> None:
    gateway = call.gateway
    while True:
        if not pending:
            data = await connection.recv()
            if not data:
                call.ended_by = "caller" if call.stop_at is not None else "daemon (no close)"
                return
            pending = call.parser.feed(data)
            continue
        now = time.monotonic()
        for opcode, payload in pending:
            if opcode == OP_TEXT:
                text = payload.decode()
                if '"media"' in text[:40]:
                    call.on_media(text, now)
                gateway.receive_message(text, now)
                echoes = gateway.messages_to_send()
                if echoes:
                    call.send(b"".join(client_text(echo) for echo in echoes))
            elif opcode == OP_CLOSE:
                call.close_code = close_code(payload)
                call.ended_by = "caller" if call.stop_at is not None else "daemon"
                call.send(encode_frame(OP_CLOSE, close_payload(1000), masked=True))
                await connection.flush()
                return
            elif opcode == OP_PING:
                call.send(encode_frame(OP_PONG, payload, masked=True))
        pending = []


async def _run(spec: CallerSpec, pipe: Pipe) -> None:
    clock_offset = trio.current_time() - time.monotonic()
    calls: list[_Call] = []
    for index in spec.calls:
        rng = random.Random(spec.seed * 100003 + index)
        calls.append(_Call(index, rng, speech_frames(spec.speech_ms, seed=index % 7)))
    scheduler = _Scheduler(spec, clock_offset)
    finished = trio.Event()
    pipe.send(("ready", None))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run, finished)
        async with trio.open_nursery() as calls_nursery:
            for call, connect_at in zip(calls, spec.connect_at, strict=True):
                calls_nursery.start_soon(_run_call, call, spec, connect_at, scheduler)
        finished.set()
        scheduler.wakeup.set()
    pipe.send(("report", [call.report() for call in calls]))


def callers_main(spec: CallerSpec, pipe: Pipe) -> None:
    """Process entry point."""
    pin(spec.cores, spec.nice, own_group=True)
    trio.run(_run, spec, pipe)
