"""The receive pipeline: what arrives from each remote user, played and shown.

Audio: decoded frames are cut into 20 ms int16 mono blocks for the :class:`Mixer` (which feeds
the speaker); a gap in the RTP timestamps is loss, reported to the mixer's playout buffer so it
conceals it instead of waiting; a jump of more than :data:`_MAX_GAP_BLOCKS` is a restart of the
stream, not loss. Each block also goes to the audio taps (bots, recorders) and to the volume
meter.

Video: the newest decoded frame is rendered (colour conversion, fill/fit, rotation, scaling) in
a worker thread for the user's view; frames that arrived meanwhile are skipped, never queued,
so a slow consumer costs frame rate, not latency (:func:`~callclient.media.receive.recv_newest`).

Counters per remote user are :class:`RemoteStats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from callclient.media.base import BLOCK_SAMPLES, SAMPLE_RATE, RenderedFrame, VideoView
from callclient.media.mixer import Mixer
from callclient.media.receive import receive_drops, recv_newest
from callclient.media.render import render
from callclient.media.tracks import AudioConverter, frame_to_bgr
from callclient.types import MediaPath, VideoRenderParams

__all__ = ["AudioTap", "RemoteMedia", "RemoteStats"]

logger = logging.getLogger(__name__)

_MAX_GAP_BLOCKS = 25
"""A timestamp jump of more audio blocks than this is a restart of the stream, not loss."""

AudioTap = Callable[[str, npt.NDArray[np.int16]], None]
"""Called with ``(user_id, block)`` for each received 20 ms int16 mono block of a remote user."""


@dataclass
class RemoteStats:
    """What has arrived from one remote user (for harnesses, bots and apps)."""

    video_frames: int = 0
    video_frames_skipped: int = 0
    """Received frames not rendered because a newer one was already waiting (render stage)."""
    video_frames_dropped_jitter: int = 0
    """Frames given up on in the jitter buffer: a packet lost for good (then a keyframe)."""
    video_frames_dropped_decode: int = 0
    """Encoded frames skipped because the decoder fell behind (decode stage; then a
    keyframe)."""
    audio_blocks: int = 0
    audio_blocks_missing: int = 0
    """Blocks known lost (timestamp gaps): concealed by the playout buffer."""
    first_video_time: float | None = None
    last_video_time: float | None = None
    path: MediaPath | None = None
    """The candidate pair the media flows on; None until ICE connects (set by the engine)."""
    video_width: int = 0
    video_height: int = 0
    """The size of the last frame received: what the remote user sends now (it adapts)."""
    video_fps: float = 0.0
    """Frames received per second, averaged over about the last second."""


def _render_frame(
    frame: av.VideoFrame, params: VideoRenderParams, size: tuple[int, int] | None
) -> npt.NDArray[np.uint8]:
    return render(frame_to_bgr(frame), params, size)


def _sample_position(frame: av.AudioFrame) -> int | None:
    """The frame's pts in 48 kHz samples, None without one."""
    if frame.pts is None or frame.time_base is None:
        return None
    return round(frame.pts * frame.time_base * SAMPLE_RATE)


class _Receiver:
    """The consumers of one remote user's tracks and their counters."""

    def __init__(self) -> None:
        self.stats = RemoteStats()
        self.tasks: set[asyncio.Task[None]] = set()


