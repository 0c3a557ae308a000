"""Frame images for formats that read images (COCO, YOLO, YouTube-VIS folders).

Frames are decoded with the same ffmpeg pass-through decoding that produced the labels
(:func:`sam_backend.video.iter_frames`), so image ``k`` is exactly the frame the labels of
frame index ``k`` were computed on; decoding stops after the last frame needed.

:class:`FrameImageSaver` writes a video's images on a thread of its own while the export
encodes labels: waiting for ffmpeg's pipe and JPEG encoding release the GIL, so the two
run on two cores (they took about half of a polygon export when done in turn).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np
from PIL import Image

from ... import video as video_ops
from ...errors import VideoError
from ...types import VideoInfo
from .tracks import VideoRef

# JPEG quality for exported frames: 95 keeps edges crisp for training; PNG is lossless.
JPEG_QUALITY = 95


def iter_images(video: VideoRef) -> Generator[tuple[int, np.ndarray], None, None]:
    """(frame_index, RGB array) for the video's exported frames, in order."""
    wanted = set(video.frame_indices)
    last = video.frame_indices[-1]
    info = VideoInfo(width=video.width, height=video.height, frame_count=video.frame_count, fps=video.fps, duration=0.0)
    frames = video_ops.iter_frames(video.filepath, info)  # info given: no second ffprobe
    try:
        for index, rgb in enumerate(frames):
            if index in wanted:
                yield index, rgb
            if index >= last:
                break
    finally:
        frames.close()  # stops ffmpeg when we leave early


def save_image(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=JPEG_QUALITY)
    else:
        image.save(path)


class FrameImageSaver:
    """Saves every exported frame of ``video`` to ``path_of(frame_index)`` on a background
    thread. Use as a context manager; :meth:`check` raises the thread's error as soon as
    there is one, :meth:`finish` waits for the last image and returns how many were
    saved. Leaving the block early (an error, a cancel) stops ffmpeg and the thread."""

    def __init__(self, video: VideoRef, path_of: Callable[[int], Path]) -> None:
        self.video, self._path_of = video, path_of
        self.saved = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sam31-export-images", daemon=True)

    def _run(self) -> None:
        try:
            with contextlib.closing(iter_images(self.video)) as images:
                for index, rgb in images:
                    if self._stop.is_set():
                        return
                    save_image(rgb, self._path_of(index))
                    self.saved += 1
            if self.saved < len(self.video.frame_indices):
                missing = self.video.frame_indices[self.saved]
                raise VideoError(f"{self.video.name}: frame index {missing} could not be decoded")
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread by check/finish
            self._error = exc

    def __enter__(self) -> FrameImageSaver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> int:
        self._thread.join()
        self.check()
        return self.saved
