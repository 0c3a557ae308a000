"""Request types mirror fal's wire schema and reject bad input with specific messages."""

from __future__ import annotations

import pytest

from sam_backend.errors import InvalidRequest
from sam_backend.types import SegmentRequest, VideoInfo

VIDEO = VideoInfo(width=320, height=240, frame_count=90, fps=29.97, duration=3.0)


def test_defaults_and_concepts() -> None:
    req = SegmentRequest.build(prompt="red ball, blue box", point_prompts=[{"x": 3, "y": 4, "object_id": 2}])
    assert req.concepts == ["red ball", "blue box"]
    assert (req.detection_threshold, req.max_num_objects) == (0.5, 16)
    assert req.point_prompts[0].model_dump() == {"x": 3, "y": 4, "label": 1, "object_id": 2, "frame_index": 0}
    # numbers from numpy or computed in float arithmetic are whole pixels all the same
    import numpy as np
    point = SegmentRequest.build(point_prompts=[{"x": np.int64(7), "y": 5.0, "object_id": np.uint8(2)}]).point_prompts[0]
    assert (point.x, point.y, point.object_id) == (7, 5, 2) and type(point.x) is int
    assert req.visual_object_ids() == [2]
    # a pasted list: one concept per line (the label used to be 'red ball\nblue box')
    assert SegmentRequest.build(prompt="red ball\r\nblue box\n\ngreen ball, cup\n").concepts == [
        "red ball", "blue box", "green ball", "cup"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "empty request"),
        ({"prompt": "   "}, "empty request"),
        ({"prompt": "red,,blue"}, "'red,,blue' has an empty concept"),
        ({"prompt": "cat, red ball, red ball"}, "names the same concept twice ('red ball' and 'red ball')"),
        ({"prompt": "Red  Ball, dog, red ball"}, "names the same concept twice ('Red  Ball' and 'red ball')"),
        ({"prompt": "dog\nDog"}, "names the same concept twice ('dog' and 'Dog')"),
        ({"prompt": "x", "point_prompts": [{"x": 1, "y": 1, "label": 2}]}, "point_prompts[0].label: Input should be 0 or 1 (got 2)"),
        ({"prompt": "x", "point_prompts": [{"x": 1.5, "y": 1}]}, "point_prompts[0].x"),
        ({"prompt": "x", "point_prompts": [{"x": -1, "y": 1}]}, "point_prompts[0].x: Input should be greater than or equal to 0 (got -1)"),
        ({"prompt": "x", "point_prompts": [{"y": 1}]}, "point_prompts[0].x: Field required"),
        ({"prompt": "x", "detection_threshold": 1.5}, "detection_threshold: Input should be less than or equal to 1 (got 1.5)"),
        ({"prompt": "x", "detection_threshold": -0.1}, "detection_threshold: Input should be greater than or equal to 0 (got -0.1)"),
        ({"prompt": "x", "max_num_objects": 0}, "max_num_objects: Input should be greater than or equal to 1 (got 0)"),
        ({"prompt": "x", "video_output_type": "H265"}, "video_output_type: Extra inputs are not permitted"),
        ({"box_prompts": [{"x_min": 5, "y_min": 1, "x_max": 5, "y_max": 9}]}, "box_prompts[0]: box has no area: x_min=5, x_max=5"),
        ({"prompt": "x", "box_prompts": [{"x_min": 1, "y_min": 1, "x_max": 5}]}, "box_prompts[0].y_max: Field required"),
        ({"prompt": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        # a coordinate from the wrong column: pydantic alone read True as 1 and "37" as 37
        ({"point_prompts": [{"x": True, "y": 3}]}, "point_prompts[0].x: must be a whole number, not bool True"),
        ({"point_prompts": [{"x": 5, "y": "37"}]}, "point_prompts[0].y: must be a whole number, not str '37'"),
        ({"box_prompts": [{"x_min": 1, "y_min": 2, "x_max": 9, "y_max": 8, "frame_index": False}]},
         "box_prompts[0].frame_index: must be a whole number, not bool False"),
        ({"box_prompts": [{"x_min": "1", "y_min": 2, "x_max": 9, "y_max": 8}]}, "box_prompts[0].x_min: must be a whole number, not str"),
        ({"point_prompts": [{"x": 5, "y": 3, "object_id": True}]}, "point_prompts[0].object_id: must be a whole number, not bool True"),
    ],
)
def test_shape_errors_name_field_and_value(fields: dict, expected: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        SegmentRequest.build(**fields)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"box_prompts": [{"x_min": 300, "y_min": 10, "x_max": 330, "y_max": 40}]}, "box_prompts[0]=(300,10)-(330,40) is outside the frame (320x240)"),
        ({"box_prompts": [{"x_min": 10, "y_min": 200, "x_max": 30, "y_max": 241}]}, "is outside the frame (320x240)"),
        ({"point_prompts": [{"x": 320, "y": 10}]}, "point_prompts[0].x=320 is outside the frame (width 320"),
        ({"point_prompts": [{"x": 10, "y": 240}]}, "point_prompts[0].y=240 is outside the frame (height 240"),
        ({"point_prompts": [{"x": 10, "y": 10, "frame_index": 90}]}, "point_prompts[0].frame_index=90 is past the last frame (the video has 90 frames, indices 0..89)"),
        ({"box_prompts": [{"x_min": 0, "y_min": 0, "x_max": 5, "y_max": 5, "frame_index": 500}]}, "box_prompts[0].frame_index=500 is past the last frame"),
        ({"point_prompts": [{"x": 1, "y": 1, "object_id": 1}, {"x": 2, "y": 2, "label": 0, "object_id": 7}]}, "point_prompts[1].object_id=7 is unknown: no positive point or box defines it (known ids: [1])"),
        ({"prompt": "x", "point_prompts": [{"x": 2, "y": 2, "label": 0}]}, "point_prompts[0] is a negative point (label=0) without object_id"),
        ({"max_num_objects": 1, "box_prompts": [{"x_min": 0, "y_min": 0, "x_max": 5, "y_max": 5, "object_id": 1}, {"x_min": 0, "y_min": 0, "x_max": 5, "y_max": 5, "object_id": 2}]}, "max_num_objects=1 but the point/box prompts define 2 objects"),
    ],
)
def test_errors_against_the_video(fields: dict, expected: str) -> None:
    req = SegmentRequest.build(**fields)
    with pytest.raises(InvalidRequest) as info:
        req.check_against(VIDEO)
    assert expected in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    req = SegmentRequest.build(point_prompts=[{"x": 999, "y": 999, "frame_index": 999}])
    with pytest.raises(InvalidRequest) as info:
        req.check_against(VIDEO)
    assert len(info.value.problems) == 3


