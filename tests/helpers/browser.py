"""Headless Chromium from Debian, driven by Selenium through ``chromium-driver``, for the tests
of the browser client (``signaling_server/webclient/``).

* No Selenium Manager and no network: the driver is ``Service(executable_path=CHROMEDRIVER)``
  (Selenium then never looks for a driver of its own) and ``SE_OFFLINE=true`` guards the rest;
  ``--host-resolver-rules`` leaves Chromium no name to resolve but ``localhost``, and the
  background services that would phone home are off.
* Fake camera and microphone: :func:`make_capture_files` writes a 320x240 15 fps Y4M clip and
  a WAV tone (numpy, no ffmpeg), which Chromium loops as its camera and microphone;
  ``--use-fake-ui-for-media-stream`` grants them without a prompt (and turns off the mDNS
  hiding of ICE candidates, as does the disabled ``WebRtcHideLocalIpsWithMdns``).
* One Chromium per :class:`Browser`, with a fresh profile in a temporary directory (Crashpad
  and caches too, through ``XDG_*``), removed at :meth:`Browser.quit`. A :class:`Tab` is one
  page of it: two users in one Chromium cost one start and less memory than two Chromiums.
* Selenium blocks; every call here runs in a thread (``asyncio.to_thread``) so the server and
  the Python engines of the test keep running on the event loop. One lock serializes the
  driver between tabs.

Missing ``chromium`` / ``chromium-driver`` fail the test with the packages to install.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("SE_OFFLINE", "true")  # only "true" works (not "1")
os.environ.setdefault("SE_AVOID_STATS", "true")
os.environ.pop("SE_CHROMEDRIVER", None)  # it would win over executable_path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.helpers.waits import T

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "DEBIAN_PACKAGES",
    "MIC_HZ",
    "Browser",
    "CaptureFiles",
    "Tab",
    "make_capture_files",
    "spki_hash",
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEBIAN_PACKAGES = ("chromium", "chromium-driver")

MIC_HZ = 660.0
"""The tone of the fake microphone (the Python bots play 440 Hz)."""

VIDEO_SIZE = (320, 240)

_ARGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--metrics-recording-only",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--password-store=basic",
    "--use-mock-keychain",
    # Keep timers and media running in pages nobody looks at.
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--autoplay-policy=no-user-gesture-required",
    # No DNS but localhost: Chromium otherwise looks up Google services at start.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--window-size=900,700",
)


@dataclass(frozen=True)
class CaptureFiles:
    """The fake camera (Y4M) and microphone (WAV) files Chromium loops."""

    video: Path
    audio: Path


def make_capture_files(directory: Path, seconds: float = 2.0) -> CaptureFiles:
    """A moving 320x240 15 fps I420 clip and a 48 kHz mono :data:`MIC_HZ` tone at half scale."""
    directory.mkdir(parents=True, exist_ok=True)
    width, height = VIDEO_SIZE
    fps = 15
    video = directory / "camera.y4m"
    x = np.arange(width, dtype=np.int32)
    y = np.arange(height, dtype=np.int32)[:, None]
    with video.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for n in range(int(seconds * fps)):
            luma = ((x + y + 8 * n) % 256).astype(np.uint8)
            luma[:, (n * 10) % width : (n * 10) % width + 12] = 255  # a moving bar
            chroma = np.full((height // 2, width // 2), 128, dtype=np.uint8)
            out.write(b"FRAME\n" + luma.tobytes() + chroma.tobytes() + chroma.tobytes())
    audio = directory / "microphone.wav"
    rate = 48000
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.5 * 32767 * np.sin(2 * np.pi * MIC_HZ * t)).astype("<i2")
    with wave.open(str(audio), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return CaptureFiles(video, audio)


def spki_hash(cert_pem: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)): what ``--ignore-certificate-errors-spki-list``
    takes to trust exactly that certificate's key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _check_installed() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"the browser tests need {' and '.join(missing)}: apt-get install "
            f"{' '.join(DEBIAN_PACKAGES)} (make installs them when run as root)"
        )


class Browser:
    """One headless Chromium; open pages with :meth:`tab`. Always :meth:`quit` it."""

    def __init__(self, capture: CaptureFiles, extra_args: tuple[str, ...] = ()) -> None:
        _check_installed()
        self.root = Path(tempfile.mkdtemp(prefix="chromium-test-"))
        options = Options()
        options.binary_location = CHROMIUM
        for arg in (*_ARGS, *extra_args):
            options.add_argument(arg)
        options.add_argument(f"--user-data-dir={self.root / 'profile'}")
        options.add_argument(f"--use-file-for-fake-video-capture={capture.video.resolve()}")
        options.add_argument(f"--use-file-for-fake-audio-capture={capture.audio.resolve()}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        env = {**os.environ, "XDG_CONFIG_HOME": str(self.root / "xdg-config"),
               "XDG_CACHE_HOME": str(self.root / "xdg-cache")}
        service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull, env=env)
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.driver.set_script_timeout(3 * T)
        self.lock = threading.Lock()
        self._first_tab_used = False
        self.console: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, capture: CaptureFiles, extra_args: tuple[str, ...] = ()) -> Browser:
        """Start Chromium (in a thread: it takes a second or more)."""
        return await asyncio.to_thread(cls, capture, extra_args)

    async def tab(self, url: str) -> Tab:
        """A new page showing ``url`` (the first call uses the window Chromium opened)."""

        def open_tab() -> str:
            with self.lock:
                if self._first_tab_used:
                    self.driver.switch_to.new_window("tab")
                self._first_tab_used = True
                self.driver.get(url)
                return str(self.driver.current_window_handle)

        return Tab(self, await asyncio.to_thread(open_tab))

    def run(self, handle: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(driver)`` with the driver on the page ``handle`` (blocking; under the lock)."""
        with self.lock:
            try:
                current = self.driver.current_window_handle
            except Exception:  # the current page was closed
                current = None
            if current != handle:
                self.driver.switch_to.window(handle)
            return fn(self.driver)

    def console_errors(self) -> list[str]:
        """Console messages of level SEVERE since the last call (errors in the pages)."""
        with self.lock:
            entries = self.driver.get_log("browser")
        self.console.extend(entries)
        return [str(e.get("message")) for e in entries if e.get("level") == "SEVERE"]

    async def reset(self) -> None:
        """Close every page but one and leave that one blank (between tests)."""

        def blank() -> None:
            with self.lock:
                handles = list(self.driver.window_handles)
                for handle in handles[1:]:
                    self.driver.switch_to.window(handle)
                    self.driver.close()
                self.driver.switch_to.window(handles[0])
                self.driver.get("about:blank")
                self._first_tab_used = False

        await asyncio.to_thread(blank)

    def close(self) -> None:
        """Close Chromium and remove its profile (blocking). Idempotent."""
        with self.lock:
            if not self.root.exists():
                return
            with contextlib.suppress(Exception):
                self.console.extend(self.driver.get_log("browser"))
            with contextlib.suppress(Exception):
                self.driver.quit()
            shutil.rmtree(self.root, ignore_errors=True)

    async def quit(self) -> None:
        """:meth:`close`, in a thread."""
        await asyncio.to_thread(self.close)


