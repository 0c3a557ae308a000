"""YOLO segmentation and detection datasets, in the layout Ultralytics reads and
FiftyOne's ``YOLOv5Dataset`` type writes and reads.

Layout::

    data.yaml                   path (absolute), train, val, names {0: concept, ...}
    images/train/<video>_000000.jpg     (file names count frames from 0)
    labels/train/<video>_000000.txt     one row per object; an empty file = no objects

Rows: ``class x_center y_center width height`` (detection) or ``class x1 y1 x2 y2 ...``
(segmentation), normalised to [0, 1], class = 0-based index into ``names``. YOLO holds no
track ids and one polygon per object, so each mask becomes one polygon
(:func:`.polygons.yolo_polygon`: parts and holes joined by zero-width bridges, as
Ultralytics' COCO converter joins parts); the report counts masks with holes or several
parts and polygons that read back poorly.

Why not FiftyOne's ``YOLOv5DatasetExporter`` (whose layout and ``data.yaml`` keys we
keep, and whose importer reads these folders given ``yaml_path="data.yaml"``, the name
Ultralytics' docs use, where FiftyOne's default is ``dataset.yaml``; see the tests): given a mask it writes
every contour as its own row, so a hole becomes a filled object and a second part a
second object; and handing it one polygon per object as ``fo.Polyline`` documents was ~7x
slower than writing the rows here (5 vs 36 frames/s, 300 frames x 16 objects at 640x360,
measured back to back), nearly all of it building the documents.

Everything is one split, ``train``; ``val`` points at the same images because Ultralytics
requires the key. Split the frames yourself before training on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .base import FormatWriter
from .numbers import yolo_points_text
from .polygons import PolygonResult, yolo_polygon
from .tracks import ExportFrame, VideoRef

YAML_FILE = "data.yaml"
SPLIT = "train"
# Ultralytics truncates pixel coordinates to int before cv2.fillPoly; a vertex written at
# pixel k (6 decimals, normalised) can come back as k - 0.000x and truncate to k - 1. A
# hundredth of a pixel towards +x/+y makes truncating and rounding readers both get k.
_NUDGE_PX = 0.01


class YoloWriter(FormatWriter):
    needs_images = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.segments = self.opts.format == "yolo-seg"
        (self.root / "labels" / SPLIT).mkdir(parents=True)

    def _stem(self, video: VideoRef, frame_index: int) -> str:
        return f"{video.name}_{frame_index:06d}"

    def image_path(self, video: VideoRef, frame_index: int) -> Path:
        return self.root / "images" / SPLIT / f"{self._stem(video, frame_index)}.{self.opts.image_format}"

    def prepare(self, video: VideoRef, frame: ExportFrame) -> list[tuple[PolygonResult, str]] | None:
        """Each object's polygon and its row's points (segments only)."""
        if not self.segments:
            return None
        traced = []
        for obj in frame.objects:
            assert obj.mask is not None
            result = yolo_polygon(obj.mask, self.opts.polygon_tolerance, box=obj.box)
            points = yolo_points_text(result.polygons[0], video.width, video.height, _NUDGE_PX) if result.polygons else ""
            traced.append((result, points))
        return traced

    def write_frame(self, video: VideoRef, frame: ExportFrame, image: Path | None,
                    prepared: list[tuple[PolygonResult, str]] | None) -> None:
        w, h = video.width, video.height
        rows = []
        for k, obj in enumerate(frame.objects):
            cls = self.categories.index(obj.label)
            if not self.segments:
                x0, y0, x1, y1 = obj.box
                rows.append(f"{cls} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
                continue
            assert prepared is not None
            result, points = prepared[k]
            if not result.polygons:
                self.report.objects_dropped += 1
                continue
            self.report.count_polygon(result, f"{video.name} frame {frame.frame_index} track {obj.track_id}",
                                      self.opts.min_polygon_iou)
            rows.append(f"{cls} {points}")
        label = self.root / "labels" / SPLIT / f"{self._stem(video, frame.frame_index)}.txt"
        label.write_text("".join(f"{r}\n" for r in rows), encoding="ascii")

    def close(self) -> None:
        data = {
            # Like FiftyOne's exporter: the dataset root, absolute (older Ultralytics resolve a
            # relative or missing path against their own datasets folder). Edit it after moving.
            "path": str(self.opts.output_dir),
            "train": f"./images/{SPLIT}/",
            "val": f"./images/{SPLIT}/",  # Ultralytics requires both keys
            "names": dict(enumerate(self.categories.names)),
        }
        with open(self.root / YAML_FILE, "w", encoding="utf-8") as f:
            yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
