from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable

import pytest

from bridge.call.events import (
    AudioPlayed,
    CallerAudio,
    CallerDtmf,
    Codec,
    EndReason,
    TelephonyEnded,
    TelephonyEvent,
)
from bridge.errors import LocalProtocolError
from bridge.proto.mediastream.gateway import SimulatedGateway
from bridge.proto.mediastream.session import (
    MediaStreamSession,
    MediaStreamStarted,
    StreamState,
)

SID = "MZ00000000000000000000000000000000"
FRAME = 160


def new_session(
    *, chunk_frames: int = 5, lead_ms: int = 300, start_timeout_s: float = 5.0, now: float = 100.0
) -> MediaStreamSession:
    return MediaStreamSession(
        outbound_chunk_frames=chunk_frames,
        playout_lead_ms=lead_ms,
        start_timeout_s=start_timeout_s,
        now=now,
    )


def start_message(encoding: str = "audio/x-mulaw", **parameters: str) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC1",
                "streamSid": SID,
                "callSid": "CA1",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": encoding, "sampleRate": 8000, "channels": 1},
                "customParameters": parameters,
            },
            "streamSid": SID,
        }
    )


CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
STOP = json.dumps(
    {"event": "stop", "streamSid": SID, "stop": {"accountSid": "AC1", "callSid": "CA1"}}
)


def media_message(payload: bytes, track: str = "inbound") -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": SID,
            "media": {
                "track": track,
                "chunk": "1",
                "timestamp": "0",
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def mark_message(name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": name}})


def dtmf_message(digit: str) -> str:
    return json.dumps(
        {"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": digit}}
    )


def events(session: MediaStreamSession) -> list[MediaStreamStarted | TelephonyEvent]:
    out: list[MediaStreamStarted | TelephonyEvent] = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def started_session(**kwargs: float) -> MediaStreamSession:
    session = new_session(**kwargs)  # type: ignore[arg-type]
    session.receive_message(CONNECTED, 100.0)
    session.receive_message(start_message(), 100.0)
    assert isinstance(session.next_event(), MediaStreamStarted)
    assert session.next_event() is None
    return session


def sent_media(payload: bytes) -> str:
    return (
        '{"event":"media","streamSid":"'
        + SID
        + '","media":{"payload":"'
        + base64.b64encode(payload).decode()
        + '"}}'
    )


def sent_mark(name: str) -> str:
    return '{"event":"mark","streamSid":"' + SID + '","mark":{"name":"' + name + '"}}'


SENT_CLEAR = '{"event":"clear","streamSid":"' + SID + '"}'


def sent_marks(messages: list[str]) -> list[str]:
    return [json.loads(m)["mark"]["name"] for m in messages if json.loads(m)["event"] == "mark"]


def sent_audio(messages: list[str]) -> list[bytes]:
    return [
        base64.b64decode(json.loads(m)["media"]["payload"])
        for m in messages
        if json.loads(m)["event"] == "media"
    ]


# ---- inbound order ---------------------------------------------------------------------------


def test_connected_then_start_announces_the_stream() -> None:
    session = new_session()
    initial_state = session.state
    assert initial_state is StreamState.AWAITING_START
    assert (session.codec, session.stream_sid, session.call_sid) == (None, None, None)
    session.receive_message(CONNECTED, 100.0)
    assert session.next_event() is None
    session.receive_message(start_message("audio/x-alaw", tenant="acme", secret="s"), 100.1)
    assert events(session) == [
        MediaStreamStarted(
            stream_sid=SID,
            call_sid="CA1",
            account_sid="AC1",
            tracks=("inbound",),
            encoding="audio/x-alaw",
            codec=Codec.PCMA,
            custom_parameters={"tenant": "acme", "secret": "s"},
        )
    ]
    assert session.state is StreamState.STREAMING
    assert (session.codec, session.stream_sid, session.call_sid) == (Codec.PCMA, SID, "CA1")
    assert session.next_deadline() == math.inf
    assert session.close_code is None


def test_start_without_connected_is_accepted() -> None:
    session = new_session()
    session.receive_message(start_message(), 100.0)
    assert isinstance(session.next_event(), MediaStreamStarted)


def test_caller_media_dtmf_and_stop() -> None:
    session = started_session()
    session.receive_message(media_message(b"\x01" * FRAME), 100.02)
    session.receive_message(media_message(b"\x02" * FRAME, track="outbound"), 100.02)
    session.receive_message(media_message(b""), 100.03)
    session.receive_message(dtmf_message("5"), 100.04)
    session.receive_message(media_message(b"\x03" * 80), 100.06)
    session.receive_message(STOP, 100.08)
    session.receive_message(media_message(b"\x04" * FRAME), 100.10)  # after stop: ignored
    assert events(session) == [
        CallerAudio(b"\x01" * FRAME),
        CallerDtmf("5"),
        CallerAudio(b"\x03" * 80),
        TelephonyEnded(EndReason.CALLER_HANGUP, "stop"),
    ]
    assert session.state is StreamState.ENDED
    assert session.close_code == 1000
    stats = session.statistics()
    assert (stats.media_messages_in, stats.bytes_in, stats.frames_in) == (3, 240, 1)
    assert (stats.other_track_messages, stats.dtmf_in) == (1, 1)


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        (media_message(b"\x01" * FRAME), "media before start"),
        (dtmf_message("1"), "dtmf before start"),
    ],
)
def test_audio_before_start_is_a_protocol_error(message: str, detail: str) -> None:
    session = new_session()
    session.receive_message(CONNECTED, 100.0)
    session.receive_message(message, 100.0)
    assert events(session) == [TelephonyEnded(EndReason.TELEPHONY_ERROR, detail)]
    assert session.close_code == 1002
    session.receive_message(start_message(), 100.1)
    assert events(session) == []


