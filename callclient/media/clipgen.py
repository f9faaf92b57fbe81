"""Generate a short synthetic motion clip, the encoder benchmarks' ``bench/assets/motion.mp4``.

The clip is deterministic (fixed seed) and built from the virtual camera's look: its colour
bars and grey ramp as the backdrop, a textured band that pans like a moving camera, a few
shapes on different paths, and the :mod:`~callclient.media.pattern` stamp changing every
frame. That mix keeps a real-time encoder busy at every preset's bitrate, the way camera
footage does, while staying small enough (about 1.5 MB) to commit.

The clip is benchmark media, not shipped in the package: ``scripts/make-motion-clip`` (or
``python -m callclient.media.clipgen PATH``) regenerates the checkout's copy.
"""

from __future__ import annotations

import argparse
import fractions
import math
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

from callclient.media.pattern import stamp
from callclient.media.virtual import VirtualCamera

__all__ = [
    "CLIP_FPS",
    "CLIP_SECONDS",
    "CLIP_SIZE",
    "draw_motion_frame",
    "main",
    "make_motion_clip",
]

CLIP_SIZE = (960, 540)
CLIP_FPS = 30
CLIP_SECONDS = 10.0
CLIP_BITRATE = 1_200_000
_SEED = 20240604
_EPOCH = 1_700_000_000.0

Image = npt.NDArray[np.uint8]


class _Scene:
    """The static parts of the clip, drawn once."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        camera = VirtualCamera(width, height, fps=CLIP_FPS, label="motion clip")
        self.backdrop = camera.draw(0, _EPOCH)
        rng = np.random.default_rng(_SEED)
        # A wide texture of blurred noise plus stripes: panned across the middle band.
        band_h = height // 3
        noise = rng.integers(0, 256, (band_h, width * 3, 3), dtype=np.uint8)
        texture = cv2.GaussianBlur(noise, (0, 0), 2.0)
        xs = np.arange(width * 3)
        stripes = (np.sin(xs / 9.0) * 40).astype(np.int16)[None, :, None]
        self.texture = np.clip(texture.astype(np.int16) + stripes, 0, 255).astype(np.uint8)
        self.band_top = height // 6
        self.colours = [tuple(int(c) for c in rng.integers(40, 256, 3)) for _ in range(6)]


def draw_motion_frame(scene_size: tuple[int, int], index: int, fps: float = CLIP_FPS) -> Image:
    """Draw frame ``index`` of the motion clip at ``scene_size`` (w, h) as BGR."""
    scene = _scene(scene_size)
    width, height = scene.width, scene.height
    t = index / fps
    image = scene.backdrop.copy()
    band_h = scene.texture.shape[0]
    offset = int((t * 90.0) % (scene.texture.shape[1] - width))  # pan at 90 px/s
    top = scene.band_top
    image[top : top + band_h] = scene.texture[:, offset : offset + width]
    for k, colour in enumerate(scene.colours):
        phase = t * (0.4 + 0.15 * k) + k
        cx = int(width * (0.5 + 0.42 * math.sin(phase * 2 * math.pi / 3)))
        cy = int(height * (0.5 + 0.4 * math.cos(phase * 2 * math.pi / 4 + k)))
        radius = max(6, height // (10 + k))
        if k % 2:
            cv2.circle(image, (cx, cy), radius, colour, -1, cv2.LINE_AA)
        else:
            angle = (t * 60 * (k + 1)) % 360
            box = cv2.boxPoints(((cx, cy), (radius * 2.2, radius * 1.4), angle))
            cv2.fillConvexPoly(image, box.astype(np.int32), colour, cv2.LINE_AA)
    stamp(image, index, _EPOCH + t)
    return image


_SCENES: dict[tuple[int, int], _Scene] = {}


def _scene(size: tuple[int, int]) -> _Scene:
    if size not in _SCENES:
        _SCENES[size] = _Scene(*size)
    return _SCENES[size]


def make_motion_clip(
    path: Path,
    size: tuple[int, int] = CLIP_SIZE,
    fps: int = CLIP_FPS,
    seconds: float = CLIP_SECONDS,
    bitrate: int = CLIP_BITRATE,
) -> Path:
    """Write the motion clip (H.264 in MP4, yuv420p) to ``path`` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = round(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"preset": "medium", "g": str(fps * 2)}
        stream.codec_context.time_base = fractions.Fraction(1, fps)
        for index in range(frames):
            image = draw_motion_frame(size, index, fps)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
            frame.pts = index
            frame.time_base = fractions.Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m callclient.media.clipgen PATH``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("path", type=Path, help="the MP4 file to write")
    args = parser.parse_args(argv)
    out = make_motion_clip(args.path)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
