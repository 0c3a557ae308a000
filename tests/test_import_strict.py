"""Importing COCO / YouTube-VIS files we did not write: every RLE is checked strictly
(counts sum to exactly H*W, size equals the video's frame size, well formed) and the
import is all or nothing across videos, with errors naming file, video, frame and
annotation. Real files, real MongoDB, the real importer."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sam_backend import coco_rle, masks as mask_ops, video
from sam_backend.errors import Cancelled, InvalidRequest
from sam_backend.fiftyone_io.export import export_tracks, import_tracks
from sam_backend.fiftyone_io.writer import FrameLabelWriter
from sam_backend.types import FrameResult, TrackedObject
from child_process import kill_when
from test_writer import truth_frames

H, W = 120, 160  # small_video's frame size (not square: a swapped size is caught)

# ---------------------------------------------------------------------------------------
# The strict checker on its own


def _random_masks(seed: int, n: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [np.zeros((H, W), bool), np.ones((H, W), bool)]
    for _ in range(n):
        out.append(rng.random((H, W)) < rng.uniform(0.01, 0.9))
    return out


def test_compressed_counts_match_pycocotools_run_lengths() -> None:
    for mask in _random_masks(7):
        rle = mask_ops.encode_rle(mask)
        runs = coco_rle.compressed_counts(rle["counts"])
        assert sum(runs) == H * W
        # pycocotools' own uncompressed form of the same mask, run for run
        assert np.array_equal(coco_rle.decode({"size": [H, W], "counts": runs}, H, W), mask)
        assert np.array_equal(coco_rle.decode(rle, H, W), mask)


def _short_by(rle_counts: list[int], pixels: int) -> list[int]:
    counts = list(rle_counts)
    counts[-1] -= pixels
    return counts


@pytest.mark.parametrize("case, match", [
    ({"size": [H, W], "counts": [5, 10, H * W - 35]}, "sum to 19180 pixels but a 160x120 frame has 19200"),
    ({"size": [H, W], "counts": [5, 10, H * W - 5]}, "sum to 19210"),
    ({"size": [1, 1], "counts": [0, 1]}, "size is 1x1 .* but the frame is 160x120"),
    ({"size": [W, H], "counts": [H * W]}, "size is 120x160 .* but the frame is 160x120"),
    ({"size": [H, W], "counts": [H * W, -3, 3]}, "not a non-negative integer"),
    ({"size": [H, W], "counts": [True, H * W - 1]}, "not a non-negative integer"),
    ({"size": [H, W], "counts": "zz~~"}, "not a compressed RLE character"),
    ({"size": [H, W], "counts": "0"}, "sum to 0"),
    ({"size": [H, W], "counts": "Q"}, "end in the middle of a run"),  # 'Q' has the "more" bit set
    ({"size": [H], "counts": [H * W]}, "not \\[height, width\\]"),
    ({"size": [H, W]}, "an object with 'size' and 'counts'"),
    ({"size": [H, W], "counts": 42}, "compressed string or a list"),
])
def test_checker_refuses_every_malformed_rle(case, match) -> None:
    with pytest.raises(coco_rle.CocoRleError, match=match):
        coco_rle.check(case, H, W)


def test_checker_refuses_a_compressed_string_one_pixel_short() -> None:
    mask = _random_masks(3, 1)[-1]
    good = mask_ops.encode_rle(mask)
    runs = coco_rle.compressed_counts(good["counts"])
    short = mask_utils.frPyObjects({"size": [H, W], "counts": _short_by(runs, 1)}, H, W)
    with pytest.raises(coco_rle.CocoRleError, match="sum to 19199"):
        coco_rle.check({"size": [H, W], "counts": short["counts"].decode()}, H, W)


# ---------------------------------------------------------------------------------------
# The importer, end to end


@pytest.fixture(scope="module")
def four_videos(small_video, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("four")
    paths = []
    for name in ("v1", "v2", "v3", "v4"):
        paths.append(folder / f"{name}.mp4")
        shutil.copyfile(small_video[0], paths[-1])
    return paths


@pytest.fixture
def exported(four_videos, small_video, tmp_path):
    """Four labelled videos, a field 'keep' already holding labels on all four, and their
    COCO export (frames referred to by video, no images)."""
    frames = truth_frames(small_video[1])
    info = video.probe(four_videos[0])
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in four_videos])
    for sample_id in ds.values("id"):
        FrameLabelWriter(ds, "sam").write_sample(sample_id, iter(frames), info)
        FrameLabelWriter(ds, "back").write_sample(sample_id, iter(frames[:5]), info)  # what a failed import must keep
    export_tracks(ds, "sam", "coco", tmp_path / "coco", frames="video")
    yield ds, tmp_path / "coco" / "labels.json"
    ds.delete()


def _frame_docs(ds: fo.Dataset) -> list[dict]:
    docs = list(ds._frame_collection.find({}, {"last_modified_at": 0}).sort([("_sample_id", 1), ("frame_number", 1)]))
    return docs


def _bad_annotation(labels: Path, video_name: str, frame_id: int, edit) -> int:
    """Apply ``edit`` to the first annotation of ``video_name`` on ``frame_id``; its id."""
    data = json.loads(labels.read_text())
    vid = next(v["id"] for v in data["videos"] if v["name"] == video_name)
    image = next(i for i in data["images"] if i["video_id"] == vid and i["frame_id"] == frame_id)
    ann = next(a for a in data["annotations"] if a["image_id"] == image["id"])
    edit(ann)
    labels.write_text(json.dumps(data))
    return ann["id"], image["id"]


def _uncompressed_short(ann: dict) -> None:
    runs = coco_rle.compressed_counts(ann["segmentation"]["counts"])
    ann["segmentation"]["counts"] = _short_by(runs, 20)  # 19,180 of 19,200 pixels: the reported case


def test_a_short_rle_in_the_fourth_video_writes_nothing_to_any_video(exported) -> None:
    ds, labels = exported
    ann_id, image_id = _bad_annotation(labels, "v4", 17, _uncompressed_short)
    before = _frame_docs(ds)
    with pytest.raises(InvalidRequest) as info:
        import_tracks(ds, labels, "back")
    message = str(info.value)
    assert str(labels) in message and "video 'v4'" in message and "frame index 17 (FiftyOne frame 18)" in message
    assert f"image {image_id}, annotation {ann_id}" in message and "sum to 19180 pixels" in message
    assert _frame_docs(ds) == before  # videos 1-3 untouched, 'back' and 'sam' as they were
    with pytest.raises(InvalidRequest):
        import_tracks(ds, labels, "fresh")
    assert not ds.has_frame_field("fresh")  # no half-written new field either


def test_an_rle_of_another_size_is_refused_not_stretched(exported) -> None:
    ds, labels = exported
    tiny = mask_ops.encode_rle(np.ones((1, 1), bool))
    ann_id, _ = _bad_annotation(labels, "v3", 40, lambda a: a.update(segmentation=tiny))
    with pytest.raises(InvalidRequest, match=rf"video 'v3', frame index 40 .*annotation {ann_id}: RLE mask: size is 1x1"):
        import_tracks(ds, labels, "fresh")
    assert not ds.has_frame_field("fresh")


@pytest.mark.parametrize("edit, match", [
    (lambda a: a["segmentation"].update(counts=a["segmentation"]["counts"] + "~~"), "not a compressed RLE character"),
    (lambda a: a.update(track_id=-1), "track id -1 is not in 0..2147483647"),
    (lambda a: a.update(track_id=2**70), "track id 1180591620717411303424"),
    (lambda a: a.update(bbox=[1, 2, 3]), "bbox \\[1, 2, 3\\] is not"),
    (lambda a: a.update(segmentation=[[1, 2, 3, 4]]), "polygon 0 is not a flat list"),
    (lambda a: a.update(score="high"), "score 'high' is not a finite number"),
])
def test_malformed_annotations_are_refused_with_where_they_are(exported, edit, match) -> None:
    ds, labels = exported
    ann_id, image_id = _bad_annotation(labels, "v2", 3, edit)
    before = _frame_docs(ds)
    with pytest.raises(InvalidRequest, match=rf"video 'v2', frame index 3 .*image {image_id}, annotation {ann_id}: .*{match}"):
        import_tracks(ds, labels, "back")
    assert _frame_docs(ds) == before


def test_a_file_missing_required_keys_is_a_clear_error(exported) -> None:
    ds, labels = exported
    data = json.loads(labels.read_text())
    del data["annotations"][5]["category_id"]
    labels.write_text(json.dumps(data))
    with pytest.raises(InvalidRequest, match=r"labels.json is not a valid coco file: KeyError 'category_id'"):
        import_tracks(ds, labels, "fresh")


def test_ytvis_short_rle_names_video_frame_and_annotation(exported, tmp_path) -> None:
    ds, _ = exported
    export_tracks(ds, "sam", "ytvis", tmp_path / "yt", frames="video")
    labels = tmp_path / "yt" / "instances.json"
    data = json.loads(labels.read_text())
    vid = next(v["id"] for v in data["videos"] if v["name"] == "v4")
    ann = next(a for a in data["annotations"] if a["video_id"] == vid)
    position = next(i for i, s in enumerate(ann["segmentations"]) if s)
    seg = ann["segmentations"][position]
    seg["counts"] = _short_by(coco_rle.compressed_counts(seg["counts"]), 20)
    labels.write_text(json.dumps(data))
    before = _frame_docs(ds)
    with pytest.raises(InvalidRequest, match=rf"video 'v4', frame index {position} .*annotation {ann['id']} "
                                             rf"\(segmentations\[{position}\]\): RLE mask: counts sum to 19180"):
        import_tracks(ds, labels, "back")
    assert _frame_docs(ds) == before


def test_a_good_file_still_imports_every_video(exported) -> None:
    ds, labels = exported
    report = import_tracks(ds, labels, "fresh")
    assert report.videos == 4 and report.frames == 4 * 48
    for sample in ds.select_fields(["frames.sam", "frames.fresh"]):
        for number, frame in sample.frames.items():
            a = {d.index: d.mask for d in frame.sam.detections}
            b = {d.index: d.mask for d in frame.fresh.detections}
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _cancel_at_video(n: int):
    def progress(p) -> None:
        if p.video_index == n:
            raise Cancelled("import cancelled")
    return progress


@pytest.mark.parametrize("field", ["back", "fresh"])
def test_an_import_stopped_after_some_videos_puts_the_field_back_everywhere(exported, field) -> None:
    """Not a bad file: the import stops (here the user cancels through the progress
    callback) after videos 1 and 2 were written. Both get their old values back, frame
    modification times included; a field that did not exist does not exist afterwards."""
    ds, labels = exported
    before = list(ds._frame_collection.find({}).sort([("_sample_id", 1), ("frame_number", 1)]))
    with pytest.raises(Cancelled):
        import_tracks(ds, labels, field, progress=_cancel_at_video(2))
    after = list(ds._frame_collection.find({}).sort([("_sample_id", 1), ("frame_number", 1)]))
    changed = [(b["frame_number"], k, b.get(k), a.get(k)) for b, a in zip(before, after) for k in set(b) | set(a)
               if b.get(k) != a.get(k)]
    assert len(after) == len(before) and not changed, changed[:3]
    assert ds.has_frame_field(field) == (field == "back")
    assert not [c for c in ds._frame_collection.database.list_collection_names() if c.startswith("sam31_field_backup_")]
    report = import_tracks(ds, labels, field)  # and it still imports afterwards
    assert report.videos == 4


def test_frames_an_import_created_are_removed_when_it_stops(four_videos, small_video, tmp_path) -> None:
    """Videos with no frame documents yet: the import creates them; stopped in the third
    video, the first two have none again."""
    frames = truth_frames(small_video[1])
    info = video.probe(four_videos[0])
    src = fo.Dataset()
    src.add_samples([fo.Sample(filepath=str(p)) for p in four_videos])
    for sample_id in src.values("id"):
        FrameLabelWriter(src, "sam").write_sample(sample_id, iter(frames), info)
    export_tracks(src, "sam", "coco", tmp_path / "coco", frames="video")
    src.delete()
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in four_videos])
    try:
        with pytest.raises(Cancelled):
            import_tracks(ds, tmp_path / "coco", "sam", progress=_cancel_at_video(2))
        assert ds._frame_collection.count_documents({}) == 0 and not ds.has_frame_field("sam")
        assert ds.count("frames") == 0
    finally:
        ds.delete()


def test_a_rotated_video_imports_its_own_export_and_refuses_the_container_size(small_video, tmp_path) -> None:
    """A phone video stored 160x120 with a 90° rotation flag is shown 120x160 (FiftyOne's
    metadata still says 160x120). Its own export imports back exactly; an RLE of the
    container's size is refused naming the displayed size."""
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(small_video[0]), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(rotated)], check=True)
    info = video.probe(rotated)
    assert (info.width, info.height) == (120, 160)
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(rotated)))
    try:
        ds.compute_metadata()
        assert (ds.first().metadata.frame_width, ds.first().metadata.frame_height) == (160, 120)  # the container's
        tall = np.zeros((160, 120), bool)
        tall[100:150, 10:30] = True  # in the part only the rotated frame has
        FrameLabelWriter(ds, "sam").write_sample(ds.first().id, iter([
            FrameResult(2, [TrackedObject(5, "tall", 0.7, tall, mask_ops.tight_box(tall))])]), info)
        export_tracks(ds, "sam", "coco", tmp_path / "coco", frames="video")
        report = import_tracks(ds, tmp_path / "coco", "back")
        assert report.videos == 1
        [det] = ds.first().frames[3].back.detections
        assert det.index == 5 and det.bounding_box == pytest.approx([10 / 120, 100 / 160, 20 / 120, 50 / 160])
        labels = tmp_path / "coco" / "labels.json"
        wide = mask_ops.encode_rle(np.zeros((120, 160), bool))
        _bad_annotation(labels, "rotated", 2, lambda a: a.update(segmentation=wide))
        with pytest.raises(InvalidRequest, match=r"size is 160x120 \(width x height\) but the frame is 120x160"):
            import_tracks(ds, labels, "again")
    finally:
        ds.delete()


