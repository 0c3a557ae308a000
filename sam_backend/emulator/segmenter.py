"""The emulator's toy "SAM": colour-keyed segmentation of synthetic videos.

Each pixel's luma is classified to the nearest level among the background (0) and the
:data:`sam_backend.synthetic.PALETTE` colours. Luma is what H.264 keeps at full
resolution, so on the synthetic videos this reproduces the ground-truth masks exactly,
which lets tests check the whole client pipeline pixel for pixel.

Work is split in two passes over the decoded frames so a long video need not fit in
memory: :func:`analyse` counts colours per frame and resolves the visual prompts on
their frames (prompts may point at a late frame, and tracks run backwards too);
:func:`plan_tracks` turns that into tracks; :func:`frame_objects` then cuts each frame's
masks during the render pass.

Semantics (documented for the client's tests):

- Text prompt: comma-separated concepts; a concept matches palette colour ``c`` when
  ``c``'s name is one of its words (case-insensitive), or, when it names no colour, when
  it names ``c``'s kind ("ball", "balls", "box", "boxes": see ``synthetic.KINDS``). Each matched colour seen anywhere
  in the video is one track labelled with the concept. A colour already taken by an
  earlier concept or by a visual prompt is not tracked twice.
- Point (label 1): the colour under (x, y) on ``frame_index`` joins object
  ``object_id`` (background adds nothing). Point (label 0) with an ``object_id``: its
  colour is removed from that object. Box: the colour with the most pixels in
  ``[x_min, x_max) x [y_min, y_max)`` joins the object. An object is the union of its
  colours; visual tracks have no label.
- Ids: visual prompts keep their ``object_id``; those without one get the smallest free
  id >= 1 (positive points first, then boxes, each in list order), whether or not they
  find anything, so visual ids depend on the request only. Text tracks then take ids
  from 1 upwards, skipping visual ids, in order of first appearance (ties: concept
  order, then palette order).
- Every object gets ``score``; text tracks below ``detection_threshold`` are dropped
  (visual prompts are tracked regardless, as SAM's tracker does). At most
  ``max_num_objects`` tracks are kept: visual ones first, then text ones, by id.
- A track covers every frame where one of its colours is visible; empty masks are
  never emitted.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterable
from typing import Literal

import numpy as np

from ..synthetic import KINDS, PALETTE
from .schema import SegmenterInput

COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)  # label k (1-based) is COLOUR_NAMES[k - 1]
BACKGROUND_LABEL = 0


class Cancelled(Exception):
    """The job's cancel event was set; raised between frames."""


def _luma(rgb: tuple[int, int, int]) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _build_lut() -> np.ndarray:
    levels = np.array([0.0] + [_luma(PALETTE[name]) for name in COLOUR_NAMES])
    values = np.arange(256, dtype=np.float64)[:, None]
    return np.abs(values - levels[None, :]).argmin(axis=1).astype(np.uint8)


_LUT = _build_lut()  # pure function of constants: computed once, no I/O


def classify(gray: np.ndarray) -> np.ndarray:
    """Luma plane (H, W) uint8 -> label map (H, W) uint8: 0 background, k palette colour k."""
    return _LUT[gray]


@dataclasses.dataclass(frozen=True)
class Track:
    """One output object: which colours make it, its id, label and score."""

    track_id: int
    colours: frozenset[int]
    label: str | None
    score: float
    source: Literal["visual", "text"]


@dataclasses.dataclass
class Analysis:
    """What the first pass learned: per-frame pixel counts of each label, and the colour
    each visual prompt landed on (None for background or a frame past the end)."""

    counts: np.ndarray  # (frames, 1 + len(COLOUR_NAMES)) int64
    point_colours: list[int | None]
    box_colours: list[int | None]
    labels: list[np.ndarray] | None = None  # every frame's label map, when asked to keep them

    @property
    def frame_count(self) -> int:
        return int(self.counts.shape[0])

    def visible(self, colours: Iterable[int]) -> np.ndarray:
        """Bool per frame: is any of ``colours`` on it."""
        cols = sorted(colours)
        if not cols:
            return np.zeros(self.frame_count, bool)
        return (self.counts[:, cols] > 0).any(axis=1)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def analyse(
    gray_frames: Iterable[np.ndarray], request: SegmenterInput, cancel: threading.Event | None = None, *, keep_labels: bool = False
) -> Analysis:
    """First pass: colour counts per frame, and the prompts resolved on their frames.
    ``keep_labels`` keeps the label maps (H*W bytes a frame) so the second pass need
    not decode luma again: worth it for the small videos tests use."""
    n_labels = 1 + len(COLOUR_NAMES)
    rows: list[np.ndarray] = []
    kept: list[np.ndarray] | None = [] if keep_labels else None
    point_colours: list[int | None] = [None] * len(request.point_prompts)
    box_colours: list[int | None] = [None] * len(request.box_prompts)
    for f, gray in enumerate(gray_frames):
        _check_cancel(cancel)
        labels = classify(gray)
        if kept is not None:
            kept.append(labels)
        rows.append(np.bincount(labels.ravel(), minlength=n_labels)[:n_labels])
        h, w = labels.shape
        for i, p in enumerate(request.point_prompts):
            if p.frame_index == f and 0 <= p.x < w and 0 <= p.y < h:
                value = int(labels[p.y, p.x])
                point_colours[i] = value or None
        for i, b in enumerate(request.box_prompts):
            if b.frame_index == f:
                inside = labels[max(b.y_min, 0):max(b.y_max, 0), max(b.x_min, 0):max(b.x_max, 0)]
                hist = np.bincount(inside.ravel(), minlength=n_labels)[:n_labels]
                hist[BACKGROUND_LABEL] = 0
                box_colours[i] = int(hist.argmax()) if hist.any() else None
    counts = np.array(rows, dtype=np.int64).reshape(len(rows), n_labels)
    return Analysis(counts, point_colours, box_colours, kept)


