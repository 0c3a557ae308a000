"""Clicks and two-click boxes made on a frame (the "SAM prompts" panel) become exactly the
fal prompts expected, on the right frame, and track the clicked objects with the chosen ids."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from sam_backend import masks as mask_ops
from sam_backend import video
from sam_backend.errors import InvalidRequest, VideoError
from sam_backend.fiftyone_io import segment_videos
from sam_backend.fiftyone_io.click_prompts import _encoded_frame, add_box, add_click, frame_image, prompts_on_frame, remove_label

from test_prompt_sources import DEFAULTS, VISUAL, labels_by_track, submitted_all
from test_video import _vfr_video


def _inside(mask: np.ndarray) -> tuple[int, int]:
    """A pixel well inside a mask (its most interior point)."""
    ys, xs = np.nonzero(mask)
    centre = np.array([xs.mean(), ys.mean()])
    best = np.argmin(((np.stack([xs, ys], 1) - centre) ** 2).sum(1))
    return int(xs[best]), int(ys[best])


@pytest.mark.parametrize("which", ["synthetic", "vfr"])
def test_read_frame_is_the_decoded_frame_of_that_index(which: str, small_video, tmp_path: Path) -> None:
    path = small_video[0]
    if which == "vfr":
        path = tmp_path / "vfr.mp4"
        _vfr_video(path, "libx264")
    info = video.probe(path)
    frames = list(video.iter_frames(path, info))
    for index in (0, 1, info.frame_count // 2, info.frame_count - 1):
        assert np.array_equal(video.read_frame(path, index, info), frames[index]), index
    with pytest.raises(VideoError, match=rf"frame_index {info.frame_count} is outside"):
        video.read_frame(path, info.frame_count, info)


def test_frame_image_shows_that_frame_downscaled(make_dataset, scene_video) -> None:
    path, truth = scene_video
    sample = make_dataset(path).first()
    image = frame_image(sample, 11, max_side=160)  # frame 11 = fal frame_index 10
    assert (image.width, image.height, image.scale) == (320, 240, 2.0)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(image.data_uri.split(",", 1)[1]))))
    assert decoded.shape == (120, 160, 3)
    full = video.read_frame(path, 10)
    assert np.abs(decoded.astype(int) - full[::2, ::2].astype(int)).mean() < 12  # JPEG + resampling, same picture
    hits = _encoded_frame.cache_info().hits
    assert frame_image(sample, 11, max_side=160) == image  # a click redraws the same frame: decoded once
    assert _encoded_frame.cache_info().hits == hits + 1
    with pytest.raises(InvalidRequest, match=r"frame 97 is outside the video \(frames 1..96\)"):
        frame_image(sample, 97)


def test_clicks_and_boxes_become_the_prompts_and_track_with_their_ids(make_dataset, scene_video, fal_backend,
                                                                         emulator) -> None:
    path, truth = scene_video
    ds = make_dataset(path)
    sample = ds.first()
    bx, by = _inside(truth.mask("red ball", 4))
    kp_id = add_click(sample, 5, bx, by, positive=True, object_id=7, name="ball")
    add_click(sample, 5, 2, 2, positive=False, object_id=7)  # background: "not the ball"
    x0, y0, x1, y1 = mask_ops.tight_box(truth.mask("blue box", 20))
    box_id = add_box(sample, 21, (x1 - 1, y1 - 1, x0, y0), object_id=3, name="crate")  # corners in any order

    on5 = prompts_on_frame(sample, 5)
    assert [p[:4] for p in on5.points] == [(bx, by, True, 7), (2, 2, False, 7)] and on5.boxes == []
    assert prompts_on_frame(sample, 21).boxes == [(x0, y0, x1, y1, 3, box_id)]
    assert prompts_on_frame(sample, 6).points == []

    n = len(emulator.stats.submits)
    segment_videos(ds, prompt_fields=["sam_points", "sam_boxes"], label_field="sam", backend=fal_backend)
    # one request per object: the box of object 3, the two clicks of object 7
    assert submitted_all(emulator, n) == [
        (VISUAL, {"box_prompts": [{"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "object_id": 3, "frame_index": 20}],
                  **DEFAULTS}),
        (VISUAL, {"point_prompts": [{"x": bx, "y": by, "label": 1, "object_id": 7, "frame_index": 4},
                                    {"x": 2, "y": 2, "label": 0, "object_id": 7, "frame_index": 4}],
                  **DEFAULTS}),
    ]
    sample.reload()
    assert labels_by_track(sample, "sam") == {7: {"ball"}, 3: {"crate"}}
    for name, track in (("red ball", 7), ("blue box", 3)):
        for number, frame in sample.frames.items():
            [det] = [d for d in frame["sam"].detections if d.index == track] or [None]
            expected = truth.mask(name, number - 1)
            if number - 1 < (4 if track == 7 else 20) or expected is None:
                continue  # tracked forward from the prompted frame
            assert det is not None, (name, number)
            x, y, w, h = det.bounding_box
            full = np.zeros((240, 320), bool)
            px, py = round(x * 320), round(y * 240)
            full[py:py + det.mask.shape[0], px:px + det.mask.shape[1]] = det.mask
            assert mask_ops.iou(full, expected) >= 0.98, (name, number)

    assert remove_label(sample, 5, "sam_points", kp_id) and not remove_label(sample, 5, "sam_points", kp_id)
    assert [p[:4] for p in prompts_on_frame(sample, 5).points] == [(2, 2, False, 7)]


def test_bad_clicks_are_refused_before_anything_is_written(make_dataset, scene_video) -> None:
    ds = make_dataset(scene_video[0])
    sample = ds.first()
    with pytest.raises(InvalidRequest, match=r"click \(320, 10\) is outside the frame \(320x240\)"):
        add_click(sample, 1, 320, 10, positive=True, object_id=1)
    with pytest.raises(InvalidRequest, match=r"frame 0 is outside the video"):
        add_click(sample, 0, 10, 10, positive=True, object_id=1)
    with pytest.raises(InvalidRequest, match=r"has no area"):
        add_box(sample, 1, (10, 10, 10, 40), object_id=1)
    with pytest.raises(InvalidRequest, match=r"object id must be >= 0"):
        add_box(sample, 1, (10, 10, 20, 40), object_id=-1)
    assert not ds.has_frame_field("sam_points") and not ds.has_frame_field("sam_boxes")
    sample.frames[1]["taken"] = fo.Classification(label="x")
    sample.save()
    with pytest.raises(InvalidRequest, match=r"frames.taken holds Classification, not Keypoints"):
        add_click(sample, 1, 10, 10, positive=True, object_id=1, field="taken")
    assert sample.frames[1]["taken"].label == "x"
