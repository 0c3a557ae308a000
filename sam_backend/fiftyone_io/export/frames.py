"""Frame images for formats that read images (COCO, YOLO, YouTube-VIS folders).

Frames are decoded with the same ffmpeg pass-through decoding that produced the labels
(:func:`sam_backend.video.iter_frames`), so image ``k`` is exactly the frame the labels of
frame index ``k`` were computed on; decoding stops after the last frame needed.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np
from PIL import Image

from ... import video as video_ops
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
