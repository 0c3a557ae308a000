"""The bulk writer stores exactly what FiftyOne's own path stores: same documents, same
schema, same labels read back by the SDK and by the App server."""

from __future__ import annotations

import zlib

import fiftyone as fo
import fiftyone.core.odm as foo
import fiftyone.core.utils as fou
import httpx
import numpy as np
import pytest

from sam_backend import masks as mask_ops
from sam_backend import synthetic, video
from sam_backend.fiftyone_io.labels import to_detections
from sam_backend.fiftyone_io.writer import FrameLabelWriter, WritePolicy, labels_not_ours, serialize_mask
from sam_backend.types import FrameResult, TrackedObject


def truth_frames(truth: synthetic.GroundTruth) -> list[FrameResult]:
    """The generator's exact masks as tracker output: track id = shape order + 1."""
    frames = []
    for index in range(truth.scene.frame_count):
        objects = []
        for track_id, shape in enumerate(truth.scene.shapes, start=1):
            mask = truth.mask(shape.name, index)
            if mask is not None:
                objects.append(TrackedObject(track_id, shape.name, 0.5 + track_id / 10, mask, mask_ops.tight_box(mask)))
        frames.append(FrameResult(index, objects))
    return frames


@pytest.fixture
def two_ways(make_dataset, small_video):
    """The same labels written by our writer (dataset 'fast') and FiftyOne's path ('naive')."""
    path, truth = small_video
    return written_both_ways(make_dataset, path, truth_frames(truth))


def written_both_ways(make_dataset, path, frames: list[FrameResult]) -> tuple[fo.Dataset, fo.Dataset]:
    info = video.probe(path)
    fast = make_dataset(path, persistent=True)
    naive = make_dataset(path, persistent=True)
    FrameLabelWriter(fast, "sam").write_sample(fast.first().id, iter(frames), info)
    sample = naive.first()
    for f in frames:
        sample.frames[f.frame_index + 1]["sam"] = to_detections(f, info.width, info.height)
    sample.save()
    return fast, naive


def _strip(doc: dict) -> dict:
    """A stored frame document with ids and timestamps replaced by their types, and mask
    bytes decompressed (FiftyOne accepts any zlib level; the .npy stream must match)."""
    out = {}
    for key, value in doc.items():
        if key in ("_id", "_sample_id", "_dataset_id", "created_at", "last_modified_at"):
            out[key] = type(value).__name__
        elif isinstance(value, dict):
            out[key] = _strip(value)
        elif isinstance(value, list):
            out[key] = [_strip(v) if isinstance(v, dict) else v for v in value]
        elif key == "mask":
            out[key] = zlib.decompress(bytes(value))
        else:
            out[key] = value
    return out


def _stored(ds: fo.Dataset) -> list[dict]:
    coll = foo.get_db_conn()[ds._frame_collection_name]
    return [_strip(d) for d in coll.find({}, sort=[("frame_number", 1)])]


def test_serialized_mask_reads_back_with_fiftyone() -> None:
    mask = np.random.default_rng(0).random((37, 53)) > 0.5
    ours = serialize_mask(mask)
    assert np.array_equal(fou.deserialize_numpy_array(ours), mask)
    assert zlib.decompress(ours) == zlib.decompress(fou.serialize_numpy_array(mask))
    empty = np.zeros((0, 4), bool)
    assert fou.deserialize_numpy_array(serialize_mask(empty)).shape == (0, 4)


def test_stored_documents_and_schema_match_fiftyone(two_ways) -> None:
    fast, naive = two_ways
    a, b = _stored(fast), _stored(naive)
    assert len(a) == len(b) == 48
    assert a == b
    db = foo.get_db_conn()

    def schema(ds: fo.Dataset) -> list:
        fields = db.datasets.find_one({"name": ds.name})["frame_fields"]
        return [_strip(f) | {"created_at": None, "info": None} for f in fields if f["name"] == "sam"]

    assert schema(fast) == schema(naive)
    # The one difference: the field says the plugin wrote it (info is free-form in FiftyOne).
    assert fast.get_field("frames.sam").info == {"sam31_video_written": True} and naive.get_field("frames.sam").info is None
    assert fast.get_frame_field_schema(flat=True).keys() == naive.get_frame_field_schema(flat=True).keys()


def test_sdk_reads_the_same_labels(two_ways) -> None:
    fast, naive = two_ways
    for (na, fa), (nb, fb) in zip(fast.first().frames.items(), naive.first().frames.items()):
        assert na == nb
        da, db_ = fa["sam"].detections, fb["sam"].detections
        assert [d.to_dict() | {"_id": None, "mask": None} for d in da] == [d.to_dict() | {"_id": None, "mask": None} for d in db_]
        assert all(np.array_equal(x.mask, y.mask) for x, y in zip(da, db_))
    assert fast.count("frames.sam.detections") == naive.count("frames.sam.detections") > 0
    assert fast.distinct("frames.sam.detections.index") == [1, 2, 3]
    assert fast.bounds("frames.sam.detections.confidence") == naive.bounds("frames.sam.detections.confidence")


