"""Strict reading of COCO RLE masks that come from files we did not write.

pycocotools trusts its input: counts summing to less than H*W leave the rest of the mask
as uninitialised memory, more than H*W write past it, and a ``size`` that is not the
frame's is decoded at that size and later stretched. So every RLE read from outside is
checked here first, in pure Python, before pycocotools sees it:

- ``size`` is ``[height, width]`` of two positive integers and equals the frame's size;
- ``counts`` is either a list of non-negative integers (uncompressed RLE) or COCO's
  compressed string (6-bit characters ``'0'``..``'o'``, LEB128-like, every run after the
  second stored as a difference to the run two before) that decodes to non-negative runs;
- the runs sum to exactly ``height * width``.

Errors are :class:`CocoRleError` with what is wrong; the caller adds where (file, frame,
annotation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import masks as mask_ops


class CocoRleError(ValueError):
    """A COCO RLE that does not describe exactly one mask of the expected frame size."""


def compressed_counts(text: str) -> list[int]:
    """COCO's compressed counts string -> run lengths (pycocotools' ``rleFrString``)."""
    counts: list[int] = []
    pos, n = 0, len(text)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                raise CocoRleError(f"compressed counts end in the middle of a run (at character {pos})")
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                raise CocoRleError(f"character {text[pos]!r} at {pos} is not a compressed RLE character ('0'..'o')")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)  # sign bit of the last group
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            raise CocoRleError(f"run {len(counts)} has negative length {value}")
        counts.append(value)
    return counts


def check(rle: Any, height: int, width: int) -> None:
    """Raise :class:`CocoRleError` unless ``rle`` is a valid RLE of a ``height`` x ``width`` mask."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise CocoRleError(f"an RLE is an object with 'size' and 'counts', got {_short(rle)}")
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise CocoRleError(f"size {_short(size)} is not [height, width] of two positive integers")
    if (size[0], size[1]) != (height, width):
        raise CocoRleError(f"size is {size[1]}x{size[0]} (width x height) but the frame is {width}x{height}")
    counts = rle["counts"]
    if isinstance(counts, str):
        runs = compressed_counts(counts)
    elif isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            bad = next(v for v in counts if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0))
            raise CocoRleError(f"counts hold {_short(bad)}, not a non-negative integer")
        runs = counts
    else:
        raise CocoRleError(f"counts must be a compressed string or a list of integers, got {type(counts).__name__}")
    total = sum(runs)
    if total != height * width:
        raise CocoRleError(f"counts sum to {total} pixels but a {width}x{height} frame has {height * width}")


def decode(rle: Any, height: int, width: int) -> np.ndarray:
    """Checked COCO RLE -> bool (height, width) mask."""
    check(rle, height, width)
    return mask_ops.decode_rle(rle)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
