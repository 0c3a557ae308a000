"""Round trips on a synthetic video: export the exact ground-truth tracks, read the files
with each format's own reader (pycocotools for COCO and YouTube-VIS; MOT, MOTS and YOLO
parsed here per their published formats), and get the same masks, boxes and track ids on
the same frames back. Import COCO and YouTube-VIS back into FiftyOne the same way.

The readers below are deliberately independent of the exporter's code: they only know
the formats.
"""

from __future__ import annotations

import configparser
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import fiftyone as fo
import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sam_backend import masks as mask_ops
from sam_backend import video
from sam_backend.errors import InvalidRequest
from sam_backend.fiftyone_io.export import export_tracks, import_tracks
from sam_backend.fiftyone_io.writer import FrameLabelWriter
from sam_backend.types import FrameResult
from test_writer import truth_frames  # noqa: F401  (shared with test_export_edges / test_export_operator)

# ---------------------------------------------------------------------------------------
# Shared helpers (also used by test_export_edges.py and test_export_operator.py)

Objects = dict[int, tuple[str, np.ndarray]]  # track id -> (label, full-frame mask)


def as_objects(frames: list[FrameResult]) -> dict[int, Objects]:
    return {f.frame_index: {o.track_id: (o.label, o.mask) for o in f.objects} for f in frames}


def labelled_dataset(path: Path, frames: list[FrameResult], field: str = "sam") -> fo.Dataset:
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath=str(path)))
    FrameLabelWriter(ds, field).write_sample(ds.first().id, iter(frames), video.probe(path))
    return ds


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    box = mask_ops.tight_box(mask)
    assert box is not None
    return box


def xywh_close(xywh: list[float], mask: np.ndarray, tol: float = 1.0) -> bool:
    """A box [x, y, w, h] within ``tol`` pixels of the mask's tight box on every side."""
    x0, y0, x1, y1 = box_of(mask)
    x, y, w, h = xywh
    return max(abs(x - x0), abs(y - y0), abs(x + w - x1), abs(y + h - y1)) <= tol


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def read_coco(labels: Path) -> tuple[COCO, dict[tuple[str, int], dict[int, dict]]]:
    """pycocotools' reader; annotations keyed by (video name, frame_id) then track id."""
    coco = COCO(str(labels))
    videos = {v["id"]: v["name"] for v in coco.dataset["videos"]}
    out: dict[tuple[str, int], dict[int, dict]] = {}
    for image in coco.dataset["images"]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        key = (videos[image["video_id"]], image["frame_id"])
        assert key not in out
        out[key] = {}
        for ann in anns:
            assert ann["track_id"] not in out[key]
            out[key][ann["track_id"]] = ann | {"mask": coco.annToMask(ann).astype(bool),
                                               "label": coco.cats[ann["category_id"]]["name"]}
    return coco, out


class YTVIS(COCO):
    """YouTube-VIS through pycocotools' COCO, the way video evaluators (SAM 3's among
    them) load it: videos become images, an annotation's video_id its image_id."""

    def createIndex(self) -> None:  # noqa: N802 (pycocotools' name)
        if "videos" in self.dataset:
            self.dataset["images"] = self.dataset.pop("videos")
            for ann in self.dataset["annotations"]:
                ann["image_id"] = ann["video_id"]
                ann["area"] = float(np.mean([a for a in ann["areas"] if a is not None] or [0]))
        super().createIndex()


def read_ytvis(labels: Path) -> tuple[YTVIS, dict[tuple[str, int], dict[int, dict]]]:
    """Per (video name, frame index from its file name): track id -> decoded masklet entry."""
    data = YTVIS(str(labels))
    out: dict[tuple[str, int], dict[int, dict]] = {}
    for vid in data.dataset["images"]:
        assert vid["length"] == len(vid["file_names"])
        frame_ids = [int(Path(n).stem) for n in vid["file_names"]]
        for f in frame_ids:
            out[(vid["name"], f)] = {}
        for ann in data.loadAnns(data.getAnnIds(imgIds=[vid["id"]])):
            assert len(ann["segmentations"]) == len(ann["bboxes"]) == len(ann["areas"]) == vid["length"]
            for f, seg, bbox, area in zip(frame_ids, ann["segmentations"], ann["bboxes"], ann["areas"]):
                if seg is None:
                    assert bbox is None and area is None
                    continue
                mask = mask_utils.decode(seg).astype(bool)
                assert area == mask.sum()
                assert ann["track_id"] not in out[(vid["name"], f)]
                out[(vid["name"], f)][ann["track_id"]] = {"mask": mask, "bbox": bbox, "label": data.cats[ann["category_id"]]["name"]}
    return data, out


