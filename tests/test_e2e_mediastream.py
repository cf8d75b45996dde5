"""Whole calls over real sockets on 127.0.0.1: test caller -> daemon -> Realtime model and back.

The caller is a simulated Twilio gateway (bridge/proto/mediastream/gateway.py) that plays out what
it receives in real time and echoes marks; the model is the loopback model, which answers a
caller's turn with that turn's own audio, so byte-for-byte checks are possible both ways. The calls
run in real time (a few seconds each); nothing here asserts on timing except where the issue
demands a bound, and then with a wide margin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import trio
import trio_websocket
from openai.types.realtime import RealtimeClientEventParam

from bridge.call.events import Codec
from bridge.caller import CallerResult, run_caller
from bridge.media import g711
from tests.support.daemon import AUTH_TOKEN, SECRET, Daemon, running_daemon

# extra="forbid" reaches the nested TypedDicts: a misspelt key fails instead of passing.
CLIENT_EVENT = pydantic.TypeAdapter(
    RealtimeClientEventParam, config=pydantic.ConfigDict(extra="forbid")
)
SECRETS = (SECRET, AUTH_TOKEN, "sk-test")
PARAMETERS = {"secret": SECRET, "from": "+15550100001", "to": "+15550100002"}


def loud_noise(codec: Codec, duration_ms: int, seed: int) -> bytes:
    """Random G.711 codes: loud enough for any VAD, and unique, so a byte match means something."""
    rng = random.Random(seed)
    silence = g711.silence(codec, 1)[0]
    return bytes(
        rng.choice([b for b in range(256) if b != silence]) for _ in range(duration_ms * 8)
    )


def quiet(codec: Codec, duration_ms: int) -> bytes:
    return g711.silence(codec, duration_ms * 8)


async def call(daemon: Daemon, codec: Codec, audio: bytes, **options: Any) -> CallerResult:
    options.setdefault("custom_parameters", PARAMETERS)
    options.setdefault("quiet_s", 0.5)
    options.setdefault("max_duration_s", 15.0)
    with trio.fail_after(30):
        return await run_caller(daemon.url, codec=codec, audio=audio, **options)


async def wait_until(condition: Callable[[], bool], limit_s: float) -> None:
    """Poll a condition another process-side task makes true (no event to wait on across legs)."""
    with trio.fail_after(limit_s):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def wait_for_record(daemon: Daemon) -> dict[str, Any]:
    await wait_until(lambda: len(daemon.records()) == 1, 3)
    return daemon.records()[0]


@pytest.mark.parametrize("codec", [Codec.PCMU, Codec.PCMA])
async def test_audio_passes_through_unchanged_both_ways(tmp_path: Path, codec: Codec) -> None:
    speech = loud_noise(codec, 1000, seed=1)
    async with running_daemon(tmp_path) as daemon:
        result = await call(daemon, codec, speech)
        # The model heard exactly the caller's speech (it echoes its committed turn), and the
        # caller heard that echo unchanged, in order, and nothing else.
        assert result.heard == speech
        assert result.hung_up_by == "caller"
        # Hanging up closes the model's websocket too, within a second.
        await wait_until(lambda: daemon.model.open_connections == 0, 1.0)
        (model,) = daemon.model.registry.statistics()
        wire = "audio/pcmu" if codec is Codec.PCMU else "audio/pcma"
        assert (model.input_format, model.output_format) == (wire, wire)
        assert model.audio_bytes_received >= len(speech)
        update = model.last_session_update
        assert update is not None
        assert update["session"]["audio"]["input"]["format"] == {"type": wire}
        assert update["session"]["audio"]["output"]["format"] == {"type": wire}
        CLIENT_EVENT.validate_python(update)
        record = await wait_for_record(daemon)
    assert record["end_reason"] == "caller_hangup"
    assert record["codec"] == codec.value
    assert record["caller"] == "+15550100001"
    assert "secret" not in json.dumps(record)
    assert [line["role"] for line in record["transcript"]] == ["caller", "model"]
    assert record["usage"]["total_tokens"] > 0


async def test_barge_in_clears_and_truncates_at_what_was_heard(tmp_path: Path) -> None:
    codec = Codec.PCMU
    first = loud_noise(codec, 1000, seed=2)
    second = loud_noise(codec, 600, seed=3)
    # The reply to `first` starts playing about 1.5 s in (after 500 ms of silence); the caller
    # talks over it from 2.1 s.
    audio = first + quiet(codec, 1100) + second
    async with running_daemon(tmp_path) as daemon:
        result = await call(daemon, codec, audio)
        (model,) = daemon.model.registry.statistics()
        record = await wait_for_record(daemon)
    assert result.statistics.clears == 1
    (truncated_item, audio_end_ms), *_ = model.truncations
    assert len(model.truncations) == 1
    # What the caller heard of the first reply: the longest prefix of it that matches `first`.
    heard_first = 0
    limit = min(len(first), len(result.heard))
    while heard_first < limit and result.heard[heard_first] == first[heard_first]:
        heard_first += 1
    heard_ms = heard_first // 8
    assert 200 < heard_ms < 1000
    # The cut is what the gateway had confirmed (marks) when it got the clear, within one 20 ms
    # chunk whose mark was still in flight, and never more than the caller heard.
    (confirmed_bytes,) = result.confirmed_at_clears
    assert abs(confirmed_bytes // 8 - audio_end_ms) <= 20
    assert 0 <= heard_ms - audio_end_ms <= 40
    assert record["statistics"]["barge_ins"] == 1
    cut = [line for line in record["transcript"] if line["item_id"] == truncated_item]
    assert cut[0]["heard_ms"] == audio_end_ms


async def test_only_one_response_at_a_time(tmp_path: Path) -> None:
    codec = Codec.PCMU
    overrides = {"session": {"greeting": "Hello and welcome to the loopback test line."}}
    overrides["call"] = {"dtmf_flush_ms": 0}  # type: ignore[assignment]
    async with running_daemon(tmp_path, overrides, generation_speed=1.0) as daemon:
        # The key press asks for a response while the greeting's response is still active.
        result = await call(daemon, codec, quiet(codec, 600), dtmf=[(0.3, "5")])
        (model,) = daemon.model.registry.statistics()
    assert "conversation_already_has_active_response" not in model.error_codes
    assert model.responses == 2
    assert model.user_texts == ["The caller pressed 5 on the phone keypad."]
    assert result.heard


async def test_maximum_duration_hangs_up_both_sides(tmp_path: Path) -> None:
    codec = Codec.PCMA
    async with running_daemon(tmp_path, {"call": {"max_duration_s": 1.0}}) as daemon:
        result = await call(daemon, codec, quiet(codec, 3000))
        assert result.hung_up_by == "daemon"
        assert result.close_code == 1000
        await wait_until(lambda: daemon.model.open_connections == 0, 1.0)
        record = await wait_for_record(daemon)
    assert record["end_reason"] == "max_duration"


async def test_malformed_and_unknown_caller_messages_do_not_end_the_call(tmp_path: Path) -> None:
    codec = Codec.PCMU
    speech = loud_noise(codec, 800, seed=4)
    garbage = [(0.1, "this is not json"), (0.2, '{"event": "surprise"}'), (0.3, "[1, 2]")]
    async with running_daemon(tmp_path) as daemon:
        result = await call(daemon, codec, speech, inject=garbage)
        record = await wait_for_record(daemon)
    assert result.heard == speech
    assert record["end_reason"] == "caller_hangup"


def twilio_signature(url: str) -> str:
    mac = hmac.new(AUTH_TOKEN.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


async def test_twilio_signature_required(tmp_path: Path) -> None:
    codec = Codec.PCMU
    public_url = "wss://bridge.example.com/media"
    overrides = {"ingress": {"mediastream": {"auth": "twilio_signature", "public_url": public_url}}}
    async with running_daemon(tmp_path, overrides) as daemon:
        for header in ([], [("X-Twilio-Signature", twilio_signature(public_url + "x"))]):
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                await call(daemon, codec, quiet(codec, 100), extra_headers=header)
            assert rejected.value.status_code == 403
        speech = loud_noise(codec, 600, seed=5)
        signed = [("X-Twilio-Signature", twilio_signature(public_url))]
        result = await call(daemon, codec, speech, extra_headers=signed, custom_parameters={})
    assert result.heard == speech


async def test_wrong_shared_secret_closes_the_stream(tmp_path: Path) -> None:
    codec = Codec.PCMU
    async with running_daemon(tmp_path) as daemon:
        result = await call(daemon, codec, quiet(codec, 500), custom_parameters={"secret": "no"})
        assert result.hung_up_by == "daemon"
        assert result.close_code == 1008
        assert daemon.model.registry.connections_total == 0


# ---- a scripted model, for what the loopback model never does --------------------------------


async def scripted_model(
    script: Callable[[trio_websocket.WebSocketConnection, dict[str, Any]], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(json.dumps({"type": "session.created", "session": {"id": "s1"}}))
        update = json.loads(await ws.get_message())
        try:
            await script(ws, update)
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None
            )
        )
        task_status.started(f"ws://127.0.0.1:{server.port}/v1/realtime")


def session_updated(update: dict[str, Any], wire_format: str | None = None) -> str:
    audio = update["session"]["audio"]
    formats = {
        "input": {"format": {"type": wire_format} if wire_format else audio["input"]["format"]},
        "output": {"format": {"type": wire_format} if wire_format else audio["output"]["format"]},
    }
    return json.dumps(
        {"type": "session.updated", "session": {"id": "s1", "type": "realtime", "audio": formats}}
    )


async def closes_after_junk(ws: trio_websocket.WebSocketConnection, update: dict[str, Any]) -> None:
    await ws.send_message(session_updated(update))
    for junk in ("{not json", '{"type": "response.brand_new_event"}', '"just a string"'):
        await ws.send_message(junk)
    await trio.sleep(0.8)
    await ws.aclose(code=1011, reason="server error")


async def confirms_wrong_format(
    ws: trio_websocket.WebSocketConnection, update: dict[str, Any]
) -> None:
    await ws.send_message(session_updated(update, "audio/pcm"))
    await trio.sleep(5)


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (closes_after_junk, "model_closed"),
        (confirms_wrong_format, "model_format_rejected"),
    ],
)
async def test_model_side_ending_hangs_up_the_caller(
    tmp_path: Path,
    script: Callable[[trio_websocket.WebSocketConnection, dict[str, Any]], Awaitable[None]],
    reason: str,
) -> None:
    codec = Codec.PCMU
    async with trio.open_nursery() as nursery:
        url = await nursery.start(scripted_model, script)
        async with running_daemon(tmp_path, model_url=url) as daemon:
            result = await call(daemon, codec, quiet(codec, 3000))
            record = await wait_for_record(daemon)
        nursery.cancel_scope.cancel()
    assert result.hung_up_by == "daemon"
    assert result.duration_s < 3.0
    assert record["end_reason"] == reason


async def test_secrets_never_reach_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    codec = Codec.PCMU
    caplog.set_level("DEBUG")
    async with running_daemon(tmp_path) as daemon:
        await call(daemon, codec, loud_noise(codec, 400, seed=6))
        await call(daemon, codec, quiet(codec, 200), custom_parameters={"secret": "wrong"})
        await wait_until(lambda: len(daemon.records()) == 1, 3)
    logged = (
        "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
        + caplog.text
    )
    assert "call started" in logged
    for secret in SECRETS:
        assert secret not in logged
    records = (tmp_path / "records").read_text() if (tmp_path / "records").is_file() else ""
    for path in (tmp_path / "records").glob("*.jsonl"):
        records += path.read_text()
    for secret in SECRETS:
        assert secret not in records
