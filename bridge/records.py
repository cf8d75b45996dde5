"""Per-call records: a journal written as each call goes, and one line per call in a day file.

Layout under the records directory (``[records] directory``)::

    calls-YYYY-MM-DD.jsonl              one JSON record per finished call, in the file of the
                                        day (UTC) the call started; read by operators and tests
    journal/YYYY-MM-DD/<call_id>.jsonl  one journal per call: what happened, line by line
    journal/YYYY-MM-DD/<call_id>.wav    the call's stereo recording, when ``records.audio`` is on
                                        (bridge.recording)

Nothing is ever overwritten. Day files are only appended to (O_APPEND), so one call's line cannot
interleave with another's. Journals and recordings are created with O_CREAT|O_EXCL; should the
name be taken (a call id seen before), ``.2``, ``.3``, ... is added before the extension.

A journal holds one JSON object per line. The first is written and fsynced before the call
starts, so the call's existence survives a crash; then one line per observation of the call's
control loop (bridge.call.observations), each written with a single ``os.write`` and not
fsynced: the page cache outlives the process, so after a crash of the daemon (even SIGKILL)
every line written so far is there; only a crash of the machine can lose the last of them. The
last line is written and fsynced when the call ends::

    {"event":"call.started","at":ISO-8601,"version":1,"call_id":..,"transcripts":bool,..header}
    {"event":"model_connected","at_s":s,"session_id":..}
    {"event":"transcript","at_s":s,"role":"user"|"assistant","item_id":..,"text":..}
    {"event":"dtmf","at_s":s,"digit":"5"}
    {"event":"tool_call","at_s":s,"entry":{..the call record's tool_calls entry..}}
    {"event":"turn_latency","at_s":s,"latency_ms":ms}
    {"event":"barge_in","at_s":s,"latency_ms":ms,"heard_ms":{item_id: ms}}
    {"event":"usage","at_s":s,"usage":{..one response's usage..}}
    {"at":ISO-8601,"record":{..the call record..},"event":"call.ended"}

``at_s`` is seconds since the call started: the call's own clock for transcripts, digits and the
model connect time, the journal's (monotonic, from its opening) for the rest. With
``transcripts = false`` transcript text, digits, and tool arguments and outputs are left out of
the journal exactly as they are left out of the record. ``call.ended`` carries ``"event"`` last so
that its last bytes tell a finished journal from one a crash left behind; a recovered journal's
``call.ended`` also has ``"recovered": true``.

When a call ends, :meth:`CallJournal.finish` first appends the record to the day file (with
``"journal"``, the journal's path relative to the records directory), then ends the journal. At
start-up :func:`recover_unfinished` finds journals without ``call.ended``, rebuilds their records
and does the same for them; a record already in the day file (the crash fell between the two
steps) is not written twice. A rebuilt record has the usual keys, except ``statistics`` (the
counters died with the daemon), with end reason ``daemon_crashed``, ``duration_s`` up to the
journal's last line, ``"recovered": true``, and ``journal_lines_unreadable`` when a line (a torn
last one) could not be read.

``<call_id>`` in file names keeps letters, digits, ``-`` and ``_``; anything else becomes ``_``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge.call.events import EndReason
from bridge.call.observations import (
    BargeIn,
    DigitPressed,
    ModelConnected,
    Observation,
    ToolCallEnded,
    TranscriptAdded,
    TurnLatency,
    UsageReported,
    add_usage,
)

JOURNAL_FOLDER = "journal"
JOURNAL_SUFFIX = ".jsonl"
JOURNAL_VERSION = 1
FILE_MODE = 0o640
FOLDER_MODE = 0o750
RECOVERED_END_REASON = EndReason.DAEMON_CRASHED.value
RECOVERED_END_DETAIL = (
    "the daemon stopped before the call ended; this record was rebuilt from its journal"
)
_ENDED_TAIL = b'"event":"call.ended"}\n'
_MAX_NAME_CLASHES = 1000
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
# Keys of the call.started line that the journal sets itself.
_STARTED_KEYS = frozenset({"event", "at", "version", "call_id", "transcripts"})

Logger = logging.Logger | logging.LoggerAdapter[Any]


def record_path(directory: str | os.PathLike[str], when: dt.datetime) -> Path:
    """The day's record file under `directory` for a call that started at `when` (UTC)."""
    return Path(directory) / f"calls-{when.astimezone(dt.UTC):%Y-%m-%d}.jsonl"


