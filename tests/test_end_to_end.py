"""Video sample -> fal backend -> real HTTP emulator -> tracked frame Detections in real
MongoDB, checked against the synthetic video's exact ground truth."""

from __future__ import annotations

import collections
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest

from sam_backend import masks as mask_ops
from sam_backend import synthetic
from sam_backend.backends.base import CancelToken
from sam_backend.backends.fal import FalBackend, FalConfig
from sam_backend.coords import frame_index_from_number, pixel_box
from sam_backend.emulator import EmulatorServer, FaultAction
from sam_backend.errors import AuthError, Cancelled, InvalidRequest
from sam_backend.fiftyone_io import SamVideoModel, segment_videos

PROMPT = "red ball, blue box, green ball"


def full_mask(det: fo.Detection, width: int, height: int) -> np.ndarray:
    x0, y0, x1, y1 = pixel_box(det.bounding_box, width, height)
    assert det.mask.shape == (y1 - y0, x1 - x0)
    out = np.zeros((height, width), bool)
    out[y0:y1, x0:x1] = det.mask
    return out


def assert_tracks_match(sample: fo.Sample, field: str, truth: synthetic.GroundTruth,
                        labels: dict[str, str], ids: dict[str, int] | None = None) -> None:
    """One track id per object over the whole video; on every frame where an object is
    visible its mask IoU >= 0.98 and box within 1 px; nothing where it is absent."""
    scene = truth.scene
    width, height = scene.width, scene.height
    assert sample.metadata.total_frame_count == scene.frame_count
    assert sorted(sample.frames.keys()) == list(range(1, scene.frame_count + 1))
    ids_by_name: dict[str, set[int]] = {name: set() for name in labels}
    for number, frame in sample.frames.items():
        index = frame_index_from_number(number)
        dets = frame[field].detections
        assert len({d.index for d in dets}) == len(dets), f"duplicate track on frame {number}"
        for det in dets:
            mask = full_mask(det, width, height)
            matches = [n for n in labels if truth.mask(n, index) is not None and mask_ops.iou(mask, truth.mask(n, index)) >= 0.98]
            assert len(matches) == 1, f"frame {number}: detection {det.index} {det.label!r} matches {matches}"
            name = matches[0]
            ids_by_name[name].add(det.index)
            assert det.label == labels[name]
            gt_box = mask_ops.tight_box(truth.mask(name, index))
            assert max(abs(a - b) for a, b in zip(pixel_box(det.bounding_box, width, height), gt_box)) <= 1
            # fal's per-object endpoint reports no score (S6); where one is known it is a probability
            assert det.confidence is None or 0.0 < det.confidence <= 1.0
        for name in labels:
            visible = truth.mask(name, index) is not None
            found = [d for d in dets if d.label == labels[name]]
            assert len(found) == (1 if visible else 0), f"frame {number}: {name} visible={visible}, found {len(found)}"
    for name, seen in ids_by_name.items():
        assert len(seen) == 1, f"{name} got track ids {seen}"
        if ids is not None:
            assert seen == {ids[name]}
    assert len(set().union(*ids_by_name.values())) == len(labels)


def best_frame(truth: synthetic.GroundTruth, name: str) -> int:
    """The frame where the object shows most of itself (a good frame to prompt on)."""
    return max(truth.frames_visible(name), key=lambda f: truth.mask(name, f).sum())


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    i = np.argsort(ys * mask.shape[1] + xs)[len(ys) // 2]
    return int(xs[i]), int(ys[i])


@pytest.fixture
def scene_dataset(make_dataset, scene_video):
    path, truth = scene_video
    return make_dataset(path), truth


def test_text_prompt_tracks_every_object(scene_dataset, fal_backend: FalBackend, emulator: EmulatorServer) -> None:
    ds, truth = scene_dataset
    before = emulator.stats
    report = segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend)
    after = emulator.stats
    assert report.failed == {} and report.done == [ds.first().id]
    # one request per concept to SAM 3's per-object endpoint, the video uploaded once
    sent = after.submits[len(before.submits):]
    assert sorted(body["prompt"] for _, body in sent) == sorted(c.strip() for c in PROMPT.split(","))
    assert {app for app, _ in sent} == {"fal-ai/sam-3/video-rle-objects"}
    assert after.uploads - before.uploads == 1
    labels = {s.name: s.name for s in truth.scene.shapes}
    assert_tracks_match(ds.first(), "sam", truth, labels)
    assert report.tracks[ds.first().id] == 3 and report.frames == 96
    assert report.estimated_usd == pytest.approx(0.09)  # 3 requests x 6 blocks of 16 frames x $0.005 (assumed)
    assert report.billed_units == 3 * 96
    info = ds.get_field("frames.sam").info["sam31_video"]
    assert info["model"] == "sam3" and info["endpoint"] == "fal-ai/sam-3/video-rle-objects"
    assert info["request_ids"][ds.first().id] == report.records[ds.first().id].request_id
    assert any("instances by SAM 3" in w for w in info["warnings"])


