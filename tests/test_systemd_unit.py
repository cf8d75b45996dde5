"""systemd/bridge.service: `systemd-analyze verify` prints nothing, and the unit says what the
daemon needs (systemd.service(5), systemd.exec(5) "Credentials", systemd.kill(5));
config/systemd.toml, the config that goes with it, is valid and reads its secrets from the unit's
credentials."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import EX_CONFIG
from bridge.config import LogFormat, Provider, ServiceConfig, load_config
from bridge.credentials import SecretSource, read_secret

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "bridge.service"
SYSTEMD_CONFIG = ROOT / "config" / "systemd.toml"
INSTALLED_EXECUTABLE = "/opt/bridge/venv/bin/bridge"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found (Debian package `systemd`; .ci/run installs it)",
)


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value assigned to it, in order (comments skipped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        # The parser below has no line continuations; the unit must not need them.
        assert not stripped.endswith("\\"), line
        if stripped.startswith("["):
            current = sections.setdefault(stripped.strip("[]"), {})
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, _, value = stripped.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICE = unit_settings(UNIT.read_text())["Service"]


def single(key: str) -> str:
    values = SERVICE.get(key, [])
    assert len(values) == 1, f"{key}= is set {len(values)} times: {values}"
    return values[0]


TIMESPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def timespan_seconds(text: str) -> float:
    """systemd.time(7) spans as the unit writes them: "45", "45s", "1min 30s"."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), text
    return sum(float(number) * TIMESPAN_UNITS[unit] for number, unit in parts)


# --------------------------------------------------------------------------- systemd-analyze


def bridge_executable() -> str:
    """The `bridge` console script of the environment running the tests."""
    beside_python = Path(sys.executable).with_name("bridge")
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("bridge")
    if on_path is None:
        pytest.fail("no `bridge` script: install the package (pip install -e '.[test]') first")
    return on_path