def test_second_start_is_a_protocol_error() -> None:
    session = started_session()
    session.receive_message(start_message(), 101.0)
    assert events(session) == [TelephonyEnded(EndReason.TELEPHONY_ERROR, "second start")]
    assert session.close_code == 1002


def test_stop_before_start_is_a_hang_up() -> None:
    session = new_session()
    session.receive_message(STOP, 100.0)
    assert events(session) == [TelephonyEnded(EndReason.CALLER_HANGUP, "stop")]


def test_no_start_in_time() -> None:
    session = new_session(start_timeout_s=5.0, now=100.0)
    session.receive_message(CONNECTED, 100.0)
    assert session.next_deadline() == 105.0
    session.handle_timeout(104.9)
    assert events(session) == []
    session.handle_timeout(105.0)
    [ended] = events(session)
    assert isinstance(ended, TelephonyEnded)
    assert ended.reason is EndReason.TELEPHONY_ERROR
    assert ended.detail.startswith("no start")
    assert session.close_code == 1002
    assert session.next_deadline() == math.inf
    session.handle_timeout(200.0)
    assert events(session) == []


@pytest.mark.parametrize(
    ("message", "close_code"),
    [
        ("not json", 1007),
        ('{"event":"start","start":{}}', 1007),
        (start_message("audio/x-l16"), 1003),
    ],
)
def test_unreadable_message_before_start_ends_the_stream(message: str, close_code: int) -> None:
    session = new_session()
    session.receive_message(message, 100.0)
    [ended] = events(session)
    assert isinstance(ended, TelephonyEnded)
    assert ended.reason is EndReason.TELEPHONY_ERROR
    assert session.close_code == close_code
    assert session.statistics().malformed == 1


def test_unsupported_encoding_is_explained() -> None:
    session = new_session()
    session.receive_message(start_message("audio/x-l16"), 100.0)
    [ended] = events(session)
    assert isinstance(ended, TelephonyEnded)
    assert "audio/x-l16" in ended.detail
    assert "G.711" in ended.detail