KILLED_IMPORT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import fiftyone as fo
    from sam_backend.fiftyone_io.export import import_tracks

    name, labels, marker = sys.argv[1:4]

    def progress(event):
        if event.video_index == 2:  # videos 1 and 2 are written: wait to be killed
            Path(marker).touch()
            time.sleep(60)

    import_tracks(fo.load_dataset(name), labels, "back", progress=progress)
""")


def test_an_import_killed_midway_is_rolled_back_by_the_next_one(exported, tmp_path) -> None:
    """SIGKILL after two of four videos were imported: those two hold the new labels and
    the copy of the old ones is left behind. The next import (into any field) first puts
    the killed one's field back as it was, then does its own work."""
    ds, labels = exported
    ds.persistent = True
    before = _frame_docs(ds)
    marker = tmp_path / "killed-here"
    kill_when(KILLED_IMPORT, ds.name, str(labels), str(marker), ready=marker.exists)
    assert _frame_docs(ds) != before  # the premise: the kill left two videos half-imported
    report = import_tracks(ds, labels, "other")
    assert any("killed midway" in n and f"{ds.name}/back" in n for n in report.notes)
    assert [{k: v for k, v in d.items() if k != "other"} for d in _frame_docs(ds)] == before
    assert not [c for c in ds._frame_collection.database.list_collection_names() if c.startswith("sam31_field_backup_")]


