"""One engine participant of the stack bench, in its own process.

``python -m bench.stack_peer`` answers JSON-line commands on stdin (see
:func:`bench.probes.serve`); :mod:`bench.stack` drives it. The participant is a full
:class:`~callclient.engine.CallEngine` with virtual devices: a :class:`~bench.probes.CountingCamera`
at the scenario's size, a :class:`~bench.probes.ClickMicrophone` and
:class:`~bench.probes.RecordingSpeaker` outputs; each remote user is rendered into a
:class:`~callclient.apps.measure.StampView`.

Commands: ``setup`` (create the engine and log in), ``call`` / ``answer`` (one call, returning
when the first frame of every watched user was rendered), ``measure`` (a window of
``seconds``: CPU, video per remote user, clicks, encoder counters), ``end`` (hang up or wait
for the call to end) and ``quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.probes import (
    ClickMicrophone,
    CountingCamera,
    CpuMeter,
    OnsetDetector,
    Participant,
    RecordingSpeaker,
    run_participant,
    wait_first_frames,
)
from callclient.apps.events import CallbackObserver
from callclient.apps.measure import StampView
from callclient.engine import CallEngine
from callclient.media.deviceset import DeviceSet
from callclient.types import (
    AudioPlaybackDevice,
    CallMediaType,
    Camera,
    Resolution,
    VideoEncoderParams,
)
from callwire.dev import DEV_SDK_APP_ID, DEV_SECRET_KEY
from callwire.usersig import generate_user_sig

__all__ = ["EngineParticipant", "main"]


class EngineParticipant(Participant):
    """The command handlers of one engine process."""

    def __init__(self) -> None:
        self.engine: CallEngine | None = None
        self.camera: CountingCamera | None = None
        self.microphone = ClickMicrophone()
        self.speakers = {route: RecordingSpeaker(f"bench {route.name.lower()}")
                         for route in AudioPlaybackDevice}
        self.views: dict[str, StampView] = {}
        self.taps: dict[str, OnsetDetector] = {}
        self.read_stamps = True
        self.invited = asyncio.Event()
        self.ended = asyncio.Event()
        self.call_start = 0.0

    def _engine(self) -> CallEngine:
        if self.engine is None:
            raise RuntimeError("setup first")
        return self.engine

    def _on_callback(self, name: str, args: tuple[Any, ...]) -> None:
        if name == "on_call_received":
            self.invited.set()
        elif name in ("on_call_end", "on_call_cancelled"):
            self.ended.set()

    def _on_audio(self, user_id: str, block: npt.NDArray[np.int16]) -> None:
        detector = self.taps.get(user_id)
        if detector is not None:
            detector.feed(block, time.time())

    async def cmd_setup(
        self, server: str, user: str, width: int, height: int, fps: float, resolution: int,
        read_stamps: bool = True, adaptation: bool = True,
    ) -> dict[str, Any]:
        """Create the engine with the bench's devices and log in as ``user``."""
        self.read_stamps = read_stamps
        self.camera = CountingCamera(width, height, fps, label=user)
        devices = DeviceSet(
            cameras={Camera.FRONT: self.camera},
            microphone=self.microphone,
            speakers=dict(self.speakers),
        )
        engine = CallEngine(server, devices=devices, video_codec="VP8",
                            video_adaptation=adaptation)
        engine.set_video_encoder_params(VideoEncoderParams(resolution=Resolution(resolution)))
        engine.add_observer(CallbackObserver(self._on_callback))
        engine.add_audio_tap(self._on_audio)
        self.engine = engine
        await engine.login(DEV_SDK_APP_ID, user,
                           generate_user_sig(DEV_SDK_APP_ID, DEV_SECRET_KEY, user))
        return {"pid": os.getpid()}

    def _watch(self, users: list[str]) -> None:
        engine = self._engine()
        for view in self.views.values():
            view.close()
        self.views = {user: StampView(read_stamps=self.read_stamps) for user in users}
        self.taps = {user: OnsetDetector() for user in users}
        for user, view in self.views.items():
            engine.start_remote_view(user, view)
        self.ended.clear()
        self.call_start = time.time()

    async def cmd_call(
        self, users: list[str], watch: list[str], send_video: bool = True,
        group: bool = False, within: float = 20.0,
    ) -> dict[str, Any]:
        """Call ``users``; return when a frame of every watched user was rendered."""
        engine = self._engine()
        self._watch(watch)
        if send_video:
            await engine.open_camera(Camera.FRONT)
        started = time.time()
        if group:
            await engine.group_call("bench-group", users, CallMediaType.VIDEO)
        else:
            await engine.calls(users, CallMediaType.VIDEO)
        first = await wait_first_frames(self.views, within)
        return {"dialed": started, "first": first}

    async def cmd_answer(
        self, watch: list[str], send_video: bool = True, within: float = 20.0
    ) -> dict[str, Any]:
        """Wait for an invitation, open the camera, accept; return at the first frames."""
        engine = self._engine()
        async with asyncio.timeout(within):
            await self.invited.wait()
        self.invited.clear()
        self._watch(watch)
        if send_video:
            await engine.open_camera(Camera.FRONT)
        accepted = time.time()  # t0 of the call setup: just before accept()
        await engine.accept()
        first = await wait_first_frames(self.views, within)
        return {"t0": accepted, "first": first}

    async def cmd_measure(self, seconds: float) -> dict[str, Any]:
        """Measure for ``seconds``: CPU, every watched stream, clicks, encoder counters."""
        engine = self._engine()
        meter = CpuMeter()
        captured0, encodes0 = self._counters()
        since = time.time()
        meter.start()
        await asyncio.sleep(seconds)
        cpu = meter.stop()
        until = time.time()
        captured1, encodes1 = self._counters()
        await asyncio.sleep(0.3)  # let the stamp readers finish the window
        speaker = self.speakers[AudioPlaybackDevice.SPEAKERPHONE]
        stats = engine.remote_stats
        local = engine.local_video_stats
        return {
            "sending": None if local is None else dataclasses.asdict(local.sending),
            "steps": [] if local is None else [dataclasses.asdict(s) for s in local.steps],
            "drops": None if local is None else dataclasses.asdict(local.drops),
            "since": since,
            "until": until,
            **cpu,
            "captured": captured1 - captured0,
            "encodes": encodes1 - encodes0,
            "video": {user: view.window(since, until) for user, view in self.views.items()},
            "received_frames": {u: s.video_frames for u, s in stats.items()},
            "clicks_emitted": self.microphone.emitted.since(self.call_start),
            "clicks_speaker": speaker.heard.since(self.call_start),
            "clicks_tap": {u: d.since(self.call_start) for u, d in self.taps.items()},
        }

    def _counters(self) -> tuple[int, int]:
        """(frames captured by the camera, frames encoded by the shared encoder)."""
        captured = self.camera.captured if self.camera is not None else 0
        local = self.engine.local_video_stats if self.engine is not None else None
        return captured, local.frames_encoded if local is not None else 0

    async def cmd_end(self, hang_up: bool, within: float = 10.0) -> dict[str, Any]:
        """Hang up (or wait up to ``within`` s for the other side to end the call)."""
        engine = self._engine()
        if hang_up and engine.current_call is not None:
            with contextlib.suppress(Exception):
                await engine.hangup()
        if engine.current_call is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self.ended.wait()
        for user in list(self.views):
            engine.stop_remote_view(user)
        return {"ended": time.time()}

    async def cmd_quit(self) -> dict[str, Any]:
        """Close the engine and the views."""
        if self.engine is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self.engine.close()
        for view in self.views.values():
            view.close()
        return {}


def main() -> int:
    """Serve the engine participant's commands on stdin/stdout."""
    return run_participant(lambda: EngineParticipant().dispatch)


if __name__ == "__main__":
    raise SystemExit(main())
