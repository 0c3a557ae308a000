"""Fast, all-or-nothing writes of tracked objects as frame-level ``fo.Detections``.

Why not ``sample.frames[n][field] = ...; sample.save()``: it builds a ``fo.Detection``
object per mask and serialises each mask with ``np.save`` + zlib level 6; on 300 frames x
16 objects that is ~50 frames/s. Here we build the same documents as plain dicts (mask
bytes are the same ``.npy`` stream, zlib level 1, which FiftyOne's reader accepts at any
level) and let MongoDB do the rest.

All or nothing per sample: frames are staged in a side collection while the backend
streams (memory stays bounded by one batch), and only when the whole sample succeeded
one server-side ``$merge`` moves them into the frames collection (creating missing frame
documents, replacing only the named field, stamping ``last_modified_at``). A failure or a
cancel deletes the staged documents: the dataset never sees a partial sample. Unknown keys
in frame documents break FiftyOne's loader, which is why staging is not done in place.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime as dt
import os
import shutil
import threading
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from bson import ObjectId

import fiftyone as fo
import fiftyone.core.frame as fofr
import fiftyone.core.odm as foo
import fiftyone.core.sample as fos

from ..coords import frame_number_from_index, relative_box
from ..errors import InvalidRequest
from ..masks import encode_mask_png
from ..owners import current_owner, owner_alive
from ..types import FrameResult, TrackedObject, VideoInfo

STAGING_COLLECTION = "sam31_staging"
# In the info of the frame fields the writer creates: labels this plugin wrote there.
WRITTEN_MARK = "sam31_video_written"
_SCHEMA_LOCK = threading.Lock()
# Frames per insert into the staging collection: big enough to amortise round trips.
BATCH_FRAMES = 128
# ... and at most this many bytes of masks per batch: 128 frames of full-frame 4K masks,
# three objects each, held 3 GB per video (and that times the videos in flight).
BATCH_MASK_BYTES = 64 * 2**20
# Staged documents older than this belong to crashed runs and are swept (those of a run
# killed on this host go at once: their owner process is gone).
STALE_AFTER = dt.timedelta(days=1)


def serialize_mask(mask: np.ndarray) -> bytes:
    """Same bytes as ``fiftyone.core.utils.serialize_numpy_array`` before compression
    (an ``.npy`` stream), compressed at zlib level 1 (~5x faster than the default 6)."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    header = _npy_header(mask.shape)
    return zlib.compress(header + mask.tobytes(), 1)


_HEADER_CACHE: dict[tuple[int, ...], bytes] = {}


def _npy_header(shape: tuple[int, ...]) -> bytes:
    header = _HEADER_CACHE.get(shape)
    if header is None:
        # npy format 1.0: magic, version, little-endian header length, dict padded to 64 bytes.
        text = "{'descr': '|b1', 'fortran_order': False, 'shape': %r, }" % (tuple(shape),)
        pad = 64 - (10 + len(text) + 1) % 64
        body = (text + " " * pad + "\n").encode("latin1")
        header = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body
        if len(_HEADER_CACHE) < 4096:
            _HEADER_CACHE[shape] = header
    return header


def detection_doc(obj: TrackedObject, width: int, height: int, *, mask_path: Path | None = None,
                  mask_bytes: bytes | None = None) -> dict[str, Any]:
    """The document FiftyOne stores for ``fo.Detection(label, bounding_box, mask,
    confidence, index)`` (or with ``mask_path`` instead of ``mask``, or neither for a
    box-only object), key for key. ``mask_bytes``: the crop already serialised (or, with
    ``mask_path``, already written)."""
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "_cls": "Detection",
        "attributes": {},
        "tags": [],
        "label": obj.label,
        "bounding_box": relative_box(obj.box, width, height),
    }
    if obj.has_mask and mask_path is None:
        # Plain bytes are stored as BSON binary subtype 0, exactly what Binary(data) stores (cheaper to build).
        doc["mask"] = mask_bytes if mask_bytes is not None else serialize_mask(obj.crop)
    elif obj.has_mask:
        if mask_bytes is None:
            write_mask_png(obj.crop, mask_path)
        doc["mask_path"] = str(mask_path)
    doc["confidence"] = None if obj.score is None else float(obj.score)
    doc["index"] = int(obj.track_id)
    return doc


def write_mask_png(crop: np.ndarray, path: Path) -> bytes:
    """What fo.Detection.export_mask writes: the cropped mask as a uint8 0/1 PNG."""
    data = encode_mask_png(crop)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # cheaper than pathlib's open
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return b""