def read_mot(path: Path) -> dict[int, dict[int, tuple[float, ...]]]:
    """MOT Challenge: frame,id,bb_left,bb_top,bb_width,bb_height,conf,x,y,z (frame from 1)."""
    out: dict[int, dict[int, tuple[float, ...]]] = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        assert len(fields) == 10, line
        frame, track = int(fields[0]), int(fields[1])
        left, top, width, height, conf = (float(v) for v in fields[2:7])
        assert frame >= 1 and width > 0 and height > 0
        assert [float(v) for v in fields[7:]] == [-1, -1, -1]
        assert track not in out.setdefault(frame, {})
        out[frame][track] = (left, top, width, height, conf)
    return out


def read_mots(path: Path) -> dict[int, dict[int, tuple[int, np.ndarray]]]:
    """MOTS: time_frame id class_id img_height img_width rle, id = class_id * 1000 +
    instance; like mots_tools, refuse duplicate ids and overlapping masks in a frame."""
    out: dict[int, dict[int, tuple[int, np.ndarray]]] = {}
    union: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        fields = line.split(" ")
        assert len(fields) == 6, line
        frame, obj_id, class_id, h, w = (int(v) for v in fields[:5])
        rle = {"size": [h, w], "counts": fields[5].encode()}
        assert obj_id // 1000 == class_id
        track = obj_id % 1000
        assert track not in out.setdefault(frame, {})
        if frame in union:
            assert mask_utils.area(mask_utils.merge([union[frame], rle], intersect=True)) == 0, "overlap"
            union[frame] = mask_utils.merge([union[frame], rle], intersect=False)
        else:
            union[frame] = rle
        out[frame][track] = (class_id, mask_utils.decode(rle).astype(bool))
    return out


def read_yolo(root: Path) -> tuple[dict[int, str], dict[str, list[tuple[int, np.ndarray]]]]:
    """YOLO: data.yaml (train/val relative to path; names), images/<split>/x.jpg with
    labels/<split>/x.txt, rows 'class x y ...' normalised to [0, 1]. Returns names and,
    per image stem, (class, normalised values) rows."""
    data = yaml.safe_load((root / "data.yaml").read_text(encoding="utf-8"))
    assert {"path", "train", "val", "names"} <= set(data)
    base = Path(data["path"])
    assert base == root
    names = data["names"]
    rows: dict[str, list[tuple[int, np.ndarray]]] = {}
    images = sorted((base / data["train"]).glob("*.jpg"))
    assert images and (base / data["val"]).is_dir()
    for image in images:
        label = Path(str(image).replace("/images/", "/labels/")).with_suffix(".txt")
        assert label.is_file(), label
        rows[image.stem] = []
        for line in label.read_text().splitlines():
            values = line.split()
            cls, coords = int(values[0]), np.array([float(v) for v in values[1:]])
            assert cls in names and ((coords >= 0) & (coords <= 1)).all()
            rows[image.stem].append((cls, coords))
    return names, rows


def yolo_mask(coords: np.ndarray, width: int, height: int) -> np.ndarray:
    """A YOLO segment drawn as Ultralytics draws it: pixels, int32, cv2.fillPoly."""
    assert len(coords) % 2 == 0 and len(coords) >= 6
    points = (coords.reshape(-1, 2) * [width, height]).astype(np.int32)
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [points], 1)
    return canvas.astype(bool)


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def scene(small_video) -> Iterator[tuple[fo.Dataset, dict[int, Objects], Path]]:
    """The 48-frame scene with its ground truth as frames.sam (3 tracks entering/leaving)."""
    path, truth = small_video
    frames = truth_frames(truth)
    ds = labelled_dataset(path, frames)
    yield ds, as_objects(frames), path
    ds.delete()


def _same_objects(expected: Objects, got: dict[int, dict], *, exact: bool = True, min_iou: float = 1.0,
                  bbox_key: str = "bbox") -> None:
    assert set(got) == set(expected)
    for track, (label, mask) in expected.items():
        entry = got[track]
        assert entry["label"] == label
        if exact:
            assert np.array_equal(entry["mask"], mask)
        else:
            assert iou(entry["mask"], mask) >= min_iou
        assert xywh_close(entry[bbox_key], mask)


# ---------------------------------------------------------------------------------------
# COCO


