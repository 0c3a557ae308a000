"""Drawing prompts in the App: prepare_prompt_fields, the prepare_prompts operator, and the
labels the Annotate tab saves turned into prompts. No browser here: the label documents
below have the shape FiftyOne 1.22.1's App was seen saving (scripts/verify_annotate_workflow.py
draws them in the real App)."""

from __future__ import annotations

from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from bson import ObjectId
from fiftyone.operators.executor import ExecutionContext, Executor

from operators.prepare_prompts import PreparePrompts
from sam_backend.errors import InvalidRequest
from sam_backend.fiftyone_io.annotate import prepare_prompt_fields
from sam_backend.fiftyone_io.prompts import prompts_from_field, prompts_from_fields
from sam_backend.types import BoxPrompt, PointPrompt, VideoInfo

ROOT = Path(__file__).resolve().parents[1]
INFO = VideoInfo(width=160, height=120, frame_count=48, fps=29.97, duration=1.6)
INDEX = {"name": "index", "type": "int", "component": "text"}


def test_prepare_creates_fields_schemas_and_keeps_other_fields(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0])
    ds.add_frame_field("gt", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    ds.reload()
    ds.set_label_schemas({"frames.gt": {"type": "detections", "component": "text", "attributes": []}})
    ds.app_config.active_fields = fo.ActiveFields(paths=["frames.gt"])
    ds.save()

    done = prepare_prompt_fields(ds, classes=["red ball", "blue box", "red ball", " "])

    assert done.created == ("frames.sam_boxes", "frames.sam_clicks") and done.metadata_computed == 1
    assert done.schemas_written == done.schemas_activated == ("frames.sam_boxes", "frames.sam_clicks")
    assert done.made_visible == ("frames.sam_boxes", "frames.sam_clicks")
    assert ds.get_frame_field_schema()["sam_boxes"].document_type is fo.Detections
    assert ds.get_frame_field_schema()["sam_clicks"].document_type is fo.Polylines
    assert ds.first().metadata.frame_width == 160
    assert ds.label_schemas == {
        "frames.gt": {"type": "detections", "component": "text", "attributes": []},
        "frames.sam_boxes": {"type": "detections", "component": "radio", "classes": ["red ball", "blue box"],
                             "attributes": [INDEX]},
        "frames.sam_clicks": {"type": "polylines", "component": "radio", "default": "pos",
                              "classes": ["pos", "neg", "red ball", "blue box"], "attributes": [INDEX]},
    }
    assert ds.active_label_schemas == ["frames.sam_boxes", "frames.sam_clicks"]  # gt's was never active
    assert ds.app_config.active_fields.paths == ["frames.gt", "frames.sam_boxes", "frames.sam_clicks"]

    again = prepare_prompt_fields(ds, classes=["red ball", "blue box"])
    assert not again.changed and "already ready" in again.summary()


def test_without_names_the_box_class_is_free_text_and_app_defaults_stay(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0])
    done = prepare_prompt_fields(ds, boxes_field="frames.boxes", clicks_field="clicks")
    assert (done.boxes_field, done.clicks_field) == ("frames.boxes", "frames.clicks")
    assert ds.label_schemas["frames.boxes"] == {"type": "detections", "component": "text", "attributes": [INDEX]}
    assert ds.label_schemas["frames.clicks"]["classes"] == ["pos", "neg"]
    assert ds.app_config.active_fields is None and done.made_visible == ()  # App default shows every label field

    ds.app_config.active_fields = fo.ActiveFields(exclude=True, paths=["frames.boxes", "frames.other"])
    ds.save()
    named = prepare_prompt_fields(ds, boxes_field="boxes", clicks_field="clicks", classes=["dog"])
    assert named.schemas_written == ("frames.boxes", "frames.clicks") and named.created == ()
    assert named.made_visible == ("frames.boxes",)
    assert ds.app_config.active_fields.paths == ["frames.other"]