# Masks are serialised (zlib, PNG) on this many threads: zlib and OpenCV release the GIL,
# so a batch's masks compress on every core while the main thread builds documents.
SERIALISE_THREADS = max(1, min(4, os.cpu_count() or 1))
# Mask files: creating a file is a syscall-bound wait (~0.3 ms on this project's VM), not
# CPU work, so more threads than cores pay off (8: 1.7x over 2 in a measurement).
FILE_THREADS = 8


def _serialise_all(jobs: list[tuple[np.ndarray, Path | None]], pool: concurrent.futures.Executor | None) -> list[bytes]:
    """Each (crop, png path or None) serialised, in order; the work is cut into one slice per
    thread (a future per mask would cost more than compressing it)."""

    def run(part: list[tuple[np.ndarray, Path | None]]) -> list[bytes]:
        return [serialize_mask(c) if p is None else write_mask_png(c, p) for c, p in part]

    if pool is None or len(jobs) < 64:
        return run(jobs)
    step = -(-len(jobs) // (FILE_THREADS if jobs[0][1] is not None else SERIALISE_THREADS))
    out: list[bytes] = []
    for part in pool.map(run, [jobs[i:i + step] for i in range(0, len(jobs), step)]):
        out.extend(part)
    return out


@dataclasses.dataclass(frozen=True)
class WritePolicy:
    """How one sample's results are written.

    - ``min_track_frames``: tracks seen on fewer frames are dropped (one-frame flickers).
    - ``replace_tracks``: refine mode; only detections with these track ids are replaced
      on the written frames, every other detection there is kept.
    - ``mask_dir``: store masks as PNG files under this folder (``mask_path``) instead of
      inside the documents: for long, high-resolution videos (16 MB document limit).
    """

    min_track_frames: int = 1
    replace_tracks: frozenset[int] | None = None
    mask_dir: Path | None = None


@dataclasses.dataclass
class WriteStats:
    frames: int = 0
    detections: int = 0
    track_frames: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    dropped_tracks: set[int] = dataclasses.field(default_factory=set)

    @property
    def tracks(self) -> set[int]:
        return set(self.track_frames) - self.dropped_tracks


class FrameLabelWriter:
    """Writes backend results into ``frames.<label_field>`` of one dataset."""

    def __init__(self, dataset: fo.Dataset, label_field: str, *, batch_frames: int = BATCH_FRAMES) -> None:
        if dataset.media_type != "video":
            raise ValueError(f"dataset {dataset.name!r} is not a video dataset (media_type={dataset.media_type!r})")
        check_label_field(dataset, label_field)
        self.dataset = dataset
        self.label_field = label_field
        self.batch_frames = batch_frames
        db = foo.get_db_conn()
        self._frames = db[dataset._frame_collection_name]
        self._samples = db[dataset._sample_collection_name]
        self._staging = db[STAGING_COLLECTION]
        self._owner = current_owner()
        self._staging.create_index([("run", 1), ("frame_number", 1)])
        sweep_staging(self._staging)

    def write_sample(self, sample_id: str, frames: Iterable[FrameResult], info: VideoInfo,
                     policy: WritePolicy = WritePolicy()) -> WriteStats:
        """Stage every frame, then publish them together; on any error publish nothing
        (and delete any mask files this run wrote)."""
        run = uuid.uuid4().hex
        stats = WriteStats()
        # Absolute: FiftyOne (and the App server, in its own working directory) reads mask_path as it is stored.
        mask_dir = (None if policy.mask_dir is None else
                    Path(policy.mask_dir).expanduser().resolve() / self.dataset.name / self.label_field / sample_id / run)
        published = False
        threads = FILE_THREADS if mask_dir is not None else SERIALISE_THREADS
        pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="sam31-mask") if threads > 1 else None
        # Batches are staged on a thread of their own while the next batch's frames are
        # produced (decoded) here: at most one batch in flight, so memory stays two batches
        # (each at most BATCH_FRAMES frames and BATCH_MASK_BYTES of masks).
        stager = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sam31-stage")
        in_flight: concurrent.futures.Future[None] | None = None
        try:
            batch: list[FrameResult] = []
            held = 0  # mask bytes in the batch
            for frame in frames:
                batch.append(frame)
                held += sum(o.nbytes for o in frame.objects)
                stats.frames += 1
                stats.detections += len(frame.objects)
                stats.track_frames.update(o.track_id for o in frame.objects)
                if len(batch) >= self.batch_frames or held >= BATCH_MASK_BYTES:
                    if in_flight is not None:
                        in_flight.result()
                    in_flight = stager.submit(self._stage_batch, run, ObjectId(sample_id), batch, info, mask_dir, pool)
                    batch, held = [], 0
            if in_flight is not None:
                in_flight.result()
                in_flight = None
            if batch:
                self._stage_batch(run, ObjectId(sample_id), batch, info, mask_dir, pool)
            stats.dropped_tracks = {t for t, n in stats.track_frames.items() if n < policy.min_track_frames}
            stats.detections -= sum(stats.track_frames[t] for t in stats.dropped_tracks)
            self._publish(run, ObjectId(sample_id), stats.dropped_tracks, policy.replace_tracks)
            published = True
        finally:
            if in_flight is not None:  # a failure here: let the staged batch finish before deleting it
                concurrent.futures.wait([in_flight])
            stager.shutdown()
            if pool is not None:
                pool.shutdown()
            self._staging.delete_many({"run": run})
            if mask_dir is not None and not published:
                shutil.rmtree(mask_dir, ignore_errors=True)
        if mask_dir is not None and policy.replace_tracks is None:
            _remove_other_runs(mask_dir)
        return stats

    def _stage_batch(self, run: str, sample_oid: ObjectId, frames: list[FrameResult], info: VideoInfo,
                     mask_dir: Path | None, pool: concurrent.futures.Executor | None) -> None:
        """Serialise a batch's masks (in parallel) and insert its frames into staging."""
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
        numbers = [frame_number_from_index(f.frame_index) for f in frames]
        paths = [[None if mask_dir is None else mask_dir / f"{n:06d}_{o.track_id}.png" for o in f.objects]
                 for n, f in zip(numbers, frames)]
        blobs = iter(_serialise_all([(o.crop, p) for f, ps in zip(frames, paths) for o, p in zip(f.objects, ps)
                                     if o.has_mask], pool))
        now = _utcnow()
        docs = []
        for number, frame, ps in zip(numbers, frames, paths):
            detections = [detection_doc(o, info.width, info.height, mask_path=p,
                                        mask_bytes=next(blobs) if o.has_mask else None)
                          for o, p in zip(frame.objects, ps)]
            docs.append({
                "run": run,
                "owner": self._owner,  # a killed run's documents are swept by the next one
                "field": self.label_field,  # an export of this field waits for the publish
                "staged_at": now,
                "_id": ObjectId(),  # becomes the frame document's id if the frame is new
                "_sample_id": sample_oid,
                "_dataset_id": self.dataset._doc.id,
                "frame_number": number,
                "labels": {"_cls": "Detections", "detections": detections},
            })
        self._staging.insert_many(docs, ordered=False)

    def _publish(self, run: str, sample_oid: ObjectId, drop: set[int], replace: frozenset[int] | None) -> None:
        field = self.label_field
        with _SCHEMA_LOCK:  # samples may be published from several threads
            existing = self.dataset.get_frame_field_schema().get(field)
            if existing is None:
                self.dataset.add_frame_field(field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections,
                                             info={WRITTEN_MARK: True})
            elif not _written_here(existing):  # e.g. an empty field made in FiftyOne: ours from now on
                existing.info = {**(existing.info or {}), WRITTEN_MARK: True}
                existing.save()
        pipeline: list[dict[str, Any]] = [
            {"$match": {"run": run}},
            {"$project": {
                "_id": 1, "_sample_id": 1, "_dataset_id": 1, "frame_number": 1,
                "created_at": "$$NOW", "last_modified_at": "$$NOW", field: "$labels",
            }},
        ]
        if drop:
            pipeline.append({"$set": {f"{field}.detections": _without_tracks(f"${field}.detections", drop)}})
        if replace is None:
            # Existing frame: replace only our field. New frame: insert the whole doc.
            merged: Any = f"$$new.{field}"
        else:
            # Refine: keep the frame's other tracks, swap in the new detections of these.
            kept = _without_tracks({"$ifNull": [f"${field}.detections", []]}, set(replace))
            merged = {"_cls": "Detections", "detections": {"$concatArrays": [kept, f"$$new.{field}.detections"]}}
        pipeline.append({"$merge": {
            "into": self._frames.name,
            "on": ["_sample_id", "frame_number"],
            "whenMatched": [{"$set": {field: merged, "last_modified_at": "$$new.last_modified_at"}}],
            "whenNotMatched": "insert",
        }})
        self._staging.aggregate(pipeline)
        self._samples.update_one({"_id": sample_oid}, [{"$set": {"last_modified_at": "$$NOW"}}])
        fos.Sample._reload_docs(self.dataset._sample_collection_name, sample_ids=[str(sample_oid)], hard=True)
        fofr.Frame._reload_docs(self.dataset._frame_collection_name, sample_ids=[str(sample_oid)], hard=True)


