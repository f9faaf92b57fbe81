"""What every benchmark result carries: the commit, the date, the machine and a calibration.

A figure from another machine, or from this one on a busier day, only means something next
to a measure of how fast the machine was *in the same run*. :func:`calibrate` is that
measure: the project's own VP8 encoder (:class:`callclient.media.encoding.VideoEncoder`, the
same settings a call uses) encoding the first seconds of the fixed clip
``bench/assets/motion.mp4`` scaled to 1280x720, in ms per frame, three passes (median and
spread). :func:`stamp` adds it, with :func:`machine_info`, to a result dict; :func:`header`
is the line the markdown tables start with.

Run alone: ``python -m bench.machine`` prints both.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["CALIBRATION_CLIP", "calibrate", "header", "machine_info", "main", "stamp"]

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_CLIP = ROOT / "bench" / "assets" / "motion.mp4"
_CALIBRATION_FRAMES = 60
_CALIBRATION_SIZE = (1280, 720)
_CALIBRATION_BITRATE = 1_200_000


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The commit (and whether the tree had changes), the UTC date, CPU model and cores."""
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "commit": _git("rev-parse", "--short=12", "HEAD") or "unknown",
        "dirty": dirty,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count() or 1,
        "cpus_usable": usable,
        "load_average_1m": round(load[0], 2),
        "python": platform.python_version(),
    }


def _clip_frames() -> list[Any]:
    import av

    frames = []
    with av.open(str(CALIBRATION_CLIP)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= _CALIBRATION_FRAMES:
                break
            scaled = frame.reformat(
                width=_CALIBRATION_SIZE[0], height=_CALIBRATION_SIZE[1], format="yuv420p"
            )
            scaled.pts = index * 3000  # 30 fps on the 90 kHz clock
            frames.append(scaled)
    if not frames:
        raise RuntimeError(f"no frames in the calibration clip {CALIBRATION_CLIP}")
    return frames


def calibrate(passes: int = 3) -> dict[str, Any]:
    """VP8 720p encode ms/frame of the fixed clip: median of ``passes`` passes, and spread."""
    from fractions import Fraction

    from callclient.media.encoding import VideoEncoder

    frames = _clip_frames()
    results = []
    for _ in range(passes):
        encoder = VideoEncoder("VP8")
        times = []
        for frame in frames:
            frame.time_base = Fraction(1, 90000)
            started = time.perf_counter()
            encoder.encode(frame, _CALIBRATION_BITRATE)
            times.append(time.perf_counter() - started)
        encoder.close()
        # The first frames open the codec and are keyframes: not the steady cost.
        results.append(statistics.mean(times[5:]) * 1000.0)
    return {
        "what": f"VP8 {_CALIBRATION_SIZE[0]}x{_CALIBRATION_SIZE[1]} encode, project settings, "
                f"{len(frames)} frames of {CALIBRATION_CLIP.name}, ms/frame",
        "ms_per_frame": round(statistics.median(results), 2),
        "min": round(min(results), 2),
        "max": round(max(results), 2),
        "passes": [round(r, 2) for r in results],
    }


def stamp(results: dict[str, Any], calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """``results`` with ``machine`` (see :func:`machine_info`) and ``calibration`` added."""
    machine = results.get("machine") if isinstance(results.get("machine"), dict) else {}
    results["machine"] = {**(machine or {}), **machine_info()}
    results["calibration"] = calibration if calibration is not None else calibrate()
    return results


def header(results: dict[str, Any]) -> str:
    """One markdown line: commit, date, CPU, cores, calibration figure."""
    m, c = results["machine"], results["calibration"]
    dirty = " (uncommitted changes)" if m.get("dirty") else ""
    return (
        f"commit `{m['commit']}`{dirty}, {m['date']}, {m['cpu_model']}, {m['cpus']} CPUs "
        f"(load {m['load_average_1m']} at the end); calibration: VP8 720p encode "
        f"{c['ms_per_frame']} ms/frame ({c['min']}-{c['max']}, {len(c['passes'])} passes)"
    )


def main(argv: list[str] | None = None) -> int:
    """Print the machine and its calibration as JSON."""
    print(json.dumps(stamp({}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
