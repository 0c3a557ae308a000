"""segment_video through the real App server: delegated runs, preview, refine from the App
selection, the cost line, and cancel (immediate and delegated) leaving the field as it was."""

from __future__ import annotations

import json
import threading
import time

import fiftyone as fo
import fiftyone.operators as foo
import httpx
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState

URI = "@sam31/video/segment_video"


def _labels(ds: fo.Dataset, field: str) -> set[str]:
    ds.reload()
    return {d.label for s in ds for f in s.frames.values() if f.has_field(field) and f[field] for d in f[field].detections}


def _execute(app_server: str, ds: fo.Dataset, params: dict, **extra) -> list[dict]:
    body = {"operator_uri": URI, "dataset_name": ds.name, "view": [], "params": params, **extra}
    with httpx.stream("POST", f"{app_server}/operators/execute/generator", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line)["body"] for line in response.iter_lines() if line.strip()]


def test_delegated_over_http_is_queued_then_run(make_dataset, small_video, app_server: str) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    body = {"operator_uri": URI, "dataset_name": ds.name, "view": [], "request_delegation": True,
            "params": {"prompt": "green ball", "backend": "emulator", "label_field": "bg"}}
    answer = httpx.post(f"{app_server}/operators/execute", json=body, timeout=60).json()
    assert answer["error"] is None and answer["delegated"] is True
    assert not fo.load_dataset(ds.name).has_frame_field("bg")
    DelegatedOperationService().execute_queued_operations(dataset_name=ds.name, operator=URI)
    assert _labels(ds, "bg") == {"green ball"}


def test_cost_line_and_backend_options_in_the_form(make_dataset, small_video, app_server: str) -> None:
    ds = make_dataset(small_video[0], small_video[0], persistent=True)
    ds.compute_metadata()

    def form(params: dict) -> dict:
        body = {"operator_uri": URI, "dataset_name": ds.name, "view": [], "target": "inputs", "params": params}
        return httpx.post(f"{app_server}/operators/resolve-type", json=body, timeout=30).json()["type"]["properties"]

    fal = form({"backend": "fal", "prompt": "ball, box"})
    # 2 videos x 48 frames x 2 concepts = 2 x 2 x 3 blocks of 16 at $0.005 (SAM 3's objects endpoint)
    assert fal["cost"]["view"]["label"] == ("Cost: 2 video(s), 96 frames on fal: about $0.06 (2 request(s) x 48 frames: "
                                            "2 on fal-ai/sam-3/video-rle-objects (no published price for "
                                            "fal-ai/sam-3/video-rle-objects: assumed) per video)")
    assert "endpoint" in fal and "text_mode" in fal and "engine" not in fal
    union = form({"backend": "fal", "prompt": "ball, box", "text_mode": "union",
                  "point_prompts": [{"x": 3, "y": 4, "object_id": 2}]})
    # 3 requests on SAM 3.1 (the click's object + 2 concepts) x 2 videos x 3 blocks x $0.01
    assert "about $0.18" in union["cost"]["view"]["label"] and "3 on fal-ai/sam-3-1/video-rle" in union["cost"]["view"]["label"]
    trimmed = form({"backend": "fal", "prompt": "ball", "frame_start": 0, "frame_stop": 16})
    assert "32 frames" in trimmed["cost"]["view"]["label"] and "$0.01" in trimmed["cost"]["view"]["label"]
    assert "not counted" not in fal["cost"]["view"]["label"]
    fields = form({"backend": "fal", "prompt": "ball", "prompt_fields": ["hints"]})  # was priced as the text alone
    assert "not counted: prompts read from labels" in fields["cost"]["view"]["label"]
    local = form({"backend": "local", "prompt": "ball"})
    assert {"engine", "checkpoint", "device", "chunk_size", "offload"} <= set(local) and "endpoint" not in local
    assert "model" not in local and "max_usd" not in local  # sam3.1 reads no model; no fee to cap
    hf = form({"backend": "local", "engine": "transformers", "prompt": "ball"})
    assert "model" in hf and "checkpoint" not in hf  # each engine shows only the option it reads
    assert "max_usd" in fal
    assert "no fee" in local["cost"]["view"]["label"] and "no_key" not in local


