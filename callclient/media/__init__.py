"""Media building blocks: device interfaces, virtual devices, rendering, mixing and tracks."""

from __future__ import annotations

from callclient.media.analysis import dominant_frequency, rms_dbfs, tone_present
from callclient.media.base import (
    BLOCK_SAMPLES,
    BLOCK_SECONDS,
    SAMPLE_RATE,
    AudioSink,
    AudioSource,
    CapturedFrame,
    MemoryView,
    RenderedFrame,
    VideoSource,
    VideoView,
)
from callclient.media.mixer import Mixer
from callclient.media.pattern import read_stamp, stamp
from callclient.media.render import render
from callclient.media.tracks import (
    AudioConverter,
    CameraTrack,
    MicrophoneTrack,
    audio_frame_to_mono,
    frame_to_bgr,
)
from callclient.media.virtual import (
    AudioFile,
    Program,
    Sequence,
    Silence,
    Tone,
    VirtualCamera,
    VirtualMicrophone,
    VirtualSpeaker,
)

__all__ = [
    "BLOCK_SAMPLES",
    "BLOCK_SECONDS",
    "SAMPLE_RATE",
    "AudioConverter",
    "AudioFile",
    "AudioSink",
    "AudioSource",
    "CameraTrack",
    "CapturedFrame",
    "MemoryView",
    "MicrophoneTrack",
    "Mixer",
    "Program",
    "RenderedFrame",
    "Sequence",
    "Silence",
    "Tone",
    "VideoSource",
    "VideoView",
    "VirtualCamera",
    "VirtualMicrophone",
    "VirtualSpeaker",
    "audio_frame_to_mono",
    "dominant_frequency",
    "frame_to_bgr",
    "read_stamp",
    "render",
    "rms_dbfs",
    "stamp",
    "tone_present",
]
