"""Long videos in chunks, and track ids stitched across them.

A video of N processed frames is cut into chunks of ``chunk_size`` frames, each starting
``overlap`` frames before the previous one ends. Every chunk is segmented on its own (so
memory holds one chunk, whatever N is). Each frame is emitted once, from the first chunk
that holds it; the overlap frames of the next chunk are only evidence for matching: its
tracks are given the ids of the previous chunk's tracks whose masks they overlap most
(IoU summed over the overlap), and fresh ids otherwise. Pure numpy + RLE: no torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np

from ... import masks as mask_ops


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Positions [start, stop) of the processed frames; frames from ``emit_from`` on are
    emitted from this chunk (earlier ones were emitted by the previous chunk)."""

    index: int
    start: int
    stop: int
    emit_from: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan_chunks(frame_count: int, chunk_size: int, overlap: int) -> list[Chunk]:
    """Chunks covering ``frame_count`` positions; one chunk when it fits."""
    if chunk_size <= overlap:
        raise ValueError(f"chunk_size={chunk_size} must exceed overlap={overlap}")
    chunks: list[Chunk] = []
    start, emit_from = 0, 0
    while True:
        stop = min(start + chunk_size, frame_count)
        chunks.append(Chunk(len(chunks), start, stop, emit_from))
        if stop >= frame_count:
            return chunks
        start, emit_from = stop - overlap, stop


@dataclasses.dataclass
class StoredObject:
    """An object on one frame, kept compressed while a chunk is being assembled."""

    rle: dict
    score: float
    concept: str | None

    def mask(self) -> np.ndarray:
        return mask_ops.decode_rle(self.rle)


def match_tracks(
    previous: Mapping[int, Mapping[int, StoredObject]],
    current: Mapping[int, Mapping[int, StoredObject]],
    threshold: float,
) -> dict[int, int]:
    """Map current-chunk text ids to previous-chunk global ids.

    ``previous`` and ``current`` are {position: {id: object}} over the overlap positions.
    Pairs are scored by summed intersection over summed union across those frames and only
    objects of the same concept can match; the best pairs are taken greedily, each id once.
    """
    inter: dict[tuple[int, int], int] = {}
    area_prev: dict[tuple[int, int], int] = {}
    area_cur: dict[tuple[int, int], int] = {}
    concept_prev: dict[int, str | None] = {}
    concept_cur: dict[int, str | None] = {}
    for pos in sorted(set(previous) & set(current)):
        prev_objs, cur_objs = previous[pos], current[pos]
        prev_masks = {g: o.mask() for g, o in prev_objs.items()}
        cur_masks = {c: o.mask() for c, o in cur_objs.items()}
        for g, o in prev_objs.items():
            concept_prev[g] = o.concept
        for c, o in cur_objs.items():
            concept_cur[c] = o.concept
        sums_prev = {g: int(m.sum()) for g, m in prev_masks.items()}
        sums_cur = {c: int(m.sum()) for c, m in cur_masks.items()}
        for g, gm in prev_masks.items():
            for c, cm in cur_masks.items():
                inter[(g, c)] = inter.get((g, c), 0) + int(np.logical_and(gm, cm).sum())
                area_prev[(g, c)] = area_prev.get((g, c), 0) + sums_prev[g]
                area_cur[(g, c)] = area_cur.get((g, c), 0) + sums_cur[c]
    scored = []
    for (g, c), i in inter.items():
        if concept_prev.get(g) != concept_cur.get(c) or i == 0:
            continue
        union = area_prev[(g, c)] + area_cur[(g, c)] - i
        score = i / union if union else 0.0
        if score >= threshold:
            scored.append((score, g, c))
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for score, g, c in sorted(scored, key=lambda t: (-t[0], t[1], t[2])):
        if g in used or c in mapping:
            continue
        mapping[c] = g
        used.add(g)
    return mapping


class IdAllocator:
    """Global ids for text tracks: from 1 upwards, skipping the visual prompts' ids, in
    order of first appearance (as the emulator documents for fal), capped so that visual
    plus text tracks stay within ``max_num_objects``."""

    def __init__(self, reserved: Iterable[int], max_num_objects: int) -> None:
        self.reserved = set(reserved)
        self.budget = max(0, max_num_objects - len(self.reserved))
        self.issued = 0
        self._next = 1

    def new(self) -> int | None:
        """A fresh id, or None when the object budget is spent (the track is dropped)."""
        if self.issued >= self.budget:
            return None
        while self._next in self.reserved:
            self._next += 1
        value = self._next
        self._next += 1
        self.issued += 1
        return value