def test_refuses_conflicting_or_bad_fields_and_changes_nothing(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0])
    ds.add_frame_field("sam_boxes", fo.EmbeddedDocumentField, embedded_doc_type=fo.Keypoints)
    with pytest.raises(InvalidRequest, match=r"frames\.sam_boxes already exists as .*Keypoints.*not Detections"):
        prepare_prompt_fields(ds)
    with pytest.raises(InvalidRequest, match="two different fields"):
        prepare_prompt_fields(ds, boxes_field="same", clicks_field="frames.same")
    with pytest.raises(InvalidRequest, match="plain frame field name"):
        prepare_prompt_fields(ds, boxes_field="a.b", clicks_field="c")
    assert not ds.has_frame_field("sam_clicks") and ds.label_schemas == {}
    assert ds.first().metadata is None

    images = fo.Dataset()
    images.add_sample(fo.Sample(filepath="/nonexistent/frame.png"))
    with pytest.raises(InvalidRequest, match="image samples; prompt fields are for videos"):
        prepare_prompt_fields(images)
    images.delete()


def _drawn(ds: fo.Dataset) -> fo.Sample:
    """Labels as a user draws them: boxes with a class (and an index when two objects share
    one), polylines whose vertices are clicks, "pos"/"neg" or the object's name."""
    prepare_prompt_fields(ds, classes=["player", "ball"])
    s = ds.first()
    s.frames[1]["sam_boxes"] = fo.Detections(detections=[
        fo.Detection(label="player", bounding_box=[0.1, 0.2, 0.25, 0.5], index=4),
        fo.Detection(label="player", bounding_box=[0.5, 0.25, 0.25, 0.5], index=5),
    ])
    ball = fo.Detection(label="ball", bounding_box=[0.5, 0.5, 0.125, 0.25])
    s.frames[20]["sam_boxes"] = fo.Detections(detections=[ball])
    s.frames[30]["sam_clicks"] = fo.Polylines(polylines=[
        fo.Polyline(label="pos", points=[[[0.25, 0.25], [0.3125, 0.5]]], index=4),
        fo.Polyline(label="neg", points=[[[0.75, 0.75]]], index=4),
    ])
    s.save()
    return s


def test_drawn_labels_become_exact_prompts(make_dataset, small_video) -> None:
    s = _drawn(make_dataset(small_video[0]))
    boxes = prompts_from_field(s, "frames.sam_boxes", INFO)
    assert boxes.box_prompts == [
        BoxPrompt(x_min=16, y_min=24, x_max=56, y_max=84, object_id=4, frame_index=0),
        BoxPrompt(x_min=80, y_min=30, x_max=120, y_max=90, object_id=5, frame_index=0),
        BoxPrompt(x_min=80, y_min=60, x_max=100, y_max=90, object_id=6, frame_index=19),
    ]
    assert boxes.names == {4: "player", 5: "player", 6: "ball"}
    clicks = prompts_from_field(s, "sam_clicks", INFO)
    assert clicks.point_prompts == [
        PointPrompt(x=40, y=30, label=1, object_id=4, frame_index=29),
        PointPrompt(x=50, y=60, label=1, object_id=4, frame_index=29),
        PointPrompt(x=120, y=90, label=0, object_id=4, frame_index=29),
    ]


def _as_the_app_saves(label: fo.Label, instance: str, keyframe: bool) -> fo.Label:
    label["instance"] = fo.Instance(id=instance)
    label["keyframe"] = keyframe
    return label


def _app_box(instance: str, keyframe: bool) -> fo.Detections:
    box = fo.Detection(label="ball", bounding_box=[0.25, 0.25, 0.25, 0.5])
    return fo.Detections(detections=[_as_the_app_saves(box, instance, keyframe)])


def _app_click(instance: str, keyframe: bool, x: float, y: float) -> fo.Polyline:
    return _as_the_app_saves(fo.Polyline(label="pos", points=[[[x, y]]]), instance, keyframe)


