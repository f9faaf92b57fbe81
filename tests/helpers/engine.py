"""Helpers for the CallEngine end-to-end tests: parties, event recorders, waits.

Every engine talks to a real :class:`~signaling_server.server.SignalingServer` on loopback,
runs real WebRTC and uses virtual devices (labelled with its user id). Each engine has a
:class:`Recorder` observer that keeps every callback in order and lets a test wait for one
with a timeout; a wait that times out fails with the whole list of events seen.

Waits take a ``timeout`` argument defaulting to :data:`T` (ruff's ASYNC109 is silenced for
them), and fail the test with what was seen instead of raising ``TimeoutError``.

The fixtures that make servers and parties are in :mod:`engine_fixtures`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from callclient.engine import CallEngine
from callclient.media.base import MemoryView
from callclient.media.deviceset import DeviceSet
from callclient.media.pattern import read_stamp
from callclient.media.virtual import VirtualSpeaker
from callclient.observer import CallEvent, EventRecorder
from callclient.sfu import SfuTransport
from callclient.types import AudioPlaybackDevice, CallMediaType
from tests.helpers.servers import APP, sig
from tests.helpers.waits import T, eventually

__all__ = [
    "NOISE",
    "MakeParty",
    "Party",
    "Recorder",
    "T",
    "connect",
    "eventually",
    "frames_advance",
    "recent_audio",
    "sfu_transport",
    "tone_levels",
]


NOISE = frozenset({"on_user_voice_volume_changed", "on_user_network_quality_changed"})
"""Periodic callbacks left out of order assertions."""


class Recorder(EventRecorder):
    """An observer that keeps every callback, in order, with helpers to wait for one."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.events: list[CallEvent] = []
        self._changed = asyncio.Event()

    def record(self, event: CallEvent) -> None:
        """Keep ``event`` and wake the waiters."""
        self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def names(self, start: int = 0, *, noise: bool = False) -> list[str]:
        """Callback names from index ``start`` on (periodic ones left out unless ``noise``)."""
        return [e.name for e in self.events[start:] if noise or e.name not in NOISE]

    def signal(self, start: int = 0) -> list[CallEvent]:
        """The events from index ``start`` on without the periodic ones: what tests index."""
        return [e for e in self.events[start:] if e.name not in NOISE]

    def mark(self) -> int:
        """The index the next event will have (pass it as ``start`` to later waits)."""
        return len(self.events)

    def describe(self, start: int = 0) -> str:
        """The events seen, one per line, for failure messages."""
        lines = [f"  {e.name}{e.args!r}" for e in self.events[start:] if e.name not in NOISE]
        return "\n".join(lines) or "  (none)"

    def find(self, name: str, *args: Any, start: int = 0) -> CallEvent | None:
        """The first ``name`` event from ``start`` whose leading args equal ``args``."""
        for event in self.events[start:]:
            if event.name == name and event.args[: len(args)] == args:
                return event
        return None

    async def wait_for(
        self, name: str, *args: Any, start: int = 0, timeout: float = T  # noqa: ASYNC109
    ) -> CallEvent:
        """Wait for a ``name`` callback (leading args equal to ``args``) at index >= ``start``.

        Fails the test with every event seen if none arrives within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            event = self.find(name, *args, start=start)
            if event is not None:
                return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"{self.who}: no {name}{args!r} within {timeout:g} s; events seen:\n"
                    + self.describe(start)
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_names(
        self, expected: list[str], *, start: int = 0, timeout: float = T  # noqa: ASYNC109
    ) -> None:
        """Wait until exactly ``expected`` (in order, noise left out) was seen from ``start``.

        Fails at once if the events seen so far are not a prefix of ``expected``.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = self.names(start)
            if seen == expected:
                return
            if seen != expected[: len(seen)] or time.monotonic() >= deadline:
                pytest.fail(
                    f"{self.who}: expected events {expected}, got {seen}:\n"
                    + self.describe(start)
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())


@dataclass
class Party:
    """One user: its engine, its recorder and its virtual devices."""

    user_id: str
    engine: CallEngine
    rec: Recorder

    @property
    def devices(self) -> DeviceSet:
        """The engine's virtual devices."""
        return self.engine.devices

    def speaker(self, route: AudioPlaybackDevice = AudioPlaybackDevice.SPEAKERPHONE) -> (
        VirtualSpeaker
    ):
        """One of the engine's virtual speakers."""
        sink = self.devices.speakers[route]
        assert isinstance(sink, VirtualSpeaker)
        return sink

    async def login(self) -> None:
        """Log in with a valid userSig."""
        await self.engine.login(APP, self.user_id, sig(self.user_id))

    def view_of(self, remote: str) -> MemoryView:
        """A fresh view rendering ``remote``'s video."""
        view = MemoryView(keep=1)
        self.engine.start_remote_view(remote, view)
        return view


MakeParty = Callable[..., Awaitable[Party]]


async def frames_advance(
    view: MemoryView, frames: int = 10, timeout: float = T  # noqa: ASYNC109
) -> tuple[int, int]:
    """Wait for ``frames`` more frames in ``view``; the stamp counters before and after."""
    await view.wait_frames(view.count + 1, timeout)
    first = _stamp_counter(view)
    await view.wait_frames(view.count + frames, timeout)
    last = _stamp_counter(view)
    assert last > first, f"frame counter did not advance: {first} -> {last}"
    return first, last


def _stamp_counter(view: MemoryView) -> int:
    frame = view.last
    assert frame is not None
    stamp = read_stamp(frame.image)
    assert stamp is not None, "the received frame carries no readable stamp"
    return stamp[0]


def recent_audio(samples: npt.NDArray[np.int16], seconds: float = 0.5) -> npt.NDArray[np.int16]:
    """The last ``seconds`` of ``samples`` (48 kHz)."""
    return samples[-round(seconds * 48000) :]


def tone_levels(samples: npt.NDArray[np.int16], freqs: list[float]) -> dict[float, float]:
    """Each frequency's spectral peak (within +-10 Hz) relative to the strongest peak, 0..1."""
    values = samples.astype(np.float64) / 32768.0
    spectrum = np.abs(np.fft.rfft(values * np.hanning(values.size)))
    spectrum[0] = 0.0
    top = float(spectrum.max()) or 1.0
    bins = np.fft.rfftfreq(values.size, 1 / 48000)
    return {
        f: float(spectrum[(bins > f - 10) & (bins < f + 10)].max()) / top for f in freqs
    }


async def connect(caller: Party, callee: Party, media: CallMediaType = CallMediaType.VIDEO) -> str:
    """``caller`` calls ``callee``, who accepts; returns once both know each other's state."""
    mark_a, mark_b = caller.rec.mark(), callee.rec.mark()
    call_id = await caller.engine.call(callee.user_id, media)
    await callee.rec.wait_for("on_call_received", start=mark_b)
    await callee.engine.accept()
    for me, other, mark in ((caller, callee, mark_a), (callee, caller, mark_b)):
        await me.rec.wait_for("on_call_begin", start=mark)
        await me.rec.wait_for("on_user_audio_available", other.user_id, start=mark)
        await me.rec.wait_for("on_user_video_available", other.user_id, start=mark)
    return call_id


def sfu_transport(party: Party) -> SfuTransport:
    """The SFU transport of ``party``'s call (fails if the call is meshed instead)."""
    media = party.engine._media
    assert isinstance(media.transport, SfuTransport), media.transport
    assert media.mesh is None
    return media.transport
