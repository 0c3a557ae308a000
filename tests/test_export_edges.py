"""Edge cases of the exports, on crafted tracks: empty frames, an object that leaves and
comes back, masks with holes and with several parts, masks on the image border, a frame
with 128 objects, non-ASCII labels, overlapping masks; what each format can hold (and
that it says so when it cannot); bad requests; failures leave nothing behind; the CLI.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import cv2
import fiftyone as fo
import numpy as np
import pytest

from sam_backend.backends.base import CancelToken
from sam_backend.errors import Cancelled, InvalidRequest
from sam_backend.fiftyone_io.export import MANIFEST, ExportProgress, export_tracks, import_tracks
from sam_backend.fiftyone_io.export import polygons as poly
from sam_backend.fiftyone_io.export.cli import main as cli_main
from sam_backend.masks import tight_box
from sam_backend.types import FrameResult, TrackedObject
from test_export_formats import (
    as_objects,
    iou,
    labelled_dataset,
    read_coco,
    read_mots,
    read_yolo,
    read_ytvis,
    xywh_close,
    yolo_mask,
)

H, W = 120, 160
YY, XX = np.ogrid[:H, :W]
CAFE, BIKE, EDGE, PARTS = "café ☕", "自行车", "край", "two parts"
GRID_TRACKS = range(100, 228)  # 128 objects on frame index 30


def _disk(cx: float, cy: float, r: float) -> np.ndarray:
    return np.broadcast_to((XX - cx) ** 2 + (YY - cy) ** 2 <= r * r, (H, W)).copy()


def _obj(track: int, label: str, mask: np.ndarray, score: float = 0.8) -> TrackedObject:
    box = tight_box(mask)
    assert box is not None
    return TrackedObject(track, label, score, mask, box)


def ring_with_island() -> np.ndarray:
    return (_disk(80, 60, 25) & ~_disk(80, 60, 11)) | _disk(80, 60, 4)


def border_frame() -> np.ndarray:
    """A 3-pixel frame around the whole image: touches all four borders, one big hole."""
    mask = np.zeros((H, W), bool)
    mask[:3], mask[-3:], mask[:, :3], mask[:, -3:] = True, True, True, True
    return mask


def two_parts() -> np.ndarray:
    return _disk(20, 100, 5) | _disk(140, 18, 5)


def grid() -> list[TrackedObject]:
    objects = []
    for i, track in enumerate(GRID_TRACKS):
        r, c = divmod(i, 16)
        mask = np.zeros((H, W), bool)
        mask[r * 15 + 3 : r * 15 + 11, c * 10 + 2 : c * 10 + 8] = True
        objects.append(_obj(track, f"objet {i % 3}", mask, 0.5))
    return objects


def edge_frames() -> list[FrameResult]:
    frames = []
    for f in range(48):
        objects = []
        if f < 10 or 20 <= f < 30:  # track 1 leaves on frames 10-19 and comes back
            square = np.zeros((H, W), bool)
            square[40:56, 8 + f : 24 + f] = True
            objects.append(_obj(1, CAFE, square, 0.9))
        if f < 30:
            objects += [_obj(2, BIKE, ring_with_island()), _obj(3, EDGE, border_frame(), 0.7), _obj(4, PARTS, two_parts(), 0.6)]
        if f == 30:
            objects = grid()
        frames.append(FrameResult(f, objects))  # frames 31-47: labelled, but empty
    return frames


@pytest.fixture(scope="module")
def edges(small_video) -> Iterator[tuple[fo.Dataset, dict]]:
    frames = edge_frames()
    ds = labelled_dataset(small_video[0], frames, "edges")
    yield ds, as_objects(frames)
    ds.delete()


def _check_exact(expected: dict, got: dict[tuple[str, int], dict[int, dict]]) -> None:
    assert set(got) == {("small", f) for f in range(48)}
    for f in range(48):
        objects = got[("small", f)]
        assert set(objects) == set(expected[f])
        for track, (label, mask) in expected[f].items():
            assert objects[track]["label"] == label and np.array_equal(objects[track]["mask"], mask)
            assert xywh_close(objects[track]["bbox"], mask)


# ---------------------------------------------------------------------------------------
# What each format holds


def test_coco_rle_holds_every_edge_case_exactly(edges, tmp_path) -> None:
    ds, expected = edges
    export_tracks(ds, "edges", "coco", tmp_path / "c", frames="video")
    _, got = read_coco(tmp_path / "c" / "labels.json")
    _check_exact(expected, got)
    assert [1 in got[("small", f)] for f in (9, 10, 19, 20)] == [True, False, False, True]  # left, came back
    assert len(got[("small", 30)]) == 128 and all(got[("small", f)] == {} for f in range(31, 48))


def test_coco_polygons_keep_holes_and_parts(edges, tmp_path) -> None:
    ds, expected = edges
    report = export_tracks(ds, "edges", "coco", tmp_path / "p", frames="video", coco_masks="polygons")
    _, got = read_coco(tmp_path / "p" / "labels.json")
    _check_exact(expected, got)  # pycocotools reads the keyhole polygons back pixel for pixel
    ring = got[("small", 0)][2]
    assert not ring["mask"][60, 72] and ring["mask"][60, 80]  # hole empty, island present
    assert len(ring["segmentation"]) == 2  # two parts: the ring (hole cut in) and the island
    assert len(got[("small", 0)][4]["segmentation"]) == 2
    # ring + border frame have holes; ring+island and the two disks have several parts
    assert (report.masks_with_holes, report.masks_with_parts) == (60, 60)
    assert any("60 masks have holes" in n for n in report.notes) and not report.warnings


def test_yolo_keeps_holes_bridges_parts_and_says_so(edges, tmp_path) -> None:
    ds, expected = edges
    report = export_tracks(ds, "edges", "yolo-seg", tmp_path / "y")
    names, rows = read_yolo(tmp_path / "y")
    assert sorted(names.values()) == sorted({CAFE, BIKE, EDGE, PARTS} | {f"objet {i}" for i in range(3)})
    assert all(rows[f"small_{f:06d}"] == [] for f in range(31, 48))
    assert len(rows["small_000030"]) == 128
    by_label = {names[c]: yolo_mask(v, W, H) for c, v in rows["small_000005"]}
    assert len(rows["small_000005"]) == 4  # one row per object, parts and holes included
    ring = by_label[BIKE]
    assert not ring[60, 72] and ring[60, 80] and iou(ring, ring_with_island()) >= 0.95
    assert iou(by_label[EDGE], border_frame()) == 1.0 and not by_label[EDGE][60, 80]
    parts = by_label[PARTS]
    assert (parts & two_parts()).sum() == two_parts().sum()  # both parts there, and the bridge:
    assert iou(parts, two_parts()) < 0.95
    assert report.masks_with_parts == 60 and report.low_iou_polygons == 30  # the far-apart disks
    assert any("several separate parts" in n for n in report.notes)
    assert any("30 polygons read back with IoU < 0.95" in w and "track 4" in w for w in report.warnings)


def test_strict_export_refuses_lossy_polygons_and_leaves_nothing(edges, tmp_path) -> None:
    ds, _ = edges
    with pytest.raises(InvalidRequest, match="strict export: 3 polygons .*track 4"):
        export_tracks(ds, "edges", "yolo-seg", tmp_path / "strict", strict=True, frame_stride=10)
    assert list(tmp_path.iterdir()) == []


def test_mots_and_ytvis_hold_every_edge_case(edges, tmp_path) -> None:
    ds, expected = edges
    export_tracks(ds, "edges", "mots", tmp_path / "m")
    rows = read_mots(tmp_path / "m" / "small.txt")
    classes = (tmp_path / "m" / "labels.txt").read_text(encoding="utf-8").splitlines()
    for f in range(48):
        got = rows.get(f + 1, {})
        assert set(got) == set(expected[f])
        for track, (class_id, mask) in got.items():
            assert classes[class_id - 1] == expected[f][track][0] and np.array_equal(mask, expected[f][track][1])
    export_tracks(ds, "edges", "ytvis", tmp_path / "v", frames="video")
    data, got = read_ytvis(tmp_path / "v" / "instances.json")
    _check_exact(expected, got)
    cafe = next(a for a in data.dataset["annotations"] if a["track_id"] == 1)
    present = [s is not None for s in cafe["segmentations"]]
    assert present == [f < 10 or 20 <= f < 30 for f in range(48)]  # one masklet, a gap, same id
    assert len(data.dataset["annotations"]) == 4 + 128


def test_mots_resolves_overlaps_in_favour_of_the_more_confident(small_video, tmp_path) -> None:
    a, b = _disk(60, 60, 20), _disk(80, 60, 20)
    ds = labelled_dataset(small_video[0], [FrameResult(0, [_obj(1, "a", a, 0.4), _obj(2, "b", b, 0.9)])], "o")
    try:
        report = export_tracks(ds, "o", "mots", tmp_path / "m")
        rows = read_mots(tmp_path / "m" / "small.txt")  # refuses overlaps, like mots_tools
        assert np.array_equal(rows[1][2][1], b) and np.array_equal(rows[1][1][1], a & ~b)
        assert report.overlap_pixels_removed == (a & b).sum() > 0 and report.warnings
    finally:
        ds.delete()


@pytest.mark.parametrize("fmt", ["coco", "ytvis"])
def test_reimport_keeps_track_ids_labels_and_masks(edges, tmp_path, fmt: str) -> None:
    ds, expected = edges
    export_tracks(ds, "edges", fmt, tmp_path / fmt, frames="video")
    events: list[ExportProgress] = []
    report = import_tracks(ds, tmp_path / fmt, f"edges_{fmt}", progress=events.append)
    assert report.frames == 48 and report.tracks == 4 + 128
    assert [(e.frames_done, e.video_name) for e in events] == [(0, "small"), (48, "small")]  # the last names it too
    sample = ds.select_fields(f"frames.edges_{fmt}").first()
    for number, frame in sample.frames.items():
        dets = frame[f"edges_{fmt}"].detections
        assert {d.index for d in dets} == set(expected[number - 1])
        for d in dets:
            label, mask = expected[number - 1][d.index]
            x0, y0, x1, y1 = tight_box(mask)
            assert d.label == label and np.array_equal(d.mask, mask[y0:y1, x0:x1])



def test_clips_views_are_refused_by_export_and_import(edges, tmp_path) -> None:
    """A clips view's sample ids are clip ids: its export wrote 0 labels (and every image),
    its import wrote frame documents no sample reads, each while reporting success."""
    ds, _ = edges
    export_tracks(ds, "edges", "coco", tmp_path / "whole", frames="video")
    clips = ds.to_clips([[(3, 9), (20, 30)]])
    frames = ds.count("frames")
    for fmt in ("coco", "mot"):
        with pytest.raises(InvalidRequest, match="export runs on whole videos, not on a clips view"):
            export_tracks(clips, "edges", fmt, tmp_path / fmt)
        assert not (tmp_path / fmt).exists()
    with pytest.raises(InvalidRequest, match="import runs on whole videos, not on a clips view"):
        import_tracks(clips, tmp_path / "whole", "again")
    assert ds.count("frames") == frames and not ds.has_frame_field("again")


# ---------------------------------------------------------------------------------------
# Polygons on their own (no database)


def _blobs(seed: int) -> np.ndarray:
    """A random mask with many parts, holes, holes in holes and border contact."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((12, 16)) > 0.55
    return np.kron(coarse, np.ones((10, 10), bool)) ^ (rng.random((H, W)) > 0.97)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polygons_read_back_in_each_readers_convention(seed: int) -> None:
    mask = _blobs(seed)
    coco = poly.coco_polygons(mask)
    assert coco.parts > 5 and coco.holes > 5
    assert np.array_equal(poly.rasterize_coco(coco.polygons, H, W), mask) and coco.iou == 1.0
    count, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    for label in range(1, count):
        part = parts == label
        result = poly.yolo_polygon(part)
        drawn = poly.rasterize_cv2(result.polygons[0], H, W)
        assert result.iou == iou(drawn, part) >= 0.95, (label, result)
        assert (drawn & part).sum() == part.sum()  # nothing dropped; holes may lose a bridge line


