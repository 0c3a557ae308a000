"""Masks written as PNG files (``WritePolicy(mask_dir=...)``, written on a thread pool) read
back through FiftyOne exactly as the crops that were written, also from full-frame masks."""

from __future__ import annotations

from pathlib import Path

import fiftyone as fo
import numpy as np

from sam_backend.fiftyone_io.writer import FrameLabelWriter, WritePolicy
from sam_backend.types import FrameResult, TrackedObject, VideoInfo


def test_mask_files_read_back_as_the_crops(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    info = VideoInfo(width=40, height=30, frame_count=70, fps=10, duration=7)
    frames, truth = [], {}
    for f in range(70):  # > 64 masks per batch: the threaded path
        objs = []
        for k in range(2):
            crop = rng.random((5 + k, 7)) < 0.6
            crop[0, 0] = crop[-1, -1] = True  # tight box
            box = (3 + f % 20, 2 + k * 10, 3 + f % 20 + 7, 2 + k * 10 + 5 + k)
            if k:  # a full-frame mask (its crop is a non-contiguous view)
                full = np.zeros((30, 40), bool)
                full[box[1]:box[3], box[0]:box[2]] = crop
                objs.append(TrackedObject(k + 1, "b", 0.5, full, box))
            else:
                objs.append(TrackedObject.from_crop(k + 1, "a", 0.5, crop, box, (30, 40)))
            truth[(f + 1, k + 1)] = crop
        frames.append(FrameResult(f, objs))
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath=str(tmp_path / "v.mp4")))
        monkeypatch.chdir(tmp_path)  # a relative folder is stored absolute: FiftyOne and the App read it as stored
        FrameLabelWriter(ds, "sam").write_sample(ds.first().id, iter(frames), info, WritePolicy(mask_dir=Path("m")))
        monkeypatch.chdir("/")
        seen = 0
        for number, frame in ds.first().frames.items():
            for d in frame["sam"].detections:
                assert d.mask is None and d.mask_path.startswith(str(tmp_path / "m")) and Path(d.mask_path).exists()
                assert np.array_equal(d.get_mask().astype(bool), truth[(number, d.index)])
                seen += 1
        assert seen == 140
    finally:
        ds.delete()
