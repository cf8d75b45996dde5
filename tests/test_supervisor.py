"""run_call with scripted legs over memory channels, under trio's virtual clock."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from bridge.agent.errors import AgentLegFailed
from bridge.call.bridge import CallBridgeSettings
from bridge.call.context import CallInfo
from bridge.call.events import (
    AgentAudio,
    AgentCommand,
    AgentEnded,
    AgentEvent,
    AgentReady,
    AgentResponseStarted,
    AnswerCall,
    AudioPlayed,
    CallerAudio,
    CloseAgent,
    Codec,
    EndReason,
    HangUp,
    PlayAudio,
    SendAudio,
    TelephonyCommand,
    TelephonyEnded,
    TelephonyEvent,
)
from bridge.logs import call_logger
from bridge.supervisor import run_call

INFO = CallInfo(call_id="c-test", ingress="memory", codec=Codec.PCMU)


@attrs.define
class ScriptedPhone:
    """A telephony leg that plays a script of events and keeps every command it gets."""

    script: list[tuple[float, TelephonyEvent]]
    info: CallInfo = INFO
    caller_audio_dropped: int = 0
    commands: list[tuple[float, TelephonyCommand]] = attrs.field(factory=list)
    closed_at: float | None = None

    async def run(
        self,
        events: trio.MemorySendChannel[TelephonyEvent],
        commands: trio.MemoryReceiveChannel[TelephonyCommand],
    ) -> None:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def play() -> None:
                for at, event in self.script:
                    await trio.sleep_until(start + at)
                    await events.send(event)

            nursery.start_soon(play)
            async for command in commands:
                self.commands.append((trio.current_time() - start, command))
                if isinstance(command, HangUp):
                    break
            self.closed_at = trio.current_time() - start
            nursery.cancel_scope.cancel()


@attrs.define
class ScriptedModel:
    """An agent leg: ready at once (or failing), then a script; keeps every command."""

    script: list[tuple[float, AgentEvent]] = attrs.field(factory=list)
    fail: AgentLegFailed | None = None
    crash: bool = False
    connect_s: float = 0.3
    return_silently: bool = False
    commands: list[tuple[float, AgentCommand]] = attrs.field(factory=list)
    closed_at: float | None = None

    async def __call__(
        self,
        info: CallInfo,
        events: trio.MemorySendChannel[AgentEvent],
        commands: trio.MemoryReceiveChannel[AgentCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        start = trio.current_time()
        await trio.sleep(self.connect_s)
        if self.fail is not None:
            raise self.fail
        if self.return_silently:
            return
        await events.send(AgentReady("sess_1"))
        task_status.started()
        async with trio.open_nursery() as nursery:

            async def play() -> None:
                for at, event in self.script:
                    await trio.sleep_until(start + at)
                    if self.crash:
                        raise RuntimeError("bug in a leg")
                    await events.send(event)

            nursery.start_soon(play)
            async for command in commands:
                self.commands.append((trio.current_time() - start, command))
                if isinstance(command, CloseAgent):
                    break
            self.closed_at = trio.current_time() - start
            nursery.cancel_scope.cancel()


async def call(phone: ScriptedPhone, model: ScriptedModel, **settings: Any) -> dict[str, Any]:
    records: list[dict[str, Any]] = []

    async def write(record: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()  # as the real writer does: cancellation must not lose it
        records.append(record)

    with trio.fail_after(7200):
        record = await run_call(
            phone,
            model,
            settings=CallBridgeSettings(model_codec=Codec.PCMU, **settings),
            log=call_logger(INFO.call_id),
            write_record=write,
        )
    assert records == [record]
    return record


async def test_caller_hangup_closes_the_model_at_once(autojump_clock: trio.abc.Clock) -> None:
    frame = b"\x11" * 160
    phone = ScriptedPhone(
        [(0.02, CallerAudio(frame)), (1.0, TelephonyEnded(EndReason.CALLER_HANGUP))]
    )
    model = ScriptedModel()
    record = await call(phone, model)
    assert record["end_reason"] == "caller_hangup"
    assert [c for _, c in model.commands] == [SendAudio(frame), CloseAgent()]
    # The model is told at the moment of the caller's hang-up.
    assert model.closed_at == pytest.approx(1.0, abs=0.01)


async def test_model_end_hangs_up_the_caller(autojump_clock: trio.abc.Clock) -> None:
    phone = ScriptedPhone([])
    model = ScriptedModel([(2.0, AgentEnded(EndReason.MODEL_ERROR, "server_error"))])
    record = await call(phone, model)
    assert record["end_reason"] == "model_error"
    assert [c for _, c in phone.commands] == [AnswerCall(), HangUp(EndReason.MODEL_ERROR)]
    assert phone.closed_at == pytest.approx(2.0, abs=0.01)


async def test_model_that_never_gets_ready_ends_the_call(autojump_clock: trio.abc.Clock) -> None:
    phone = ScriptedPhone([])
    model = ScriptedModel(fail=AgentLegFailed(EndReason.MODEL_FORMAT_REJECTED, "got audio/pcm"))
    record = await call(phone, model)
    assert record["end_reason"] == "model_format_rejected"
    assert record["end_detail"] == "got audio/pcm"
    assert [c for _, c in phone.commands] == [HangUp(EndReason.MODEL_FORMAT_REJECTED)]


async def test_a_failing_leg_gives_an_internal_error_record(autojump_clock: trio.abc.Clock) -> None:
    phone = ScriptedPhone([])
    model = ScriptedModel([(1.0, AgentReady("x"))], crash=True)
    record = await call(phone, model)
    assert record["end_reason"] == "internal_error"
    assert "bug in a leg" in record["end_detail"]


async def test_maximum_duration(autojump_clock: trio.abc.Clock) -> None:
    phone = ScriptedPhone([])
    model = ScriptedModel()
    record = await call(phone, model, max_duration_s=600.0)
    assert record["end_reason"] == "max_duration"
    assert record["duration_s"] == pytest.approx(600.0)
    assert [c for _, c in phone.commands] == [AnswerCall(), HangUp(EndReason.MAX_DURATION)]


async def test_model_audio_relayed_and_played_audio_reported(
    autojump_clock: trio.abc.Clock,
) -> None:
    reply = bytes(range(160)) * 3
    phone = ScriptedPhone(
        [(0.5, AudioPlayed("i1", 320)), (0.6, TelephonyEnded(EndReason.CALLER_HANGUP))]
    )
    model = ScriptedModel(
        [(0.35, AgentResponseStarted("r1")), (0.4, AgentAudio("r1", "i1", reply))]
    )
    record = await call(phone, model)
    assert [c for _, c in phone.commands] == [AnswerCall(), PlayAudio("i1", reply)]
    assert record["statistics"]["played_bytes"] == 320


async def test_cancellation_still_writes_the_record(autojump_clock: trio.abc.Clock) -> None:
    records: list[dict[str, Any]] = []

    async def write(record: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        records.append(record)

    with trio.move_on_after(5):
        await run_call(
            ScriptedPhone([]),
            ScriptedModel(),
            settings=CallBridgeSettings(model_codec=Codec.PCMU),
            log=call_logger(INFO.call_id),
            write_record=write,
        )
    assert [r["end_reason"] for r in records] == ["shutdown"]


def test_adjacent_caller_audio_is_joined_and_order_kept() -> None:
    from bridge.call.events import AddUserText
    from bridge.supervisor import _coalesce_audio

    commands: list[Any] = [
        SendAudio(b"a"),
        SendAudio(b"b"),
        AddUserText("x"),
        SendAudio(b"c"),
        PlayAudio("i", b"p"),
        SendAudio(b"d"),
    ]
    assert _coalesce_audio(commands) == [
        SendAudio(b"ab"),
        AddUserText("x"),
        SendAudio(b"c"),
        PlayAudio("i", b"p"),
        SendAudio(b"d"),
    ]


async def test_hangup_while_the_model_connects_ends_the_call_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    phone = ScriptedPhone([(0.5, TelephonyEnded(EndReason.CALLER_HANGUP))])
    model = ScriptedModel(connect_s=30.0)
    start = trio.current_time()
    record = await call(phone, model)
    assert record["end_reason"] == "caller_hangup"
    assert record["duration_s"] == pytest.approx(0.5)
    # The connecting model leg was cancelled at once, not left to run out its timeout.
    assert trio.current_time() - start == pytest.approx(0.5, abs=0.01)


async def test_a_leg_returning_without_a_reason_ends_the_call(
    autojump_clock: trio.abc.Clock,
) -> None:
    record = await call(ScriptedPhone([]), ScriptedModel(return_silently=True))
    assert record["end_reason"] == "model_closed"
    assert record["duration_s"] == pytest.approx(0.3)
