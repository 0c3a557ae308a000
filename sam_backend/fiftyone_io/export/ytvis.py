"""YouTube-VIS: one annotation per track ("masklet") with a per-frame list of RLE masks.

Layout::

    instances.json
    JPEGImages/<video>/000000.jpg     frames="images" (file names count frames from 0)

Per video: ``id``, ``width``, ``height``, ``length`` (= number of listed frames) and
``file_names`` (one per exported frame; with a frame stride they skip frames, as
YouTube-VIS's own every-5th-frame annotations do). Per track: ``video_id``,
``category_id``, ``segmentations`` / ``bboxes`` / ``areas`` with one entry per listed
frame (``null`` where the object is not visible), ``iscrowd`` 0, ``height``, ``width``,
``length`` (as in the YouTube-VIS 2019 files), ``score`` (mean confidence, as results
files and SAM 3's evaluator carry it), plus ``track_id`` and per-frame ``scores``.
Masks are compressed RLE, which SAM 3's YT-VIS evaluator expects (it reads no polygons).

A track whose label changes along the video becomes one annotation per label, each with
the same ``track_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ... import masks as mask_ops
from .base import FormatWriter, check_unique_tracks, frame_file_name, write_json
from .tracks import ExportFrame, VideoRef

LABELS_FILE = "instances.json"
IMAGES_DIR = "JPEGImages"


class YtvisWriter(FormatWriter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._videos: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []
        self._tracks: dict[tuple[int, str], dict[int, tuple[dict[str, Any], list[int], int, float | None]]] = {}

    def image_path(self, video: VideoRef, frame_index: int) -> Path:
        return self.root / IMAGES_DIR / frame_file_name(video, frame_index, self.opts.image_format)

    def begin_video(self, video: VideoRef) -> None:
        self._tracks = {}

    def write_frame(self, video: VideoRef, frame: ExportFrame, image: Path | None, prepared: Any) -> None:
        check_unique_tracks(video, frame, "YouTube-VIS")
        for obj in frame.objects:
            assert obj.mask is not None and obj.track_id is not None
            area = int(np.count_nonzero(obj.mask))
            if area == 0:
                self.report.objects_dropped += 1
                continue
            x0, y0, x1, y1 = obj.box
            self._tracks.setdefault((obj.track_id, obj.label), {})[frame.frame_index] = (
                mask_ops.encode_rle(obj.mask), [x0, y0, x1 - x0, y1 - y0], area, obj.score)

    def end_video(self, video: VideoRef) -> None:
        frames = list(video.frame_indices)
        self._videos.append({
            "id": video.video_id, "name": video.name, "width": video.width, "height": video.height,
            "length": len(frames), "file_names": [frame_file_name(video, i, self.opts.image_format) for i in frames],
            "filepath": video.filepath, "fps": video.fps,
        })
        for (track_id, label), per_frame in sorted(self._tracks.items()):
            entries = [per_frame.get(i) for i in frames]
            scores = [e[3] if e else None for e in entries]
            known = [s for s in scores if s is not None]
            annotation: dict[str, Any] = {
                "id": len(self._annotations) + 1, "video_id": video.video_id,
                "category_id": self.categories.id(label), "iscrowd": 0,
                "height": video.height, "width": video.width, "length": 1,
                "segmentations": [e[0] if e else None for e in entries],
                "bboxes": [e[1] if e else None for e in entries],
                "areas": [e[2] if e else None for e in entries],
                "track_id": track_id,
            }
            if known:
                annotation["score"] = float(np.mean(known))
                annotation["scores"] = scores
            self._annotations.append(annotation)
        self._tracks = {}

    def close(self) -> None:
        data = {
            "info": {"description": f"sam31-video export of frames.{self.opts.label_field}"},
            "licenses": [],
            "categories": [{"id": i, "name": n, "supercategory": "object"} for i, n in enumerate(self.categories.names, 1)],
            "videos": self._videos,
            "annotations": self._annotations,
        }
        write_json(data, self.root / LABELS_FILE)
