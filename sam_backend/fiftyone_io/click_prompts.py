"""Prompts clicked on a video frame (the App's "SAM prompts" panel), stored as labels that a
segment run reads with :mod:`.prompts`, so clicking and drawing share one path:

- a click -> a ``Keypoint`` in ``frames.sam_points`` (the App shows it as a dot on that frame);
  class ``pos``/``neg`` (or the object's name for a positive click);
- a box (two clicks: opposite corners) -> a ``Detection`` in ``frames.sam_boxes``, the field
  the Annotate tab draws into too.

Every label carries ``index`` = the object id the user chose, so clicks and boxes of one
object, on any frames, prompt one track with that id.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import os
from collections.abc import Sequence

import fiftyone as fo

from ..coords import (
    frame_index_from_number,
    pixel_box,
    pixel_point,
    relative_box,
    relative_point,
)
from ..errors import InvalidRequest
from ..video import probe, read_frame
from .annotate import DEFAULT_BOXES_FIELD
from .video_info import sample_video

DEFAULT_POINTS_FIELD = "sam_points"
_KINDS = {fo.Keypoints: "keypoints", fo.Detections: "detections"}


@dataclasses.dataclass(frozen=True)
class FrameImage:
    """A frame ready for a Plotly ``image`` trace: pixel (col, row) of the image is video
    pixel (col * scale, row * scale)."""

    data_uri: str
    width: int  # video pixels
    height: int
    scale: float


@dataclasses.dataclass(frozen=True)
class FramePrompts:
    """The prompts on one frame, in video pixels, with the label ids that hold them."""

    points: list[tuple[int, int, bool, int | None, str]]  # x, y, positive, object id, label id
    boxes: list[tuple[int, int, int, int, int | None, str]]  # x0, y0, x1, y1, object id, label id


def frame_image(sample: fo.Sample, frame_number: int, *, max_side: int = 960) -> FrameImage:
    """Frame ``frame_number`` (1-based, as the App counts) as a JPEG data URI, downscaled so
    its longer side is at most ``max_side`` (panel payloads stay small)."""
    _, _, count = _size(sample)
    _check_frame(frame_number, count)
    stat = os.stat(sample.filepath)
    return _encoded_frame(sample.filepath, (stat.st_mtime_ns, stat.st_size), frame_index_from_number(frame_number), max_side)


# Every click redraws the panel on the same frame: decode and encode it once, not per click.
# Keyed by the file's mtime and size too, so a replaced video is never served stale.
@functools.lru_cache(maxsize=16)
def _encoded_frame(path: str, stamp: tuple[int, int], frame_index: int, max_side: int) -> FrameImage:
    from PIL import Image  # FiftyOne depends on Pillow

    info = probe(path)
    rgb = read_frame(path, frame_index, info)
    scale = max(1.0, max(info.width, info.height) / max_side)
    image = Image.fromarray(rgb)
    if scale > 1.0:
        image = image.resize((round(info.width / scale), round(info.height / scale)), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=88)
    return FrameImage("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), info.width, info.height, scale)


def add_click(sample: fo.Sample, frame_number: int, x: int, y: int, *, positive: bool, object_id: int,
              name: str | None = None, field: str = DEFAULT_POINTS_FIELD) -> str:
    """Store a click (video pixels) on a frame; returns the new label's id."""
    width, height, count = _size(sample)
    _check_frame(frame_number, count)
    _check_object_id(object_id)
    if not (0 <= x < width and 0 <= y < height):
        raise InvalidRequest(f"click ({x}, {y}) is outside the frame ({width}x{height})")
    label = (name or "pos") if positive else "neg"
    keypoint = fo.Keypoint(label=label, points=[relative_point(x, y, width, height)], index=object_id)
    _append(sample, frame_number, field, fo.Keypoints, keypoint)
    return keypoint.id


