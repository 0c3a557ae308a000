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


@pytest.mark.parametrize("shape", [(1, 1), (1, 301), (257, 1), (40, 60)])
def test_mask_png_reads_back_in_every_decoder(shape: tuple[int, int]) -> None:
    """encode_mask_png writes PNG by hand: libpng (cv2, FiftyOne's reader) and Pillow (the
    App server's) must read back 8-bit greyscale 0/1, the mask exactly, at any size."""
    import io

    import cv2
    from PIL import Image

    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    full = rng.random((shape[0] + 3, shape[1] * 2)) < 0.4
    mask = full[2 : 2 + shape[0], ::2]  # a non-contiguous view, as crops of full masks are
    data = masks.encode_mask_png(mask)
    by_cv2 = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert by_cv2.dtype == np.uint8 and by_cv2.shape == shape and np.array_equal(by_cv2, mask.astype(np.uint8))
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # Pillow checks the chunk CRCs while reading
        assert image.mode == "L" and image.size == (shape[1], shape[0])
        assert np.array_equal(np.asarray(image), mask.astype(np.uint8))
    counts = masks.encode_mask_png(np.where(mask, 7, 0).astype(np.int32))  # any nonzero value is 1
    assert np.array_equal(cv2.imdecode(np.frombuffer(counts, np.uint8), cv2.IMREAD_UNCHANGED), mask.astype(np.uint8))


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (2, 3, 1)])
def test_mask_png_refuses_what_png_cannot_hold(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="non-empty 2-D"):
        masks.encode_mask_png(np.zeros(shape, bool))
