"""A whole daemon on loopback sockets for end-to-end tests, with a loopback model to inspect."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from bridge.adapters.loopback_server import LoopbackServer, serve_loopback_model
from bridge.agent.loopback import ScriptedToolCall
from bridge.app import serve
from bridge.config import config_from_dict
from bridge.records import read_records

SECRET = "test-media-secret"
PARAMETERS_WITH_SECRET = {"secret": SECRET, "from": "+15550100001", "to": "+15550100002"}
AUTH_TOKEN = "test-twilio-auth-token"


@attrs.frozen
class Daemon:
    url: str
    model: LoopbackServer
    records_dir: Path
    sip_port: int = 0

    def records(self) -> list[dict[str, Any]]:
        return [r for path in sorted(self.records_dir.glob("*.jsonl")) for r in read_records(path)]


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@asynccontextmanager
async def running_daemon(
    tmp_path: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    model_url: str | None = None,
    generation_speed: float = 4.0,
    script: Sequence[ScriptedToolCall] = (),
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Daemon]:
    """The daemon with a loopback model of the test's own (or the model at `model_url`).

    `script` makes that loopback model call functions; `environ` adds environment variables."""
    async with trio.open_nursery() as nursery:
        model = await nursery.start(
            functools.partial(
                serve_loopback_model, generation_speed=generation_speed, script=script
            )
        )
        data = merge(
            {
                "model": {
                    "provider": "compatible",
                    "url": model_url or model.url,
                    "api_key_env": "TEST_MODEL_KEY",
                    "session_timeout_s": 3.0,
                },
                "ingress": {
                    "mediastream": {
                        "port": 0,
                        "auth": "shared_secret",
                        "shared_secret_env": "TEST_MEDIA_SECRET",
                        "outbound_chunk_frames": 1,
                        "playout_lead_ms": 400,
                    }
                },
                "records": {"directory": str(tmp_path / "records")},
                "metrics": {"port": 0},
            },
            overrides or {},
        )
        config = config_from_dict(data)
        environ = {
            "TEST_MODEL_KEY": "sk-test",
            "TEST_MEDIA_SECRET": SECRET,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            **(environ or {}),
        }
        listening = await nursery.start(functools.partial(serve, config, environ=environ))
        path = config.ingress.mediastream.path
        yield Daemon(
            url=f"ws://127.0.0.1:{listening.mediastream_port}{path}",
            model=model,
            records_dir=tmp_path / "records",
            sip_port=listening.sip_port,
        )
        nursery.cancel_scope.cancel()
