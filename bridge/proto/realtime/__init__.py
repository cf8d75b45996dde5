"""The OpenAI Realtime API, GA and beta dialects: codec, session configuration, session core."""

from __future__ import annotations

from bridge.proto.realtime.codec import RealtimeCodec
from bridge.proto.realtime.session import RealtimeSession, RealtimeStatistics
from bridge.proto.realtime.session_config import build_session_update, expected_formats

__all__ = [
    "RealtimeCodec",
    "RealtimeSession",
    "RealtimeStatistics",
    "build_session_update",
    "expected_formats",
]
