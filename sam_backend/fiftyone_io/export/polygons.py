"""Masks as polygons, for the formats that cannot hold a mask: COCO polygons and YOLO.

Each format is read by a rasteriser with its own idea of where a vertex sits, so each gets
polygons traced in that convention, and every polygon is rasterised back and compared
with its mask (:attr:`PolygonResult.iou`) so losses are measured, never assumed:

- COCO (pycocotools ``frPyObjects``): a vertex ``(x, y)`` lies in continuous image
  coordinates where pixel (row i, col j) covers ``[j, j+1) x [i, i+1)`` and is read as
  inside when its centre is. We trace the mask enlarged twice with ``cv2.findContours``,
  which puts every ring a quarter pixel inside the mask's pixel edges; pycocotools
  rasterises that back to the exact mask.
- YOLO (Ultralytics): the trainer rasterises with ``cv2.fillPoly``, which puts integer
  vertices on pixel centres and fills the boundary inclusively; Ultralytics' own mask
  converter traces with ``cv2.findContours``. We trace the same way, so ``cv2.fillPoly``
  gives the mask back exactly (bridges between separate parts aside, see below).

Holes and parts. COCO stores several polygons per object but unions them, so a hole has
to be cut into its outer ring: a "keyhole" bridge, a zero-width cut walked there and back.
Both rasterisers fill by the even-odd rule, where a segment walked twice cancels out, so
the hole stays empty. YOLO has one polygon per object, so separate parts are bridged the
same way (as Ultralytics' COCO converter does); ``cv2.fillPoly`` draws such a bridge one
pixel wide, which :attr:`PolygonResult.iou` reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy.spatial import cKDTree


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without the loop."""
    total = int(lengths.sum())
    block_starts = np.cumsum(lengths) - lengths
    return np.arange(total) - np.repeat(block_starts - starts, lengths)


@dataclasses.dataclass(frozen=True)
class Rings:
    """Rings packed in one array, as ``cv2.findContours`` hands them over: ring ``k`` is
    ``points[starts[k] : starts[k] + lengths[k]]``, (x, y) vertices, the first not repeated
    at the end. Packed because speckled masks have thousands of tiny holes, and a Python
    object per hole cost more than tracing them."""

    points: np.ndarray  # (N, 2) float
    lengths: np.ndarray  # (K,) int

    @classmethod
    def of(cls, rings: list[np.ndarray]) -> Rings:
        if not rings:
            return cls(np.zeros((0, 2)), np.zeros(0, int))
        return cls(np.concatenate(rings), np.array([len(r) for r in rings]))

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(np.split(self.points, np.cumsum(self.lengths)[:-1]) if len(self) else [])


@dataclasses.dataclass(frozen=True)
class Shape:
    """One connected part of a mask: its outer ring ((N, 2) float array of (x, y)
    vertices, the first not repeated at the end) and the rings of its holes."""

    outer: np.ndarray
    holes: Rings


@dataclasses.dataclass(frozen=True)
class PolygonResult:
    """Polygons for one mask, what they had to encode, and how well they read back."""

    polygons: list[np.ndarray]  # rings in the target format's convention
    parts: int
    holes: int
    iou: float  # the format's rasteriser applied to ``polygons`` vs the mask


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, max exclusive


def _bbox(mask: np.ndarray) -> Box | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _tight_box(mask: np.ndarray, box: Box | None) -> Box | None:
    """The mask's own bounding box; a caller's ``box`` (outside of which the mask is
    empty) only narrows the search, so a loose box is harmless."""
    if box is None:
        return _bbox(mask)
    x0, y0 = max(box[0], 0), max(box[1], 0)
    inner = _bbox(mask[y0 : max(box[3], y0), x0 : max(box[2], x0)])
    return None if inner is None else (inner[0] + x0, inner[1] + y0, inner[2] + x0, inner[3] + y0)


def _signed_area(ring: np.ndarray) -> float:
    # Shoelace with slices, not np.roll: np.roll's overhead showed in polygon exports.
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0])


