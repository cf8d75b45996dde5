"""The per-call journal and the recovery of calls a crash left unfinished (bridge.records)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bridge.call.observations import (
    BargeIn,
    DigitPressed,
    ModelConnected,
    ToolCallEnded,
    TranscriptAdded,
    TurnLatency,
    UsageReported,
)
from bridge.records import (
    CallJournal,
    append_record,
    create_exclusive,
    read_records,
    record_path,
    recover_unfinished,
    redact_record,
)

START = dt.datetime(2026, 11, 21, 10, 30, 5, tzinfo=dt.UTC)
HEADER = {
    "ingress": "sip",
    "codec": "pcmu",
    "caller": "+15550100",
    "called": "+15550199",
    "external_ids": {"sip_call_id": "abc@host"},
    "variables": {},
    "route": "sales",
}
TOOL_ENTRY = {
    "call_id": "fc_1",
    "name": "lookup",
    "arguments": {"account": "12345"},
    "at_s": 3.0,
    "duration_s": 0.5,
    "outcome": "ok",
    "output": '{"balance": 10}',
}


class Clock:
    """Seconds for the journal's own timestamps, moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def open_journal(
    directory: Path, *, call_id: str = "c-1", transcripts: bool = True, clock: Clock | None = None
) -> CallJournal:
    return CallJournal.open(
        directory,
        call_id=call_id,
        started_at=START,
        header=HEADER,
        transcripts=transcripts,
        clock=clock or Clock(),
    )


def observe_a_call(journal: CallJournal, clock: Clock) -> None:
    journal(ModelConnected(0.4321, "sess_1"))
    journal(TranscriptAdded(1.5, "assistant", "item_a", "Hello, how can I help?"))
    clock.now += 2.0
    journal(BargeIn(0.25, {"item_a": 800}))
    journal(TranscriptAdded(2.5, "user", "item_u", "My PIN is 1234"))
    journal(DigitPressed(2.75, "1"))
    journal(DigitPressed(2.8, "#"))
    clock.now += 1.5
    journal(TurnLatency(0.61))
    journal(ToolCallEnded("lookup", "ok", TOOL_ENTRY))
    journal(UsageReported({"total_tokens": 10, "input_token_details": {"audio_tokens": 4}}))
    journal(UsageReported({"total_tokens": 5, "input_token_details": {"audio_tokens": 1}}))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def a_record(**changes: Any) -> dict[str, Any]:
    return {
        "call_id": "c-1",
        "end_reason": "caller_hangup",
        "transcript": [{"at_s": 1.5, "role": "assistant", "item_id": "i", "text": "Hi"}],
        "dtmf": "1#",
        "tool_calls": [dict(TOOL_ENTRY)],
        "started_at": START.isoformat(),
        **changes,
    }


