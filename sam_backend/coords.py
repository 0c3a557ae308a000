"""The one place where fal's coordinates meet FiftyOne's.

fal (and SAM) use integer pixel coordinates and 0-based ``frame_index``; FiftyOne uses
1-based frame numbers and boxes relative to the frame, ``[x, y, w, h]`` in [0, 1].
Every conversion in the project goes through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence


def frame_number_from_index(frame_index: int) -> int:
    """fal/SAM 0-based frame index -> FiftyOne 1-based frame number."""
    if frame_index < 0:
        raise ValueError(f"frame_index must be >= 0, got {frame_index}")
    return frame_index + 1


def frame_index_from_number(frame_number: int) -> int:
    """FiftyOne 1-based frame number -> fal/SAM 0-based frame index."""
    if frame_number < 1:
        raise ValueError(f"frame_number must be >= 1, got {frame_number}")
    return frame_number - 1


def relative_box(box: Sequence[float], width: int, height: int) -> list[float]:
    """Pixel (x_min, y_min, x_max, y_max), max exclusive -> FiftyOne [x, y, w, h] relative."""
    x0, y0, x1, y1 = box
    return [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]


def pixel_box(rel: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """FiftyOne [x, y, w, h] relative -> integer pixel (x_min, y_min, x_max, y_max), clipped
    to the frame, rounded outwards by less than half a pixel of float noise."""
    x, y, w, h = rel
    x0 = max(0, int(round(x * width)))
    y0 = max(0, int(round(y * height)))
    x1 = min(width, int(round((x + w) * width)))
    y1 = min(height, int(round((y + h) * height)))
    return x0, y0, x1, y1


def pixel_point(rel_x: float, rel_y: float, width: int, height: int) -> tuple[int, int]:
    """FiftyOne relative point -> integer pixel (x, y), clipped to the frame."""
    x = min(width - 1, max(0, int(rel_x * width)))
    y = min(height - 1, max(0, int(rel_y * height)))
    return x, y


def relative_point(x: int, y: int, width: int, height: int) -> tuple[float, float]:
    """Integer pixel (x, y) -> FiftyOne relative point at the pixel's centre (so
    :func:`pixel_point` gives the same pixel back)."""
    return (x + 0.5) / width, (y + 0.5) / height


def box_from_normalized_cxcywh(cxcywh: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """fal MaskMetadata box (normalised centre x, centre y, w, h) -> pixel xyxy floats."""
    cx, cy, w, h = cxcywh
    return ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