def test_preview_runs_the_first_frames_of_one_video(make_dataset, small_video, app_server: str) -> None:
    ds = make_dataset(small_video[0], small_video[0], persistent=True)
    messages = _execute(app_server, ds, {"prompt": "red ball", "backend": "emulator", "label_field": "sam",
                                         "preview_frames": 10})
    opened = [m["params"] for m in messages if m["operator_uri"] == "open_sample"]
    assert opened and opened[0]["id"] == ds.first().id
    ds.reload()
    assert not ds.has_frame_field("sam")
    numbers = sorted(n for n, f in ds.first().frames.items() if f.has_field("sam_preview") and f["sam_preview"] is not None)
    assert numbers == list(range(1, 11))
    assert all(not f.has_field("sam_preview") or f["sam_preview"] is None for f in ds.last().frames.values())
    # with a frame range, the preview is its first frames (it ran frames 1-10 whatever the range)
    _execute(app_server, ds, {"prompt": "red ball", "backend": "emulator", "label_field": "ranged",
                              "preview_frames": 4, "frame_start": 20, "frame_step": 3})
    ds.reload()
    numbers = sorted(n for n, f in ds.first().frames.items() if f.has_field("ranged_preview") and f["ranged_preview"])
    assert numbers == [21, 24, 27, 30]


def test_refine_from_the_selected_label(make_dataset, scene_video, app_server: str) -> None:
    ds = make_dataset(scene_video[0], persistent=True)
    _execute(app_server, ds, {"prompt": "red ball, blue box", "backend": "emulator", "label_field": "sam"})
    ds.reload()
    frame = ds.first().frames[40]
    red = next(d for d in frame["sam"].detections if d.label == "red ball")
    before = {n: {d.index: d.id for d in f["sam"].detections} for n, f in ds.first().frames.items()}
    selected = [{"label_id": red.id, "sample_id": ds.first().id, "field": "frames.sam", "frame_number": 40}]
    _execute(app_server, ds, {"refine": True, "refine_direction": "backward", "backend": "emulator", "label_field": "sam"},
             selected_labels=selected)
    ds.reload()
    after = {n: {d.index: d.id for d in f["sam"].detections} for n, f in ds.first().frames.items()}
    for number, tracks in before.items():
        for track, det_id in tracks.items():
            assert (after[number][track] == det_id) == (track != red.index or number > 40), (number, track)


def test_cancel_immediate_run_by_leaving(make_dataset, small_video, app_server: str) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    body = {"operator_uri": URI, "dataset_name": ds.name, "view": [],
            "params": {"prompt": "red ball", "backend": "emulator", "label_field": "left", "emulator_service_s": 4}}
    with httpx.stream("POST", f"{app_server}/operators/execute/generator", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if '"running"' in line or "running" in json.dumps(json.loads(line)):
                break  # the user closes the App mid-run
    time.sleep(8)  # well past the 4 s the run needed: it would have written by now
    assert not fo.load_dataset(ds.name).has_frame_field("left")


def test_cancel_delegated_run_by_failing_the_operation(make_dataset, small_video) -> None:
    ds = make_dataset(small_video[0], persistent=True)
    result = foo.get_operator(URI)(ds.view(), "red ball", backend="emulator", label_field="stopped",
                                   emulator_service_s=6, delegate=True)
    op_id = result.result["id"] if isinstance(result.result, dict) and "id" in result.result else None
    service = DelegatedOperationService()
    if op_id is None:
        op_id = service.get_queued_operations(operator=URI, dataset_name=ds.name)[0].id
    runner = threading.Thread(target=service.execute_queued_operations, kwargs={"dataset_name": ds.name, "operator": URI})
    runner.start()
    deadline = time.monotonic() + 30
    while service.get(op_id).run_state != ExecutionRunState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    service.set_failed(op_id, result=None)  # what `fiftyone delegated fail <id>` does
    started = time.monotonic()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert time.monotonic() - started < 5.5  # stopped by the watcher, not by running to the end
    assert not fo.load_dataset(ds.name).has_frame_field("stopped")


@pytest.mark.parametrize("shards", [2])
def test_shards_queue_one_delegated_operation_each(make_dataset, small_video, shards: int) -> None:
    ds = make_dataset(*[small_video[0]] * 3, persistent=True)
    foo.get_operator(URI)(ds.view(), "red ball", backend="emulator", label_field="sharded", shards=shards)
    service = DelegatedOperationService()
    queued = service.get_queued_operations(operator=URI, dataset_name=ds.name)
    assert len(queued) == shards
    keys = {op.context.request_params["params"]["run_key"] for op in queued}
    assert len(keys) == 1
    service.execute_queued_operations(dataset_name=ds.name, operator=URI)
    assert _labels(ds, "sharded") == {"red ball"}
    assert all(s.frames[1].has_field("sharded") for s in fo.load_dataset(ds.name))