def append_record(
    directory: str | os.PathLike[str], record: Mapping[str, Any], when: dt.datetime
) -> Path:
    """Append `record` as one line to the day's file and fsync it; returns the file's path."""
    path = record_path(directory, when)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        _write_all(fd, _json_line(record))
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of one file (tests and tools)."""
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def redact_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `record` for ``transcripts = false``: no transcript, no keypad digits (PINs,
    card numbers), nothing tools were told or answered."""
    redacted = {key: value for key, value in record.items() if key not in ("transcript", "dtmf")}
    if "tool_calls" in record:
        redacted["tool_calls"] = [_redact_tool_call(entry) for entry in record["tool_calls"]]
    return redacted


def journal_folder(directory: str | os.PathLike[str], when: dt.datetime) -> Path:
    """The folder of the journals (and recordings) of calls that started at `when`'s day (UTC)."""
    return Path(directory) / JOURNAL_FOLDER / f"{when.astimezone(dt.UTC):%Y-%m-%d}"


def create_exclusive(folder: Path, name: str, suffix: str) -> tuple[int, Path]:
    """Create a new file `folder`/`name``suffix` (mode 0640), never an existing one: on a clash
    ``.2``, ``.3``, ... goes before the suffix. Returns the open descriptor (write-only) and the
    path; the name is reduced to letters, digits, ``-`` and ``_``."""
    folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    stem = _UNSAFE_NAME.sub("_", name)[:100] or "call"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for attempt in range(1, _MAX_NAME_CLASHES + 1):
        path = folder / (f"{stem}{suffix}" if attempt == 1 else f"{stem}.{attempt}{suffix}")
        try:
            return os.open(path, flags, FILE_MODE), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{_MAX_NAME_CLASHES} files named {stem}*{suffix} in {folder}")