# ---------------------------------------------------------------------------------------
# Files other tools wrote (from a new-user review)


def _edit(labels: Path, change) -> dict:
    data = json.loads(labels.read_text())
    change(data)
    labels.write_text(json.dumps(data))
    return data


def _dets(ds: fo.Dataset, field: str, sample: int = 0) -> dict[int, list[fo.Detection]]:
    s = ds.select_fields(f"frames.{field}").skip(sample).first()
    return {n: f[field].detections for n, f in s.frames.items() if f[field] is not None}


def test_the_mask_gives_the_box_not_the_files_bbox(exported) -> None:
    """A polygon rasterised to 30x30 pixels from (11, 11), with the bbox a tool rounded to
    (10.5, 10.5, 30, 30): the box was the bbox rounded and the mask cropped to it (841 of
    900 pixels kept)."""
    ds, labels = exported
    square = [[10.5, 10.5, 40.5, 10.5, 40.5, 40.5, 10.5, 40.5]]
    ann_id, _ = _bad_annotation(labels, "v1", 6, lambda a: a.update(segmentation=square, bbox=[10.5, 10.5, 30, 30]))
    track = next(a["track_id"] for a in json.loads(labels.read_text())["annotations"] if a["id"] == ann_id)
    import_tracks(ds.limit(1), labels, "fresh")
    [det] = [d for d in _dets(ds, "fresh")[7] if d.index == track]
    assert det.mask.shape == (30, 30) and det.mask.all()
    assert np.allclose(det.bounding_box, [11 / W, 11 / H, 30 / W, 30 / H])


