"""What every format writer receives: videos, categories and per-frame objects.

FiftyOne-free on purpose: the writers only see these plain values, so each format is one
small module that can be read (and tested) without a database.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np


@dataclasses.dataclass(frozen=True)
class VideoRef:
    """One exported video. ``frame_indices`` are the 0-based frames written (labelled frames
    on the stride); ``video_id`` counts from 1 in export order; ``name`` is unique within
    the export and safe as a file or folder name."""

    video_id: int
    sample_id: str
    name: str
    filepath: str
    width: int
    height: int
    frame_count: int
    fps: float
    frame_indices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ExportObject:
    """One object on one frame: ``box`` is (x_min, y_min, x_max, y_max) in integer pixels,
    max exclusive; ``mask`` the full-frame bool mask (None for box-only formats)."""

    track_id: int | None
    label: str
    score: float | None
    box: tuple[int, int, int, int]
    mask: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class ExportFrame:
    frame_index: int  # 0-based, like fal's; FiftyOne's frame number is frame_index + 1
    objects: list[ExportObject]


@dataclasses.dataclass(frozen=True)
class Categories:
    """Concept labels in a stable order (sorted by code point): COCO, YouTube-VIS and MOTS
    ids are 1 + position, YOLO class ids the position."""

    names: tuple[str, ...]

    def id(self, label: str) -> int:
        return self.names.index(label) + 1

    def index(self, label: str) -> int:
        return self.names.index(label)


_UNSAFE = re.compile(r"[\x00-\x1f/\\:*?\"<>|]+")


def sequence_names(filepaths: list[str]) -> list[str]:
    """File-system-safe, unique sequence names from video file names (stem, then -2, -3...)."""
    names: list[str] = []
    seen: set[str] = set()
    for path in filepaths:
        stem = os.path.splitext(os.path.basename(path))[0]
        base = _UNSAFE.sub("_", stem).strip(" .") or "video"
        name, n = base, 1
        while name.lower() in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name.lower())
        names.append(name)
    return names