def test_malformed_and_unknown_messages_after_start_are_counted_and_dropped() -> None:
    session = started_session()
    session.receive_message("{not json", 100.0)
    session.receive_message('{"event":"media","media":{"payload":"@@@"}}', 100.0)
    session.receive_message(dtmf_message("x"), 100.0)
    session.receive_message('{"event":"futureEvent","x":1}', 100.0)
    session.receive_message(media_message(b"\x07" * FRAME), 100.02)
    assert events(session) == [CallerAudio(b"\x07" * FRAME)]
    assert session.malformed_count == 3
    assert "keypad" in session.last_problem
    stats = session.statistics()
    assert (stats.malformed, stats.unknown) == (3, 1)
    assert session.state is StreamState.STREAMING


def media_in_another_layout(payload: bytes, track: str = "inbound") -> str:
    """A media message the codec's fast path leaves to the general way (payload first)."""
    return json.dumps(
        {"media": {"payload": base64.b64encode(payload).decode(), "track": track}, "event": "media"}
    )


@pytest.mark.parametrize("layout", [media_message, media_in_another_layout])
def test_media_in_any_layout_is_handled_alike(layout: Callable[..., str]) -> None:
    session = new_session()
    session.receive_message(layout(b"\x01" * FRAME), 100.0)
    assert events(session) == [TelephonyEnded(EndReason.TELEPHONY_ERROR, "media before start")]
    assert session.close_code == 1002

    session = started_session()
    session.receive_message(layout(b"\x01" * FRAME), 100.02)
    session.receive_message(layout(b"\x02" * FRAME, track="outbound"), 100.02)
    session.receive_message(layout(b""), 100.03)
    session.receive_message(layout(b"\x03" * 80, track="inbound_track"), 100.04)
    assert events(session) == [CallerAudio(b"\x01" * FRAME), CallerAudio(b"\x03" * 80)]
    stats = session.statistics()
    assert (stats.media_messages_in, stats.bytes_in, stats.other_track_messages) == (3, 240, 1)


def test_bad_base64_in_the_common_layout_is_counted_and_dropped() -> None:
    session = started_session()
    session.receive_message('{"event":"media","media":{"track":"inbound","payload":"AQI"}}', 100.0)
    session.receive_message(media_message(b"\x07" * FRAME), 100.02)
    assert events(session) == [CallerAudio(b"\x07" * FRAME)]
    assert session.malformed_count == 1
    assert "base64" in session.last_problem


def test_lower_case_dtmf_letters_are_normalised() -> None:
    session = started_session()
    session.receive_message(dtmf_message("d"), 100.0)
    session.receive_message(dtmf_message("#"), 100.0)
    assert events(session) == [CallerDtmf("D"), CallerDtmf("#")]


# ---- outbound playout ------------------------------------------------------------------------


def test_one_second_item_with_chunks_of_5_and_300_ms_lead() -> None:
    session = started_session(chunk_frames=5, lead_ms=300)
    audio = bytes(i % 251 for i in range(8000))
    chunks = [audio[i : i + 800] for i in range(0, 8000, 800)]
    session.play("item1", audio)
    # 300 ms of lead = three 100 ms chunks in flight
    assert session.messages_to_send() == [
        sent_media(chunks[0]),
        sent_mark("m1"),
        sent_media(chunks[1]),
        sent_mark("m2"),
        sent_media(chunks[2]),
        sent_mark("m3"),
    ]
    assert session.messages_to_send() == []
    played = []
    for n in range(1, 11):
        session.receive_message(mark_message(f"m{n}"), 100.0 + n / 10)
        played += events(session)
        following = n + 3
        if following <= 10:
            # each confirmed chunk frees the window for exactly one more
            assert session.messages_to_send() == [
                sent_media(chunks[following - 1]),
                sent_mark(f"m{following}"),
            ]
        else:
            assert session.messages_to_send() == []
    assert played == [AudioPlayed("item1", 800 * n) for n in range(1, 11)]
    stats = session.statistics()
    assert (stats.media_messages_out, stats.bytes_out, stats.frames_out) == (10, 8000, 50)
    assert (stats.marks_sent, stats.marks_confirmed) == (10, 10)
    assert (stats.pending_bytes, stats.unconfirmed_bytes) == (0, 0)