def test_coco_rle_with_images_round_trips_exactly(scene, tmp_path) -> None:
    ds, truth, path = scene
    out = tmp_path / "coco"
    report = export_tracks(ds, "sam", "coco", out)
    assert (report.frames, report.videos, report.tracks) == (48, 1, 3)
    coco, got = read_coco(out / "labels.json")
    assert set(got) == {("small", f) for f in range(48)}
    for f in range(48):
        _same_objects(truth[f], got[("small", f)])
    anns = coco.dataset["annotations"]
    assert all(a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str) for a in anns)
    assert all(a["area"] == mask_utils.area(a["segmentation"]) for a in anns)
    assert {c["name"] for c in coco.dataset["categories"]} == {"red ball", "blue box", "green ball"}
    video_entry = coco.dataset["videos"][0]
    assert (video_entry["width"], video_entry["height"], video_entry["length"], video_entry["filepath"]) == (160, 120, 48, str(path))
    # Each image is the decoded frame its labels belong to (not a neighbour).
    decoded = list(video.iter_frames(path))
    for f in (5, 30):
        image = np.asarray(Image.open(out / "data" / f"small/{f:06d}.jpg").convert("RGB")).astype(int)
        errors = [np.abs(image - decoded[g]).mean() for g in (f - 1, f, f + 1)]
        assert errors[1] < 2 and errors[1] < min(errors[0], errors[2])


def test_coco_polygons_without_images_read_back_by_pycocotools(scene, tmp_path) -> None:
    ds, truth, _ = scene
    out = tmp_path / "coco-poly"
    report = export_tracks(ds, "sam", "coco", out, frames="video", coco_masks="polygons")
    assert not (out / "data").exists() and report.images == 0
    coco, got = read_coco(out / "labels.json")
    assert all(isinstance(a["segmentation"], list) for a in coco.dataset["annotations"])
    for f in range(48):
        _same_objects(truth[f], got[("small", f)], exact=False, min_iou=0.95)
    assert report.polygon_min_iou is not None and report.polygon_min_iou >= 0.95 and not report.warnings


def test_fiftyones_coco_importer_reads_the_export(scene, tmp_path) -> None:
    ds, truth, _ = scene
    out = tmp_path / "coco-fo"
    export_tracks(ds, "sam", "coco", out, frame_stride=12)
    images = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(out / "data"),
                                 labels_path=str(out / "labels.json"), label_types="segmentations",
                                 label_field="segs")
    try:
        assert len(images) == 4  # frames 0, 12, 24, 36
        for sample in images:
            frame = int(Path(sample.filepath).stem)
            dets = sample["segs"].detections
            assert sorted(d.label for d in dets) == sorted(label for label, _ in truth[frame].values())
            for det in dets:
                full = np.zeros((120, 160), bool)
                full[det.to_segmentation(frame_size=(160, 120)).mask.astype(bool)] = True
                assert any(iou(full, m) == 1.0 for _, m in truth[frame].values())
    finally:
        images.delete()


# ---------------------------------------------------------------------------------------
# YOLO


def test_yolo_segmentation_read_per_spec(scene, tmp_path) -> None:
    ds, truth, _ = scene
    out = tmp_path / "yolo-seg"
    report = export_tracks(ds, "sam", "yolo-seg", out)
    names, rows = read_yolo(out)
    assert sorted(names.values()) == ["blue box", "green ball", "red ball"]
    assert set(rows) == {f"small_{f:06d}" for f in range(48)}
    for f in range(48):
        got = rows[f"small_{f:06d}"]
        assert len(got) == len(truth[f])
        for label, mask in truth[f].values():
            drawn = [yolo_mask(c, 160, 120) for cls, c in got if names[cls] == label]
            assert len(drawn) == 1 and iou(drawn[0], mask) >= 0.95
    assert report.polygon_min_iou is not None and report.polygon_min_iou >= 0.95


def test_yolo_detection_boxes_within_a_pixel(scene, tmp_path) -> None:
    ds, truth, _ = scene
    out = tmp_path / "yolo-det"
    export_tracks(ds, "sam", "yolo-detect", out, frame_stride=4)
    names, rows = read_yolo(out)
    assert set(rows) == {f"small_{f:06d}" for f in range(0, 48, 4)}
    for stem, got in rows.items():
        f = int(stem.split("_")[-1])
        assert len(got) == len(truth[f])
        for cls, (xc, yc, w, h) in got:
            mask = next(m for label, m in truth[f].values() if label == names[cls])
            assert xywh_close([(xc - w / 2) * 160, (yc - h / 2) * 120, w * 160, h * 120], mask)


def test_fiftyones_yolo_importer_reads_the_export(scene, tmp_path) -> None:
    ds, truth, _ = scene
    out = tmp_path / "yolo-fo"
    export_tracks(ds, "sam", "yolo-seg", out, frame_stride=12)
    images = fo.Dataset.from_dir(dataset_dir=str(out), dataset_type=fo.types.YOLOv5Dataset, yaml_path="data.yaml",
                                 split="train", label_type="polylines", label_field="polys")
    try:
        assert len(images) == 4
        for sample in images:
            frame = int(Path(sample.filepath).stem.split("_")[-1])
            lines = sample["polys"].polylines
            assert sorted(p.label for p in lines) == sorted(label for label, _ in truth[frame].values())
            for line in lines:
                drawn = line.to_segmentation(frame_size=(160, 120), target=1).mask.astype(bool)
                assert max(iou(drawn, m) for _, m in truth[frame].values()) >= 0.9  # FiftyOne draws with its own rasteriser
    finally:
        images.delete()


