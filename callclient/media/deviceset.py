"""The devices an engine uses: cameras by :class:`Camera`, a microphone, speakers by route.

A :class:`DeviceSet` holds device *instances*; the engine starts and stops them as the call
needs. :meth:`DeviceSet.virtual` builds one made only of virtual devices, for bots, tests and
machines without hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from callclient.media.base import AudioSink, AudioSource, VideoSource
from callclient.media.devicewatch import DeviceProbe
from callclient.media.virtual import Program, Tone, VirtualCamera, VirtualMicrophone, VirtualSpeaker
from callclient.types import AudioPlaybackDevice, Camera

__all__ = ["DeviceSet"]


@dataclass
class DeviceSet:
    """Cameras, microphone and speakers of one engine."""

    cameras: dict[Camera, VideoSource] = field(default_factory=dict)
    microphone: AudioSource | None = None
    speakers: dict[AudioPlaybackDevice, AudioSink] = field(default_factory=dict)
    probe: DeviceProbe | None = None
    """How the engine sees the system's devices change (real devices; None: they cannot)."""

    @classmethod
    def virtual(
        cls,
        label: str = "",
        *,
        width: int = 640,
        height: int = 360,
        fps: float = 30.0,
        program: Program | None = None,
        speaker_wav: dict[AudioPlaybackDevice, str | Path] | None = None,
        keep_seconds: float = 60.0,
    ) -> DeviceSet:
        """Virtual front/back cameras, a microphone (a 440 Hz tone by default) and speakers.

        ``speaker_wav`` names WAV files the virtual speakers write what they play to.
        """
        wavs = speaker_wav or {}
        return cls(
            cameras={
                Camera.FRONT: VirtualCamera(width, height, fps, name="virtual front camera",
                                            label=label),
                Camera.BACK: VirtualCamera(width, height, fps, name="virtual back camera",
                                           label=f"{label} (back)" if label else "back"),
            },
            microphone=VirtualMicrophone(
                program if program is not None else Tone(440.0, 0.3)
            ),
            speakers={
                route: VirtualSpeaker(
                    keep_seconds=keep_seconds,
                    wav_path=wavs.get(route),
                    name=f"virtual {route.name.lower()}",
                )
                for route in AudioPlaybackDevice
            },
        )
