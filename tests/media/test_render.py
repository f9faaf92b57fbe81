"""render(): rotation, FILL and FIT geometry, pixel-exact against explicit index arithmetic."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import pytest

from callclient.media.render import fill_crop, fit_box, render
from callclient.types import FillMode, Rotation, VideoRenderParams

Image = npt.NDArray[np.uint8]


def _distinct(width: int, height: int) -> Image:
    """An image whose every pixel (and channel) has a different value, when small."""
    values = np.arange(width * height * 3, dtype=np.int64).reshape(height, width, 3)
    return ((values * 7 + 3) % 251).astype(np.uint8)


def _rotate_reference(src: Image, rotation: Rotation) -> Image:
    """Clockwise rotation by explicit index arithmetic."""
    h, w = src.shape[:2]
    turns = int(rotation)
    out_h, out_w = (h, w) if turns % 2 == 0 else (w, h)
    out = np.zeros((out_h, out_w, 3), dtype=np.uint8)
    for y in range(out_h):
        for x in range(out_w):
            if turns == 0:
                out[y, x] = src[y, x]
            elif turns == 1:  # 90 clockwise: the left column becomes the top row
                out[y, x] = src[h - 1 - x, y]
            elif turns == 2:
                out[y, x] = src[h - 1 - y, w - 1 - x]
            else:
                out[y, x] = src[x, w - 1 - y]
    return out


def _unrotate(rotated: Image, rotation: Rotation) -> Image:
    """The source that rotates (clockwise) to ``rotated``: a counterclockwise turn."""
    src = rotated
    for _ in range(int(rotation)):
        h, w = src.shape[:2]
        out = np.zeros((w, h, 3), dtype=np.uint8)
        for y in range(w):
            for x in range(h):
                out[y, x] = src[x, w - 1 - y]  # counterclockwise
        src = out
    return src


def _blocks(base: Image, k: int) -> Image:
    """Every pixel of ``base`` blown up to a k x k block (explicit loops)."""
    h, w = base.shape[:2]
    out = np.zeros((h * k, w * k, 3), dtype=np.uint8)
    for y in range(h * k):
        for x in range(w * k):
            out[y, x] = base[y // k, x // k]
    return out


def _crop_reference(base: Image, view: tuple[int, int]) -> Image:
    vw, vh = view
    h, w = base.shape[:2]
    oy, ox = (h - vh) // 2, (w - vw) // 2
    out = np.zeros((vh, vw, 3), dtype=np.uint8)
    for y in range(vh):
        for x in range(vw):
            out[y, x] = base[y + oy, x + ox]
    return out


def _pad_reference(base: Image, view: tuple[int, int]) -> Image:
    vw, vh = view
    h, w = base.shape[:2]
    oy, ox = (vh - h) // 2, (vw - w) // 2
    out = np.zeros((vh, vw, 3), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            out[y + oy, x + ox] = base[y, x]
    return out


ROTATIONS = list(Rotation)
SHAPES = {"landscape": (7, 5), "portrait": (5, 7), "square": (5, 5)}

# (view, {source kind: base size}) where the base has one side equal to the view's and an even
# excess (FILL) or deficit (FIT) on the other, so crop and pad offsets are whole blocks.
FILL_CASES = {
    "landscape-view": ((5, 3), {"landscape": (9, 3), "portrait": (5, 7), "square": (5, 5)}),
    "portrait-view": ((3, 5), {"landscape": (7, 5), "portrait": (3, 7), "square": (5, 5)}),
    "square-view": ((3, 3), {"landscape": (5, 3), "portrait": (3, 5), "square": (3, 3)}),
}
FIT_CASES = {
    "landscape-view": ((5, 3), {"landscape": (5, 1), "portrait": (1, 3), "square": (3, 3)}),
    "portrait-view": ((3, 5), {"landscape": (3, 1), "portrait": (1, 5), "square": (3, 3)}),
    "square-view": ((5, 5), {"landscape": (5, 3), "portrait": (3, 5), "square": (5, 5)}),
}


@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_rotation_only(rotation: Rotation, shape: str) -> None:
    """With size None only the clockwise rotation is applied, pixel for pixel."""
    src = _distinct(*SHAPES[shape])
    expected = _rotate_reference(src, rotation)
    for mode in FillMode:
        out = render(src, VideoRenderParams(mode, rotation), None)
        assert out.shape == expected.shape
        assert np.array_equal(out, expected)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("source", ["landscape", "portrait", "square"])
@pytest.mark.parametrize("case", list(FILL_CASES))
def test_fill_exact(case: str, source: str, rotation: Rotation, k: int) -> None:
    """FILL crops centred (offset = excess // 2) then scales; exact for whole-block scaling."""
    view, bases = FILL_CASES[case]
    base = _distinct(*bases[source])
    src = _unrotate(_blocks(base, k), rotation)
    out = render(src, VideoRenderParams(FillMode.FILL, rotation), view)
    assert out.shape == (view[1], view[0], 3)
    assert np.array_equal(out, _crop_reference(base, view))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("source", ["landscape", "portrait", "square"])
@pytest.mark.parametrize("case", list(FIT_CASES))
def test_fit_exact(case: str, source: str, rotation: Rotation, k: int) -> None:
    """FIT scales to fit and pads with black centred (offset = deficit // 2)."""
    view, bases = FIT_CASES[case]
    base = _distinct(*bases[source])
    src = _unrotate(_blocks(base, k), rotation)
    out = render(src, VideoRenderParams(FillMode.FIT, rotation), view)
    assert out.shape == (view[1], view[0], 3)
    assert np.array_equal(out, _pad_reference(base, view))


@pytest.mark.parametrize(
    ("src", "view", "box"),
    [
        ((4, 2), (9, 9), (0, 2, 9, 5)),  # 2 * 9 / 4 = 4.5 rounds up to 5; (9 - 5) // 2 = 2
        ((2, 4), (9, 9), (2, 0, 5, 9)),
        ((3, 2), (8, 7), (0, 1, 8, 5)),  # 16 / 3 = 5.33 -> 5; (7 - 5) // 2 = 1
    ],
)
def test_fit_upscale_geometry(
    src: tuple[int, int], view: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    """FIT upscaling: the content box is where hand computation puts it; the rest is black."""
    assert fit_box(src[0], src[1], view) == box
    image = np.full((src[1], src[0], 3), 200, dtype=np.uint8)
    out = render(image, VideoRenderParams(FillMode.FIT), view)
    x, y, w, h = box
    expected = np.zeros((view[1], view[0], 3), dtype=np.uint8)
    expected[y : y + h, x : x + w] = 200
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    ("src", "view", "crop"),
    [
        ((16, 9), (7, 7), (3, 0, 9, 9)),  # (16 - 9) // 2 = 3
        ((9, 16), (5, 3), (0, 5, 9, 5)),  # 9 * 3 / 5 = 5.4 -> 5; (16 - 5) // 2 = 5
        ((10, 10), (3, 2), (0, 1, 10, 7)),  # 10 * 2 / 3 = 6.67 -> 7; (10 - 7) // 2 = 1
        ((10, 3), (3, 2), (2, 0, 5, 3)),  # 3 * 3 / 2 = 4.5 rounds up to 5; (10 - 5) // 2 = 2
    ],
)
def test_fill_crop_geometry(
    src: tuple[int, int], view: tuple[int, int], crop: tuple[int, int, int, int]
) -> None:
    """FILL's source crop rounds sizes half up and offsets down, as hand-computed."""
    assert fill_crop(src[0], src[1], view) == crop


def test_fill_upscale_uniform() -> None:
    """FILL upscaling covers the whole view (no black) for an odd-size view."""
    image = np.full((3, 5, 3), 90, dtype=np.uint8)
    out = render(image, VideoRenderParams(FillMode.FILL, Rotation.ROTATION_90), (11, 13))
    assert out.shape == (13, 11, 3)
    assert np.all(out == 90)


def test_invalid_size() -> None:
    """A non-positive view size is rejected."""
    with pytest.raises(ValueError, match="positive"):
        render(_distinct(4, 4), VideoRenderParams(), (0, 5))


def test_render_speed_note() -> None:
    """Rendering a 720p frame into common views is cheap (prints ms per frame)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    cases = [
        (VideoRenderParams(FillMode.FILL), (640, 360)),
        (VideoRenderParams(FillMode.FILL, Rotation.ROTATION_90), (360, 640)),
        (VideoRenderParams(FillMode.FIT), (480, 480)),
        (VideoRenderParams(FillMode.FILL), (1920, 1080)),
    ]
    for params, view in cases:
        start = time.perf_counter()
        for _ in range(10):
            render(image, params, view)
        per_frame = (time.perf_counter() - start) / 10 * 1000
        print(f"render 1280x720 -> {view} {params}: {per_frame:.2f} ms")
        assert per_frame < 100
