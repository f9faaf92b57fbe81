"""The stamp survives VP8 at 300 kbit/s on frames downscaled to 320x180."""

from __future__ import annotations

import fractions
import time

import av
import cv2
import numpy as np

from callclient.media.pattern import read_stamp
from callclient.media.tracks import frame_to_bgr
from callclient.media.virtual import VirtualCamera

FRAMES = 45


def test_vp8_low_bitrate_round_trip() -> None:
    """Every decoded frame of a 300 kbit/s VP8 stream yields the right counter and time."""
    camera = VirtualCamera(1280, 720, label="vp8")
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = 320, 180
    encoder.pix_fmt = "yuv420p"
    encoder.bit_rate = 300_000
    encoder.time_base = fractions.Fraction(1, 30)
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    decoder = av.CodecContext.create("vp8", "r")
    start = time.time()
    decoded: list[tuple[int, float] | None] = []
    for index in range(FRAMES):
        image = camera.draw(index, start + index / 30)
        small = cv2.resize(image, (320, 180), interpolation=cv2.INTER_AREA)
        frame = av.VideoFrame.from_ndarray(np.asarray(small, dtype=np.uint8), format="bgr24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = index
        for packet in encoder.encode(frame):
            decoded += [read_stamp(frame_to_bgr(f)) for f in decoder.decode(packet)]
    for packet in encoder.encode(None):
        decoded += [read_stamp(frame_to_bgr(f)) for f in decoder.decode(packet)]
    assert len(decoded) == FRAMES
    for index, found in enumerate(decoded):
        assert found is not None, f"frame {index} unreadable"
        assert found[0] == index
        assert abs(found[1] - (start + index / 30)) < 1e-5
