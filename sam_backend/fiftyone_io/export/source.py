"""Reading tracks out of FiftyOne: the plan of an export (which videos, frames and
concepts; everything checked before a file is written) and the frames themselves.

Frames are read one video at a time, a chunk of frames per query, and only the frames
being exported, so memory stays bounded by a chunk rather than by the video. FiftyOne's
own queries join every frame of a video into one document, which MongoDB caps at 16 MB
(a few seconds of 1080p masks): where the collection does not filter frame contents,
frames are read straight from the frames collection instead, one document per frame.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import cv2
import fiftyone as fo
import fiftyone.core.stages as fos
import fiftyone.core.utils as fou
import numpy as np
from bson import ObjectId
from fiftyone import ViewField as F
from pymongo.errors import OperationFailure

from ... import video as video_ops
from ...coords import frame_index_from_number, pixel_box
from ...errors import InvalidRequest, VideoError
from ..video_info import check_whole_videos
from ..writer import writing_now
from .options import MASK_FORMATS, TRACK_FORMATS, ExportOptions
from .tracks import Categories, ExportFrame, ExportObject, VideoRef, sequence_names

logger = logging.getLogger(__name__)

# MOTS packs class and instance into one id as class_id * 1000 + instance (KITTI MOTS,
# MOTS Challenge, mots_tools), so instance (track) ids must stay below 1000.
MOTS_ID_LIMIT = 1000
# Frames read per query: a chunk's compressed masks stay in the tens of MB even for
# 1080p videos with dozens of objects, and there are few round trips.
_CHUNK_FRAMES = 256
# How long an export waits for a segment run that is writing a video it needs.
WAIT_FOR_WRITER_S = 30.0


@dataclasses.dataclass
class ExportPlan:
    videos: list[VideoRef]
    categories: Categories
    skipped: dict[str, str]  # sample id -> why it is not exported
    warnings: list[str]

    @property
    def frames(self) -> int:
        return sum(len(v.frame_indices) for v in self.videos)


def plan_export(samples: fo.core.collections.SampleCollection, opts: ExportOptions) -> ExportPlan:
    """Check the collection and the field for this format, and list what will be written.
    Raises :class:`InvalidRequest` listing every problem; nothing is written."""
    try:
        return _plan_export(samples, opts)
    except OperationFailure as exc:
        if not _too_large(exc):
            raise
        raise InvalidRequest(_TOO_LARGE.format(what="some video")) from None


def _too_large(exc: OperationFailure) -> bool:
    return exc.code == 10334 or "BSONObj size" in str(exc)  # 10334: BSONObjectTooLarge


_TOO_LARGE = ("{what}: its frame labels are over MongoDB's 16 MB per query, which this view's label filters "
              "need; export the dataset or a view that only selects samples (those read frames one at a time), "
              "or write the filtered labels to a new field first")


def _plan_export(samples: fo.core.collections.SampleCollection, opts: ExportOptions) -> ExportPlan:
    check_whole_videos(samples, "export")
    field = opts.label_field
    problems = _field_problems(samples, opts)
    if problems:
        raise InvalidRequest(problems)
    labelled = samples.match_frames(F(field).exists(), omit_empty=False)
    ids, paths, numbers = labelled.values(["id", "filepath", "frames.frame_number"])
    metadata = dict(zip(*samples.values(["id", "metadata"])))
    names = sequence_names(paths)
    videos: list[VideoRef] = []
    skipped: dict[str, str] = {}
    warnings: list[str] = []
    for sample_id, path, frame_numbers, name in zip(ids, paths, numbers, names):
        indices = tuple(i for i in sorted(frame_index_from_number(n) for n in frame_numbers or []) if i % opts.frame_stride == 0)
        if not indices:
            where = "no frame" if opts.frame_stride == 1 else f"no frame on the stride of {opts.frame_stride}"
            skipped[sample_id] = f"{name}: {where} has frames.{field}"
            continue
        try:
            info = video_ops.probe(path)
            width, height, count, fps = info.width, info.height, info.frame_count, info.fps
        except VideoError as exc:
            meta = metadata.get(sample_id)
            if opts.frame_mode == "images" or meta is None or not meta.frame_width:
                problems.append(f"sample {sample_id}: {exc}")
                continue
            width, height, count, fps = meta.frame_width, meta.frame_height, meta.total_frame_count or 0, meta.frame_rate or 0.0
            warnings.append(f"{name}: video not readable ({exc}); frame size and count taken from FiftyOne's metadata")
        if indices[-1] >= count:
            problems.append(f"sample {sample_id} ({name}): labels on frame number {indices[-1] + 1} but the video "
                            f"decodes to {count} frames")
            continue
        videos.append(VideoRef(len(videos) + 1, sample_id, name, path, width, height, count, fps, indices))
    if problems:
        raise InvalidRequest(problems)
    if not videos:
        raise InvalidRequest(f"nothing to export: no video in this collection has labels in frames.{field}"
                             + (f" on frames 1, {1 + opts.frame_stride}, ... (stride {opts.frame_stride})" if opts.frame_stride > 1 else ""))
    labels = samples.distinct(f"frames.{field}.detections.label")
    return ExportPlan(videos, Categories(tuple(sorted(str(v) for v in labels if v is not None))), skipped, warnings)


def _field_problems(samples: fo.core.collections.SampleCollection, opts: ExportOptions) -> list[str]:
    field = opts.label_field
    schema = samples.get_frame_field_schema() or {}
    existing = schema.get(field)
    if existing is None:
        choices = [k for k, v in schema.items() if getattr(v, "document_type", None) is fo.Detections]
        return [f"frames.{field} does not exist; frame fields holding Detections: {choices or 'none'}"]
    if getattr(existing, "document_type", None) is not fo.Detections:
        return [f"frames.{field} holds {getattr(existing, 'document_type', type(existing)).__name__}, not Detections"]
    problems = []
    path = f"frames.{field}.detections"
    total = samples.count(path)
    unlabelled = total - samples.count(f"{path}.label")
    if unlabelled:
        problems.append(f"{unlabelled} of {total} detections in frames.{field} have no label; every format stores a category")
    if opts.format in TRACK_FORMATS:
        missing = total - samples.count(f"{path}.index")
        if missing:
            problems.append(f"{missing} of {total} detections in frames.{field} have no index (track id); "
                            f"{opts.format} stores a track id per object")
    if opts.format == "mots" and total:
        _, top = samples.bounds(f"{path}.index")
        if top is not None and top >= MOTS_ID_LIMIT:
            problems.append(f"track id {top} is too large for MOTS, which encodes ids as class_id * 1000 + track id "
                            f"(track ids must be < {MOTS_ID_LIMIT})")
    if opts.format in MASK_FORMATS and total:
        no_mask = samples.filter_labels(f"frames.{field}", (F("mask") == None) & (F("mask_path") == None),  # noqa: E711
                                        only_matches=True).count(path)
        if no_mask:
            problems.append(f"{no_mask} of {total} detections in frames.{field} have no mask; {opts.format} stores "
                            "masks (export boxes with 'mot' or 'yolo-detect')")
    return problems


# View stages that choose samples or fields but leave the frames' labels as stored: with
# only these, reading the frames collection directly gives the same labels as the view.
_FRAME_PRESERVING = (fos.Exclude, fos.ExcludeBy, fos.Exists, fos.Limit, fos.Match, fos.MatchTags, fos.MatchLabels,
                     fos.Select, fos.SelectBy, fos.Shuffle, fos.Skip, fos.SortBy, fos.Take, fos.SelectFields,
                     fos.ExcludeFields)
_KEYS = ("label", "bounding_box", "confidence", "index")


def iter_frames(samples: fo.core.collections.SampleCollection, video: VideoRef, field: str, *,
                masks: bool) -> Iterator[ExportFrame]:
    """The exported frames of one video, in order, with full-frame masks when ``masks``.

    Straight from the frames collection when the collection keeps frame labels as stored
    (any size of frame); otherwise through the view, so its label filters apply, with a
    clear error if a chunk of frames is over MongoDB's 16 MB document limit.
    """
    if all(isinstance(stage, _FRAME_PRESERVING) for stage in getattr(samples, "_stages", [])):
        yield from _stored_frames(samples._dataset, video, field, masks=masks)
    else:
        yield from _view_frames(samples, video, field, masks=masks)


def _stored_frames(dataset: fo.Dataset, video: VideoRef, field: str, *, masks: bool) -> Iterator[ExportFrame]:
    """One document per frame from the frames collection, a chunk of frames per query."""
    keys = list(_KEYS) + (["mask", "mask_path"] if masks else [])
    projection = {"frame_number": True, **{f"{field}.detections.{k}": True for k in keys}}
    numbers = [i + 1 for i in video.frame_indices]
    for start in range(0, len(numbers), _CHUNK_FRAMES):
        chunk = numbers[start : start + _CHUNK_FRAMES]
        cursor = dataset._frame_collection.find(
            {"_sample_id": ObjectId(video.sample_id), "frame_number": {"$in": chunk}}, projection,
        ).sort("frame_number", 1)
        for doc in cursor:
            labels = doc.get(field)
            if labels is None:  # frame without the field
                continue
            objects = []
            for det in labels.get("detections") or []:
                values = {k: det.get(k) for k in keys}
                if masks and values["mask"] is not None:
                    values["mask"] = fou.deserialize_numpy_array(values["mask"])
                objects.append(_object(values, video.width, video.height, masks))
            yield ExportFrame(frame_index_from_number(doc["frame_number"]), objects)


def _view_frames(samples: fo.core.collections.SampleCollection, video: VideoRef, field: str, *,
                 masks: bool) -> Iterator[ExportFrame]:
    """Through the view (its label filters apply), with ``values()``: ~5x faster than
    loading ``fo.Frame`` documents."""
    path = f"frames.{field}.detections"
    keys = list(_KEYS) + (["mask", "mask_path"] if masks else [])
    numbers = [i + 1 for i in video.frame_indices]
    for start in range(0, len(numbers), _CHUNK_FRAMES):
        chunk = numbers[start : start + _CHUNK_FRAMES]
        view = samples.select(video.sample_id).match_frames(F("frame_number").is_in(chunk))
        try:
            values = view.values(["frames.frame_number", *(f"{path}.{k}" for k in keys)])
        except OperationFailure as exc:
            if not _too_large(exc):
                raise
            raise InvalidRequest(_TOO_LARGE.format(what=video.name)) from None
        for number, *per_key in zip(*(v[0] for v in values)):
            if per_key[0] is None:  # frame without the field
                continue
            objects = [_object(dict(zip(keys, det)), video.width, video.height, masks) for det in zip(*per_key)]
            yield ExportFrame(frame_index_from_number(number), objects)


class FrameSnapshot:
    """Makes sure one video's frames are read as one version of the field.

    A segment run stages a video's frames, publishes them in one ``$merge``, stamps the
    sample's ``last_modified_at`` and only then deletes its staged documents (writer.py).
    So if nothing of this video is staged when reading starts, and after reading nothing
    is staged and the sample's stamp is unchanged, no publish overlapped the read: one
    that started before would still be staged at the start, one that started after would
    still be staged, or would have changed the stamp, at the end.
    """

    def __init__(self, dataset: fo.Dataset, video: VideoRef, field: str, *, wait_s: float = WAIT_FOR_WRITER_S) -> None:
        self.dataset, self.video, self.field, self.wait_s = dataset, video, field, wait_s
        self._stamp: Any = None

    def begin(self, cancel: Any = None) -> None:
        deadline = time.monotonic() + self.wait_s
        while writing_now(self.dataset, self.video.sample_id, self.field):
            if time.monotonic() >= deadline:
                raise InvalidRequest(f"{self.video.name}: a segment run is writing frames.{self.field} of this video "
                                     f"right now; export again when it has finished (waited {self.wait_s:.0f} s)")
            if cancel is not None:
                cancel.raise_if_cancelled()
            time.sleep(0.2)
        self._stamp = self._sample_stamp()

    def end(self) -> None:
        if writing_now(self.dataset, self.video.sample_id, self.field) or self._sample_stamp() != self._stamp:
            raise InvalidRequest(f"{self.video.name}: frames.{self.field} changed while it was being exported (a "
                                 "segment run wrote this video); nothing was published: export again")

    def _sample_stamp(self) -> Any:
        doc = self.dataset._sample_collection.find_one({"_id": ObjectId(self.video.sample_id)}, {"last_modified_at": 1})
        return None if doc is None else doc.get("last_modified_at")


def _object(det: dict[str, Any], width: int, height: int, masks: bool) -> ExportObject:
    x0, y0, x1, y1 = pixel_box(det["bounding_box"], width, height)
    full = None
    if masks:
        # Column-major, as pycocotools' RLE encoder reads masks: saves a copy per object.
        full = np.zeros((height, width), bool, order="F")
        crop = det["mask"]
        if crop is None and det["mask_path"]:
            crop = fo.Detection(mask_path=det["mask_path"]).get_mask()
        if crop is not None and x1 > x0 and y1 > y0:
            crop = np.asarray(crop).astype(bool)
            if crop.shape != (y1 - y0, x1 - x0):
                # A mask that does not match its box (e.g. drawn by another tool) is
                # stretched over the box, as FiftyOne renders it.
                crop = cv2.resize(crop.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST).astype(bool)
            full[y0:y1, x0:x1] = crop
    score = None if det["confidence"] is None else float(det["confidence"])
    track = None if det["index"] is None else int(det["index"])
    return ExportObject(track, str(det["label"]), score, (x0, y0, x1, y1), full)
