"""Polygon coordinates written by table lookup are the very text the per-value formatting
wrote, on and off the grids the tables cover; raw JSON is spliced where its value goes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam_backend.fiftyone_io.export.base import RawJSON, write_json
from sam_backend.fiftyone_io.export.numbers import coco_polygons_json, yolo_points_text


def _dumps(rings: list[np.ndarray]) -> str:
    return json.dumps([np.asarray(r, dtype=float).ravel().tolist() for r in rings], separators=(",", ":"))


def _formatted(points: np.ndarray, width: int, height: int, nudge: float) -> str:
    values = ((np.asarray(points, dtype=float) + nudge) / [width, height]).ravel().tolist()
    return " ".join("%.6f" % v for v in values)


def test_coco_rings_on_the_quarter_grid_read_as_json_wrote_them() -> None:
    rng = np.random.default_rng(3)
    rings = [rng.integers(0, 4 * 1920, size=(n, 2)) / 4 for n in (3, 50, 4000)]
    rings.append(np.array([[0.0, 0.25], [1919.75, 0.5], [7.0, 1079.0]]))  # edges and whole numbers
    assert coco_polygons_json(rings) == _dumps(rings)
    assert coco_polygons_json([]) == "[]"
    assert json.loads(coco_polygons_json(rings))[3] == [0.0, 0.25, 1919.75, 0.5, 7.0, 1079.0]


@pytest.mark.parametrize("odd", [1 / 3, 0.1, -0.25, 1e300, float("nan")])
def test_coco_rings_off_the_grid_fall_back_to_json(odd: float) -> None:
    ring = np.array([[1.25, 2.0], [odd, 3.5], [4.0, 5.75]])
    assert coco_polygons_json([ring, ring + 1]) == _dumps([ring, ring + 1])


def test_yolo_pixel_vertices_read_as_percent_format_wrote_them() -> None:
    width, height, nudge = 1920, 1080, 0.01  # x and y normalised by different sizes
    rng = np.random.default_rng(5)
    points = np.column_stack([rng.integers(0, width, 5000), rng.integers(0, height, 5000)]).astype(float)
    points[:2] = [[0, height - 1], [width - 1, 0]]
    assert yolo_points_text(points, width, height, nudge) == _formatted(points, width, height, nudge)
    assert yolo_points_text(points, width, height, 0.0) == _formatted(points, width, height, 0.0)


@pytest.mark.parametrize("odd", [[2.5, 3.0], [1920.0, 3.0], [4.0, 1080.0], [-1.0, 3.0]])
def test_yolo_vertices_off_the_pixel_grid_fall_back_to_percent_format(odd: list[float]) -> None:
    points = np.array([[1.0, 2.0], odd, [700.0, 900.0]])
    assert yolo_points_text(points, 1920, 1080, 0.01) == _formatted(points, 1920, 1080, 0.01)


def test_write_json_splices_raw_text_where_its_value_goes(tmp_path) -> None:
    data = {"labels": ["caf\u00e9", "nul\x00 0", "\\u0000"],  # non-ASCII, a NUL, an escape look-alike
            "annotations": [{"id": i, "segmentation": RawJSON(f"[[{i},{i}.5,2]]"), "area": 7 - i} for i in range(3)]}
    write_json(data, tmp_path / "a.json")
    text = (tmp_path / "a.json").read_text(encoding="ascii")
    assert json.loads(text) == {"labels": ["caf\u00e9", "nul\x00 0", "\\u0000"],
                                "annotations": [{"id": i, "segmentation": [[i, i + 0.5, 2]], "area": 7 - i}
                                                for i in range(3)]}
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        write_json({"x": {1, 2}}, tmp_path / "b.json")



def test_yolo_texts_of_another_width_fall_back() -> None:
    """The table holds 8-character texts ("0.xxxxxx"); a nudge that makes one "-0.xxxxxx"
    must send the row to the per-value formatting, not into misaligned columns."""
    points = np.array([[0.0, 1.0], [319.0, 2.0], [12.0, 0.0]])
    assert yolo_points_text(points, 320, 4, -0.5) == _formatted(points, 320, 4, -0.5)
    assert yolo_points_text(points[:0], 1920, 1080, 0.01) == ""