def test_a_box_only_annotation_imports_as_a_detection_without_a_mask(exported, tmp_path) -> None:
    """COCO annotations may carry a bbox and no segmentation (detectors, box tools): the
    Detection gets that box and no mask, so mask formats say so instead of writing an
    empty mask, and box formats export it."""
    ds, labels = exported
    ann_id, _ = _bad_annotation(labels, "v2", 9, lambda a: a.update(segmentation=None, bbox=[21, 13, 40, 25]))
    track = next(a["track_id"] for a in json.loads(labels.read_text())["annotations"] if a["id"] == ann_id)
    import_tracks(ds.skip(1).limit(1), labels, "fresh")
    [det] = [d for d in _dets(ds, "fresh", 1)[10] if d.index == track]
    assert det.mask is None and det.mask_path is None
    assert np.allclose(det.bounding_box, [21 / W, 13 / H, 40 / W, 25 / H])
    others = [d for dets in _dets(ds, "fresh", 1).values() for d in dets if d.id != det.id]
    assert others and all(d.mask is not None and d.mask.any() for d in others)
    with pytest.raises(InvalidRequest, match=r"1 of \d+ detections in frames.fresh have no mask"):
        export_tracks(ds.skip(1).limit(1), "fresh", "coco", tmp_path / "masks")
    export_tracks(ds.skip(1).limit(1), "fresh", "mot", tmp_path / "boxes")


