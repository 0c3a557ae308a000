"""Reading COCO and YouTube-VIS files back into per-video, per-frame tracked objects.

Accepts what our exporter writes and what other tools write in these formats: masks as
compressed or uncompressed RLE or polygons; track ids from ``track_id`` or
``instance_id`` (COCO) or the annotation itself (YouTube-VIS); videos from ``videos`` +
``video_id`` / ``frame_id`` (CocoVID), or else from the folder and the number in each
image's file name (``<video>/00012.jpg``, YouTube-VIS style, from 0; FiftyOne's frame
images ``<video>/000001.jpg`` count from 1). Masks are decoded lazily, one frame at a
time, when the frames are written; each mask's box is the mask's own (a file's ``bbox``
only boxes an annotation without a mask).

Nothing read is trusted: :meth:`ImportedVideo.check` validates every object (RLE counts and
size against the frame, polygons, boxes, scores, track ids) without decoding masks, so an
import can refuse a bad file before it writes anything, with an error naming the file,
video, frame and annotation.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import math

import numpy as np

from ... import coco_rle
from ... import masks as mask_ops
from ...errors import InvalidRequest
from ...types import FrameResult, TrackedObject
from . import coco, ytvis
from .polygons import rasterize_coco

_NUMBER = re.compile(r"(\d+)(?!.*\d)")
# Track ids become fo.Detection.index (an int in MongoDB) and MOTS ids (class*1000 + id):
# the same range the fal decoder accepts, so a file cannot smuggle in -1 or 2**70.
MAX_TRACK_ID = 2**31 - 1


@dataclasses.dataclass
class RawObject:
    track_id: int
    label: str
    score: float | None
    segmentation: Any  # RLE dict, polygon list, or None
    bbox: list[float] | None
    where: str = ""  # "image 7, annotation 31": where it is in the file, for errors


@dataclasses.dataclass(eq=False)  # compared and hashed by identity (used as a dict key)
class ImportedVideo:
    """One video of a file: its identity (to match a sample), size, and objects per frame."""

    key: str
    name: str
    filepath: str | None
    file_name: str | None
    width: int
    height: int
    fps: float
    frames: dict[int, list[RawObject]] = dataclasses.field(default_factory=dict)  # 0-based index -> objects
    source: str = ""  # the labels file, for errors

    def check(self, default_score: float | None) -> None:
        """Raise :class:`InvalidRequest` (naming file, video, frame and annotation) on the
        first object that cannot be written as it is; decodes no mask."""
        for index in sorted(self.frames):
            seen: set[int] = set()
            for obj in self.frames[index]:
                problem = _problem(obj, self.height, self.width, default_score)
                if problem is None and obj.track_id in seen:
                    problem = f"track id {obj.track_id} is on this frame twice (one object per track and frame)"
                seen.add(obj.track_id)
                if problem:
                    raise InvalidRequest(f"{self.source}: video {self.name!r}, frame index {index} (FiftyOne frame "
                                         f"{index + 1}), {obj.where or 'an object'}: {problem}")

    def frame_results(self, default_score: float | None) -> Iterator[FrameResult]:
        for index in sorted(self.frames):
            yield FrameResult(index, [self._decode(o, default_score) for o in self.frames[index]])

    def _decode(self, obj: RawObject, default_score: float | None) -> TrackedObject:
        h, w = self.height, self.width
        score = default_score if obj.score is None else float(obj.score)
        mask = _decode_segmentation(obj.segmentation, h, w)
        # The mask decides the box (a file's bbox may be rounded, loose or wrong, and
        # cropping to it cut mask pixels off); a box-only annotation keeps its bbox and
        # is stored as a Detection without a mask, as FiftyOne's COCO importer does.
        box = mask_ops.tight_box(mask)
        if box is None and obj.bbox is not None:
            return TrackedObject.box_only(obj.track_id, obj.label, score, _pixel_box(obj.bbox, w, h), (h, w))
        return TrackedObject(obj.track_id, obj.label, score, mask, box)


@dataclasses.dataclass
class ImportedFile:
    format: str
    videos: list[ImportedVideo]
    notes: list[str]


def _decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    if not segmentation:
        return np.zeros((height, width), bool)
    if isinstance(segmentation, list):
        return rasterize_coco(segmentation, height, width)
    return coco_rle.decode(segmentation, height, width)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(obj: RawObject, height: int, width: int, default_score: float | None) -> str | None:
    """What makes ``obj`` unwritable, or None. Mirrors what decoding and writing need."""
    if not 0 <= obj.track_id <= MAX_TRACK_ID:
        return f"track id {obj.track_id} is not in 0..{MAX_TRACK_ID}"
    seg = obj.segmentation
    if isinstance(seg, list) and seg:
        for i, polygon in enumerate(seg):
            if (not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2
                    or not all(_is_number(v) for v in polygon)):
                return (f"polygon {i} is not a flat list of at least 3 (x, y) pairs of finite numbers "
                        f"({coco_rle._short(polygon)})")
    elif seg:
        try:
            coco_rle.check(seg, height, width)
        except coco_rle.CocoRleError as exc:
            return f"RLE mask: {exc}"
    if not seg and obj.bbox is None:
        return "it has neither a segmentation nor a bbox"
    if obj.bbox is not None:
        if not isinstance(obj.bbox, list) or len(obj.bbox) != 4 or not all(_is_number(v) for v in obj.bbox):
            return f"bbox {coco_rle._short(obj.bbox)} is not [x, y, width, height] of finite numbers"
        if obj.bbox[2] < 0 or obj.bbox[3] < 0:
            return f"bbox {obj.bbox} has a negative width or height"
        x0, y0, x1, y1 = _pixel_box(obj.bbox, width, height)
        if not seg and (x1 <= x0 or y1 <= y0):  # (with a mask, the mask gives the box)
            return f"bbox {obj.bbox} holds no pixel of the {width}x{height} frame"
    if obj.score is not None and not _is_number(obj.score):
        return f"score {coco_rle._short(obj.score)} is not a finite number"
    return None


def _pixel_box(bbox: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """COCO [x, y, width, height] -> pixel (x0, y0, x1, y1), clipped to the frame."""
    x, y, bw, bh = (float(v) for v in bbox)
    x0, y0 = min(max(0, round(x)), width), min(max(0, round(y)), height)
    return x0, y0, max(x0, min(width, round(x + bw))), max(y0, min(height, round(y + bh)))


def _frame_from_name(file_name: str) -> int | None:
    match = _NUMBER.search(PurePosixPath(file_name).stem)
    return int(match.group(1)) if match else None


def find_labels(path: str | Path, fmt: str | None = None) -> tuple[Path, str]:
    """The labels file and its format, from a file or an export folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = {"coco": path / coco.LABELS_FILE, "ytvis": path / ytvis.LABELS_FILE}
        found = [(p, f) for f, p in candidates.items() if p.is_file() and fmt in (None, f)]
        if not found:
            raise InvalidRequest(f"no {' or '.join(p.name for p in candidates.values())} in {path}")
        return found[0]
    if not path.is_file():
        raise InvalidRequest(f"labels file not found: {path}")
    return path, fmt or ""


