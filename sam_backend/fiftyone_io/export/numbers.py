"""Polygon coordinates as text by table lookup, not by formatting each value.

A noisy mask traces to tens of thousands of vertices, and formatting them one by one
(json's float repr, ``%.6f``) took longer than tracing them: ~40% of a COCO-polygon or
YOLO-seg export of 1080p masks with ~4,000 holes each. The values come from small sets,
though: COCO vertices from :mod:`.polygons` sit on a quarter-pixel grid and YOLO vertices
on pixel centres, so each value's text is looked up in a table made once per grid (for
YOLO, a table of fixed-width bytes indexed by all of a ring's vertices at once).

Each function writes exactly the text the per-value formatting wrote (tested), and falls
back to it for any value off its grid.
"""

from __future__ import annotations

import functools
import json

import numpy as np


@functools.lru_cache(maxsize=4)
def _quarter_texts(size: int) -> list[str]:
    """``repr(k / 4)`` (json's text for that float) for k < size."""
    return [repr(k / 4) for k in range(size)]


@functools.lru_cache(maxsize=16)
def _normalised_table(size: int, nudge: float) -> np.ndarray | None:
    """Entry x: the 8 bytes of ``"%.6f" % ((x + nudge) / size)`` ("0.xxxxxx") for pixels
    x < size, read as one uint64, so a whole YOLO row is one fancy index; None if some
    value formats to another width (a nudge outside [0, 1))."""
    texts = ["%.6f" % ((x + nudge) / size) for x in range(size)]
    if any(len(t) != 8 for t in texts):
        return None
    return np.frombuffer("".join(texts).encode("ascii"), np.uint64)  # one 8-byte text per entry


def _grid_indices(values: np.ndarray, per_unit: int, limit: int | None = None) -> np.ndarray | None:
    """``values * per_unit`` as ints when all are whole, non-negative (and < ``limit``)."""
    scaled = values * per_unit
    with np.errstate(invalid="ignore"):  # NaN or inf: caught by the comparison below
        ints = scaled.astype(np.int64)
    if len(ints) and ((ints != scaled).any() or ints.min() < 0 or (limit is not None and ints.max() >= limit)):
        return None
    return ints


def coco_polygons_json(rings: list[np.ndarray]) -> str:
    """``json.dumps([ring.ravel().tolist() for ring in rings], separators=(",", ":"))``."""
    out = []
    for ring in rings:
        flat = np.asarray(ring, dtype=float).ravel()
        quarters = _grid_indices(flat, 4)
        if quarters is None:
            out.append(json.dumps(flat.tolist(), separators=(",", ":")))
            continue
        # Tables sized in powers of two, so one serves a whole export.
        table = _quarter_texts(1 << max(int(quarters.max(initial=0)), 1).bit_length())
        out.append("[" + ",".join(map(table.__getitem__, quarters.tolist())) + "]")
    return "[" + ",".join(out) + "]"


def yolo_points_text(points: np.ndarray, width: int, height: int, nudge: float) -> str:
    """``" ".join("%.6f" % v for v in ((points + nudge) / [width, height]).ravel())``:
    (x, y) pixel vertices normalised to the frame, as one YOLO row holds them."""
    points = np.asarray(points, dtype=float)
    xs, ys = _grid_indices(points[:, 0], 1, width), _grid_indices(points[:, 1], 1, height)
    x_table, y_table = _normalised_table(width, nudge), _normalised_table(height, nudge)
    if xs is None or ys is None or x_table is None or y_table is None or not len(points):
        values = ((points + nudge) / [width, height]).ravel().tolist()
        return " ".join(["%.6f"] * len(values)) % tuple(values)
    values = np.empty((len(points), 2), np.uint64)  # each text's 8 bytes as one number: x, y
    values[:, 0] = x_table[xs]
    values[:, 1] = y_table[ys]
    cells = np.empty((values.size, 9), np.uint8)  # the 8 characters, then a space
    cells[:, :8] = values.view(np.uint8).reshape(-1, 8)
    cells[:, 8] = ord(" ")
    return cells.tobytes()[:-1].decode("ascii")
