"""The `bridge` command: check-config, run, and the README's demo (a whole loopback call)."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

from bridge.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_check_config_accepts_the_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "config" / "bridge.toml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_names_every_bad_key_and_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[session]\nvoice = "nova"\n[session.turn_detection]\ntreshold = 0.5\n')
    assert main(["check-config", str(bad), "--set", "call.max_duration_s=-1"]) == 78
    out = capsys.readouterr().out
    assert "@ $.session.voice" in out
    assert "did you mean 'threshold'" in out
    assert "@ $.session.turn_detection.treshold" in out
    assert "@ $.call.max_duration_s" in out


def test_run_refuses_a_config_without_its_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BRIDGE_MEDIA_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-c", str(ROOT / "config" / "bridge.toml")]) == 78
    assert "BRIDGE_MEDIA_SECRET" in capsys.readouterr().err


def test_demo_runs_a_whole_call_and_writes_what_the_caller_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "reply.wav", "--codec", "pcma"]) == 0
    out = capsys.readouterr().out
    assert "caller heard:     1.50 s of model audio" in out
    with wave.open(str(tmp_path / "reply.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.getnframes() > 8000 * 3
    (records,) = (tmp_path / "records").glob("calls-*.jsonl")
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert record["codec"] == "PCMA"
    assert record["end_reason"] == "caller_hangup"
