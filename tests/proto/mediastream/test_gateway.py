from __future__ import annotations

import base64
import json

import pytest

from bridge.call.events import Codec
from bridge.proto.mediastream.gateway import SimulatedGateway


def media(payload: bytes) -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": "MZ1",
            "media": {"payload": base64.b64encode(payload).decode()},
        }
    )


def mark(name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}})


def echoed(gateway: SimulatedGateway) -> list[str]:
    return [json.loads(m)["mark"]["name"] for m in gateway.messages_to_send()]


def test_start_messages_follow_twilio() -> None:
    gateway = SimulatedGateway(codec=Codec.PCMA, custom_parameters={"secret": "s"})
    connected, start = (json.loads(m) for m in gateway.start_messages())
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-alaw",
        "sampleRate": 8000,
        "channels": 1,
    }
    assert start["start"]["customParameters"] == {"secret": "s"}
    assert start["sequenceNumber"] == "1"
    first = json.loads(gateway.media_message(b"\x01\x02", timestamp_ms=0))
    assert first["sequenceNumber"] == "2"
    assert first["media"] == {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "AQI="}


def test_playout_in_real_time_and_marks_echoed_when_reached() -> None:
    gateway = SimulatedGateway(codec=Codec.PCMU)
    gateway.receive_message(media(bytes(800)), 10.0)  # 100 ms
    gateway.receive_message(mark("m1"), 10.0)
    gateway.receive_message(media(bytes([1]) * 800), 10.0)
    gateway.receive_message(mark("m2"), 10.0)
    assert gateway.next_deadline() == pytest.approx(10.1)
    gateway.advance(10.05)
    assert echoed(gateway) == []
    assert len(gateway.heard_audio()) == 400
    gateway.advance(10.1)
    assert echoed(gateway) == ["m1"]
    gateway.advance(10.25)
    assert echoed(gateway) == ["m2"]
    assert gateway.heard_audio() == bytes(800) + bytes([1]) * 800
    assert not gateway.playing


def test_clear_drops_queued_audio_and_echoes_pending_marks() -> None:
    gateway = SimulatedGateway(codec=Codec.PCMU)
    gateway.receive_message(media(bytes(800)), 0.0)
    gateway.receive_message(mark("m1"), 0.0)
    gateway.receive_message(media(bytes(800)), 0.0)
    gateway.receive_message(mark("m2"), 0.0)
    gateway.receive_message(json.dumps({"event": "clear", "streamSid": "MZ1"}), 0.06)
    assert echoed(gateway) == ["m1", "m2"]
    assert len(gateway.heard_audio()) == 480
    stats = gateway.statistics()
    assert (stats.clears, stats.bytes_cleared, stats.bytes_heard) == (1, 1120, 480)


def test_heard_timeline_places_audio_at_its_time() -> None:
    gateway = SimulatedGateway(codec=Codec.PCMU)
    gateway.receive_message(media(b"\x01" * 8), 0.002)
    gateway.advance(1.0)
    timeline = gateway.heard_timeline(0.0, 0.004)
    assert timeline == b"\xff" * 16 + b"\x01" * 8 + b"\xff" * 8


def test_malformed_messages_are_counted() -> None:
    gateway = SimulatedGateway(codec=Codec.PCMU)
    gateway.receive_message("not json", 0.0)
    gateway.receive_message(json.dumps({"event": "media", "media": {"payload": "!!"}}), 0.0)
    assert gateway.statistics().malformed == 2
