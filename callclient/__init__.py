"""callclient: an asyncio WebRTC call client with a TUICallEngine-style API.

Everything an application needs is importable from here::

    from callclient import CallEngine, CallObserver, CallMediaType, DeviceSet

The names live in private-by-convention modules (``callclient.engine``,
``callclient.media.virtual``, ...) and are re-exported here; ``docs/architecture.md`` says
which module holds what. The types and errors are loaded at once (they are small); the rest is
loaded on first use, so importing a light module such as :mod:`callclient.media.levels` does
not pull in aiortc or OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from callclient.errors import *  # noqa: F403
from callclient.errors import __all__ as _errors_all
from callclient.types import *  # noqa: F403
from callclient.types import __all__ as _types_all
from callwire.version import __version__

if TYPE_CHECKING:
    from callclient.callstate import CallInfo
    from callclient.engine import CallEngine
    from callclient.media.base import (
        AudioSink,
        AudioSource,
        CapturedFrame,
        MemoryView,
        RenderedFrame,
        VideoSource,
        VideoView,
    )
    from callclient.media.devices import (
        OpenCVCamera,
        SoundDeviceMicrophone,
        SoundDeviceSpeaker,
        list_devices,
        real_devices,
    )
    from callclient.media.deviceset import DeviceSet
    from callclient.media.filesource import FileVideoSource
    from callclient.media.pattern import read_stamp
    from callclient.media.processing import AudioProcessing, ProcessingStats
    from callclient.media.remote import AudioTap, RemoteStats
    from callclient.media.virtual import (
        AudioFile,
        Sequence,
        Silence,
        Tone,
        VirtualCamera,
        VirtualMicrophone,
        VirtualSpeaker,
    )
    from callclient.observer import (
        CallEvent,
        CallObserver,
        EventQueueObserver,
        EventRecorder,
        Notification,
    )
    from callclient.peer import IceServer


_LAZY: dict[str, str] = {
    "CallEngine": "callclient.engine",
    "CallInfo": "callclient.callstate",
    "RemoteStats": "callclient.media.remote",
    "AudioTap": "callclient.media.remote",
    "CallObserver": "callclient.observer",
    "CallEvent": "callclient.observer",
    "EventRecorder": "callclient.observer",
    "EventQueueObserver": "callclient.observer",
    "Notification": "callclient.observer",
    "IceServer": "callclient.peer",
    "DeviceSet": "callclient.media.deviceset",
    "AudioSink": "callclient.media.base",
    "AudioSource": "callclient.media.base",
    "CapturedFrame": "callclient.media.base",
    "MemoryView": "callclient.media.base",
    "RenderedFrame": "callclient.media.base",
    "VideoSource": "callclient.media.base",
    "VideoView": "callclient.media.base",
    "VirtualCamera": "callclient.media.virtual",
    "VirtualMicrophone": "callclient.media.virtual",
    "VirtualSpeaker": "callclient.media.virtual",
    "Tone": "callclient.media.virtual",
    "Silence": "callclient.media.virtual",
    "Sequence": "callclient.media.virtual",
    "AudioFile": "callclient.media.virtual",
    "FileVideoSource": "callclient.media.filesource",
    "OpenCVCamera": "callclient.media.devices",
    "SoundDeviceMicrophone": "callclient.media.devices",
    "SoundDeviceSpeaker": "callclient.media.devices",
    "list_devices": "callclient.media.devices",
    "real_devices": "callclient.media.devices",
    "read_stamp": "callclient.media.pattern",
    "AudioProcessing": "callclient.media.processing",
    "ProcessingStats": "callclient.media.processing",
}
"""Public names loaded on first use, and the module each lives in."""

__all__ = [
    *_types_all,
    *_errors_all,
    "AudioFile",
    "AudioProcessing",
    "AudioSink",
    "AudioSource",
    "AudioTap",
    "CallEngine",
    "CallEvent",
    "CallInfo",
    "CallObserver",
    "CapturedFrame",
    "DeviceSet",
    "EventQueueObserver",
    "EventRecorder",
    "FileVideoSource",
    "IceServer",
    "MemoryView",
    "Notification",
    "OpenCVCamera",
    "ProcessingStats",
    "RemoteStats",
    "RenderedFrame",
    "Sequence",
    "Silence",
    "SoundDeviceMicrophone",
    "SoundDeviceSpeaker",
    "Tone",
    "VideoSource",
    "VideoView",
    "VirtualCamera",
    "VirtualMicrophone",
    "VirtualSpeaker",
    "list_devices",
    "read_stamp",
    "real_devices",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'callclient' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
