"""Every prompt source produces exactly the fal request expected (as the emulator received
it), and the labels come back named and tracked right; refine, clean-ups and run keys."""

from __future__ import annotations

import fiftyone as fo
import pytest

from sam_backend import masks as mask_ops
from sam_backend.coords import relative_box
from sam_backend.emulator import EmulatorServer
from sam_backend.errors import InvalidRequest
from sam_backend.fiftyone_io import segment_videos

VISUAL = "fal-ai/sam-3-1/video-rle"
OBJECTS = "fal-ai/sam-3/video-rle-objects"
# What the visual endpoint gets besides the prompts (empty prompts and lists are not sent).
DEFAULTS = {"apply_mask": False, "detection_threshold": 0.5, "max_num_objects": 16}


def submitted_all(emulator: EmulatorServer, before: int) -> list[tuple[str, dict]]:
    """(app, body minus video_url) of every submit since ``before``, in a stable order."""
    out = []
    for app, body in emulator.stats.submits[before:]:
        body = dict(body)
        assert body.pop("video_url")
        out.append((app, body))
    return sorted(out, key=lambda item: (item[0], str(item[1])))


def submitted(emulator: EmulatorServer, before: int) -> dict:
    """The one request body the emulator received since ``before`` submits, minus video_url."""
    subs = submitted_all(emulator, before)
    assert len(subs) == 1, f"expected one submit, got {len(subs)}"
    return subs[0][1]


