"""The websocket media-stream ingress (Twilio Media Streams, protocols.md §1): a thin trio shell.

:func:`serve_mediastream` listens for the gateway's websocket upgrades, checks them (path, then
``X-Twilio-Signature`` before accepting, or a shared secret in ``start.customParameters`` after),
waits for the stream's ``start``, and hands each call to the app as a :class:`MediaStreamLeg`.
The protocol itself lives in the sans-IO
:class:`~bridge.proto.mediastream.session.MediaStreamSession`; this module only moves frames
between it and the socket.

A leg runs three tasks: the reader (websocket -> session -> call events), the command task (call
commands -> session) and the writer, the one task that sends the session's messages. Caller audio
is passed on with ``send_nowait`` and counted when the call's inbox is full, so a slow control
loop never stalls the socket reader (DESIGN.md rule 5).

The reader is the per-frame path (DESIGN.md "the per-frame path is the hot path"): the websocket
(:class:`~bridge.adapters.wsserver.ServerWebSocket`) has no task of its own, so the reader itself
takes everything one socket read brought (up to 64 KiB), runs every message of it through the
session, and passes the caller audio of adjacent ``media`` messages on as one CallerAudio. Under
load, when frames queue up in the kernel, one wake-up then costs one channel hop for all of them.
The writer sends everything the session has to send as one socket write.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable

import attrs
import trio

from bridge.adapters.wsserver import (
    CLOSE_GOING_AWAY,
    HandshakeFailed,
    ServerWebSocket,
    UpgradeRequest,
    WebSocketClosed,
    close_name,
)
from bridge.call.context import CallInfo
from bridge.call.events import (
    AnswerCall,
    CallerAudio,
    ClearAudio,
    EndReason,
    HangUp,
    PlayAudio,
    TelephonyCommand,
    TelephonyEnded,
    TelephonyEvent,
)
from bridge.config import MediaStreamAuth, MediaStreamIngressConfig
from bridge.proto.mediastream.auth import shared_secret_valid, twilio_signature_valid
from bridge.proto.mediastream.session import (
    CLOSE_NORMAL,
    MediaStreamSession,
    MediaStreamStarted,
    MediaStreamStatistics,
)

INGRESS = "mediastream"

# A media message is ~300 bytes and a start a few kB; 1 MiB bounds what a peer can make us hold.
# Frames are read from the socket only once the call's leg runs, which waits for the model session
# (up to its connect and session timeouts); meanwhile the kernel's socket buffers hold what the
# gateway sends (TCP flow control), so nothing (a stop, marks) is lost.
MAX_MESSAGE_SIZE = 1 << 20
HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
DEFAULT_START_TIMEOUT_S = 10.0

# websocket close codes (RFC 6455 §7.4.1)
CLOSE_POLICY_VIOLATION = 1008

# Malformed frames are logged, but a peer sending nothing else must not flood the journal.
_MALFORMED_LOGGED_IN_FULL = 10
_MALFORMED_LOG_EVERY = 1000

_SIGNATURE_HEADER = b"x-twilio-signature"


@attrs.frozen(kw_only=True)
class MediaStreamLegStatistics:
    """The stream's counters plus the caller audio dropped because the call's inbox was full."""

    stream: MediaStreamStatistics
    caller_audio_dropped: int


class MediaStreamLeg:
    """The telephony leg of one media-stream call (the :class:`~bridge.adapters.leg.TelephonyLeg`
    shape): created by :func:`serve_mediastream` once the stream's ``start`` arrived."""

    def __init__(
        self,
        *,
        info: CallInfo,
        websocket: ServerWebSocket,
        session: MediaStreamSession,
        log: logging.Logger,
    ) -> None:
        self.info = info
        self._websocket = websocket
        self._session = session
        self._log = log
        self._extra = {"call_id": info.call_id}
        self._flush_wanted = trio.Event()
        self._caller_audio_dropped = 0
        self._malformed_logged = session.malformed_count
        self._running = False

    async def run(
        self,
        events: trio.MemorySendChannel[TelephonyEvent],
        commands: trio.MemoryReceiveChannel[TelephonyCommand],
    ) -> None:
        """Relay until the stream ends (after sending TelephonyEnded), HangUp, or commands close.

        The websocket is closed when this returns or is cancelled: with 1000 after a stop, a
        hang-up or the end of the commands, with the session's code after a protocol error.
        """
        if self._running:
            raise RuntimeError("MediaStreamLeg.run() may only be called once")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write)
                nursery.start_soon(self._obey, commands, nursery.cancel_scope)
                await self._read(events)
                nursery.cancel_scope.cancel()
        finally:
            await self.aclose()
            self._log.info(
                "media stream ended",
                extra={**self._extra, **_summary(self.statistics())},
            )

    async def aclose(self) -> None:
        """Close the websocket (idempotent; shielded, so it also runs while being cancelled)."""
        code = self._session.close_code or CLOSE_NORMAL
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await self._websocket.aclose(code)

    @property
    def caller_audio_dropped(self) -> int:
        return self._caller_audio_dropped

    def statistics(self) -> MediaStreamLegStatistics:
        return MediaStreamLegStatistics(
            stream=self._session.statistics(),
            caller_audio_dropped=self._caller_audio_dropped,
        )

    # ---- tasks ---------------------------------------------------------------------------------

    async def _read(self, events: trio.MemorySendChannel[TelephonyEvent]) -> None:
        session = self._session
        websocket = self._websocket
        try:
            # events the session produced before run() (frames read along with `start`)
            if await self._forward(events):
                return
            while True:
                try:
                    deadline = session.next_deadline()
                    if deadline == math.inf:
                        # streaming: no timer, so no cancel scope per read
                        messages = await websocket.receive_messages()
                    else:
                        messages = []
                        with trio.move_on_at(deadline):
                            messages = await websocket.receive_messages()
                except WebSocketClosed as closed:
                    ended = _closed_without_stop(closed)
                    self._log_end(ended)
                    await events.send(ended)
                    return
                now = trio.current_time()
                for message in messages:
                    session.receive_message(message, now)
                if not messages:
                    session.handle_timeout(now)
                if session.malformed_count != self._malformed_logged:
                    self._log_malformed()
                if session.wants_to_send:
                    self._flush_wanted.set()
                if await self._forward(events):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # the call stopped listening; it is ending anyway
            return

    async def _forward(self, events: trio.MemorySendChannel[TelephonyEvent]) -> bool:
        """Pass the session's events on; True once the stream ended.

        Adjacent caller audio goes on as one CallerAudio (any length is fine for the control
        loop): what one socket read brought costs one channel hop, not one per 20 ms frame.
        """
        audio: list[bytes] = []
        while (event := self._session.next_event()) is not None:
            if isinstance(event, CallerAudio):
                audio.append(event.payload)
                continue
            if audio:
                self._pass_audio(events, audio)
                audio = []
            if isinstance(event, MediaStreamStarted):
                continue
            await events.send(event)
            if isinstance(event, TelephonyEnded):
                self._log_end(event)
                return True
        if audio:
            self._pass_audio(events, audio)
        return False

    def _pass_audio(
        self, events: trio.MemorySendChannel[TelephonyEvent], audio: list[bytes]
    ) -> None:
        try:
            events.send_nowait(CallerAudio(audio[0] if len(audio) == 1 else b"".join(audio)))
        except trio.WouldBlock:
            # counted in media messages, whatever number of them went into the dropped event
            self._caller_audio_dropped += len(audio)

    async def _obey(
        self,
        commands: trio.MemoryReceiveChannel[TelephonyCommand],
        cancel_scope: trio.CancelScope,
    ) -> None:
        async for command in commands:
            match command:
                case AnswerCall():
                    # a media stream is answered before it starts
                    pass
                case PlayAudio(item_id=item_id, payload=payload):
                    self._session.play(item_id, payload)
                case ClearAudio():
                    self._session.clear()
                case HangUp(reason=reason):
                    self._log.info("hanging up", extra={**self._extra, "reason": reason.value})
                    break
            if self._session.wants_to_send:
                self._flush_wanted.set()
        # HangUp or the call closed its commands: run() closes the websocket with 1000, which
        # tells Twilio to go on with the TwiML after <Connect> (none: the call ends).
        cancel_scope.cancel()

    async def _write(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            try:
                # all of it as one socket write
                await self._websocket.send_messages(self._session.messages_to_send())
            except WebSocketClosed:
                # the reader sees the close too and ends the leg
                return

    # ---- logging -------------------------------------------------------------------------------

    def _log_malformed(self) -> None:
        count = self._session.malformed_count
        self._malformed_logged = count
        if count <= _MALFORMED_LOGGED_IN_FULL or count % _MALFORMED_LOG_EVERY == 0:
            self._log.warning(
                "malformed media-stream message dropped",
                extra={**self._extra, "problem": self._session.last_problem, "count": count},
            )

    def _log_end(self, ended: TelephonyEnded) -> None:
        if ended.reason is EndReason.CALLER_HANGUP:
            self._log.info("media stream stopped", extra={**self._extra, "detail": ended.detail})
        else:
            self._log.warning(
                "media stream failed",
                extra={**self._extra, "reason": ended.reason.value, "detail": ended.detail},
            )


def _closed_without_stop(closed: WebSocketClosed) -> TelephonyEnded:
    code = closed.code
    if code in (CLOSE_NORMAL, CLOSE_GOING_AWAY):
        return TelephonyEnded(EndReason.CALLER_HANGUP, f"websocket closed without stop ({code})")
    return TelephonyEnded(EndReason.TELEPHONY_ERROR, f"websocket closed: {code} {close_name(code)}")


def _summary(statistics: MediaStreamLegStatistics) -> dict[str, int]:
    stream = statistics.stream
    return {
        "frames_in": stream.frames_in,
        "frames_out": stream.frames_out,
        "marks_sent": stream.marks_sent,
        "marks_confirmed": stream.marks_confirmed,
        "clears": stream.clears_sent,
        "malformed": stream.malformed,
        "unknown": stream.unknown,
        "caller_audio_dropped": statistics.caller_audio_dropped,
    }


# ---- the server ----------------------------------------------------------------------------------


async def serve_mediastream(
    config: MediaStreamIngressConfig,
    *,
    handle_call: Callable[[MediaStreamLeg], Awaitable[None]],
    auth_token: str | None,
    shared_secret: str | None,
    log: logging.Logger,
    new_call_id: Callable[[], str],
    accepting: Callable[[], bool] = lambda: True,
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve media streams on ``config.host:config.port`` until cancelled.

    Reports ``started(port)`` (the bound port; useful with port 0) once listening. Each accepted
    stream becomes a :class:`MediaStreamLeg` passed to `handle_call`, which runs the call; the
    websocket is closed when `handle_call` returns. While `accepting()` is false (the daemon is
    draining) upgrades are refused with 503. One connection's failure is logged and never ends the
    server.
    """
    ingress = _Ingress(
        config=config,
        handle_call=handle_call,
        auth_token=auth_token,
        shared_secret=shared_secret,
        log=log,
        new_call_id=new_call_id,
        accepting=accepting,
        start_timeout_s=start_timeout_s,
    )
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            functools.partial(
                trio.serve_tcp, ingress.handle_connection, config.port, host=config.host
            )
        )
        port = listeners[0].socket.getsockname()[1]
        log.info(
            "media-stream ingress listening",
            extra={
                "host": config.host,
                "port": port,
                "path": config.path,
                "auth": config.auth.value,
            },
        )
        task_status.started(port)


@attrs.define(kw_only=True)
class _Ingress:
    config: MediaStreamIngressConfig
    handle_call: Callable[[MediaStreamLeg], Awaitable[None]]
    auth_token: str | None
    shared_secret: str | None
    log: logging.Logger
    new_call_id: Callable[[], str]
    accepting: Callable[[], bool]
    start_timeout_s: float

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        # trio.serve_tcp runs handlers in the server's nursery: an exception here would stop the
        # server, so every failure of one connection ends here. serve_tcp closes the stream.
        remote = _remote(stream)
        websocket = ServerWebSocket(stream, max_message_size=MAX_MESSAGE_SIZE)
        try:
            await self._handle_connection(websocket, remote)
        except (WebSocketClosed, HandshakeFailed, trio.BrokenResourceError) as error:
            self.log.info(
                "media-stream connection lost", extra={"remote": remote, "error": repr(error)}
            )
        except Exception:
            self.log.exception("media-stream connection failed", extra={"remote": remote})
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await websocket.aclose()

    async def _handle_connection(self, websocket: ServerWebSocket, remote: str) -> None:
        request: UpgradeRequest | None = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            request = await websocket.receive_request()
        if request is None:
            self.log.info("media-stream upgrade timed out", extra={"remote": remote})
            return
        status = self._refusal(request, remote)
        if status is not None:
            await websocket.reject(status)
            return
        await websocket.accept()
        session = MediaStreamSession(
            outbound_chunk_frames=self.config.outbound_chunk_frames,
            playout_lead_ms=self.config.playout_lead_ms,
            start_timeout_s=self.start_timeout_s,
            now=trio.current_time(),
        )
        started = await self._wait_for_start(websocket, session, remote)
        if started is None:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await websocket.aclose(session.close_code or CLOSE_NORMAL)
            return
        if not self._secret_accepted(started):
            self.log.warning(
                "media stream refused: shared secret missing or wrong",
                extra={
                    "remote": remote,
                    "parameter": self.config.secret_parameter,
                    "stream_sid": started.stream_sid,
                    "call_sid": started.call_sid,
                },
            )
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await websocket.aclose(CLOSE_POLICY_VIOLATION, "authentication failed")
            return
        leg = MediaStreamLeg(
            info=self._call_info(started),
            websocket=websocket,
            session=session,
            log=self.log,
        )
        self.log.info(
            "media stream started",
            extra={
                "call_id": leg.info.call_id,
                "remote": remote,
                "codec": started.codec.value,
                **leg.info.external_ids,
            },
        )
        try:
            await self.handle_call(leg)
        except Exception:
            self.log.exception("media-stream call failed", extra={"call_id": leg.info.call_id})
        finally:
            await leg.aclose()

    def _refusal(self, request: UpgradeRequest, remote: str) -> int | None:
        """The HTTP status refusing this upgrade, or None to accept it."""
        path = request.path
        if path != self.config.path:
            self.log.info(
                "media-stream upgrade for an unknown path",
                extra={"remote": remote, "path": path[:200]},
            )
            return 404
        if not self.accepting():
            self.log.info(
                "media stream refused: the daemon is shutting down", extra={"remote": remote}
            )
            return 503
        match self.config.auth:
            case MediaStreamAuth.TWILIO_SIGNATURE:
                if self.auth_token is None:
                    self.log.error(
                        "media stream refused: auth = twilio_signature but the Twilio auth token "
                        "is not set",
                        extra={"remote": remote},
                    )
                    return 503
                header = request.header(_SIGNATURE_HEADER)
                if not twilio_signature_valid(self.auth_token, self.config.public_url, header):
                    self.log.warning(
                        "media stream refused: X-Twilio-Signature missing or wrong",
                        extra={"remote": remote, "signature_present": header is not None},
                    )
                    return 403
            case MediaStreamAuth.SHARED_SECRET:
                if not self.shared_secret:
                    self.log.error(
                        "media stream refused: auth = shared_secret but the shared secret is "
                        "not set",
                        extra={"remote": remote},
                    )
                    return 503
            case MediaStreamAuth.NONE:
                pass
        return None

    async def _wait_for_start(
        self, websocket: ServerWebSocket, session: MediaStreamSession, remote: str
    ) -> MediaStreamStarted | None:
        while True:
            event = session.next_event()
            if isinstance(event, MediaStreamStarted):
                return event
            if isinstance(event, TelephonyEnded):
                self.log.warning(
                    "media stream ended before start",
                    extra={"remote": remote, "reason": event.reason.value, "detail": event.detail},
                )
                return None
            if event is not None:
                continue
            messages: list[str | bytes] = []
            with trio.move_on_at(session.next_deadline()):
                try:
                    messages = await websocket.receive_messages()
                except WebSocketClosed:
                    self.log.info("media stream closed before start", extra={"remote": remote})
                    return None
            now = trio.current_time()
            # frames that came along with `start` stay queued in the session for the leg
            for message in messages:
                session.receive_message(message, now)
            if not messages:
                session.handle_timeout(now)

    def _secret_accepted(self, started: MediaStreamStarted) -> bool:
        if self.config.auth is not MediaStreamAuth.SHARED_SECRET:
            return True
        given = started.custom_parameters.get(self.config.secret_parameter)
        return self.shared_secret is not None and shared_secret_valid(self.shared_secret, given)

    def _call_info(self, started: MediaStreamStarted) -> CallInfo:
        variables = dict(started.custom_parameters)
        if self.config.auth is MediaStreamAuth.SHARED_SECRET:
            variables.pop(self.config.secret_parameter, None)
        return CallInfo(
            call_id=self.new_call_id(),
            ingress=INGRESS,
            codec=started.codec,
            caller=variables.get("from") or variables.get("caller") or "",
            called=variables.get("to") or variables.get("called") or "",
            variables=variables,
            external_ids={
                "stream_sid": started.stream_sid,
                "call_sid": started.call_sid,
                "account_sid": started.account_sid,
            },
        )


def _remote(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


__all__ = [
    "MediaStreamLeg",
    "MediaStreamLegStatistics",
    "serve_mediastream",
]
