"""Fixtures of the system tests: a private X server, and a private PulseAudio server.

:func:`display` is a fresh Xvfb display per test (:mod:`tests.helpers.xvfb`) for the desktop
app's tests.

A private PulseAudio server for the sounddevice tests, reached by PortAudio through ALSA.

The session fixture :func:`pulse` starts ``pulseaudio`` with a socket, runtime and home in a
temporary directory (never the user's or the system's server) and these devices:

* null sinks ``speakerphone`` and ``earpiece`` (48 kHz mono s16), whose monitors tests record;
* a ``sine660`` source (a 660 Hz sine) that serves as a microphone;
* a null sink ``room`` whose monitor is the microphone ``roommic``: a test that loads a
  loopback from a speaker's monitor into ``room`` hears that speaker in the microphone (an
  echo path), and can play a near-end talker into ``room`` too.

An ALSA configuration added through ``ALSA_CONFIG_PATH`` defines one ALSA PCM of the ``pulse``
plugin per device (and makes ``default`` PulseAudio), so PortAudio's ALSA host API lists
devices named ``speakerphone``, ``earpiece`` and ``sine660``. Missing programs or libraries
fail the test with the Debian packages to install: :data:`DEBIAN_PACKAGES`.

Test modules load it with ``pytest_plugins = ("pulse_fixture",)``.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers.xvfb import xvfb_display

__all__ = [
    "DEBIAN_PACKAGES",
    "MIC_FREQ",
    "PulseServer",
    "Recording",
    "display",
    "pulse",
]

DEBIAN_PACKAGES = ("pulseaudio", "pulseaudio-utils", "libasound2-plugins", "libportaudio2")
"""What the sounddevice tests need on Debian/Ubuntu."""

MIC_FREQ = 660.0
"""Frequency of the ``sine660`` source."""

SINKS = ("speakerphone", "earpiece")
ROOM = "room"
"""The null sink whose monitor is the ``roommic`` microphone."""
_RATE = 48000
_START_TIMEOUT = 10.0
_ALSA_CONF = """\
pcm.!default { type pulse }
ctl.!default { type pulse }
"""
_ALSA_PCM = (
    'pcm.{name} {{ type pulse device "{device}" hint {{ show on description "{name}" }} }}\n'
)


@dataclass
class Recording:
    """``parec`` recording one PulseAudio source (a sink's ``.monitor``) as raw 48 kHz s16."""

    source: str
    path: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start recording and wait until samples arrive."""
        with self.path.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                "parec", "-d", self.source, f"--rate={_RATE}", "--channels=1",
                "--format=s16le", "--raw", "--latency-msec=10",
                stdout=out, stderr=asyncio.subprocess.PIPE, env=self.env,
            )
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                while self.path.stat().st_size < 2 * 480:
                    if self.process.returncode is not None:
                        break
                    await asyncio.sleep(0.01)
        except TimeoutError:
            await self.stop()
            pytest.fail(f"parec -d {self.source} recorded nothing within {_START_TIMEOUT:g} s")
        if self.process.returncode is not None:
            assert self.process.stderr is not None
            error = (await self.process.stderr.read()).decode()
            pytest.fail(f"parec -d {self.source} exited: {error.strip()}")

    async def stop(self) -> npt.NDArray[np.int16]:
        """Stop recording; every sample recorded."""
        process, self.process = self.process, None
        if process is not None:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(5.0):
                    await process.communicate()
            except TimeoutError:
                process.kill()
                await process.wait()
        return self.samples()

    def samples(self) -> npt.NDArray[np.int16]:
        """The samples recorded so far."""
        data = self.path.read_bytes()
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)


@dataclass
class PulseServer:
    """The running test server: its directory, client environment and devices."""

    directory: Path
    env: dict[str, str]
    """Environment for PulseAudio clients (``parec``, ``pactl``)."""
    sinks: tuple[str, ...] = SINKS
    room: str = ROOM
    room_mic: str = "roommic"
    mic: str = "sine660"
    mic_freq: float = MIC_FREQ
    _count: list[int] = field(default_factory=lambda: [0])

    def recording(self, sink: str) -> Recording:
        """A recording of ``sink``'s monitor (call ``start()``)."""
        self._count[0] += 1
        path = self.directory / f"{sink}-{self._count[0]}.raw"
        return Recording(f"{sink}.monitor", path, self.env)

    def pactl(self, *args: str) -> str:
        """Run ``pactl`` against this server; its output."""
        return subprocess.run(
            ["pactl", *args], env=self.env, check=True, capture_output=True, text=True,
            timeout=_START_TIMEOUT,
        ).stdout


@pytest.fixture
def display(tmp_path: Path) -> Iterator[str]:
    """A fresh Xvfb 1280x800x24 display; fails with the packages to install if tools lack."""
    with xvfb_display(tmp_path) as name:
        yield name


def _missing_requirements() -> list[str]:
    missing = [tool for tool in ("pulseaudio", "pactl", "parec") if shutil.which(tool) is None]
    if not glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so") and not glob.glob(
        "/usr/lib/alsa-lib/libasound_module_pcm_pulse.so"
    ):
        missing.append("the ALSA pulse plugin (libasound_module_pcm_pulse.so)")
    if ctypes.util.find_library("portaudio") is None:
        missing.append("the PortAudio library")
    if not Path("/usr/share/alsa/alsa.conf").is_file():
        missing.append("/usr/share/alsa/alsa.conf")
    return missing