class RemoteMedia:
    """Consumes every remote user's tracks into the mixer, the taps and the views."""

    def __init__(self, mixer: Mixer) -> None:
        self.mixer = mixer
        self._receivers: dict[str, _Receiver] = {}
        self._views: dict[str, VideoView] = {}
        self._render_params: dict[str, VideoRenderParams] = {}
        self._taps: list[AudioTap] = []
        self.meter: AudioTap | None = None
        """The call's volume meter, fed every block (set while a call is connected)."""
        self.on_media: Callable[[str, str], None] | None = None
        """Called with ``(user_id, "audio" | "video")`` at each remote user's first audio
        block and first video frame (again after the user was detached and came back)."""

    @property
    def stats(self) -> dict[str, RemoteStats]:
        """Counters per remote user of the current call."""
        return {user_id: receiver.stats for user_id, receiver in self._receivers.items()}

    # ------------------------------------------------------------------ views and taps

    def start_view(self, user_id: str, view: VideoView) -> None:
        """Render ``user_id``'s video into ``view`` (it replaces an earlier one)."""
        self._views[user_id] = view

    def stop_view(self, user_id: str) -> None:
        """Stop rendering ``user_id``'s video."""
        self._views.pop(user_id, None)

    def render_params(self, user_id: str) -> VideoRenderParams | None:
        """The fill mode and rotation set for ``user_id``, if any."""
        return self._render_params.get(user_id)

    def set_render_params(self, user_id: str, params: VideoRenderParams) -> None:
        """Fill mode and rotation for ``user_id``'s view."""
        self._render_params[user_id] = params

    def add_tap(self, tap: AudioTap) -> None:
        """Also hand each received block to ``tap``; adding a tap twice has no effect."""
        if tap not in self._taps:
            self._taps.append(tap)

    def remove_tap(self, tap: AudioTap) -> None:
        """Stop calling ``tap``; unknown taps are ignored."""
        with contextlib.suppress(ValueError):
            self._taps.remove(tap)

    # ------------------------------------------------------------------ tracks

    def expect(self, user_id: str) -> None:
        """``user_id``'s media is being connected: its counters start at zero."""
        self._receivers.setdefault(user_id, _Receiver())

    def add_track(self, user_id: str, track: MediaStreamTrack) -> None:
        """Consume a track ``user_id`` sends until it ends or the user is dropped."""
        receiver = self._receivers.setdefault(user_id, _Receiver())
        if track.kind == "audio":
            coro: Coroutine[Any, Any, None] = self._consume_audio(user_id, receiver, track)
        else:
            coro = self._consume_video(user_id, receiver, track)
        task = asyncio.get_running_loop().create_task(coro, name=f"{track.kind} from {user_id}")
        receiver.tasks.add(task)
        task.add_done_callback(receiver.tasks.discard)

    def detach(self, user_id: str) -> list[asyncio.Task[None]]:
        """Forget ``user_id``: its blocks leave the mixer; returns its consumers, cancelled.

        The caller awaits them (after closing the peer connection they read from).
        """
        self.mixer.remove(user_id)
        receiver = self._receivers.pop(user_id, None)
        if receiver is None:
            return []
        tasks = list(receiver.tasks)
        for task in tasks:
            task.cancel()
        return tasks

    def detach_all(self) -> list[asyncio.Task[None]]:
        """:meth:`detach` every user."""
        return [task for user_id in list(self._receivers) for task in self.detach(user_id)]

    async def _consume_audio(
        self, user_id: str, receiver: _Receiver, track: MediaStreamTrack
    ) -> None:
        converter = AudioConverter()
        pending = np.zeros(0, dtype=np.int16)
        block = BLOCK_SAMPLES
        next_pts: int | None = None
        stats = receiver.stats
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            # Packets go to the decoder as they arrive (callclient.media.receive): a gap in
            # the timestamps is loss, which the playout buffer conceals instead of waiting.
            start = _sample_position(frame)
            if start is not None:
                if next_pts is not None and start > next_pts:
                    missing = round((start - next_pts) / block)
                    pending = pending[:0]
                    if 0 < missing <= _MAX_GAP_BLOCKS:
                        stats.audio_blocks_missing += missing
                        self.mixer.push_missing(user_id, missing)
                next_pts = start + round(frame.samples * SAMPLE_RATE / frame.sample_rate)
            samples = converter.convert(frame)
            pending = np.concatenate([pending, samples]) if pending.size else samples
            while pending.size >= block:
                samples = pending[:block].copy()
                self.mixer.push(user_id, samples)
                pending = pending[block:]
                stats.audio_blocks += 1
                if stats.audio_blocks == 1:
                    self._first(user_id, "audio")
                if self.meter is not None:
                    self.meter(user_id, samples)
                for tap in list(self._taps):
                    try:
                        tap(user_id, samples)
                    except Exception:
                        logger.exception("audio tap %r failed", tap)

    def _first(self, user_id: str, kind: str) -> None:
        if self.on_media is not None:
            try:
                self.on_media(user_id, kind)
            except Exception:
                logger.exception("first-%s callback for %s failed", kind, user_id)

    async def _consume_video(
        self, user_id: str, receiver: _Receiver, track: MediaStreamTrack
    ) -> None:
        stats = receiver.stats
        drops = receive_drops(track)
        while True:
            try:
                frame, skipped = await recv_newest(track)
            except MediaStreamError:
                return
            assert isinstance(frame, av.VideoFrame)
            now = time.time()
            if drops is not None:
                stats.video_frames_dropped_jitter = drops.jitter_frames
                stats.video_frames_dropped_decode = drops.decode_frames
            if stats.last_video_time is not None:
                interval = max(now - stats.last_video_time, 1e-3)
                rate = (1 + skipped) / interval
                # An average over ~1 s whatever the rate: weight = the interval's share of it.
                weight = min(interval, 1.0)
                stats.video_fps = round((1 - weight) * stats.video_fps + weight * rate, 2)
            stats.video_frames += 1 + skipped
            stats.video_frames_skipped += skipped
            stats.video_width, stats.video_height = frame.width, frame.height
            stats.last_video_time = now
            if stats.first_video_time is None:
                stats.first_video_time = now
                self._first(user_id, "video")
            view = self._views.get(user_id)
            if view is None:
                continue
            params = self._render_params.get(user_id, VideoRenderParams())
            image = await asyncio.to_thread(_render_frame, frame, params, view.size)
            if self._views.get(user_id) is not view:
                continue  # the view was stopped or replaced while rendering
            try:
                view.on_frame(RenderedFrame(user_id, image, now))
            except Exception:
                logger.exception("view of %s failed", user_id)