def test_point_prompts_keep_the_given_object_ids(scene_dataset, fal_backend: FalBackend) -> None:
    ds, truth = scene_dataset
    ids = {"red ball": 5, "blue box": 7, "green ball": 9}
    points = []
    for name, object_id in ids.items():
        f = best_frame(truth, name)
        x, y = inner_point(truth.mask(name, f))
        points.append({"x": x, "y": y, "label": 1, "object_id": object_id, "frame_index": f})
    segment_videos(ds, point_prompts=points, label_field="clicked", backend=fal_backend)
    assert_tracks_match(ds.first(), "clicked", truth, {n: f"object_{i}" for n, i in ids.items()}, ids)


def test_box_prompts_track_the_boxed_objects(scene_dataset, fal_backend: FalBackend) -> None:
    ds, truth = scene_dataset
    ids = {"red ball": 11, "blue box": 12, "green ball": 13}
    boxes = []
    for name, object_id in ids.items():
        f = best_frame(truth, name)
        x0, y0, x1, y1 = mask_ops.tight_box(truth.mask(name, f))
        boxes.append({"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "object_id": object_id, "frame_index": f})
    segment_videos(ds, box_prompts=boxes, label_field="boxed", backend=fal_backend)
    assert_tracks_match(ds.first(), "boxed", truth, {n: f"object_{i}" for n, i in ids.items()}, ids)


BAD_INPUTS = [
    ({"box_prompts": [{"x_min": 300, "y_min": 10, "x_max": 330, "y_max": 40}]}, "box_prompts[0]=(300,10)-(330,40) is outside the frame (320x240)"),
    ({"point_prompts": [{"x": 10, "y": 10, "object_id": 1, "frame_index": 96}]}, "point_prompts[0].frame_index=96 is past the last frame (the video has 96 frames"),
    ({"point_prompts": [{"x": 10, "y": 10, "label": 3}]}, "point_prompts[0].label: Input should be 0 or 1 (got 3)"),
    ({}, "empty request"),
    ({"prompt": "red ball", "detection_threshold": 2}, "detection_threshold: Input should be less than or equal to 1 (got 2)"),
    ({"prompt": "red ball", "max_num_objects": 0}, "max_num_objects: Input should be greater than or equal to 1 (got 0)"),
    ({"point_prompts": [{"x": 10, "y": 10, "object_id": 1}, {"x": 20, "y": 20, "label": 0, "object_id": 4}]}, "point_prompts[1].object_id=4 is unknown"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_INPUTS)
def test_bad_input_is_rejected_before_any_http_call(scene_dataset, fal_backend: FalBackend, emulator: EmulatorServer,
                                                    fields: dict, message: str) -> None:
    ds, _ = scene_dataset
    calls = sum(emulator.stats.calls_by_route.values())
    with pytest.raises(InvalidRequest) as info:
        segment_videos(ds, label_field="sam", backend=fal_backend, **fields)
    assert message in str(info.value)
    assert sum(emulator.stats.calls_by_route.values()) == calls  # no upload, no submit, nothing
    assert not ds.has_frame_field("sam")


def test_a_prompt_the_endpoint_cannot_take_is_refused_before_any_http_call(scene_dataset, emulator: EmulatorServer) -> None:
    """fal-ai/sam-3-1/video takes points and boxes without a frame_index (they apply to
    frame 0): a click on frame 5 is refused up front, naming the endpoint."""
    ds, _ = scene_dataset
    config = FalConfig(key=emulator.key, queue_url=emulator.queue_url, rest_url=emulator.rest_url,
                       cdn_url=emulator.cdn_url, endpoint="fal-ai/sam-3-1/video")
    calls = sum(emulator.stats.calls_by_route.values())
    with FalBackend(config) as seed, pytest.raises(InvalidRequest) as info:
        segment_videos(ds, label_field="sam", backend=seed, skip_failures=False,
                       point_prompts=[{"x": 40, "y": 30, "object_id": 2, "frame_index": 5}])
    assert "frame_index=5: fal-ai/sam-3-1/video takes prompts on frame 0" in str(info.value)
    assert sum(emulator.stats.calls_by_route.values()) == calls
    assert not ds.has_frame_field("sam")


def test_missing_key_and_unreadable_video_fail_before_spending(make_dataset, scene_video, tmp_path: Path,
                                                               emulator: EmulatorServer, fal_backend: FalBackend) -> None:
    ds = make_dataset(scene_video[0])
    with pytest.raises(AuthError, match="FAL_KEY is not set"):
        segment_videos(ds, prompt=PROMPT, backend="fal")
    junk = tmp_path / "broken.mp4"
    junk.write_bytes(b"\x00not a video at all")
    bad = make_dataset(junk)
    calls = sum(emulator.stats.calls_by_route.values())
    with pytest.raises(InvalidRequest, match=r"sample .*: cannot read video .*broken\.mp4"):
        segment_videos(bad, prompt=PROMPT, backend=fal_backend, skip_failures=False)
    # by default the unreadable video is that video's failure, reported like any other
    report = segment_videos(bad, prompt=PROMPT, backend=fal_backend)
    assert list(report.failed) == [bad.first().id] and "cannot read video" in report.failed[bad.first().id]
    assert report.done == []
    assert sum(emulator.stats.calls_by_route.values()) == calls
    assert not bad.has_frame_field("sam")


def test_failed_sample_keeps_its_old_labels_and_other_fields_are_untouched(
        make_dataset, small_video, fal_backend: FalBackend, emulator: EmulatorServer) -> None:
    path, truth = small_video
    ds = make_dataset(path, path)
    first = ds.first()
    first.frames[1]["notes"] = fo.Classification(label="keep me")
    first.save()
    segment_videos(ds, prompt="red ball", label_field="sam", backend=fal_backend)
    old_first = [d.label for f in ds.first().frames.values() for d in f["sam"].detections]
    assert set(old_first) == {"red ball"}
    assert [d.label for f in ds.last().frames.values() for d in f["sam"].detections] == old_first

    fired = []

    def fail_first_result(call):  # the first result fetched answers 400: a remote failure
        if call.route == "result" and not fired:
            fired.append(call.request_id)
            return FaultAction(status=400, body={"detail": "model crashed"})
        return None

    emulator.set_faults(fail_first_result)
    try:
        # Both videos run at once: whichever result comes first is the one that fails.
        report = segment_videos(ds, prompt="blue box", label_field="sam", backend=fal_backend)
    finally:
        emulator.set_faults(None)
    assert len(report.failed) == 1 and len(report.done) == 1
    failed_id, done_id = next(iter(report.failed)), report.done[0]
    assert "model crashed" in report.failed[failed_id] and fired and fired[0] in report.failed[failed_id]
    labels = {s.id: [d.label for f in s.frames.values() for d in f["sam"].detections] for s in ds}
    assert labels[failed_id] == old_first  # the failed video keeps its earlier labels
    assert set(labels[done_id]) == {"blue box"}
    assert ds.first().frames[1]["notes"].label == "keep me"
    assert fo.load_dataset(ds.name).get_frame_field_schema().keys() >= {"sam", "notes"}


def test_cancel_mid_run_writes_nothing_and_cancels_at_fal(scene_dataset, fal_backend: FalBackend, emulator: EmulatorServer) -> None:
    ds, _ = scene_dataset
    cancel = CancelToken()
    cancels, named = emulator.stats.cancel_calls, len(emulator.stats.cancelled_requests)

    def on_progress(p):
        if p.backend.stage in ("queued", "running"):
            cancel.cancel()

    with pytest.raises(Cancelled):
        segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend, progress=on_progress, cancel=cancel)
    # every request of the video that reached fal is cancelled there (one per concept)
    assert emulator.stats.cancel_calls - cancels == len(emulator.stats.cancelled_requests) - named >= 1
    assert not ds.has_frame_field("sam")
    assert ds.count("frames") == 0


def test_rerun_replaces_only_the_named_field(scene_dataset, fal_backend: FalBackend) -> None:
    ds, truth = scene_dataset
    segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend)
    segment_videos(ds, prompt="red ball", label_field="other", backend=fal_backend)
    segment_videos(ds, prompt="green ball", label_field="sam", backend=fal_backend)
    sample = ds.first()
    assert {d.label for f in sample.frames.values() for d in f["sam"].detections} == {"green ball"}
    assert {d.label for f in sample.frames.values() for d in f["other"].detections} == {"red ball"}
    assert ds.count("frames") == truth.scene.frame_count


def test_a_frame_range_into_a_labelled_field_says_what_it_keeps(scene_dataset, fal_backend: FalBackend) -> None:
    from sam_backend.types import FrameRange

    ds, truth = scene_dataset
    frames = FrameRange(start=5, stop=20, step=2)
    fresh = segment_videos(ds, prompt="green ball", label_field="ranged", backend=fal_backend, frames=frames)
    assert not any("earlier run" in w for w in fresh.warnings)
    segment_videos(ds, prompt=PROMPT, label_field="sam", backend=fal_backend)
    report = segment_videos(ds, prompt="green ball", label_field="sam", backend=fal_backend, frames=frames)
    kept = truth.scene.frame_count - len(range(5, 20, 2))
    assert any(f"frames.sam keeps the labels of an earlier run on {kept} frames outside frames 5:20:2" in w
               for w in report.warnings), report.warnings
    labels = {n: {d.label for d in f["sam"].detections} for n, f in ds.first().frames.items()}
    assert labels[6] <= {"green ball"} and "red ball" in labels[5]  # what the warning says


def test_a_frame_range_over_videos_of_different_lengths(make_dataset, scene_video, small_video,
                                                        fal_backend: FalBackend, emulator) -> None:
    """frames 30:70 over a 96- and a 48-frame video: the short one is segmented up to its
    end (said in a warning); frames 60: leaves it out (said) and runs the long one; only
    when no video holds the start is the run refused, before anything is sent."""
    from sam_backend.types import FrameRange

    ds = make_dataset(scene_video[0], small_video[0])
    long_id, short_id = ds.values("id")
    report = segment_videos(ds, prompt="red ball", label_field="sam", backend=fal_backend,
                            frames=FrameRange(start=30, stop=70))
    assert report.failed == {} and sorted(report.done) == sorted([long_id, short_id])
    assert any("frames.stop=70 is past the end of 1 video(s) (small.mp4)" in w for w in report.warnings), report.warnings
    numbers = {sid: sorted(n for n, f in ds[sid].frames.items() if f["sam"] is not None) for sid in (long_id, short_id)}
    assert numbers[long_id][0] >= 31 and numbers[long_id][-1] <= 70 and numbers[long_id][-1] > 48
    assert numbers[short_id][0] >= 31 and numbers[short_id][-1] <= 48
    report = segment_videos(ds, prompt="red ball", label_field="late", backend=fal_backend, frames=FrameRange(start=60))
    assert report.done == [long_id]
    assert any("1 video(s) end before the frame range starts, left out: sample " + short_id in w
               and "frames.start=60 is past the last frame (the video has 48 frames)" in w for w in report.warnings)
    sent = len(emulator.stats.submits)
    with pytest.raises(InvalidRequest, match=r"small.mp4\): frames.start=60 is past the last frame"):
        segment_videos(ds.select(short_id), prompt="red ball", label_field="none", backend=fal_backend,
                       frames=FrameRange(start=60))
    assert len(emulator.stats.submits) == sent


def test_a_run_over_some_videos_keeps_the_others_provenance(make_dataset, small_video,
                                                           fal_backend: FalBackend) -> None:
    path, _ = small_video
    ds = make_dataset(path, path)
    first, second = ds.values("id")
    segment_videos(ds, prompt="red ball", label_field="sam", backend=fal_backend, detection_threshold=0.35)
    box = {"x_min": 3, "y_min": 4, "x_max": 30, "y_max": 40, "object_id": 7, "frame_index": 0}
    report = segment_videos(ds.skip(1), prompt="green ball", label_field="sam", backend=fal_backend,
                            box_prompts=[box])
    samples = ds.get_field("frames.sam").info["sam31_video"]["samples"]
    assert (samples[first]["prompt"], samples[second]["prompt"]) == ("red ball", "green ball")
    assert samples[second]["request_id"] == report.records[second].request_id != samples[first]["request_id"]
    # each video says with which prompts and threshold its labels were made (the field's
    # top-level "request" is only the last run's)
    assert (samples[first]["detection_threshold"], samples[second]["detection_threshold"]) == (0.35, 0.5)
    assert "box_prompts" not in samples[first] and samples[second]["box_prompts"] == [box]


def test_apply_model_gives_the_same_labels(scene_dataset, fal_backend: FalBackend) -> None:
    ds, truth = scene_dataset
    segment_videos(ds, prompt=PROMPT, label_field="sdk", backend=fal_backend)
    with SamVideoModel(prompt=PROMPT, backend=fal_backend) as model:
        ds.apply_model(model, label_field="model")
    sample = ds.first()
    assert_tracks_match(sample, "model", truth, {s.name: s.name for s in truth.scene.shapes})
    for frame in sample.frames.values():
        a = sorted((d.index, d.label, tuple(d.bounding_box), d.mask.tobytes()) for d in frame["sdk"].detections)
        b = sorted((d.index, d.label, tuple(d.bounding_box), d.mask.tobytes()) for d in frame["model"].detections)
        assert a == b


def _frame_labels(sample: fo.Sample, field: str) -> dict[int, list]:
    return {n: sorted((d.index, d.label, tuple(d.bounding_box), d.mask.tobytes()) for d in f[field].detections)
            for n, f in sample.frames.items() if f[field] is not None}


def test_apply_model_honours_frames_and_clean_ups_like_segment_videos(scene_dataset, fal_backend: FalBackend) -> None:
    ds, truth = scene_dataset
    from sam_backend.types import FrameRange

    wanted = range(4, 40, 3)
    frames = FrameRange(start=4, stop=40, step=3)
    with SamVideoModel(backend=fal_backend, prompt=PROMPT, frames=frames) as model:
        ds.apply_model(model, label_field="raw")
    raw = _frame_labels(ds.first(), "raw")
    assert set(raw) == {i + 1 for i in wanted}  # only the range, on the video's own frame numbers
    detections = [d for f in ds.first().frames.values() if f["raw"] for d in f["raw"].detections]
    areas = sorted(int(d.mask.sum()) for d in detections)
    min_area = areas[len(areas) // 3]
    # Frames per track among the masks that big: keep only the longest track(s).
    seen = collections.Counter(d.index for d in detections if d.mask.sum() >= min_area)
    assert len(set(seen.values())) > 1  # so the track filter has something to drop
    opts = {"prompt": PROMPT, "frames": frames, "min_mask_area": min_area, "min_track_frames": max(seen.values())}
    segment_videos(ds, label_field="sdk", backend=fal_backend, **opts)
    with SamVideoModel(backend=fal_backend, **opts) as model:
        ds.apply_model(model, label_field="model")
    sample = ds.first()
    sdk, mod = _frame_labels(sample, "sdk"), _frame_labels(sample, "model")
    assert set(mod) == set(raw) and mod == {n: sdk.get(n, []) for n in mod}
    kept = [d for f in sample.frames.values() if f["model"] for d in f["model"].detections]
    assert 0 < len(kept) < len(areas) and min(int(d.mask.sum()) for d in kept) >= opts["min_mask_area"]
    assert {d.index for d in kept} == {i for i, n in seen.items() if n == max(seen.values())}


@pytest.mark.parametrize(("option", "value"), [("mask_dir", "/tmp/masks"), ("prompt_fields", ["boxes"]),
                                               ("label_field", "other"), ("overwrite", True)])
def test_apply_model_refuses_what_it_cannot_honour(option: str, value: object) -> None:
    with pytest.raises(InvalidRequest, match=f"SamVideoModel cannot use {option} .*use segment_videos"):
        SamVideoModel(backend="emulator", prompt="red ball", **{option: value})


def test_emulator_backend_by_name(make_dataset, small_video) -> None:
    """backend="emulator" starts its own emulator and stops it when the run ends."""
    path, truth = small_video
    ds = make_dataset(path)
    report = segment_videos(ds, prompt="red ball, green ball", label_field="sam", backend="emulator")
    assert report.failed == {} and report.tracks[ds.first().id] == 2
    shapes = [s for s in truth.scene.shapes if s.name in ("red ball", "green ball")]
    assert_tracks_match(ds.first(), "sam", truth, {s.name: s.name for s in shapes})


def test_variable_frame_rate_video_gets_labels_per_decoded_frame_and_a_warning(make_dataset, tmp_path: Path) -> None:
    """A VFR webm: FiftyOne's metadata estimates the frame count from duration x rate
    (wrong); labels still go to each decoded frame, and the run says so."""
    import subprocess

    from sam_backend import video

    scene = synthetic.default_scene(frame_count=48, width=160, height=120)
    cfr = tmp_path / "cfr.mp4"
    synthetic.write_video(scene, cfr)
    vfr = tmp_path / "vfr.webm"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(cfr), "-vf", "setpts='if(lt(N,24),N/30,0.8+(N-24)/10)/TB'",
                    "-fps_mode", "vfr", "-c:v", "libvpx-vp9", "-lossless", "1", str(vfr)], check=True)
    info = video.probe(vfr)
    assert info.frame_count == 48
    ds = make_dataset(vfr)
    report = segment_videos(ds, prompt="red ball", label_field="sam", backend="emulator")
    assert report.failed == {}
    sample = ds.first()
    assert sample.metadata.total_frame_count != 48  # FiftyOne's estimate is off for VFR
    assert sorted(sample.frames.keys()) == list(range(1, 49))
    counted = sample.metadata.total_frame_count
    assert report.warnings and "reencode_videos" in report.warnings[0]
    assert f"decodes to 48 frames where FiftyOne's metadata counts {counted}" in report.warnings[0]


