"""Draw a frame into a view: rotation, then FILL (cover and crop) or FIT (letterbox).

Exact geometry, with ``w x h`` the rotated image and ``W x H`` the view, and every division
rounded half up in integers (``(2 * a + b) // (2 * b)``):

* FILL: crop the largest centred region with the view's aspect: ``cw = min(w, round(h*W/H))``,
  ``ch = min(h, round(w*H/W))``, offsets ``((w - cw) // 2, (h - ch) // 2)``; resize it to W x H.
* FIT: scale to fit: when ``w * H >= W * h`` the content is ``W x max(1, round(h*W/w))``, else
  ``max(1, round(w*H/h)) x H``; it is placed at ``((W - cw) // 2, (H - ch) // 2)`` on black.

Resizing uses ``cv2.INTER_AREA`` when neither side grows and ``cv2.INTER_LINEAR`` otherwise;
a region that already has the target size is copied without interpolation.
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
    """Resize to ``size`` (w, h): INTER_AREA when shrinking, INTER_LINEAR when growing."""
    width, height = size
    src_h, src_w = image.shape[:2]
    if (src_w, src_h) == (width, height):
        return np.ascontiguousarray(image)
    shrinking = width <= src_w and height <= src_h
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    result = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=method)
    return np.asarray(result, dtype=np.uint8)


def _check_size(size: tuple[int, int]) -> None:
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"view size must be positive, got {size[0]}x{size[1]}")


def render(image: Image, params: VideoRenderParams, size: tuple[int, int] | None) -> Image:
    """Render a BGR image for a view of ``size`` (w, h), or rotation only when ``size`` is None.

    May return ``image`` itself when nothing changes (rotation 0 and the same size).
    """
    rotated = rotate(image, params.rotation)
    if size is None:
        return rotated
    _check_size(size)
    height, width = rotated.shape[:2]
    if (width, height) == tuple(size):
        return rotated
    if FillMode(params.fill_mode) is FillMode.FILL:
        x, y, crop_w, crop_h = fill_crop(width, height, size)
        return resize(rotated[y : y + crop_h, x : x + crop_w], size)
    x, y, box_w, box_h = fit_box(width, height, size)
    canvas = np.zeros((size[1], size[0], *rotated.shape[2:]), dtype=rotated.dtype)
    canvas[y : y + box_h, x : x + box_w] = resize(rotated, (box_w, box_h))
    return canvas
