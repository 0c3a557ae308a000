"""The segment_video operator: registered from fiftyone.yml, its form, and execution from
the SDK and over the real App server's HTTP API, against the emulator."""

from __future__ import annotations

import json

import fiftyone as fo
import fiftyone.operators as foo
import httpx
import pytest

from sam_backend.errors import InvalidRequest

URI = "@sam31/video/segment_video"


def _labels(ds, field: str) -> set[str]:
    return {d.label for f in ds.first().frames.values() if f[field] for d in f[field].detections}


def test_plugin_is_registered_and_loads_without_errors(app_server: str) -> None:
    listing = httpx.post(f"{app_server}/operators", json={"dataset_name": None}, timeout=30).json()
    uris = {op["uri"] for op in listing["operators"]}
    assert URI in uris
    assert not [e for e in listing.get("errors", {}) if "sam31" in str(e)]


def test_sdk_call_runs_the_operator(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0])
    foo.get_operator(URI)(ds.view(), "red ball", backend="emulator", label_field="op")
    assert _labels(ds, "op") == {"red ball"}
    assert ds.get_field("frames.op").info["sam31_video"]["backend"] == "emulator"
    # fal's options reach the emulator too (it is the fal backend on loopback): were dropped
    foo.get_operator(URI)(ds.view(), "red ball", backend="emulator", label_field="union", text_mode="union")
    assert {r["endpoint"] for r in ds.get_field("frames.union").info["sam31_video"]["samples"].values()} == {
        "fal-ai/sam-3-1/video-rle"}
    with pytest.raises(InvalidRequest, match="segment_video has no parameter label_feild; it takes .*label_field"):
        foo.get_operator(URI)(ds.view(), "red ball", backend="emulator", label_feild="mine")
    assert not ds.has_frame_field("sam")


