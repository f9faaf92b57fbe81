"""Draw a frame into a view: rotation, then FILL (cover and crop) or FIT (letterbox).

Exact geometry, with ``w x h`` the rotated image and ``W x H`` the view, and every division
rounded half up in integers (``(2 * a + b) // (2 * b)``):

* FILL: crop the largest centred region with the view's aspect: ``cw = min(w, round(h*W/H))``,
  ``ch = min(h, round(w*H/W))``, offsets ``((w - cw) // 2, (h - ch) // 2)``; resize it to W x H.
* FIT: scale to fit: when ``w * H >= W * h`` the content is ``W x max(1, round(h*W/w))``, else
  ``max(1, round(w*H/h)) x H``; it is placed at ``((W - cw) // 2, (H - ch) // 2)`` on black.

Resizing averages k x k pixel blocks (``cv2.INTER_AREA`` by the whole factor k) when both sides
shrink by 2x or more, then ``cv2.INTER_LINEAR`` for what is left;
a region that already has the target size is copied without interpolation. When the view is
smaller than the region shown, the region is scaled before it is rotated (same pixels, fewer
to move), which keeps a rotated 720p frame within the 2 ms budget.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from callclient.types import FillMode, Rotation, VideoRenderParams

__all__ = ["fill_crop", "fit_box", "render", "resize", "rotate"]

Image = npt.NDArray[np.uint8]
_CV2_ROTATIONS = {
    1: cv2.ROTATE_90_CLOCKWISE,
    2: cv2.ROTATE_180,
    3: cv2.ROTATE_90_COUNTERCLOCKWISE,
}


def _div_round(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def rotate(image: Image, rotation: Rotation) -> Image:
    """Rotate clockwise by 0/90/180/270 degrees; returns ``image`` itself for 0."""
    turns = int(rotation) % 4
    if turns == 0:
        return image
    return np.asarray(cv2.rotate(np.ascontiguousarray(image), _CV2_ROTATIONS[turns]), np.uint8)


def fill_crop(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """FILL's source crop ``(x, y, w, h)`` of a ``width x height`` image for a view ``size``."""
    view_w, view_h = size
    crop_w = min(width, _div_round(height * view_w, view_h))
    crop_h = min(height, _div_round(width * view_h, view_w))
    crop_w, crop_h = max(crop_w, 1), max(crop_h, 1)
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def fit_box(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """FIT's content box ``(x, y, w, h)`` inside a view ``size`` for a ``width x height`` image."""
    view_w, view_h = size
    if width * view_h >= view_w * height:
        box_w, box_h = view_w, max(1, min(view_h, _div_round(height * view_w, width)))
    else:
        box_w, box_h = max(1, min(view_w, _div_round(width * view_h, height))), view_h
    return (view_w - box_w) // 2, (view_h - box_h) // 2, box_w, box_h


def resize(image: Image, size: tuple[int, int]) -> Image:
    """Resize to ``size`` (w, h): block averaging when shrinking 2x or more, then linear."""
    width, height = size
    src_h, src_w = image.shape[:2]
    if (src_w, src_h) == (width, height):
        return np.ascontiguousarray(image)
    source = np.ascontiguousarray(image)
    factor = min(src_w // width, src_h // height)
    if factor >= 2:
        # Shrinking 2x or more: average k x k blocks (INTER_AREA) against aliasing. OpenCV's
        # INTER_AREA is fast only for whole factors, so average by the whole factor k first
        # (on the largest centred part whose sides divide by k) and do the rest linearly.
        whole_w, whole_h = src_w // factor, src_h // factor
        x0, y0 = (src_w - whole_w * factor) // 2, (src_h - whole_h * factor) // 2
        block = source[y0 : y0 + whole_h * factor, x0 : x0 + whole_w * factor]
        source = np.asarray(
            cv2.resize(block, (whole_w, whole_h), interpolation=cv2.INTER_AREA), np.uint8
        )
        if (whole_w, whole_h) == (width, height):
            return np.asarray(source, dtype=np.uint8)
    # Mild shrinking or growing: INTER_LINEAR looks the same and costs far less.
    result = cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(result, dtype=np.uint8)


def _check_size(size: tuple[int, int]) -> None:
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"view size must be positive, got {size[0]}x{size[1]}")


def _source_region(
    turns: int, width: int, height: int, region: tuple[int, int, int, int]
) -> tuple[slice, slice]:
    """Rows and columns of the unrotated image that rotate onto ``region`` (x, y, w, h).

    ``width x height`` is the unrotated image; the region is in rotated coordinates.
    """
    x, y, w, h = region
    if turns == 1:  # rotated[r, c] = image[height - 1 - c, r]
        return slice(height - x - w, height - x), slice(y, y + h)
    if turns == 2:  # rotated[r, c] = image[height - 1 - r, width - 1 - c]
        return slice(height - y - h, height - y), slice(width - x - w, width - x)
    if turns == 3:  # rotated[r, c] = image[c, width - 1 - r]
        return slice(x, x + w), slice(width - y - h, width - y)
    return slice(y, y + h), slice(x, x + w)


def _rotated_resize(
    image: Image, turns: int, region: tuple[int, int, int, int], size: tuple[int, int]
) -> Image:
    """``resize(rotate(image)[region], size)``, moving as few pixels as possible.

    The region is cut from the unrotated image first; then whichever is smaller, the region
    or the result, is the one rotated (the region is resized to the transposed size first
    for quarter turns). A quarter turn and a separable resize commute: the pixels are equal.
    """
    height, width = image.shape[:2]
    rows, cols = _source_region(turns, width, height, region)
    crop = image[rows, cols]
    if turns == 0:
        return resize(crop, size)
    if size[0] * size[1] >= region[2] * region[3]:
        return resize(rotate(crop, Rotation(turns)), size)
    pre_size = (size[1], size[0]) if turns % 2 else size
    return rotate(resize(crop, pre_size), Rotation(turns))


def render(image: Image, params: VideoRenderParams, size: tuple[int, int] | None) -> Image:
    """Render a BGR image for a view of ``size`` (w, h), or rotation only when ``size`` is None.

    May return ``image`` itself when nothing changes (rotation 0 and the same size).
    """
    turns = int(params.rotation) % 4
    if size is None:
        return rotate(image, Rotation(turns))
    _check_size(size)
    src_h, src_w = image.shape[:2]
    width, height = (src_h, src_w) if turns % 2 else (src_w, src_h)
    if (width, height) == tuple(size):
        return rotate(image, Rotation(turns))
    if FillMode(params.fill_mode) is FillMode.FILL:
        return _rotated_resize(image, turns, fill_crop(width, height, size), size)
    x, y, box_w, box_h = fit_box(width, height, size)
    canvas = np.zeros((size[1], size[0], *image.shape[2:]), dtype=image.dtype)
    canvas[y : y + box_h, x : x + box_w] = _rotated_resize(
        image, turns, (0, 0, width, height), (box_w, box_h)
    )
    return canvas
