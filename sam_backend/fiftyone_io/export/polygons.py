"""Masks as polygons, for the formats that cannot hold a mask: COCO polygons and YOLO.

Each format is read by a rasteriser with its own idea of where a vertex sits, so each gets
polygons traced in that convention, and every polygon is rasterised back and compared
with its mask (:attr:`PolygonResult.iou`) so losses are measured, never assumed:

- COCO (pycocotools ``frPyObjects``): a vertex ``(x, y)`` lies in continuous image
  coordinates where pixel (row i, col j) covers ``[j, j+1) x [i, i+1)``. We trace the mask
  with marching squares at level 0.5 and shift by half a pixel; pycocotools rasterises
  that back to the exact mask.
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

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy.spatial import cKDTree
from skimage import measure


@dataclasses.dataclass(frozen=True)
class Shape:
    """One connected part of a mask: its outer ring and the rings of its holes, each an
    (N, 2) float array of (x, y) vertices, not repeating the first vertex at the end."""

    outer: np.ndarray
    holes: tuple[np.ndarray, ...] = ()


@dataclasses.dataclass(frozen=True)
class PolygonResult:
    """Polygons for one mask, what they had to encode, and how well they read back."""

    polygons: list[np.ndarray]  # rings in the target format's convention
    parts: int
    holes: int
    iou: float  # the format's rasteriser applied to ``polygons`` vs the mask


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _signed_area(ring: np.ndarray) -> float:
    # Shoelace with slices, not np.roll: rings are mostly tiny (speck holes) and np.roll's
    # overhead dominated polygon exports.
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0])


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices that lie on the straight line through their neighbours."""
    prev = np.concatenate((ring[-1:], ring[:-1]))
    nxt = np.concatenate((ring[1:], ring[:1]))
    before, after = ring - prev, nxt - ring
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(turn) > 1e-9
    return ring[keep] if keep.sum() >= 3 else ring


