"""A simulated room: a speaker and a microphone on one clock, the speaker heard by the mic.

:class:`Room` is a duplex sound card in a room. Its :attr:`~Room.speaker` is an
:class:`AudioSink` that only keeps the engine's ``pull``; every :meth:`RoomMicrophone.read`
first pulls one block (what the speaker plays now), then returns the room's sound for the same
20 ms: the echo of everything played (a bulk delay, an impulse response, a gain) plus the
near-end talker and noise. Render and capture are locked sample for sample, like one sound
card, so the echo's delay is exact whatever the load; the separate components are kept for
measuring (:attr:`Room.echo`, :attr:`Room.played`).

``realtime=False`` delivers blocks as fast as they are read (for tests that push signals
through the real pipeline faster than real time); otherwise every 20 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from callclient.errors import DeviceError, ErrorCode
from callclient.media.base import BLOCK_SAMPLES, BLOCK_SECONDS, AudioSink, AudioSource, Block
from tests.helpers.speech import to_int16

__all__ = ["Room", "RoomMicrophone", "RoomSpeaker"]

Signal = npt.NDArray[np.float64]

_LONGEST_PATH = 0.6
"""Seconds of echo path (delay and response) a room can have."""


class RoomSpeaker(AudioSink):
    """The room's loudspeaker: what it is handed is played when the microphone reads."""

    def __init__(self, name: str = "room speaker") -> None:
        self.name = name
        self.pull: Callable[[], Block] | None = None
        self.starts = 0

    async def start(self, pull: Callable[[], Block]) -> None:
        """Play what ``pull`` hands over."""
        if self.pull is not None:
            raise RuntimeError(f"{self.name} is already started")
        self.pull = pull
        self.starts += 1

    async def stop(self) -> None:
        """Play silence. Idempotent."""
        self.pull = None


class RoomMicrophone(AudioSource):
    """The room's microphone (see :class:`Room`)."""

    def __init__(self, room: Room) -> None:
        self.name = "room microphone"
        self._room = room
        self._running = False
        self._due: float | None = None

    async def start(self) -> None:
        """Start delivering. Idempotent."""
        self._running = True
        self._due = None

    async def stop(self) -> None:
        """Stop; a later read raises ``DeviceError``. Idempotent."""
        self._running = False

    async def read(self) -> Block:
        """The next 20 ms of the room's sound (after the speaker played its next block)."""
        if not self._running:
            raise DeviceError(f"{self.name} is not started", ErrorCode.MIC_START_FAIL)
        if self._room.realtime:
            now = time.monotonic()
            if self._due is None or now - self._due > 0.1:
                self._due = now
            if self._due > now:
                await asyncio.sleep(self._due - now)
            self._due += BLOCK_SECONDS
        else:
            await asyncio.sleep(0)
        if not self._running:
            raise DeviceError(f"{self.name} is not started", ErrorCode.MIC_START_FAIL)
        return self._room.capture()


class Room:
    """A speaker whose sound reaches the microphone after ``delay_ms`` through ``ir``.

    ``gain_db`` scales the echo (``ir`` of unit energy keeps the power otherwise); ``near``
    is the near-end talker from the microphone's first block on (silence after its end);
    ``noise_db`` adds white noise at that level (dBFS).
    """

    def __init__(
        self,
        ir: Signal,
        delay_ms: float,
        gain_db: float,
        near: Signal | None = None,
        noise_db: float = -70.0,
        *,
        realtime: bool = True,
        seed: int = 11,
    ) -> None:
        self.realtime = realtime
        self.speaker = RoomSpeaker()
        self.microphone = RoomMicrophone(self)
        self._noise = 10 ** (noise_db / 20.0)
        self._near = near if near is not None else np.zeros(0)
        self._rng = np.random.default_rng(seed)
        self._parts = 0
        self._spectra = self._partitions(ir, delay_ms, gain_db)
        self._parts = self._spectra.shape[0]
        # Uniformly partitioned overlap-save convolution: the spectra of the last blocks
        # played, newest first, each multiplied with one 20 ms partition of the path.
        self._played_spectra = np.zeros_like(self._spectra)
        self._previous = np.zeros(BLOCK_SAMPLES)
        self._blocks = 0
        self.played: list[Block] = []
        """Every block the speaker played (silence while stopped)."""
        self.echo: list[Signal] = []
        """The echo component of every microphone block."""
        self.captured: list[Block] = []
        """Every microphone block delivered."""

    def _partitions(self, ir: Signal, delay_ms: float, gain_db: float) -> npt.NDArray[Any]:
        """The echo path (delay, then ``ir``, scaled) cut in 20 ms pieces, as spectra."""
        path = np.concatenate([np.zeros(round(delay_ms * 48)), ir]) * 10 ** (gain_db / 20)
        parts = max(self._parts, -(-round(_LONGEST_PATH * 48000) // BLOCK_SAMPLES))
        if path.size > parts * BLOCK_SAMPLES:
            raise ValueError(f"an echo path may not be longer than {_LONGEST_PATH:g} s")
        path = np.concatenate([path, np.zeros(parts * BLOCK_SAMPLES - path.size)])
        pieces = path.reshape(parts, BLOCK_SAMPLES)
        return np.fft.rfft(pieces, 2 * BLOCK_SAMPLES, axis=1)

    def set_path(self, ir: Signal, delay_ms: float, gain_db: float) -> None:
        """Move the speaker (a new route): the echo path changes from the next block on."""
        self._spectra = self._partitions(ir, delay_ms, gain_db)

    def capture(self) -> Block:
        """Play the speaker's next block, then hear the room for the same 20 ms."""
        pull = self.speaker.pull
        block = pull() if pull is not None else np.zeros(BLOCK_SAMPLES, np.int16)
        if not isinstance(block, np.ndarray) or block.shape != (BLOCK_SAMPLES,):
            block = np.zeros(BLOCK_SAMPLES, np.int16)
        self.played.append(block.copy())
        current = block.astype(np.float64) / 32767.0
        self._played_spectra = np.roll(self._played_spectra, 1, axis=0)
        self._played_spectra[0] = np.fft.rfft(np.concatenate([self._previous, current]))
        self._previous = current
        total = np.sum(self._played_spectra * self._spectra, axis=0)
        echo = np.fft.irfft(total, 2 * BLOCK_SAMPLES)[BLOCK_SAMPLES:]
        start = self._blocks * BLOCK_SAMPLES
        near = np.zeros(BLOCK_SAMPLES)
        piece = self._near[start : start + BLOCK_SAMPLES]
        near[: piece.size] = piece
        noise = self._rng.standard_normal(BLOCK_SAMPLES) * self._noise
        self._blocks += 1
        self.echo.append(echo)
        captured = to_int16(echo + near + noise)
        self.captured.append(captured)
        return captured
