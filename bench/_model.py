"""The benchmark's model process: the loopback model core behind a fast, instrumented websocket.

Each connection runs one :class:`bridge.agent.loopback.LoopbackModel` exactly as
``bridge.adapters.loopback_server`` does (send what the core queued, wait for a message or the
core's deadline, feed it), on the minimal websocket of :mod:`_ws`. On the way it notes, with
``time.monotonic()``:

* when each stamped caller frame arrived in an ``input_audio_buffer.append`` (the time ``recv()``
  returned the bytes that completed the message), and
* when each stamped frame of reply audio left in a ``response.output_audio.delta`` (just before
  the ``send()``).

Several processes can serve one port (SO_REUSEPORT; the kernel spreads connections over them).
The parent asks for the report over a pipe once the calls are over; the report includes how many
model websockets are still open.
"""

from __future__ import annotations

import base64
import math
import socket
import time
from collections import Counter
from multiprocessing.connection import Connection as Pipe
from typing import Any

import attrs
import trio
from _process import pin
from _stamp import StampScanner, TimeTable
from _ws import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Connection,
    FrameParser,
    WebSocketError,
    accept_server,
    close_code,
    close_payload,
    encode_frame,
    server_text,
)

from bridge.agent.loopback import LoopbackModel

_APPEND_TYPE = '"input_audio_buffer.append"'
_DELTA_TYPE = '"response.output_audio.delta"'
_AUDIO_FIELD = '"audio":"'
_DELTA_FIELD = '"delta":"'


@attrs.frozen(kw_only=True)
class ModelSpec:
    host: str
    port: int
    cores: tuple[int, ...]
    generation_speed: float
    worker: int
    nice: int