def read_labels(path: str | Path, fmt: str | None = None) -> ImportedFile:
    """Read a COCO or YouTube-VIS file (format detected from its keys when not given)."""
    file, fmt = find_labels(path, fmt)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read {file} as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{file} is not a COCO or YouTube-VIS file (top level is not an object)")
    if not fmt:
        fmt = "coco" if "images" in data else "ytvis" if "videos" in data else ""
    if fmt in ("coco", "ytvis"):
        try:
            read = _read_coco(data, file) if fmt == "coco" else _read_ytvis(data, file)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            # A missing key or a wrong type deep in the file: say which file, not a traceback.
            raise InvalidRequest(f"{file} is not a valid {fmt} file: {type(exc).__name__} {exc}") from None
        for video in read.videos:
            video.source = str(file)
        return read
    raise InvalidRequest(f"{file}: neither COCO ('images') nor YouTube-VIS ('videos'); pass the format")


def _categories(data: dict[str, Any]) -> dict[int, str]:
    return {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}


def _category(cats: dict[int, str], ann: dict[str, Any], where: str) -> str:
    cid = int(ann["category_id"])
    if cid not in cats:
        known = ", ".join(map(str, sorted(cats)[:20])) or "none"
        raise InvalidRequest(f"{where}: category_id {cid} is not in 'categories' (its ids: {known})")
    return cats[cid]


def _coco_video(img: dict[str, Any], listed: dict[int, Any]) -> tuple[str, str, dict[str, Any]]:
    """(key, name, videos entry) of an image's video: from video_id (CocoVID), or else the
    folder in its file name."""
    name = str(img.get("file_name", ""))
    if img.get("video_id") is not None:
        meta = listed.get(int(img["video_id"]), {})
        key = f"id:{img['video_id']}"
        return key, str(meta.get("name") or PurePosixPath(name).parent.name or key), meta
    folder = PurePosixPath(name).parent.name
    return f"dir:{folder}", folder, {}


def _first_frame_numbers(images: list[dict[str, Any]], notes: list[str]) -> dict[str, int]:
    """Per video (key), the number its image names give its first frame: 1 for FiftyOne's
    frame images (``<video>/000001.jpg``, six digits, no image numbered 0: what
    ``to_frames`` writes and a frames view exports), else 0 (YouTube-VIS style, and our
    own exports, which also state each frame_id). Only for images without a frame_id."""
    numbers: dict[str, list[str]] = {}
    for img in images:
        if img.get("frame_id") is None:
            match = _NUMBER.search(PurePosixPath(str(img.get("file_name", ""))).stem)
            if match:
                numbers.setdefault(_coco_video(img, {})[0], []).append(match.group(1))
    first = {}
    for key, texts in numbers.items():
        if all(len(t) == 6 for t in texts) and min(int(t) for t in texts) >= 1:
            first[key] = 1
    if first:
        notes.append(f"{len(first)} video(s) have images named like FiftyOne's frame images ('000001.jpg' is frame "
                     "number 1) and no frame_id: read as FiftyOne frame numbers")
    return first


