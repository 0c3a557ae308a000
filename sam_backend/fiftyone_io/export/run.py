"""Running an export: plan, write into a staging folder, publish it whole.

The export is an iterator of :class:`ExportProgress` events (``ExportRun``), so the App
operator can report progress without threads and stop by closing it; ``export_tracks``
drains it for SDK and CLI use. Files are written into a hidden sibling folder that is
renamed to ``output_dir`` only when everything succeeded: a failed or cancelled export
leaves no half-written dataset behind, and an earlier export in ``output_dir`` is swapped
for the new one in one step (publish.py). Each video's frames are read as one consistent
version: a segment run publishing that video meanwhile stops the export (source.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import fiftyone as fo

from ...backends.base import CancelToken
from ...errors import InvalidRequest
from .base import FormatWriter, write_json
from .coco import CocoWriter
from .frames import FrameImageSaver
from .mot import MotsWriter, MotWriter
from .options import MASK_FORMATS, ExportOptions
from .publish import new_staging, publish, sweep
from .report import ExportProgress, ExportReport
from .source import ExportPlan, FrameSnapshot, iter_frames, plan_export
from .tracks import ExportFrame, VideoRef
from .yolo import YoloWriter
from .ytvis import YtvisWriter

logger = logging.getLogger(__name__)

# Frames prepared (polygons traced, masks encoded) at once, on threads: OpenCV, zlib and
# numpy release the GIL, so this is every core. Each frame ahead holds its full-frame
# masks, so fewer frames go ahead when they are big (16 objects at 4K: ~130 MB a frame).
PREPARE_THREADS = max(1, min(4, os.cpu_count() or 1))
PREPARE_AHEAD = 2 * PREPARE_THREADS
PREPARE_AHEAD_BYTES = 256 * 2**20

WRITERS: dict[str, type[FormatWriter]] = {
    "coco": CocoWriter, "yolo-seg": YoloWriter, "yolo-detect": YoloWriter,
    "mot": MotWriter, "mots": MotsWriter, "ytvis": YtvisWriter,
}
#: Written into every export; its presence is what allows ``overwrite`` to replace a folder.
MANIFEST = "sam31_export.json"


def check_output_dir(output_dir: Path | str | None, overwrite: bool) -> list[str]:
    """Problems with writing an export to ``output_dir`` (empty list if none)."""
    if output_dir is None or not str(output_dir).strip():
        return ["output_dir is required: the folder to write the export into"]
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        return [f"output_dir {out} is a file; give a folder"]
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return [f"output_dir {out} cannot be made: {blocking} is a file"]
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            return [f"output_dir {out} is not empty; choose a new folder, or overwrite=True (CLI --overwrite) to replace an earlier export there"]
        if not (out / MANIFEST).is_file():
            return [f"output_dir {out} is not empty and holds no {MANIFEST}, so it was not written by an export; "
                    "refusing to replace it: choose a new folder"]
    return []


class ExportRun:
    """One export as an iterator of progress events; ``report`` is set when it finished."""

    def __init__(self, samples: fo.core.collections.SampleCollection, options: ExportOptions, *,
                 cancel: CancelToken | None = None) -> None:
        problems = check_output_dir(options.output_dir, options.overwrite)
        if problems:
            raise InvalidRequest(problems)
        assert options.output_dir is not None
        self.options = options.model_copy(update={"output_dir": Path(options.output_dir).expanduser().resolve()})
        self.samples = samples
        self.cancel = cancel or CancelToken()
        self.plan: ExportPlan = plan_export(samples, self.options)
        self.report: ExportReport | None = None

    def __iter__(self) -> Iterator[ExportProgress]:
        opts, plan = self.options, self.plan
        assert opts.output_dir is not None
        out = opts.output_dir
        start = time.monotonic()
        report = ExportReport(opts.format, opts.label_field, out, skipped=dict(plan.skipped), warnings=list(plan.warnings))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            sweep(out)
            staging = new_staging(out)
        except OSError as exc:
            raise InvalidRequest(f"cannot write the export to {out}: {exc.strerror or exc}") from None
        published = False
        try:
            writer = WRITERS[opts.format](staging, opts, plan.categories, report)
            done, total, tracks = 0, plan.frames, set()
            for i, video in enumerate(plan.videos):
                yield ExportProgress(done, total, i, len(plan.videos), video.name)
                writer.begin_video(video)
                snapshot = FrameSnapshot(self.samples._dataset, video, opts.label_field)
                snapshot.begin(self.cancel)
                with contextlib.ExitStack() as stack:
                    images = None
                    if writer.images:
                        images = stack.enter_context(FrameImageSaver(video, partial(writer.image_path, video)))
                    frames = iter_frames(self.samples, video, opts.label_field, masks=opts.format in MASK_FORMATS)
                    for frame, prepared in stack.enter_context(contextlib.closing(_prepared(writer, video, frames))):
                        self.cancel.raise_if_cancelled()
                        image_path = None
                        if images is not None:
                            images.check()
                            image_path = writer.image_path(video, frame.frame_index)
                        writer.write_frame(video, frame, image_path, prepared)
                        report.frames += 1
                        report.objects += len(frame.objects)
                        tracks.update((video.video_id, o.track_id) for o in frame.objects if o.track_id is not None)
                        done += 1
                        yield ExportProgress(done, total, i, len(plan.videos), video.name)
                    if images is not None:
                        report.images += images.finish()
                snapshot.end()
                writer.end_video(video)
            writer.close()
            report.videos, report.tracks = len(plan.videos), len(tracks)
            _explain(report, opts)
            report.seconds = time.monotonic() - start
            _write_manifest(staging / MANIFEST, self.samples, opts, plan, report)
            if out.exists():
                problems = check_output_dir(out, overwrite=True)  # again: it may have changed meanwhile
                if problems:
                    raise InvalidRequest(problems)
            publish(staging, out)  # an earlier export there is swapped out atomically
            published = True
        finally:
            if not published:
                shutil.rmtree(staging, ignore_errors=True)
        for line in report.notes:
            logger.info(line)
        for line in report.warnings:
            logger.warning(line)
        self.report = report


def _prepared(writer: FormatWriter, video: VideoRef, frames: Iterator[ExportFrame]) -> Iterator[tuple[ExportFrame, Any]]:
    """(frame, ``writer.prepare(video, frame)``) in frame order, prepared on PREPARE_THREADS
    threads up to PREPARE_AHEAD frames ahead: tracing polygons was most of a polygon
    export, and it runs on every core this way. Closing it drops the frames not yet used."""
    if type(writer).prepare is FormatWriter.prepare:  # nothing to prepare (box formats)
        yield from ((frame, None) for frame in frames)
        return
    pending: collections.deque[tuple[ExportFrame, int, concurrent.futures.Future[Any]]] = collections.deque()
    held = 0  # mask bytes of the pending frames
    with concurrent.futures.ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="sam31-export") as pool:
        try:
            for frame in frames:
                size = sum(o.mask.nbytes for o in frame.objects if o.mask is not None)
                pending.append((frame, size, pool.submit(writer.prepare, video, frame)))
                held += size
                while len(pending) > PREPARE_AHEAD or (held > PREPARE_AHEAD_BYTES and len(pending) > 1):
                    done, size, future = pending.popleft()
                    held -= size
                    yield done, future.result()
            while pending:
                done, _, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, _, future in pending:
                future.cancel()


def _explain(report: ExportReport, opts: ExportOptions) -> None:
    """Turn the counts into sentences: what the format could not hold, and how it was encoded."""
    polygons = opts.format == "yolo-seg" or (opts.format == "coco" and opts.coco_masks == "polygons")
    if polygons and report.masks_with_holes:
        how = "cut into their outer polygon through zero-width keyhole bridges"
        report.notes.append(f"{report.masks_with_holes} masks have holes: {how} (holes stay empty when read back)")
    if opts.format == "yolo-seg" and report.masks_with_parts:
        report.notes.append(f"{report.masks_with_parts} masks have several separate parts: YOLO holds one polygon per "
                            "object, so the parts were joined by zero-width bridges (Ultralytics draws them 1 px wide)")
    if opts.format == "coco" and report.masks_with_parts:
        report.notes.append(f"{report.masks_with_parts} masks have several separate parts: one COCO polygon each")
    low = report.low_iou_summary(opts.min_polygon_iou)
    if low:
        report.warnings.append(low)
        if opts.strict:
            raise InvalidRequest(f"strict export: {low}")
    if report.overlap_pixels_removed:
        report.warnings.append(f"{report.overlap_pixels_removed} pixels claimed by more than one object were kept only "
                               "by the most confident one (MOTS forbids overlapping masks)")
    if report.objects_dropped:
        report.warnings.append(f"{report.objects_dropped} objects had no pixels left to write and were left out")
    if opts.format.startswith("yolo"):
        report.notes.append("YOLO files hold no track ids")
    if opts.format == "mot":
        report.notes.append("MOT rows hold no class: concept labels are not in the export")
    for sample_id, why in report.skipped.items():
        report.warnings.append(f"skipped sample {sample_id}: {why}")


def _write_manifest(path: Path, samples: Any, opts: ExportOptions, plan: ExportPlan, report: ExportReport) -> None:
    write_json({
        "tool": "sam31-video",
        "created": dt.datetime.now().replace(microsecond=0).isoformat(),
        "dataset": samples._dataset.name,
        "options": opts.model_dump(mode="json"),
        "categories": list(plan.categories.names),
        "videos": [{"video_id": v.video_id, "sample_id": v.sample_id, "name": v.name, "filepath": v.filepath,
                    "width": v.width, "height": v.height, "frame_count": v.frame_count,
                    "frames_exported": len(v.frame_indices)} for v in plan.videos],
        "counts": {"videos": report.videos, "frames": report.frames, "objects": report.objects,
                   "tracks": report.tracks, "images": report.images},
        "notes": report.notes,
        "warnings": report.warnings,
    }, path)


def export_tracks(
    samples: fo.core.collections.SampleCollection,
    label_field: str = "sam",
    fmt: str = "coco",
    output_dir: str | Path | None = None,
    *,
    frame_stride: int = 1,
    options: ExportOptions | None = None,
    progress: Callable[[ExportProgress], None] | None = None,
    cancel: CancelToken | None = None,
    **option_fields: Any,
) -> ExportReport:
    """Export the tracks in ``frames.<label_field>`` of every video in ``samples``.

    ``fmt``: ``"coco"``, ``"yolo-seg"``, ``"yolo-detect"``, ``"mot"``, ``"mots"`` or
    ``"ytvis"``. Other settings (``frames``, ``coco_masks``, ``polygon_tolerance``,
    ``overwrite``...) are :class:`ExportOptions` fields, as keywords or ``options``.
    Everything is checked before a file is written; the folder appears only complete.
    """
    opts = ExportOptions.build(options, label_field=label_field, format=fmt, output_dir=output_dir,
                               frame_stride=frame_stride, **option_fields)
    run = ExportRun(samples, opts, cancel=cancel)
    for event in run:
        if progress is not None:
            progress(event)
    assert run.report is not None
    return run.report
