"""What to ask the backend for one video: its own request, frames and track names.

A run's options apply to every video, but some prompts only exist per video: labels in a
frame field, labels selected in the App, and refining one track from the frame where the
user fixed it. This module turns those into one :class:`SamplePlan` per video, before
anything is sent, so every problem surfaces at once with the sample it belongs to.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import fiftyone as fo

from ..coords import frame_index_from_number, pixel_box
from ..errors import InvalidRequest
from ..types import BoxPrompt, FrameRange, SegmentRequest, VideoInfo
from .prompts import VisualPrompts, prompts_from_sources

Direction = Literal["forward", "backward", "both"]


@dataclasses.dataclass(frozen=True)
class Refine:
    """Re-run one track from the frame where the user fixed it; the rest stays."""

    track_id: int
    frame_number: int  # FiftyOne's 1-based frame number
    direction: Direction = "forward"

    def frames(self, frame_count: int) -> FrameRange | None:
        start = frame_index_from_number(self.frame_number)
        if self.direction == "forward":
            return FrameRange(start=start)
        if self.direction == "backward":
            return FrameRange(start=0, stop=start + 1)
        return None


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    request: SegmentRequest
    frames: FrameRange | None
    names: dict[int, str]  # track id -> label for visual-prompt tracks
    replace_tracks: frozenset[int] | None = None


def plan_sample(sample: fo.Sample, info: VideoInfo, *, base: dict[str, Any], frames: FrameRange | None,
                prompt_fields: list[str], selected_labels: list[dict[str, Any]], refine: Refine | None,
                label_field: str) -> SamplePlan | None:
    """The request for one video: the run's own prompts (``base``: SegmentRequest fields)
    plus prompts from labels, or the refine of one track. None: the run gives this video
    no prompt at all (no text or typed prompts, and none of its labels are prompts), so
    there is nothing to send for it."""
    visual = prompts_from_sources(sample, info, fields=prompt_fields, selected_labels=selected_labels)
    own = (base.get("prompt") or "").strip() or base.get("point_prompts") or base.get("box_prompts")
    if refine is None and not own and not visual.point_prompts and not visual.box_prompts:
        return None
    typed_ids = {p.object_id for p in base.get("point_prompts", []) + base.get("box_prompts", [])
                 if _get(p, "object_id") is not None}
    clash = typed_ids & set(_ids(visual))
    if clash:
        raise InvalidRequest(f"object ids {sorted(clash)} are given both in the form and by labels; use different ids")
    replace = None
    if refine is not None:
        visual, frames = _refine(sample, info, visual, base, frames, refine, label_field)
        replace = frozenset({refine.track_id})
    request = SegmentRequest.build(**{
        **base,
        "point_prompts": list(base.get("point_prompts", [])) + visual.point_prompts,
        "box_prompts": list(base.get("box_prompts", [])) + visual.box_prompts,
    })
    request.check_against(info, frames)
    return SamplePlan(request, frames, visual.names, replace)


def _get(prompt: Any, key: str) -> Any:
    return prompt.get(key) if isinstance(prompt, dict) else getattr(prompt, key)


def _ids(visual: VisualPrompts) -> list[int]:
    return [p.object_id for p in [*visual.point_prompts, *visual.box_prompts] if p.object_id is not None]


def _refine(sample: fo.Sample, info: VideoInfo, visual: VisualPrompts, base: dict[str, Any], frames: FrameRange | None,
            refine: Refine, label_field: str) -> tuple[VisualPrompts, FrameRange | None]:
    if frames is not None:
        raise InvalidRequest("refine chooses the frames itself (from the fixed frame on); leave the frame range empty")
    if (base.get("prompt") or "").strip():
        raise InvalidRequest("refine re-runs one object from visual prompts; leave the text prompt empty")
    if base.get("point_prompts") or base.get("box_prompts"):
        # typed prompts are fine, but they must all be about this one object
        ids = {_get(p, "object_id") for p in base.get("point_prompts", []) + base.get("box_prompts", [])}
        if ids - {refine.track_id}:
            raise InvalidRequest(f"refine of track {refine.track_id}: typed prompts must use object_id={refine.track_id}")
    if not 1 <= refine.frame_number <= info.frame_count:
        raise InvalidRequest(f"refine frame {refine.frame_number} is outside the video (frames 1..{info.frame_count})")
    tracks = _track_labels(sample, label_field)
    if refine.track_id not in tracks:
        known = ", ".join(map(str, sorted(tracks))) or "none"
        raise InvalidRequest(f"track {refine.track_id} is not in frames.{label_field} of this video (its tracks: "
                             f"{known}): refine corrects an existing track; segment new objects without refine")
    existing = tracks[refine.track_id]
    ids = set(_ids(visual))
    if len(ids) > 1 and refine.track_id in ids:  # e.g. the panel's fields hold clicks for several objects
        tid = refine.track_id
        visual = VisualPrompts(point_prompts=[p for p in visual.point_prompts if p.object_id == tid],
                               box_prompts=[b for b in visual.box_prompts if b.object_id == tid],
                               names={k: v for k, v in visual.names.items() if k == tid})
        ids = {tid}
    if len(ids) > 1:
        raise InvalidRequest(f"refine re-runs one object, but the prompts describe {len(ids)} objects ({sorted(ids)}), "
                             f"none of them track {refine.track_id}")
    if ids or base.get("point_prompts") or base.get("box_prompts"):
        old = ids.pop() if ids else refine.track_id
        visual = VisualPrompts(
            point_prompts=[p.model_copy(update={"object_id": refine.track_id}) for p in visual.point_prompts],
            box_prompts=[b.model_copy(update={"object_id": refine.track_id}) for b in visual.box_prompts],
            names={refine.track_id: existing or visual.names.get(old) or f"object_{refine.track_id}"},
        )
    else:  # the user corrected the track's own box on that frame: use it as the prompt
        det = _detection(sample, label_field, refine.track_id, refine.frame_number)
        if det is None:
            raise InvalidRequest(
                f"track {refine.track_id} has no detection in frames.{label_field} on frame {refine.frame_number}: "
                "draw or select a box or clicks for it there"
            )
        x0, y0, x1, y1 = pixel_box(det.bounding_box, info.width, info.height)
        box = BoxPrompt(x_min=x0, y_min=y0, x_max=x1, y_max=y1, object_id=refine.track_id,
                        frame_index=frame_index_from_number(refine.frame_number))
        visual = VisualPrompts(box_prompts=[box], names={refine.track_id: det.label or f"object_{refine.track_id}"})
    return visual, refine.frames(info.frame_count)


def _detection(sample: fo.Sample, field: str, track_id: int, frame_number: int) -> fo.Detection | None:
    frame = sample.frames[frame_number]
    value = frame[field] if frame.has_field(field) else None
    for det in (value.detections if value is not None else []):
        if det.index == track_id:
            return det
    return None


def _track_labels(sample: fo.Sample, field: str) -> dict[int, str | None]:
    """Track id -> its first non-empty label, for every track in ``frames.<field>`` (read
    by projection: the masks stay in the database)."""
    if field not in (sample.dataset.get_frame_field_schema() or {}):
        return {}
    path = f"frames.{field}.detections"
    ids, labels = sample.dataset.select(sample.id).values([f"{path}.index", f"{path}.label"])
    out: dict[int, str | None] = {}
    for frame_ids, frame_labels in zip(ids[0] if ids else [], labels[0] if labels else []):
        for index, label in zip(frame_ids or [], frame_labels or []):
            if index is not None and not out.get(index):
                out[index] = label or None
    return out
