"""One call from an accepted telephony leg to its record.

The call's journal opens first (so even a crash leaves a trace), then the pre-call hook and the
route choose its profile, the agent leg connects to the model with that profile's session and
tools, and :func:`bridge.supervisor.run_call` runs it; the record goes to the journal and the
day's records, and what the call observes goes to the metrics and the journal as it happens.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from typing import Any

import attrs
import httpx2
import trio

from bridge.adapters.leg import TelephonyLeg
from bridge.adapters.realtime_ws import run_realtime_leg
from bridge.agent.errors import AgentLegFailed
from bridge.call.bridge import CallBridgeSettings
from bridge.call.context import CallInfo
from bridge.call.events import AgentCommand, AgentEvent, Codec, EndReason
from bridge.call.observations import Observation
from bridge.call.profile import CallProfile, choose_profile
from bridge.call.tools import function_definitions
from bridge.config import Config, Provider, TurnDetectionConfig, TurnDetectionType
from bridge.credentials import read_secret
from bridge.errors import SecretError
from bridge.logs import CallLogger, call_logger
from bridge.metrics import Metrics
from bridge.proto.realtime.session_config import session_codec
from bridge.recording import CallRecording
from bridge.records import CallJournal, append_record, redact_record
from bridge.startup import ToolResources
from bridge.supervisor import run_call
from bridge.tools.precall import PrecallResult, run_precall_hook
from bridge.tools.runner import ToolRunner

# The Realtime API's server_vad default (realtime-api.md, turn detection).
SERVER_VAD_DEFAULT_PREFIX_PADDING_MS = 300


@attrs.frozen
class SharedByCalls:
    """What every call of a daemon uses: where secrets are read, the HTTP client, the metrics."""

    environ: Mapping[str, str]
    http_client: httpx2.AsyncClient | None
    metrics: Metrics


@attrs.frozen
class InForce:
    """What a new call is given: the config in force (a reload replaces it), the tools prepared
    for it and the model's URL."""

    config: Config
    resources: ToolResources
    model_url: str


def bridge_settings(
    config: Config,
    info: CallInfo,
    profile: CallProfile | None = None,
    holding_audio: Mapping[tuple[str, Codec], bytes] | None = None,
) -> CallBridgeSettings:
    """The control loop's settings for one call under `profile` (the defaults when None)."""
    profile = profile or choose_profile(config, info)
    session = profile.session
    turn_detection = session.turn_detection
    holding_audio = holding_audio or {}
    return CallBridgeSettings(
        model_codec=session_codec(session, info),
        input_batch_frames=config.call.input_batch_frames,
        dtmf_flush_ms=config.call.dtmf_flush_ms,
        max_duration_s=config.call.max_duration_s,
        greeting=session.greeting,
        barge_in=turn_detection.type is not TurnDetectionType.NONE
        and turn_detection.interrupt_response,
        vad_prefix_padding_ms=_vad_prefix_padding_ms(session.turn_detection),
        tools={tool.name: tool for tool in profile.tools},
        holding_audio={
            tool.name: holding_audio[tool.name, info.codec]
            for tool in profile.tools
            if (tool.name, info.codec) in holding_audio
        },
    )


def _vad_prefix_padding_ms(turn_detection: TurnDetectionConfig) -> int:
    """How far before the speech the model's VAD puts speech_started (its audio_start_ms)."""
    if turn_detection.type is not TurnDetectionType.SERVER_VAD:
        return 0
    if turn_detection.prefix_padding_ms is None:
        return SERVER_VAD_DEFAULT_PREFIX_PADDING_MS
    return turn_detection.prefix_padding_ms


async def run_configured_call(
    in_force: InForce,
    leg: TelephonyLeg,
    *,
    refusal: AgentLegFailed | None,
    shared: SharedByCalls,
) -> dict[str, Any]:
    """Run the call on `leg` to its end under `in_force` (the call keeps it whatever reloads
    come); `refusal` ends it at once. Returns its record."""
    config = in_force.config
    call_log = call_logger(leg.info.call_id)
    info = leg.info
    records = config.records
    started_at = dt.datetime.now(dt.UTC)
    shared.metrics.call_started(info.ingress)
    # The journal first: from here on, even a crash leaves a trace of the call. Shielded, so a
    # call cancelled meanwhile still reaches run_call, which writes its record.
    with trio.CancelScope(shield=True):
        journal = await _open_journal(config, info, started_at, call_log)
        recording = None
        if journal is not None and records.audio:
            try:
                recording = await trio.to_thread.run_sync(
                    functools.partial(CallRecording.open, journal.recording_path, codec=info.codec)
                )
            except OSError as error:
                call_log.error("could not start the call recording", extra={"error": str(error)})
    record: dict[str, Any] = {}
    try:
        record = await _run_journaled_call(
            in_force,
            leg,
            refusal=refusal,
            shared=shared,
            started_at=started_at,
            journal=journal,
            recording=recording,
            call_log=call_log,
        )
        return record
    finally:
        shared.metrics.call_ended(info.ingress, record)
        with trio.CancelScope(shield=True):
            if recording is not None:
                await trio.to_thread.run_sync(_close_recording, recording, call_log)
            if journal is not None and not journal.closed:
                # The call failed before it could end: the next start rebuilds its record.
                journal.close()