def test_videos_finished_before_a_cancel_keep_their_record(make_dataset, small_video, fal_backend) -> None:
    """Each video is written all or nothing, so one finished before a cancel keeps its
    labels; the field's info then said nothing about where they came from."""
    ds = make_dataset(small_video[0], small_video[0])
    cancel = CancelToken()

    def progress(p) -> None:
        if p.done >= 1:
            cancel.cancel()

    with pytest.raises(Cancelled):
        segment_videos(ds, prompt="red ball", label_field="sam", backend=fal_backend, concurrency=1,
                       progress=progress, cancel=cancel)
    labelled = [s.id for s in ds.select_fields("frames.sam") if any(f["sam"] for f in s.frames.values())]
    assert len(labelled) == 1
    record = ds.get_field("frames.sam").info["sam31_video"]["samples"]
    assert list(record) == labelled and record[labelled[0]]["prompt"] == "red ball"


def test_a_range_rerun_on_a_field_over_16_mb_per_video(make_dataset, small_video) -> None:
    """Reading which frames hold labels went through each video's frame documents as one
    MongoDB document (masks included): over 16 MB it failed with a pymongo traceback."""
    from sam_backend.types import FrameRange

    ds = make_dataset(small_video[0])
    sample = ds.first()
    for number in range(1, 49):  # 48 x 400 kB: ~19 MB of labels for one video, as long 4K masks are
        sample.frames[number]["sam"] = fo.Detections(detections=[
            fo.Detection(label="x", bounding_box=[0.1, 0.1, 0.2, 0.2], index=1, note="x" * 400_000)])
    sample.save()
    report = segment_videos(ds, prompt="red ball", label_field="sam", backend="emulator", overwrite=True,
                            frames=FrameRange(start=0, stop=1))
    assert report.failed == {} and any("on 47 frames outside frames 0:1" in w for w in report.warnings)
