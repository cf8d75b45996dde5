"""Per-call records: one JSON object a line, appended to a file per day, synced to disk.

Files are only ever appended to (O_APPEND), so records are never overwritten and a record written
by one call cannot interleave with another's line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def record_path(directory: str | os.PathLike[str], when: dt.datetime) -> Path:
    """The day's record file under `directory` for a call that started at `when` (UTC)."""
    return Path(directory) / f"calls-{when.astimezone(dt.UTC):%Y-%m-%d}.jsonl"


def append_record(
    directory: str | os.PathLike[str], record: Mapping[str, Any], when: dt.datetime
) -> Path:
    """Append `record` as one line to the day's file and fsync it; returns the file's path."""
    path = record_path(directory, when)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        data = memoryview(line.encode())
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of one file (tests and tools)."""
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
