"""fal's RLE strings: whitespace-separated ``start length`` pairs over a flattened frame.

This module is the only place that knows the format (``../shared/reference/
fal-sam3-endpoints.md``, "The RLE strings"). It is not COCO: the mask is the union of the
runs ``[start, start + length)`` over the frame's H*W pixels. What is settled and what is
not:

- order: a real 1080x1920 payload had consecutive starts one frame width apart, so runs
  are horizontal spans: **row-major** (C order). Column-major is kept as a setting only so
  ``fal-check`` can show it loses.
- start base: **unconfirmed** (one public decoder uses 1-based starts, another 0-based):
  a one-pixel shift that only a check against known ground truth settles. Default
  1-based; ``sam31-video fal-check`` measures it with the user's key and stores the
  winner per endpoint (see :func:`load_layouts`).

Decoding is strict: an odd token count, a token that is not a non-negative integer, a run
that starts before the base, goes backwards, overlaps the previous one, or ends past H*W
raises :class:`RleFormatError`. The caller adds the request id and frame.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

Order = Literal["row", "column"]


class RleFormatError(ValueError):
    """A string that is not a valid fal RLE for the frame size it was decoded against."""


class RleLayout(BaseModel):
    """How an endpoint lays out its RLE strings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order: Order = "row"
    base: Literal[0, 1] = 1

    @property
    def name(self) -> str:
        return f"{self.order}-major, {self.base}-based"

    @classmethod
    def parse(cls, text: str) -> RleLayout:
        """``"row1"``, ``"row0"``, ``"column1"`` or ``"column0"`` (also ``col``)."""
        value = text.strip().lower().replace("-", "").replace("_", "")
        for order in ("row", "column", "col"):
            if value.startswith(order) and value[len(order):] in ("0", "1"):
                return cls(order="column" if order == "col" else order, base=int(value[len(order):]))  # type: ignore[arg-type]
        raise ValueError(f"unknown RLE layout {text!r}: use row1, row0, column1 or column0")

    @property
    def key(self) -> str:
        return f"{self.order}{self.base}"


DEFAULT_LAYOUT = RleLayout()
ALL_LAYOUTS: tuple[RleLayout, ...] = tuple(RleLayout(order=o, base=b) for o in ("row", "column") for b in (1, 0))


def _values(text: str) -> np.ndarray:
    """The integers of an RLE string, strictly: only non-negative integers separated by whitespace."""
    if _only_digits(text):  # the common case: numpy's C parser, ~6x faster than split + int
        return np.fromstring(text, dtype=np.int64, sep=" ")
    tokens = text.split()
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise RleFormatError(f"value {bad[:20]!r} is not an integer") from None


def _only_digits(text: str) -> bool:
    """Only ASCII digits and whitespace, at least one digit: then numpy's parser reads every
    value (it stops silently at anything else). bytes.translate is a C loop: ~1 us here."""
    return text.isascii() and not text.encode().translate(None, b"0123456789 \t\n\r") and not text.isspace()


def _runs(text: str, total: int, height: int, width: int, layout: RleLayout) -> tuple[np.ndarray, np.ndarray] | None:
    """Checked 0-based run starts and ends over the flattened frame; None for an empty mask."""
    if not text or text.isspace():
        return None
    values = _values(text)
    if values.size % 2:
        raise RleFormatError(f"odd number of values ({values.size}): RLE strings are 'start length' pairs")
    if not values.size:
        return None
    starts, lengths = values[0::2] - layout.base, values[1::2]
    if (lengths <= 0).any():
        i = int(np.flatnonzero(lengths <= 0)[0])
        raise RleFormatError(f"run {i} has length {int(lengths[i])} (must be >= 1)")
    if starts[0] < 0 or (starts < 0).any():
        i = int(np.flatnonzero(starts < 0)[0])
        raise RleFormatError(f"run {i} starts at {int(values[2 * i])}, before the first pixel ({layout.name})")
    ends = starts + lengths
    if (starts[1:] < ends[:-1]).any():
        i = int(np.flatnonzero(starts[1:] < ends[:-1])[0]) + 1
        raise RleFormatError(f"run {i} (start {int(values[2 * i])}) goes backwards or overlaps the run before it")
    if ends[-1] > total:
        raise RleFormatError(
            f"the last run ends at pixel {int(ends[-1])} ({layout.name}) but a {width}x{height} frame has {total}"
        )
    return starts, ends