def labels_by_track(sample: fo.Sample, field: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for frame in sample.frames.values():
        for det in frame[field].detections:
            out.setdefault(det.index, set()).add(det.label)
    return out


@pytest.fixture
def scene(make_dataset, scene_video):
    path, truth = scene_video
    return make_dataset(path), truth


def test_form_text_points_and_boxes(scene, fal_backend, emulator) -> None:
    ds, truth = scene
    n = len(emulator.stats.submits)
    # a negative click on the background next to the box: it refines object 3, finds nothing
    segment_videos(ds, prompt="red ball", point_prompts=[{"x": 300, "y": 20, "label": 0, "object_id": 3}],
                   box_prompts=[{"x_min": 190, "y_min": 90, "x_max": 260, "y_max": 150, "object_id": 3, "frame_index": 2}],
                   label_field="form", backend=fal_backend)
    # one request for object 3 (its box and its negative click together), one for the concept
    assert submitted_all(emulator, n) == [
        (VISUAL, {"point_prompts": [{"x": 300, "y": 20, "label": 0, "object_id": 3, "frame_index": 0}],
                  "box_prompts": [{"x_min": 190, "y_min": 90, "x_max": 260, "y_max": 150, "object_id": 3, "frame_index": 2}],
                  **DEFAULTS}),
        (OBJECTS, {"prompt": "red ball", "detection_threshold": 0.5}),
    ]
    assert labels_by_track(ds.first(), "form") == {1: {"red ball"}, 3: {"object_3"}}


def _gt_box(truth, name: str, index: int) -> tuple[int, int, int, int]:
    return mask_ops.tight_box(truth.mask(name, index))


def test_existing_detections_field(scene, fal_backend, emulator) -> None:
    ds, truth = scene
    sample = ds.first()
    box = _gt_box(truth, "blue box", 10)
    sample.frames[11]["hints"] = fo.Detections(detections=[fo.Detection(label="blue box", bounding_box=relative_box(box, 320, 240))])
    sample.save()
    n = len(emulator.stats.submits)
    segment_videos(ds, prompt_fields=["hints"], label_field="sam", backend=fal_backend)
    x0, y0, x1, y1 = box
    assert submitted(emulator, n) == {
        "box_prompts": [{"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "object_id": 1, "frame_index": 10}],
        **DEFAULTS,
    }
    tracks = labels_by_track(ds.first(), "sam")
    assert tracks == {1: {"blue box"}}  # the track is named after the label it was prompted with
    assert sum(1 for f in ds.first().frames.values() if f["sam"].detections) == len(truth.frames_visible("blue box"))


def test_existing_keypoints_field(scene, fal_backend, emulator) -> None:
    ds, truth = scene
    sample = ds.first()
    sample.frames[31]["clicks"] = fo.Keypoints(keypoints=[
        fo.Keypoint(label="pos", points=[[0.5 + 0.5 / 320, 0.5 + 0.5 / 240]], index=4),
        fo.Keypoint(label="neg", points=[[10.5 / 320, 10.5 / 240]], index=4),
    ])
    sample.save()
    n = len(emulator.stats.submits)
    segment_videos(ds, prompt_fields=["frames.clicks"], label_field="sam", backend=fal_backend)
    assert submitted(emulator, n) == {
        "point_prompts": [{"x": 160, "y": 120, "label": 1, "object_id": 4, "frame_index": 30},
                          {"x": 10, "y": 10, "label": 0, "object_id": 4, "frame_index": 30}],
        **DEFAULTS,
    }
    assert set(labels_by_track(ds.first(), "sam")) == {4}


def test_selected_labels(scene, fal_backend, emulator) -> None:
    ds, truth = scene
    sample = ds.first()
    red, green = _gt_box(truth, "red ball", 40), _gt_box(truth, "green ball", 40)
    sample.frames[41]["gt"] = fo.Detections(detections=[
        fo.Detection(label="red ball", bounding_box=relative_box(red, 320, 240), index=7),
        fo.Detection(label="green ball", bounding_box=relative_box(green, 320, 240), index=8),
    ])
    sample.save()
    chosen = sample.frames[41]["gt"].detections[1]
    n = len(emulator.stats.submits)
    selected = [{"label_id": chosen.id, "sample_id": sample.id, "field": "frames.gt", "frame_number": 41}]
    segment_videos(ds, selected_labels=selected, label_field="sam", backend=fal_backend)
    x0, y0, x1, y1 = green
    assert submitted(emulator, n)["box_prompts"] == [
        {"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "object_id": 8, "frame_index": 40}]
    assert labels_by_track(ds.first(), "sam") == {8: {"green ball"}}


def test_refine_one_track_forward_keeps_everything_else(scene, fal_backend, emulator) -> None:
    ds, truth = scene
    segment_videos(ds, prompt="red ball, blue box", label_field="sam", backend=fal_backend)
    before = {n: {d.index: d.id for d in f["sam"].detections} for n, f in ds.first().frames.items()}
    red_id = next(d.index for d in ds.first().frames[1]["sam"].detections if d.label == "red ball")
    n = len(emulator.stats.submits)
    report = segment_videos(ds, refine_track=red_id, refine_frame=50, label_field="sam", backend=fal_backend)
    assert report.failed == {}
    payload = submitted(emulator, n)
    # only frames 50.. were sent (trimmed locally), so the prompt sits on the clip's first frame
    x0, y0, x1, y1 = _gt_box(truth, "red ball", 49)
    assert "prompt" not in payload and "point_prompts" not in payload
    assert payload["box_prompts"] == [{"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "object_id": red_id, "frame_index": 0}]
    after = {n: {d.index: (d.id, d.label) for d in f["sam"].detections} for n, f in ds.first().frames.items()}
    for number in after:
        for track, det_id in before[number].items():
            same = after[number][track][0] == det_id
            assert same == (track != red_id or number < 50), (number, track)
        assert set(after[number]) == set(before[number])
    assert {label for f in after.values() for t, (_, label) in f.items() if t == red_id} == {"red ball"}
    # Where the labels came from: the first run's prompt stays, the refine is added to it.
    field = ds.get_field("frames.sam")
    provenance = field.info["sam31_video"]["samples"][ds.first().id]
    assert provenance["prompt"] == "red ball, blue box" and "'red ball, blue box'" in field.description
    assert [(r["track"], r["frame"], r["direction"]) for r in provenance["refines"]] == [(red_id, 50, "forward")]
    assert provenance["refines"][0]["request_id"] == report.records[ds.first().id].request_id
    # ... and the field's top-level request is still the run's, beside the refine
    run = field.info["sam31_video"]
    assert run["request"]["prompt"] == "red ball, blue box" and run["request"]["box_prompts"] == []
    assert run["refine"] == {"track": red_id, "frame": 50, "direction": "forward"}


def test_refine_needs_a_prompt_for_that_track(scene, fal_backend, emulator) -> None:
    ds, _ = scene
    with pytest.raises(InvalidRequest, match=r"track 9 is not in frames.sam of this video \(its tracks: none\)"):
        segment_videos(ds, refine_track=9, refine_frame=5, label_field="sam", backend=fal_backend)
    segment_videos(ds, prompt="red ball, blue box", label_field="sam", backend=fal_backend)
    n = len(emulator.stats.submits)
    # refine corrects a track; given a box for an unknown id it used to start a new one
    box = {"x_min": 10, "y_min": 12, "x_max": 40, "y_max": 44, "object_id": 9, "frame_index": 4}
    with pytest.raises(InvalidRequest, match=r"track 9 is not in frames.sam of this video \(its tracks: 1, 2\)"):
        segment_videos(ds, refine_track=9, refine_frame=5, box_prompts=[box], label_field="sam", backend=fal_backend)
    frame = ds.first().frames[5]
    frame["sam"].detections = [d for d in frame["sam"].detections if d.index != 1]
    frame.save()
    with pytest.raises(InvalidRequest, match="track 1 has no detection in frames.sam on frame 5"):
        segment_videos(ds, refine_track=1, refine_frame=5, label_field="sam", backend=fal_backend)
    # it would count only the re-run frames, and drop (delete) a long track re-run near its end
    with pytest.raises(InvalidRequest, match="min_track_frames applies to whole runs"):
        segment_videos(ds, refine_track=1, refine_frame=6, box_prompts=[{**box, "object_id": 1, "frame_index": 5}],
                       min_track_frames=5, label_field="sam", backend=fal_backend)
    with pytest.raises(InvalidRequest, match="leave the text prompt empty"):
        segment_videos(ds, prompt="red ball", refine_track=1, refine_frame=5, label_field="sam", backend=fal_backend)
    assert len(emulator.stats.submits) == n


def test_specks_and_short_tracks_are_dropped(scene, fal_backend) -> None:
    ds, truth = scene
    report = segment_videos(ds, prompt="red ball, blue box, green ball", label_field="sam", backend=fal_backend,
                            min_mask_area=400, min_track_frames=50)
    areas = [d.mask.sum() for f in ds.first().frames.values() for d in f["sam"].detections]
    assert areas and min(areas) >= 400
    # the green ball is visible on 45 frames only: dropped as a short track
    assert sorted(label for labels in labels_by_track(ds.first(), "sam").values() for label in labels) == ["blue box", "red ball"]
    assert report.tracks[ds.first().id] == 2


def test_run_key_skips_samples_already_written(make_dataset, small_video, fal_backend, emulator) -> None:
    path, _ = small_video
    ds = make_dataset(path, path)
    first = segment_videos(ds, prompt="red ball", label_field="sam", backend=fal_backend, run_key="shard-run-1")
    assert len(first.done) == 2
    n = len(emulator.stats.submits)
    again = segment_videos(ds, prompt="red ball", label_field="sam", backend=fal_backend, run_key="shard-run-1")
    assert again.skipped == sorted(ds.values("id")) and again.done == [] and len(emulator.stats.submits) == n


def test_clips_views_and_options_for_a_ready_backend_are_refused(scene, fal_backend, emulator) -> None:
    """A clips view's ids are clip ids: its run sent whole videos and wrote their labels to
    frame documents of no sample. backend_options with a backend object were ignored."""
    ds, _ = scene
    n, frames = len(emulator.stats.submits), ds.count("frames")
    clips = ds.to_clips([[(10, 30), (40, 45)]])
    assert len(clips) == 2 and clips.media_type == "video"
    with pytest.raises(InvalidRequest, match="not on a clips view: pass the videos"):
        segment_videos(clips, prompt="red ball", label_field="sam", backend=fal_backend)
    with pytest.raises(InvalidRequest, match="this backend object is used as it is"):
        segment_videos(ds, prompt="red ball", label_field="sam", backend=fal_backend,
                       backend_options={"text_mode": "union"})
    assert len(emulator.stats.submits) == n and ds.count("frames") == frames and not ds.has_frame_field("sam")


def test_labels_outside_the_frame_are_refused_not_moved_to_its_edge(scene, fal_backend, emulator) -> None:
    """A keypoint at (1.7, 2.5) used to be sent as the corner pixel (319, 239) and billed;
    a click a hair past the edge (as drawn in the App) still lands on the edge pixel."""
    ds, _ = scene
    sample = ds.first()
    sample.frames[3]["far"] = fo.Keypoints(keypoints=[fo.Keypoint(label="pos", points=[[1.7, 2.5]], index=2)])
    sample.frames[4]["away"] = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[1.2, 0.1, 0.2, 0.2])])
    sample.frames[5]["edge"] = fo.Keypoints(keypoints=[fo.Keypoint(label="pos", points=[[1.002, -0.003]], index=2)])
    sample.save()
    n = len(emulator.stats.submits)
    with pytest.raises(InvalidRequest, match=r"frames.far on frame 3.*point \(1.7, 2.5\) is outside the frame"):
        segment_videos(ds, prompt_fields=["far"], label_field="sam", backend=fal_backend)
    with pytest.raises(InvalidRequest, match=r"box \[1.2, 0.1, 0.2, 0.2\] lies outside the frame"):
        segment_videos(ds, prompt_fields=["away"], label_field="sam", backend=fal_backend)
    assert len(emulator.stats.submits) == n and not ds.has_frame_field("sam")
    segment_videos(ds, prompt_fields=["edge"], label_field="sam", backend=fal_backend)
    assert submitted(emulator, n)["point_prompts"] == [{"x": 319, "y": 0, "label": 1, "object_id": 2, "frame_index": 4}]


def test_clicks_on_one_video_of_many_segment_that_video_only(make_dataset, scene_video, fal_backend, emulator) -> None:
    """The panel's 'Segment with these prompts' targets the whole view: the videos without
    clicks made the run fail with 'empty request' for each ('2 of 3 have none')."""
    path, truth = scene_video
    ds = make_dataset(path, path, path)
    clicked = ds.skip(1).first()
    box = _gt_box(truth, "blue box", 10)
    clicked.frames[11]["hints"] = fo.Detections(detections=[
        fo.Detection(label="blue box", bounding_box=relative_box(box, 320, 240))])
    clicked.save()
    n = len(emulator.stats.submits)
    report = segment_videos(ds, prompt_fields=["hints"], label_field="sam", backend=fal_backend)
    assert report.done == [clicked.id] and report.failed == {} and len(emulator.stats.submits) == n + 1
    assert any("2 video(s) have no prompts" in w for w in report.warnings)
    assert ds.count("frames.sam.detections") == len(truth.frames_visible("blue box"))
    with pytest.raises(InvalidRequest, match="no video of this view has prompts"):
        segment_videos(ds.exclude(clicked.id), prompt_fields=["hints"], label_field="sam", backend=fal_backend)
    # refine corrects one video's track: over several it re-ran (and billed) that id on each
    with pytest.raises(InvalidRequest, match="refine corrects one track of one video, but this view has 3 videos"):
        segment_videos(ds, refine_track=1, refine_frame=11, label_field="sam", backend=fal_backend)
    assert len(emulator.stats.submits) == n + 1


def test_refine_takes_the_refined_tracks_clicks_from_fields_with_several_objects(scene, fal_backend, emulator) -> None:
    """The panel's fields hold clicks for several objects; refining one of them used to be
    refused ('the prompts describe 2 objects')."""
    ds, truth = scene
    segment_videos(ds, prompt="red ball, blue box", label_field="sam", backend=fal_backend)
    sample = ds.first()
    red, blue = _gt_box(truth, "red ball", 40), _gt_box(truth, "blue box", 40)
    sample.frames[41]["panel"] = fo.Detections(detections=[
        fo.Detection(label="red ball", bounding_box=relative_box(red, 320, 240), index=1),
        fo.Detection(label="blue box", bounding_box=relative_box(blue, 320, 240), index=2)])
    sample.save()
    n = len(emulator.stats.submits)
    segment_videos(ds, prompt_fields=["panel"], refine_track=2, refine_frame=41, label_field="sam", backend=fal_backend)
    x0, y0, x1, y1 = blue
    # (the refine sends frames 41.. only: the clip's first frame is the video's frame 41)
    assert submitted(emulator, n)["box_prompts"] == [
        {"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "object_id": 2, "frame_index": 0}]