async def _run_journaled_call(
    in_force: InForce,
    leg: TelephonyLeg,
    *,
    refusal: AgentLegFailed | None,
    shared: SharedByCalls,
    started_at: dt.datetime,
    journal: CallJournal | None,
    recording: CallRecording | None,
    call_log: CallLogger,
) -> dict[str, Any]:
    """The call once its journal is open: pre-call hook, profile, then run_call."""
    config, resources = in_force.config, in_force.resources
    records = config.records
    info = leg.info
    precall = PrecallResult()
    if config.precall_hook.url and refusal is None:
        try:
            precall = await run_precall_hook(
                config.precall_hook,
                info,
                environ=shared.environ,
                log=call_log,
                client=shared.http_client,
            )
        except trio.Cancelled:
            # run_call's first checkpoint raises it again, after the call got its record
            refusal = AgentLegFailed(EndReason.SHUTDOWN, "stopped during the pre-call hook")
        info = attrs.evolve(info, variables={**info.variables, **precall.variables})
    profile = choose_profile(config, info, route_name=precall.route)
    if profile.route:
        call_log.info("route chosen", extra={"route": profile.route})
    model = attrs.evolve(config.model, model=profile.model)
    tool_definitions = function_definitions(profile.tools)

    async def agent(
        info: CallInfo,
        events: trio.MemorySendChannel[AgentEvent],
        commands: trio.MemoryReceiveChannel[AgentCommand],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if refusal is not None:
            raise refusal
        api_key = None
        if config.model.provider is not Provider.LOOPBACK:
            # Read per call, so a rotated key (a new credential file) is used at once.
            try:
                api_key = read_secret(config.model.api_key, shared.environ)
            except SecretError as error:
                raise AgentLegFailed(EndReason.MODEL_CONNECT_FAILED, str(error)) from None
        await run_realtime_leg(
            model=model,
            session=profile.session,
            call=info,
            api_key=api_key,
            url=in_force.model_url,
            tools=tool_definitions,
            events=events,
            commands=commands,
            log=call_log,
            task_status=task_status,
        )

    def observe(observation: Observation) -> None:
        shared.metrics.observe(observation)
        if journal is not None:
            journal(observation)

    async def write_record(record: dict[str, Any]) -> None:
        record["route"] = profile.route
        if config.precall_hook.url:
            record["precall_hook"] = precall.problem or "ok"
        if recording is not None:
            record["recording"] = str(recording.path.relative_to(records.directory))
        if journal is not None:
            # Transcripts, keypad digits (PINs, card numbers) and what tools were told or
            # answered stay out of the record unless records.transcripts is on.
            await trio.to_thread.run_sync(journal.finish, record)
            return
        if not records.transcripts:
            record = redact_record(record)
        await trio.to_thread.run_sync(append_record, records.directory, record, started_at)

    runner = ToolRunner(
        tools={tool.name: tool for tool in profile.tools},
        info=info,
        log=call_log,
        environ=shared.environ,
        python_functions=resources.python_functions,
        client=shared.http_client,
    )
    return await run_call(
        leg,
        agent,
        info=info,
        settings=bridge_settings(config, info, profile, resources.holding_audio),
        log=call_log,
        tools=runner if profile.tools else None,
        write_record=write_record if records.enabled else None,
        observer=observe,
        audio_tap=recording,
        wallclock=lambda: started_at,
    )


async def _open_journal(
    config: Config,
    info: CallInfo,
    started_at: dt.datetime,
    log: CallLogger,
) -> CallJournal | None:
    """The call's journal, written as the call goes (None: records are off, or it failed)."""
    records = config.records
    if not records.enabled:
        return None
    header = {
        "ingress": info.ingress,
        "codec": info.codec.value,
        "caller": info.caller,
        "called": info.called,
        "external_ids": dict(info.external_ids),
        "variables": dict(info.variables),
    }
    try:
        return await trio.to_thread.run_sync(
            functools.partial(
                CallJournal.open,
                records.directory,
                call_id=info.call_id,
                started_at=started_at,
                header=header,
                transcripts=records.transcripts,
                log=log,
            )
        )
    except OSError as error:
        log.error(
            "could not open the call's journal; its record is written when it ends",
            extra={"error": str(error)},
        )
        return None


def _close_recording(recording: CallRecording, log: CallLogger) -> None:
    try:
        recording.close()
    except OSError as error:
        log.error("could not finish the call recording", extra={"error": str(error)})