def bind_reuseport(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _field(text: str, field: str) -> bytes | None:
    start = text.find(field)
    if start < 0:
        return None
    start += len(field)
    end = text.find('"', start)
    try:
        return base64.b64decode(text[start:end])
    except ValueError:
        return None


class _Recorder:
    """Everything the model process measures and counts."""

    def __init__(self) -> None:
        self.caller_frames: dict[int, TimeTable] = {}
        self.reply_frames: dict[int, TimeTable] = {}
        self.models: list[LoopbackModel] = []
        self.open_connections = 0
        self.connections_total = 0
        self.handshake_failures = 0
        self.close_codes: Counter[str] = Counter()

    def _table(self, tables: dict[int, TimeTable], call: int) -> TimeTable:
        table = tables.get(call)
        if table is None:
            table = tables[call] = TimeTable()
        return table

    def client_message(self, text: str, scanner: StampScanner, at: float) -> None:
        if _APPEND_TYPE not in text[:48]:
            return
        audio = _field(text, _AUDIO_FIELD)
        if audio is None:
            return
        for call, frame in scanner.feed(audio):
            self._table(self.caller_frames, call).set_first(frame, at)

    def server_messages(self, messages: list[str], scanner: StampScanner, at: float) -> None:
        for text in messages:
            if _DELTA_TYPE not in text[:48]:
                continue
            audio = _field(text, _DELTA_FIELD)
            if audio is None:
                continue
            for call, frame in scanner.feed(audio):
                self._table(self.reply_frames, call).set_first(frame, at)

    def report(self) -> dict[str, Any]:
        errors: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        for model in self.models:
            stats = model.statistics()
            errors.update(stats.error_codes)
            totals.update(
                turns=stats.turns,
                responses=stats.responses,
                responses_completed=stats.responses_completed,
                cancellations=stats.cancellations,
                truncations=len(stats.truncations),
                session_updates=stats.session_updates,
            )
        return {
            "caller_frames": {c: t.to_bytes() for c, t in self.caller_frames.items()},
            "caller_duplicates": sum(t.duplicates for t in self.caller_frames.values()),
            "reply_frames": {c: t.to_bytes() for c, t in self.reply_frames.items()},
            "reply_duplicates": sum(t.duplicates for t in self.reply_frames.values()),
            "open_connections": self.open_connections,
            "connections_total": self.connections_total,
            "handshake_failures": self.handshake_failures,
            "close_codes": dict(self.close_codes),
            "errors": dict(errors),
            "totals": dict(totals),
        }


async def _serve_connection(
    sock: socket.socket, recorder: _Recorder, spec: ModelSpec, clock_offset: float
) -> None:
    connection = Connection(sock)
    try:
        _path, _headers, rest = await accept_server(connection)
    except WebSocketError:
        recorder.handshake_failures += 1
        connection.close()
        return
    recorder.connections_total += 1
    recorder.open_connections += 1
    model = LoopbackModel(
        session_id=f"sess_bench{spec.worker:02d}{recorder.connections_total:06d}",
        # expires_at is a Unix timestamp on the wire, so this one value comes from the wall clock.
        expires_at=int(time.time()) + 3600,
        generation_speed=spec.generation_speed,
    )
    recorder.models.append(model)
    parser = FrameParser()
    inbound = StampScanner()
    outbound = StampScanner()
    backlog = parser.feed(rest)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run_writer)
            while True:
                messages = model.messages_to_send()
                if messages:
                    recorder.server_messages(messages, outbound, time.monotonic())
                    connection.send_nowait(b"".join(server_text(m) for m in messages))
                if model.close_requested is not None:
                    code, _reason = model.close_requested
                    connection.send_nowait(
                        encode_frame(OP_CLOSE, close_payload(code), masked=False)
                    )
                    recorder.close_codes[f"model {code}"] += 1
                    break
                if backlog:
                    received, backlog = backlog, []
                    now = time.monotonic()
                else:
                    data: bytes | None = None
                    deadline = model.next_deadline()
                    with trio.move_on_at(
                        deadline + clock_offset if deadline < math.inf else math.inf
                    ):
                        data = await connection.recv()
                    now = time.monotonic()
                    if data is None:
                        model.handle_timeout(now)
                        continue
                    if not data:
                        recorder.close_codes["eof"] += 1
                        break
                    received = parser.feed(data)
                closing = False
                for opcode, payload in received:
                    if opcode == OP_TEXT:
                        text = payload.decode()
                        recorder.client_message(text, inbound, now)
                        model.receive_message(text, now)
                    elif opcode == OP_CLOSE:
                        recorder.close_codes[f"client {close_code(payload)}"] += 1
                        connection.send_nowait(encode_frame(OP_CLOSE, payload[:2], masked=False))
                        closing = True
                        break
                    elif opcode == OP_PING:
                        connection.send_nowait(encode_frame(OP_PONG, payload, masked=False))
                if closing:
                    break
            await connection.flush()
            nursery.cancel_scope.cancel()
    finally:
        recorder.open_connections -= 1
        connection.close()


async def _serve(spec: ModelSpec, pipe: Pipe) -> None:
    clock_offset = trio.current_time() - time.monotonic()
    recorder = _Recorder()
    listener = bind_reuseport(spec.host, spec.port)
    listener.listen(4096)
    listener.setblocking(False)
    pipe.send(("listening", spec.worker))

    async def accept_loop() -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    sock, _address = listener.accept()
                except BlockingIOError:
                    break
                nursery.start_soon(_serve_connection, sock, recorder, spec, clock_offset)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop)
        # The parent asks how many model websockets are open until they are all closed, then
        # for the report.
        while (await trio.to_thread.run_sync(pipe.recv)) == "count":
            pipe.send(("count", recorder.open_connections))
        pipe.send(("report", recorder.report()))
        nursery.cancel_scope.cancel()
    trio.lowlevel.notify_closing(listener)
    listener.close()


def model_main(spec: ModelSpec, pipe: Pipe) -> None:
    """Process entry point."""
    pin(spec.cores, spec.nice, own_group=True)
    trio.run(_serve, spec, pipe)
