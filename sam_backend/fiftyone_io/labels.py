"""Backend results as FiftyOne label objects (the SDK's own, slower path).

Used by the ``apply_model`` adapter, where FiftyOne writes the labels itself, and as the
reference the fast writer is checked against.
"""

from __future__ import annotations

import fiftyone as fo

from ..coords import relative_box
from ..types import FrameResult, TrackedObject


def to_detection(obj: TrackedObject, width: int, height: int) -> fo.Detection:
    return fo.Detection(
        label=obj.label,
        bounding_box=relative_box(obj.box, width, height),
        mask=obj.crop if obj.has_mask else None,
        confidence=None if obj.score is None else float(obj.score),
        index=int(obj.track_id),
    )


def to_detections(frame: FrameResult, width: int, height: int) -> fo.Detections:
    return fo.Detections(detections=[to_detection(o, width, height) for o in frame.objects])