class CallJournal:
    """The journal of one call; the call's observer (see the module docstring for its lines).

    Open it with :meth:`open` before the call starts and end it with :meth:`finish`; both do
    blocking I/O (fsync): run them in a worker thread. Calling the journal with an observation
    only writes to the page cache, and never raises: a failed line is counted in `failures`
    (and the first failure logged when a logger was given), and the call goes on.

    While open, the journal holds an exclusive ``flock`` on its file, so that a start-up recovery
    (another daemon on the same folder) leaves the journal of a live call alone.
    """

    def __init__(
        self,
        fd: int,
        path: Path,
        *,
        directory: Path,
        started_at: dt.datetime,
        transcripts: bool,
        clock: Callable[[], float],
        log: Logger | None,
    ) -> None:
        self.path = path
        self.directory = directory
        self.started_at = started_at
        self.transcripts = transcripts
        self.failures = 0
        self._fd: int | None = fd
        self._clock = clock
        self._opened = clock()
        self._log = log

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        call_id: str,
        started_at: dt.datetime,
        header: Mapping[str, Any],
        transcripts: bool,
        clock: Callable[[], float] = time.monotonic,
        log: Logger | None = None,
    ) -> CallJournal:
        """Create the call's journal under `directory` (the records directory) and write and
        fsync its first line: ``call.started`` with `header` (the call's ids).

        `started_at` must be aware; it chooses the journal's folder and the day file the record
        goes to. Raises OSError when the journal cannot be created."""
        folder = journal_folder(directory, started_at)
        fd, path = create_exclusive(folder, call_id, JOURNAL_SUFFIX)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            first = {
                "event": "call.started",
                "at": started_at.isoformat(),
                "version": JOURNAL_VERSION,
                "call_id": call_id,
                **{key: value for key, value in header.items() if key not in _STARTED_KEYS},
                "transcripts": transcripts,
            }
            _write_all(fd, _json_line(first))
            os.fsync(fd)
            _fsync_folder(folder)
        except BaseException:
            os.close(fd)
            raise
        return cls(
            fd,
            path,
            directory=Path(directory),
            started_at=started_at,
            transcripts=transcripts,
            clock=clock,
            log=log,
        )

    @property
    def recording_path(self) -> Path:
        """Where the call's recording goes: next to the journal, with the same name, ``.wav``."""
        return self.path.with_suffix(".wav")

    @property
    def relative_path(self) -> str:
        """The journal's path relative to the records directory (the record's ``journal``)."""
        return self.path.relative_to(self.directory).as_posix()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __call__(self, observation: Observation) -> None:
        """Write one line for `observation` (the call's CallObserver); never raises."""
        try:
            line = self._line(observation)
            if self._fd is None:
                raise ValueError("the journal is closed")
            _write_all(self._fd, _json_line(line))
        except Exception as error:
            self.failures += 1
            if self.failures == 1 and self._log is not None:
                self._log.error(
                    "could not write to the call journal; the call goes on",
                    extra={"journal": str(self.path), "error": str(error)},
                )

    def finish(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The call ended: append `record` to the day file (fsynced), then write the journal's
        ``call.ended`` line, fsync and close it. Returns the record as written (redacted when
        transcripts are off, with ``journal``). Raises OSError; the journal is closed anyway."""
        written = dict(record) if self.transcripts else redact_record(record)
        written["journal"] = self.relative_path
        try:
            # Day file first: a crash between the two steps leaves a journal without its end,
            # which recovery finds already recorded, rather than a record that is nowhere.
            append_record(self.directory, written, self.started_at)
            if self._fd is None:
                raise ValueError("the journal is closed")
            ended = {"at": _now_iso(), "record": written, "event": "call.ended"}
            _write_all(self._fd, _json_line(ended))
            os.fsync(self._fd)
        finally:
            self.close()
        return written

    def close(self) -> None:
        """Close the journal without ending it (recovery will end it); finish() calls this."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _line(self, observation: Observation) -> dict[str, Any]:
        private = not self.transcripts
        match observation:
            case TranscriptAdded(at_s=at_s, role=role, item_id=item_id, text=text):
                line = {"event": "transcript", "at_s": at_s, "role": role, "item_id": item_id}
                if not private:
                    line["text"] = text
                return line
            case DigitPressed(at_s=at_s, digit=digit):
                return {"event": "dtmf", "at_s": at_s} | ({} if private else {"digit": digit})
            case ModelConnected(seconds=seconds, session_id=session_id):
                return {
                    "event": "model_connected",
                    "at_s": round(seconds, 3),
                    "session_id": session_id,
                }
            case ToolCallEnded(entry=entry):
                entry = _redact_tool_call(entry) if private else dict(entry)
                return {"event": "tool_call", "at_s": self._at_s(), "entry": entry}
            case TurnLatency(seconds=seconds):
                return {"event": "turn_latency", "at_s": self._at_s(), "latency_ms": _ms(seconds)}
            case BargeIn(seconds=seconds, heard_ms=heard_ms):
                return {
                    "event": "barge_in",
                    "at_s": self._at_s(),
                    "latency_ms": _ms(seconds),
                    "heard_ms": dict(heard_ms),
                }
            case UsageReported(usage=usage):
                return {"event": "usage", "at_s": self._at_s(), "usage": dict(usage)}
        raise TypeError(f"not an observation: {type(observation).__name__}")

    def _at_s(self) -> float:
        return round(self._clock() - self._opened, 3)


def recover_unfinished(
    directory: str | os.PathLike[str], *, log: Logger | None = None
) -> list[dict[str, Any]]:
    """Records for the calls a crash left unfinished: for every journal under `directory` (the
    records directory) without ``call.ended``, rebuild the call's record from its lines (a torn
    or unreadable line is skipped), append it to the day file, and end the journal, so that it
    is never recovered twice. Journals held open by a live process are left alone.

    Run it at start-up, in a worker thread: it reads the last bytes of every journal. Returns
    the records it wrote to day files, in journal path order (a record the day file already had
    is not written again). A journal that cannot be read or ended is logged to `log` (default
    the ``bridge.records`` logger) and skipped; the others are still recovered."""
    log = log or logging.getLogger("bridge.records")
    root = Path(directory)
    recovered = []
    for path in sorted((root / JOURNAL_FOLDER).glob(f"*/*{JOURNAL_SUFFIX}")):
        try:
            if not path.is_file() or _is_finished(path):
                continue
            record = _recover(root, path)
        except OSError as error:
            log.error(
                "could not recover the call journal",
                extra={"journal": str(path), "error": str(error)},
            )
            continue
        if record is not None:
            recovered.append(record)
    return recovered


def _recover(root: Path, path: Path) -> dict[str, Any] | None:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a live call's journal
        content = path.read_bytes()
        if content.endswith(_ENDED_TAIL):
            return None  # ended while we looked
        relative = path.relative_to(root).as_posix()
        record = rebuild_record(content, journal=relative, fallback_started_at=_mtime(path))
        started_at = dt.datetime.fromisoformat(record["started_at"])
        written = not _already_recorded(record_path(root, started_at), relative)
        if written:
            append_record(root, record, started_at)
        # A torn last line must not swallow the end line.
        ended = {"at": _now_iso(), "recovered": True, "record": record, "event": "call.ended"}
        _write_all(
            fd, (b"\n" if content and not content.endswith(b"\n") else b"") + _json_line(ended)
        )
        os.fsync(fd)
        return record if written else None
    finally:
        os.close(fd)


def rebuild_record(
    content: bytes, *, journal: str, fallback_started_at: dt.datetime
) -> dict[str, Any]:
    """The call record that a journal's lines (`content`) tell, for a call that never ended.

    Shaped like a finished call's record, with end reason ``daemon_crashed``, ``duration_s`` up
    to the last line, ``"recovered": true``, and no ``statistics`` (the counters died with the
    daemon). `fallback_started_at` is used when the first line is unreadable."""
    lines, unreadable = _parse_lines(content)
    started: dict[str, Any] = {}
    if lines and lines[0].get("event") == "call.started":
        started = lines[0]
    header = {"call_id": started.get("call_id", Path(journal).stem)} | {
        key: value for key, value in started.items() if key not in _STARTED_KEYS
    }
    transcripts = started.get("transcripts", True) is not False
    started_at = _started_at(started.get("at"), fallback_started_at)

    transcript: list[dict[str, Any]] = []
    heard: dict[str, int] = {}
    digits = ""
    usage: dict[str, Any] = {}
    tool_calls: list[dict[str, Any]] = []
    latency: dict[str, Any] = {"model_connect_ms": None, "turns_ms": [], "barge_ins_ms": []}
    session_id = None
    last_s = 0.0
    for line in lines:
        at_s = line.get("at_s")
        if isinstance(at_s, int | float) and not isinstance(at_s, bool):
            last_s = max(last_s, float(at_s))
        match line.get("event"):
            case "transcript":
                transcript.append(
                    {key: line[key] for key in ("at_s", "role", "item_id", "text") if key in line}
                )
            case "dtmf":
                digits += str(line.get("digit", ""))
            case "model_connected":
                session_id = line.get("session_id")
                if isinstance(at_s, int | float):
                    latency["model_connect_ms"] = round(at_s * 1000)
            case "tool_call" if isinstance(line.get("entry"), dict):
                tool_calls.append(line["entry"])
            case "turn_latency":
                latency["turns_ms"].append(line.get("latency_ms"))
            case "barge_in":
                latency["barge_ins_ms"].append(line.get("latency_ms"))
                if isinstance(line.get("heard_ms"), dict):
                    heard.update(line["heard_ms"])
            case "usage" if isinstance(line.get("usage"), dict):
                add_usage(usage, line["usage"])
    for entry in transcript:
        if entry.get("item_id") in heard:
            entry["heard_ms"] = heard[entry["item_id"]]

    record: dict[str, Any] = {
        **header,
        "model_session_id": session_id,
        "duration_s": round(last_s, 3),
        "end_reason": RECOVERED_END_REASON,
        "end_detail": RECOVERED_END_DETAIL,
    }
    if transcripts:
        record["transcript"] = transcript
        record["dtmf"] = digits
    record |= {
        "usage": usage,
        "tool_calls": tool_calls,
        "latency": latency,
        "started_at": started_at.isoformat(),
        "journal": journal,
        "recovered": True,
    }
    if unreadable:
        record["journal_lines_unreadable"] = unreadable
    return record


def _parse_lines(content: bytes) -> tuple[list[dict[str, Any]], int]:
    """The journal's readable lines, and how many were not (a crash can tear the last one)."""
    lines: list[dict[str, Any]] = []
    unreadable = 0
    for raw in content.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(line, dict):
            lines.append(line)
        else:
            unreadable += 1
    return lines, unreadable


def _is_finished(path: Path) -> bool:
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size < len(_ENDED_TAIL):
            return False
        file.seek(size - len(_ENDED_TAIL))
        return file.read() == _ENDED_TAIL


def _already_recorded(day_file: Path, journal: str) -> bool:
    """Whether the day file holds a record of `journal` (written just before a crash)."""
    try:
        content = day_file.read_bytes()
    except FileNotFoundError:
        return False
    if journal.encode() not in content:
        return False
    lines, _ = _parse_lines(content)
    return any(line.get("journal") == journal for line in lines)


def _started_at(value: Any, fallback: dt.datetime) -> dt.datetime:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(value)
            if when.tzinfo is not None:
                return when
    return fallback


def _mtime(path: Path) -> dt.datetime:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)


def _redact_tool_call(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in ("arguments", "output")}


def _json_line(value: Mapping[str, Any]) -> bytes:
    text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return (text + "\n").encode()


def _write_all(fd: int, data: bytes) -> None:
    """Write `data` at once (one write for a regular file unless the disk is full)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_folder(folder: Path) -> None:
    """Make a new file's name durable too, not only its content."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