# ---------------------------------------------------------------------------------------
# MOT / MOTS


def test_mot_text_read_per_spec(scene, tmp_path) -> None:
    ds, truth, _ = scene
    out = tmp_path / "mot"
    export_tracks(ds, "sam", "mot", out, frames="images")
    rows = read_mot(out / "small.txt")
    assert sorted(p.name for p in (out / "small" / "img1").iterdir()) == [f"{n:06d}.jpg" for n in range(1, 49)]
    assert (out / "seqmap.txt").read_text().split() == ["name", "small"]
    info = configparser.ConfigParser()
    info.read(out / "small" / "seqinfo.ini")
    assert (info["Sequence"]["seqLength"], info["Sequence"]["imWidth"], info["Sequence"]["imHeight"]) == ("48", "160", "120")
    for f in range(48):
        got = rows.get(f + 1, {})  # MOT frames count from 1
        assert set(got) == set(truth[f])
        for track, (left, top, width, height, conf) in got.items():
            assert xywh_close([left, top, width, height], truth[f][track][1])
            assert conf == pytest.approx(0.5 + track / 10)


def test_mots_text_read_per_spec(scene, tmp_path) -> None:
    ds, truth, _ = scene
    out = tmp_path / "mots"
    report = export_tracks(ds, "sam", "mots", out)
    rows = read_mots(out / "small.txt")
    classes = (out / "labels.txt").read_text(encoding="utf-8").splitlines()
    for f in range(48):
        got = rows.get(f + 1, {})
        assert set(got) == set(truth[f])
        for track, (class_id, mask) in got.items():
            label, expected = truth[f][track]
            assert classes[class_id - 1] == label
            assert np.array_equal(mask, expected)  # the scene's masks never overlap
    assert report.overlap_pixels_removed == 0


# ---------------------------------------------------------------------------------------
# YouTube-VIS


def test_ytvis_read_through_pycocotools(scene, tmp_path) -> None:
    ds, truth, _ = scene
    out = tmp_path / "ytvis"
    export_tracks(ds, "sam", "ytvis", out, frame_stride=3)
    data, got = read_ytvis(out / "instances.json")
    assert set(got) == {("small", f) for f in range(0, 48, 3)}
    for (_, f), objects in got.items():
        _same_objects(truth[f], objects)
        assert (out / "JPEGImages" / "small" / f"{f:06d}.jpg").is_file()
    anns = data.dataset["annotations"]
    assert sorted(a["track_id"] for a in anns) == [1, 2, 3]
    assert all(0 < a["score"] <= 1 for a in anns)


# ---------------------------------------------------------------------------------------
# Import back


def _stored(ds: fo.Dataset, field: str) -> dict[int, dict[int, tuple[str, np.ndarray, list[float], float]]]:
    out = {}
    for number, frame in ds.select_fields(f"frames.{field}").first().frames.items():
        if frame[field] is not None:
            out[number] = {d.index: (d.label, d.mask, d.bounding_box, d.confidence) for d in frame[field].detections}
    return out


@pytest.mark.parametrize("fmt", ["coco", "ytvis"])
def test_import_round_trip_keeps_track_ids_masks_and_boxes(scene, tmp_path, fmt: str) -> None:
    ds, _, _ = scene
    out = tmp_path / fmt
    export_tracks(ds, "sam", fmt, out, frames="video")
    report = import_tracks(ds, out, f"back_{fmt}")
    assert (report.videos, report.frames, report.tracks) == (1, 48, 3) and not report.unmatched
    original, back = _stored(ds, "sam"), _stored(ds, f"back_{fmt}")
    assert back.keys() == original.keys()
    for number in original:
        assert back[number].keys() == original[number].keys()  # same track ids on the same frames
        for track, (label, mask, box, conf) in original[number].items():
            label2, mask2, box2, conf2 = back[number][track]
            assert label2 == label and np.array_equal(mask2, mask)
            assert np.allclose(box2, box, atol=1 / 160) and conf2 == pytest.approx(conf)


def test_import_refuses_a_file_for_other_videos(scene, tmp_path) -> None:
    ds, _, _ = scene
    out = tmp_path / "coco"
    export_tracks(ds, "sam", "coco", out, frames="video")
    data = json.loads((out / "labels.json").read_text())
    data["videos"][0].update(name="other", filepath="/nowhere/other.mp4", file_name="other.mp4")
    (out / "labels.json").write_text(json.dumps(data))
    with pytest.raises(InvalidRequest, match="no video of the file matches"):
        import_tracks(ds, out / "labels.json", "never")
    assert not ds.has_frame_field("never")