def test_valid_request_on_the_edges_passes() -> None:
    req = SegmentRequest.build(
        point_prompts=[{"x": 319, "y": 239, "frame_index": 89, "object_id": 3}, {"x": 0, "y": 0, "label": 0, "object_id": 3}],
        box_prompts=[{"x_min": 0, "y_min": 0, "x_max": 320, "y_max": 240, "frame_index": 0}],
    )
    req.check_against(VIDEO)
    assert req.visual_object_ids() == [3]


def test_frame_ranges() -> None:
    from sam_backend.types import FrameRange

    assert list(FrameRange(start=2, stop=9, step=3).indices(90)) == [2, 5, 8]
    assert FrameRange().is_whole(90) and not FrameRange(step=2).is_whole(90)
    # a stop past the end ends with the video, like a slice; a start past it holds nothing
    assert FrameRange(stop=200).problems(VIDEO) == [] and FrameRange(start=80, stop=200).indices(90) == range(80, 90)
    assert FrameRange(stop=200).runs_past_end(90) and not FrameRange(stop=90).runs_past_end(90)
    assert FrameRange(start=90).problems(VIDEO) == ["frames.start=90 is past the last frame (the video has 90 frames)"]
    req = SegmentRequest.build(point_prompts=[{"x": 1, "y": 1, "frame_index": 3}])
    req.check_against(VIDEO, FrameRange(start=3))
    with pytest.raises(InvalidRequest, match=r"point_prompts\[0\].frame_index=3 is not among the frames being processed"):
        req.check_against(VIDEO, FrameRange(start=0, step=2))
    with pytest.raises(ValueError):
        FrameRange(start=5, stop=5)