def installed_copy(folder: Path, text: str) -> Path:
    """The unit as installed here: verify checks that ExecStart's program exists, and
    /opt/bridge/venv does not on a test machine, so it points at this environment's script."""
    lines = text.splitlines(keepends=True)
    exec_start = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    assert len(exec_start) == 1
    (index,) = exec_start
    assert lines[index].startswith(f"ExecStart={INSTALLED_EXECUTABLE} ")
    lines[index] = lines[index].replace(INSTALLED_EXECUTABLE, f'"{bridge_executable()}"', 1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bridge.service"
    path.write_text("".join(lines))
    return path


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    # Only this unit's own warnings decide the exit status (--recursive-errors=no); no man(1)
    # lookups or generators, whose results depend on the machine. The environment's own
    # SYSTEMD_* settings (log level, unit path) could hide or add lines, so they are dropped.
    env = {key: value for key, value in os.environ.items() if not key.startswith("SYSTEMD_")}
    env.update(SYSTEMD_LOG_LEVEL="info", SYSTEMD_LOG_COLOR="0", LC_ALL="C")
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", "--recursive-errors=no", unit],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@needs_systemd_analyze
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    result = verify(installed_copy(tmp_path, UNIT.read_text()))
    assert (result.stdout + result.stderr, result.returncode) == ("", 0)


@needs_systemd_analyze
def test_systemd_analyze_verify_reports_a_misspelt_key(tmp_path: Path) -> None:
    # The check above can fail: verify exits 0 on unknown keys by default but does print them.
    text = UNIT.read_text()
    assert "\nProtectClock=yes\n" in text
    result = verify(installed_copy(tmp_path, text.replace("\nProtectClock=", "\nProtectClok=")))
    assert "Unknown key 'ProtectClok' in section [Service]" in result.stdout + result.stderr
    assert result.returncode != 0


@needs_systemd_analyze
def test_systemd_analyze_verify_reports_a_missing_program(tmp_path: Path) -> None:
    text = UNIT.read_text().replace(INSTALLED_EXECUTABLE, str(tmp_path / "no-such-bridge"))
    unit = tmp_path / "unit" / "bridge.service"
    unit.parent.mkdir()
    unit.write_text(text)
    result = verify(unit)
    assert "no-such-bridge is not executable" in result.stdout + result.stderr


# ----------------------------------------------------------------------------- unit facts


def test_service_reports_readiness_and_pings_the_watchdog_from_the_main_process() -> None:
    assert single("Type") == "notify"
    assert single("NotifyAccess") == "main"
    # WATCHDOG=1 goes out every half interval; a few seconds leave room for a busy loop.
    assert 10.0 <= timespan_seconds(single("WatchdogSec")) <= 60.0


def test_exec_start_runs_the_daemon_on_the_etc_config() -> None:
    assert single("ExecStart") == f"{INSTALLED_EXECUTABLE} run -c /etc/bridge/bridge.toml"


def test_reload_sends_sighup_to_the_main_process() -> None:
    assert re.fullmatch(r"/bin/kill (-s HUP|-HUP|--signal HUP) \$MAINPID", single("ExecReload"))


def test_restarts_on_failure_but_not_on_a_config_error() -> None:
    assert single("Restart") == "on-failure"
    assert single("RestartPreventExitStatus").split() == [str(EX_CONFIG)]
    assert EX_CONFIG == 78


def test_stop_timeout_outlasts_the_drain() -> None:
    # Imported here: bridge.app pulls in the whole daemon, which the other tests do not need.
    from bridge.app import SIP_SHUTDOWN_LINGER_S

    timeout = timespan_seconds(single("TimeoutStopSec"))
    default_grace = ServiceConfig().shutdown_grace_s
    assert timeout >= default_grace + SIP_SHUTDOWN_LINGER_S + 5.0
    assert timeout >= load_config(SYSTEMD_CONFIG).service.shutdown_grace_s + SIP_SHUTDOWN_LINGER_S
    # SIGTERM to the main process only: the drain, not systemd, decides when calls end.
    assert single("KillMode") == "mixed"
    assert "KillSignal" not in SERVICE


def test_only_capability_is_binding_low_ports() -> None:
    assert single("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert single("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    # In a user namespace the capability would not reach the host's network namespace.
    assert "PrivateUsers" not in SERVICE


HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "UMask": "0027",
}


@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_hardening(key: str, value: str) -> None:
    assert single(key) == value


def test_descriptor_limit_covers_500_calls() -> None:
    # Per call at most: RTP + RTCP (or the caller's websocket), the model's websocket, the
    # record file, a WAV recording and a tool connection.
    assert int(single("LimitNOFILE")) >= 500 * 6 + 1024


def test_directories() -> None:
    assert single("StateDirectory") == "bridge"
    assert single("LogsDirectory") == "bridge"
    assert single("ConfigurationDirectory") == "bridge"
    assert single("WorkingDirectory") == "%S/bridge"
    assert single("EnvironmentFile") == "-/etc/bridge/env"


# ------------------------------------------------------------------------ config/systemd.toml


def test_systemd_config_is_valid_and_uses_the_units_folders() -> None:
    config = load_config(SYSTEMD_CONFIG)
    assert config.records.directory == f"/var/lib/{single('StateDirectory')}/records"
    assert config.log.format is LogFormat.JSON
    assert config.model.provider is Provider.OPENAI
    assert (config.metrics.enabled, config.metrics.host) == (True, "127.0.0.1")
    sip = config.ingress.sip
    assert (sip.enabled, sip.port) == (True, 5060)  # why the unit keeps CAP_NET_BIND_SERVICE


def test_systemd_config_reads_the_api_key_from_the_units_credential(tmp_path: Path) -> None:
    config = load_config(SYSTEMD_CONFIG)
    source = config.model.api_key
    assert source == SecretSource(env="", file="$CREDENTIALS_DIRECTORY/openai-api-key")
    loaded = SERVICE["LoadCredential"]
    assert "openai-api-key" in loaded
    # As systemd hands it over: one file per credential in $CREDENTIALS_DIRECTORY.
    (tmp_path / "openai-api-key").write_text("sk-from-credstore\n")
    assert read_secret(source, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "sk-from-credstore"
    assert read_secret(source, {"OPENAI_API_KEY": "sk-ignored"}) is None


def test_every_credential_the_config_names_is_loaded_by_the_unit() -> None:
    # Commented-out settings in either file count too, so uncommenting both halves works.
    named = set(re.findall(r"\$CREDENTIALS_DIRECTORY/([\w.-]+)", SYSTEMD_CONFIG.read_text()))
    loaded = set(re.findall(r"^#?LoadCredential=([\w.-]+)$", UNIT.read_text(), re.MULTILINE))
    assert named
    assert named <= loaded
