"""Probing and decoding agree with FiftyOne's own frame numbering, also on odd and
variable frame rates, and fail clearly on files that are not videos."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from sam_backend import masks, synthetic, video
from sam_backend.errors import VideoError


def _vfr_video(path: Path, codec: str) -> None:
    # 30 frames at 30 fps, then frames 1/10 s apart: a variable frame rate stream.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30", "-t", "2",
         "-vf", "setpts='if(lt(N,30),N/30,1+(N-30)/10)/TB'", "-fps_mode", "vfr", "-c:v", codec,
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def test_probe_odd_fps_synthetic(small_video: tuple[Path, synthetic.GroundTruth]) -> None:
    path, gt = small_video
    info = video.probe(path)
    assert (info.width, info.height, info.frame_count) == (160, 120, 48)
    assert info.fps == pytest.approx(30000 / 1001)
    assert not info.variable_frame_rate
    assert sum(1 for _ in video.iter_frames(path, info)) == 48


def test_decoded_frames_reproduce_ground_truth(small_video: tuple[Path, synthetic.GroundTruth]) -> None:
    """The palette survives H.264: each object's luma class equals its rendered mask."""
    path, gt = small_video
    scene = gt.scene
    lumas = {name: 0.299 * r + 0.587 * g + 0.114 * b for name, (r, g, b) in synthetic.PALETTE.items()}
    levels = np.array([0.0, *lumas.values()])
    names = ["background", *lumas]
    for index, frame in enumerate(video.iter_frames(path, gray=True)):
        cls = np.abs(frame[..., None].astype(np.float32) - levels).argmin(-1)
        for shape in scene.shapes:
            found = cls == names.index(shape.colour)
            expected = gt.mask(shape.name, index)
            if expected is None:
                assert not found.any(), (shape.name, index)
            else:
                assert masks.iou(found, expected) == 1.0, (shape.name, index)


@pytest.mark.parametrize("suffix,codec", [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_variable_frame_rate_counts_frames_like_fiftyone_reader(tmp_path: Path, suffix: str, codec: str) -> None:
    import eta.core.video as etav

    path = tmp_path / f"vfr.{suffix}"
    _vfr_video(path, codec)
    info = video.probe(path)
    with etav.FFmpegVideoReader(str(path)) as reader:  # what fo.apply_model decodes
        fiftyone_numbers = [reader.frame_number for _ in reader]
    ours = sum(1 for _ in video.iter_frames(path, info))
    assert ours == info.frame_count == len(fiftyone_numbers)
    assert fiftyone_numbers == list(range(1, ours + 1))
    if suffix == "mp4":
        assert info.variable_frame_rate


def test_unreadable_inputs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="video not found"):
        video.probe(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    with pytest.raises(VideoError, match="cannot read video"):
        video.probe(junk)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(VideoError):
        video.probe(text)


def test_closing_the_frame_iterator_early_stops_ffmpeg(small_video: tuple[Path, synthetic.GroundTruth]) -> None:
    frames = video.iter_frames(small_video[0])
    first = next(frames)
    assert first.shape == (120, 160, 3)
    frames.close()  # must not hang or raise


def test_writing_a_video_fails_with_a_video_error_not_a_broken_pipe(tmp_path: Path) -> None:
    """An odd frame size (yuv420p needs even ones) and an ffmpeg that stops while frames are
    still coming (no such folder) both raised BrokenPipeError from the frame loop."""
    scene = synthetic.default_scene(frame_count=30, width=321, height=239)
    with pytest.raises(VideoError, match="321x239: H.264 in yuv420p .* needs an even width and height"):
        synthetic.write_video(scene, tmp_path / "odd.mp4")
    frames = (np.zeros((720, 1280, 3), np.uint8) for _ in range(200))  # more than a pipe buffer holds
    with pytest.raises(VideoError, match="ffmpeg failed writing .*missing/v.mp4: .*No such file or directory"):
        video.encode_rgb_frames(frames, tmp_path / "missing" / "v.mp4", width=1280, height=720, fps=25)
