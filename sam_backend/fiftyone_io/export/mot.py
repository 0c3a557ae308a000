"""MOT Challenge (boxes) and MOTS (masks) text files, one per video.

Layout (the tracker-results layout mots_tools and TrackEval read, plus what TrackEval
needs about each sequence)::

    seqmap.txt                  "name", then one sequence per line
    <video>.txt                 the tracks
    <video>/seqinfo.ini         [Sequence] name, imDir, frameRate, seqLength, imWidth, imHeight, imExt
    <video>/img1/000001.jpg     frames="images" (MOTChallenge numbering: from 1)
    labels.txt                  MOTS only: line n is the concept of class_id n

Frame numbers are the video's own, so ``seqLength`` is the video's frame count even when
only some frames are exported (a frame range or stride): TrackEval reads it as the number
of time steps, and rows and ``img1`` files then cover only the exported frames.

MOT rows: ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,x,y,z`` with frame counted
from 1 (FiftyOne's frame number), id = track id, the box in pixels (top-left pixel is
0, 0, as in COCO), conf = confidence (1 when unknown), x, y, z = -1 (no world
coordinates). MOT has no class column: concepts are not kept.

MOTS rows: ``time_frame id class_id img_height img_width rle`` (space separated), with
time_frame from 1 (MOTS Challenge), id = class_id * 1000 + track id (the MOTS
convention, so track ids must be < 1000), class_id = the concept's category id (or
``mots_class_id``) and rle = COCO compressed RLE counts. MOTS forbids overlapping masks:
a pixel claimed by several objects is kept by the one with the highest confidence (then
the lowest track id), and the report counts the pixels removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import numpy as np

from ... import masks as mask_ops
from .base import FormatWriter, check_unique_tracks
from .tracks import ExportFrame, VideoRef

SEQMAP_FILE = "seqmap.txt"


class _TextWriter(FormatWriter):
    fmt = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._file: IO[str] | None = None
        self._names: list[str] = []

    def image_path(self, video: VideoRef, frame_index: int) -> Path:
        return self.root / video.name / "img1" / f"{frame_index + 1:06d}.{self.opts.image_format}"

    def begin_video(self, video: VideoRef) -> None:
        self._names.append(video.name)
        seq = self.root / video.name
        seq.mkdir(parents=True, exist_ok=True)
        (seq / "seqinfo.ini").write_text(
            "[Sequence]\n"
            f"name={video.name}\nimDir=img1\nframeRate={round(video.fps)}\nseqLength={video.frame_count}\n"
            f"imWidth={video.width}\nimHeight={video.height}\nimExt=.{self.opts.image_format}\n",
            encoding="utf-8",
        )
        self._file = open(self.root / f"{video.name}.txt", "w", encoding="ascii", newline="\n")

    def end_video(self, video: VideoRef) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self.end_video(None)  # type: ignore[arg-type]  # closes a file left open by a failure
        (self.root / SEQMAP_FILE).write_text("name\n" + "".join(f"{n}\n" for n in self._names), encoding="utf-8")


class MotWriter(_TextWriter):
    fmt = "MOT"

    def write_frame(self, video: VideoRef, frame: ExportFrame, image: Path | None, prepared: Any) -> None:
        check_unique_tracks(video, frame, self.fmt)
        assert self._file is not None
        number = frame.frame_index + 1
        for obj in sorted(frame.objects, key=lambda o: o.track_id or 0):
            x0, y0, x1, y1 = obj.box
            conf = 1.0 if obj.score is None else obj.score
            self._file.write(f"{number},{obj.track_id},{x0},{y0},{x1 - x0},{y1 - y0},{conf:.6g},-1,-1,-1\n")


class MotsWriter(_TextWriter):
    fmt = "MOTS"

    def write_frame(self, video: VideoRef, frame: ExportFrame, image: Path | None, prepared: Any) -> None:
        check_unique_tracks(video, frame, self.fmt)
        assert self._file is not None
        number = frame.frame_index + 1
        taken = np.zeros((video.height, video.width), bool)
        # Highest confidence first keeps contested pixels; ties go to the lower track id.
        ranked = sorted(frame.objects, key=lambda o: (-(o.score if o.score is not None else 0.0), o.track_id or 0))
        rows = []
        for obj in ranked:
            assert obj.mask is not None and obj.track_id is not None
            x0, y0, x1, y1 = obj.box  # the mask lies inside its box: work there only
            window, claimed = obj.mask[y0:y1, x0:x1], taken[y0:y1, x0:x1]
            before = int(np.count_nonzero(window))
            window &= ~claimed  # the object's own full-frame mask, trimmed in place
            kept = int(np.count_nonzero(window))
            self.report.overlap_pixels_removed += before - kept
            if kept == 0:
                self.report.objects_dropped += 1
                continue
            claimed |= window
            class_id = self.opts.mots_class_id or self.categories.id(obj.label)
            rle = mask_ops.encode_rle(obj.mask)["counts"]
            rows.append((obj.track_id, f"{number} {class_id * 1000 + obj.track_id} {class_id} {video.height} {video.width} {rle}\n"))
        for _, row in sorted(rows):
            self._file.write(row)

    def close(self) -> None:
        super().close()
        if self.opts.mots_class_id is None:
            (self.root / "labels.txt").write_text("".join(f"{n}\n" for n in self.categories.names), encoding="utf-8")
