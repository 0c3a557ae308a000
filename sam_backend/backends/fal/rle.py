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


def decode(text: str, height: int, width: int, layout: RleLayout = DEFAULT_LAYOUT) -> np.ndarray:
    """One RLE string -> bool mask (height, width). Empty string: an empty mask."""
    tokens = text.split()
    if len(tokens) % 2:
        raise RleFormatError(f"odd number of values ({len(tokens)}): RLE strings are 'start length' pairs")
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise RleFormatError(f"value {bad[:20]!r} is not an integer") from None
    total = height * width
    flat = np.zeros(total, dtype=bool)
    if values.size:
        starts, lengths = values[0::2] - layout.base, values[1::2]
        if (lengths <= 0).any():
            i = int(np.flatnonzero(lengths <= 0)[0])
            raise RleFormatError(f"run {i} has length {int(lengths[i])} (must be >= 1)")
        if (starts < 0).any():
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
        # Mark run boundaries and integrate: linear in pixels, no Python loop per run.
        edges = np.zeros(total + 1, dtype=np.int8)
        np.add.at(edges, starts, 1)
        np.add.at(edges, ends, -1)
        flat = np.cumsum(edges[:-1]) > 0
    if layout.order == "row":
        return flat.reshape(height, width)
    return flat.reshape(width, height).T


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
