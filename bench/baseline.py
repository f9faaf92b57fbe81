"""The stack bench's baseline participant: bare aiortc, no engine, no signaling server.

``python -m bench.baseline`` answers JSON-line commands on stdin (see
:func:`bench.probes.serve`); :mod:`bench.stack` drives it and carries the SDP between two (or
more) such processes itself. Each process holds one plain ``RTCPeerConnection`` per remote
participant, sending the same media as the engine:

* video: the same :class:`~bench.probes.CountingCamera` frames (stamped ``VirtualCamera``),
  converted to yuv420p the way the engine's camera track does, with pts from the capture
  time, encoded by aiortc's own VP8 encoder (one encoder per connection: a mesh of N sends
  each frame through N - 1 encoders, via ``MediaRelay``);
* audio: the same click train (:class:`~bench.probes.ClickMicrophone`), 20 ms s16 frames.

Received video is read with ``track.recv()``, converted to BGR (what any renderer needs; in
a thread from 720p on, like the engine) and handed to a :class:`~callclient.apps.measure.StampView`.
Received audio is checked for clicks at the time ``track.recv()`` returns: bare aiortc has no
playout, so this "ear" is the output of aiortc's jitter buffer and decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from typing import Any

import av
import cv2
import numpy as np
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

from bench.probes import (
    ClickMicrophone,
    CountingCamera,
    CpuMeter,
    OnsetDetector,
    Participant,
    run_participant,
    wait_first_frames,
)
from callclient.apps.measure import StampView
from callclient.media.base import BLOCK_SAMPLES, SAMPLE_RATE, RenderedFrame
from callclient.media.tracks import frame_to_bgr

__all__ = ["BareParticipant", "CameraSourceTrack", "ClickTrack", "main"]

_CLOCK = 90000
_THREAD_PIXELS = 1280 * 720
"""From this size on pixel conversions run in a thread, as in the engine."""


def _to_yuv(image: np.ndarray[Any, Any]) -> av.VideoFrame:
    yuv = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


def _to_bgr(frame: av.VideoFrame) -> np.ndarray[Any, Any]:
    # The same conversion the engine uses, so the comparison is about the stack, not this.
    return frame_to_bgr(frame)


class CameraSourceTrack(VideoStreamTrack):
    """A plain aiortc video track whose ``recv()`` reads the virtual camera."""

    def __init__(self, camera: CountingCamera) -> None:
        super().__init__()
        self.camera = camera
        self._capture_start: float | None = None

    async def recv(self) -> av.VideoFrame:
        """The camera's next frame as yuv420p, pts from its capture time."""
        if self.readyState != "live":
            raise MediaStreamError
        captured = await self.camera.read()
        image = captured.image
        if image.shape[0] * image.shape[1] >= _THREAD_PIXELS:
            frame = await asyncio.to_thread(_to_yuv, image)
        else:
            frame = _to_yuv(image)
        if self._capture_start is None:
            self._capture_start = captured.capture_time
        frame.pts = round((captured.capture_time - self._capture_start) * _CLOCK)
        frame.time_base = fractions.Fraction(1, _CLOCK)
        return frame


class ClickTrack(AudioStreamTrack):
    """A plain aiortc audio track sending the click microphone's 20 ms blocks."""

    def __init__(self, microphone: ClickMicrophone) -> None:
        super().__init__()
        self.microphone = microphone
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms s16 mono frame."""
        if self.readyState != "live":
            raise MediaStreamError
        block = await self.microphone.read()
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._pts += BLOCK_SAMPLES
        return frame


class CountingTrack(MediaStreamTrack):
    """Passes another track's frames on, counting them (each is one encode by the sender)."""

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self.inner = inner
        self.count = 0

    async def recv(self) -> Any:
        """The inner track's next frame."""
        frame = await self.inner.recv()
        self.count += 1
        return frame

    def stop(self) -> None:
        """Stop this track and the inner one."""
        super().stop()
        self.inner.stop()


