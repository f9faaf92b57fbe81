"""Rendering cost: fill/fit and rotation of a 720p frame, against a bare resize.

For every fill mode and rotation, a 1280x720 frame of the virtual camera is rendered into
views of three shapes (the 1280x720 tile of a full-HD window, a 640x360 tile, a 480x640
portrait tile). The baseline, in the same run, is the straightforward renderer with the same
geometry (:func:`callclient.media.render.fill_crop` / ``fit_box``): ``cv2.rotate`` of the whole
frame, then ``cv2.resize`` with INTER_AREA of the region shown. The issue's target is <= 2 ms
per 720p frame; the ratio says what the project's ordering (cut, then scale or rotate whichever
is smaller) and whole-factor averaging save.

Run: ``python -m bench.render`` or ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from bench.machine import stamp
from callclient.media.render import fill_crop, fit_box, render
from callclient.media.virtual import VirtualCamera
from callclient.types import FillMode, Rotation, VideoRenderParams

__all__ = ["main"]

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "render.json"
TARGET_MS = 2.0
VIEWS: tuple[tuple[int, int], ...] = ((1280, 720), (640, 360), (480, 640))

Image = npt.NDArray[np.uint8]


_ROTATE = {1: cv2.ROTATE_90_CLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_COUNTERCLOCKWISE}


def naive_render(frame: Image, params: VideoRenderParams, size: tuple[int, int]) -> Image:
    """The baseline: rotate everything, then resize the region shown with INTER_AREA."""
    turns = int(params.rotation)
    rotated = cv2.rotate(frame, _ROTATE[turns]) if turns else frame
    height, width = rotated.shape[:2]
    if params.fill_mode is FillMode.FILL:
        x, y, w, h = fill_crop(width, height, size)
        region = rotated[y : y + h, x : x + w]
        return np.asarray(cv2.resize(region, size, interpolation=cv2.INTER_AREA), np.uint8)
    x, y, w, h = fit_box(width, height, size)
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    canvas[y : y + h, x : x + w] = cv2.resize(rotated, (w, h), interpolation=cv2.INTER_AREA)
    return canvas


def _median_ms(work: Callable[[], object], repeat: int) -> float:
    work()  # warm caches and OpenCV's thread pool
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def run(repeat: int) -> list[dict[str, Any]]:
    """Median ms per frame for every view x fill mode x rotation, and the naive baseline's."""
    frame: Image = VirtualCamera(1280, 720).draw(1, time.time())
    rows = []
    for view in VIEWS:
        for fill in FillMode:
            for rotation in Rotation:
                params = VideoRenderParams(fill, rotation)
                ms = _median_ms(partial(render, frame, params, view), repeat)
                baseline = _median_ms(partial(naive_render, frame, params, view), repeat)
                rows.append({
                    "view": f"{view[0]}x{view[1]}",
                    "fill_mode": fill.name,
                    "rotation": rotation.degrees,
                    "ms": round(ms, 3),
                    "baseline_ms": round(baseline, 3),
                    "ratio": round(ms / baseline, 2) if baseline > 0 else None,
                    "met": ms <= TARGET_MS,
                })
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``bench/results/render.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--repeat", type=int, default=200, help="frames timed per case")
    args = parser.parse_args(argv)
    rows = run(args.repeat)
    print(f"{'view':>9} {'mode':>4} {'rot':>3} {'ms':>7} {'naive ms':>9} {'ratio':>5}  <= 2 ms")
    for row in rows:
        print(f"{row['view']:>9} {row['fill_mode']:>4} {row['rotation']:>3} {row['ms']:7.3f} "
              f"{row['baseline_ms']:9.3f} {row['ratio']:5.2f}  "
              f"{'yes' if row['met'] else 'NO'}")
    worst = max(rows, key=lambda r: r["ms"])
    print(f"worst: {worst['ms']:.3f} ms ({worst['view']} {worst['fill_mode']} "
          f"{worst['rotation']} deg); {sum(r['met'] for r in rows)}/{len(rows)} within 2 ms")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    report = stamp({"target_ms": TARGET_MS, "rows": rows})  # commit, machine, calibration
    RESULTS_PATH.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