def _without_tracks(detections: Any, track_ids: set[int]) -> dict[str, Any]:
    return {"$filter": {"input": detections, "cond": {"$not": [{"$in": ["$$this.index", sorted(track_ids)]}]}}}


def _remove_other_runs(run_dir: Path) -> None:
    """Mask files of this sample's earlier runs are no longer referenced once this one is published."""
    for other in run_dir.parent.iterdir():
        if other != run_dir and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)


def sweep_staging(staging: Any) -> None:
    """Delete staged documents of killed runs: their process on this host is gone, or (any
    host) they are older than STALE_AFTER. Live runs' documents are left alone."""
    dead = [o for o in staging.distinct("owner") if owner_alive(o) is False]
    staging.delete_many({"$or": [{"owner": {"$in": dead}}, {"staged_at": {"$lt": _utcnow() - STALE_AFTER}}]})


def writing_now(dataset: fo.Dataset, sample_id: str, field: str) -> bool:
    """Whether a live run has frames of this sample's field staged (it may be publishing them)."""
    staging = foo.get_db_conn()[STAGING_COLLECTION]
    owners = staging.distinct("owner", {"_sample_id": ObjectId(sample_id), "_dataset_id": dataset._doc.id,
                                        "field": {"$in": [field, None]},  # None: staged before fields were recorded
                                        "staged_at": {"$gte": _utcnow() - STALE_AFTER}})
    return any(owner_alive(o) is not False for o in owners)


