"""Visual prompts taken from existing labels and from the App selection."""

from __future__ import annotations

import fiftyone as fo
import pytest

from sam_backend.errors import InvalidRequest
from sam_backend.fiftyone_io.prompts import prompts_from_field, prompts_from_selection
from sam_backend.types import BoxPrompt, PointPrompt, VideoInfo

INFO = VideoInfo(width=160, height=120, frame_count=48, fps=29.97, duration=1.6)


@pytest.fixture
def sample(make_dataset, small_video):
    ds = make_dataset(small_video[0])
    s = ds.first()
    s.frames[3]["hints"] = fo.Detections(detections=[
        fo.Detection(label="dog", bounding_box=[0.25, 0.5, 0.25, 0.25]),           # class-keyed -> id 8
        fo.Detection(label="cat", bounding_box=[0.0, 0.0, 0.5, 0.5], index=7),     # index-keyed -> id 7
    ])
    s.frames[10]["hints"] = fo.Detections(detections=[fo.Detection(label="dog", bounding_box=[0.5, 0.5, 0.25, 0.25])])
    s.frames[5]["clicks"] = fo.Keypoints(keypoints=[
        fo.Keypoint(label="pos", points=[[0.5, 0.5], [0.25, 0.75]], index=2),
        fo.Keypoint(label="neg", points=[[0.1, 0.1]], index=2),
        fo.Keypoint(label="pos", points=[[0.9, 0.1], [float("nan"), float("nan")]], index=4),
    ])
    s.frames[6]["lines"] = fo.Polylines(polylines=[
        fo.Polyline(label="ball", points=[[[0.5, 0.5], [0.6, 0.5]]]),
        fo.Polyline(label="neg", points=[[[0.1, 0.2]]]),
    ])
    s.save()
    return s


def test_detections_become_box_prompts_with_one_id_per_index_or_class(sample) -> None:
    p = prompts_from_field(sample, "hints", INFO)
    assert p.box_prompts == [
        BoxPrompt(x_min=40, y_min=60, x_max=80, y_max=90, object_id=8, frame_index=2),
        BoxPrompt(x_min=0, y_min=0, x_max=80, y_max=60, object_id=7, frame_index=2),
        BoxPrompt(x_min=80, y_min=60, x_max=120, y_max=90, object_id=8, frame_index=9),
    ]
    assert p.point_prompts == [] and p.names == {8: "dog", 7: "cat"}
    assert p.counts() == {"points": 0, "boxes": 3, "objects": 2}


def test_keypoints_become_points_negative_by_class(sample) -> None:
    p = prompts_from_field(sample, "frames.clicks", INFO)
    assert p.point_prompts == [
        PointPrompt(x=80, y=60, label=1, object_id=2, frame_index=4),
        PointPrompt(x=40, y=90, label=1, object_id=2, frame_index=4),
        PointPrompt(x=16, y=12, label=0, object_id=2, frame_index=4),
        PointPrompt(x=144, y=12, label=1, object_id=4, frame_index=4),  # the NaN keypoint is skipped
    ]
    assert p.names == {}  # "pos"/"neg" say which side of the object a click is, not what it is


def test_polyline_vertices_become_points_and_negatives_refine_the_only_object(sample) -> None:
    p = prompts_from_field(sample, "lines", INFO)
    assert p.point_prompts == [
        PointPrompt(x=80, y=60, label=1, object_id=1, frame_index=5),
        PointPrompt(x=96, y=60, label=1, object_id=1, frame_index=5),
        PointPrompt(x=16, y=24, label=0, object_id=1, frame_index=5),
    ]
    assert p.names == {1: "ball"}


def test_selected_labels_only(sample) -> None:
    cat = sample.frames[3]["hints"].detections[1]
    pos = sample.frames[5]["clicks"].keypoints[2]
    selected = [
        {"label_id": cat.id, "sample_id": sample.id, "field": "frames.hints", "frame_number": 3},
        {"label_id": pos.id, "sample_id": sample.id, "field": "frames.clicks", "frame_number": 5},
        {"label_id": "elsewhere", "sample_id": "another-sample", "field": "frames.hints", "frame_number": 1},
    ]
    p = prompts_from_selection(sample, selected, INFO)
    assert p.box_prompts == [BoxPrompt(x_min=0, y_min=0, x_max=80, y_max=60, object_id=7, frame_index=2)]
    assert p.point_prompts == [PointPrompt(x=144, y=12, label=1, object_id=4, frame_index=4)]


def test_unusable_labels_are_explained(sample) -> None:
    sample.frames[7]["amb"] = fo.Keypoints(keypoints=[
        fo.Keypoint(label="a", points=[[0.5, 0.5]]), fo.Keypoint(label="b", points=[[0.2, 0.2]]),
        fo.Keypoint(label="neg", points=[[0.1, 0.1]]),
    ])
    sample.frames[8]["cls"] = fo.Classification(label="x")
    sample.save()
    with pytest.raises(InvalidRequest, match=r"negative clicks .*\(found 2 positive objects"):
        prompts_from_field(sample, "amb", INFO)
    with pytest.raises(InvalidRequest, match="Classification labels cannot be prompts"):
        prompts_from_field(sample, "cls", INFO)
    with pytest.raises(InvalidRequest, match="not found in frames.hints on frame 3"):
        prompts_from_selection(sample, [{"label_id": "nope", "sample_id": sample.id, "field": "frames.hints", "frame_number": 3}], INFO)
