"""Drawing and encoding the emulator's output files, with numpy and ffmpeg only.

fal's endpoint returns a rendered video (masks blended over the frames) and a zip of
per-frame images with boxes. The emulator produces real files of the same kinds so a
client's download/display code is exercised, but they only need to be plausible, not
pretty: frames are drawn with numpy and piped raw into ffmpeg encoders, one process per
output, so encoding holds one frame at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from ..video import require_ffmpeg

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - no pipe sizing on Windows
    fcntl = None

# Distinct overlay colours, picked by track id (tab10-like).
TRACK_COLOURS = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    ],
    dtype=np.uint8,
)

VIDEO_FORMATS: dict[str, tuple[str, str]] = {
    # wire value -> (file extension, content type)
    "X264 (.mp4)": ("mp4", "video/mp4"),
    "VP9 (.webm)": ("webm", "video/webm"),
}


def track_colour(track_id: int) -> np.ndarray:
    return TRACK_COLOURS[track_id % len(TRACK_COLOURS)]


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 pixels, max exclusive


def blend_masks(frame: np.ndarray, objects: list[tuple[int, np.ndarray, Box]]) -> np.ndarray:
    """RGB frame with each (track id, mask, tight box) tinted half-way to its track
    colour. Works inside each box only, in integers: it runs per frame per object."""
    out = frame.copy()
    for track_id, mask, (x0, y0, x1, y1) in objects:
        colour = track_colour(track_id).astype(np.uint16)
        region, inside = out[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        region[inside] = ((region[inside].astype(np.uint16) + colour) // 2).astype(np.uint8)
    return out


def draw_boxes(frame: np.ndarray, boxes: list[tuple[int, Box]], thickness: int = 2) -> np.ndarray:
    """RGB frame with a rectangle outline per (track id, (x0, y0, x1, y1) max-exclusive)."""
    out = frame.copy()
    for track_id, (x0, y0, x1, y1) in boxes:
        colour = track_colour(track_id)
        t = max(1, min(thickness, (x1 - x0 + 1) // 2, (y1 - y0 + 1) // 2))
        out[y0:y0 + t, x0:x1] = colour
        out[y1 - t:y1, x0:x1] = colour
        out[y0:y1, x0:x0 + t] = colour
        out[y0:y1, x1 - t:x1] = colour
    return out


def _grow_pipe(pipe: IO[bytes] | None, size: int) -> None:
    """Let a pipe hold a few frames (Linux: F_SETPIPE_SZ), so writing a frame does not
    wait for the encoder to drain it: with the default 64 KiB every frame is a
    lock-step hand-off and the encoders run far below their speed."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if pipe is None or setpipe is None:
        return
    try:
        fcntl.fcntl(pipe.fileno(), setpipe, min(size, 1 << 20))
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for unprivileged users: keep the default


class FrameSink:
    """An ffmpeg process fed raw RGB frames on stdin. Always use as a context manager:
    leaving it with an exception (e.g. a cancelled job) kills ffmpeg instead of waiting."""

    def __init__(self, output_args: list[str], *, width: int, height: int, fps: float, log_dir: Path) -> None:
        ffmpeg, _ = require_ffmpeg()
        rate = f"{fps:.6f}" if fps > 0 else "25"
        cmd = [
            ffmpeg, "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}", "-r", rate, "-i", "pipe:0", *output_args,
        ]
        # stderr goes to a file, not a pipe: a chatty ffmpeg can never block on it.
        fd, _ = tempfile.mkstemp(prefix="ffmpeg-", suffix=".log", dir=log_dir)
        self._log: IO[bytes] = os.fdopen(fd, "w+b")
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        except OSError:
            self._log.close()
            raise
        _grow_pipe(self._proc.stdin, 4 * width * height * 3)

    def write(self, frame: np.ndarray) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        except BrokenPipeError:
            raise RuntimeError(f"ffmpeg encoder exited early: {self._stderr()}") from None

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None:
                self._proc.kill()
                self._proc.wait()
                return
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
            if self._proc.wait() != 0:
                raise RuntimeError(f"ffmpeg encoder failed: {self._stderr()}")
        finally:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                try:
                    self._proc.stdin.close()
                except BrokenPipeError:
                    pass
            self._log.close()


def video_sink(path: Path, output_type: str, *, width: int, height: int, fps: float) -> FrameSink:
    """Encoder for the rendered video: H.264 MP4 or VP9 WebM, as the request asks."""
    even = ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]  # yuv420p needs even sizes
    if output_type == "VP9 (.webm)":
        codec = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "0", "-crf", "40", "-row-mt", "1"]
    else:
        codec = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "23", "-movflags", "+faststart"]
    return FrameSink([*even, *codec, "-pix_fmt", "yuv420p", str(path)], width=width, height=height, fps=fps, log_dir=path.parent)


def jpeg_sequence_sink(directory: Path, *, width: int, height: int, fps: float) -> FrameSink:
    """Encoder writing one JPEG per frame, ``frame_00000.jpg`` upwards (0-based like fal)."""
    directory.mkdir(parents=True, exist_ok=True)
    pattern = directory / "frame_%05d.jpg"
    args = ["-c:v", "mjpeg", "-q:v", "4", "-pix_fmt", "yuvj444p", "-start_number", "0", "-f", "image2", str(pattern)]
    return FrameSink(args, width=width, height=height, fps=fps, log_dir=directory.parent)


def zip_directory(directory: Path) -> bytes:
    """The files of ``directory`` (sorted, flat) as a zip; JPEGs are stored, not deflated."""
    out = directory.parent / (directory.name + ".zip")
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(directory.iterdir()):
            zf.write(path, arcname=path.name)
    return out.read_bytes()