def test_form_shows_fields_and_warns_about_overwrite(make_dataset, small_video, app_server: str) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    body = {"operator_uri": URI, "dataset_name": ds.name, "view": [], "target": "inputs",
            "params": {"backend": "fal", "label_field": "sam"}}
    props = httpx.post(f"{app_server}/operators/resolve-type", json=body, timeout=30).json()["type"]["properties"]
    assert {"prompt", "backend", "label_field", "detection_threshold", "max_num_objects"} <= set(props)
    assert "no_key" in props  # FAL_KEY is not set in tests
    assert props["detection_threshold"]["type"]["min"] == 0.01  # fal's endpoints refuse less
    for bad, says in (("x$", "cannot contain '$'"), ("frames.sam2", "plain frame field name")):
        flagged = {**body, "params": {**body["params"], "label_field": bad}}
        field = httpx.post(f"{app_server}/operators/resolve-type", json=flagged, timeout=30).json()["type"]["properties"]
        assert field["label_field"]["invalid"] and says in field["label_field"]["error_message"]  # before Execute
    # a view without a label field of the dataset: the form counted it and answered a traceback
    ds.add_frame_field("gt", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    hidden = {**body, "view": [{"_cls": "fiftyone.core.stages.ExcludeFields",
                                "kwargs": [["field_names", ["frames.gt"]], ["_allow_missing", False]]}]}
    answer = httpx.post(f"{app_server}/operators/resolve-type", json=hidden, timeout=30).json()
    assert "detection_threshold" in answer["type"]["properties"], answer
    local = {**body, "params": {**body["params"], "backend": "local"}}
    local_props = httpx.post(f"{app_server}/operators/resolve-type", json=local, timeout=30).json()["type"]["properties"]
    assert local_props["detection_threshold"]["type"]["min"] == 0.0
    assert "replace_note" not in props and "overwrite" not in props
    ds.add_frame_field("sam", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    props = httpx.post(f"{app_server}/operators/resolve-type", json=body, timeout=30).json()["type"]["properties"]
    assert "replace_note" in props and "overwrite" not in props  # an empty field: nothing of the user's to lose
    sample = ds.first()
    sample.frames[2]["sam"] = fo.Detections(detections=[fo.Detection(label="hand", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    sample.save()
    props = httpx.post(f"{app_server}/operators/resolve-type", json=body, timeout=30).json()["type"]["properties"]
    assert "labels on 1 frame that sam31-video did not write" in json.dumps(props["replace_note"])
    assert props["overwrite"]["type"]["name"] == "Boolean"


def test_execute_over_http_streams_progress_and_writes_labels(make_dataset, small_video, app_server: str) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    body = {"operator_uri": URI, "dataset_name": ds.name, "view": [],
            "params": {"prompt": "green ball, red ball", "backend": "emulator", "label_field": "app"}}
    with httpx.stream("POST", f"{app_server}/operators/execute/generator", json=body, timeout=120) as response:
        assert response.status_code == 200
        messages = [json.loads(line) for line in response.iter_lines() if line.strip()]
    triggered = [(m["body"]["operator_uri"], m["body"].get("params") or {}) for m in messages if m.get("cls") == "InvocationRequest"]
    names = [name for name, _ in triggered]
    assert "set_progress" in names and names[-2:] == ["reload_dataset", "notify"]
    stages = [p["label"] for name, p in triggered if name == "set_progress"]
    assert any("queued" in s for s in stages) and any("decode" in s for s in stages)
    last = [p for name, p in triggered if name == "set_progress"][-1]  # it stopped at 0/1 before
    assert (last["label"], last["progress"]) == ("1/1 videos done", 1.0)
    assert "2 tracks in frames.app" in triggered[-1][1]["message"]
    ds.reload()
    assert _labels(ds, "app") == {"green ball", "red ball"}


def test_bad_input_is_shown_in_the_form_and_blocks_execution(make_dataset, small_video, app_server: str) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    body = {"operator_uri": URI, "dataset_name": ds.name, "view": [],
            "params": {"prompt": "red,,ball", "backend": "emulator", "label_field": "bad"}}
    form = httpx.post(f"{app_server}/operators/resolve-type", json=body | {"target": "inputs"}, timeout=30).json()
    prompt = form["type"]["properties"]["prompt"]
    assert prompt["invalid"] and "'red,,ball' has an empty concept" in prompt["error_message"]
    response = httpx.post(f"{app_server}/operators/execute/generator", json=body, timeout=60)
    assert "Validation error. Path: prompt" in response.text and "empty concept" in response.text
    ds.reload()
    assert not ds.has_frame_field("bad")


def test_run_time_errors_are_notified_in_the_app(make_dataset, small_video, app_server: str) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    body = {"operator_uri": URI, "dataset_name": ds.name, "view": [],
            "params": {"prompt": "red ball", "backend": "fal", "label_field": "nokey"}}
    lines = []
    with httpx.stream("POST", f"{app_server}/operators/execute/generator", json=body, timeout=60) as response:
        try:
            lines.extend(response.iter_lines())
        except httpx.HTTPError:
            pass  # the stream ends with the operator's error right after the notification
    notices = [json.loads(line)["body"]["params"] for line in lines if '"notify"' in line]
    assert notices and notices[0]["variant"] == "error" and "FAL_KEY is not set" in notices[0]["message"]
    ds.reload()
    assert not ds.has_frame_field("nokey")


@pytest.mark.parametrize("delegate", [True])
def test_delegated_run_is_queued_then_executed(make_dataset, small_video, delegate: bool) -> None:
    from fiftyone.operators.delegated import DelegatedOperationService

    ds = make_dataset(small_video[0], persistent=True)
    result = foo.get_operator(URI)(ds.view(), "blue box", backend="emulator", label_field="queued", delegate=delegate)
    assert result.delegated
    assert not ds.has_frame_field("queued")
    DelegatedOperationService().execute_queued_operations(dataset_name=ds.name, operator=URI)
    ds.reload()
    assert _labels(ds, "queued") == {"blue box"}


def test_refine_from_the_app_reruns_the_selected_labels_video_only(make_dataset, small_video, app_server: str) -> None:
    """The App targets the whole dataset; a refine there re-ran (and on fal billed) the
    track id on every video, or failed on those without it on that frame."""
    from sam_backend.fiftyone_io import segment_videos

    ds = make_dataset(small_video[0], small_video[0], persistent=True)
    segment_videos(ds, prompt="red ball", label_field="app", backend="emulator")
    second = ds.skip(1).first()
    number = next(n for n, f in second.frames.items() if f["app"] and f["app"].detections)
    label = second.frames[number]["app"].detections[0]
    selected = [{"label_id": label.id, "sample_id": second.id, "field": "frames.app", "frame_number": number}]
    body = {"operator_uri": URI, "dataset_name": ds.name, "view": [], "selected_labels": selected,
            "params": {"backend": "emulator", "label_field": "app", "refine": True, "prompt_fields": []}}
    with httpx.stream("POST", f"{app_server}/operators/execute/generator", json=body, timeout=120) as response:
        messages = [json.loads(line) for line in response.iter_lines() if line.strip()]
    notes = [m["body"]["params"]["message"] for m in messages
             if m.get("cls") == "InvocationRequest" and m["body"]["operator_uri"].endswith("notify")]
    assert notes and "1/1 videos" in notes[-1], notes
    ds.reload()
    runs = ds.get_field("frames.app").info["sam31_video"]["samples"]
    assert [sid for sid, record in runs.items() if record.get("refines")] == [second.id]