class Tab:
    """One page of a :class:`Browser`; every method runs the driver in a thread."""

    def __init__(self, browser: Browser, handle: str) -> None:
        self.browser = browser
        self.handle = handle

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        return await asyncio.to_thread(self.browser.run, self.handle, fn)

    async def js(self, expression: str) -> Any:
        """The JSON-able value of a JavaScript expression."""
        return await self._run(lambda d: d.execute_script(f"return ({expression});"))

    async def js_async(self, expression: str) -> Any:
        """The value a JavaScript promise expression resolves to."""
        script = (
            "const done = arguments[arguments.length - 1];"
            f"Promise.resolve({expression}).then(done, e => done({{__error: String(e)}}));"
        )
        value = await self._run(lambda d: d.execute_async_script(script))
        if isinstance(value, dict) and "__error" in value:
            raise AssertionError(f"{expression} failed in the page: {value['__error']}")
        return value

    async def click(self, element_id: str) -> None:
        """Click the element with that id, as a user would."""
        await self._run(lambda d: d.find_element(By.ID, element_id).click())

    async def type(self, element_id: str, text: str) -> None:
        """Replace the text of an input with ``text``, typed."""

        def fill(driver: Any) -> None:
            element = driver.find_element(By.ID, element_id)
            element.clear()
            element.send_keys(text)

        await self._run(fill)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the page as it is now."""
        await self._run(lambda d: d.save_screenshot(str(path)))
        return path

    async def close(self) -> None:
        """Close this page (the browser stays)."""
        await self._run(lambda d: d.close())
