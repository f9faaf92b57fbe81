"""Voice volume 0..100 from PCM, with attack/release smoothing.

aiortc does not expose the audio levels carried in RTP header extensions, so the level of each
user is computed from the PCM that is actually sent (local microphone) or played (remote users).

Mapping: the RMS of each 20 ms block in dB relative to a full-scale sine (so a full-scale
sine is 0 dB) is mapped linearly from -60..0 dB onto 0..100. Below -60 dB is 0: silence and
background hiss read as 0. Smoothing: a louder block moves the level up at once (attack),
a quieter one lets it fall by at most ``release_per_s`` per second (release), the behaviour
of a VU meter. A user who sends nothing for ``stale_after`` seconds (muted, departed, lost)
reads 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["FLOOR_DB", "LevelMeter", "VolumeTracker", "block_level"]

FLOOR_DB = -60.0
"""Blocks quieter than this (relative to a full-scale sine) read 0."""

_FULL_SCALE_SINE_RMS = 32767.0 / math.sqrt(2.0)


def block_level(block: npt.NDArray[np.int16]) -> float:
    """The instantaneous 0..100 level of one block of int16 samples."""
    if block.size == 0:
        return 0.0
    samples = block.astype(np.float64)
    rms = math.sqrt(float(np.dot(samples, samples)) / samples.size)
    if rms <= 0.0:
        return 0.0
    db = 20.0 * math.log10(rms / _FULL_SCALE_SINE_RMS)
    return max(0.0, min(100.0, (db - FLOOR_DB) / -FLOOR_DB * 100.0))


@dataclass
class LevelMeter:
    """One stream's smoothed level: instant attack, bounded release."""

    release_per_s: float = 150.0
    stale_after: float = 0.5
    level: float = 0.0
    last_update: float | None = None

    def update(self, block: npt.NDArray[np.int16], now: float) -> float:
        """Feed one block received at ``now`` (seconds); returns the smoothed level."""
        instant = block_level(block)
        if self.last_update is None:
            self.level = instant
        else:
            elapsed = max(0.0, now - self.last_update)
            floor = self.level - self.release_per_s * elapsed
            self.level = instant if instant >= floor else floor
        self.last_update = now
        return self.level

    def read(self, now: float) -> int:
        """The level at ``now`` as an int 0..100 (0 when stale)."""
        if self.last_update is None or now - self.last_update > self.stale_after:
            return 0
        return round(self.level)

    def reset(self) -> None:
        """Forget the stream (muted or departed)."""
        self.level = 0.0
        self.last_update = None


class VolumeTracker:
    """Levels of several users by id, for ``on_user_voice_volume_changed``."""

    def __init__(self, release_per_s: float = 150.0, stale_after: float = 0.5) -> None:
        self._release = release_per_s
        self._stale = stale_after
        self._meters: dict[str, LevelMeter] = {}

    def update(self, user_id: str, block: npt.NDArray[np.int16], now: float) -> None:
        """Feed one block of ``user_id``'s audio."""
        meter = self._meters.get(user_id)
        if meter is None:
            meter = self._meters[user_id] = LevelMeter(self._release, self._stale)
        meter.update(block, now)

    def reset(self, user_id: str) -> None:
        """The user is muted: read 0 until audio comes again."""
        meter = self._meters.get(user_id)
        if meter is not None:
            meter.reset()

    def remove(self, user_id: str) -> None:
        """Forget a user who left."""
        self._meters.pop(user_id, None)

    def snapshot(self, user_ids: list[str], now: float) -> dict[str, int]:
        """The level of each of ``user_ids`` (0 for users without audio)."""
        result: dict[str, int] = {}
        for user_id in user_ids:
            meter = self._meters.get(user_id)
            result[user_id] = meter.read(now) if meter is not None else 0
        return result