def add_box(sample: fo.Sample, frame_number: int, corners: Sequence[int], *, object_id: int,
            name: str | None = None, field: str = DEFAULT_BOXES_FIELD) -> str:
    """Store a box given by two opposite corners ``(xa, ya, xb, yb)`` in video pixels, both
    inclusive (the pixels clicked); returns the new label's id."""
    width, height, count = _size(sample)
    _check_frame(frame_number, count)
    _check_object_id(object_id)
    xa, ya, xb, yb = corners
    x0, x1 = sorted((xa, xb))
    y0, y1 = sorted((ya, yb))
    if x0 < 0 or y0 < 0 or x1 >= width or y1 >= height:
        raise InvalidRequest(f"box ({x0},{y0})-({x1},{y1}) is outside the frame ({width}x{height})")
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise InvalidRequest(f"box ({x0},{y0})-({x1},{y1}) has no area: click two opposite corners")
    box = fo.Detection(label=name or f"object_{object_id}", index=object_id,
                       bounding_box=relative_box((x0, y0, x1 + 1, y1 + 1), width, height))
    _append(sample, frame_number, field, fo.Detections, box)
    return box.id


def remove_label(sample: fo.Sample, frame_number: int, field: str, label_id: str) -> bool:
    """Delete one prompt label; False when it is no longer there."""
    frame = sample.frames[frame_number]
    value = frame[field] if frame.has_field(field) else None
    kind = _KINDS.get(type(value))
    if kind is None:
        return False
    kept = [lb for lb in getattr(value, kind) if lb.id != label_id]
    if len(kept) == len(getattr(value, kind)):
        return False
    setattr(value, kind, kept)
    sample.save()
    return True


def prompts_on_frame(sample: fo.Sample, frame_number: int, *, points_field: str = DEFAULT_POINTS_FIELD,
                     boxes_field: str = DEFAULT_BOXES_FIELD) -> FramePrompts:
    width, height, _ = _size(sample)
    frame = sample.frames[frame_number] if frame_number in sample.frames else None
    points, boxes = [], []
    keypoints = frame[points_field] if frame is not None and frame.has_field(points_field) else None
    for kp in getattr(keypoints, "keypoints", None) or []:
        for x, y in kp.points:
            px, py = pixel_point(x, y, width, height)
            points.append((px, py, str(kp.label).lower() != "neg", kp.index, kp.id))
    detections = frame[boxes_field] if frame is not None and frame.has_field(boxes_field) else None
    for det in getattr(detections, "detections", None) or []:
        if getattr(det, "keyframe", None) is False:  # the App's track copies are not prompts
            continue
        boxes.append((*pixel_box(det.bounding_box, width, height), det.index, det.id))
    return FramePrompts(points, boxes)


def _size(sample: fo.Sample) -> tuple[int, int, int]:
    info = sample_video(sample)  # decoded size and count: the App shows rotated video rotated
    return info.width, info.height, info.frame_count


def _check_frame(frame_number: int, count: int) -> None:
    if not 1 <= frame_number <= count:
        raise InvalidRequest(f"frame {frame_number} is outside the video (frames 1..{count})")


def _check_object_id(object_id: int) -> None:
    if object_id < 0:
        raise InvalidRequest(f"object id must be >= 0, got {object_id}")


def _append(sample: fo.Sample, frame_number: int, field: str, container: type, label: fo.Label) -> None:
    dataset = sample._dataset
    if dataset.has_frame_field(field):
        doc_type = getattr(dataset.get_field(f"frames.{field}"), "document_type", None)
        if doc_type is not container:
            raise InvalidRequest(f"frames.{field} holds {getattr(doc_type, '__name__', doc_type)}, not {container.__name__}; "
                                 "pick another field for the prompts")
    frame = sample.frames[frame_number]
    value = frame[field] if frame.has_field(field) else None
    value = value or container()
    getattr(value, _KINDS[container]).append(label)
    frame[field] = value
    sample.save()