class BareParticipant(Participant):
    """The command handlers of one bare-aiortc process."""

    def __init__(self) -> None:
        self.name = ""
        self.camera: CountingCamera | None = None
        self.microphone = ClickMicrophone()
        self.video_source: CameraSourceTrack | None = None
        self.audio_source: ClickTrack | None = None
        self.relay = MediaRelay()
        self.send_video = True
        self.peers = 1
        self.read_stamps = True
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.video_out: dict[str, CountingTrack] = {}
        self.views: dict[str, StampView] = {}
        self.heard: dict[str, OnsetDetector] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.call_start = 0.0

    async def cmd_setup(
        self, name: str, width: int, height: int, fps: float, send_video: bool = True,
        peers: int = 1, read_stamps: bool = True,
    ) -> dict[str, Any]:
        """Prepare the devices and source tracks."""
        self.name = name
        self.send_video = send_video
        self.peers = peers
        self.read_stamps = read_stamps
        self.camera = CountingCamera(width, height, fps, label=name)
        await self.camera.start()
        await self.microphone.start()
        self.video_source = CameraSourceTrack(self.camera)
        self.audio_source = ClickTrack(self.microphone)
        self.call_start = time.time()
        return {}

    def _new_pc(self, peer: str) -> RTCPeerConnection:
        """A connection to ``peer`` whose received media goes to the instruments."""
        pc = RTCPeerConnection()
        self.pcs[peer] = pc
        self.views[peer] = StampView(read_stamps=self.read_stamps)
        self.heard[peer] = OnsetDetector()
        pc.on("track", lambda track: self._spawn(self._consume(peer, track)))
        return pc

    def _add_tracks(self, pc: RTCPeerConnection, peer: str) -> None:
        """This side's audio and (unless receive-only) video, one encoder per connection."""
        assert self.video_source is not None and self.audio_source is not None
        audio: MediaStreamTrack = self.audio_source
        video: MediaStreamTrack = self.video_source
        if self.peers > 1:  # one source, several senders: what aiortc offers for that
            audio = self.relay.subscribe(self.audio_source, buffered=False)
            video = self.relay.subscribe(self.video_source, buffered=False)
        pc.addTrack(audio)
        if self.send_video:
            self.video_out[peer] = CountingTrack(video)
            pc.addTrack(self.video_out[peer])

    @staticmethod
    def _prefer_vp8(pc: RTCPeerConnection) -> None:
        codecs = RTCRtpSender.getCapabilities("video").codecs
        preferred = [c for c in codecs if c.mimeType.lower() == "video/vp8"]
        preferred += [c for c in codecs if c.mimeType.lower() == "video/rtx"]
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.setCodecPreferences(preferred)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _consume(self, peer: str, track: MediaStreamTrack) -> None:
        view, heard = self.views[peer], self.heard[peer]
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.time()
            if isinstance(frame, av.VideoFrame):
                if frame.width * frame.height >= _THREAD_PIXELS:
                    image = await asyncio.to_thread(_to_bgr, frame)
                else:
                    image = _to_bgr(frame)
                view.on_frame(RenderedFrame(peer, image, now))
            elif isinstance(frame, av.AudioFrame):
                samples = frame.to_ndarray().reshape(-1)
                channels = len(frame.layout.channels)
                if frame.format.is_planar or channels == 1:
                    mono = samples[: frame.samples]
                else:
                    mono = samples[::channels]
                heard.feed(mono, now)

    async def cmd_offer(self, peer: str) -> dict[str, Any]:
        """Create the connection to ``peer`` and its offer (t0 taken just before)."""
        t0 = time.time()
        pc = self._new_pc(peer)
        self._add_tracks(pc, peer)
        if not self.send_video:
            pc.addTransceiver("video", direction="recvonly")
        self._prefer_vp8(pc)
        await pc.setLocalDescription(await pc.createOffer())
        return {"t0": t0, "sdp": pc.localDescription.sdp}

    async def cmd_answer(self, peer: str, sdp: str) -> dict[str, Any]:
        """Create the connection to ``peer`` from its offer; return the answer."""
        pc = self._new_pc(peer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        self._add_tracks(pc, peer)
        self._prefer_vp8(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp}

    async def cmd_accept(self, peer: str, sdp: str) -> dict[str, Any]:
        """Apply ``peer``'s answer."""
        await self.pcs[peer].setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        return {}

    async def cmd_wait_first(self, watch: list[str], within: float = 20.0) -> dict[str, Any]:
        """Wait until a frame of every watched peer was rendered; their first render times."""
        views = {peer: self.views[peer] for peer in watch}
        return {"first": await wait_first_frames(views, within)}

    async def cmd_measure(
        self, seconds: float, watch: list[str] | None = None
    ) -> dict[str, Any]:
        """Measure for ``seconds``: CPU, the ``watch`` streams (default all), clicks, encodes."""
        meter = CpuMeter()
        captured0, encodes0 = self._counters()
        since = time.time()
        meter.start()
        await asyncio.sleep(seconds)
        cpu = meter.stop()
        until = time.time()
        captured1, encodes1 = self._counters()
        await asyncio.sleep(0.3)
        return {
            "since": since,
            "until": until,
            **cpu,
            "captured": captured1 - captured0,
            "encodes": encodes1 - encodes0,
            "video": {peer: view.window(since, until) for peer, view in self.views.items()
                      if watch is None or peer in watch},
            "clicks_emitted": self.microphone.emitted.since(self.call_start),
            "clicks_speaker": [],
            "clicks_tap": {peer: d.since(self.call_start) for peer, d in self.heard.items()},
        }

    def _counters(self) -> tuple[int, int]:
        captured = self.camera.captured if self.camera is not None else 0
        return captured, sum(track.count for track in self.video_out.values())

    async def cmd_reset(self) -> dict[str, Any]:
        """Close every connection (the next offer/answer starts a new call)."""
        await self._close_pcs()
        self.call_start = time.time()
        return {}

    async def _close_pcs(self) -> None:
        pcs = list(self.pcs.values())
        self.pcs.clear()
        self.video_out.clear()
        for pc in pcs:
            with contextlib.suppress(Exception):
                await pc.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for view in self.views.values():
            view.close()
        self.views.clear()
        self.heard.clear()
        # The source tracks were stopped by the senders: make fresh ones for the next call.
        if self.camera is not None:
            self.video_source = CameraSourceTrack(self.camera)
            self.audio_source = ClickTrack(self.microphone)
            self.relay = MediaRelay()

    async def cmd_quit(self) -> dict[str, Any]:
        """Close every connection."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await self._close_pcs()
        return {}


def main() -> int:
    """Serve the baseline participant's commands on stdin/stdout."""
    return run_participant(lambda: BareParticipant().dispatch)


if __name__ == "__main__":
    raise SystemExit(main())