def _app_frames(url: str, ds: fo.Dataset) -> list[dict]:
    body = {"dataset": ds.name, "view": [], "sampleId": ds.first().id, "frameNumber": 1,
            "frameCount": 48, "numFrames": 48}
    response = httpx.post(f"{url}/frames", json=body, timeout=30)
    assert response.status_code == 200, response.text
    frames = response.json()["frames"]

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in ("_id", "id", "_sample_id", "_dataset_id", "created_at", "last_modified_at")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return [clean(f) for f in frames]


def test_app_server_reads_the_same_labels(two_ways, app_server: str) -> None:
    fast, naive = two_ways
    a, b = _app_frames(app_server, fast), _app_frames(app_server, naive)
    assert len(a) == 48
    assert sum(len(f["sam"]["detections"]) for f in a) > 0
    # Masks travel as base64 strings of the stored zlib bytes; compare what they decode to.
    for fa, fb in zip(a, b):
        for da, db_ in zip(fa["sam"]["detections"], fb["sam"]["detections"]):
            ma, mb = da.pop("mask"), db_.pop("mask")
            assert isinstance(ma, str) and isinstance(mb, str)
            assert np.array_equal(fou.deserialize_numpy_array(ma, ascii=True), fou.deserialize_numpy_array(mb, ascii=True))
    assert a == b


def _flicker(frames: list[FrameResult]) -> list[FrameResult]:
    """Add a one-frame track 99 (a speck the tracker saw once) on frame 5."""
    out = list(frames)
    speck = np.zeros_like(frames[0].objects[0].mask)
    speck[2:4, 2:4] = True
    out[5] = FrameResult(5, [*frames[5].objects, TrackedObject(99, "speck", 0.3, speck, (2, 2, 4, 4))])
    return out


def test_short_tracks_are_dropped(make_dataset, small_video) -> None:
    path, truth = small_video
    ds = make_dataset(path)
    stats = FrameLabelWriter(ds, "sam").write_sample(ds.first().id, _flicker(truth_frames(truth)), video.probe(path),
                                                     WritePolicy(min_track_frames=3))
    assert stats.dropped_tracks == {99} and stats.tracks == {1, 2, 3}
    assert ds.distinct("frames.sam.detections.index") == [1, 2, 3]
    assert ds.count("frames.sam.detections") == stats.detections


def test_refine_replaces_one_track_and_keeps_the_others(make_dataset, small_video) -> None:
    path, truth = small_video
    info = video.probe(path)
    ds = make_dataset(path)
    writer = FrameLabelWriter(ds, "sam")
    writer.write_sample(ds.first().id, truth_frames(truth), info)
    before = {n: {d.index: d for d in f["sam"].detections} for n, f in ds.first().frames.items()}
    # re-run track 2 only, from frame index 20 on, with a shifted mask and another score
    fixed = []
    for f in truth_frames(truth)[20:]:
        objs = [TrackedObject(o.track_id, o.label, 0.99, np.roll(o.mask, 1, axis=1), mask_ops.tight_box(np.roll(o.mask, 1, axis=1)))
                for o in f.objects if o.track_id == 2]
        fixed.append(FrameResult(f.frame_index, objs))
    writer.write_sample(ds.first().id, fixed, info, WritePolicy(replace_tracks=frozenset({2})))
    for number, frame in ds.first().frames.items():
        now = {d.index: d for d in frame["sam"].detections}
        for track, det in before[number].items():
            if track != 2 or number <= 20:
                assert now[track].id == det.id and now[track].confidence == det.confidence
        if number > 20 and 2 in before[number]:
            assert now[2].confidence == 0.99 and now[2].id != before[number][2].id
        assert set(now) == set(before[number])


