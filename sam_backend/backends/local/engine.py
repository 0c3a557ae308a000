"""What the chunk driver asks of an engine, and what an engine answers.

An engine segments one chunk: a short list of decoded frames plus the prompts that fall
in it, as if it were a whole video. It knows nothing about chunks, stitching or the
original frame numbers; :mod:`.backend` does. Coordinates here are pixels of the frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from ..base import CancelToken


@dataclasses.dataclass(frozen=True)
class VisualPrompt:
    """Clicks and/or a box for one object on one chunk frame (what SAM's tracker takes in
    one call). ``points`` are (x, y, label) with label 1 = on the object, 0 = not on it."""

    obj_id: int
    frame: int
    points: tuple[tuple[int, int, int], ...] = ()
    box: tuple[int, int, int, int] | None = None  # x_min, y_min, x_max, y_max (max exclusive)


@dataclasses.dataclass(frozen=True)
class Seed:
    """An object carried over from the previous chunk: its mask on this chunk's frame."""

    obj_id: int
    frame: int
    mask: np.ndarray


@dataclasses.dataclass(frozen=True)
class ChunkJob:
    """One chunk to segment. Visual objects keep their ids; text objects get engine ids."""

    frames: Sequence[np.ndarray]  # RGB uint8 (H, W, 3), chunk order
    concepts: tuple[str, ...]
    visual: tuple[VisualPrompt, ...]
    seeds: tuple[Seed, ...]
    detection_threshold: float
    max_num_objects: int

    @property
    def height(self) -> int:
        return int(self.frames[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.frames[0].shape[1])


@dataclasses.dataclass(frozen=True)
class RawObject:
    """One object on one chunk frame as an engine saw it. ``concept`` is None for visual
    objects (whose ``obj_id`` is the user's object id); text objects have ids unique within
    the chunk and the concept that found them."""

    obj_id: int
    score: float
    mask: np.ndarray  # bool (H, W), full frame
    concept: str | None


class Engine(Protocol):
    """Segments chunks. ``run_chunk`` yields (chunk frame index, objects) in any order
    (SAM propagates forward, then backward; one pass per concept) and may yield a frame more
    than once: answers are merged per object, the later one winning. It must check
    ``cancel`` between frames."""

    name: str
    device: str
    seeds_as_masks: bool  # False: carried-over objects are given as boxes

    def run_chunk(self, job: ChunkJob, cancel: CancelToken) -> Iterator[tuple[int, list[RawObject]]]: ...

    def close(self) -> None: ...
