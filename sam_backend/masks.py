"""Masks: COCO RLE <-> arrays (pycocotools), tight boxes, crops for fo.Detection, PNG bytes."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Full-frame bool mask -> COCO compressed RLE ``{"size": [h, w], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string counts or uncompressed list counts) -> bool (h, w) array."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        compressed = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(compressed).astype(bool)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel box (x_min, y_min, x_max, y_max), max exclusive, of the true pixels; None if empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop(mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The part of a full-frame mask inside ``box`` (what fo.Detection.mask stores)."""
    x0, y0, x1, y1 = box
    return mask[y0:y1, x0:x1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two same-shape bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


_PNG_END = _png_chunk(b"IEND", b"")


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A 2-D mask as an 8-bit greyscale PNG of 0s and 1s (what ``fo.Detection.export_mask``
    writes): one IHDR, one IDAT of unfiltered rows at zlib level 1, IEND (PNG spec, ISO/IEC
    15948). Written here because cv2.imencode spent ~5x as long per small mask trying
    row filters that two-valued masks do not need (53 vs 11 us at 91x84)."""
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"a PNG mask needs a non-empty 2-D array, got shape {mask.shape}")
    height, width = mask.shape
    rows = np.zeros((height, width + 1), np.uint8)  # each row: filter type 0 (none), then pixels
    np.not_equal(mask, 0, out=rows[:, 1:].view(bool))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, greyscale, no interlace
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)), _PNG_END))
