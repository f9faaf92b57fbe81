"""A machine-readable stamp (frame counter + capture time) drawn into video frames.

The stamp is a grid of 16 x 9 black/white cells centred in the frame, with cell size
``min(width, height) / 30`` (12 px at 640x360, 6 px at 320x180), plus a half-cell grey margin.
Row 0 holds a fixed sync pattern; rows 1..8 hold 128 bits, big-endian: the 32-bit counter,
the 64-bit capture time in microseconds and a CRC-32 of those 12 bytes.

Because the stamp sits at the centre and covers at most 16/30 of the short side by 9/30 of it,
it survives every *centred* transformation a receiver applies: uniform scaling, FILL crop
(down to a 16:9 frame cropped into a 9:16 view, or the reverse), FIT padding and 90-degree
rotations, as long as the visible picture keeps about 60 px on its short side (cells >= 2 px).
:func:`read_stamp` does not need to know the transformation: it searches the cell size (and
optionally the four rotations) and accepts a reading only when the sync row and the CRC match.
"""

from __future__ import annotations

import logging
import struct
import zlib

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["STAMP_COLS", "STAMP_ROWS", "read_stamp", "stamp", "stamp_cell_size"]

logger = logging.getLogger(__name__)

STAMP_COLS = 16
STAMP_ROWS = 9
_CELL_DIVISOR = 30.0
_MIN_CELL = 2.0
_STEP = 1.02
_MIN_CONTRAST = 40.0
_SYNC = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
_GREY = 128


def stamp_cell_size(width: int, height: int) -> float:
    """The stamp's cell size in pixels for a frame of this size."""
    return min(width, height) / _CELL_DIVISOR


def _payload_bits(counter: int, capture_time: float) -> npt.NDArray[np.bool_]:
    micros = round(capture_time * 1_000_000) & 0xFFFF_FFFF_FFFF_FFFF
    body = struct.pack(">IQ", counter & 0xFFFF_FFFF, micros)
    data = body + struct.pack(">I", zlib.crc32(body))
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(bool)


def _edges(center: float, count: int, cell: float) -> npt.NDArray[np.int64]:
    positions = center + (np.arange(count + 1) - count / 2) * cell
    edges: npt.NDArray[np.int64] = np.floor(positions + 0.5).astype(np.int64)
    return edges


def stamp(image: npt.NDArray[np.uint8], counter: int, capture_time: float) -> None:
    """Draw the stamp for ``counter`` and ``capture_time`` into the BGR ``image``, in place."""
    height, width = image.shape[:2]
    cell = stamp_cell_size(width, height)
    if cell < _MIN_CELL:
        raise ValueError(f"frame {width}x{height} is too small for a stamp")
    grid = np.empty((STAMP_ROWS, STAMP_COLS), dtype=bool)
    grid[0] = _SYNC
    grid[1:] = _payload_bits(counter, capture_time).reshape(STAMP_ROWS - 1, STAMP_COLS)
    xs = _edges(width / 2, STAMP_COLS, cell)
    ys = _edges(height / 2, STAMP_ROWS, cell)
    margin = int(cell / 2 + 0.5)
    image[ys[0] - margin : ys[-1] + margin, xs[0] - margin : xs[-1] + margin] = _GREY
    pixels = np.repeat(np.repeat(grid, np.diff(ys), axis=0), np.diff(xs), axis=1)
    region = image[ys[0] : ys[-1], xs[0] : xs[-1]]
    region[...] = np.where(pixels, np.uint8(255), np.uint8(0))[:, :, None]


def _cell_means(
    integral: npt.NDArray[np.float64], width: int, height: int, cells: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Mean brightness of the centre of every stamp cell, for each candidate cell size."""
    cols = np.arange(STAMP_COLS) - STAMP_COLS / 2 + 0.5
    rows = np.arange(STAMP_ROWS) - STAMP_ROWS / 2 + 0.5
    cx = width / 2 + cols[None, :] * cells[:, None]  # (n, cols)
    cy = height / 2 + rows[None, :] * cells[:, None]  # (n, rows)
    radius = np.maximum(cells * 0.25, 0.5)[:, None]
    x0 = np.clip(np.floor(cx - radius + 0.5), 0, width - 1).astype(np.intp)
    x1 = np.clip(np.floor(cx + radius + 0.5), x0 + 1, width).astype(np.intp)
    y0 = np.clip(np.floor(cy - radius + 0.5), 0, height - 1).astype(np.intp)
    y1 = np.clip(np.floor(cy + radius + 0.5), y0 + 1, height).astype(np.intp)
    ya, yb = y0[:, :, None], y1[:, :, None]
    xa, xb = x0[:, None, :], x1[:, None, :]
    sums = integral[yb, xb] - integral[ya, xb] - integral[yb, xa] + integral[ya, xa]
    area = (yb - ya) * (xb - xa)
    result: npt.NDArray[np.float64] = (sums / area).reshape(len(cells), -1)
    return result


def _read_upright(gray: npt.NDArray[np.uint8]) -> tuple[int, float] | None:
    height, width = gray.shape
    largest = min(width / (STAMP_COLS + 1), height / (STAMP_ROWS + 1))
    if largest < _MIN_CELL:
        return None
    guess = min(max(min(width, height) / _CELL_DIVISOR, _MIN_CELL), largest)
    up = guess * _STEP ** np.arange(0, np.log(largest / guess) / np.log(_STEP) + 1)
    down = guess / _STEP ** np.arange(1, np.log(guess / _MIN_CELL) / np.log(_STEP) + 1)
    order = np.concatenate([up, down])
    ranks = np.argsort(np.abs(np.log(order / guess)), kind="stable")
    cells = order[ranks]
    integral = cv2.integral(gray).astype(np.float64)
    means = _cell_means(integral, width, height, cells)
    sync = means[:, :STAMP_COLS]
    white = sync[:, _SYNC].mean(axis=1)
    black = sync[:, ~_SYNC].mean(axis=1)
    threshold = (white + black) / 2
    bits = means > threshold[:, None]
    good = (white - black >= _MIN_CONTRAST) & np.all(bits[:, :STAMP_COLS] == _SYNC, axis=1)
    for candidate in np.flatnonzero(good):
        data = np.packbits(bits[candidate, STAMP_COLS:]).tobytes()
        body, crc = data[:12], struct.unpack(">I", data[12:])[0]
        if zlib.crc32(body) == crc:
            counter, micros = struct.unpack(">IQ", body)
            return int(counter), micros / 1_000_000
    return None


def read_stamp(
    image: npt.NDArray[np.uint8], rotations: bool = True
) -> tuple[int, float] | None:
    """Read ``(counter, capture_time)`` from a stamped image, or None if no valid stamp.

    ``image`` is BGR (or grey) of any size; the stamp may have been scaled, cropped or padded
    about the centre. With ``rotations`` the four 90-degree rotations are tried too.
    """
    if image.ndim == 3:
        gray = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    else:
        gray = np.asarray(image, dtype=np.uint8)
    for k in range(4 if rotations else 1):
        turned = np.ascontiguousarray(np.rot90(gray, k)) if k else gray
        found = _read_upright(turned)
        if found is not None:
            return found
    return None