@pytest.mark.parametrize("change, match", [
    (lambda d: d["annotations"][5].update(category_id=99), r"image \d+, annotation \d+: category_id 99 is not in "
                                                           r"'categories' \(its ids: 1, 2, 3"),
    (lambda d: d["images"][3].update(frame_id=-1), r"image \d+ .* has frame_id -1; frames count from 0"),
    (lambda d: d["annotations"][5].update(segmentation=None, bbox=[400, 10, 20, 20]),
     r"bbox \[400, 10, 20, 20\] holds no pixel of the 160x120 frame"),
    (lambda d: d["annotations"][5].update(segmentation=[], bbox=None), "it has neither a segmentation nor a bbox"),
    (lambda d: d["annotations"][1].update(track_id=d["annotations"][0]["track_id"],
                                          image_id=d["annotations"][0]["image_id"]),
     r"track id \d+ is on this frame twice"),
])
def test_what_no_reader_could_write_is_refused_naming_it(exported, change, match) -> None:
    ds, labels = exported
    _edit(labels, change)
    before = _frame_docs(ds)
    with pytest.raises(InvalidRequest, match=match):
        import_tracks(ds, labels, "back")
    assert _frame_docs(ds) == before


@pytest.mark.parametrize("key, size", [("segmentations", +1), ("scores", -1)])
def test_ytvis_lists_of_another_length_are_named(exported, tmp_path, key: str, size: int) -> None:
    ds, _ = exported
    export_tracks(ds, "sam", "ytvis", tmp_path / "yt", frames="video")
    labels = tmp_path / "yt" / "instances.json"

    def change(d: dict) -> None:
        ann = d["annotations"][2]
        ann[key] = ann[key] + [None] if size > 0 else ann[key][:-1]

    data = _edit(labels, change)
    frames = len(data["videos"][0]["file_names"])
    with pytest.raises(InvalidRequest, match=rf"instances.json: annotation {data['annotations'][2]['id']}: "
                                             rf"{frames + size} {key} for the {frames} frames"):
        import_tracks(ds, labels, "fresh")