def test_specks_deep_inside_a_large_object_stay_exact_and_cheap() -> None:
    """Hundreds of one-pixel holes far from the outline (noisy masks): COCO reads the exact
    mask back, and YOLO, whose rasteriser draws bridges, loses little, because holes are
    chained to their neighbours instead of each bridged out to the outline."""
    h, w = 300, 420  # not square, object off-centre: x and y cannot be swapped unseen
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - 230) / 170.0) ** 2 + ((yy - 140) / 120.0) ** 2 <= 1
    rng = np.random.default_rng(7)
    mask &= ~(rng.random((h, w)) < 0.01)
    mask[140, 20:65] = True  # a one-pixel-wide spur out of the outline
    mask[250:260, 5] = True  # a one-pixel-wide vertical part of its own
    coco = poly.coco_polygons(mask)
    assert coco.holes > 300 and coco.parts == 2
    assert np.array_equal(poly.rasterize_coco(coco.polygons, h, w), mask) and coco.iou == 1.0
    yolo = poly.yolo_polygon(mask)
    drawn = poly.rasterize_cv2(yolo.polygons[0], h, w)
    assert (drawn & mask).sum() == mask.sum() and yolo.iou >= 0.97, yolo.iou
    # Bridges are walked there and back: the ring is longer than its traced rings by twice
    # their length. Chained specks are ~10 px apart; bridging each to the outline was ~45.
    def length(ring: np.ndarray) -> float:
        return float(np.hypot(*np.diff(np.vstack([ring, ring[:1]]), axis=0).T).sum())

    traced = sum(length(s.outer) + sum(length(r) for r in s.holes) for s in poly.yolo_shapes(mask))
    assert (length(yolo.polygons[0]) - traced) / 2 / yolo.holes < 20
    boxed = poly.coco_polygons(mask, box=(0, 0, w, h))  # a loose box only narrows the search
    assert [p.tolist() for p in boxed.polygons] == [p.tolist() for p in coco.polygons]