def _simplify(ring: np.ndarray, tolerance: float) -> np.ndarray:
    if len(ring) <= 4:
        return ring
    simplified = cv2.approxPolyDP(ring.astype(np.float32).reshape(-1, 1, 2), tolerance, True)[:, 0, :]
    return simplified.astype(float) if len(simplified) >= 3 else ring


def _shapes(mask: np.ndarray, box: Box, scale: int, shift: float, tolerance: float) -> list[Shape]:
    """Parts and holes of ``mask`` inside its tight ``box``, traced by ``cv2.findContours``
    on the crop enlarged ``scale`` times: a traced vertex ``v`` lands on
    ``(v + shift) / scale`` plus the box origin. Objects are 8-connected, holes
    4-connected; with ``tolerance`` > 0 rings are simplified (Douglas-Peucker, pixels)."""
    x0, y0, x1, y1 = box
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    if scale > 1:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST_EXACT)
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    points = (np.concatenate(contours)[:, 0, :] + shift) / scale + np.array([x0, y0])
    lengths = np.fromiter(map(len, contours), np.intp, len(contours))
    starts = np.cumsum(lengths) - lengths
    parents = hierarchy[0][:, 3]
    if tolerance > 0:
        rings = Rings.of([_simplify(points[a : a + n], tolerance) for a, n in zip(starts.tolist(), lengths.tolist())])
        points, lengths, starts = rings.points, rings.lengths, rings.starts
    # Holes grouped by their part (RETR_CCOMP: a hole's parent is its part's outer ring).
    holes = np.flatnonzero(parents >= 0)
    holes = holes[np.argsort(parents[holes], kind="stable")]
    hole_points = points[_ranges(starts[holes], lengths[holes])]
    hole_lengths = lengths[holes]
    outers = np.flatnonzero(parents < 0)
    first = np.searchsorted(parents[holes], outers, side="left")
    last = np.searchsorted(parents[holes], outers, side="right")
    point_at = np.concatenate(([0], np.cumsum(hole_lengths)))
    return [Shape(points[starts[i] : starts[i] + lengths[i]],
                  Rings(hole_points[point_at[a] : point_at[b]], hole_lengths[a:b]))
            for i, a, b in zip(outers.tolist(), first.tolist(), last.tolist())]


# (scale, shift) of :func:`_shapes` for each reader's convention (module docstring).
_COCO_GRID = (2, 0.5)  # traced on the mask enlarged twice: rings a quarter pixel inside
_YOLO_GRID = (1, 0.0)  # traced as is: vertices on boundary pixel centres


def coco_shapes(mask: np.ndarray, tolerance: float = 0.0, box: Box | None = None) -> list[Shape]:
    """Parts and holes of ``mask`` in pycocotools' coordinates (see module docstring).

    Traced on the mask enlarged twice, whose boundary pixel centres lie a quarter pixel
    inside the mask's pixel edges: every mask pixel centre is inside the rings with a
    quarter-pixel margin, every other one outside (at least 0.7 pixels off a diagonal
    step), so pycocotools, which samples pixel centres, reads the exact mask back; a
    one-pixel line still gets a ring of nonzero width.
    """
    tight = _tight_box(mask, box)
    return [] if tight is None else _shapes(mask, tight, *_COCO_GRID, tolerance)


def yolo_shapes(mask: np.ndarray, tolerance: float = 0.0, box: Box | None = None) -> list[Shape]:
    """Parts and holes of ``mask`` with vertices on boundary pixel centres (cv2's
    convention, see module docstring)."""
    tight = _tight_box(mask, box)
    return [] if tight is None else _shapes(mask, tight, *_YOLO_GRID, tolerance)


