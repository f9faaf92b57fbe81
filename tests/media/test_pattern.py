"""The frame stamp reads back after compression, scaling, cropping, padding and rotation."""

from __future__ import annotations

import time

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from callclient.media.pattern import read_stamp, stamp
from callclient.media.render import render
from callclient.types import FillMode, Rotation, VideoRenderParams

COUNTER = 0xDEADBEEF
CAPTURE_TIME = 1_763_000_000.123456


def _stamped(width: int = 640, height: int = 360) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    stamp(image, COUNTER, CAPTURE_TIME)
    return image


def _jpeg(image: npt.NDArray[np.uint8], quality: int) -> npt.NDArray[np.uint8]:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.asarray(cv2.imdecode(data, cv2.IMREAD_COLOR), dtype=np.uint8)


def test_round_trip_exact() -> None:
    """The counter and the microsecond capture time read back from the untouched frame."""
    counter, capture_time = read_stamp(_stamped()) or (None, None)
    assert counter == COUNTER
    assert capture_time == pytest.approx(CAPTURE_TIME, abs=1e-6)


def test_counter_wraps_at_32_bits() -> None:
    """Counters beyond 32 bits are stored modulo 2**32."""
    image = np.zeros((360, 640, 3), dtype=np.uint8)
    stamp(image, 2**32 + 5, 1.0)
    assert read_stamp(image) == (5, 1.0)


def test_no_stamp_reads_none() -> None:
    """Frames without a stamp, uniform or noisy, read as None."""
    rng = np.random.default_rng(3)
    assert read_stamp(np.zeros((360, 640, 3), dtype=np.uint8)) is None
    assert read_stamp(np.full((720, 1280, 3), 255, dtype=np.uint8)) is None
    for _ in range(5):
        assert read_stamp(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)) is None


def test_corrupted_stamp_fails_checksum() -> None:
    """Flipping one data cell makes the checksum fail, so the reading is None."""
    image = np.zeros((360, 640, 3), dtype=np.uint8)
    stamp(image, 42, 1234.5)
    cell = 12  # 360 / 30
    y = 180 - 54 + 3 * cell + cell // 2  # a data row
    x = 320 - 96 + 5 * cell + cell // 2
    image[y - 3 : y + 3, x - 3 : x + 3] = 255 - image[y, x]
    assert read_stamp(image) is None


def test_jpeg_quality_30() -> None:
    """JPEG at quality 30 keeps the stamp readable."""
    found = read_stamp(_jpeg(_stamped(), 30))
    assert found is not None
    assert found[0] == COUNTER
    assert found[1] == pytest.approx(CAPTURE_TIME, abs=1e-6)


def test_half_size_then_jpeg() -> None:
    """Halving the size (to 320x180) and JPEG at quality 30 keep the stamp readable."""
    half = cv2.resize(_stamped(), (320, 180), interpolation=cv2.INTER_AREA)
    assert read_stamp(_jpeg(np.asarray(half, dtype=np.uint8), 30)) is not None
    assert read_stamp(np.asarray(half, dtype=np.uint8))[0] == COUNTER  # type: ignore[index]


@pytest.mark.parametrize("fill_mode", [FillMode.FILL, FillMode.FIT])
@pytest.mark.parametrize("view", [(360, 360), (180, 320), (320, 180), (640, 480), (400, 240)])
@pytest.mark.parametrize("rotation", list(Rotation))
def test_rendered_views(
    fill_mode: FillMode, view: tuple[int, int], rotation: Rotation
) -> None:
    """Every fill mode, rotation and view shape (incl. 16:9 into 9:16 FILL) keeps the stamp.

    The stamp needs about 60 px on the short side of the visible picture (cells >= 2 px) and
    survives FILL crops down to 16:9 into 9:16 (a 2:1 view of a 9:16 picture cuts it).
    """
    image = _stamped(1280, 720)
    rendered = render(image, VideoRenderParams(fill_mode, rotation), view)
    found = read_stamp(rendered)
    assert found is not None
    assert found[0] == COUNTER


def test_rotation_search_can_be_disabled() -> None:
    """With rotations=False a rotated stamp is not found; upright it still is."""
    image = _stamped()
    assert read_stamp(np.rot90(image), rotations=False) is None
    assert read_stamp(image, rotations=False) is not None


def test_stamp_is_centred_and_small() -> None:
    """The stamp only touches the centre (within 16/30 x 9/30 of the short side plus margin)."""
    image = np.zeros((360, 640, 3), dtype=np.uint8)
    stamp(image, 1, 1.0)
    ys, xs = np.nonzero(image[:, :, 0])
    assert xs.min() >= 320 - 102 and xs.max() < 320 + 102
    assert ys.min() >= 180 - 60 and ys.max() < 180 + 60


def test_read_speed_note() -> None:
    """Reading a 640x360 stamp is fast enough for per-frame analysis (prints ms per read)."""
    image = _jpeg(_stamped(), 50)
    start = time.perf_counter()
    for _ in range(20):
        assert read_stamp(image) is not None
    per_read = (time.perf_counter() - start) / 20 * 1000
    print(f"read_stamp 640x360: {per_read:.2f} ms")
    assert per_read < 50
