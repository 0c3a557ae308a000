"""fal's RLE strings, the endpoint table, the request planner and the decoders for exactly
the shapes in ../shared/reference/fal-sam3-endpoints.md. Pure logic: no network."""

from __future__ import annotations

import numpy as np
import pytest

from sam_backend.backends.fal import endpoints as table
from sam_backend.backends.fal import rle
from sam_backend.backends.fal.decoders import NoLabelsInResponse, decode_result, frames_together
from sam_backend.backends.fal.planner import instance_ids, plan
from sam_backend.errors import InvalidRequest, UnexpectedResponse
from sam_backend.types import SegmentRequest

ROW1 = rle.RleLayout()


def box(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------- RLE strings


def test_public_sample_decodes_to_horizontal_spans() -> None:
    """S6: a real 1080x1920 (portrait) answer began like this; its starts sit one frame
    width apart, so row-major reads them as spans on consecutive rows of one blob."""
    sample = "393654 12 394733 14 395800 34 396878 42"
    row = rle.decode(sample, 1920, 1080, ROW1)
    ys, xs = np.nonzero(row)
    assert sorted(set(ys.tolist())) == [364, 365, 366, 367]  # four runs, four consecutive rows
    assert [int(row[y].sum()) for y in (364, 365, 366, 367)] == [12, 14, 34, 42]
    assert xs.min() >= 500 and xs.max() < 580  # one compact blob
    column = rle.decode(sample, 1920, 1080, rle.RleLayout(order="column"))
    cys, cxs = np.nonzero(column)
    assert cys.max() - cys.min() > 1000  # column-major scatters the same runs over the frame


@pytest.mark.parametrize("layout", rle.ALL_LAYOUTS, ids=lambda l: l.key)
def test_every_layout_round_trips_and_differs(layout: rle.RleLayout) -> None:
    m = box(5, 7, 1, 2, 4, 5) | box(5, 7, 6, 0, 7, 1)
    text = rle.encode(m, layout)
    assert (rle.decode(text, 5, 7, layout) == m).all()
    others = [l for l in rle.ALL_LAYOUTS if l != layout]
    assert all(rle.encode(m, o) != text for o in others)


@pytest.mark.parametrize(("text", "message"), [
    ("1 2 3", "odd number"),
    ("5 3 2 2", "backwards or overlaps"),
    ("1 4 3 2", "backwards or overlaps"),
    ("30 2", "ends at pixel 31"),
    ("0 3", "before the first pixel"),  # 1-based: 0 is not a pixel
    ("2 0", "length 0"),
    ("1 x", "not an integer"),
])
def test_strict_decoding(text: str, message: str) -> None:
    with pytest.raises(rle.RleFormatError, match=message):
        rle.decode(text, 5, 6, ROW1)


def test_empty_string_is_an_empty_mask_and_layouts_parse() -> None:
    assert not rle.decode("", 3, 4).any()
    assert rle.RleLayout.parse("col0") == rle.RleLayout(order="column", base=0)
    with pytest.raises(ValueError, match="row1, row0"):
        rle.RleLayout.parse("diagonal1")


# --------------------------------------------------------------------------- endpoint table


def test_bodies_carry_only_what_each_endpoint_takes() -> None:
    fields = {"prompt": "dog", "detection_threshold": 0.3, "max_num_objects": 5, "apply_mask": False,
              "point_prompts": [], "box_prompts": []}
    objects = table.build_body(table.endpoint(table.SAM3_VIDEO_RLE_OBJECTS), "u", **fields)
    assert objects == {"video_url": "u", "prompt": "dog", "detection_threshold": 0.3}
    sam3 = table.build_body(table.endpoint(table.SAM3_VIDEO_RLE), "u", **fields)
    assert sam3["return_rle"] is True and "video_output_type" not in sam3  # RLE only when asked (S3)
    sam31 = table.build_body(table.endpoint(table.SAM31_VIDEO_RLE), "u", **fields)
    assert sam31 == {"video_url": "u", "prompt": "dog", "detection_threshold": 0.3, "max_num_objects": 5,
                     "apply_mask": False}


def test_prompts_an_endpoint_cannot_take_are_refused_naming_it() -> None:
    seed = table.endpoint(table.SAM31_VIDEO)
    with pytest.raises(InvalidRequest, match=r"point_prompts\[0\]\.frame_index=7: fal-ai/sam-3-1/video takes prompts on frame 0"):
        table.build_body(seed, "u", point_prompts=[{"x": 1, "y": 2, "label": 1, "frame_index": 7}])
    body = table.build_body(seed, "u", point_prompts=[{"x": 1, "y": 2, "label": 1, "frame_index": 0}])
    assert body["point_prompts"] == [{"x": 1, "y": 2, "label": 1}]  # PointPromptBase has no frame_index (S1)
    objects = table.endpoint(table.SAM3_VIDEO_RLE_OBJECTS)
    with pytest.raises(InvalidRequest, match="takes one concept per request"):
        table.build_body(objects, "u", prompt="a, b")
    with pytest.raises(InvalidRequest, match="takes no point or box prompts"):
        table.build_body(objects, "u", prompt="a", box_prompts=[{"x_min": 0, "y_min": 0, "x_max": 2, "y_max": 3}])
    with pytest.raises(InvalidRequest, match="below fal-ai/sam-3-1/video-rle's minimum 0.01"):
        table.build_body(table.endpoint(table.SAM31_VIDEO_RLE), "u", prompt="a", detection_threshold=0.0)


# --------------------------------------------------------------------------- planner

CHAIN = {"fal-ai/sam-3-1/video-rle": "fal-ai/sam-3/video-rle"}


def test_plan_one_request_per_object_and_per_concept() -> None:
    request = SegmentRequest.build(
        prompt="person, dog", detection_threshold=0.35, max_num_objects=9,
        point_prompts=[{"x": 5, "y": 6, "object_id": 4, "frame_index": 3}, {"x": 9, "y": 2},
                       {"x": 1, "y": 1, "label": 0, "object_id": 4, "frame_index": 3}],
        box_prompts=[{"x_min": 1, "y_min": 2, "x_max": 8, "y_max": 5, "frame_index": 2}],
    )
    planned = plan(request, visual_endpoint=table.SAM31_VIDEO_RLE, objects_endpoints=[table.SAM3_VIDEO_RLE_OBJECTS],
                   text_mode="instances", fallbacks=CHAIN)
    assert [(p.key, p.track_id, p.label) for p in planned] == [
        ("object:1", 1, "object_1"), ("object:2", 2, "object_2"), ("object:4", 4, "object_4"),
        ("concept:0", None, "person"), ("concept:1", None, "dog")]
    four = planned[2].fields
    assert [p["label"] for p in four["point_prompts"]] == [1, 0]  # its negative click travels with it
    assert four["box_prompts"] == [] and four["max_num_objects"] == 9 and four["detection_threshold"] == 0.35
    assert planned[1].fields["box_prompts"][0]["object_id"] == 2  # the id-less box got the next free id
    assert planned[0].endpoints == (table.SAM31_VIDEO_RLE, table.SAM3_VIDEO_RLE)
    assert planned[3].endpoints == (table.SAM3_VIDEO_RLE_OBJECTS,) and planned[3].max_tracks == 9
    assert planned[3].fields == {"detection_threshold": 0.35, "prompt": "person"}

    union = plan(request, visual_endpoint=table.SAM31_VIDEO_RLE, objects_endpoints=[table.SAM3_VIDEO_RLE_OBJECTS],
                 text_mode="union", fallbacks=CHAIN)
    assert [(p.key, p.kind, p.track_id) for p in union[3:]] == [("concept:0", "concept_union", 3),
                                                                  ("concept:1", "concept_union", 5)]


def test_instance_ids_are_unique_across_concepts_and_skip_visual_ids() -> None:
    assert instance_ids([2, 3], [[7, 0, 3], [0, 1]]) == [{0: 1, 3: 4, 7: 5}, {0: 6, 1: 7}]


# --------------------------------------------------------------------------- decoders

UNION = table.endpoint(table.SAM31_VIDEO_RLE)
OBJECTS = table.endpoint(table.SAM3_VIDEO_RLE_OBJECTS)


def decode(payload: dict, spec: table.Endpoint = UNION, frames: int = 3, attachments: dict | None = None):
    return decode_result({"payload": payload, "attachments": attachments or {}}, spec, layout=ROW1, frame_count=frames,
                         height=4, width=6, request_id="req-9")


def test_union_rle_list_with_empty_frames_and_scores() -> None:
    a, b = box(4, 6, 1, 0, 3, 2), box(4, 6, 0, 3, 6, 4)
    d = decode({"rle": [rle.encode(a), None, rle.encode(b)],
                "metadata": [{"index": 0, "score": 0.7, "box": [0, 0, 0, 0]}, None, {"index": 0, "score": 0.4}],
                "boxes": [], "scores": None})
    assert [len(d.frame(i)) for i in range(3)] == [1, 0, 1]
    assert (d.frame(0)[0].mask == a).all() and (d.frame(2)[0].mask == b).all()
    assert d.frame(0)[0].score == 0.7 and d.frame(0)[0].fal_track_id is None
    assert len(decode({"rle": ["", "", ""]}).frame(1)) == 0


def test_union_rle_shape_errors_name_request_and_frame() -> None:
    with pytest.raises(UnexpectedResponse, match="req-9: 'rle' has 2 entries but the video sent has 3 frames"):
        decode({"rle": ["1 2", "1 2"]})
    with pytest.raises(UnexpectedResponse, match="one string but the video sent has 3 frames"):
        decode({"rle": "1 2"})
    assert len(decode({"rle": "1 2"}, frames=1).frame(0)) == 1
    with pytest.raises(UnexpectedResponse, match="req-9, frame 1, the mask: unreadable RLE: .*ends at pixel 30"):
        decode({"rle": ["1 2", "20 11", None]}).frame(1)


def test_rle_file_is_read_from_its_download() -> None:
    a = box(4, 6, 2, 1, 4, 3)
    d = decode({"rle": {"url": "https://cdn/rle.json"}}, attachments={"rle": [None, rle.encode(a), None]})
    assert (d.frame(1)[0].mask == a).all()
    with pytest.raises(UnexpectedResponse, match="was not downloaded"):
        decode({"rle": {"url": "https://cdn/rle.json"}})


def test_objects_payload_keeps_track_ids_and_checks_the_video() -> None:
    a, b = box(4, 6, 0, 0, 2, 2), box(4, 6, 3, 1, 6, 4)
    payload = {"frames": [{"frame_index": 0, "objects": [{"track_id": 5, "rle": rle.encode(a)}]},
                          {"frame_index": 2, "objects": [{"track_id": 0, "rle": rle.encode(b)},
                                                          {"track_id": 5, "rle": rle.encode(a)}]}],
               "width": 6, "height": 4, "num_frames": 3}
    d = decode(payload, OBJECTS)
    assert d.track_ids() == [0, 5]
    assert [fm.fal_track_id for fm in d.frame(2)] == [0, 5] and d.frame(1) == []
    for key, value, msg in (("width", 8, "width=8 but the video sent has width=6"),
                            ("num_frames", 4, "num_frames=4 but the video sent has num_frames=3")):
        with pytest.raises(UnexpectedResponse, match=msg):
            decode({**payload, key: value}, OBJECTS)
    dup = {**payload, "frames": [{"frame_index": 1, "objects": [{"track_id": 2, "rle": "1 1"}, {"track_id": 2, "rle": "3 1"}]}]}
    with pytest.raises(UnexpectedResponse, match="frame 1: track 2 appears twice"):
        decode(dup, OBJECTS)
    with pytest.raises(UnexpectedResponse, match="track_id -1 is not an id"):
        decode({**payload, "frames": [{"frame_index": 0, "objects": [{"track_id": -1, "rle": "1 1"}]}]}, OBJECTS)
    with pytest.raises(UnexpectedResponse, match="frame_index 3 is outside"):
        decode({**payload, "frames": [{"frame_index": 3, "objects": []}]}, OBJECTS)


def test_answers_read_together_keep_each_mask_with_its_own_answer() -> None:
    """merge() reads a video's answers side by side and decodes the masks of one frame
    of all of them in one batch: every crop must still land in its own answer with its
    own score, and an unreadable mask must name its own request."""
    boxes = {  # (answer, frame) -> boxes on that frame (x0, y0, x1, y1)
        (0, 0): [(0, 0, 2, 1)], (0, 1): [(1, 1, 3, 3)], (0, 2): [(4, 2, 6, 4)],
        (1, 0): [(3, 0, 5, 2)], (1, 1): [], (1, 2): [(0, 3, 2, 4)],
        (2, 0): [(2, 2, 3, 4), (5, 0, 6, 1)], (2, 1): [(0, 0, 1, 1)], (2, 2): [],
    }
    def union(k: int, scores: list[float]) -> dict:
        return {"rle": [rle.encode(box(4, 6, *boxes[k, f][0])) if boxes[k, f] else None for f in range(3)],
                "metadata": [{"index": 0, "score": s} for s in scores]}
    objects = {"frames": [{"frame_index": f, "objects": [{"track_id": 7 + j, "rle": rle.encode(box(4, 6, *b))}
                                                          for j, b in enumerate(boxes[2, f])]} for f in range(3)],
               "width": 6, "height": 4, "num_frames": 3}
    args = dict(layout=ROW1, frame_count=3, height=4, width=6)
    answers = [decode_result({"payload": union(0, [0.9, 0.8, 0.7])}, UNION, request_id="req-a", **args),
               decode_result({"payload": union(1, [0.2, 0.3, 0.4])}, UNION, request_id="req-b", **args),
               decode_result({"payload": objects}, OBJECTS, request_id="req-c", **args)]
    got = list(frames_together(answers, 3))
    assert len(got) == 3
    for f, per_answer in enumerate(got):
        for k, masks in enumerate(per_answer):
            assert [cm.box for cm in masks] == boxes[k, f], (f, k)
            assert all(cm.crop.all() for cm in masks)  # boxes decode to full crops
            expected_score = [[0.9, 0.8, 0.7], [0.2, 0.3, 0.4], [None] * 3][k][f]
            assert all(cm.score == expected_score for cm in masks)
        assert [cm.fal_track_id for cm in per_answer[2]] == [7 + j for j in range(len(boxes[2, f]))]
    bad = union(1, [0.2, 0.3, 0.4])
    bad["rle"][1] = "20 11"
    answers[1] = decode_result({"payload": bad}, UNION, request_id="req-b", **args)
    with pytest.raises(UnexpectedResponse, match="req-b, frame 1, the mask: unreadable RLE"):
        list(frames_together(answers, 3))


def test_video_only_answers_keep_the_files_and_explain() -> None:
    payload = {"video": {"url": "https://cdn/v.mp4"}, "boundingbox_frames_zip": {"url": "https://cdn/b.zip"}}
    with pytest.raises(NoLabelsInResponse, match="labels need an RLE endpoint") as info:
        decode(payload, table.endpoint(table.SAM31_VIDEO))
    assert info.value.files == {"video": "https://cdn/v.mp4", "boundingbox_frames_zip": "https://cdn/b.zip"}
    with pytest.raises(NoLabelsInResponse, match="only with return_rle=true"):
        decode({"video": {"url": "https://cdn/v.mp4"}}, table.endpoint(table.SAM3_VIDEO_RLE))
