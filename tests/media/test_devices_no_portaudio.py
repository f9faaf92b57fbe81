"""Without the PortAudio library: real audio devices fail saying what to install, while the
virtual devices, the cameras and ``callclient devices`` keep working.

Each test runs Python in a subprocess where ``ctypes.util.find_library`` finds no PortAudio,
so the real ``sounddevice`` module fails to import exactly as on a machine without
libportaudio2 (``OSError: PortAudio library not found``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from callclient.errors import ErrorCode

T = 60.0

HIDE_PORTAUDIO = """\
import ctypes.util, sys
assert "sounddevice" not in sys.modules
_find_library = ctypes.util.find_library
ctypes.util.find_library = lambda name: None if "portaudio" in name else _find_library(name)
"""

DEVICES_SCRIPT = """\
import asyncio, json
import numpy as np
from callclient.errors import DeviceError
from callclient.media.analysis import tone_present
from callclient.media.devices import (
    SoundDeviceMicrophone, SoundDeviceSpeaker, list_devices, real_devices)
from callclient.media.deviceset import DeviceSet
from callclient.media.mixer import Mixer
from callclient.types import AudioPlaybackDevice, Camera

async def main():
    out = {}
    try:
        import sounddevice
        out["import"] = "ok"
    except OSError as exc:
        out["import"] = str(exc)
    real = real_devices()
    for key, start in (
        ("speaker", lambda: real.speakers[AudioPlaybackDevice.SPEAKERPHONE].start(Mixer().pull)),
        ("microphone", lambda: real.microphone.start()),
    ):
        try:
            await start()
            out[key] = None
        except DeviceError as exc:
            out[key] = [exc.code, exc.message]
    listed = list_devices()
    out["audio_error"] = listed.audio_error
    virtual = DeviceSet.virtual("x")
    mic = virtual.microphone
    await mic.start()
    blocks = [await mic.read() for _ in range(10)]
    out["mic_tone"] = tone_present(np.concatenate(blocks), 440.0)
    camera = virtual.cameras[Camera.FRONT]
    await camera.start()
    out["frames"] = [(await camera.read()).index for _ in range(3)]
    mixer = Mixer()
    for block in blocks:
        mixer.push("remote", block)
    speaker = virtual.speakers[AudioPlaybackDevice.SPEAKERPHONE]
    await speaker.start(mixer.pull)
    await asyncio.sleep(0.3)
    await speaker.stop()
    out["speaker_tone"] = tone_present(speaker.samples()[: 10 * 960], 440.0)
    print(json.dumps(out))

asyncio.run(main())
"""


def run_without_portaudio(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter that cannot find the PortAudio library."""
    return subprocess.run(
        [sys.executable, "-c", HIDE_PORTAUDIO + textwrap.dedent(script)],
        capture_output=True, text=True, timeout=T,
    )


def test_audio_devices_fail_with_install_hint_and_virtual_devices_work() -> None:
    """sounddevice cannot load; the speaker and microphone raise DeviceError -1321 / -1302
    naming libportaudio2; list_devices reports it; virtual camera, mic and speaker work."""
    result = run_without_portaudio(DEVICES_SCRIPT)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["import"] == "PortAudio library not found"
    speaker_code, speaker_message = out["speaker"]
    assert speaker_code == ErrorCode.SPEAKER_START_FAIL
    assert "apt-get install libportaudio2" in speaker_message
    assert "brew install portaudio" in speaker_message
    mic_code, mic_message = out["microphone"]
    assert mic_code == ErrorCode.MIC_START_FAIL
    assert "apt-get install libportaudio2" in mic_message
    assert "libportaudio2" in out["audio_error"]
    assert out["mic_tone"] is True
    assert out["frames"] == [0, 1, 2]
    assert out["speaker_tone"] is True


def test_devices_command_lists_cameras_and_says_what_to_install() -> None:
    """``callclient devices`` still prints its table, exits 1 and names the package."""
    result = run_without_portaudio(
        "from callclient.apps.devices_cmd import main\nraise SystemExit(main([]))\n"
    )
    assert result.returncode == 1, result.stderr
    assert "Cameras:" in result.stdout
    assert "Speakers:" in result.stdout
    assert "apt-get install libportaudio2" in result.stderr
    result = run_without_portaudio(
        "from callclient.apps.devices_cmd import main\nraise SystemExit(main(['--json']))\n"
    )
    assert result.returncode == 1
    listed = json.loads(result.stdout)
    assert listed["microphones"] == [] and listed["speakers"] == []
    assert "libportaudio2" in listed["audio_error"]