def concept_colours(concept: str) -> list[int]:
    """Palette labels whose colour name is a word of ``concept``, in palette order; a
    concept naming no colour but a kind ("ball", "boxes") finds every colour of that kind
    (:data:`sam_backend.synthetic.KINDS`): several instances of one concept."""
    words = set(re.findall(r"[a-z]+", concept.lower()))
    named = [k for k, name in enumerate(COLOUR_NAMES, start=1) if name in words]
    if named:
        return named
    kinds = {kind for kind in KINDS if kind in words or kind + "s" in words or kind + "es" in words}
    return [k for k, name in enumerate(COLOUR_NAMES, start=1) if any(name in KINDS[kind] for kind in kinds)]


def plan_tracks(analysis: Analysis, request: SegmenterInput, score: float) -> list[Track]:
    """Turn the first pass into the tracks to emit, sorted by id (see module docs)."""
    visual = _visual_objects(analysis, request)
    used_ids = set(visual)
    claimed = set().union(*visual.values()) if visual else set()
    visual_tracks = [
        Track(oid, frozenset(cols), None, score, "visual")
        for oid, cols in sorted(visual.items())
        if cols and analysis.visible(cols).any()
    ]

    candidates: list[tuple[int, int, int, str]] = []  # (first frame, concept idx, colour, concept)
    for ci, concept in enumerate(request.concepts):
        for colour in concept_colours(concept):
            if colour in claimed:
                continue
            claimed.add(colour)
            seen = np.flatnonzero(analysis.visible([colour]))
            if seen.size:
                candidates.append((int(seen[0]), ci, colour, concept))
    text_tracks: list[Track] = []
    next_id = 1
    for _, _, colour, concept in sorted(candidates):
        while next_id in used_ids:
            next_id += 1
        used_ids.add(next_id)
        text_tracks.append(Track(next_id, frozenset({colour}), concept, score, "text"))
    text_tracks = [t for t in text_tracks if t.score >= request.detection_threshold]

    kept = (visual_tracks + text_tracks)[: request.max_num_objects]
    return sorted(kept, key=lambda t: t.track_id)


def _visual_objects(analysis: Analysis, request: SegmenterInput) -> dict[int, set[int]]:
    """object id -> colours, for every id the point/box prompts define (maybe empty)."""
    explicit = {p.object_id for p in request.point_prompts if p.label == 1 and p.object_id is not None}
    explicit |= {b.object_id for b in request.box_prompts if b.object_id is not None}
    taken = set(explicit)

    def auto_id() -> int:
        oid = 1
        while oid in taken:
            oid += 1
        taken.add(oid)
        return oid

    positive: dict[int, set[int]] = {}
    negative: dict[int, set[int]] = {}
    for p, colour in zip(request.point_prompts, analysis.point_colours):
        if p.label == 1:
            oid = p.object_id if p.object_id is not None else auto_id()
            positive.setdefault(oid, set())
            if colour is not None:
                positive[oid].add(colour)
        elif p.object_id is not None and colour is not None:
            negative.setdefault(p.object_id, set()).add(colour)
    for b, colour in zip(request.box_prompts, analysis.box_colours):
        oid = b.object_id if b.object_id is not None else auto_id()
        positive.setdefault(oid, set())
        if colour is not None:
            positive[oid].add(colour)
    # Negative points on ids no positive prompt defines select nothing (fal would reject
    # them; the client checks this before sending).
    return {oid: cols - negative.get(oid, set()) for oid, cols in positive.items()}


def frame_objects(labels: np.ndarray, tracks: list[Track]) -> list[tuple[Track, np.ndarray]]:
    """Second pass, one frame: (track, full-frame bool mask) for each non-empty track."""
    out = []
    for track in tracks:
        if len(track.colours) == 1:
            mask = labels == next(iter(track.colours))
        else:
            mask = np.isin(labels, list(track.colours))
        if mask.any():
            out.append((track, mask))
    return out