def _snake_order(points: np.ndarray, band: float = 8.0) -> np.ndarray:
    """An order of ``points`` in horizontal bands, left to right then right to left:
    consecutive points are mostly neighbours."""
    rows = np.floor(points[:, 1] / band)
    # One float key (band, then x or -x; |x| < 1e5 apart from a band's 1e6) sorted stably:
    # a third of the time of np.lexsort on the two keys, the same order.
    return np.argsort(rows * 1e6 + np.where(rows % 2 == 1, -points[:, 0], points[:, 0]), kind="stable")


def _nearest(points: np.ndarray, base: np.ndarray, within: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each of ``points`` to its nearest vertex of ``base``, and that vertex,
    where that distance is at most ``within`` (per point); inf, and any vertex, elsewhere.
    Small problems by one matrix product (a k-d tree costs ~0.1 ms to build and query);
    large ones by a k-d tree searched only as far as most points need: searching to the
    end for specks deep inside an object took 3/4 of the query time."""
    if len(points) * len(base) <= 200_000:
        squared = (base**2).sum(axis=1) - 2 * points @ base.T
        at = squared.argmin(axis=1)
        distance = np.sqrt(np.maximum(squared[np.arange(len(points)), at] + (points**2).sum(axis=1), 0))
    else:
        tree = cKDTree(base)
        finite = within[np.isfinite(within)]
        bound = float(np.quantile(finite, 0.99)) if len(finite) else np.inf
        # A little past the bound: a point exactly at it is found, whatever the rounding.
        distance, at = tree.query(points, distance_upper_bound=bound * 1.001 + 1e-6)
        again = np.flatnonzero(np.isinf(distance) & (within > bound))
        if len(again):
            distance[again], at[again] = tree.query(points[again])
        at = np.minimum(at, len(base) - 1)  # cKDTree's "none found" index
    distance[distance > within] = np.inf
    return distance, at


def bridge(base: np.ndarray, others: Rings) -> np.ndarray:
    """One ring that walks ``base`` and cuts every ring of ``others`` in through
    zero-width bridges, each walked there and back, so even-odd rasterisers ignore them.

    Rings are visited in chains: neighbouring rings one after another, each entered at
    its first vertex, walked round to it again, then a step to the next; a chain starts
    afresh from the nearest ``base`` vertex wherever that is closer than the previous
    ring, and at its end walks its steps back. Bridges stay short both for holes near the
    outline and for specks deep inside a large object (YOLO's rasteriser draws bridges one
    pixel wide; pycocotools' cost grows with their length), and it is all array
    operations: speckled masks have thousands of holes.
    """
    if not len(others):
        return base
    firsts = others.points[others.starts]
    order = _snake_order(firsts)
    starts, lengths, firsts = others.starts[order], others.lengths[order], firsts[order]
    to_prev = np.r_[np.inf, np.hypot(*(firsts[1:] - firsts[:-1]).T)]
    to_base, at = _nearest(firsts, base, within=to_prev)
    chain = np.cumsum(to_base <= to_prev) - 1  # which chain each ring is on
    last = np.r_[chain[1:] != chain[:-1], True]  # the last ring of its chain
    n, offset = len(lengths), len(base)
    # Every emitted vertex gets (base vertex it hangs from, chain, part, rank, step): part 0
    # walks each ring of the chain round, part 1 the steps back, part 2 returns to base.
    block = lengths + 1
    step = np.arange(block.sum()) - np.repeat(np.cumsum(block) - block, block)
    ring = np.repeat(np.arange(n), block)
    forward = offset + starts[ring] + step % lengths[ring]
    back_rings = np.flatnonzero(~last)
    heads = np.flatnonzero(np.r_[True, chain[1:] != chain[:-1]])
    values = np.concatenate([forward, offset + starts[back_rings], at[heads]])
    key_chain = np.concatenate([chain[ring], chain[back_rings], chain[heads]])
    key_part = np.concatenate([np.zeros(len(forward)), np.ones(len(back_rings)), np.full(len(heads), 2)])
    key_rank = np.concatenate([np.arange(len(forward)), -back_rings, np.zeros(len(heads))])
    hang = at[heads][key_chain]
    emit = np.lexsort((key_rank, key_part, key_chain, hang))
    # Base vertex i, then what hangs from it: np.insert(arange(offset), hang + 1, values)
    # by positions computed directly (np.insert sorts them again).
    hang = hang[emit]
    order = np.empty(offset + len(hang), np.intp)
    order[np.arange(len(hang)) + hang + 1] = values[emit]
    order[np.arange(offset) + np.searchsorted(hang, np.arange(offset))] = np.arange(offset)
    return np.concatenate([base, others.points])[order]


def keyhole(shape: Shape) -> np.ndarray:
    """The shape's outer ring with every hole cut in through a bridge."""
    return bridge(shape.outer, shape.holes)


def _valid(ring: np.ndarray) -> np.ndarray:
    """Readers need >= 3 vertices per polygon (pycocotools reads 2 as a box, YOLO parsers
    read fewer than 3 points as a box row): repeat the vertices of a dot or a line."""
    while len(ring) < 3:
        ring = np.concatenate([ring, ring[::-1]])
    return ring


def coco_polygons(mask: np.ndarray, tolerance: float = 0.0, box: Box | None = None) -> PolygonResult:
    """COCO ``segmentation`` polygons: one per part, holes cut in by keyholes. ``box``
    (the mask is empty outside it) spares a search of the whole frame."""
    tight = _tight_box(mask, box)
    if tight is None:
        return PolygonResult([], 0, 0, 1.0)
    shapes = _shapes(mask, tight, *_COCO_GRID, tolerance)
    polygons = [_valid(keyhole(s)) for s in shapes]
    return PolygonResult(polygons, len(shapes), sum(len(s.holes) for s in shapes), _iou_coco(polygons, mask, tight))


def yolo_polygon(mask: np.ndarray, tolerance: float = 0.0, box: Box | None = None) -> PolygonResult:
    """A YOLO segment: one ring per object, parts and holes bridged in. ``box`` as in
    :func:`coco_polygons`."""
    tight = _tight_box(mask, box)
    if tight is None:
        return PolygonResult([], 0, 0, 1.0)
    shapes = _shapes(mask, tight, *_YOLO_GRID, tolerance)
    shapes.sort(key=lambda s: -abs(_signed_area(s.outer)) - len(s.outer))  # bridge from the biggest part
    rings = [keyhole(s) for s in shapes]
    ring = _valid(bridge(rings[0], Rings.of(rings[1:])))
    return PolygonResult([ring], len(shapes), sum(len(s.holes) for s in shapes), _iou_cv2(ring, mask, tight))


def rasterize_coco(polygons: list[list[float]] | list[np.ndarray], height: int, width: int) -> np.ndarray:
    """What pycocotools reads from COCO polygons (the union of all of them)."""
    flat = [np.asarray(p, dtype=float).ravel().tolist() for p in polygons]
    if not flat:
        return np.zeros((height, width), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, height, width))).astype(bool)


def rasterize_cv2(ring: np.ndarray, height: int, width: int) -> np.ndarray:
    """What Ultralytics draws from a YOLO segment in pixels (cv2.fillPoly)."""
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.round(np.asarray(ring, dtype=float)).astype(np.int32).reshape(-1, 1, 2)], 1)
    return canvas.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def _iou_coco(polygons: list[np.ndarray], mask: np.ndarray, box: Box) -> float:
    x0, y0, x1, y1 = box  # polygons never leave the mask's box: compare there only
    shifted = [p - np.array([x0, y0]) for p in polygons]
    return _iou(rasterize_coco(shifted, y1 - y0, x1 - x0), mask[y0:y1, x0:x1])


def _iou_cv2(ring: np.ndarray, mask: np.ndarray, box: Box) -> float:
    x0, y0, x1, y1 = box
    return _iou(rasterize_cv2(ring - np.array([x0, y0]), y1 - y0, x1 - x0), mask[y0:y1, x0:x1])
