"""What an export did and how it is going (progress), as plain data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .polygons import PolygonResult

# Low-IoU polygons named individually in the report; the rest are counted.
_EXAMPLES = 5


@dataclasses.dataclass(frozen=True)
class ExportProgress:
    """Frames written so far out of all frames of the export, and the current video."""

    frames_done: int
    frames_total: int
    video_index: int  # 0-based
    video_count: int
    video_name: str

    @property
    def fraction(self) -> float:
        return self.frames_done / self.frames_total if self.frames_total else 1.0


@dataclasses.dataclass
class ExportReport:
    """What an export wrote. ``warnings`` say where the format could not hold what the
    labels hold (polygons that read back worse than ``min_polygon_iou``, overlaps MOTS
    forbids...); ``notes`` say how something was encoded (holes cut in as keyholes...)."""

    format: str
    label_field: str
    output_dir: Path
    videos: int = 0
    frames: int = 0
    objects: int = 0
    tracks: int = 0
    images: int = 0
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    masks_with_holes: int = 0
    masks_with_parts: int = 0
    polygon_min_iou: float | None = None
    low_iou_polygons: int = 0
    overlap_pixels_removed: int = 0
    objects_dropped: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    _low_iou_examples: list[str] = dataclasses.field(default_factory=list, repr=False)

    def count_polygon(self, result: PolygonResult, where: str, threshold: float) -> None:
        self.masks_with_holes += result.holes > 0
        self.masks_with_parts += result.parts > 1
        self.polygon_min_iou = result.iou if self.polygon_min_iou is None else min(self.polygon_min_iou, result.iou)
        if result.iou < threshold:
            self.low_iou_polygons += 1
            if len(self._low_iou_examples) < _EXAMPLES:
                self._low_iou_examples.append(f"{where} (IoU {result.iou:.3f})")

    def low_iou_summary(self, threshold: float) -> str | None:
        if not self.low_iou_polygons:
            return None
        more = self.low_iou_polygons - len(self._low_iou_examples)
        return (f"{self.low_iou_polygons} polygons read back with IoU < {threshold} against their masks: "
                + ", ".join(self._low_iou_examples) + (f" and {more} more" if more > 0 else ""))

    def summary(self) -> str:
        text = (f"{self.format}: {self.videos} videos, {self.frames} frames, {self.objects} objects, "
                f"{self.tracks} tracks from frames.{self.label_field} -> {self.output_dir}")
        if self.images:
            text += f" ({self.images} images)"
        return text