def _refresh_portaudio() -> None:
    """Make an already imported sounddevice re-read the device list (new ALSA config)."""
    module = sys.modules.get("sounddevice")
    if module is not None:
        module._terminate()
        module._initialize()


def _anchor_latency(server: PulseServer) -> list[subprocess.Popen[bytes]]:
    """Record every sink's monitor at 10 ms latency for the session.

    A null sink runs at a 2 s latency unless a client asks for less, and the ALSA pulse
    plugin's streams do not ask: PortAudio would then stall for seconds between callbacks.
    A low-latency monitor recording makes the sinks run at 10 ms, like a sound card.
    """
    anchors = [
        subprocess.Popen(
            ["parec", "-d", f"{sink}.monitor", "--latency-msec=10", "--raw"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server.env,
        )
        for sink in (*server.sinks, server.room)
    ]
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        configured = [
            int(v) for v in re.findall(r"configured (\d+) usec", server.pactl("list", "sinks"))
        ]
        if len(configured) == len(server.sinks) + 1 and max(configured) <= 20000:
            return anchors
        if time.monotonic() > deadline:
            for anchor in anchors:
                anchor.kill()
            pytest.fail(f"the null sinks did not switch to a low latency: {configured} usec")
        time.sleep(0.02)


def _warm_up(sounddevice: Any, sinks: tuple[str, ...]) -> None:
    """Play silence until every sink's PortAudio stream runs smoothly.

    The first streams after the server starts stall for a while at their first buffer; the
    tests must not measure that start-up.
    """
    deadline = time.monotonic() + _START_TIMEOUT
    for sink in sinks:
        while True:
            calls = [0]

            def callback(outdata: Any, frames: int, time_info: Any, status: Any) -> None:
                outdata.fill(0)
                calls[0] += 1  # noqa: B023 (each stream is closed before the next is made)

            with sounddevice.OutputStream(
                samplerate=_RATE, channels=1, dtype="int16", blocksize=960, device=sink,
                callback=callback,
            ):
                time.sleep(0.3)
            if calls[0] >= 12:  # 15 blocks in 0.3 s when smooth, 3 when stalled
                break
            if time.monotonic() > deadline:
                pytest.fail(f"PortAudio playback to {sink} keeps stalling")


@pytest.fixture(scope="session")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    """A private PulseAudio server with the test sinks and source, visible to PortAudio."""
    if sys.platform != "linux":
        pytest.fail("the sounddevice tests need Linux with PulseAudio")
    missing = _missing_requirements()
    if missing:
        pytest.fail(
            f"cannot start the test PulseAudio server: missing {', '.join(missing)}; install "
            f"the Debian packages: apt-get install {' '.join(DEBIAN_PACKAGES)}"
        )
    directory = tmp_path_factory.mktemp("pulse")
    home, runtime = directory / "home", directory / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    socket = runtime / "native"
    client_conf = directory / "client.conf"
    client_conf.write_text("autospawn = no\n")
    alsa_conf = directory / "asound.conf"
    devices = [(sink, sink) for sink in SINKS] + [("sine660", "sine660"),
                                                  ("roommic", f"{ROOM}.monitor")]
    alsa_conf.write_text(
        _ALSA_CONF + "".join(_ALSA_PCM.format(name=n, device=d) for n, d in devices)
    )
    client_env = {
        "PULSE_SERVER": f"unix:{socket}",
        "PULSE_CLIENTCONFIG": str(client_conf),
        "PULSE_COOKIE": str(directory / "cookie"),
        "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{alsa_conf}",
    }
    server_env = {
        **os.environ,
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
    }
    server_env.pop("PULSE_SERVER", None)
    sink_args = f"rate={_RATE} channels=1 format=s16le"
    command = [
        "pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--system=false", "-n",
        "--use-pid-file=no", "--disable-shm=yes", "--log-target=stderr",
        f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
        *(f"--load=module-null-sink sink_name={sink} {sink_args}" for sink in (*SINKS, ROOM)),
        f"--load=module-sine-source source_name=sine660 rate={_RATE} frequency={MIC_FREQ:g}",
    ]
    log_path = directory / "pulseaudio.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=server_env,
            start_new_session=True,
        )
    patch = pytest.MonkeyPatch()
    anchors: list[subprocess.Popen[bytes]] = []
    try:
        for key, value in client_env.items():
            patch.setenv(key, value)
        server = PulseServer(directory, {**os.environ})
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"pulseaudio exited with {process.returncode}:\n"
                            f"{log_path.read_text(errors='replace')}")
            try:
                server.pactl("info")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    pytest.fail(f"pulseaudio did not answer within {_START_TIMEOUT:g} s:\n"
                                f"{log_path.read_text(errors='replace')}")
                time.sleep(0.05)
        anchors = _anchor_latency(server)
        _refresh_portaudio()
        import sounddevice

        names = {str(d["name"]) for d in sounddevice.query_devices()}
        absent = [name for name, _ in devices if name not in names]
        if absent:
            pytest.fail(f"PortAudio does not list the ALSA devices {absent} (it lists "
                        f"{sorted(names)}); is libasound2-plugins installed?")
        _warm_up(sounddevice, server.sinks)
        yield server
    finally:
        for anchor in anchors:
            anchor.terminate()
            anchor.wait(5.0)
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        patch.undo()
        _refresh_portaudio()
