"""How a simulated caller talks in turns, the same in both benchmarks' caller processes, and what
both kinds of caller process are told (:class:`CallPlan`).

Silence until the turn is due, ~1.5 s of speech-like audio, silence while it waits for the whole
reply (the reply ends with the turn's last speech frame, which the frame stamps make easy to
spot), then a pause of 0.3-0.8 s, and so on; a reply that does not come is given up after
``REPLY_TIMEOUT_S``.
"""

from __future__ import annotations

import enum
import random

import attrs
from _stamp import TimeTable

from bridge.call.events import Codec
from bridge.media import g711, synth

FRAME_S = g711.FRAME_MS / 1000
SILENCE = g711.silence(Codec.PCMU, g711.FRAME_BYTES)
# How long a call waits for a reply before it gives up on it and talks again.
REPLY_TIMEOUT_S = 10.0


@attrs.frozen(kw_only=True)
class CallPlan:
    """What every caller process is told: where the daemon is, which calls are its own, the CPUs
    it runs on and at which priority, how long its calls talk, and what they say."""

    host: str
    port: int
    calls: tuple[int, ...]
    cores: tuple[int, ...]
    talk_until: float
    hard_stop: float
    speech_ms: int
    seed: int
    nice: int


class Talk(enum.Enum):
    PAUSE = "pause"
    SPEAK = "speak"
    WAIT_REPLY = "wait_reply"


def speech_frames(speech_ms: int, seed: int) -> list[bytes]:
    """One turn's speech-like u-law audio in 20 ms frames."""
    audio = synth.utterance(Codec.PCMU, duration_ms=speech_ms, seed=seed)
    return [audio[i : i + g711.FRAME_BYTES] for i in range(0, len(audio), g711.FRAME_BYTES)]


class Turns:
    """One call's side of the conversation: what it sends each frame, and its turn counts."""

    def __init__(self, rng: random.Random, speech: list[bytes]) -> None:
        self.rng = rng
        self.speech = speech
        self.talk = Talk.PAUSE
        self.next_turn_at = 0.0
        self.speak_position = 0
        self.wait_since = 0.0
        self.last_speech_frame = -1
        self.turns = 0
        self.replies = 0
        self.reply_timeouts = 0

    def check_reply(self, now: float, reply_at: TimeTable, *, played_out: bool = True) -> Talk:
        """While waiting for a reply: pause once it has all arrived (and been played out), or
        once it is overdue. The state after that."""
        if self.talk is Talk.WAIT_REPLY:
            if reply_at.get(self.last_speech_frame) == reply_at.get(
                self.last_speech_frame
            ):  # the reply's last frame arrived (not NaN)
                if played_out:
                    self.replies += 1
                    self.pause(now)
            elif now - self.wait_since > REPLY_TIMEOUT_S:
                self.reply_timeouts += 1
                self.pause(now)
        return self.talk

    def audio(self, now: float, frame: int) -> bytes:
        """Frame number `frame`'s audio: start a turn when one is due, speak, or stay silent."""
        if self.talk is Talk.PAUSE and now >= self.next_turn_at:
            self.talk = Talk.SPEAK
            self.speak_position = 0
            self.turns += 1
        if self.talk is not Talk.SPEAK:
            return SILENCE
        audio = self.speech[self.speak_position]
        self.speak_position += 1
        if self.speak_position == len(self.speech):
            self.talk = Talk.WAIT_REPLY
            self.last_speech_frame = frame
            self.wait_since = now
        return audio

    def pause(self, now: float) -> None:
        self.talk = Talk.PAUSE
        self.next_turn_at = now + self.rng.uniform(0.3, 0.8)