def test_masks_on_disk_read_back_and_failed_runs_leave_no_files(make_dataset, small_video, tmp_path) -> None:
    path, truth = small_video
    info = video.probe(path)
    ds = make_dataset(path)
    frames = truth_frames(truth)
    writer = FrameLabelWriter(ds, "sam")
    writer.write_sample(ds.first().id, frames, info, WritePolicy(mask_dir=tmp_path))
    dets = [d for f in ds.first().frames.values() for d in f["sam"].detections]
    assert dets and all(d.mask is None and d.mask_path for d in dets)
    first = next(f for f in frames if f.objects)
    stored = ds.first().frames[first.frame_index + 1]["sam"].detections[0]
    assert np.array_equal(stored.get_mask().astype(bool), mask_ops.crop(first.objects[0].mask, first.objects[0].box))
    files = set(tmp_path.rglob("*.png"))
    assert len(files) == len(dets)

    def failing():
        yield from frames[:10]
        raise RuntimeError("backend died")

    with pytest.raises(RuntimeError):
        writer.write_sample(ds.first().id, failing(), info, WritePolicy(mask_dir=tmp_path))
    assert set(tmp_path.rglob("*.png")) == files  # nothing new left behind, old files kept
    writer.write_sample(ds.first().id, frames, info, WritePolicy(mask_dir=tmp_path))
    assert len(set(tmp_path.rglob("*.png"))) == len(dets) and not files & set(tmp_path.rglob("*.png"))


def test_box_only_objects_are_stored_as_fiftyone_stores_them_without_a_mask(make_dataset, small_video, tmp_path) -> None:
    """An imported box-only annotation is a Detection with no mask (not an empty one), by
    the writer exactly as by FiftyOne's own path, and no mask file is made for it."""
    path, truth = small_video
    info = video.probe(path)
    frames = truth_frames(truth)[:6]
    box = (17, 9, 61, 40)  # x0 != y0, width != height
    for f in frames[2:4]:
        f.objects.append(TrackedObject.box_only(9, "boxed", 0.37, box, (info.height, info.width)))
    fast, naive = written_both_ways(make_dataset, path, frames)
    assert _stored(fast) == _stored(naive)
    [boxed] = [d for d in fast.first().frames[3]["sam"].detections if d.index == 9]
    assert boxed.mask is None and boxed.mask_path is None and boxed.label == "boxed"
    assert np.allclose(boxed.bounding_box, [17 / info.width, 9 / info.height, 44 / info.width, 31 / info.height])
    on_disk = make_dataset(path)
    FrameLabelWriter(on_disk, "sam").write_sample(on_disk.first().id, iter(frames), info, WritePolicy(mask_dir=tmp_path))
    dets = [d for f in on_disk.first().frames.values() for d in f["sam"].detections]
    assert {d.index for d in dets if d.mask_path is None} == {9}
    assert len(list(tmp_path.rglob("*.png"))) == sum(1 for d in dets if d.index != 9)


def test_fields_the_writer_makes_are_marked_as_its_own(two_ways) -> None:
    """A run that stops (or a shard still running) leaves labels in a field it created; a
    resume or the next shard must not take them for the user's own."""
    fast, naive = two_ways  # same labels: ours, and FiftyOne's own path
    assert labels_not_ours(fast, "sam") == 0
    assert labels_not_ours(naive, "sam") == naive.count("frames.sam") > 0
    assert labels_not_ours(naive, "absent") == 0


def test_an_empty_field_made_in_fiftyone_is_the_writers_once_it_wrote_there(make_dataset, small_video) -> None:
    path, truth = small_video
    ds = make_dataset(path)
    ds.add_frame_field("sam", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections, info={"note": "mine"})
    FrameLabelWriter(ds, "sam").write_sample(ds.first().id, iter(truth_frames(truth)[:5]), video.probe(path))
    assert labels_not_ours(ds, "sam") == 0  # a stopped run's resume must not take its own labels for the user's
    assert ds.get_field("frames.sam").info == {"note": "mine", "sam31_video_written": True}


def test_batches_are_cut_by_mask_bytes_as_well_as_frames(make_dataset, small_video, monkeypatch) -> None:
    """128 frames of full-frame 4K masks held gigabytes per video: a batch also ends once
    its masks reach BATCH_MASK_BYTES, and every frame is still written."""
    import sam_backend.fiftyone_io.writer as writer_mod

    path, truth = small_video
    info = video.probe(path)
    ds = make_dataset(path)
    frames = truth_frames(truth)  # full-frame masks: 160 x 120 bytes per object
    per_frame = [sum(o.nbytes for o in f.objects) for f in frames]
    assert per_frame[5] == 160 * 120 * len(frames[5].objects)
    monkeypatch.setattr(writer_mod, "BATCH_MASK_BYTES", 4 * 160 * 120)
    staged: list[int] = []
    stage = writer_mod.FrameLabelWriter._stage_batch
    monkeypatch.setattr(writer_mod.FrameLabelWriter, "_stage_batch",
                        lambda self, run, oid, batch, *a: (staged.append(len(batch)), stage(self, run, oid, batch, *a))[1])
    FrameLabelWriter(ds, "sam").write_sample(ds.first().id, iter(frames), info)
    assert sum(staged) == len(frames) and max(staged) < 8  # by bytes: 128 frames would have been one batch
    assert ds.count("frames.sam.detections") == sum(len(f.objects) for f in frames)