@pytest.mark.parametrize("count", [60, 2000])  # the matrix product and the k-d tree
def test_nearest_base_vertex_within_each_points_reach(count: int) -> None:
    """bridge() starts a chain wherever the outline is nearer than the previous ring, so
    _nearest must be exact up to each point's own reach (ties included: vertices sit on a
    pixel grid, so many distances are equal, also to the search bound) and may say inf
    only beyond it."""
    rng = np.random.default_rng(count)
    side = int(np.sqrt(40 * count))  # a third of the points farther than 5 from any vertex
    base = rng.integers(0, side, size=(count // 2, 2)).astype(float)
    points = rng.integers(0, side, size=(count, 2)).astype(float)
    exact = np.sqrt(((points[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    within = np.minimum(exact, 5.0)  # most reaches end at 5: the tree's search bound is 5 too
    within[::7] = np.inf
    within[3::11] -= 0.5  # just short of the nearest vertex
    assert (exact == 5.0).sum() > count // 100  # points exactly at the bound, by (3, 4) and (5, 0) steps
    distance, at = poly._nearest(points, base, within=within)
    reach = exact <= within
    assert reach.sum() > count // 10 and (~reach).sum() > count // 10
    assert np.allclose(distance[reach], exact[reach])
    assert np.allclose(np.hypot(*(points[reach] - base[at[reach]]).T), exact[reach])
    assert np.isinf(distance[~reach]).all()


def test_polygon_tolerance_trades_vertices_for_accuracy() -> None:
    mask = _disk(80, 60, 40)
    exact, rough = poly.coco_polygons(mask), poly.coco_polygons(mask, tolerance=1.5)
    assert exact.iou == 1.0 and len(rough.polygons[0]) < len(exact.polygons[0]) / 2 and rough.iou >= 0.95


# ---------------------------------------------------------------------------------------
# Requests that cannot work, failures, progress, cancel


def test_output_folder_rules(edges, tmp_path) -> None:
    ds, _ = edges
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidRequest, match="not empty"):
        export_tracks(ds, "edges", "mot", busy)
    with pytest.raises(InvalidRequest, match="not written by an export"):
        export_tracks(ds, "edges", "mot", busy, overwrite=True)
    assert [p.name for p in busy.iterdir()] == ["mine.txt"]
    out = tmp_path / "again"
    export_tracks(ds, "edges", "mot", out)
    (out / "stale.txt").write_text("from before")
    export_tracks(ds, "edges", "mots", out, overwrite=True)
    assert json.loads((out / MANIFEST).read_text())["options"]["format"] == "mots" and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "busy"]  # no staging folders left


def test_requests_that_cannot_work_are_refused_before_writing(small_video, tmp_path) -> None:
    ds = labelled_dataset(small_video[0], [FrameResult(0, [_obj(1000, "big id", _disk(50, 50, 5))])], "big")
    try:
        sample = ds.first()
        sample.frames[2]["plain"] = fo.Detections(detections=[fo.Detection(label="box", bounding_box=[0.1, 0.1, 0.2, 0.2])])
        sample.save()
        cases = [
            (dict(label_field="big", fmt="mots"), "too large for MOTS"),
            (dict(label_field="plain", fmt="mot"), "1 of 1 detections in frames.plain have no index"),
            (dict(label_field="plain", fmt="coco"), "have no mask"),
            (dict(label_field="nope", fmt="coco"), r"frames.nope does not exist; frame fields holding Detections: \['big', 'plain'\]"),
            (dict(label_field="big", fmt="yolo-seg", frames="video"), "YOLO datasets are folders of images"),
            (dict(label_field="big", fmt="cocoa"), "format"),
            (dict(label_field="big", fmt="coco", frame_stride=0), "frame_stride"),
        ]
        for kwargs, message in cases:
            with pytest.raises(InvalidRequest, match=message):
                export_tracks(ds, output_dir=tmp_path / "out", **kwargs)
        export_tracks(ds, "plain", "yolo-detect", tmp_path / "boxes-ok")  # ...but YOLO boxes need no mask, no index
        assert (tmp_path / "boxes-ok" / "labels" / "train" / "small_000001.txt").read_text().startswith("0 0.2")
        with pytest.raises(InvalidRequest, match=r"no index \(track id\); ytvis .* have no mask"):
            export_tracks(ds, "plain", "ytvis", tmp_path / "out")
        assert not (tmp_path / "out").exists()
    finally:
        ds.delete()


def test_a_failure_mid_export_leaves_no_files(small_video, tmp_path) -> None:
    twice = [FrameResult(i, [_obj(7, "a", _disk(40, 40, 8))]) for i in range(5)]
    twice.append(FrameResult(5, [_obj(7, "a", _disk(40, 40, 8)), _obj(7, "a", _disk(90, 40, 8))]))
    ds = labelled_dataset(small_video[0], twice, "dup")
    try:
        with pytest.raises(InvalidRequest, match="frame number 6 has two objects with track id 7"):
            export_tracks(ds, "dup", "ytvis", tmp_path / "out")
        assert list(tmp_path.iterdir()) == []
    finally:
        ds.delete()


def test_a_failure_while_tracing_ahead_surfaces_and_leaves_no_files(edges, tmp_path, monkeypatch) -> None:
    """Polygons are traced on worker threads a few frames ahead of writing: an error there
    is the export's error (not a frame written without its polygons), and no file stays."""
    from sam_backend.fiftyone_io.export import yolo

    ds, _ = edges
    calls = itertools.count(1)  # next() is atomic: the workers call it at once
    real = yolo.yolo_polygon

    def fails_on_the_ninth(mask, tolerance=0.0, box=None):
        if next(calls) == 9:
            raise RuntimeError("tracer broke on mask 9")
        return real(mask, tolerance, box=box)

    monkeypatch.setattr(yolo, "yolo_polygon", fails_on_the_ninth)
    with pytest.raises(RuntimeError, match="tracer broke on mask 9"):
        export_tracks(ds, "edges", "yolo-seg", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_frames_traced_ahead_are_bounded_by_their_mask_bytes(edges, tmp_path, monkeypatch) -> None:
    """Frames go ahead of writing to be traced while their masks fit PREPARE_AHEAD_BYTES
    (4K frames with many objects hold ~130 MB each); with a bound below one frame's masks,
    one frame with masks goes ahead at most, and the export is the same."""
    from sam_backend.fiftyone_io.export import run as export_run
    from sam_backend.fiftyone_io.export.yolo import YoloWriter

    ds, _ = edges
    counts = {"read": 0, "written": 0, "lag": 0}  # frames with masks
    real_frames, real_write = export_run.iter_frames, YoloWriter.write_frame

    def reading(*args, **kwargs):
        for frame in real_frames(*args, **kwargs):
            counts["read"] += bool(frame.objects)
            counts["lag"] = max(counts["lag"], counts["read"] - counts["written"])
            yield frame

    def writing(self, video, frame, *args):
        counts["written"] += bool(frame.objects)
        return real_write(self, video, frame, *args)

    monkeypatch.setattr(export_run, "iter_frames", reading)
    monkeypatch.setattr(YoloWriter, "write_frame", writing)
    export_tracks(ds, "edges", "yolo-seg", tmp_path / "ahead")
    assert counts["lag"] > 2  # small frames: up to PREPARE_AHEAD go ahead
    counts.update(read=0, written=0, lag=0)
    monkeypatch.setattr(export_run, "PREPARE_AHEAD_BYTES", 1)
    export_tracks(ds, "edges", "yolo-seg", tmp_path / "bounded")
    assert counts["lag"] == 2  # the one being written, and one ahead
    labels = sorted((tmp_path / "ahead" / "labels").rglob("*.txt"))
    assert labels and all(a.read_text() == (tmp_path / "bounded" / a.relative_to(tmp_path / "ahead")).read_text()
                          for a in labels)


def test_progress_and_cancel(edges, tmp_path) -> None:
    ds, _ = edges
    events: list[ExportProgress] = []
    export_tracks(ds, "edges", "coco", tmp_path / "ok", frame_stride=2, frames="video", progress=events.append)
    done = [e.frames_done for e in events]
    assert done == sorted(done) and done[-1] == events[-1].frames_total == 24 and events[-1].fraction == 1.0
    cancel = CancelToken()

    def stop_after_ten(event: ExportProgress) -> None:
        if event.frames_done == 10:
            cancel.cancel()

    with pytest.raises(Cancelled):
        export_tracks(ds, "edges", "coco", tmp_path / "cancelled", frames="video", progress=stop_after_ten, cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


def test_cli_export_and_import(edges, tmp_path, capsys) -> None:
    ds, _ = edges
    out = tmp_path / "cli"
    assert cli_main(["export", ds.name, "--field", "edges", "--format", "ytvis", "--out", str(out), "--stride", "10"]) == 0
    assert "ytvis: 1 videos, 5 frames" in capsys.readouterr().out
    assert len(json.loads((out / "instances.json").read_text())["videos"][0]["file_names"]) == 5
    assert cli_main(["import", ds.name, str(out), "--field", "cli_back"]) == 0
    assert "ytvis: 1 videos, 5 frames" in capsys.readouterr().out
    assert ds.distinct("frames.cli_back.detections.index") == [1, 2, 3, 4, *GRID_TRACKS]
    assert cli_main(["export", ds.name, "--field", "edges", "--format", "mot", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    labels = out / "instances.json"  # a second video in the file, which no sample matches: exit 1
    data = json.loads(labels.read_text())
    data["videos"].append({**data["videos"][0], "id": 99, "name": "elsewhere", "filepath": "/nowhere/elsewhere.mp4"})
    labels.write_text(json.dumps(data))
    assert cli_main(["import", ds.name, str(out), "--field", "cli_back"]) == 1
    assert "no sample for: elsewhere" in capsys.readouterr().out


def test_a_video_without_labels_is_skipped_and_said_so(edges, small_video, tmp_path) -> None:
    ds, _ = edges
    bare = ds.add_sample(fo.Sample(filepath=str(small_video[0])))
    try:
        report = export_tracks(ds, "edges", "mot", tmp_path / "one")
        assert report.skipped[bare].endswith(": no frame has frames.edges")
        report = export_tracks(ds, "edges", "mot", tmp_path / "ten", frame_stride=10)
        assert report.skipped[bare].endswith(": no frame on the stride of 10 has frames.edges")
    finally:
        ds.delete_samples(bare)
