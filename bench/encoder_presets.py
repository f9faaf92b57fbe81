"""Encoder presets: exact frame size and send bitrate per preset, against aiortc's encoder.

For every resolution preset in both modes (and for VP8 and H.264), 10 s of
``bench/assets/motion.mp4`` is scaled like the camera track scales (FILL) to the preset size,
fed at the clip's frame rate on a simulated clock and encoded by the project's
:class:`~callclient.media.encoding.VideoEncoder` at the preset's recommended bitrate. The
packets go through aiortc's own ``pack()`` (what the RTP sender does with them), so the
measured bitrate is RTP payload bits / media seconds. Every packet is decoded to check the
frame size.

Baseline, in the same run: aiortc's own encoder (``Vp8Encoder`` / ``H264Encoder``) asked for
the same bitrate through ``target_bitrate`` (what REMB does), which clamps it to its bounds
(VP8 0.25..1.5 Mbit/s, H.264 0.5..3 Mbit/s). Figures are ratios; nothing here asserts on
wall-clock time. ``ok`` means the size is exact and the bitrate within -25 %/+10 %.

Run: ``python -m bench.encoder_presets [--codecs VP8,H264] [--seconds 10]`` or ``make bench``.
"""

from __future__ import annotations

import argparse
import fractions
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from bench.machine import stamp
from callclient.media.encoding import VideoEncoder
from callclient.media.render import render
from callclient.types import (
    FillMode,
    Resolution,
    ResolutionMode,
    VideoRenderParams,
    resolution_bitrate_kbps,
    resolution_size,
)

__all__ = ["PresetResult", "main", "run"]

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "encoder_presets.json"
CLIP_PATH = Path(__file__).resolve().parent / "assets" / "motion.mp4"
"""The motion clip (benchmark media, not in the package; ``scripts/make-motion-clip``)."""
LOW, HIGH = 0.75, 1.10
_CLOCK = 90000
_FILL = VideoRenderParams(fill_mode=FillMode.FILL)

Image = npt.NDArray[np.uint8]


@dataclass
class PresetResult:
    """One preset x mode x codec measurement."""

    codec: str
    preset: str
    mode: str
    width: int
    height: int
    size_ok: bool
    target_kbps: int
    measured_kbps: float
    ratio: float
    encode_ms: float
    keyframes: int
    baseline_kbps: float
    baseline_ratio: float
    baseline_encode_ms: float

    @property
    def ok(self) -> bool:
        """Size exact and bitrate within -25 %/+10 % of the recommendation."""
        return self.size_ok and LOW <= self.ratio <= HIGH


