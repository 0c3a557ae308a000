"""Reading fal's answers into FrameResults, one decoder per response shape.

fal's SAM endpoints answer in different shapes (see the reference notes; the RLE layout is
not documented), so each decoder says whether a payload is its shape and how to read it,
and :func:`decode_output` picks the first that matches. Adding a shape is adding one
decoder to ``DECODERS``. Masks may be COCO RLE with compressed (string) or plain (list)
counts; they are resampled to the video's size if fal used another.

Shapes handled:
- ``per_frame_rle``: ``{"frames": [{"frame_index", "masks": [{"rle": {"size", "counts"},
  "metadata": {"index", "score", "box": [cx, cy, w, h] normalised, "label"?}}]}], ...}``
- ``per_object_rle``: ``{"objects" | "masks": [{"object_id" | "index" | "id" | "track_id",
  "label"?, "score"?, and per-frame RLEs as "rles": [rle | null per frame] or "frames":
  [{"frame_index", "rle"}]}]}``
- ``mask_file``: ``{"mask_url": url | File}``: the masks live in a JSON file (one of the
  shapes above) that the backend downloads right after the result, since fal deletes
  result files soon; the file's JSON arrives here as ``attachments["mask_url"]``.
- ``video_only`` (the documented ``fal-ai/sam-3-1/video``): ``{"video": File,
  "boundingbox_frames_zip": File?}``: a rendered video and overlay images, no labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ... import masks as mask_ops
from ...errors import UnexpectedResponse
from ...types import FrameResult, SegmentRequest, TrackedObject, VideoInfo

FILE_KEYS = ("video", "boundingbox_frames_zip", "boundingbox_zip", "mask_url")
# Keys whose URL points at masks the decoder needs (downloaded with the result).
MASK_FILE_KEYS = ("mask_url",)
_ID_KEYS = ("object_id", "index", "id", "track_id")

Attachments = Mapping[str, Any]


class NoLabelsInResponse(UnexpectedResponse):
    """The endpoint returned only rendered media, no per-frame masks. ``files`` maps
    output name -> URL (the rendered video, the overlay zip)."""

    def __init__(self, message: str, files: Mapping[str, str] | None = None) -> None:
        self.files = dict(files or {})
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class DecodedOutput:
    shape: str
    files: dict[str, str]  # output name -> URL (rendered video, overlay zip)
    frames: Callable[[], Iterator[FrameResult]] | None  # None: the payload has no labels


@dataclasses.dataclass(frozen=True)
class Decoder:
    name: str
    matches: Callable[[dict[str, Any], Attachments], bool]
    decode: Callable[[dict[str, Any], VideoInfo, SegmentRequest, Attachments], DecodedOutput]


@dataclasses.dataclass(frozen=True)
class _Item:
    track_id: int
    label: str | None
    score: float
    rle: dict[str, Any]


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


def file_url(value: Any) -> str | None:
    """A URL from a fal File object (``{"url": ...}``) or a bare string."""
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return value["url"]
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return value
    return None


def output_files(payload: dict[str, Any]) -> dict[str, str]:
    return {key: url for key in FILE_KEYS if (url := file_url(payload.get(key)))}


def _fit(mask: np.ndarray, info: VideoInfo) -> np.ndarray:
    """Masks must be at the video's size; resample nearest-neighbour if fal used another."""
    if mask.shape == (info.height, info.width):
        return mask
    rows = (np.arange(info.height) * mask.shape[0] // info.height).clip(0, mask.shape[0] - 1)
    cols = (np.arange(info.width) * mask.shape[1] // info.width).clip(0, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def _frames(by_index: dict[int, list[_Item]], info: VideoInfo, request: SegmentRequest) -> Callable[[], Iterator[FrameResult]]:
    """Every frame 0..N-1 in order (empty where nothing was found), masks decoded lazily
    so memory holds one frame's masks at a time."""
    if by_index and max(by_index) >= info.frame_count:
        raise UnexpectedResponse(
            f"fal returned masks for frame_index {max(by_index)} but the video has {info.frame_count} frames "
            "(decoders disagree on the frame count; re-encode the video to constant frame rate)"
        )
    if by_index and min(by_index) < 0:
        raise UnexpectedResponse(f"fal returned masks for frame_index {min(by_index)}")

    def frames() -> Iterator[FrameResult]:
        for index in range(info.frame_count):
            objects = []
            seen: set[int] = set()
            for item in by_index.get(index, ()):
                try:
                    mask = _fit(mask_ops.decode_rle(item.rle), info)
                except (KeyError, TypeError, ValueError) as exc:
                    raise UnexpectedResponse(f"unreadable mask on frame {index}: {exc!r} in {str(item.rle)[:200]}") from None
                if item.track_id in seen:
                    raise UnexpectedResponse(f"track {item.track_id} appears twice on frame {index}")
                seen.add(item.track_id)
                box = mask_ops.tight_box(mask)
                if box is None:  # the tracker lost the object on this frame
                    continue
                label = label_for(item.track_id, item.label, request)
                objects.append(TrackedObject(item.track_id, label, item.score, mask, box))
            yield FrameResult(index, objects)

    return frames


# --------------------------------------------------------------------------- per frame


def _is_per_frame(payload: dict[str, Any], attachments: Attachments) -> bool:
    return isinstance(payload.get("frames"), list)


def _decode_per_frame_rle(payload: dict[str, Any], info: VideoInfo, request: SegmentRequest,
                          attachments: Attachments) -> DecodedOutput:
    by_index: dict[int, list[_Item]] = {}
    for entry in payload["frames"]:
        try:
            index = int(entry["frame_index"])
            items = []
            for m in entry.get("masks") or []:
                meta = m["metadata"]
                items.append(_Item(int(meta["index"]), meta.get("label"), float(meta.get("score", 1.0)), m["rle"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(f"unreadable frame entry ({exc!r}): {str(entry)[:200]}") from None
        by_index[index] = items
    return DecodedOutput("per_frame_rle", output_files(payload), _frames(by_index, info, request))


# --------------------------------------------------------------------------- per object


def _object_list(payload: dict[str, Any]) -> list[Any] | None:
    for key in ("objects", "masks"):
        value = payload.get(key)
        if isinstance(value, list) and all(isinstance(o, dict) and any(k in o for k in _ID_KEYS) for o in value):
            return value
    return None


def _is_per_object(payload: dict[str, Any], attachments: Attachments) -> bool:
    return "frames" not in payload and _object_list(payload) is not None


def _decode_per_object_rle(payload: dict[str, Any], info: VideoInfo, request: SegmentRequest,
                           attachments: Attachments) -> DecodedOutput:
    by_index: dict[int, list[_Item]] = {}
    for obj in _object_list(payload) or []:
        try:
            track_id = int(next(obj[k] for k in _ID_KEYS if k in obj))
            label, score = obj.get("label"), float(obj.get("score", 1.0))
            if isinstance(obj.get("frames"), list):
                pairs = [(int(f["frame_index"]), f["rle"]) for f in obj["frames"]]
            else:
                rles = next((obj[k] for k in ("rles", "rle", "segmentations") if isinstance(obj.get(k), list)), None)
                if rles is None:
                    raise KeyError("no per-frame RLE list ('rles' or 'frames')")
                pairs = [(i, r) for i, r in enumerate(rles) if r]
        except (KeyError, TypeError, ValueError, StopIteration) as exc:
            raise UnexpectedResponse(f"unreadable object entry ({exc!r}): {str(obj)[:200]}") from None
        for index, rle in pairs:
            by_index.setdefault(index, []).append(_Item(track_id, label, score, rle))
    for items in by_index.values():
        items.sort(key=lambda it: it.track_id)
    return DecodedOutput("per_object_rle", output_files(payload), _frames(by_index, info, request))


# --------------------------------------------------------------------------- mask file


def _is_mask_file(payload: dict[str, Any], attachments: Attachments) -> bool:
    return any(file_url(payload.get(k)) for k in MASK_FILE_KEYS) and "frames" not in payload and _object_list(payload) is None


def _decode_mask_file(payload: dict[str, Any], info: VideoInfo, request: SegmentRequest,
                      attachments: Attachments) -> DecodedOutput:
    key = next(k for k in MASK_FILE_KEYS if file_url(payload.get(k)))
    content = attachments.get(key)
    if not isinstance(content, dict):
        raise UnexpectedResponse(
            f"the masks are in a file ({file_url(payload.get(key))}) that is not a JSON object "
            f"({str(content)[:120] if content is not None else 'not downloaded'}); no decoder reads it"
        )
    for decoder in (d for d in DECODERS if d.name in ("per_frame_rle", "per_object_rle")):
        if decoder.matches(content, {}):
            inner = decoder.decode(content, info, request, {})
            return DecodedOutput(f"mask_file/{inner.shape}", {**output_files(payload), **inner.files}, inner.frames)
    raise UnexpectedResponse(f"the mask file has a shape no decoder knows (keys: {sorted(content)})")


# --------------------------------------------------------------------------- video only


def _is_video_only(payload: dict[str, Any], attachments: Attachments) -> bool:
    return file_url(payload.get("video")) is not None and "frames" not in payload


def _decode_video_only(payload: dict[str, Any], info: VideoInfo, request: SegmentRequest,
                       attachments: Attachments) -> DecodedOutput:
    return DecodedOutput("video_only", output_files(payload), None)


DECODERS: list[Decoder] = [
    Decoder("per_frame_rle", _is_per_frame, _decode_per_frame_rle),
    Decoder("per_object_rle", _is_per_object, _decode_per_object_rle),
    Decoder("mask_file", _is_mask_file, _decode_mask_file),
    Decoder("video_only", _is_video_only, _decode_video_only),
]


def decode_output(payload: Any, info: VideoInfo, request: SegmentRequest, attachments: Attachments | None = None) -> DecodedOutput:
    """Decode ``payload`` with the first decoder whose shape it has; raise
    :class:`UnexpectedResponse` naming the keys seen and the shapes known otherwise."""
    if isinstance(payload, dict):
        for decoder in DECODERS:
            if decoder.matches(payload, attachments or {}):
                return decoder.decode(payload, info, request, attachments or {})
    keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
    raise UnexpectedResponse(f"fal answered a shape no decoder knows (keys: {keys}); known shapes: "
                             + ", ".join(d.name for d in DECODERS))