def labels_not_ours(samples: fo.core.collections.SampleCollection, label_field: str) -> int:
    """How many frames of ``samples`` hold labels in ``frames.<label_field>`` that this
    plugin did not write (a field it made carries its mark from the first write, and a
    segment run's description after): labels a run would replace only when told to."""
    dataset = samples._dataset
    field = dataset.get_frame_field_schema().get(label_field)
    if field is None or _written_here(field):
        return 0
    # Whole videos: a view may hide frames (match_frames, filter_labels) that a run rewrites.
    videos = dataset if samples is dataset else dataset.select(samples.values("id"))
    return videos.count(f"frames.{label_field}")


def refuse_replacing_labels_not_ours(samples: fo.core.collections.SampleCollection, label_field: str,
                                     consequence: str) -> None:
    """Raise :class:`InvalidRequest` when ``frames.<label_field>`` of ``samples`` holds labels
    this plugin did not write (``consequence``: what replacing them means for the caller)."""
    held = labels_not_ours(samples, label_field)
    if held:
        raise InvalidRequest(f"frames.{label_field} already holds labels on {held:,} frame{'s' if held != 1 else ''} "
                             f"{consequence}. Pick another field, or pass overwrite=True (CLI: --overwrite; in the "
                             "App, tick 'Replace the labels') to replace them")


def _written_here(field: Any) -> bool:
    info = field.info or {}
    return bool(info.get(WRITTEN_MARK)) or "sam31_video" in info


def check_label_field(dataset: fo.Dataset, label_field: str) -> None:
    """The output field must be a frame field that is absent or already holds Detections."""
    if not label_field or "." in label_field or label_field.startswith("_"):
        raise ValueError(f"label_field {label_field!r} must be a plain frame field name like 'sam'")
    foo.utils.validate_field_name(label_field, media_type="video", is_frame_field=True)  # e.g. no '$'
    if label_field in dataset.get_field_schema():
        raise ValueError(f"{label_field!r} is a sample-level field of {dataset.name!r}; pick a frame field name")
    existing = dataset.get_frame_field_schema().get(label_field)
    if existing is None:
        return
    doc_type = getattr(existing, "document_type", None)
    if doc_type is not fo.Detections:
        raise ValueError(
            f"frames.{label_field} already exists as {type(existing).__name__}"
            f"({getattr(doc_type, '__name__', '')}); choose another field or delete it"
        )


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
