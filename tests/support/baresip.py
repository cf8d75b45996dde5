"""baresip 1.0.0 as a scripted SIP caller (protocols.md §7.2), run as a subprocess from trio.

The caller's microphone is a WAV file (module aufile) and module sndfile dumps what the call sent
and heard as WAV files (``dump-<time>-enc.wav`` / ``dump-<time>-dec.wav``), decoded 16-bit PCM at
the codec's rate: what the daemon sent, as the caller's decoder saw it. baresip ends the call (BYE)
when the WAV file ends, so the file's length sets the call's length; ``-t`` quits it regardless.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import attrs
import pytest
import trio

from bridge.call.events import Codec
from bridge.media import g711
from tests.support.sipp import free_udp_port, kill

MODULE_PATH = Path("/usr/lib/baresip/modules")
EXIT_GRACE_S = 5.0


def baresip_binary() -> str:
    """The baresip executable, or skip the test: CI installs it (apt package baresip)."""
    path = shutil.which("baresip")
    if path is None:
        pytest.skip("baresip is not installed (Debian/Ubuntu: apt-get install baresip)")
    return path


@attrs.frozen
class BaresipResult:
    command: tuple[str, ...]
    returncode: int
    output: str
    sent: bytes
    heard: bytes

    def explain(self) -> str:
        return f"baresip exited {self.returncode}: {' '.join(self.command)}\n{self.output[-4000:]}"


def write_wav(path: Path, codec: Codec, audio: bytes) -> None:
    """G.711 as the 16-bit 8 kHz mono WAV that aufile reads (baresip re-encodes it)."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(g711.SAMPLE_RATE)
        wav.writeframes(g711.to_little_endian_pcm(codec, audio))


def read_wav_as_g711(path: Path, codec: Codec) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, 8000):
            raise AssertionError(f"{path.name}: expected 16-bit 8 kHz mono, got {wav.getparams()}")
        pcm = wav.readframes(wav.getnframes())
    return g711.from_linear(codec, pcm, width=2, rate=g711.SAMPLE_RATE, channels=1)


def _write_config(directory: Path, *, microphone: Path, dumps: Path) -> None:
    """The configuration verified in protocols.md §7.2, on loopback only."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        f"sip_listen          127.0.0.1:{free_udp_port()}",
        f"module_path         {MODULE_PATH}",
        # codecs before account.so, which loads the accounts file and looks its codecs up
        "module              g711.so",
        "module              account.so",
        "module              aufile.so",
        "module              sndfile.so",
        "module_app          menu.so",
        f"audio_source        aufile,{microphone}",
        "audio_player        aufile,/dev/null",
        "audio_alert         aufile,/dev/null",
        f"snd_path            {dumps}",
    ]
    (directory / "config").write_text("\n".join(lines) + "\n")
    (directory / "accounts").write_text(
        "<sip:caller@127.0.0.1>;regint=0;answermode=auto;audio_codecs=pcmu\n"
    )


async def run_baresip_call(
    uri: str,
    *,
    workdir: Path,
    codec: Codec,
    audio: bytes,
    quit_after_s: int,
) -> BaresipResult:
    """Dial `uri` with `audio` (G.711 in `codec`) as the microphone; return what was heard.

    The call ends when the audio does (baresip hangs up); baresip quits after `quit_after_s`
    at the latest and is killed if it has not exited shortly after that.
    """
    binary = baresip_binary()
    config, dumps = _prepare(workdir, codec, audio)
    command = [binary, "-f", str(config), "-e", f"/dial {uri}", "-t", str(quit_after_s)]
    with trio.fail_after(quit_after_s + EXIT_GRACE_S):
        completed = await trio.run_process(
            command,
            cwd=workdir,
            check=False,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            stdin=b"",
            deliver_cancel=kill,
        )
    sent, heard = _read_dumps(dumps, codec)
    return BaresipResult(
        command=tuple(command),
        returncode=completed.returncode,
        output=completed.stdout.decode(errors="replace"),
        sent=sent,
        heard=heard,
    )


def _prepare(workdir: Path, codec: Codec, audio: bytes) -> tuple[Path, Path]:
    config = workdir / "baresip"
    dumps = workdir / "baresip-dumps"
    dumps.mkdir(parents=True, exist_ok=True)
    microphone = workdir / "caller.wav"
    write_wav(microphone, codec, audio)
    _write_config(config, microphone=microphone, dumps=dumps)
    return config, dumps


def _read_dumps(dumps: Path, codec: Codec) -> tuple[bytes, bytes]:
    """What the call sent and heard, from the last call's -enc.wav and -dec.wav dumps."""
    encoded = sorted(dumps.glob("dump-*-enc.wav"))
    decoded = sorted(dumps.glob("dump-*-dec.wav"))
    return (
        read_wav_as_g711(encoded[-1], codec) if encoded else b"",
        read_wav_as_g711(decoded[-1], codec) if decoded else b"",
    )
