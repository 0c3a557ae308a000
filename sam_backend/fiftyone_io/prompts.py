"""Visual prompts taken from labels a user already has: a frame-level field, or the labels
they selected in the App.

- ``Detection`` -> a box prompt on its frame.
- ``Keypoint`` -> one point prompt per keypoint; ``Polyline`` -> one per vertex (what the
  App's Annotate tab can draw on video frames). Points are positive unless the label's class
  is one of :data:`NEGATIVE_CLASSES`.

Object identity: a label's ``index`` when set (it becomes the track id), otherwise its
class (``label``): boxes of "dog" on frames 1 and 40 prompt the same object. Labels whose
class names no object ("pos") are told apart by the App's ``instance`` id when they have
one (each polyline drawn in the App is its own instance). Objects known by class or
instance get ids after the largest index, in order of first appearance, and keep their
class as track label. Negative points refine the object with the same index, or, without
one, the single positive object on that frame.

Labels drawn in the App's Annotate tab on video (FiftyOne 1.22): the drawn label is a
keyframe (``keyframe=True``) and the App copies it to the next 30 frames with
``keyframe=False`` to start a track; those copies are not prompts and are skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import fiftyone as fo

from ..coords import frame_index_from_number, pixel_box, pixel_point
from ..errors import InvalidRequest
from ..types import BoxPrompt, PointPrompt, VideoInfo

# Classes that mark a click as "not this object" (label 0); compared case-insensitively.
NEGATIVE_CLASSES = frozenset({"neg", "negative", "background", "bg", "exclude", "0"})
# Classes that only mark a click as positive: they do not name the object.
POSITIVE_CLASSES = frozenset({"pos", "positive", "foreground", "fg", "include", "1"})
PROMPT_TYPES = (fo.Detection, fo.Keypoint, fo.Polyline)


@dataclasses.dataclass
class VisualPrompts:
    """Prompts for one video, and the name of each object id they define."""

    point_prompts: list[PointPrompt] = dataclasses.field(default_factory=list)
    box_prompts: list[BoxPrompt] = dataclasses.field(default_factory=list)
    names: dict[int, str] = dataclasses.field(default_factory=dict)  # object id -> class, if known

    def counts(self) -> dict[str, int]:
        return {"points": len(self.point_prompts), "boxes": len(self.box_prompts), "objects": len(self.names)}


@dataclasses.dataclass(frozen=True)
class _Found:
    frame_number: int
    label: Any  # fo.Detection | fo.Keypoint | fo.Polyline
    where: str  # for error messages


def _is_negative(label: Any) -> bool:
    return str(label.label or "").strip().lower() in NEGATIVE_CLASSES


def _labels_in(frame_value: Any) -> list[Any]:
    if frame_value is None:
        return []
    if isinstance(frame_value, PROMPT_TYPES):
        return [frame_value]
    for attr in ("detections", "keypoints", "polylines"):
        if hasattr(frame_value, attr):
            return list(getattr(frame_value, attr) or [])
    raise InvalidRequest(f"{type(frame_value).__name__} labels cannot be prompts; use Detections, Keypoints or Polylines")


def _is_track_copy(label: Any) -> bool:
    """A copy the App made of a drawn label on the following frames (not drawn by the user)."""
    return getattr(label, "keyframe", None) is False


def _found_in_field(sample: fo.Sample, field: str) -> list[_Found]:
    name = field.removeprefix("frames.")
    return [
        _Found(number, label, f"frames.{name} on frame {number}")
        for number, frame in sample.frames.items()
        for label in _labels_in(frame[name] if frame.has_field(name) else None)
        if not _is_track_copy(label)
    ]


def prompts_from_field(sample: fo.Sample, field: str, info: VideoInfo) -> VisualPrompts:
    """Every Detection/Keypoint/Polyline in ``frames.<field>`` of one video sample."""
    return _build(_found_in_field(sample, field), info)


def prompts_from_fields(sample: fo.Sample, fields: Sequence[str], info: VideoInfo) -> VisualPrompts:
    """Several fields read as one (e.g. drawn boxes and drawn clicks): one object id space,
    so a "dog" box and "dog" clicks prompt the same object and ids never collide."""
    return _build([found for field in fields for found in _found_in_field(sample, field)], info)


def prompts_from_selection(sample: fo.Sample, selected_labels: Iterable[dict[str, Any]], info: VideoInfo) -> VisualPrompts:
    """The labels a user selected in the App (``ctx.selected_labels``) on this sample."""
    return _build(_found_in_selection(sample, selected_labels), info)


def prompts_from_sources(sample: fo.Sample, info: VideoInfo, *, fields: Sequence[str] = (),
                         selected_labels: Iterable[dict[str, Any]] = ()) -> VisualPrompts:
    """Fields and App selection read together, in one object id space."""
    found = [f for field in fields for f in _found_in_field(sample, field)]
    return _build(found + _found_in_selection(sample, selected_labels), info)


def _found_in_selection(sample: fo.Sample, selected_labels: Iterable[dict[str, Any]]) -> list[_Found]:
    found = []
    for item in selected_labels:
        if item.get("sample_id") != sample.id:
            continue
        number, field = item.get("frame_number"), str(item.get("field", "")).removeprefix("frames.")
        if number is None:
            raise InvalidRequest(f"selected label {item.get('label_id')} in {field} is not on a video frame")
        value = sample.frames[number][field] if sample.frames[number].has_field(field) else None
        matches = [lb for lb in _labels_in(value) if lb.id == item.get("label_id")]
        if not matches:
            raise InvalidRequest(f"selected label {item.get('label_id')} not found in frames.{field} on frame {number}")
        found.append(_Found(number, matches[0], f"selected frames.{field} on frame {number}"))
    return found


def _build(found: Sequence[_Found], info: VideoInfo) -> VisualPrompts:
    ids = _assign_ids(found)
    out = VisualPrompts(names={oid: name for key, (oid, name) in ids.items() if name})
    for item in found:
        frame_index = frame_index_from_number(item.frame_number)
        lb = item.label
        if isinstance(lb, fo.Detection):
            if _is_negative(lb):
                raise InvalidRequest(f"{item.where}: a box cannot be negative ({lb.label!r}); draw negative clicks as points")
            bx, by, bw, bh = lb.bounding_box
            if bx >= 1 or by >= 1 or bx + bw <= 0 or by + bh <= 0:
                raise InvalidRequest(f"{item.where}: box {lb.bounding_box} lies outside the frame "
                                     "(FiftyOne boxes are relative [x, y, width, height], 0..1)")
            x0, y0, x1, y1 = pixel_box(lb.bounding_box, info.width, info.height)  # clipped to the frame
            if x1 <= x0 or y1 <= y0:
                raise InvalidRequest(f"{item.where}: box {lb.bounding_box} is smaller than a pixel")
            oid = ids[_key(lb)][0]
            out.box_prompts.append(BoxPrompt(x_min=x0, y_min=y0, x_max=x1, y_max=y1, object_id=oid, frame_index=frame_index))
            continue
        vertices = [pt for shape in lb.points for pt in shape] if isinstance(lb, fo.Polyline) else list(lb.points)
        positive = not _is_negative(lb)
        oid = ids[_key(lb)][0] if positive or lb.index is not None else _owner_on_frame(found, item, ids)
        for x, y in vertices:
            if x is None or y is None or x != x or y != y:  # skipped keypoints are NaN
                continue
            # A click drawn on the frame's edge may land a hair outside; farther is a mistake.
            if not (-1 <= x * info.width <= info.width + 1 and -1 <= y * info.height <= info.height + 1):
                raise InvalidRequest(f"{item.where}: point ({x:.4g}, {y:.4g}) is outside the frame "
                                     "(FiftyOne points are relative, 0..1)")
            px, py = pixel_point(x, y, info.width, info.height)
            out.point_prompts.append(PointPrompt(x=px, y=py, label=1 if positive else 0, object_id=oid, frame_index=frame_index))
    return out


def _name(label: Any) -> str | None:
    text = (label.label or "").strip()
    return None if not text or text.lower() in NEGATIVE_CLASSES | POSITIVE_CLASSES else text


def _key(label: Any) -> tuple[str, Any]:
    if label.index is not None:
        return ("index", label.index)
    instance = getattr(label, "instance_id", None)
    if _name(label) is None and instance is not None:
        return ("instance", str(instance))  # "pos" clicks drawn in the App: one object per drawing
    return ("class", label.label or "")


def _assign_ids(found: Sequence[_Found]) -> dict[tuple[str, Any], tuple[int, str | None]]:
    """key -> (object id, class name or None)."""
    positives = [f.label for f in found if not _is_negative(f.label) or f.label.index is not None]
    used = {lb.index for lb in positives if lb.index is not None}
    next_id = max(used, default=0) + 1
    ids: dict[tuple[str, Any], tuple[int, str | None]] = {}
    for lb in positives:
        key = _key(lb)
        if key in ids:
            continue
        if key[0] == "index":
            ids[key] = (lb.index, _name(lb))
        else:
            ids[key] = (next_id, _name(lb))
            next_id += 1
    return ids


def _owner_on_frame(found: Sequence[_Found], item: _Found, ids: dict[tuple[str, Any], tuple[int, str | None]]) -> int:
    owners = {ids[_key(f.label)][0] for f in found if f.frame_number == item.frame_number and not _is_negative(f.label)}
    if len(owners) != 1:
        raise InvalidRequest(
            f"{item.where}: negative clicks ({item.label.label!r}) need to say which object they refine: "
            f"give them the object's index (found {len(owners)} positive objects on that frame)"
        )
    return owners.pop()
