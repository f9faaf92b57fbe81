"""The local user's media: cameras, microphone and speaker, and the encoders every peer shares.

:class:`LocalMedia` opens and closes the devices of a :class:`DeviceSet` as the application and
the call ask, feeds the camera into one shared video encoder and the microphone into one shared
Opus encoder (each peer connection subscribes; a frame is encoded once however many peers
there are), routes the speaker (speakerphone or earpiece, switchable mid-call) and tells the
other members what is on (``media_state``) through a reporter the engine gives it.

The microphone's blocks go through the capture processing (:mod:`callclient.media.processing`)
before the encoder and the local volume meter; its echo canceller's reference is what the
speaker pulls, and its delay hint follows the open speaker's and microphone's latencies.

Devices stay open between calls only while the application holds them: the last call's
teardown closes them unless a new call started or a device was opened since (the *generation*
counter tells a teardown that it is stale).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack

from callclient.errors import DeviceError, ErrorCode, RequestRefusedError
from callclient.media.audio_encoding import AudioEncoderSession
from callclient.media.base import AudioSink, Block, VideoView
from callclient.media.deviceset import DeviceSet
from callclient.media.encoding import LocalVideoStats, VideoEncoderSession
from callclient.media.processing import AudioProcessing, CaptureProcessor
from callclient.media.tracks import CameraTrack, MicrophoneTrack
from callclient.types import (
    AudioPlaybackDevice,
    Camera,
    VideoEncoderParams,
    VideoRenderParams,
    resolution_bitrate_kbps,
    resolution_size,
)

__all__ = ["LocalMedia", "MediaStateReporter"]

logger = logging.getLogger(__name__)

MediaStateReporter = Callable[[bool | None, bool | None], Awaitable[None]]
"""``report(camera, microphone)``: tell the call what is on now (None: unchanged)."""


class LocalMedia:
    """Cameras, microphone, speaker and the shared encoders of one engine."""

    def __init__(
        self,
        devices: DeviceSet,
        video_codec: str,
        report: MediaStateReporter,
        on_device_error: Callable[[DeviceError], None],
        processing: AudioProcessing | None = None,
        video_adaptation: bool = True,
    ) -> None:
        self.devices = devices
        self.video_adaptation = video_adaptation
        """Whether the sent video's frame rate and size follow CPU and bandwidth."""
        self._video_codec = video_codec
        self._report = report
        self._on_device_error = on_device_error
        self.user_id = ""
        """Stamped into the camera's frames; set at login."""
        self.encoder_params = VideoEncoderParams()
        self.on_local_audio: Callable[[npt.NDArray[np.int16]], None] | None = None
        """The volume meter of the local user, fed while the microphone is open."""
        self._camera_track: CameraTrack | None = None
        self._video_encoder: VideoEncoderSession | None = None
        self._mic_track: MicrophoneTrack | None = None
        self._audio_encoder: AudioEncoderSession | None = None
        self.camera: Camera | None = None
        """The open camera, if any."""
        self._local_view: VideoView | None = None
        self.mic_open = False
        self._mic_wanted = True
        self.playback = AudioPlaybackDevice.SPEAKERPHONE
        self._speaker: AudioSink | None = None
        self._speaker_stopping: asyncio.Task[None] | None = None
        self.generation = 0
        """Bumped whenever a device is opened or a call ends; see the module docstring."""
        self.processor = CaptureProcessor(
            processing if processing is not None
            else AudioProcessing.default_for(devices.microphone),
            delay=self._device_latency,
        )
        """The capture processing between the microphone and the encoder."""

    def _device_latency(self) -> float:
        """Seconds of device buffering on the echo path: the speaker's plus the microphone's."""
        speaker, mic = self._speaker, self.devices.microphone
        return (speaker.output_latency if speaker is not None else 0.0) + (
            mic.input_latency if mic is not None else 0.0
        )

    # ------------------------------------------------------------------ shared encoders

    def subscribe_video(self) -> MediaStreamTrack:
        """A track of the one camera encoder for a new peer connection."""
        if self._video_encoder is None:
            self._video_encoder = VideoEncoderSession(
                self._ensure_camera_track(),
                self._video_codec,
                resolution_bitrate_kbps(self.encoder_params.resolution) * 1000,
                adapt=self.video_adaptation,
            )
        return self._video_encoder.subscribe()

    @property
    def video_stats(self) -> LocalVideoStats | None:
        """What the shared video encoder sends and why; None before any peer subscribed."""
        return self._video_encoder.stats if self._video_encoder is not None else None

    def subscribe_audio(self) -> MediaStreamTrack:
        """A track of the one Opus encoder of the microphone for a new peer connection."""
        if self._audio_encoder is None:
            self._audio_encoder = AudioEncoderSession(self._ensure_mic_track())
        return self._audio_encoder.subscribe()

    def _ensure_camera_track(self) -> CameraTrack:
        if self._camera_track is None:
            self._camera_track = CameraTrack(
                size=resolution_size(
                    self.encoder_params.resolution, self.encoder_params.resolution_mode
                ),
                user_id=self.user_id,
                on_error=self._on_device_error,
            )
        return self._camera_track

    def _ensure_mic_track(self) -> MicrophoneTrack:
        if self._mic_track is None:
            self._mic_track = MicrophoneTrack(on_error=self._on_device_error)
            self._mic_track.on_block = self._local_block
            self._mic_track.process = self.processor.process
        return self._mic_track

    def _local_block(self, block: Block) -> None:
        if self.on_local_audio is not None and self.mic_open:
            self.on_local_audio(block)

    def set_encoder_params(self, params: VideoEncoderParams) -> None:
        """Resolution preset of the video sent (takes effect at the next frame)."""
        self.encoder_params = params
        if self._camera_track is not None:
            self._camera_track.set_size(
                resolution_size(params.resolution, params.resolution_mode)
            )
        if self._video_encoder is not None:
            self._video_encoder.set_bitrate(resolution_bitrate_kbps(params.resolution) * 1000)

    # ------------------------------------------------------------------ camera

    async def open_camera(
        self, camera: Camera, view: VideoView | None, params: VideoRenderParams | None
    ) -> None:
        """Open ``camera`` (switching from another without a gap) and preview it in ``view``."""
        camera = Camera(camera)
        source = self.devices.cameras.get(camera)
        if source is None:
            raise DeviceError(f"no {camera.name.lower()} camera is configured",
                              ErrorCode.CAMERA_START_FAIL)
        track = self._ensure_camera_track()
        self.generation += 1  # a teardown still running must not close this camera
        previous = self.camera
        # Start the new camera before stopping the old one: the track switches without a gap,
        # the old source's end is not reported as an error, and a failed start keeps the old.
        await source.start()
        track.set_source(source)
        self.camera = camera
        if previous is not None and previous != camera:
            await self.devices.cameras[previous].stop()
        if view is not None:
            if self._local_view is not None and self._local_view is not view:
                track.remove_local_view(self._local_view)
            self._local_view = view
            track.add_local_view(view, params)
        await self._report(True, None)

    async def close_camera(self) -> None:
        """Close the camera; others get video unavailable."""
        if self.camera is None:
            return
        await self._release_camera()
        await self._report(False, None)

    async def switch_camera(self, camera: Camera) -> None:
        """Switch between front and back camera without renegotiation."""
        if self.camera is None:
            raise RequestRefusedError("cannot switch camera: the camera is closed")
        if Camera(camera) != self.camera:
            await self.open_camera(camera, self._local_view, None)

    def set_preview_params(self, params: VideoRenderParams) -> None:
        """Fill mode and rotation of the local preview."""
        if self._camera_track is not None and self._local_view is not None:
            self._camera_track.add_local_view(self._local_view, params)

    async def _release_camera(self) -> None:
        """Detach and stop the open camera and its local preview."""
        if self.camera is None:
            return
        source = self.devices.cameras.get(self.camera)
        self.camera = None
        if self._camera_track is not None:
            self._camera_track.set_source(None)
            if self._local_view is not None:
                self._camera_track.remove_local_view(self._local_view)
        self._local_view = None
        if source is not None:
            await source.stop()

    # ------------------------------------------------------------------ microphone

    async def open_microphone(self) -> None:
        """Open the microphone (the application asked for it)."""
        self._mic_wanted = True
        self.generation += 1  # a teardown still running must not close this microphone
        await self._start_microphone()

    async def close_microphone(self) -> None:
        """Close the microphone and keep it closed for the rest of the call."""
        self._mic_wanted = False
        await self._stop_microphone(report=True)

    async def _start_microphone(self) -> None:
        source = self.devices.microphone
        if source is None:
            raise DeviceError("no microphone is configured", ErrorCode.MIC_START_FAIL)
        await source.start()
        self._ensure_mic_track().set_source(source)
        self.mic_open = True
        await self._report(None, True)

    async def _stop_microphone(self, report: bool) -> None:
        if not self.mic_open:
            return
        self.mic_open = False
        if self._mic_track is not None:
            self._mic_track.set_source(None)
        if self.devices.microphone is not None:
            await self.devices.microphone.stop()
        if report:
            await self._report(None, False)

    # ------------------------------------------------------------------ speaker

    async def select_playback(
        self, route: AudioPlaybackDevice, pull: Callable[[], Block], in_call: bool
    ) -> None:
        """Route remote audio to ``route``; mid-call the output switches at once."""
        route = AudioPlaybackDevice(route)
        if route not in self.devices.speakers:
            raise DeviceError(f"no {route.name.lower()} output is configured",
                              ErrorCode.SPEAKER_START_FAIL)
        previous, self.playback = self.playback, route
        if self._speaker is not None and route != previous:
            await self._speaker.stop()
            self._speaker = None
            self.processor.playout_changed()
        if self._speaker is None and in_call:
            # Also retries a route whose output failed to open earlier in this call.
            await self.start_speaker(pull)

    async def start_speaker(self, pull: Callable[[], Block]) -> None:
        """Start the selected output, pulling mixed audio from ``pull``."""
        stopping = self._speaker_stopping
        if stopping is not None and not stopping.done():
            # The last call's speaker is still stopping and may be the sink wanted now.
            await asyncio.wait([stopping])
        if self._speaker is not None:
            return
        sink = self.devices.speakers.get(self.playback)
        if sink is None:
            return
        self.processor.playout_changed()
        await sink.start(self.processor.tap(pull))
        self._speaker = sink

    def detach_speaker(self) -> AudioSink | None:
        """Take the running output away (to stop it in the background)."""
        speaker, self._speaker = self._speaker, None
        self.processor.playout_changed()
        return speaker

    def stopping_speaker(self, task: asyncio.Task[None]) -> None:
        """The detached output is stopping in ``task``; a new start waits for it."""
        self._speaker_stopping = task

    # ------------------------------------------------------------------ the call

    async def start_call(self, pull: Callable[[], Block]) -> None:
        """The call connected: speaker on, microphone on unless closed, state to others.

        A device that fails is reported through ``on_device_error``; the call goes on.
        """
        try:
            await self.start_speaker(pull)
        except DeviceError as exc:  # e.g. no sound card: the call goes on without sound
            self._on_device_error(exc)
        if self._mic_wanted and not self.mic_open and self.devices.microphone is not None:
            try:
                await self._start_microphone()
            except DeviceError as exc:
                self._on_device_error(exc)
        else:
            await self._report(None, self.mic_open)
        await self._report(self.camera is not None, None)

    async def close_devices(self) -> None:
        """Release the camera and microphone; the next call opens the microphone again."""
        await self._release_camera()
        await self._stop_microphone(report=False)
        self._mic_wanted = True

    async def aclose(self) -> None:
        """Close devices, tracks and encoders. Call once, at the engine's close."""
        await self.close_devices()
        for track in (self._camera_track, self._mic_track):
            if track is not None:
                track.stop()
        if self._video_encoder is not None:
            await self._video_encoder.aclose()
        if self._audio_encoder is not None:
            await self._audio_encoder.aclose()
        if self._camera_track is not None:
            await self._camera_track.aclose()
        await self.processor.aclose()