def _read_coco(data: dict[str, Any], file: Path) -> ImportedFile:
    cats = _categories(data)
    notes: list[str] = []
    listed = {int(v["id"]): v for v in data.get("videos", [])}
    videos: dict[str, ImportedVideo] = {}
    where: dict[int, tuple[ImportedVideo, int]] = {}
    problems = []
    first = _first_frame_numbers(data.get("images", []), notes)
    for img in data.get("images", []):
        name = str(img.get("file_name", ""))
        key, vname, meta = _coco_video(img, listed)
        index = img.get("frame_id")
        index = int(index) if index is not None else _frame_from_name(name)
        if img.get("frame_id") is None and index is not None:
            index -= first.get(key, 0)
        if index is None:
            problems.append(f"image {img.get('id')} ({name!r}) has no frame_id and no frame number in its file name")
            continue
        if index < 0:
            problems.append(f"image {img.get('id')} ({name!r}) has frame_id {index}; frames count from 0")
            continue
        video = videos.get(key)
        if video is None:
            video = videos[key] = ImportedVideo(
                key, vname, meta.get("filepath"), meta.get("file_name"),
                int(meta.get("width") or img["width"]), int(meta.get("height") or img["height"]), float(meta.get("fps") or 0.0))
        video.frames.setdefault(index, [])
        where[int(img["id"])] = (video, index)
    if problems:
        raise InvalidRequest(problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else []))
    untracked = 0
    for ann in data.get("annotations", []):
        if int(ann["image_id"]) not in where:
            raise InvalidRequest(f"annotation {ann.get('id')} refers to image {ann['image_id']}, which is not in 'images'")
        video, index = where[int(ann["image_id"])]
        track = ann.get("track_id", ann.get("instance_id"))
        if track is None:
            untracked += 1
            track = ann["id"]
        place = f"image {ann['image_id']}, annotation {ann.get('id')}"
        video.frames[index].append(RawObject(int(track), _category(cats, ann, f"{file.name}: {place}"),
                                             ann.get("score"), ann.get("segmentation"), ann.get("bbox"), place))
    if untracked:
        notes.append(f"{untracked} annotations carry no track_id/instance_id: their annotation id became the track id")
    return ImportedFile("coco", list(videos.values()), notes)


def _read_ytvis(data: dict[str, Any], file: Path) -> ImportedFile:
    cats = _categories(data)
    videos: dict[int, ImportedVideo] = {}
    indices: dict[int, list[int]] = {}
    for v in data.get("videos", []):
        names = [str(n) for n in v.get("file_names", [])]
        numbers = [_frame_from_name(n) for n in names]
        frame_ids = numbers if names and None not in numbers and len(set(numbers)) == len(numbers) else list(range(int(v.get("length") or len(names))))
        vname = str(v.get("name") or (PurePosixPath(names[0]).parent.name if names else f"video {v['id']}"))
        video = ImportedVideo(f"id:{v['id']}", vname, v.get("filepath"), None, int(v["width"]), int(v["height"]),
                              float(v.get("fps") or 0.0), {i: [] for i in frame_ids})
        videos[int(v["id"])] = video
        indices[int(v["id"])] = frame_ids  # type: ignore[assignment]
    for ann in data.get("annotations", []):
        vid, place = int(ann["video_id"]), f"{file.name}: annotation {ann.get('id')}"
        if vid not in videos:
            raise InvalidRequest(f"{place}: video_id {vid} is not in 'videos'")
        video, frame_ids = videos[vid], indices[vid]
        label = _category(cats, ann, place)
        track = int(ann.get("track_id", ann["id"]))
        scores = ann.get("scores") or [None] * len(frame_ids)
        bboxes = ann.get("bboxes") or [None] * len(frame_ids)
        segmentations = ann.get("segmentations", [])
        for key, values in (("segmentations", segmentations), ("scores", scores), ("bboxes", bboxes)):
            if len(values) != len(frame_ids):
                raise InvalidRequest(f"{place}: {len(values)} {key} for the {len(frame_ids)} frames of video {vid}")
        for position, segmentation in enumerate(segmentations):
            if segmentation is None:
                continue
            score = scores[position] if scores[position] is not None else ann.get("score")
            video.frames[frame_ids[position]].append(RawObject(
                track, label, score, segmentation, bboxes[position], f"annotation {ann.get('id')} (segmentations[{position}])"))
    return ImportedFile("ytvis", list(videos.values()), [])
