"""Frame images of an export are saved on a thread of their own while labels are encoded
(``FrameImageSaver``): what it saves, how its failures reach the export, and that leaving
early (an error, a cancel) stops it and its ffmpeg."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_backend import video
from sam_backend.backends.base import CancelToken
from sam_backend.errors import Cancelled, VideoError
from sam_backend.fiftyone_io.export import ExportProgress, export_tracks
from sam_backend.fiftyone_io.export.frames import FrameImageSaver
from sam_backend.fiftyone_io.export.tracks import VideoRef
from sam_backend.types import FrameResult
from test_export_edges import _disk, _obj
from test_export_formats import labelled_dataset


def _ref(path: Path, indices: tuple[int, ...]) -> VideoRef:
    info = video.probe(path)
    return VideoRef(1, "s", "clip", str(path), info.width, info.height, info.frame_count, info.fps, indices)


def _ffmpeg_children() -> list[int]:
    """ffmpeg processes this test process started and that still run."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name == "ffmpeg" and int(rest[1]) == os.getpid() and rest[0] != "Z":
            out.append(int(pid))
    return out


def test_saves_exactly_the_frames_asked_for(small_video, tmp_path) -> None:
    path, _ = small_video
    with FrameImageSaver(_ref(path, (2, 17, 40)), lambda i: tmp_path / f"{i}.png") as saver:
        assert saver.finish() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["17.png", "2.png", "40.png"]
    decoded = list(video.iter_frames(path))
    for i in (2, 17, 40):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{i}.png")), decoded[i])  # PNG: lossless


def test_a_frame_the_video_does_not_decode_is_named(small_video, tmp_path) -> None:
    path, _ = small_video
    missing = video.probe(path).frame_count + 5
    with FrameImageSaver(_ref(path, (3, missing)), lambda i: tmp_path / f"{i}.jpg") as saver:
        with pytest.raises(VideoError, match=f"clip: frame index {missing} could not be decoded"):
            saver.finish()
    assert [p.name for p in tmp_path.iterdir()] == ["3.jpg"]


def test_an_unreadable_video_fails_the_export_side(tmp_path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    ref = VideoRef(1, "s", "clip", str(bad), 160, 120, 10, 25.0, (0, 1))
    with FrameImageSaver(ref, lambda i: tmp_path / f"{i}.jpg") as saver:
        with pytest.raises(VideoError, match="ffmpeg failed decoding"):
            saver.finish()
        with pytest.raises(VideoError):  # check() keeps raising it: the export stops at its next frame
            saver.check()


def test_leaving_early_stops_the_thread_and_ffmpeg(small_video, tmp_path) -> None:
    path, _ = small_video
    holder: list[FrameImageSaver] = []
    second = threading.Event()

    def path_of(index: int) -> Path:
        if index == 1:  # hold the saver on its second frame until the block is left
            second.set()
            holder[0]._stop.wait(10)
        return tmp_path / f"{index}.jpg"

    with pytest.raises(RuntimeError, match="labels failed"):
        with FrameImageSaver(_ref(path, tuple(range(48))), path_of) as saver:
            holder.append(saver)
            assert second.wait(10)
            raise RuntimeError("labels failed")
    assert not saver._thread.is_alive()
    assert saver.saved == 2  # frames 0 and 1, nothing after the block was left
    assert _ffmpeg_children() == []


def test_a_cancelled_export_with_images_leaves_nothing(small_video, tmp_path) -> None:
    frames = [FrameResult(i, [_obj(3, "a", _disk(30 + i, 40, 9))]) for i in range(40)]
    ds = labelled_dataset(small_video[0], frames, "imgs")
    cancel = CancelToken()

    def stop_after(event: ExportProgress) -> None:
        if event.frames_done == 7:
            cancel.cancel()

    try:
        with pytest.raises(Cancelled):
            export_tracks(ds, "imgs", "yolo-seg", tmp_path / "out", progress=stop_after, cancel=cancel)
        assert list(tmp_path.iterdir()) == []
        assert _ffmpeg_children() == []
        assert not [t for t in threading.enumerate() if t.name == "sam31-export-images"]
        report = export_tracks(ds, "imgs", "yolo-seg", tmp_path / "done")
        assert report.images == 40 == len(list((tmp_path / "done").rglob("*.jpg")))
    finally:
        ds.delete()
