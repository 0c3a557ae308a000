"""Reading fal's answers into FrameResults, one decoder per response shape.

fal's SAM endpoints answer in different shapes (see reference notes); each decoder says
whether a payload is its shape and how to read it, and :func:`decode_output` picks the
first that matches. Adding a shape is adding one decoder to ``DECODERS``.

Shapes handled:
- ``per_frame_rle``: ``{"frames": [{"frame_index", "masks": [{"rle": {"size", "counts"},
  "metadata": {"index", "score", "box": [cx, cy, w, h] normalised, "label"?}}]}], "video"?, ...}``
- ``video_only`` (the documented ``fal-ai/sam-3-1/video``): ``{"video": File,
  "boundingbox_frames_zip": File?}``: a rendered video and overlay images, no labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ... import masks as mask_ops
from ...errors import UnexpectedResponse
from ...types import FrameResult, SegmentRequest, TrackedObject, VideoInfo

FILE_KEYS = ("video", "boundingbox_frames_zip", "boundingbox_zip")


class NoLabelsInResponse(UnexpectedResponse):
    """The endpoint returned only rendered media, no per-frame masks."""


@dataclasses.dataclass(frozen=True)
class DecodedOutput:
    shape: str
    files: dict[str, str]  # output name -> URL (rendered video, overlay zip)
    frames: Callable[[], Iterator[FrameResult]] | None  # None: the payload has no labels


@dataclasses.dataclass(frozen=True)
class Decoder:
    name: str
    matches: Callable[[dict[str, Any]], bool]
    decode: Callable[[dict[str, Any], VideoInfo, SegmentRequest], DecodedOutput]


def label_for(track_id: int, reported: str | None, request: SegmentRequest) -> str:
    """The concept for a track: what fal reported, else what the request implies."""
    if reported:
        return reported
    if track_id in request.visual_object_ids():
        return f"object_{track_id}"
    concepts = request.concepts
    if len(concepts) == 1 and not request.point_prompts and not request.box_prompts:
        return concepts[0]
    return "object"


def _files(payload: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key in FILE_KEYS:
        value = payload.get(key)
        if isinstance(value, dict) and value.get("url"):
            out[key] = value["url"]
    return out


def _fit(mask: np.ndarray, info: VideoInfo) -> np.ndarray:
    """Masks must be at the video's size; resample nearest-neighbour if fal used another."""
    if mask.shape == (info.height, info.width):
        return mask
    rows = (np.arange(info.height) * mask.shape[0] // info.height).clip(0, mask.shape[0] - 1)
    cols = (np.arange(info.width) * mask.shape[1] // info.width).clip(0, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def _decode_per_frame_rle(payload: dict[str, Any], info: VideoInfo, request: SegmentRequest) -> DecodedOutput:
    entries = payload["frames"]
    by_index: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        try:
            index = int(entry["frame_index"])
            by_index[index] = list(entry.get("masks") or [])
        except (KeyError, TypeError, ValueError):
            raise UnexpectedResponse(f"frame entry without a usable frame_index: {str(entry)[:200]}") from None
    if by_index and max(by_index) >= info.frame_count:
        raise UnexpectedResponse(
            f"fal returned masks for frame_index {max(by_index)} but the video has {info.frame_count} frames "
            "(decoders disagree on the frame count; re-encode the video to constant frame rate)"
        )

    def frames() -> Iterator[FrameResult]:
        for index in range(info.frame_count):
            objects = []
            seen: set[int] = set()
            for item in by_index.get(index, ()):
                try:
                    meta = item["metadata"]
                    track_id = int(meta["index"])
                    mask = _fit(mask_ops.decode_rle(item["rle"]), info)
                except (KeyError, TypeError, ValueError) as exc:
                    raise UnexpectedResponse(f"unreadable mask on frame {index}: {exc!r} in {str(item)[:200]}") from None
                if track_id in seen:
                    raise UnexpectedResponse(f"track {track_id} appears twice on frame {index}")
                seen.add(track_id)
                box = mask_ops.tight_box(mask)
                if box is None:  # the tracker lost the object on this frame
                    continue
                label = label_for(track_id, meta.get("label"), request)
                objects.append(TrackedObject(track_id, label, float(meta.get("score", 1.0)), mask, box))
            yield FrameResult(index, objects)

    return DecodedOutput("per_frame_rle", _files(payload), frames)


def _decode_video_only(payload: dict[str, Any], info: VideoInfo, request: SegmentRequest) -> DecodedOutput:
    return DecodedOutput("video_only", _files(payload), None)


DECODERS: list[Decoder] = [
    Decoder("per_frame_rle", lambda p: isinstance(p.get("frames"), list), _decode_per_frame_rle),
    Decoder("video_only", lambda p: isinstance(p.get("video"), dict) and "frames" not in p, _decode_video_only),
]


def decode_output(payload: Any, info: VideoInfo, request: SegmentRequest) -> DecodedOutput:
    if isinstance(payload, dict):
        for decoder in DECODERS:
            if decoder.matches(payload):
                return decoder.decode(payload, info, request)
    keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
    raise UnexpectedResponse(f"fal answered a shape no decoder knows (keys: {keys}); known shapes: "
                             + ", ".join(d.name for d in DECODERS))