def test_the_journal_starts_durable_and_takes_one_line_per_observation(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, clock=clock)
    assert journal.path == tmp_path / "journal" / "2026-11-21" / "c-1.jsonl"
    assert journal.recording_path == tmp_path / "journal" / "2026-11-21" / "c-1.wav"
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o640 & ~current_umask()
    assert lines(journal.path) == [
        {
            "event": "call.started",
            "at": "2026-11-21T10:30:05+00:00",
            "version": 1,
            **HEADER,
            "call_id": "c-1",
            "transcripts": True,
        }
    ]
    observe_a_call(journal, clock)
    assert lines(journal.path)[1:] == [
        {"event": "model_connected", "at_s": 0.432, "session_id": "sess_1"},
        {
            "event": "transcript",
            "at_s": 1.5,
            "role": "assistant",
            "item_id": "item_a",
            "text": "Hello, how can I help?",
        },
        {"event": "barge_in", "at_s": 2.0, "latency_ms": 250, "heard_ms": {"item_a": 800}},
        {
            "event": "transcript",
            "at_s": 2.5,
            "role": "user",
            "item_id": "item_u",
            "text": "My PIN is 1234",
        },
        {"event": "dtmf", "at_s": 2.75, "digit": "1"},
        {"event": "dtmf", "at_s": 2.8, "digit": "#"},
        {"event": "turn_latency", "at_s": 3.5, "latency_ms": 610},
        {"event": "tool_call", "at_s": 3.5, "entry": TOOL_ENTRY},
        {
            "event": "usage",
            "at_s": 3.5,
            "usage": {"total_tokens": 10, "input_token_details": {"audio_tokens": 4}},
        },
        {
            "event": "usage",
            "at_s": 3.5,
            "usage": {"total_tokens": 5, "input_token_details": {"audio_tokens": 1}},
        },
    ]
    assert journal.failures == 0
    journal.close()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_finish_appends_the_record_to_the_day_file_then_ends_the_journal(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    written = journal.finish(a_record())
    assert written == {**a_record(), "journal": "journal/2026-11-21/c-1.jsonl"}
    assert read_records(record_path(tmp_path, START)) == [written]
    *_, ended = lines(journal.path)
    assert list(ended) == ["at", "record", "event"]
    assert ended["event"] == "call.ended"
    assert ended["record"] == written
    assert journal.path.read_bytes().endswith(b'"event":"call.ended"}\n')
    assert journal.closed
    # A late observation is counted, never raised, and never written to a closed descriptor.
    journal(DigitPressed(9.0, "5"))
    assert journal.failures == 1
    assert lines(journal.path)[-1] == ended
    assert recover_unfinished(tmp_path) == []


def test_a_journal_never_overwrites_a_file_the_name_clashes_get_a_number(tmp_path: Path) -> None:
    first = open_journal(tmp_path)
    first(DigitPressed(1.0, "7"))
    second = open_journal(tmp_path)
    third = open_journal(tmp_path)
    assert first.path.name == "c-1.jsonl"
    assert second.path.name == "c-1.2.jsonl"
    assert third.path.name == "c-1.3.jsonl"
    assert second.recording_path.name == "c-1.2.wav"
    assert [line["event"] for line in lines(first.path)] == ["call.started", "dtmf"]
    for journal in (first, second, third):
        journal.close()


def test_names_are_made_safe_for_a_file_system(tmp_path: Path) -> None:
    journal = open_journal(tmp_path, call_id="../a b@host/x")
    assert journal.path.parent == tmp_path / "journal" / "2026-11-21"
    assert journal.path.name == "___a_b_host_x.jsonl"
    assert lines(journal.path)[0]["call_id"] == "../a b@host/x"
    journal.close()


def test_create_exclusive_leaves_an_existing_file_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "c-1.wav").write_bytes(b"precious")
    fd, path = create_exclusive(tmp_path, "c-1", ".wav")
    os.close(fd)
    assert path == tmp_path / "c-1.2.wav"
    assert (tmp_path / "c-1.wav").read_bytes() == b"precious"


def test_without_transcripts_the_journal_and_record_leave_out_what_was_said(
    tmp_path: Path,
) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, transcripts=False, clock=clock)
    observe_a_call(journal, clock)
    written = journal.finish(a_record())
    text = journal.path.read_text() + record_path(tmp_path, START).read_text()
    for secret in ("Hello, how can I help?", "My PIN is 1234", "12345", "balance", '"#"'):
        assert secret not in text
    events = lines(journal.path)
    assert events[0]["transcripts"] is False
    assert events[2] == {
        "event": "transcript",
        "at_s": 1.5,
        "role": "assistant",
        "item_id": "item_a",
    }
    assert events[5] == {"event": "dtmf", "at_s": 2.75}
    assert events[8]["entry"] == {
        k: v for k, v in TOOL_ENTRY.items() if k not in ("arguments", "output")
    }
    assert "transcript" not in written
    assert "dtmf" not in written
    assert written["tool_calls"] == [events[8]["entry"]]
    assert read_records(record_path(tmp_path, START)) == [written]


def test_redact_record_copies_and_leaves_the_original_alone() -> None:
    record = a_record()
    redacted = redact_record(record)
    assert set(redacted) == {"call_id", "end_reason", "tool_calls", "started_at"}
    assert record == a_record()


def test_a_failing_observation_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = CallJournal.open(
        tmp_path,
        call_id="c-1",
        started_at=START,
        header={},
        transcripts=True,
        log=logging.getLogger("bridge.test"),
    )
    journal("not an observation")  # type: ignore[arg-type]
    journal(42)  # type: ignore[arg-type]
    assert journal.failures == 2
    assert [r.getMessage() for r in caplog.records] == [
        "could not write to the call journal; the call goes on"
    ]
    assert len(lines(journal.path)) == 1
    journal.close()


def crash(journal: CallJournal, torn: bytes = b"") -> None:
    """What a SIGKILL leaves: the lines written so far, maybe half a line, no end."""
    journal.close()
    with open(journal.path, "ab") as file:
        file.write(torn)