def test_labels_saved_by_the_app_become_prompts_on_their_keyframes_only(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0])
    prepare_prompt_fields(ds)
    s = ds.first()
    ball, pos_a, pos_b = (str(ObjectId()) for _ in range(3))
    s.frames[10]["sam_boxes"] = _app_box(ball, keyframe=True)
    for n in range(11, 41):  # the App copies a drawn label to the next 30 frames to start a track
        s.frames[n]["sam_boxes"] = _app_box(ball, keyframe=False)
    s.frames[5]["sam_clicks"] = fo.Polylines(polylines=[_app_click(pos_a, True, 0.5, 0.5), _app_click(pos_b, True, 0.125, 0.25)])
    s.frames[6]["sam_clicks"] = fo.Polylines(polylines=[_app_click(pos_a, False, 0.5, 0.5)])
    s.save()

    boxes = prompts_from_field(s, "sam_boxes", INFO)
    assert boxes.box_prompts == [BoxPrompt(x_min=40, y_min=30, x_max=80, y_max=90, object_id=1, frame_index=9)]
    clicks = prompts_from_field(s, "sam_clicks", INFO)
    assert clicks.point_prompts == [  # two drawings of "pos": two objects
        PointPrompt(x=80, y=60, label=1, object_id=1, frame_index=4),
        PointPrompt(x=20, y=30, label=1, object_id=2, frame_index=4),
    ]


def _context(ds: fo.Dataset, params: dict, **request: object) -> ExecutionContext:
    return ExecutionContext(request_params={"dataset_name": ds.name, "view": [], "params": params, **request},
                            executor=Executor())


def test_operator_prepares_and_opens_the_annotate_tab(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    op = PreparePrompts()
    assert (op.config.name, op.config.label) == ("prepare_prompts", "Prepare SAM prompt fields for drawing")
    ctx = _context(ds, {"classes": "player, ball", "boxes_field": "", "open_annotate": True})
    result = op.execute(ctx)

    assert result["created"] == ("frames.sam_boxes", "frames.sam_clicks") and result["changed"]
    assert ds.label_schemas["frames.sam_boxes"]["classes"] == ["player", "ball"]
    triggered = [(r["operator_uri"], r["params"]) for r in ctx.executor.to_json()["requests"]]
    assert [name for name, _ in triggered] == ["reload_dataset", "notify", "annotate"]
    assert triggered[2][1] == {"id": ds.first().id, "field_path": "frames.sam_boxes"}
    assert "reload the page" in triggered[1][1]["message"]

    ctx = _context(ds, {"classes": "player, ball", "open_annotate": False}, current_sample=ds.first().id)
    assert op.execute(ctx)["changed"] is False
    assert [r["operator_uri"] for r in ctx.executor.to_json()["requests"]] == ["reload_dataset", "notify"]


def test_operator_form_marks_a_conflicting_field(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    ds.add_frame_field("taken", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    props = PreparePrompts().resolve_input(_context(ds, {"clicks_field": "taken"})).type.properties
    assert {"how_to", "boxes_field", "clicks_field", "classes", "open_annotate"} <= set(props)
    assert props["clicks_field"].invalid and "not Polylines" in props["clicks_field"].error_message
    assert not props["boxes_field"].invalid


def test_sdk_call_through_the_registered_operator(make_dataset, small_video) -> None:
    assert "prepare_prompts" in (ROOT / "fiftyone.yml").read_text(), "prepare_prompts is not listed in fiftyone.yml"
    ds = make_dataset(small_video[0])
    result = foo.get_operator("@sam31/video/prepare_prompts")(ds, classes=["ball"]).result
    assert list(result["created"]) == ["frames.sam_boxes", "frames.sam_clicks"]
    assert ds.label_schemas["frames.sam_boxes"]["classes"] == ["ball"]


def test_boxes_and_clicks_share_one_id_space(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0])
    prepare_prompt_fields(ds)
    s = ds.first()
    s.frames[10]["sam_boxes"] = _app_box(str(ObjectId()), keyframe=True)
    s.frames[11]["sam_boxes"] = _app_box(str(ObjectId()), keyframe=False)
    s.frames[5]["sam_clicks"] = fo.Polylines(polylines=[_app_click(str(ObjectId()), True, 0.5, 0.5)])
    s.save()
    p = prompts_from_fields(s, ["sam_boxes", "frames.sam_clicks"], INFO)
    assert p.box_prompts == [BoxPrompt(x_min=40, y_min=30, x_max=80, y_max=90, object_id=1, frame_index=9)]
    assert p.point_prompts == [PointPrompt(x=80, y=60, label=1, object_id=2, frame_index=4)]
