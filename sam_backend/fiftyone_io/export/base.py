"""The shape every format writer has; :mod:`.run` drives them video by video, frame by frame."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from ...errors import InvalidRequest
from .options import ExportOptions
from .report import ExportReport
from .tracks import Categories, ExportFrame, VideoRef


class FormatWriter:
    """Writes one format into ``root`` (a staging folder that becomes the output folder
    only when the whole export succeeded). Subclasses override what they need."""

    #: whether the format can refer to frames by video + frame index instead of images
    needs_images = False

    def __init__(self, root: Path, opts: ExportOptions, categories: Categories, report: ExportReport) -> None:
        self.root = root
        self.opts = opts
        self.categories = categories
        self.report = report
        self.images = opts.frame_mode == "images" or self.needs_images

    def image_path(self, video: VideoRef, frame_index: int) -> Path:
        """Where the image of this frame goes (only asked when ``self.images``)."""
        raise NotImplementedError

    def begin_video(self, video: VideoRef) -> None:
        pass

    def prepare(self, video: VideoRef, frame: ExportFrame) -> Any:
        """A frame's per-object work that reads nothing but the frame (tracing polygons,
        encoding masks). The export runs it on worker threads a few frames ahead (it
        releases the GIL in OpenCV, zlib and numpy) and hands the result to
        :meth:`write_frame` in frame order, so it must not touch the report or the files."""
        return None

    def write_frame(self, video: VideoRef, frame: ExportFrame, image: Path | None, prepared: Any) -> None:
        """Write one frame; ``prepared`` is what :meth:`prepare` returned for it."""
        raise NotImplementedError

    def end_video(self, video: VideoRef) -> None:
        pass

    def close(self) -> None:
        pass


def frame_file_name(video: VideoRef, frame_index: int, ext: str) -> str:
    """``<video>/<0-based frame index, 6 digits>.<ext>``: the frame files COCO and YouTube-VIS list."""
    return f"{video.name}/{frame_index:06d}.{ext}"


class RawJSON:
    """JSON text encoded already (see :mod:`.numbers`), which :func:`write_json` puts in
    the file as it is, where the value would go."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def write_json(data: Any, path: Path) -> None:
    """JSON as every reader takes it: ASCII-only (non-ASCII labels as \\u escapes), so
    readers that open files with the platform's default encoding read them right too.
    :class:`RawJSON` values are spliced in as they are (their text must be ASCII JSON)."""
    raw: list[str] = []
    marker = f"\x00{uuid.uuid4().hex}:"  # random, so no string of the caller's can hold it

    def splice(value: Any) -> str:
        if not isinstance(value, RawJSON):
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        raw.append(value.text)
        return f"{marker}{len(raw) - 1}"

    path.parent.mkdir(parents=True, exist_ok=True)
    # dumps, not dump: only the one-shot encoder is the C one (~5x faster on big files)
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=splice)
    if raw:
        encoded = re.escape(json.dumps(marker)[:-1])  # the marker's quoted text, without its closing quote
        text = re.sub(encoded + r'(\d+)"', lambda m: raw[int(m[1])], text)
    path.write_text(text, encoding="ascii")


def check_unique_tracks(video: VideoRef, frame: ExportFrame, fmt: str) -> None:
    """Track formats hold one object per track id per frame."""
    seen: set[int | None] = set()
    for obj in frame.objects:
        if obj.track_id in seen:
            raise InvalidRequest(f"{video.name}: frame number {frame.frame_index + 1} has two objects with track id "
                                 f"{obj.track_id}; {fmt} holds one object per track per frame (fix or re-index them)")
        seen.add(obj.track_id)