def load_clip(path: Path, seconds: float) -> tuple[list[Image], float]:
    """Decode up to ``seconds`` of the clip as BGR images; returns (images, fps)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        images: list[Image] = []
        for frame in container.decode(stream):
            images.append(np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8))
            if len(images) >= round(seconds * fps):
                break
    return images, fps


def _scaled(image: Image, size: tuple[int, int], index: int, fps: float) -> av.VideoFrame:
    scaled = render(image, _FILL, size)
    yuv = np.asarray(cv2.cvtColor(scaled, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = round(index * _CLOCK / fps)
    frame.time_base = fractions.Fraction(1, _CLOCK)
    return frame


def _aiortc_encoder(codec: str) -> Encoder:
    return Vp8Encoder() if codec == "VP8" else H264Encoder()


def _decoder(codec: str) -> av.VideoCodecContext:
    return av.CodecContext.create("vp8" if codec == "VP8" else "h264", "r")


def measure(
    codec: str,
    resolution: Resolution,
    mode: ResolutionMode,
    images: list[Image],
    fps: float,
) -> PresetResult:
    """Encode the clip at one preset with the project's encoder and with aiortc's."""
    size = resolution_size(resolution, mode)
    target = resolution_bitrate_kbps(resolution) * 1000
    duration = len(images) / fps
    ours = VideoEncoder(codec)
    packer = _aiortc_encoder(codec)
    decoder = _decoder(codec)
    baseline = _aiortc_encoder(codec)
    baseline.target_bitrate = target  # type: ignore[attr-defined]
    bits = baseline_bits = 0
    baseline_seconds = 0.0
    sizes: set[tuple[int, int]] = set()
    decoded = 0
    for index, image in enumerate(images):
        for packet in ours.encode(_scaled(image, size, index, fps), target):
            payloads, _ = packer.pack(packet)
            bits += 8 * sum(len(p) for p in payloads)
            for out in decoder.decode(packet):
                sizes.add((out.width, out.height))
                decoded += 1
        frame = _scaled(image, size, index, fps)
        started = time.perf_counter()
        payloads, _ = baseline.encode(frame, index == 0)
        baseline_seconds += time.perf_counter() - started
        baseline_bits += 8 * sum(len(p) for p in payloads)
    measured = bits / duration / 1000
    baseline_kbps = baseline_bits / duration / 1000
    return PresetResult(
        codec=codec,
        preset=resolution.name.removeprefix("RESOLUTION_"),
        mode=mode.name.lower(),
        width=size[0],
        height=size[1],
        size_ok=sizes == {size} and decoded == len(images),
        target_kbps=target // 1000,
        measured_kbps=round(measured, 1),
        ratio=round(measured * 1000 / target, 3),
        encode_ms=round(ours.encode_seconds / ours.encodes * 1000, 2),
        keyframes=ours.keyframes,
        baseline_kbps=round(baseline_kbps, 1),
        baseline_ratio=round(baseline_kbps * 1000 / target, 3),
        baseline_encode_ms=round(baseline_seconds / len(images) * 1000, 2),
    )


def run(codecs: list[str], seconds: float, clip: Path) -> list[PresetResult]:
    """Measure every preset in both modes for each codec."""
    images, fps = load_clip(clip, seconds)
    results = []
    for codec in codecs:
        for resolution in Resolution:
            for mode in ResolutionMode:
                results.append(measure(codec, resolution, mode, images, fps))
    return results


def _table(results: list[PresetResult]) -> str:
    header = (
        f"{'codec':5} {'preset':10} {'mode':9} {'size ok':7} {'target':>7} {'measured':>9} "
        f"{'ratio':>6} {'enc ms':>7} {'kf':>3} | {'aiortc':>7} {'ratio':>6} {'enc ms':>7}  ok"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.codec:5} {r.preset:10} {r.mode:9} {'yes' if r.size_ok else 'NO':7} "
            f"{r.target_kbps:7d} {r.measured_kbps:9.1f} {r.ratio:6.3f} {r.encode_ms:7.2f} "
            f"{r.keyframes:3d} | {r.baseline_kbps:7.1f} {r.baseline_ratio:6.3f} "
            f"{r.baseline_encode_ms:7.2f}  {'ok' if r.ok else 'FAIL'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON results; 1 if a preset fails."""
    parser = argparse.ArgumentParser(description="encoder presets benchmark")
    parser.add_argument("--codecs", default="VP8,H264")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clip", type=Path, default=CLIP_PATH)
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    codecs = [c.strip().upper() for c in args.codecs.split(",") if c.strip()]
    results = run(codecs, args.seconds, args.clip)
    print(f"encoder presets: {args.seconds:g} s of {args.clip.name}, bitrate = RTP payload "
          f"bits / media seconds; ok = exact size and ratio in [{LOW}, {HIGH}]")
    print(_table(results))
    for codec in codecs:
        rows = [r for r in results if r.codec == codec]
        ours = sum(r.encode_ms for r in rows)
        theirs = sum(r.baseline_encode_ms for r in rows)
        hit = sum(1 for r in rows if LOW <= r.baseline_ratio <= HIGH)
        print(f"{codec}: encode time project/aiortc {ours / max(theirs, 1e-9):.2f} "
              f"(summed over presets); aiortc reaches the target in {hit}/{len(rows)} presets")
    report: dict[str, Any] = {
        "clip": args.clip.name,
        "seconds": args.seconds,
        "bounds": [LOW, HIGH],
        "results": [asdict(r) | {"ok": r.ok} for r in results],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    stamp(report)  # commit, date, machine and this run's calibration figure
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
