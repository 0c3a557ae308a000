"""Importing COCO and YouTube-VIS files back into frame-level ``fo.Detections``.

Each video of the file is matched to a sample of the collection (same file path, else
same file name, else the video's name equals the file's stem), then written with the
project's :class:`FrameLabelWriter`: the documents FiftyOne itself would store, all or
nothing per video. ``index`` = the track id in the file, ``label`` = the category name,
``confidence`` = the file's score (``default_score``, None unless given, when the file
has none: an export of tracks without a score imports back without one, as FiftyOne's own
COCO importer reads a missing score). Every frame listed in the file gets a ``Detections``, empty where it
has no object; frames the file does not list are left as they are.

The whole import is checked before anything is written (see :meth:`ImportedVideo.check`):
a file with one bad annotation writes nothing, and the error names the file, the video,
the frame and the annotation. Only ``frames.<label_field>`` is ever written, and if the
import stops after some videos were written (a cancel raised by ``progress``, a database
error), :class:`FieldBackup` puts that field back as it was on every video.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import fiftyone as fo

from ... import video as video_ops
from ...errors import InvalidRequest, VideoError
from ...types import VideoInfo
from ..video_info import check_whole_videos
from ..writer import FrameLabelWriter, check_label_field, refuse_replacing_labels_not_ours
from .field_backup import FieldBackup, recover_killed
from .readers import ImportedVideo, read_labels
from .report import ExportProgress

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ImportReport:
    label_field: str
    format: str
    videos: int = 0
    frames: int = 0
    objects: int = 0
    tracks: int = 0
    unmatched: list[str] = dataclasses.field(default_factory=list)  # videos of the file with no sample
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"{self.format}: {self.videos} videos, {self.frames} frames, {self.objects} objects, "
                f"{self.tracks} tracks -> frames.{self.label_field}")
        if self.unmatched:
            text += f"; no sample for: {', '.join(self.unmatched)}"
        return text


def import_tracks(
    samples: fo.core.collections.SampleCollection,
    path: str | Path,
    label_field: str = "imported",
    fmt: str | None = None,
    *,
    default_score: float | None = None,
    overwrite: bool = False,
    progress: Callable[[ExportProgress], None] | None = None,
) -> ImportReport:
    """Read a COCO or YouTube-VIS file (or an export folder holding one) into
    ``frames.<label_field>`` of the matching videos in ``samples``. Everything is checked
    (format, matching, frame sizes and counts, the field) before anything is written.
    Labels in the field that this plugin did not write are replaced only with ``overwrite``."""
    start = time.monotonic()
    check_whole_videos(samples, "import")
    dataset = samples._dataset
    try:
        check_label_field(dataset, label_field)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if not overwrite:
        refuse_replacing_labels_not_ours(samples, label_field, "that sam31-video did not write; importing would "
                                                               "replace them on the matching videos")
    data = read_labels(path, fmt)
    report = ImportReport(label_field, data.format, notes=list(data.notes))
    missing = samples.exists("metadata", False)
    if len(missing):
        missing.compute_metadata()
    matches = _match(samples, data.videos, report)
    shown = {video: _shown(path, meta, video.name, report) for video, (_, meta, path) in matches.items()}
    problems = []
    for video, info in shown.items():
        # Sizes as decoded and shown by the App (rotation applied), as the exporter writes them.
        if (info.width, info.height) != (video.width, video.height):
            problems.append(f"{video.name}: the file says {video.width}x{video.height}, the video is "
                            f"{info.width}x{info.height}")
        last = max(video.frames, default=-1)
        if info.frame_count and last >= info.frame_count:
            problems.append(f"{video.name}: labels on frame number {last + 1}, the video has {info.frame_count} frames")
    if problems:
        raise InvalidRequest(problems)
    # All or nothing across videos: every object of every matched video is checked (RLE
    # sizes and sums, polygons, boxes, scores, ids) before the first write, so a bad
    # annotation in the last video cannot leave the first ones imported.
    for video in matches:
        video.check(default_score)
    for undone in recover_killed():  # an import killed midway is rolled back before this one writes
        report.notes.append(f"an earlier import into {undone} was killed midway; that field was put back as it was")
        logger.warning(report.notes[-1])
    writer = FrameLabelWriter(dataset, label_field)
    total = sum(len(v.frames) for v in matches)
    done = 0
    # Anything that still stops the import after some videos were written (a cancel from
    # ``progress``, a database error) puts the field back on all of them.
    with FieldBackup(dataset, label_field, [sample_id for sample_id, _, _ in matches.values()]) as backup:
        for i, (video, (sample_id, _, _)) in enumerate(matches.items()):
            if progress is not None:
                progress(ExportProgress(done, total, i, len(matches), video.name))
            stats = writer.write_sample(sample_id, video.frame_results(default_score), shown[video])
            report.videos += 1
            report.frames += stats.frames
            report.objects += stats.detections
            report.tracks += len(stats.tracks)
            done += len(video.frames)
        backup.commit()
    if progress is not None and matches:
        progress(ExportProgress(done, total, len(matches) - 1, len(matches), list(matches)[-1].name))
    report.seconds = time.monotonic() - start
    return report


def _shown(path: str, meta: fo.VideoMetadata, name: str, report: ImportReport) -> VideoInfo:
    """Frame size and count as decoded (the project's one source of truth: FiftyOne's
    metadata reads the container, which is wrong for rotated video); FiftyOne's metadata
    only when the file cannot be decoded here."""
    try:
        return video_ops.probe(path)
    except VideoError as exc:
        if meta is None or not meta.frame_width:
            raise InvalidRequest(f"{name}: {exc}") from None
        report.notes.append(f"{name}: video not readable ({exc}); frame size and count taken from FiftyOne's metadata")
        return VideoInfo(width=meta.frame_width, height=meta.frame_height, frame_count=meta.total_frame_count or 0,
                         fps=meta.frame_rate or 0.0, duration=meta.duration or 0.0)


Match = tuple[str, fo.VideoMetadata, str]  # sample id, FiftyOne's metadata, file path


def _match(samples: fo.core.collections.SampleCollection, videos: list[ImportedVideo],
           report: ImportReport) -> dict[ImportedVideo, Match]:
    ids, paths, metas = samples.values(["id", "filepath", "metadata"])
    by_path: dict[str, list[Match]] = {}
    by_file: dict[str, list[Match]] = {}
    by_stem: dict[str, list[Match]] = {}
    for i, p, m in zip(ids, paths, metas):
        by_path.setdefault(p, []).append((i, m, p))
        by_file.setdefault(Path(p).name, []).append((i, m, p))
        by_stem.setdefault(Path(p).stem, []).append((i, m, p))
    matches: dict[ImportedVideo, Match] = {}
    taken: set[str] = set()
    for video in videos:
        # Samples sharing a file path take the file's videos of that path in order (as an
        # export of this collection listed them); a lone sample by file name or stem.
        found = next((m for m in by_path.get(video.filepath or "", []) if m[0] not in taken), None)
        for table, key in ((by_file, video.file_name), (by_stem, video.name)):
            if found is None and key and len(table.get(key, [])) == 1:
                found = table[key][0]
        if found is None and not video.name and len(videos) == 1 and len(ids) == 1:
            found = (ids[0], metas[0], paths[0])
            report.notes.append("the file's image names carry no video folder: its frames went to the one video here")
        if found is None or found[0] in taken:
            report.unmatched.append(video.name or _NO_FOLDER)
            continue
        taken.add(found[0])
        matches[video] = found
    shared = {v.filepath for v in matches if v.filepath and len(by_path[v.filepath]) > 1}
    if shared:
        report.notes.append(f"{len(shared)} file path(s) are used by several samples: the file's videos of each "
                            "path were matched to those samples in order")
    if not matches:
        hint = (" (to import frames named without a folder, use a view of the one video they belong to)"
                if any(not v.name for v in videos) else "")
        raise InvalidRequest(f"no video of the file matches a sample of this collection (videos in the file: "
                             f"{', '.join(v.name or _NO_FOLDER for v in videos) or 'none'}){hint}")
    return matches


_NO_FOLDER = "(image names without a video folder)"