def _fill(size: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A flat bool array of ``size`` with ``[start, end)`` set: mark run boundaries and
    integrate (linear in pixels, no Python loop per run; runs are sorted and disjoint, so a
    start landing on the previous run's end cancels out as it should)."""
    edges = np.zeros(size + 1, dtype=np.int8)
    edges[starts] = 1
    edges[ends] -= 1
    return np.cumsum(edges[:-1], dtype=np.int8).view(np.bool_)


def decode(text: str, height: int, width: int, layout: RleLayout = DEFAULT_LAYOUT) -> np.ndarray:
    """One RLE string -> bool mask (height, width). Empty string: an empty mask."""
    total = height * width
    runs = _runs(text, total, height, width, layout)
    flat = np.zeros(total, dtype=bool) if runs is None else _fill(total, *runs)
    if layout.order == "row":
        return flat.reshape(height, width)
    return flat.reshape(width, height).T


def decode_crop(text: str, height: int, width: int,
                layout: RleLayout = DEFAULT_LAYOUT) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """One RLE string -> (the mask inside its tight box, the box (x0, y0, x1, y1), max
    exclusive), or None when the mask is empty. Same checks and result as :func:`decode`
    followed by a crop, but no full-frame array is made: the box comes from the runs and
    the runs are written straight into the crop."""
    runs = _runs(text, height * width, height, width, layout)
    if runs is None:
        return None
    starts, ends = runs
    # Lines are rows (row-major) or columns (column-major); decode in that space and transpose at the end.
    line_len, lines = (width, height) if layout.order == "row" else (height, width)
    first = starts // line_len
    last = (ends - 1) // line_len
    if (first != last).any():  # a run wraps onto the next line: decode that band of lines whole
        band0, band1 = int(first[0]), int(last[-1]) + 1
        band = _fill((band1 - band0) * line_len, starts - band0 * line_len, ends - band0 * line_len)
        band = band.reshape(band1 - band0, line_len)
        cols = np.flatnonzero(band.any(axis=0))
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        crop, l0, l1 = band[:, c0:c1], band0, band1
    else:
        offset = starts - first * line_len
        c0, c1 = int(offset.min()), int((offset + (ends - starts)).max())
        l0, l1 = int(first[0]), int(last[-1]) + 1
        w = c1 - c0
        local = (first - l0) * w + offset - c0
        crop = _fill((l1 - l0) * w, local, local + (ends - starts)).reshape(l1 - l0, w)
    if layout.order == "row":
        return crop, (c0, l0, c1, l1)
    return np.ascontiguousarray(crop.T), (l0, c0, l1, c1)


def decode_crops(texts: list[str], height: int, width: int,
                 layout: RleLayout = DEFAULT_LAYOUT) -> list[tuple[np.ndarray, tuple[int, int, int, int]] | None]:
    """:func:`decode_crop` of every mask of one frame at once: the same results, with a
    dozen numpy calls per frame instead of per mask (the per-call overhead, not the pixels,
    was the cost at 16 objects). The crops are views into one buffer. Anything unusual (a
    run wrapping onto the next line, column-major, an invalid string) goes through
    :func:`decode_crop` one mask at a time, whose error then names the mask
    (``RleFormatError.index``)."""
    if layout.order != "row" or len(texts) < 2:
        return _one_by_one(texts, height, width, layout)
    parsed = []
    for text in texts:
        if not text or not _only_digits(text):
            return _one_by_one(texts, height, width, layout)
        parsed.append(np.fromstring(text, dtype=np.int64, sep=" "))
    sizes = np.array([v.size for v in parsed])
    if (sizes % 2).any():
        return _one_by_one(texts, height, width, layout)
    values = np.concatenate(parsed)
    starts, lengths = values[0::2] - layout.base, values[1::2]
    ends = starts + lengths
    runs = sizes // 2
    first_run = np.concatenate(([0], np.cumsum(runs)[:-1]))
    last_run = first_run + runs - 1
    inner = np.ones(starts.size, dtype=bool)
    inner[first_run] = False  # run i vs run i-1 of the same mask only
    first, last = starts // width, (ends - 1) // width
    if (lengths.min() <= 0 or starts.min() < 0 or (starts[1:] < ends[:-1])[inner[1:]].any()
            or ends[last_run].max() > height * width or (first != last).any()):
        return _one_by_one(texts, height, width, layout)
    offset = starts - first * width
    y0, y1 = first[first_run], last[last_run] + 1
    x0 = np.minimum.reduceat(offset, first_run)
    x1 = np.maximum.reduceat(offset + lengths, first_run)
    h, w = y1 - y0, x1 - x0
    area = h * w
    base = np.concatenate(([0], np.cumsum(area)[:-1]))
    mask_of_run = np.repeat(np.arange(len(texts)), runs)
    local = base[mask_of_run] + (first - y0[mask_of_run]) * w[mask_of_run] + offset - x0[mask_of_run]
    buf = _fill(int(area.sum()), local, local + lengths)
    return [(buf[b:b + a].reshape(hh, ww), (int(xa), int(ya), int(xb), int(yb)))
            for b, a, hh, ww, xa, ya, xb, yb in zip(base.tolist(), area.tolist(), h.tolist(), w.tolist(), x0.tolist(),
                                                    y0.tolist(), x1.tolist(), y1.tolist())]


def _one_by_one(texts: list[str], height: int, width: int,
                layout: RleLayout) -> list[tuple[np.ndarray, tuple[int, int, int, int]] | None]:
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(decode_crop(text, height, width, layout))
        except RleFormatError as exc:
            exc.index = i  # type: ignore[attr-defined]
            raise
    return out


def encode(mask: np.ndarray, layout: RleLayout = DEFAULT_LAYOUT) -> str:
    """Bool mask -> RLE string (for tests and ``fal-check``'s ground truth)."""
    flat = (mask if layout.order == "row" else mask.T).reshape(-1).astype(np.int8)
    diff = np.diff(np.concatenate(([0], flat, [0])))
    starts, ends = np.flatnonzero(diff == 1), np.flatnonzero(diff == -1)
    return " ".join(f"{s + layout.base} {e - s}" for s, e in zip(starts, ends))


# --------------------------------------------------------------------------- measured layouts


def layouts_path(environ: Mapping[str, str]) -> Path:
    """Where ``fal-check`` stores the layout it measured per endpoint:
    ``$XDG_CONFIG_HOME/sam31-video/fal-rle-layouts.json`` (``~/.config`` by default)."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "sam31-video" / "fal-rle-layouts.json"


def load_layouts(path: Path) -> dict[str, RleLayout]:
    """endpoint -> layout, as ``fal-check`` stored them (empty when never run)."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {endpoint: RleLayout.parse(value) for endpoint, value in raw.items()}
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is not a valid RLE layout file ({exc}); delete it and run sam31-video fal-check") from None


def save_layouts(path: Path, layouts: Mapping[str, RleLayout]) -> None:
    merged = {**load_layouts(path), **layouts}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v.key for k, v in sorted(merged.items())}, indent=2) + "\n")
    os.replace(tmp, path)
