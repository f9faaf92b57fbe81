"""The demo (``make demo``) as a subprocess: it ends by itself and writes a stamped PNG."""

from __future__ import annotations

import time
from pathlib import Path

import cv2

from callclient.media.pattern import read_stamp
from tests.helpers.apps import run_module


async def test_demo_runs_and_writes_png(tmp_path: Path) -> None:
    """``python -m callclient demo --seconds 3`` (``make demo``) exits 0 with events and a PNG."""
    out = tmp_path / "out"
    started = time.monotonic()
    code, stdout, stderr = await run_module(
        "callclient", "demo", "--seconds", "3", "--out", str(out), timeout=60
    )
    elapsed = time.monotonic() - started
    assert code == 0, stdout + stderr
    assert "Traceback" not in stderr
    assert elapsed < 20, elapsed
    for line in ("bob: on_call_received", "alice: on_call_begin", "bob: on_call_begin",
                 "alice: on_call_end", "bob exited with status 0"):
        assert line in stdout, stdout
    assert "bob -> alice:" in stdout and "alice -> bob:" in stdout
    assert "latency median" in stdout and "fps" in stdout
    image = cv2.imread(str(out / "alice-sees-bob.png"))
    assert image is not None and image.shape == (360, 640, 3)
    found = read_stamp(image)
    assert found is not None and found[0] > 0
    assert (out / "bob-recordings" / "alice.mp4").stat().st_size > 10_000


async def test_group_demo_runs_through_janus(tmp_path: Path) -> None:
    """``callclient demo --group`` (``make demo-group``): a Janus subprocess, two bots, video
    every way, both recordings of alice; exits 0 and stops everything."""
    out = tmp_path / "out"
    code, stdout, stderr = await run_module(
        "callclient", "demo", "--group", "--seconds", "3", "--out", str(out), timeout=110
    )
    assert code == 0, stdout + stderr
    assert "Traceback" not in stderr
    assert "janus (VideoRoom) at http://127.0.0.1:" in stdout
    for line in ("bob -> alice:", "carol -> alice:", "alice -> bob:", "alice -> carol:",
                 "bob exited with status 0", "carol exited with status 0"):
        assert line in stdout, stdout
    for name in ("bob", "carol"):
        assert (out / f"{name}-recordings" / "alice.mp4").stat().st_size > 10_000