def test_chunks_never_mix_items_and_may_be_short_at_an_item_end() -> None:
    session = started_session(chunk_frames=5, lead_ms=2000)
    a = b"\x0a" * (3 * FRAME)
    b = b"\x0b" * (7 * FRAME)
    session.play("a", a)
    session.play("b", b)
    out = session.messages_to_send()
    assert sent_audio(out) == [a, b[: 5 * FRAME], b[5 * FRAME :]]
    assert sent_marks(out) == ["m1", "m2", "m3"]
    session.receive_message(mark_message("m3"), 101.0)  # confirms m1 and m2 as well
    assert events(session) == [
        AudioPlayed("a", 3 * FRAME),
        AudioPlayed("b", 5 * FRAME),
        AudioPlayed("b", 7 * FRAME),
    ]


def test_audio_waits_for_the_window_and_chunks_span_plays_of_one_item() -> None:
    session = started_session(chunk_frames=5, lead_ms=100)  # 800 bytes of lead
    parts = [bytes([n]) * size for n, size in enumerate([320, 320, 320, 640, 640])]
    for part in parts:
        session.play("a", part)
    out = session.messages_to_send()
    # 320 + 320 + 320: the window was below 800 before the third chunk
    assert sent_audio(out) == parts[:3]
    assert session.statistics().pending_bytes == 1280
    session.receive_message(mark_message("m1"), 100.1)
    assert events(session) == [AudioPlayed("a", 320)]
    assert sent_audio(session.messages_to_send()) == [parts[3] + parts[4][:160]]
    session.receive_message(mark_message("m2"), 100.2)
    session.receive_message(mark_message("m3"), 100.3)
    session.receive_message(mark_message("m4"), 100.4)
    assert events(session) == [
        AudioPlayed("a", 640),
        AudioPlayed("a", 960),
        AudioPlayed("a", 1760),
    ]
    assert sent_audio(session.messages_to_send()) == [parts[4][160:]]


def test_unknown_mark_names_are_ignored() -> None:
    session = started_session()
    session.play("a", b"\x01" * FRAME)
    session.messages_to_send()
    session.receive_message(mark_message("someone-else"), 100.0)
    assert events(session) == []
    assert session.statistics().stale_marks == 1
    session.receive_message(mark_message("m1"), 100.0)
    assert events(session) == [AudioPlayed("a", FRAME)]


def test_clear_drops_pending_audio_and_ignores_echoes_of_earlier_marks() -> None:
    session = started_session(chunk_frames=5, lead_ms=300)
    session.play("a", b"\x01" * 8000)
    session.messages_to_send()  # m1, m2, m3 in flight
    session.receive_message(mark_message("m1"), 100.1)
    assert events(session) == [AudioPlayed("a", 800)]
    assert sent_marks(session.messages_to_send()) == ["m4"]
    session.clear()
    assert session.messages_to_send() == [SENT_CLEAR]
    # Twilio echoes every pending mark after a clear; that audio was not played
    for name in ("m2", "m3", "m4"):
        session.receive_message(mark_message(name), 100.2)
    assert events(session) == []
    stats = session.statistics()
    assert stats.cleared_unconfirmed_bytes == 3 * 800
    assert stats.cleared_pending_bytes == 8000 - 4 * 800
    assert (stats.clears_sent, stats.stale_marks) == (1, 3)
    assert (stats.pending_bytes, stats.unconfirmed_bytes) == (0, 0)
    # the next reply starts with fresh marks and a full window
    session.play("b", b"\x02" * 1600)
    out = session.messages_to_send()
    assert sent_marks(out) == ["m5", "m6"]
    session.receive_message(mark_message("m6"), 100.5)
    assert events(session) == [AudioPlayed("b", 800), AudioPlayed("b", 1600)]


def test_clear_with_nothing_in_flight_sends_nothing() -> None:
    session = started_session()
    session.clear()
    assert session.messages_to_send() == []
    session.play("a", b"\x01" * FRAME)
    session.messages_to_send()
    session.receive_message(mark_message("m1"), 100.0)
    session.clear()  # everything sent has been played
    assert session.messages_to_send() == []
    assert session.statistics().clears_sent == 0


