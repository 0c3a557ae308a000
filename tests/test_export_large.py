"""Exports of videos whose frame labels add up to more than MongoDB's 16 MB document limit
(real SAM masks at 720p pass it within seconds of video): FiftyOne's queries join every
frame of a video into one document, so the exporter reads frames one document each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F
from pycocotools import mask as mask_utils

from sam_backend.errors import InvalidRequest
from sam_backend.fiftyone_io.export import export_tracks
from sam_backend.fiftyone_io.writer import FrameLabelWriter, WritePolicy
from sam_backend.types import FrameResult, TrackedObject
from sam_backend.video import encode_rgb_frames, probe

W, H, FRAMES, OBJECTS = 1280, 720, 120, 6  # ~29 KB of incompressible mask per object and frame: ~21 MB


def _frames(seed: int) -> Iterator[FrameResult]:
    rng = np.random.default_rng(seed)
    for f in range(FRAMES):
        objects = []
        for k in range(OBJECTS):
            mask = np.zeros((H, W), bool)
            x0, y0 = 120 * k + f % 7, 40 + 11 * k
            mask[y0:y0 + 360, x0:x0 + 400] = rng.random((360, 400)) < 0.5
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            objects.append(TrackedObject(k + 1, "thing" if k % 2 else "other", 0.5 + k / 20, mask, box))
        yield FrameResult(f, objects)


@pytest.fixture(scope="module")
def heavy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fo.Dataset]:
    path = tmp_path_factory.mktemp("heavy") / "heavy.mp4"
    encode_rgb_frames((np.zeros((H, W, 3), np.uint8) for _ in range(FRAMES)), path, width=W, height=H, fps=25)
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(path)))
    FrameLabelWriter(ds, "sam").write_sample(ds.first().id, _frames(7), probe(path), WritePolicy())
    yield ds
    ds.delete()


def test_the_frames_of_one_video_are_over_the_document_limit(heavy: fo.Dataset) -> None:
    size = heavy._frame_collection.aggregate([{"$group": {"_id": None, "n": {"$sum": {"$bsonSize": "$$ROOT"}}}}])
    assert next(size)["n"] > 16 * 1024 * 1024  # the premise of the tests below


@pytest.mark.parametrize("fmt", ["mot", "coco"])
def test_heavy_video_exports_every_frame(heavy: fo.Dataset, fmt: str, tmp_path: Path) -> None:
    report = export_tracks(heavy, "sam", fmt, tmp_path / fmt)
    assert (report.frames, report.objects, report.tracks) == (FRAMES, FRAMES * OBJECTS, OBJECTS)
    if fmt == "coco":
        coco = json.loads((tmp_path / fmt / "labels.json").read_text())
        # spot-check the last frame's masks bit for bit against what was written
        truth = {o.track_id: o.mask for f in _frames(7) if f.frame_index == FRAMES - 1 for o in f.objects}
        [image] = [im for im in coco["images"] if im["frame_id"] == FRAMES - 1]
        anns = {a["track_id"]: a for a in coco["annotations"] if a["image_id"] == image["id"]}
        assert sorted(anns) == sorted(truth)
        for track, ann in anns.items():
            rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
            assert (mask_utils.decode(rle).astype(bool) == truth[track]).all()


def test_a_filtered_view_over_the_limit_says_what_to_do(heavy: fo.Dataset, tmp_path: Path) -> None:
    view = heavy.filter_labels("frames.sam", F("confidence") > 0.4)  # keeps every object: still ~21 MB
    with pytest.raises(InvalidRequest, match="over MongoDB's 16 MB per query"):
        export_tracks(view, "sam", "mot", tmp_path / "filtered")
    assert not (tmp_path / "filtered").exists()


def _blob(rng: np.random.Generator, h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """An object-like mask: an ellipse with a wobbly outline (SAM masks are not rectangles),
    computed in its own window only."""
    mask = np.zeros((h, w), bool)
    x0, x1 = max(int(cx - 1.2 * rx), 0), min(int(cx + 1.2 * rx) + 1, w)
    y0, y1 = max(int(cy - 1.2 * ry), 0), min(int(cy + 1.2 * ry) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return mask
    ys, xs = np.ogrid[y0:y1, x0:x1]
    angle = np.arctan2(ys - cy, xs - cx)
    wobble = 1 + 0.12 * np.sin(5 * angle + rng.uniform(0, 6)) + 0.05 * np.sin(13 * angle)
    mask[y0:y1, x0:x1] = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= wobble ** 2
    return mask


def _realistic(width: int, height: int, frames: int, objects: int, seed: int) -> Iterator[FrameResult]:
    rng = np.random.default_rng(seed)
    starts = [(rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height, rng.uniform(0.02, 0.12) * width,
               rng.uniform(0.04, 0.2) * height) for _ in range(objects)]
    for f in range(frames):
        out = []
        for k, (cx, cy, rx, ry) in enumerate(starts):
            mask = _blob(rng, height, width, cx + 3 * f * (1 if k % 2 else -1), cy + f, rx, ry)
            ys, xs = np.nonzero(mask)
            if not len(xs):
                continue
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            out.append(TrackedObject(k + 1, f"class{k % 5}", 0.9, mask, box))
        yield FrameResult(f, out)


@pytest.mark.parametrize(("width", "height", "frames", "objects"), [(1280, 720, 132, 16), (1920, 1080, 90, 16),
                                                                    (1920, 1080, 1, 128)])
def test_realistic_hd_videos_export_in_every_format(width: int, height: int, frames: int, objects: int,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "hd.mp4"
    encode_rgb_frames((np.zeros((height, width, 3), np.uint8) for _ in range(frames)), path, width=width, height=height,
                      fps=30)
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath=str(path)))
        per_frame = [len(f.objects) for f in _realistic(width, height, frames, objects, 3)]
        stats = FrameLabelWriter(ds, "sam").write_sample(ds.first().id, _realistic(width, height, frames, objects, 3),
                                                         probe(path), WritePolicy())
        for fmt in ("mot", "mots", "coco", "ytvis", "yolo-detect", "yolo-seg"):
            stride = 1 if fmt in ("mot", "mots") or frames == 1 else 10
            frames_mode = "images" if fmt.startswith("yolo") else "video"
            report = export_tracks(ds, "sam", fmt, tmp_path / fmt, frame_stride=stride, frames=frames_mode)
            assert report.frames == len(range(0, frames, stride)), fmt
            assert report.objects == sum(per_frame[::stride]), fmt
        assert stats.detections >= frames * objects * 0.9
    finally:
        ds.delete()
