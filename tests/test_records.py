from __future__ import annotations

import datetime as dt
import io
import json
import logging
import wave
from pathlib import Path

from bridge import audiofiles
from bridge.call.events import Codec
from bridge.logs import JsonFormatter, LogfmtFormatter, call_logger, setup_logging
from bridge.media import g711
from bridge.records import append_record, read_records, record_path


def test_records_are_appended_one_line_each_in_the_start_day_file(tmp_path: Path) -> None:
    start = dt.datetime(2026, 11, 21, 23, 59, tzinfo=dt.UTC)
    first = append_record(tmp_path, {"call_id": "a", "text": "é\n"}, start)
    second = append_record(tmp_path, {"call_id": "b"}, start + dt.timedelta(minutes=2))
    assert first == record_path(tmp_path, start) == tmp_path / "calls-2026-11-21.jsonl"
    assert second.name == "calls-2026-11-22.jsonl"
    append_record(tmp_path, {"call_id": "c"}, start)
    assert [r["call_id"] for r in read_records(first)] == ["a", "c"]
    assert read_records(first)[0]["text"] == "é\n"
    assert len(first.read_text().splitlines()) == 2


def test_log_lines_carry_the_call_id_and_extra_fields() -> None:
    stream = io.StringIO()
    setup_logging(level="debug", fmt="logfmt", stream=stream)
    call_logger("c-1").info("call ended", extra={"end_reason": "max_duration", "detail": "a b"})
    assert stream.getvalue() == (
        'level=info logger=bridge.call msg="call ended" call_id=c-1 '
        'end_reason=max_duration detail="a b"\n'
    )
    record = logging.makeLogRecord({"name": "bridge", "msg": "x", "levelname": "INFO", "k": 1})
    assert json.loads(JsonFormatter().format(record)) == {
        "level": "info",
        "logger": "bridge",
        "msg": "x",
        "k": 1,
    }
    assert LogfmtFormatter().format(record) == "level=info logger=bridge msg=x k=1"


def test_wav_files_round_trip(tmp_path: Path) -> None:
    audio = bytes(range(256)) * 10
    path = tmp_path / "heard.wav"
    audiofiles.write_wav(path, Codec.PCMU, audio)
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (8000, 2, 1)
    expected = g711.encode(Codec.PCMU, g711.decode(Codec.PCMU, audio))
    assert audiofiles.read_audio(path, Codec.PCMU) == expected
    raw = tmp_path / "caller.alaw"
    raw.write_bytes(b"\xd5" * 16)
    assert audiofiles.read_audio(raw, Codec.PCMA) == b"\xd5" * 16