def test_samples_sharing_a_file_get_their_own_labels_back(small_video, tmp_path) -> None:
    frames = truth_frames(small_video[1])
    info = video.probe(small_video[0])
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=str(small_video[0])) for _ in range(2)])
        first, second = ds.values("id")
        FrameLabelWriter(ds, "sam").write_sample(first, iter(frames[:10]), info)
        FrameLabelWriter(ds, "sam").write_sample(second, iter(frames[20:24]), info)
        export_tracks(ds, "sam", "coco", tmp_path / "c", frames="video")
        report = import_tracks(ds, tmp_path / "c", "back")
        assert report.unmatched == [] and any("matched to those samples in order" in n for n in report.notes)
        for index in (0, 1):
            assert sorted(_dets(ds, "back", index)) == sorted(_dets(ds, "sam", index)) == (
                list(range(1, 11)) if index == 0 else list(range(21, 25)))
    finally:
        ds.delete()


def test_fiftyone_frame_images_import_on_their_own_frame_numbers(small_video, tmp_path) -> None:
    """FiftyOne's frames view names frame n '<video>/00000n.jpg' (from 1) and its COCO
    export has no frame_id: those labels landed one frame late. Flat names ('000007.jpg',
    no video folder) go to the one video of the view."""
    frames = truth_frames(small_video[1])
    ds = fo.Dataset()
    try:
        ds.add_sample(fo.Sample(filepath=str(small_video[0])))
        FrameLabelWriter(ds, "sam").write_sample(ds.first().id, iter(frames), video.probe(small_video[0]))
        view = ds.to_frames(sample_frames=True, output_dir=str(tmp_path / "img")).match(
            fo.ViewField("frame_number").is_in([1, 7, 30]))
        view.export(export_dir=str(tmp_path / "fo"), dataset_type=fo.types.COCODetectionDataset, label_field="sam",
                    export_media=False, rel_dir=str(tmp_path / "img"))
        report = import_tracks(ds, tmp_path / "fo" / "labels.json", "back")
        assert any("read as FiftyOne frame numbers" in n for n in report.notes)
        assert sorted(_dets(ds, "back")) == [1, 7, 30]
        for number, dets in _dets(ds, "back").items():
            assert sorted(d.label for d in dets) == sorted(d.label for d in _dets(ds, "sam")[number])
        flat = _edit(tmp_path / "fo" / "labels.json",
                     lambda d: [i.update(file_name=Path(i["file_name"]).name) for i in d["images"]])
        assert all("/" not in i["file_name"] for i in flat["images"])
        import_tracks(ds, tmp_path / "fo" / "labels.json", "flat")
        assert sorted(_dets(ds, "flat")) == [1, 7, 30]
    finally:
        ds.delete()