def _simplify(ring: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance <= 0 or len(ring) <= 4:
        return ring
    simplified = cv2.approxPolyDP(ring.astype(np.float32).reshape(-1, 1, 2), tolerance, True)[:, 0, :]
    return simplified.astype(float) if len(simplified) >= 3 else ring


def coco_shapes(mask: np.ndarray, tolerance: float = 0.0) -> list[Shape]:
    """Parts and holes of ``mask`` in pycocotools' coordinates (see module docstring).

    Objects are 8-connected (diagonal neighbours belong to the same part), as in
    ``cv2.findContours``. ``tolerance`` > 0 simplifies rings (Douglas-Peucker, pixels).
    """
    box = _bbox(mask)
    if box is None:
        return []
    x0, y0, x1, y1 = box
    padded = np.pad(mask[y0:y1, x0:x1], 1).astype(np.uint8)  # padding closes contours at the border
    _, parts = cv2.connectedComponents(padded, connectivity=8)
    outers: dict[int, np.ndarray] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for contour in measure.find_contours(padded, 0.5, fully_connected="high", positive_orientation="high"):
        if len(contour) > 1 and np.array_equal(contour[0], contour[-1]):
            contour = contour[:-1]
        if len(contour) < 2:
            continue
        part = _part_beside(contour[0], padded, parts)
        # (row, col) on the padded pixel-centre grid -> (x, y) in pixel-corner coordinates
        ring = np.stack([contour[:, 1] - 0.5 + x0, contour[:, 0] - 0.5 + y0], axis=1)
        ring = _simplify(_drop_collinear(ring), tolerance)
        # positive_orientation="high" winds outer rings one way and holes the other
        if _signed_area(ring) < 0:
            outers[part] = ring
        else:
            holes.setdefault(part, []).append(ring)
    return [Shape(outer, tuple(holes.get(part, ()))) for part, outer in outers.items()]


def _part_beside(vertex: np.ndarray, padded: np.ndarray, parts: np.ndarray) -> int:
    """The component label of the object pixel next to a marching-squares vertex. Such a
    vertex lies halfway between two pixel centres along a row or a column, one of them
    inside the object."""
    r, c = float(vertex[0]), float(vertex[1])
    if r == int(r):
        a, b = (int(r), int(np.floor(c))), (int(r), int(np.ceil(c)))
    else:
        a, b = (int(np.floor(r)), int(c)), (int(np.ceil(r)), int(c))
    return int(parts[a] if padded[a] else parts[b])


def yolo_shapes(mask: np.ndarray, tolerance: float = 0.0) -> list[Shape]:
    """Parts and holes of ``mask`` with vertices on boundary pixel centres (cv2's
    convention, see module docstring). ``tolerance`` > 0 simplifies (approxPolyDP)."""
    box = _bbox(mask)
    if box is None:
        return []
    x0, y0, x1, y1 = box
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    offset = np.array([x0, y0], dtype=float)
    rings = [_simplify(c[:, 0, :].astype(float) + offset, tolerance) for c in contours]
    parents = hierarchy[0][:, 3]
    shapes: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {i: (rings[i], []) for i in range(len(rings)) if parents[i] < 0}
    for i, parent in enumerate(parents):
        if parent >= 0:
            shapes[int(parent)][1].append(rings[i])
    return [Shape(outer, tuple(holes)) for outer, holes in shapes.values()]


def bridge(base: np.ndarray, others: list[np.ndarray] | tuple[np.ndarray, ...]) -> np.ndarray:
    """One ring that walks ``base`` and, from the base vertex nearest to each of
    ``others``, around that ring and back (a zero-width there-and-back bridge).

    All bridges start on ``base`` (one nearest-neighbour query for all of them) so the
    cost stays O(V log V) also for masks with thousands of holes; a bridge that crosses
    another ring is walked twice, so even-odd rasterisers ignore it.
    """
    if not others:
        return base
    tree = cKDTree(base)
    inserts: dict[int, list[np.ndarray]] = {}
    for ring in others:
        distances, nearest = tree.query(ring)
        j = int(np.argmin(distances))
        loop = np.concatenate([ring[j:], ring[: j + 1]])
        inserts.setdefault(int(nearest[j]), []).append(loop)
    pieces: list[np.ndarray] = []
    start = 0
    for i in sorted(inserts):
        pieces.append(base[start : i + 1])
        for loop in inserts[i]:
            pieces.extend([loop, base[i : i + 1]])
        start = i + 1
    pieces.append(base[start:])
    return np.concatenate(pieces)


def keyhole(shape: Shape) -> np.ndarray:
    """The shape's outer ring with every hole cut in through a bridge."""
    return bridge(shape.outer, shape.holes)


def _valid(ring: np.ndarray) -> np.ndarray:
    """Readers need >= 3 vertices per polygon (pycocotools reads 2 as a box, YOLO parsers
    read fewer than 3 points as a box row): repeat the vertices of a dot or a line."""
    while len(ring) < 3:
        ring = np.concatenate([ring, ring[::-1]])
    return ring


def coco_polygons(mask: np.ndarray, tolerance: float = 0.0) -> PolygonResult:
    """COCO ``segmentation`` polygons: one per part, holes cut in by keyholes."""
    shapes = coco_shapes(mask, tolerance)
    polygons = [_valid(keyhole(s)) for s in shapes]
    return PolygonResult(polygons, len(shapes), sum(len(s.holes) for s in shapes), _iou_coco(polygons, mask))


def yolo_polygon(mask: np.ndarray, tolerance: float = 0.0) -> PolygonResult:
    """A YOLO segment: one ring per object, parts and holes bridged in."""
    shapes = yolo_shapes(mask, tolerance)
    if not shapes:
        return PolygonResult([], 0, 0, 1.0 if not mask.any() else 0.0)
    shapes.sort(key=lambda s: -abs(_signed_area(s.outer)) - len(s.outer))  # bridge from the biggest part
    rings = [keyhole(s) for s in shapes]
    ring = _valid(bridge(rings[0], rings[1:]))
    return PolygonResult([ring], len(shapes), sum(len(s.holes) for s in shapes), _iou_cv2(ring, mask))


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


def _iou_coco(polygons: list[np.ndarray], mask: np.ndarray) -> float:
    box = _bbox(mask)
    if box is None:
        return 1.0 if not polygons else 0.0
    x0, y0, x1, y1 = box  # polygons never leave the mask's box: compare there only
    shifted = [p - np.array([x0, y0]) for p in polygons]
    return _iou(rasterize_coco(shifted, y1 - y0, x1 - x0), mask[y0:y1, x0:x1])


def _iou_cv2(ring: np.ndarray, mask: np.ndarray) -> float:
    box = _bbox(mask)
    assert box is not None
    x0, y0, x1, y1 = box
    return _iou(rasterize_cv2(ring - np.array([x0, y0]), y1 - y0, x1 - x0), mask[y0:y1, x0:x1])
