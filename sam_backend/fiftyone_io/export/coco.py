"""COCO instance segmentation, one image record per exported frame, video-aware.

Layout (FiftyOne's ``COCODetectionDataset`` layout, so ``fo.Dataset.from_dir`` reads it)::

    labels.json
    data/<video>/000000.jpg     frames="images" (file names count frames from 0)

Why not FiftyOne's ``COCODetectionDatasetExporter`` (we follow its JSON layout, category
ids and ``score`` key): it writes masks as RLE only for crowd objects (``iscrowd=1``,
which evaluators ignore), traces polygons without caring for holes (a hole becomes one
more polygon, which COCO readers *add* to the object, so the hole fills), stores the box
area as ``area``, keeps no track ids and needs image files. Here masks are RLE
(compressed, ``iscrowd=0``, lossless) or hole-preserving polygons (:mod:`.polygons`),
``area`` is the mask area, and the video structure follows mmtracking's CocoVID
convention (``videos``, ``images[].video_id`` / ``frame_id``, 0-based) with the track id
as ``annotations[].track_id`` (TAO's name). Not CocoVID's ``instance_id``: FiftyOne
reserves that name on ``Detection``, and its COCO importer refuses files that carry it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from ... import masks as mask_ops
from .base import FormatWriter, RawJSON, frame_file_name, write_json
from .numbers import coco_polygons_json
from .polygons import PolygonResult, coco_polygons
from .tracks import ExportFrame, ExportObject, VideoRef

LABELS_FILE = "labels.json"
DATA_DIR = "data"


@dataclasses.dataclass(frozen=True)
class _Segmentation:
    """One object's ``segmentation``, worked out ahead of writing (:meth:`CocoWriter.prepare`)."""

    area: int  # mask pixels; 0: nothing to write
    value: Any  # RLE dict or RawJSON polygons
    polygons: PolygonResult | None  # what the polygons encoded, for the report


class CocoWriter(FormatWriter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._videos: list[dict[str, Any]] = []
        self._images: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []

    def image_path(self, video: VideoRef, frame_index: int) -> Path:
        return self.root / DATA_DIR / frame_file_name(video, frame_index, self.opts.image_format)

    def begin_video(self, video: VideoRef) -> None:
        self._videos.append({
            "id": video.video_id, "name": video.name, "file_name": Path(video.filepath).name,
            "filepath": video.filepath, "width": video.width, "height": video.height,
            "length": video.frame_count, "fps": video.fps,
        })

    def prepare(self, video: VideoRef, frame: ExportFrame) -> list[_Segmentation]:
        return [self._segmentation(o) for o in frame.objects]

    def _segmentation(self, obj: ExportObject) -> _Segmentation:
        assert obj.mask is not None
        area = int(np.count_nonzero(obj.mask))
        if area == 0:
            return _Segmentation(0, None, None)
        if self.opts.coco_masks == "rle":
            return _Segmentation(area, mask_ops.encode_rle(obj.mask), None)
        result = coco_polygons(obj.mask, self.opts.polygon_tolerance, box=obj.box)
        return _Segmentation(area, RawJSON(coco_polygons_json(result.polygons)), result)

    def write_frame(self, video: VideoRef, frame: ExportFrame, image: Path | None,
                    prepared: list[_Segmentation]) -> None:
        image_id = len(self._images) + 1
        self._images.append({
            "id": image_id, "file_name": frame_file_name(video, frame.frame_index, self.opts.image_format),
            "height": video.height, "width": video.width, "video_id": video.video_id,
            "frame_id": frame.frame_index, "license": None, "coco_url": None,
        })
        for obj, segmentation in zip(frame.objects, prepared):
            annotation = self._annotation(video, frame, obj, segmentation)
            if annotation is not None:
                self._annotations.append({"id": len(self._annotations) + 1, "image_id": image_id, **annotation})

    def _annotation(self, video: VideoRef, frame: ExportFrame, obj: ExportObject,
                    segmentation: _Segmentation) -> dict[str, Any] | None:
        area = segmentation.area
        if area == 0:
            self.report.objects_dropped += 1
            return None
        if segmentation.polygons is not None:
            where = f"{video.name} frame {frame.frame_index} track {obj.track_id}"
            self.report.count_polygon(segmentation.polygons, where, self.opts.min_polygon_iou)
        x0, y0, x1, y1 = obj.box
        annotation: dict[str, Any] = {
            "category_id": self.categories.id(obj.label),
            "segmentation": segmentation.value,
            "area": area,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "iscrowd": 0,
        }
        if obj.score is not None:
            annotation["score"] = obj.score
        if obj.track_id is not None:
            annotation["track_id"] = obj.track_id
        annotation["video_id"] = video.video_id
        return annotation

    def close(self) -> None:
        data = {
            "info": {
                "year": dt.date.today().year, "version": "", "contributor": "",
                "description": f"sam31-video export of frames.{self.opts.label_field}",
                "url": "", "date_created": dt.datetime.now().replace(microsecond=0).isoformat(),
            },
            "licenses": [],
            "categories": [{"id": i, "name": n, "supercategory": None} for i, n in enumerate(self.categories.names, 1)],
            "videos": self._videos,
            "images": self._images,
            "annotations": self._annotations,
        }
        write_json(data, self.root / LABELS_FILE)
