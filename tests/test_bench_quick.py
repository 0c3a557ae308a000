"""The benchmark command's machinery on tiny sizes, so it cannot rot (its numbers mean
nothing here). The slow parts (the pre-change baseline tree, fal concurrency, the
subprocess end-to-end runs) are left to ``python bench/run.py --quick``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_quick_bench_writes_a_table_and_json(tmp_path: Path) -> None:
    saved = dict(os.environ)  # the bench names a database of its own in the environment
    sys.path.insert(0, str(BENCH))
    try:
        import run as bench_run

        doc = bench_run.main(["--quick", "--repeats", "1", "--out-dir", str(tmp_path),
                              "--skip", "e2e,e2e_baseline,concurrency"])
    finally:
        sys.path.remove(str(BENCH))
        os.environ.clear()
        os.environ.update(saved)
    names = {(r["section"].split(",")[0], r["name"]) for r in doc["figures"]}
    assert ("writer", "writer, mask_path (PNG files)") in names
    assert any(s.startswith("exports") and "polygons" in n for s, n in names)
    assert any(s.startswith("emulator") for s, _ in names)
    assert any(s.startswith("local backend") and "/" in n for s, n in names)  # its ratio row
    assert any("noisy blobs" in r["section"] for r in doc["figures"])
    assert all(r["median"] > 0 for r in doc["figures"])
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["quick"] is True
    table = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| figure |" in table and "Machine:" in table


def test_canned_answer_is_fal_objects_rle() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from _e2e import canned_output
    finally:
        sys.path.remove(str(BENCH))
    from sam_backend.backends.fal import rle

    out = canned_output(3, 2)
    assert (out["width"], out["height"], out["num_frames"]) == (640, 360, 3)
    masks = [rle.decode(o["rle"], 360, 640) for f in out["frames"] for o in f["objects"]]
    assert len(masks) == 6 and all(m.sum() > 100 for m in masks) and not np.array_equal(masks[0], masks[2])


def test_canned_union_answers_are_each_blob_alone_in_fal_union_rle() -> None:
    """The union shape of the e2e bench: one fal-ai/sam-3-1/video-rle answer per blob,
    found by its frame-0 box, that the client's decoder reads as the same masks as the
    objects answer."""
    sys.path.insert(0, str(BENCH))
    try:
        from _e2e import canned_output, canned_union, first_boxes
    finally:
        sys.path.remove(str(BENCH))
    from sam_backend.backends.fal import endpoints as table
    from sam_backend.backends.fal import rle
    from sam_backend.backends.fal.decoders import decode_result

    objects, unions, boxes = canned_output(4, 3), canned_union(4, 3), first_boxes(3)
    assert len(unions) == len(set(boxes)) == 3
    for k, answer in enumerate(unions):
        decoded = decode_result({"payload": answer}, table.endpoint(table.SAM31_VIDEO_RLE), layout=rle.RleLayout(),
                                frame_count=4, height=360, width=640, request_id=f"r{k}")
        for f, masks in enumerate(decoded.frames()):
            (mask,) = masks
            assert np.array_equal(rle.decode(objects["frames"][f]["objects"][k]["rle"], 360, 640)[
                mask.box[1]:mask.box[3], mask.box[0]:mask.box[2]], mask.crop)
            assert mask.score == 0.9
        assert decoded.frames().__next__()[0].box == boxes[k]
