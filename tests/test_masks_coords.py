"""RLE round trips through pycocotools, tight boxes, and the single coordinate converter."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco

from sam_backend import coords, masks


def _blob(h: int = 40, w: int = 60) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    m = ((xx - 20) / 12) ** 2 + ((yy - 15) / 9) ** 2 <= 1
    m[30:35, 50:58] = True  # a second part
    m[14:16, 18:22] = False  # a hole
    return m


def test_rle_round_trip_compressed_and_uncompressed() -> None:
    m = _blob()
    rle = masks.encode_rle(m)
    assert rle["size"] == [40, 60] and isinstance(rle["counts"], str)
    assert np.array_equal(masks.decode_rle(rle), m)
    # Same string as pycocotools' own encoder
    assert rle["counts"] == coco.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
    # Uncompressed counts (column-major runs starting with zeros)
    flat = m.flatten(order="F").astype(np.uint8)
    runs, current, n = [], 0, 0
    for v in flat:
        if v == current:
            n += 1
        else:
            runs.append(n)
            current, n = v, 1
    runs.append(n)
    assert np.array_equal(masks.decode_rle({"size": [40, 60], "counts": runs}), m)


def test_tight_box_and_crop() -> None:
    m = _blob()
    box = masks.tight_box(m)
    assert box == (8, 6, 58, 35)
    assert masks.crop(m, box).sum() == m.sum()
    assert masks.tight_box(np.zeros((5, 5), bool)) is None
    single = np.zeros((5, 5), bool)
    single[4, 4] = True
    assert masks.tight_box(single) == (4, 4, 5, 5)


def test_coordinate_conversions() -> None:
    assert coords.frame_number_from_index(0) == 1
    assert coords.frame_index_from_number(90) == 89
    with pytest.raises(ValueError):
        coords.frame_number_from_index(-1)
    with pytest.raises(ValueError):
        coords.frame_index_from_number(0)
    rel = coords.relative_box((32, 24, 96, 72), 320, 240)
    assert rel == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert coords.pixel_box(rel, 320, 240) == (32, 24, 96, 72)
    assert coords.pixel_box([0.9, 0.9, 0.5, 0.5], 100, 100) == (90, 90, 100, 100)
    assert coords.pixel_point(0.999, 1.0, 320, 240) == (319, 239)
    assert coords.box_from_normalized_cxcywh([0.5, 0.5, 0.2, 0.1], 100, 50) == pytest.approx((40, 22.5, 60, 27.5))


def test_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert masks.iou(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert masks.iou(a, b) == pytest.approx(4 / 12)