def test_recovery_rebuilds_the_record_of_a_call_cut_off_by_a_crash(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, clock=clock)
    observe_a_call(journal, clock)
    crash(journal, torn=b'{"event":"transcript","at_s":4.1,"role":"assi')

    (record,) = recover_unfinished(tmp_path)
    assert record == {
        "call_id": "c-1",
        **HEADER,
        "model_session_id": "sess_1",
        "duration_s": 3.5,
        "end_reason": "daemon_crashed",
        "end_detail": (
            "the daemon stopped before the call ended; this record was rebuilt from its journal"
        ),
        "transcript": [
            {
                "at_s": 1.5,
                "role": "assistant",
                "item_id": "item_a",
                "text": "Hello, how can I help?",
                "heard_ms": 800,
            },
            {"at_s": 2.5, "role": "user", "item_id": "item_u", "text": "My PIN is 1234"},
        ],
        "dtmf": "1#",
        "usage": {"total_tokens": 15, "input_token_details": {"audio_tokens": 5}},
        "tool_calls": [TOOL_ENTRY],
        "latency": {"model_connect_ms": 432, "turns_ms": [610], "barge_ins_ms": [250]},
        "started_at": "2026-11-21T10:30:05+00:00",
        "journal": "journal/2026-11-21/c-1.jsonl",
        "recovered": True,
        "journal_lines_unreadable": 1,
    }
    assert read_records(record_path(tmp_path, START)) == [record]
    # The torn line stays as it was; the end goes on a line of its own.
    text = journal.path.read_text().splitlines()
    assert text[-2] == '{"event":"transcript","at_s":4.1,"role":"assi'
    ended = json.loads(text[-1])
    assert ended["event"] == "call.ended"
    assert ended["recovered"] is True
    assert ended["record"] == record


def test_recovery_is_done_once(tmp_path: Path) -> None:
    crash(open_journal(tmp_path))
    assert len(recover_unfinished(tmp_path)) == 1
    assert recover_unfinished(tmp_path) == []
    assert len(read_records(record_path(tmp_path, START))) == 1


def test_recovery_without_transcripts_keeps_them_out(tmp_path: Path) -> None:
    clock = Clock()
    journal = open_journal(tmp_path, transcripts=False, clock=clock)
    observe_a_call(journal, clock)
    crash(journal)
    (record,) = recover_unfinished(tmp_path)
    assert "transcript" not in record
    assert "dtmf" not in record
    assert record["tool_calls"] == [
        {k: v for k, v in TOOL_ENTRY.items() if k not in ("arguments", "output")}
    ]
    assert "My PIN" not in record_path(tmp_path, START).read_text()


def test_a_record_already_in_the_day_file_is_not_written_twice(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    # The crash came after the record reached the day file and before the journal's end.
    append_record(tmp_path, a_record(journal=journal.relative_path), START)
    crash(journal)
    assert recover_unfinished(tmp_path) == []
    assert read_records(record_path(tmp_path, START)) == [a_record(journal=journal.relative_path)]
    assert lines(journal.path)[-1]["event"] == "call.ended"
    assert recover_unfinished(tmp_path) == []


def test_the_journal_of_a_live_call_is_left_alone(tmp_path: Path) -> None:
    live = open_journal(tmp_path, call_id="c-live")
    crash(open_journal(tmp_path, call_id="c-dead"))
    assert [record["call_id"] for record in recover_unfinished(tmp_path)] == ["c-dead"]
    live.finish(a_record(call_id="c-live"))
    assert [r["call_id"] for r in read_records(record_path(tmp_path, START))] == [
        "c-dead",
        "c-live",
    ]


def test_a_journal_without_a_readable_first_line_is_still_recovered(tmp_path: Path) -> None:
    folder = tmp_path / "journal" / "2026-11-20"
    folder.mkdir(parents=True)
    (folder / "c-9.jsonl").write_bytes(b'{"event":"call.sta')
    when = dt.datetime(2026, 11, 20, 23, 0, tzinfo=dt.UTC).timestamp()
    os.utime(folder / "c-9.jsonl", (when, when))
    (record,) = recover_unfinished(tmp_path)
    assert record["call_id"] == "c-9"
    assert record["started_at"] == "2026-11-20T23:00:00+00:00"
    assert record["journal_lines_unreadable"] == 1
    assert read_records(tmp_path / "calls-2026-11-20.jsonl") == [record]


def test_recovery_without_journals_finds_nothing(tmp_path: Path) -> None:
    assert recover_unfinished(tmp_path) == []
    assert recover_unfinished(tmp_path / "missing") == []


def test_a_journal_that_cannot_be_recovered_is_logged_and_the_others_still_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    day_before = START - dt.timedelta(days=1)
    crash(
        CallJournal.open(
            tmp_path, call_id="c-a", started_at=day_before, header={}, transcripts=True
        )
    )
    crash(open_journal(tmp_path, call_id="c-b"))
    # The first call's day file cannot be written: a folder is in its way.
    record_path(tmp_path, day_before).mkdir()
    assert [record["call_id"] for record in recover_unfinished(tmp_path)] == ["c-b"]
    assert [r.getMessage() for r in caplog.records] == ["could not recover the call journal"]
    record_path(tmp_path, day_before).rmdir()
    assert [record["call_id"] for record in recover_unfinished(tmp_path)] == ["c-a"]
    assert recover_unfinished(tmp_path) == []