def test_positions_continue_after_a_clear_within_one_item() -> None:
    session = started_session(chunk_frames=1, lead_ms=100)
    session.play("a", b"\x01" * 1600)  # 10 frames; 5 frames fit the window
    assert len(sent_audio(session.messages_to_send())) == 5
    session.clear()
    session.messages_to_send()
    session.play("a", b"\x02" * FRAME)
    assert sent_marks(session.messages_to_send()) == ["m6"]
    session.receive_message(mark_message("m6"), 100.0)
    assert events(session) == [AudioPlayed("a", 1760)]


def test_commands_before_start_are_our_bug() -> None:
    session = new_session()
    with pytest.raises(LocalProtocolError):
        session.play("a", b"\x01" * FRAME)
    with pytest.raises(LocalProtocolError):
        session.clear()


def test_commands_after_the_end_are_ignored() -> None:
    session = started_session()
    session.receive_message(STOP, 100.0)
    session.play("a", b"\x01" * FRAME)
    session.clear()
    assert session.messages_to_send() == []


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        new_session(chunk_frames=0)
    with pytest.raises(ValueError):
        new_session(lead_ms=0)


# ---- against the simulated gateway -----------------------------------------------------------


def run_playout(
    session: MediaStreamSession,
    gateway: SimulatedGateway,
    now: float,
    until: float,
) -> tuple[list[AudioPlayed], float, int]:
    """Exchange messages as a websocket would, with the gateway playing in real time."""
    played: list[AudioPlayed] = []
    most_unconfirmed = 0
    while True:
        for message in session.messages_to_send():
            gateway.receive_message(message, now)
        most_unconfirmed = max(most_unconfirmed, session.statistics().unconfirmed_bytes)
        for message in gateway.messages_to_send():
            session.receive_message(message, now)
        played += [e for e in events(session) if isinstance(e, AudioPlayed)]
        if not session.wants_to_send:
            deadline = gateway.next_deadline()
            if deadline == math.inf or deadline > until:
                return played, now, most_unconfirmed
            now = max(now, deadline)
            gateway.advance(now)


def test_the_caller_hears_everything_once_and_confirmations_follow_playout() -> None:
    gateway = SimulatedGateway(codec=Codec.PCMU, stream_sid=SID)
    session = new_session(chunk_frames=5, lead_ms=300)
    for message in gateway.start_messages():
        session.receive_message(message, 0.0)
    events(session)
    audio = bytes(i % 253 for i in range(3 * 8000))  # 3 s
    session.play("r1", audio)
    played, now, most_unconfirmed = run_playout(session, gateway, 0.0, until=math.inf)
    assert gateway.heard_audio() == audio
    assert played[-1] == AudioPlayed("r1", len(audio))
    assert [p.played_bytes for p in played] == list(range(800, len(audio) + 1, 800))
    assert most_unconfirmed <= 300 * 8
    assert now == pytest.approx(3.0)


def test_barge_in_stops_the_caller_hearing_and_reports_only_what_played() -> None:
    gateway = SimulatedGateway(codec=Codec.PCMU, stream_sid=SID)
    session = new_session(chunk_frames=5, lead_ms=1000)
    for message in gateway.start_messages():
        session.receive_message(message, 0.0)
    events(session)
    audio = bytes(i % 253 for i in range(5 * 8000))
    session.play("r1", audio)
    played, _, _ = run_playout(session, gateway, 0.0, until=1.25)
    gateway.advance(1.25)
    session.clear()
    played_after, _, _ = run_playout(session, gateway, 1.25, until=math.inf)
    heard = gateway.heard_audio()
    assert heard == audio[: len(heard)]
    assert len(heard) == pytest.approx(1.25 * 8000, abs=1)
    assert played_after == []
    assert played[-1].played_bytes <= len(heard) < played[-1].played_bytes + 800
    assert gateway.statistics().clears == 1
